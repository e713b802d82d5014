"""Webhook endpoints, the public key and the webhook log through the HTTP API: Lago's shapes."""

import base64
import json
from collections.abc import Iterator, Mapping
from dataclasses import replace
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest
from cryptography.hazmat.primitives.serialization import load_pem_public_key
from litestar import Litestar
from litestar.testing import TestClient

from adapters.settings import memory_settings
from adapters.stores import Ledger, open_ledger
from api.app import create_app
from api.problems import PROBLEM_TYPE_BASE
from application.wallets import TopUpValues, WalletValues
from application.webhooks import DeliveryResult, Webhooks
from tests.application.test_payments import SECRETS, FakeProcessors
from tests.conftest import Tenant

Client = TestClient[Litestar]
URL = "https://hooks.example/lago"


class Receiver:
    def __init__(self) -> None:
        self.status_code = 200
        self.bodies: list[dict[str, Any]] = []

    def post(
        self, url: str, body: bytes, headers: Mapping[str, str], timeout_s: float
    ) -> DeliveryResult:
        self.bodies.append(json.loads(body))
        return DeliveryResult(self.status_code, "")


@pytest.fixture
def receiver() -> Receiver:
    return Receiver()


@pytest.fixture
def webhook_client(ledger: Ledger, receiver: Receiver) -> Iterator[Client]:
    ledger.webhook_settings = replace(ledger.webhook_settings, attempts_max=1)
    app = create_app(ledger, webhook_transport=receiver)
    with TestClient(app=app) as client:
        yield client


def webhooks_of(client: Client) -> Webhooks:
    webhooks: Webhooks = client.app.state.webhooks
    return webhooks


def create(client: Client, tenant: Tenant, **fields: Any) -> dict[str, Any]:
    response = client.post(
        "/api/v1/webhook_endpoints",
        json={"webhook_endpoint": {"webhook_url": URL, **fields}},
        headers=tenant.headers,
    )
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()["webhook_endpoint"]
    return body


def test_a_created_endpoint_has_lagos_shape(webhook_client: Client, tenant: Tenant) -> None:
    body = create(webhook_client, tenant, signature_algo="hmac", name="Ops", event_types=None)
    assert body == {
        "lago_id": body["lago_id"],
        "lago_organization_id": str(tenant.organization_id),
        "webhook_url": URL,
        "signature_algo": "hmac",
        "name": "Ops",
        "event_types": None,
        "created_at": body["created_at"],
    }
    assert body["created_at"].endswith("Z")
    found = webhook_client.get(
        f"/api/v1/webhook_endpoints/{body['lago_id']}", headers=tenant.headers
    )
    assert found.json() == {"webhook_endpoint": body}


def test_an_endpoint_is_updated_listed_and_deleted(webhook_client: Client, tenant: Tenant) -> None:
    first = create(webhook_client, tenant)
    path = f"/api/v1/webhook_endpoints/{first['lago_id']}"
    updated = webhook_client.put(
        path,
        json={"webhook_endpoint": {"event_types": ["invoice.created"], "signature_algo": "hmac"}},
        headers=tenant.headers,
    ).json()["webhook_endpoint"]
    assert (updated["webhook_url"], updated["signature_algo"], updated["event_types"]) == (
        URL,
        "hmac",
        ["invoice.created"],
    )
    listed = webhook_client.get("/api/v1/webhook_endpoints", headers=tenant.headers).json()
    assert listed == {
        "webhook_endpoints": [updated],
        "meta": {
            "current_page": 1,
            "next_page": None,
            "prev_page": None,
            "total_pages": 1,
            "total_count": 1,
        },
    }
    deleted = webhook_client.delete(path, headers=tenant.headers)
    assert (deleted.status_code, deleted.json()["webhook_endpoint"]) == (200, updated)
    assert webhook_client.get(path, headers=tenant.headers).status_code == 404
    empty = webhook_client.get("/api/v1/webhook_endpoints", headers=tenant.headers).json()
    assert (empty["webhook_endpoints"], empty["meta"]["total_count"]) == ([], 0)


def test_unknown_or_malformed_ids_are_lagos_404(webhook_client: Client, tenant: Tenant) -> None:
    for lago_id in ("not-a-uuid", "00000000-0000-0000-0000-000000000001"):
        response = webhook_client.get(
            f"/api/v1/webhook_endpoints/{lago_id}", headers=tenant.headers
        )
        assert response.status_code == 404
        assert response.json() == {
            "type": PROBLEM_TYPE_BASE + "webhook_endpoint_not_found",
            "title": "Not Found",
            "status": 404,
            "detail": f"No webhook_endpoint '{lago_id}'.",
            "error": "Not Found",
            "code": "webhook_endpoint_not_found",
        }


def test_bad_input_is_named(webhook_client: Client, tenant: Tenant) -> None:
    def post(body: Any) -> Any:
        return webhook_client.post("/api/v1/webhook_endpoints", json=body, headers=tenant.headers)

    missing_root = post({"endpoint": {"webhook_url": URL}})
    assert (missing_root.status_code, missing_root.json()["error"]) == (
        400,
        "BadRequest: param is missing or the value is empty: webhook_endpoint",
    )
    cases = [
        ({}, {"webhook_url": ["value_is_mandatory"]}),
        ({"webhook_url": "not a url"}, {"webhook_url": ["url_invalid"]}),
        ({"webhook_url": URL, "signature_algo": "md5"}, {"signature_algo": ["value_is_invalid"]}),
        (
            {"webhook_url": URL, "event_types": ["Not A Type"]},
            {"event_types": ["value_is_invalid"]},
        ),
        ({"webhook_url": URL, "colour": "red"}, {"colour": ["unsupported_field"]}),
        ({"webhook_url": 42}, {"webhook_url": ["value_is_invalid"]}),
    ]
    for fields, details in cases:
        response = post({"webhook_endpoint": fields})
        assert response.status_code == 422, fields
        assert response.json()["error_details"] == details
    create(webhook_client, tenant)
    duplicate = post({"webhook_endpoint": {"webhook_url": URL}})
    assert duplicate.json()["error_details"] == {"webhook_url": ["value_already_exist"]}


def test_every_webhook_route_needs_a_valid_key(webhook_client: Client) -> None:
    for path in (
        "/api/v1/webhook_endpoints",
        "/api/v1/webhooks",
        "/api/v1/webhooks/json_public_key",
        "/api/v1/webhooks/public_key",
    ):
        response = webhook_client.get(path, headers={"Authorization": "Bearer nope"})
        assert response.status_code == 401, path


def test_the_public_key_is_base64_of_a_pem_in_both_forms(
    webhook_client: Client, tenant: Tenant
) -> None:
    as_json = webhook_client.get("/api/v1/webhooks/json_public_key", headers=tenant.headers)
    as_text = webhook_client.get("/api/v1/webhooks/public_key", headers=tenant.headers)
    encoded = as_json.json()["webhook"]["public_key"]
    assert list(as_json.json()) == ["webhook"] and list(as_json.json()["webhook"]) == ["public_key"]
    assert as_text.text == encoded and as_text.headers["content-type"].startswith("text/plain")
    assert all(len(line) <= 60 for line in encoded.splitlines())  # Ruby's Base64.encode64.
    pem = base64.b64decode(encoded)
    assert pem.startswith(b"-----BEGIN PUBLIC KEY-----")
    assert load_pem_public_key(pem).key_size == 2048  # type: ignore[union-attr]


def test_failed_webhooks_are_listed_and_retried(
    webhook_client: Client, tenant: Tenant, ledger: Ledger, receiver: Receiver
) -> None:
    create(webhook_client, tenant)
    ledger.billing.upsert_customer(tenant.organization_id, "cus_1", {"name": "Ada"})
    receiver.status_code = 500
    webhooks_of(webhook_client).run_once()
    failed = webhook_client.get(
        "/api/v1/webhooks", params={"status[]": ["failed"]}, headers=tenant.headers
    ).json()
    [webhook] = failed["webhooks"]
    customer = ledger.billing.customer(tenant.organization_id, "cus_1")
    assert webhook == {
        "lago_id": webhook["lago_id"],
        "lago_webhook_endpoint_id": webhook["lago_webhook_endpoint_id"],
        "lago_object_id": str(customer.id),
        "webhook_type": "customer.created",
        "object_type": "customer",
        "status": "failed",
        "attempts": 1,
        "retries": 0,
        "http_status": 500,
        "endpoint": URL,
        "payload": receiver.bodies[0],
        "response": "",
        "error": "HTTP 500",
        "next_attempt_at": None,
        "last_retried_at": None,
        "delivered_at": None,
        "created_at": webhook["created_at"],
        "updated_at": webhook["updated_at"],
    }
    assert (
        webhook_client.get(
            "/api/v1/webhooks", params={"status": "succeeded"}, headers=tenant.headers
        ).json()["webhooks"]
        == []
    )
    receiver.status_code = 204
    retried = webhook_client.post(
        f"/api/v1/webhooks/{webhook['lago_id']}/retry", headers=tenant.headers
    )
    assert (retried.status_code, retried.json()["webhook"]["status"]) == (200, "pending")
    webhooks_of(webhook_client).run_once()
    found = webhook_client.get(f"/api/v1/webhooks/{webhook['lago_id']}", headers=tenant.headers)
    assert (found.json()["webhook"]["status"], found.json()["webhook"]["http_status"]) == (
        "succeeded",
        204,
    )
    again = webhook_client.post(
        f"/api/v1/webhooks/{webhook['lago_id']}/retry", headers=tenant.headers
    )
    assert (again.status_code, again.json()["code"]) == (405, "invalid_status")
    unknown = webhook_client.post(
        "/api/v1/webhooks/00000000-0000-0000-0000-000000000001/retry", headers=tenant.headers
    )
    assert (unknown.status_code, unknown.json()["code"]) == (404, "webhook_not_found")
    bad_status = webhook_client.get(
        "/api/v1/webhooks", params={"status": "lost"}, headers=tenant.headers
    )
    assert bad_status.json()["error_details"] == {"status": ["value_is_invalid"]}


def test_payloads_are_the_api_objects_at_the_events_version(
    webhook_client: Client, tenant: Tenant, ledger: Ledger, receiver: Receiver
) -> None:
    create(webhook_client, tenant)
    org = tenant.organization_id
    ledger.billing.upsert_customer(org, "cus_1", {"name": "Ada", "currency": "EUR"})
    ledger.billing.upsert_customer(org, "cus_1", {"name": "Grace"})
    march_1, april_1 = datetime(2026, 3, 1, tzinfo=UTC), datetime(2026, 4, 1, tzinfo=UTC)
    ledger.billing.create_plan(
        org,
        "basic",
        {
            "name": "Basic",
            "interval": "monthly",
            "amount_cents": 1000,
            "amount_currency": "EUR",
            "pay_in_advance": False,
        },
    )
    ledger.billing.now = lambda: march_1
    ledger.billing.create_subscription(
        org, "sub_1", external_customer_id="cus_1", plan_code="basic"
    )
    ledger.billing.now = lambda: april_1
    [invoice] = ledger.invoicing.run(april_1)
    ledger.billing.upsert_customer(org, "cus_1", {"name": "Later"})
    webhooks_of(webhook_client).run_once()
    by_type = {body["webhook_type"]: body for body in receiver.bodies}
    assert [b["webhook_type"] for b in receiver.bodies if b["object_type"] == "customer"] == [
        "customer.created",
        "customer.updated",
        "customer.updated",
    ]
    created = by_type["customer.created"]
    assert (created["object_type"], created["organization_id"]) == ("customer", str(org))
    assert created["customer"]["name"] == "Ada"  # As it was then, not as it is now.
    started = by_type["subscription.started"]["subscription"]
    api_subscription = webhook_client.get("/api/v1/subscriptions/sub_1", headers=tenant.headers)
    assert started["lago_id"] == api_subscription.json()["subscription"]["lago_id"]
    assert started["status"] == "active"
    sent_invoice = by_type["invoice.created"]["invoice"]
    api_invoice = webhook_client.get(f"/api/v1/invoices/{invoice.id}", headers=tenant.headers)
    expected = api_invoice.json()["invoice"]
    assert sent_invoice["customer"]["name"] == "Grace"  # The customer at finalization.
    # The public API URL (TALLY_API_URL) names the PDF; a request's own host cannot.
    api_url = ledger.webhook_settings.api_url
    assert sent_invoice["file_url"] == f"{api_url}/api/v1/invoices/{invoice.id}/pdf"
    # Subscriptions are shown as at the event's instant, the API shows them at its clock.
    shown_now = ("customer", "file_url", "subscriptions")
    assert {**sent_invoice, **dict.fromkeys(shown_now)} == {**expected, **dict.fromkeys(shown_now)}


def test_wallet_payloads_are_the_api_objects(
    webhook_client: Client, tenant: Tenant, ledger: Ledger, receiver: Receiver
) -> None:
    create(webhook_client, tenant)
    org = tenant.organization_id
    ledger.billing.upsert_customer(org, "cus_1", {"currency": "EUR"})
    created = webhook_client.post(
        "/api/v1/wallets",
        json={
            "wallet": {
                "external_customer_id": "cus_1",
                "currency": "EUR",
                "rate_amount": "1",
                "name": "Main",
                "granted_credits": "10",
            }
        },
        headers=tenant.headers,
    )
    assert created.status_code == 200, created.text
    wallet_id = created.json()["wallet"]["lago_id"]
    webhook_client.delete(f"/api/v1/wallets/{wallet_id}", headers=tenant.headers)
    webhooks_of(webhook_client).run_once()
    by_type = {body["webhook_type"]: body for body in receiver.bodies}
    # In order per resource; resources are delivered side by side.
    assert [b["webhook_type"] for b in receiver.bodies if b["object_type"] == "wallet"] == [
        "wallet.created",
        "wallet.terminated",
    ]
    transactions = [b for b in receiver.bodies if b["object_type"] == "wallet_transaction"]
    assert sorted(b["wallet_transaction"]["transaction_status"] for b in transactions) == [
        "granted",
        "voided",  # The balance forfeited at termination.
    ]
    computed_at_read = ("last_balance_sync_at",)
    sent = by_type["wallet.created"]
    assert (sent["object_type"], sent["organization_id"]) == ("wallet", str(org))
    expected = {**created.json()["wallet"], **dict.fromkeys(computed_at_read)}
    assert {**sent["wallet"], **dict.fromkeys(computed_at_read)} == expected
    terminated = webhook_client.get(f"/api/v1/wallets/{wallet_id}", headers=tenant.headers)
    expected = {**terminated.json()["wallet"], **dict.fromkeys(computed_at_read)}
    sent = by_type["wallet.terminated"]["wallet"]
    assert {**sent, **dict.fromkeys(computed_at_read)} == expected
    for body in receiver.bodies:
        if body["object_type"] != "wallet_transaction":
            continue
        transaction = body["wallet_transaction"]
        found = webhook_client.get(
            f"/api/v1/wallet_transactions/{transaction['lago_id']}", headers=tenant.headers
        )
        # What is left of a lot is shown as it was then: the termination took it since.
        changed_since = dict.fromkeys(("remaining_amount_cents", "remaining_credit_amount"))
        assert {**transaction, **changed_since} == {
            **found.json()["wallet_transaction"],
            **changed_since,
        }
    [granted] = [
        b["wallet_transaction"]
        for b in transactions
        if b["wallet_transaction"]["transaction_status"] == "granted"
    ]
    assert granted["remaining_amount_cents"] == 1000


def test_a_depleted_wallet_shows_the_ongoing_balance_it_recorded(
    webhook_client: Client, tenant: Tenant, ledger: Ledger, receiver: Receiver
) -> None:
    create(webhook_client, tenant, event_types=["wallet.depleted_ongoing_balance"])
    org = tenant.organization_id
    ledger.billing.upsert_customer(org, "cus_1", {"currency": "EUR"})
    wallet = ledger.wallets.create_wallet(
        org,
        WalletValues(external_customer_id="cus_1", currency="EUR", rate_amount=Decimal(1)),
    )
    for _ in range(2):  # Once per crossing: the second observation records nothing.
        ledger.wallets._threshold_top_ups(wallet.id, usage_cents=250)
    webhooks_of(webhook_client).run_once()
    [body] = receiver.bodies
    shown = body["wallet"]
    assert (body["webhook_type"], shown["lago_id"]) == (
        "wallet.depleted_ongoing_balance",
        str(wallet.id),
    )
    assert (shown["balance_cents"], shown["ongoing_balance_cents"]) == (0, -250)
    assert (shown["ongoing_usage_balance_cents"], shown["credits_ongoing_balance"]) == (
        250,
        "-2.5",
    )


def test_a_failed_payment_has_lagos_error_shapes(tenant: Tenant, receiver: Receiver) -> None:
    processors = FakeProcessors(declines=1)
    ledger = open_ledger(memory_settings(), payment_providers=processors)
    ledger.webhook_settings = replace(ledger.webhook_settings, attempts_max=1)
    with TestClient(app=create_app(ledger, webhook_transport=receiver)) as client:
        organization, api_key = ledger.billing.create_organization("acme")
        headers = {"Authorization": f"Bearer {api_key}"}
        client.post(
            "/api/v1/webhook_endpoints",
            json={"webhook_endpoint": {"webhook_url": URL}},
            headers=headers,
        )
        org = organization.id
        ledger.payments.create_connection(org, "eu", "stripe", {}, SECRETS)
        configuration = {"payment_provider": "stripe", "payment_provider_code": "eu"}
        ledger.billing.upsert_customer(
            org, "cus_1", {"currency": "EUR", "billing_configuration": configuration}
        )
        wallet = ledger.wallets.create_wallet(
            org,
            WalletValues(external_customer_id="cus_1", currency="EUR", rate_amount=Decimal(1)),
        )
        [bought] = ledger.wallets.top_up(org, wallet.id, TopUpValues(paid_credits=Decimal(20)))
        [payment] = ledger.payments.collect(ledger.billing.now())
        webhooks_of(client).run_once()
    ledger.close()
    by_type = {body["webhook_type"]: body for body in receiver.bodies}
    customer_id = str(payment.customer_id)
    common = {
        "lago_customer_id": customer_id,
        "external_customer_id": "cus_1",
        "provider_customer_id": "cus_cus_1",
        "payment_provider": "stripe",
        "payment_provider_code": "eu",
        "provider_error": {"message": None, "error_code": "card_declined"},
    }
    assert by_type["invoice.payment_failure"] == {
        "webhook_type": "invoice.payment_failure",
        "object_type": "payment_provider_invoice_payment_error",
        "organization_id": str(org),
        "payment_provider_invoice_payment_error": {
            "lago_invoice_id": str(bought.invoice_id),
            **common,
            "error_details": None,
        },
    }
    assert by_type["wallet_transaction.payment_failure"] == {
        "webhook_type": "wallet_transaction.payment_failure",
        "object_type": "payment_provider_wallet_transaction_payment_error",
        "organization_id": str(org),
        "payment_provider_wallet_transaction_payment_error": {
            "lago_wallet_transaction_id": str(bought.transaction_id),
            **common,
        },
    }
    updated = by_type["wallet_transaction.updated"]["wallet_transaction"]
    assert (updated["lago_id"], updated["status"]) == (str(bought.transaction_id), "failed")


def test_the_public_keys_extension_lists_the_current_then_the_retired_key(
    webhook_client: Client, tenant: Tenant
) -> None:
    def keys() -> list[dict[str, Any]]:
        response = webhook_client.get("/api/v1/webhooks/public_keys", headers=tenant.headers)
        assert response.status_code == 200, response.text
        listed: list[dict[str, Any]] = response.json()["webhook_public_keys"]
        return listed

    [first] = keys()
    assert (first["status"], first["retired_at"]) == ("current", None)
    lago_key = webhook_client.get("/api/v1/webhooks/json_public_key", headers=tenant.headers)
    assert first["public_key"] == lago_key.json()["webhook"]["public_key"]
    rotated = webhooks_of(webhook_client).rotate_signing_key()
    current, retired = keys()
    assert (current["status"], current["kid"]) == ("current", rotated.kid)
    assert (retired["status"], retired["public_key"]) == ("retired", first["public_key"])
    assert retired["retired_at"] is not None
    lago_key = webhook_client.get("/api/v1/webhooks/json_public_key", headers=tenant.headers)
    assert lago_key.json()["webhook"]["public_key"] == current["public_key"]


def test_overdue_and_refund_failure_payloads_have_lagos_shapes(
    webhook_client: Client, tenant: Tenant, ledger: Ledger, receiver: Receiver
) -> None:
    create(webhook_client, tenant)
    org = tenant.organization_id
    march_1 = datetime(2026, 3, 1, tzinfo=UTC)
    ledger.billing.now = lambda: march_1
    ledger.billing.upsert_customer(org, "cus_1", {"currency": "EUR", "net_payment_term": 10})
    ledger.billing.create_plan(
        org,
        "advance",
        {
            "name": "Advance",
            "interval": "monthly",
            "amount_cents": 3000,
            "amount_currency": "EUR",
            "pay_in_advance": True,
        },
    )
    ledger.billing.create_subscription(
        org, "sub_1", external_customer_id="cus_1", plan_code="advance", subscription_at=march_1
    )
    [invoice] = ledger.invoicing.run(march_1)
    ledger.payments.dunning(datetime(2026, 3, 20, tzinfo=UTC))
    webhooks_of(webhook_client).run_once()
    [overdue] = [b for b in receiver.bodies if b["webhook_type"] == "invoice.payment_overdue"]
    api_invoice = webhook_client.get(f"/api/v1/invoices/{invoice.id}", headers=tenant.headers)
    shown = overdue["invoice"]
    assert (overdue["object_type"], shown["lago_id"], shown["payment_overdue"]) == (
        "invoice",
        str(invoice.id),
        True,
    )
    assert shown["total_amount_cents"] == api_invoice.json()["invoice"]["total_amount_cents"]
    ledger.invoicing.set_payment_status(org, invoice.id, "succeeded")
    note = ledger.credit_notes.create(
        org, invoice.id, [(invoice.fees[0].key, 1000)], refund_amount_cents=1000
    )
    ledger.credit_notes.set_refund_status(org, note.id, "failed")
    webhooks_of(webhook_client).run_once()
    [failure] = [b for b in receiver.bodies if b["webhook_type"] == "credit_note.refund_failure"]
    assert failure == {
        "webhook_type": "credit_note.refund_failure",
        "object_type": "credit_note_payment_provider_refund_error",
        "organization_id": str(org),
        "credit_note_payment_provider_refund_error": {
            "lago_credit_note_id": str(note.id),
            "lago_customer_id": str(note.customer_id),
            "external_customer_id": "cus_1",
            "provider_customer_id": None,
            "payment_provider": None,
            "provider_error": {"message": "Payment refund failed", "error_code": None},
        },
    }
