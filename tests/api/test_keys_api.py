"""API keys over HTTP: scopes refuse with Lago's 403, revocation and expiry take effect at once,
and keys appear nowhere after their creation: not in logs, responses or the audit log."""

import logging
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

import pytest
from litestar import Litestar
from litestar.testing import TestClient

from adapters.stores import Ledger
from api.problems import PROBLEM_TYPE_BASE
from api.security import refusal, resource_of
from application.audit_log import AuditFilter
from tests.conftest import Tenant

Client = TestClient[Litestar]
NOW = datetime(2026, 3, 16, 12, tzinfo=UTC)


def bearer(api_key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_key}"}


def key_id(ledger: Ledger, api_key: str) -> UUID:
    grant = ledger.billing.authenticate_api_key(api_key)
    assert grant is not None
    return grant.api_key_id


def forbidden(code: str, detail: str) -> dict[str, Any]:
    return {
        "type": PROBLEM_TYPE_BASE + code,
        "title": "Forbidden",
        "status": 403,
        "detail": detail,
        "error": "Forbidden",
        "code": code,
    }


@pytest.fixture
def subscribed(client: Client, tenant: Tenant, ledger: Ledger) -> Client:
    """A metric, a plan and subscription sub_1 of customer cus_1, made with the full key."""
    ledger.billing.now = lambda: NOW
    metric = client.post(
        "/api/v1/billable_metrics",
        json={
            "billable_metric": {
                "name": "Calls",
                "code": "calls",
                "aggregation_type": "count_agg",
            }
        },
        headers=tenant.headers,
    ).json()["billable_metric"]
    client.post(
        "/api/v1/plans",
        json={
            "plan": {
                "name": "Basic",
                "code": "basic",
                "interval": "monthly",
                "amount_cents": 0,
                "amount_currency": "EUR",
                "pay_in_advance": False,
                "charges": [
                    {
                        "billable_metric_id": metric["lago_id"],
                        "charge_model": "standard",
                        "properties": {"amount": "0.01"},
                    }
                ],
            }
        },
        headers=tenant.headers,
    ).raise_for_status()
    client.post(
        "/api/v1/subscriptions",
        json={
            "subscription": {
                "external_customer_id": "cus_1",
                "external_id": "sub_1",
                "plan_code": "basic",
                "subscription_at": "2026-03-01T00:00:00Z",
            }
        },
        headers=tenant.headers,
    ).raise_for_status()
    return client


def event(transaction_id: str) -> dict[str, Any]:
    return {
        "transaction_id": transaction_id,
        "external_subscription_id": "sub_1",
        "code": "calls",
        "timestamp": int(NOW.timestamp()),
    }


def test_a_read_only_key_reads_but_cannot_write(
    subscribed: Client, tenant: Tenant, ledger: Ledger
) -> None:
    read_only = bearer(ledger.billing.issue_api_key(tenant.organization_id, scope="read_only"))
    assert subscribed.get("/api/v1/customers/cus_1", headers=read_only).status_code == 200
    assert subscribed.get("/api/v1/events", headers=read_only).status_code == 200
    for method, path, resource, body in [
        ("POST", "/api/v1/customers", "customer", {"customer": {"external_id": "cus_2"}}),
        ("DELETE", "/api/v1/customers/cus_1", "customer", None),
        ("POST", "/api/v1/events", "event", {"event": event("t1")}),
        ("PUT", "/api/v1/plans/basic", "plan", {"plan": {"name": "x"}}),
        ("POST", "/api/v1/taxes", "tax", {"tax": {"code": "vat"}}),
        ("POST", "/api/v1/customers/cus_1/erase", "customer", None),
    ]:
        response = subscribed.request(method, path, json=body, headers=read_only)
        assert response.status_code == 403, (method, path)
        assert response.headers["content-type"] == "application/problem+json"
        code = f"write_action_not_allowed_for_{resource}"
        detail = f"This API key's scope (read_only) does not allow {method} {path}."
        assert response.json() == forbidden(code, detail)
    # Nothing was written.
    assert subscribed.get("/api/v1/customers/cus_2", headers=tenant.headers).status_code == 404
    assert subscribed.get("/api/v1/events", headers=tenant.headers).json()["events"] == []


def test_an_ingest_only_key_can_only_post_and_read_events(
    subscribed: Client, tenant: Tenant, ledger: Ledger
) -> None:
    ingest = bearer(ledger.billing.issue_api_key(tenant.organization_id, scope="ingest_only"))
    assert subscribed.post("/api/v1/events", json={"event": event("t1")}, headers=ingest).is_success
    batch = {"events": [event("t2"), event("t3")]}
    assert subscribed.post("/api/v1/events/batch", json=batch, headers=ingest).is_success
    assert subscribed.get("/api/v1/events", headers=ingest).json()["meta"]["total_count"] == 3
    assert subscribed.get("/api/v1/events/t1", headers=ingest).status_code == 200
    refused = {
        ("POST", "/api/v1/events/t1/void"): "write_action_not_allowed_for_event",
        ("GET", "/api/v1/customers/cus_1"): "read_action_not_allowed_for_customer",
        ("GET", "/api/v1/customers/cus_1/current_usage"): "read_action_not_allowed_for_customer",
        ("POST", "/api/v1/customers"): "write_action_not_allowed_for_customer",
        ("GET", "/api/v1/subscriptions"): "read_action_not_allowed_for_subscription",
        ("GET", "/api/v1/invoices"): "read_action_not_allowed_for_invoice",
        ("GET", "/api/v1/audit_logs"): "read_action_not_allowed_for_audit_log",
    }
    for (method, path), code in refused.items():
        response = subscribed.request(method, path, json={}, headers=ingest)
        assert (response.status_code, response.json()["code"]) == (403, code), path


@pytest.mark.parametrize(
    ("path", "resource"),
    [
        ("/api/v1/billable_metrics/calls", "billable_metric"),
        ("/api/v1/taxes", "tax"),
        ("/api/v1/billing_entities/default", "billing_entity"),
        ("/api/v1/wallet_transactions", "wallet_transaction"),
        ("/api/v1/webhook_endpoints", "webhook_endpoint"),
        ("/api/v1/credit_notes/x/void", "credit_note"),
    ],
)
def test_resources_are_named_as_lago_names_them(path: str, resource: str) -> None:
    assert resource_of(path) == resource
    assert refusal("read_only", "POST", path) == f"write_action_not_allowed_for_{resource}"
    assert refusal("read_only", "GET", path) is None
    assert refusal("full", "DELETE", path) is None


def test_a_revoked_key_fails_at_once(client: Client, tenant: Tenant, ledger: Ledger) -> None:
    new_key = ledger.billing.issue_api_key(tenant.organization_id)
    assert client.get("/api/v1/customers", headers=tenant.headers).status_code == 200
    old_id = key_id(ledger, tenant.api_key)
    ledger.billing.revoke_api_key(old_id)
    response = client.get("/api/v1/customers", headers=tenant.headers)
    assert response.status_code == 401
    assert response.json()["error"] == "Unauthorized"
    assert client.get("/api/v1/customers", headers=bearer(new_key)).status_code == 200


def test_an_expired_key_fails(client: Client, tenant: Tenant, ledger: Ledger) -> None:
    ledger.billing.now = lambda: NOW
    _, api_key = ledger.billing.create_api_key(
        tenant.organization_id, expires_at=NOW + timedelta(minutes=5)
    )
    assert client.get("/api/v1/customers", headers=bearer(api_key)).status_code == 200
    ledger.billing.now = lambda: NOW + timedelta(minutes=5)
    assert client.get("/api/v1/customers", headers=bearer(api_key)).status_code == 401


def test_keys_never_appear_in_logs_responses_or_the_audit_log(
    subscribed: Client, tenant: Tenant, ledger: Ledger, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    read_only_key = ledger.billing.issue_api_key(tenant.organization_id, scope="read_only")
    revoked_key = ledger.billing.issue_api_key(tenant.organization_id)
    ledger.billing.revoke_api_key(key_id(ledger, revoked_key))
    keys = [tenant.api_key, read_only_key, revoked_key]
    seen: list[str] = []
    for api_key in [*keys, "tally_" + "x" * 43]:
        headers = {**bearer(api_key), "Idempotency-Key": f"k-{len(seen)}"}
        for method, path, body in [
            ("GET", "/api/v1/customers", None),
            ("POST", "/api/v1/customers", {"customer": {"external_id": "cus_9", "name": "N"}}),
            ("POST", "/api/v1/customers", {"customer": {"external_id": 7}}),
            ("POST", "/api/v1/events", {"event": event(f"t-{len(seen)}")}),
            ("GET", "/api/v1/customers/nobody", None),
            ("DELETE", "/api/v1/customers/nobody", None),
        ]:
            response = subscribed.request(method, path, json=body, headers=headers)
            seen.append(response.text)
            seen.extend(f"{name}: {value}" for name, value in response.headers.items())
    assert subscribed.app.state.audit_writer.flush()
    entries, total = ledger.audit_log.page(tenant.organization_id, AuditFilter(), 1, 1000)
    assert total > 0
    seen.extend(repr(entry) for entry in entries)
    seen.extend(record.getMessage() + (record.exc_text or "") for record in caplog.records)
    seen.append(caplog.text)
    for api_key in keys:
        assert not [text for text in seen if api_key in text]
        assert not [text for text in seen if api_key[len("tally_") :] in text]
