"""Crypto-shredding on SQLite and PostgreSQL: after erasure no stored byte holds the customer's
name or email, while replays, projections, invoices and their audits still work."""

import json
import logging
import sqlite3
from collections.abc import Mapping
from typing import Any

import psycopg
import pytest
from litestar.testing import TestClient
from psycopg import sql

from adapters.settings import Settings
from adapters.stores import Ledger, open_ledger
from api.app import create_app
from application.vat import ViesAnswer
from application.webhooks import DeliveryResult
from domain.customer import ERASED
from domain.vat import CHECK_VALID
from tests.conftest import postgres_url
from tests.erasure_scenario import EMAIL, NAME, PERSONAL, at, billed_customer, settle

VAT_NUMBER = PERSONAL["tax_identification_number"]
VIES_NAME = "QUIXOTE-MARCHETTI CONSEIL SARL"
VIES_ADDRESS = "12 RUE DES ZEBRES 34000 MONTPELLIER"
SECRETS = (
    NAME,
    EMAIL,
    PERSONAL["phone"],
    PERSONAL["metadata"][0]["value"],
    VAT_NUMBER,
    VIES_NAME,
    VIES_ADDRESS,
)


class Vies:
    """VIES, which knows the customer's number, its holder and address."""

    def check_vat_number(
        self, country_code: str, vat_number: str, requester: tuple[str, str] | None = None
    ) -> ViesAnswer:
        assert country_code + vat_number == VAT_NUMBER, (country_code, vat_number)
        return ViesAnswer(
            True, country_code, vat_number, None, "WAPIAAAAZ0000001", VIES_NAME, VIES_ADDRESS
        )


class Receiver:
    """The webhook transport: every body posted, answered 200."""

    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []

    def post(
        self, url: str, body: bytes, headers: Mapping[str, str], timeout_s: float
    ) -> DeliveryResult:
        self.bodies.append(json.loads(body))
        return DeliveryResult(200)


def outbox_payloads(settings: Settings) -> list[str]:
    """The webhook payloads as the store holds them."""
    if settings.store == "sqlite":
        assert settings.sqlite_path is not None
        with sqlite3.connect(settings.sqlite_path) as connection:
            rows = connection.execute("SELECT payload FROM webhook_messages").fetchall()
        return [row[0] for row in rows]
    url = postgres_url()
    assert url is not None and settings.postgres_schema is not None
    with psycopg.connect(url, autocommit=True) as connection:
        rows = connection.execute(
            sql.SQL("SELECT payload FROM {}.webhook_messages").format(
                sql.Identifier(settings.postgres_schema)
            )
        ).fetchall()
    return [row[0] for row in rows]


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
    receiver = Receiver()
    app = create_app(store_ledger, webhook_transport=receiver)
    with TestClient(app=app) as client:
        shown = client.get("/api/v1/customers/cus_1", headers=headers).json()["customer"]
        assert (shown["name"], shown["email"]) == (NAME, EMAIL)
        # Copies of the customer beyond its events: webhook messages waiting for delivery (an
        # endpoint that is down), and a response kept for an Idempotency-Key.
        endpoint = {"webhook_url": "https://hooks.example/tally", "signature_algo": "hmac"}
        created = client.post(
            "/api/v1/webhook_endpoints", json={"webhook_endpoint": endpoint}, headers=headers
        )
        assert created.status_code == 200, created.text
        update = {"customer": {"external_id": "cus_1", "name": NAME, "net_payment_term": 30}}
        once = {**headers, "Idempotency-Key": "update-1"}
        updated = client.post("/api/v1/customers", json=update, headers=once)
        assert updated.status_code == 200 and updated.json()["customer"]["email"] == EMAIL
        # Refused while the law needs the customer identified: unpaid invoice, live subscription.
        refused = client.post("/api/v1/customers/cus_1/erase", headers=headers)
        assert refused.status_code == 405
        assert refused.json()["code"] == "not_erasable"
        assert refused.json()["error_details"] == {
            "customer": ["unpaid_invoices", "active_subscriptions"]
        }
        settle(store_ledger, org)
        # A VIES check of the customer's number, answered with its holder's name and address.
        store_ledger.billing.update_organization_settings(
            org, {"country": "DE", "eu_tax_management": True, "tax_identification_number": None}
        )
        store_ledger.vat.vies = Vies()
        assert store_ledger.vat.request_check(org, "cus_1") is not None
        assert store_ledger.vat.run() == 1
        check = store_ledger.billing.vat_number_check(org, VAT_NUMBER)
        assert check is not None and (check.status, check.name) == (CHECK_VALID, VIES_NAME)
        webhooks = app.state.webhooks
        webhooks.catch_up()
        payloads = outbox_payloads(store_settings)
        assert any('"customer.updated"' in p for p in payloads), payloads
        # Sealed at rest already; the API shows them clear until the erasure.
        assert not [p for p in payloads if NAME in p or EMAIL in p]
        shown_messages = client.get("/api/v1/webhooks", headers=headers).json()["webhooks"]
        assert NAME in json.dumps(shown_messages)

        erased = client.post("/api/v1/customers/cus_1/erase", headers=headers)
        assert erased.status_code == 200, erased.text
        body = erased.json()["customer"]
        assert body["name"] == body["email"] == body["tax_identification_number"] == ERASED
        assert body["shipping_address"]["country"] == "FR" and body["currency"] == "EUR"
        # The invoice keeps its number and amounts, and its audit still matches.
        audit = client.get(f"/api/v1/invoices/{invoice.id}/audit", headers=headers)
        assert audit.status_code == 200, audit.text
        assert store_ledger.invoicing.audit(org, invoice.id).matches
        # The kept response replays, showing the customer as erased.
        replayed = client.post("/api/v1/customers", json=update, headers=once)
        assert replayed.headers["idempotent-replayed"] == "true"
        assert replayed.json()["customer"]["name"] == replayed.json()["customer"]["email"]
        assert replayed.json()["customer"]["email"] == ERASED
        # The messages not yet delivered still go out, with the data shown as erased.
        webhooks.run_once()
        types = {body["webhook_type"] for body in receiver.bodies}
        assert {"customer.updated", "invoice.created"} <= types, types
        delivered = json.dumps(receiver.bodies)
        assert ERASED in delivered and NAME not in delivered and EMAIL not in delivered

    data = stored_bytes(store_settings)
    assert holds(data, "cus_1") and holds(data, "sub_1")  # The scan sees stored text.
    assert holds(data, "https://hooks.example/tally") and holds(data, "update-1")
    for secret in SECRETS:
        assert not holds(data, secret), secret
    assert not holds(data, api_key)  # Keys are stored as hashes only (ADR 0015).
    assert not holds(data, api_key.removeprefix("tally_"))
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
        check = reopened.billing.vat_number_check(org, VAT_NUMBER)
        assert check is not None and check.status == CHECK_VALID
        assert check.vat_number == check.name == check.address == ERASED
        assert check.consultation_number == "WAPIAAAAZ0000001"  # The evidence's number stays.
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
