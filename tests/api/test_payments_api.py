"""The payments endpoints: Lago's /payments, checkout_url and retry_payment; Tally's
/payment_providers, bank-transfer reconciliation and inbound Stripe webhooks; with the real
Stripe adapter talking to the local fake."""

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import pytest
from lago_python_client.models.payment import PaymentResponse, PaymentsResponse
from litestar import Litestar
from litestar.testing import TestClient

from adapters.payment_processors import Processors
from adapters.settings import memory_settings
from adapters.stores import Ledger, open_ledger
from api.app import create_app
from tests.conftest import Tenant
from tests.fake_stripe import FakeStripe, fake_stripe

Client = TestClient[Litestar]
MARCH_1 = datetime(2026, 3, 1, tzinfo=UTC)
EU_KEY, US_KEY = "sk_test_eu_api_0001", "sk_test_us_api_0002"
EU_HOOK, US_HOOK = "whsec_eu_api_0001", "whsec_us_api_0002"


@pytest.fixture
def fake() -> Iterator[FakeStripe]:
    with fake_stripe(EU_KEY, US_KEY) as running:
        yield running


@pytest.fixture
def ledger(fake: FakeStripe) -> Iterator[Ledger]:
    ledger = open_ledger(
        memory_settings(), payment_providers=Processors(fake.url, stripe_timeout_s=0.5)
    )
    ledger.billing.now = lambda: MARCH_1
    yield ledger
    ledger.close()


@pytest.fixture
def client(ledger: Ledger) -> Iterator[Client]:
    with TestClient(app=create_app(ledger)) as test_client:
        yield test_client


def connect(client: Client, tenant: Tenant, code: str, key: str, hook: str, **more: Any) -> Any:
    body = {"code": code, "provider": "stripe", "secret_key": key, "webhook_secret": hook, **more}
    return client.post(
        "/api/v1/payment_providers", json={"payment_provider": body}, headers=tenant.headers
    )


def invoice(ledger: Ledger, tenant: Tenant, code: str | None = "eu") -> UUID:
    """A customer on the connection `code` and its finalized 30.00 EUR invoice."""
    org = tenant.organization_id
    configuration = {"payment_provider": "stripe", "payment_provider_code": code} if code else {}
    ledger.billing.upsert_customer(
        org, "acme", {"currency": "EUR", "billing_configuration": configuration}
    )
    ledger.billing.create_plan(
        org,
        "advance",
        {
            "name": "Advance",
            "interval": "monthly",
            "amount_cents": 3000,
            "amount_currency": "EUR",
            "pay_in_advance": True,
            "charges": [],
        },
    )
    ledger.billing.create_subscription(
        org, "sub_1", external_customer_id="acme", plan_code="advance", subscription_at=MARCH_1
    )
    [issued] = ledger.invoicing.run(MARCH_1)
    return issued.id


def webhook(client: Client, code: str, secret: str, event: dict[str, Any]) -> Any:
    import stripe

    payload = json.dumps(event)
    return client.post(
        f"/api/v1/webhooks/stripe/{code}",
        content=payload.encode(),
        headers={
            "Stripe-Signature": stripe.WebhookSignature.generate_signature_header(payload, secret),
            "Content-Type": "application/json",
        },
    )


def test_payment_providers_are_managed_and_never_show_their_secrets(
    client: Client, tenant: Tenant
) -> None:
    created = connect(client, tenant, "eu", EU_KEY, EU_HOOK, name="EU", retry_schedule="2d,5d")
    assert created.status_code == 200, created.text
    body = created.json()["payment_provider"]
    for volatile in ("lago_id", "created_at", "updated_at"):
        assert body.pop(volatile)
    assert body == {
        "code": "eu",
        "provider": "stripe",
        "name": "EU",
        "success_redirect_url": None,
        "retry_schedule": "2d,5d",
        "reference_prefix": None,
        "secrets": {"secret_key": "…0001", "webhook_secret": "…0001"},
    }
    assert EU_KEY not in created.text and EU_HOOK not in created.text
    again = connect(client, tenant, "eu", EU_KEY, EU_HOOK)
    assert again.json()["error_details"] == {"code": ["value_already_exist"]}
    missing = client.post(
        "/api/v1/payment_providers",
        json={"payment_provider": {"code": "us", "provider": "stripe", "secret_key": US_KEY}},
        headers=tenant.headers,
    )
    assert missing.json()["error_details"] == {"webhook_secret": ["value_is_mandatory"]}
    unknown = connect(client, tenant, "pp", US_KEY, US_HOOK, provider="paypal")
    assert unknown.json()["error_details"] == {"provider": ["value_is_invalid"]}
    rotated = client.put(
        "/api/v1/payment_providers/eu",
        json={"payment_provider": {"webhook_secret": "whsec_rotated_9999"}},
        headers=tenant.headers,
    )
    assert rotated.json()["payment_provider"]["secrets"]["webhook_secret"] == "…9999"
    listed = client.get("/api/v1/payment_providers", headers=tenant.headers).json()
    assert [p["code"] for p in listed["payment_providers"]] == ["eu"]
    assert listed["meta"]["total_count"] == 1
    deleted = client.delete("/api/v1/payment_providers/eu", headers=tenant.headers)
    assert deleted.status_code == 200
    gone = client.get("/api/v1/payment_providers/eu", headers=tenant.headers)
    assert (gone.status_code, gone.json()["code"]) == (404, "payment_provider_not_found")
    assert client.get("/api/v1/payment_providers").status_code == 401


def test_an_invoice_is_charged_on_the_account_its_customer_names(
    client: Client, tenant: Tenant, ledger: Ledger, fake: FakeStripe
) -> None:
    connect(client, tenant, "eu", EU_KEY, EU_HOOK)
    connect(client, tenant, "us", US_KEY, US_HOOK)
    invoice_id = invoice(ledger, tenant, "us")
    ledger.payments.collect(MARCH_1)
    assert fake.payment_intents(EU_KEY) == []
    [intent] = fake.payment_intents(US_KEY)
    assert (intent["amount"], intent["currency"]) == (3000, "eur")
    [call] = fake.recorded("/v1/payment_intents")
    assert call.idempotency_key == f"tally-invoice-{invoice_id}-attempt-1"
    found = client.get(f"/api/v1/invoices/{invoice_id}", headers=tenant.headers).json()
    assert found["invoice"]["payment_status"] == "succeeded"
    listed = client.get(
        "/api/v1/payments", params={"invoice_id": str(invoice_id)}, headers=tenant.headers
    ).json()
    PaymentsResponse.parse_obj(listed["payments"])
    [payment] = listed["payments"]
    assert (payment["type"], payment["payment_status"], payment["external_payment_id"]) == (
        "provider",
        "succeeded",
        intent["id"],
    )
    assert (payment["payment_provider_code"], payment["attempt"]) == ("us", 1)


def test_a_webhook_needs_no_api_key_but_a_good_signature(
    client: Client, tenant: Tenant, ledger: Ledger, fake: FakeStripe
) -> None:
    connect(client, tenant, "eu", EU_KEY, EU_HOOK)
    fake.intent_status = "processing"
    invoice_id = invoice(ledger, tenant)
    [payment] = ledger.payments.collect(MARCH_1)
    [intent] = fake.payment_intents(EU_KEY)
    event = fake.event("payment_intent.succeeded", {**intent, "status": "succeeded"})
    forged = webhook(client, "eu", US_HOOK, event)
    assert (forged.status_code, forged.json()["code"]) == (400, "invalid_signature")
    assert ledger.payment_store.inbox_item(tenant.organization_id, "eu", event["id"]) is None
    assert webhook(client, "nope", EU_HOOK, event).status_code == 400
    received = webhook(client, "eu", EU_HOOK, event)
    assert received.status_code == 200
    assert received.json() == {"received": True, "event_id": event["id"], "processed": True}
    assert webhook(client, "eu", EU_HOOK, event).status_code == 200  # A redelivery.
    found = client.get(f"/api/v1/payments/{payment.id}", headers=tenant.headers).json()
    PaymentResponse.parse_obj(found["payment"])
    assert found["payment"]["payment_status"] == "succeeded"
    paid = client.get(f"/api/v1/invoices/{invoice_id}", headers=tenant.headers).json()
    assert paid["invoice"]["payment_status"] == "succeeded"


def test_manual_payments_through_lagos_endpoints(
    client: Client, tenant: Tenant, ledger: Ledger
) -> None:
    invoice_id = invoice(ledger, tenant, code=None)

    def pay(amount_cents: int, reference: str = "wire", **more: Any) -> Any:
        body = {"invoice_id": str(invoice_id), "amount_cents": amount_cents,
                "reference": reference, **more}  # fmt: skip
        return client.post("/api/v1/payments", json={"payment": body}, headers=tenant.headers)

    first = pay(1000, paid_at="2026-03-02T10:00:00Z")
    assert first.status_code == 200, first.text
    created = first.json()["payment"]
    PaymentResponse.parse_obj(created)
    assert (created["type"], created["payment_status"], created["paid_at"]) == (
        "manual",
        "succeeded",
        "2026-03-02T10:00:00Z",
    )
    assert created["invoice_ids"] == [str(invoice_id)]
    assert pay(2001).json()["error_details"] == {"amount_cents": ["invalid_amount"]}
    assert pay(0).json()["error_details"] == {"amount_cents": ["value_is_invalid"]}
    assert client.post("/api/v1/payments", json={}, headers=tenant.headers).status_code == 400
    assert pay(2000).status_code == 200
    found = client.get(f"/api/v1/invoices/{invoice_id}", headers=tenant.headers).json()
    assert found["invoice"]["payment_status"] == "succeeded"
    listed = client.get("/api/v1/payments", headers=tenant.headers).json()
    assert listed["meta"]["total_count"] == 2
    missing = client.get(f"/api/v1/payments/{UUID(int=5)}", headers=tenant.headers)
    assert (missing.status_code, missing.json()["code"]) == (404, "payment_not_found")


def test_checkout_url_and_retry_payment_use_the_customers_account(
    client: Client, tenant: Tenant, ledger: Ledger, fake: FakeStripe
) -> None:
    connect(client, tenant, "eu", EU_KEY, EU_HOOK, success_redirect_url="https://acme.test/ok")
    invoice_id = invoice(ledger, tenant)
    fake.fail_next("decline")
    ledger.payments.collect(MARCH_1)
    failed = client.get(f"/api/v1/invoices/{invoice_id}", headers=tenant.headers).json()
    assert failed["invoice"]["payment_status"] == "failed"
    checkout = client.post("/api/v1/customers/acme/checkout_url", headers=tenant.headers)
    assert checkout.status_code == 200, checkout.text
    [session] = fake.objects(EU_KEY, "checkout.session")
    assert checkout.json()["customer"]["checkout_url"] == session["url"]
    assert session["success_url"] == "https://acme.test/ok"
    retried = client.post(f"/api/v1/invoices/{invoice_id}/retry_payment", headers=tenant.headers)
    assert (retried.status_code, retried.content) == (200, b"")
    keys = [call.idempotency_key for call in fake.recorded("/v1/payment_intents")]
    assert keys == [f"tally-invoice-{invoice_id}-attempt-{n}" for n in (1, 2)]
    paid = client.get(f"/api/v1/invoices/{invoice_id}", headers=tenant.headers).json()
    assert paid["invoice"]["payment_status"] == "succeeded"
    again = client.post(f"/api/v1/invoices/{invoice_id}/retry_payment", headers=tenant.headers)
    assert (again.status_code, again.json()["code"]) == (405, "invalid_status")
    ledger.billing.upsert_customer(tenant.organization_id, "bob", {"currency": "EUR"})
    unlinked = client.post("/api/v1/customers/bob/checkout_url", headers=tenant.headers)
    assert unlinked.json()["error_details"] == {"payment_provider": ["no_linked_payment_provider"]}


def test_bank_transfers_are_reconciled_from_a_statement(
    client: Client, tenant: Tenant, ledger: Ledger
) -> None:
    made = client.post(
        "/api/v1/payment_providers",
        json={"payment_provider": {"code": "eu", "provider": "bank_transfer"}},
        headers=tenant.headers,
    )
    assert made.status_code == 200, made.text
    org = tenant.organization_id
    ledger.billing.upsert_customer(
        org, "acme", {"billing_configuration": {"payment_provider": "bank_transfer"}}
    )
    invoice_id = invoice(ledger, tenant, code=None)
    ledger.billing.upsert_customer(
        org, "acme", {"billing_configuration": {"payment_provider": "bank_transfer"}}
    )
    [payment] = ledger.payments.collect(MARCH_1)
    statement = f"reference,amount,currency\n{payment.reference},30.00,EUR\nTLY-0,1.00,EUR\n"
    response = client.post(
        "/api/v1/bank_transfers/reconcile",
        json={"csv": statement, "bank_transfers": [{"reference": "x", "amount": "1.5",
                                                     "currency": "EUR"}]},
        headers=tenant.headers,
    )  # fmt: skip
    assert response.status_code == 200, response.text
    results = [
        (r["reference"], r["amount"], r["result"]) for r in response.json()["reconciliations"]
    ]
    assert results == [
        ("x", "1.50", "unknown_reference"),
        (payment.reference, "30.00", "matched"),
        ("TLY-0", "1.00", "unknown_reference"),
    ]
    paid = client.get(f"/api/v1/invoices/{invoice_id}", headers=tenant.headers).json()
    assert paid["invoice"]["payment_status"] == "succeeded"


def test_the_invoice_shows_partial_payments_and_goes_overdue_after_its_due_date(
    client: Client, tenant: Tenant, ledger: Ledger
) -> None:
    invoice_id = invoice(ledger, tenant, code=None)  # 30.00 EUR, due March 1.

    def shown() -> dict[str, Any]:
        response = client.get(f"/api/v1/invoices/{invoice_id}", headers=tenant.headers)
        body: dict[str, Any] = response.json()["invoice"]
        return {
            name: body[name]
            for name in (
                "payment_status",
                "payment_overdue",
                "total_paid_amount_cents",
                "total_due_amount_cents",
            )
        }

    body = {"invoice_id": str(invoice_id), "amount_cents": 1200, "reference": "wire 1"}
    paid = client.post("/api/v1/payments", json={"payment": body}, headers=tenant.headers)
    assert paid.status_code == 200, paid.text
    assert shown() == {
        "payment_status": "pending",
        "payment_overdue": False,
        "total_paid_amount_cents": 1200,
        "total_due_amount_cents": 1800,
    }
    # Dunning on the due date marks nothing; the day after, the invoice is overdue.
    ledger.payments.dunning(datetime(2026, 3, 1, 23, tzinfo=UTC))
    assert shown()["payment_overdue"] is False
    ledger.payments.dunning(datetime(2026, 3, 2, 1, tzinfo=UTC))
    assert shown()["payment_overdue"] is True
    listed = client.get("/api/v1/invoices", headers=tenant.headers).json()["invoices"]
    assert [(i["payment_overdue"], i["total_due_amount_cents"]) for i in listed] == [(True, 1800)]
    body = {"invoice_id": str(invoice_id), "amount_cents": 1800, "reference": "wire 2"}
    paid = client.post("/api/v1/payments", json={"payment": body}, headers=tenant.headers)
    assert paid.status_code == 200, paid.text
    assert shown() == {
        "payment_status": "succeeded",
        "payment_overdue": False,
        "total_paid_amount_cents": 3000,
        "total_due_amount_cents": 0,
    }
    listed = client.get(f"/api/v1/payments?invoice_id={invoice_id}", headers=tenant.headers).json()[
        "payments"
    ]
    assert [
        (p["amount_cents"], p["lago_payable_id"], p["payable_type"], p["status"], p["next_action"])
        for p in listed
    ] == [
        (1800, str(invoice_id), "Invoice", "succeeded", {}),
        (1200, str(invoice_id), "Invoice", "succeeded", {}),
    ]
    assert {(p["provider_payment_id"], p["payment_provider_type"]) for p in listed} == {
        (None, None)
    }


def test_the_processor_reconciliation_report_matches_charges_to_payments(
    client: Client, tenant: Tenant, ledger: Ledger, fake: FakeStripe
) -> None:
    connect(client, tenant, "eu", EU_KEY, EU_HOOK)
    fake.now = int(MARCH_1.timestamp()) + 60
    invoice_id = invoice(ledger, tenant, "eu")
    ledger.payments.collect(MARCH_1)
    [intent] = fake.payment_intents(EU_KEY)
    fake.now += 86_400
    payout = fake.pay_out(EU_KEY)
    stray = fake.add_balance_transaction(EU_KEY, "charge", 700)
    url = "/api/v1/reports/processor_reconciliation?from=2026-03-01&to=2026-03-31"
    response = client.get(url, headers=tenant.headers)
    assert response.status_code == 200, response.text
    [payment] = ledger.payments.invoice_payments(tenant.organization_id, invoice_id)
    assert response.json()["processor_reconciliation"] == {
        "items": [
            {
                "payment_provider_code": "eu",
                "result": "matched",
                "difference": False,
                "transaction_id": fake.objects(EU_KEY, "charge")[0]["balance_transaction"],
                "kind": "charge",
                "date": "2026-03-01",
                "currency": "EUR",
                "processor_amount_cents": 3000,
                "recorded_amount_cents": 3000,
                "fee_amount_cents": 67,
                "lago_payment_id": str(payment.id),
                "lago_invoice_id": str(invoice_id),
                "detail": None,
            },
            {
                "payment_provider_code": "eu",
                "result": "unknown_payment",
                "difference": True,
                "transaction_id": stray["id"],
                "kind": "charge",
                "date": "2026-03-02",
                "currency": "EUR",
                "processor_amount_cents": 700,
                "recorded_amount_cents": None,
                "fee_amount_cents": 34,
                "lago_payment_id": None,
                "lago_invoice_id": None,
                "detail": None,
            },
        ],
        "fees": [{"payment_provider_code": "eu", "currency": "EUR", "fee_amount_cents": 101}],
        "payouts": [
            {
                "payment_provider_code": "eu",
                "payout_id": payout["id"],
                "amount_cents": 2933,
                "currency": "EUR",
                "status": "paid",
                "created_at": "2026-03-02T00:01:00Z",
                "arrival_date": "2026-03-04",
            }
        ],
    }
    assert intent["status"] == "succeeded"
    as_csv = client.get(url + "&format=csv", headers=tenant.headers)
    assert as_csv.text.splitlines()[0].startswith("payment_provider_code,result,difference")
    assert len(as_csv.text.splitlines()) == 3
    missing = client.get(
        "/api/v1/reports/processor_reconciliation?from=2026-03-01", headers=tenant.headers
    )
    assert missing.json()["error_details"] == {"to": ["value_is_mandatory"]}
