"""Crypto-shredding on SQLite and PostgreSQL: after erasure no stored byte holds the customer's
name or email, while replays, projections, invoices and their audits still work."""

import logging
import sqlite3
from typing import Any

import psycopg
import pytest
from litestar.testing import TestClient
from psycopg import sql

from adapters.settings import Settings
from adapters.stores import Ledger, open_ledger
from api.app import create_app
from domain.customer import ERASED
from tests.conftest import postgres_url
from tests.erasure_scenario import EMAIL, NAME, PERSONAL, at, billed_customer, settle

SECRETS = (NAME, EMAIL, PERSONAL["phone"], PERSONAL["metadata"][0]["value"])


def stored_bytes(settings: Settings) -> bytes:
    """Every byte the store holds: the SQLite files (database, WAL, shared memory), or every
    PostgreSQL table of the schema dumped as text (bytea shows as hex: searched for too)."""
    if settings.store == "sqlite":
        assert settings.sqlite_path is not None
        return b"".join(path.read_bytes() for path in sorted(settings.sqlite_path.parent.iterdir()))
    url = postgres_url()
    assert url is not None and settings.postgres_schema is not None
    dumped = []
    with psycopg.connect(url, autocommit=True) as connection:
        tables = connection.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = %s",
            (settings.postgres_schema,),
        ).fetchall()
        assert len(tables) > 5, tables
        for (table,) in tables:
            rows = connection.execute(
                sql.SQL("SELECT t::text FROM {}.{} t").format(
                    sql.Identifier(settings.postgres_schema), sql.Identifier(table)
                )
            ).fetchall()
            dumped.extend(row[0] for row in rows)
    return "\n".join(dumped).encode()


def holds(data: bytes, value: str) -> bool:
    encoded = value.encode()
    return encoded in data or encoded.hex().encode() in data


def test_after_erasure_no_stored_byte_holds_the_name_or_email_and_audits_still_match(
    store_settings: Settings, store_ledger: Ledger, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    org, api_key, invoice = billed_customer(store_ledger)
    headers = {"Authorization": f"Bearer {api_key}"}
    with TestClient(app=create_app(store_ledger)) as client:
        shown = client.get("/api/v1/customers/cus_1", headers=headers).json()["customer"]
        assert (shown["name"], shown["email"]) == (NAME, EMAIL)
        # Refused while the law needs the customer identified: unpaid invoice, live subscription.
        refused = client.post("/api/v1/customers/cus_1/erase", headers=headers)
        assert refused.status_code == 405
        assert refused.json()["code"] == "not_erasable"
        assert refused.json()["error_details"] == {
            "customer": ["unpaid_invoices", "active_subscriptions"]
        }
        settle(store_ledger, org)
        erased = client.post("/api/v1/customers/cus_1/erase", headers=headers)
        assert erased.status_code == 200, erased.text
        body = erased.json()["customer"]
        assert body["name"] == body["email"] == body["tax_identification_number"] == ERASED
        assert body["shipping_address"]["country"] == "FR" and body["currency"] == "EUR"
        # The invoice keeps its number and amounts, and its audit still matches.
        audit = client.get(f"/api/v1/invoices/{invoice.id}/audit", headers=headers)
        assert audit.status_code == 200, audit.text
        assert store_ledger.invoicing.audit(org, invoice.id).matches

    data = stored_bytes(store_settings)
    assert holds(data, "cus_1") and holds(data, "sub_1")  # The scan sees stored text.
    for secret in SECRETS:
        assert not holds(data, secret), secret
    for secret in SECRETS:
        assert secret not in caplog.text

    # A replay from the store, in a fresh process's ledger: everything reads as erased.
    reopened = open_ledger(store_settings)
    try:
        at(reopened, store_ledger.billing.now())
        customer = reopened.billing.customer(org, "cus_1")
        assert customer.fields["name"] == customer.fields["email"] == ERASED
        assert customer.erased_at is not None
        history = reopened.billing.customer_history(org, "cus_1")
        assert history[0].changes["name"] == ERASED
        assert history[-1].type == "Customer.Erased"
        customers, total = reopened.billing.customers(org, 1, 10)
        assert total == 1 and customers[0].fields["email"] == ERASED
        again = reopened.invoicing.invoice(org, invoice.id)
        assert (again.number, again.totals.total_amount_cents) == (
            invoice.number,
            invoice.totals.total_amount_cents,
        )
        assert reopened.invoicing.audit(org, invoice.id).matches
        records = reopened.billing.customer_records(org, "cus_1")
        assert len(records.invoices) == 2 and len(records.subscriptions) == 1
    finally:
        reopened.close()


def test_the_deleted_key_is_zeroed_in_the_sqlite_file(
    store_settings: Settings, store_ledger: Ledger
) -> None:
    if store_settings.store != "sqlite":
        pytest.skip("PostgreSQL keeps a deleted row's bytes until the page is reused (ADR 0017)")
    organization, _ = store_ledger.billing.create_organization("acme")
    store_ledger.billing.upsert_customer(organization.id, "cus_1", dict(PERSONAL))
    assert store_settings.sqlite_path is not None
    with sqlite3.connect(store_settings.sqlite_path) as connection:
        [(key,)] = connection.execute("SELECT key FROM personal_data_keys").fetchall()
    assert bytes(key) in stored_bytes(store_settings)
    store_ledger.billing.erase_customer(organization.id, "cus_1")
    assert bytes(key) not in stored_bytes(store_settings)


def test_the_export_holds_everything_about_the_customer(
    store_ledger: Ledger,
) -> None:
    org, api_key, invoice = billed_customer(store_ledger)
    headers = {"Authorization": f"Bearer {api_key}"}
    with TestClient(app=create_app(store_ledger)) as client:
        response = client.get("/api/v1/customers/cus_1/export", headers=headers)
        assert response.status_code == 200, response.text
        export: dict[str, Any] = response.json()["customer_export"]
        assert export["customer"]["name"] == NAME
        assert export["erased_at"] is None
        assert [e["type"] for e in export["history"]] == ["Customer.Created"]
        assert [s["external_id"] for s in export["subscriptions"]] == ["sub_1"]
        [usage] = export["usage_events"]
        assert (usage["external_subscription_id"], usage["total_count"], usage["next_url"]) == (
            "sub_1",
            1,
            None,
        )
        assert [e["transaction_id"] for e in usage["events"]] == ["t1"]
        assert [i["lago_id"] for i in export["invoices"]] == [str(invoice.id)]
        assert export["invoices"][0]["fees"]
        assert export["credit_notes"] == [] and export["wallets"] == []
        missing = client.get("/api/v1/customers/nobody/export", headers=headers)
        assert missing.status_code == 404

        settle(store_ledger, org)
        client.post("/api/v1/customers/cus_1/erase", headers=headers).raise_for_status()
        after = client.get("/api/v1/customers/cus_1/export", headers=headers).json()
        assert after["customer_export"]["customer"]["name"] == ERASED
        assert after["customer_export"]["erased_at"] is not None
        assert NAME not in str(after) and EMAIL not in str(after)
