"""The wallets and wallet transactions endpoints: Lago's shapes and errors, Idempotency-Key on
top-ups, and a threshold top-up after usage posted through the API."""

import time
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

import pytest
from litestar import Litestar
from litestar.testing import TestClient

from adapters.stores import Ledger
from tests.conftest import Tenant

Client = TestClient[Litestar]


@pytest.fixture
def customer(client: Client, tenant: Tenant) -> str:
    response = client.post(
        "/api/v1/customers",
        json={"customer": {"external_id": "cus_1", "currency": "EUR"}},
        headers=tenant.headers,
    )
    assert response.status_code == 200
    return "cus_1"


def create(client: Client, tenant: Tenant, **fields: Any) -> Any:
    body = {"external_customer_id": "cus_1", "currency": "EUR", "rate_amount": "1.5", **fields}
    return client.post("/api/v1/wallets", json={"wallet": body}, headers=tenant.headers)


def transactions(client: Client, tenant: Tenant, wallet_id: str, **query: str) -> Any:
    return client.get(
        f"/api/v1/wallets/{wallet_id}/wallet_transactions", params=query, headers=tenant.headers
    )


def test_a_created_wallet_has_lagos_shape(client: Client, tenant: Tenant, customer: str) -> None:
    response = create(
        client,
        tenant,
        name="Prepaid",
        code="main",
        priority=2,
        paid_credits="10",
        granted_credits="5",
        applies_to={"fee_types": ["charge"], "billable_metric_codes": None},
        recurring_transaction_rules=[
            {"trigger": "threshold", "threshold_credits": "2", "paid_credits": "10"}
        ],
        metadata={"team": "ml"},
    )
    assert response.status_code == 200  # Lago answers 200, not 201, to a create.
    body = response.json()["wallet"]
    [rule] = body.pop("recurring_transaction_rules")
    for volatile in ("lago_id", "lago_customer_id", "created_at", "last_balance_sync_at"):
        assert body.pop(volatile)
    assert body == {
        "external_customer_id": "cus_1",
        "status": "active",
        "currency": "EUR",
        "name": "Prepaid",
        "code": "main",
        "priority": 2,
        "rate_amount": "1.5",
        # The 5 granted credits are settled; the 10 paid ones wait for their invoice.
        "credits_balance": "5.0",
        "balance_cents": 750,
        "consumed_credits": "0.0",
        "consumed_amount_cents": 0,
        "expiration_at": None,
        "last_consumed_credit_at": None,
        "terminated_at": None,
        "ongoing_balance_cents": 750,
        "ongoing_usage_balance_cents": 0,
        "credits_ongoing_balance": "5.0",
        "credits_ongoing_usage_balance": "0.0",
        "applies_to": {"fee_types": ["charge"], "billable_metric_codes": []},
        "invoice_requires_successful_payment": False,
        "paid_top_up_max_amount_cents": None,
        "paid_top_up_min_amount_cents": None,
        "metadata": {"team": "ml"},
        "payment_method": None,
        "applied_invoice_custom_sections": [],
        "billing_entity_code": None,
        "purchase_order_number": None,
    }
    assert (rule["trigger"], rule["method"], rule["threshold_credits"], rule["paid_credits"]) == (
        "threshold",
        "fixed",
        "2.0",
        "10.0",
    )
    assert rule["status"] == "active"


def test_wallet_errors_are_lagos(client: Client, tenant: Tenant, customer: str) -> None:
    def error(response: Any) -> tuple[int, Any]:
        return response.status_code, response.json().get("error_details") or response.json().get(
            "code"
        )

    assert error(create(client, tenant, external_customer_id="nobody")) == (
        404,
        "customer_not_found",
    )
    assert error(create(client, tenant, currency="USD")) == (
        422,
        {"currency": ["currencies_does_not_match"]},
    )
    assert error(create(client, tenant, rate_amount="0")) == (
        422,
        {"rate_amount": ["value_is_invalid"]},
    )
    assert error(create(client, tenant, rate_amount=None)) == (
        422,
        {"rate_amount": ["value_is_mandatory"]},
    )
    assert error(create(client, tenant, paid_credits="-1")) == (
        422,
        {"paid_credits": ["invalid_paid_credits"]},
    )
    assert error(create(client, tenant, priority=51)) == (422, {"priority": ["value_is_invalid"]})
    assert error(create(client, tenant, applies_to={"billable_metric_codes": ["nope"]})) == (
        422,
        {"applies_to": ["invalid_limitations"]},
    )
    assert error(
        create(client, tenant, recurring_transaction_rules=[{"trigger": "sometimes"}])
    ) == (422, {"recurring_transaction_rules": ["invalid_recurring_rule"]})
    assert error(create(client, tenant, colour="blue")) == (
        422,
        {"colour": ["unsupported_field"]},
    )
    past = (datetime.now(UTC) - timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert error(create(client, tenant, expiration_at=past)) == (
        422,
        {"expiration_at": ["invalid_date"]},
    )
    missing_root = client.post("/api/v1/wallets", json={"purse": {}}, headers=tenant.headers)
    assert missing_root.status_code == 400
    assert missing_root.json()["error"] == (
        "BadRequest: param is missing or the value is empty: wallet"
    )
    assert create(client, tenant, code="main").status_code == 200
    assert error(create(client, tenant, code="main")) == (422, {"code": ["value_already_exist"]})
    for path in (
        "/api/v1/wallets/not-a-uuid",
        f"/api/v1/wallets/{'0' * 8}-0000-4000-8000-{'0' * 12}",
    ):
        assert error(client.get(path, headers=tenant.headers)) == (404, "wallet_not_found")


def test_wallets_are_listed_by_customer(client: Client, tenant: Tenant, customer: str) -> None:
    first = create(client, tenant, code="a").json()["wallet"]
    second = create(client, tenant, code="b").json()["wallet"]
    response = client.get(
        "/api/v1/wallets", params={"external_customer_id": "cus_1"}, headers=tenant.headers
    )
    assert response.status_code == 200
    body = response.json()
    assert [w["lago_id"] for w in body["wallets"]] == [second["lago_id"], first["lago_id"]]
    assert body["meta"] == {
        "current_page": 1,
        "next_page": None,
        "prev_page": None,
        "total_pages": 1,
        "total_count": 2,
    }
    # Lago requires the customer: without one, its 404.
    missing = client.get("/api/v1/wallets", headers=tenant.headers)
    assert (missing.status_code, missing.json()["code"]) == (404, "customer_not_found")
    other = client.get(
        "/api/v1/wallets",
        params={"external_customer_id": "cus_1", "currency": "USD"},
        headers=tenant.headers,
    )
    assert other.json()["wallets"] == []


def test_a_wallet_is_updated_and_terminated(client: Client, tenant: Tenant, customer: str) -> None:
    created = create(client, tenant, code="main", granted_credits="4").json()["wallet"]
    wallet_id = created["lago_id"]
    response = client.put(
        f"/api/v1/wallets/{wallet_id}",
        json={
            "wallet": {
                "name": "Renamed",
                "priority": 1,
                "recurring_transaction_rules": [
                    {"trigger": "interval", "interval": "monthly", "granted_credits": "1"}
                ],
            }
        },
        headers=tenant.headers,
    )
    assert response.status_code == 200
    body = response.json()["wallet"]
    assert (body["name"], body["priority"]) == ("Renamed", 1)
    assert [r["interval"] for r in body["recurring_transaction_rules"]] == ["monthly"]
    refused = client.put(
        f"/api/v1/wallets/{wallet_id}",
        json={"wallet": {"rate_amount": "2"}},
        headers=tenant.headers,
    )
    assert refused.json()["error_details"] == {"rate_amount": ["unsupported_field"]}
    # DELETE terminates; the balance is forfeited by an explicit entry (D15).
    deleted = client.delete(f"/api/v1/wallets/{wallet_id}", headers=tenant.headers)
    assert deleted.status_code == 200
    body = deleted.json()["wallet"]
    assert (body["status"], body["balance_cents"]) == ("terminated", 0)
    assert body["terminated_at"] is not None
    forfeited = transactions(client, tenant, wallet_id).json()["wallet_transactions"][0]
    assert (forfeited["transaction_status"], forfeited["amount"], forfeited["void_reason"]) == (
        "voided",
        "6.00",
        "terminated",
    )
    top_up = client.post(
        "/api/v1/wallet_transactions",
        json={"wallet_transaction": {"wallet_id": wallet_id, "granted_credits": "1"}},
        headers=tenant.headers,
    )
    assert (top_up.status_code, top_up.json()["code"]) == (404, "wallet_not_found")


def test_a_top_up_makes_one_transaction_per_non_zero_kind(
    client: Client, tenant: Tenant, customer: str
) -> None:
    wallet_id = create(client, tenant, granted_credits="10").json()["wallet"]["lago_id"]
    # Lago's client sends every key, nulls included.
    response = client.post(
        "/api/v1/wallet_transactions",
        json={
            "wallet_transaction": {
                "wallet_id": wallet_id,
                "paid_credits": "2",
                "granted_credits": "1.333",
                "voided_credits": "0",
                "invoice_requires_successful_payment": None,
                "metadata": [{"key": "source", "value": "test"}],
                "name": "Top-up",
                "ignore_paid_top_up_limits": None,
                "purchase_order_number": None,
                "payment_method": None,
                "invoice_custom_section": None,
            }
        },
        headers=tenant.headers,
    )
    assert response.status_code == 200
    body = response.json()
    assert set(body) == {"wallet_transactions"}  # Lago: no meta on this answer.
    purchased, granted = body["wallet_transactions"]
    for volatile in ("lago_id", "created_at", "lago_invoice_id"):
        assert purchased.pop(volatile)
    assert purchased == {
        "lago_wallet_id": wallet_id,
        "lago_credit_note_id": None,
        "lago_voided_invoice_id": None,
        "status": "pending",
        "source": "manual",
        "transaction_status": "purchased",
        "transaction_type": "inbound",
        "amount": "3.00",
        "credit_amount": "2.0",
        "remaining_amount_cents": None,
        "remaining_credit_amount": None,
        "priority": 50,
        "settled_at": None,
        "failed_at": None,
        "metadata": [{"key": "source", "value": "test"}],
        "name": "Top-up",
        "invoice_requires_successful_payment": False,
        "purchase_order_number": None,
        "payment_method": None,
        "applied_invoice_custom_sections": [],
        "void_reason": None,
    }
    # D6: 1.333 credits at 1.5 are 1.9995 EUR → 2.00 EUR, re-derived as 1.33333 credits.
    assert (granted["amount"], granted["credit_amount"], granted["status"]) == (
        "2.00",
        "1.33333",
        "settled",
    )
    assert granted["remaining_amount_cents"] == 200


def test_top_up_errors_are_lagos(client: Client, tenant: Tenant, customer: str) -> None:
    wallet_id = create(
        client, tenant, granted_credits="1", paid_top_up_min_amount_cents=1000
    ).json()["wallet"]["lago_id"]

    def top_up(**fields: Any) -> Any:
        return client.post(
            "/api/v1/wallet_transactions",
            json={"wallet_transaction": {"wallet_id": wallet_id, **fields}},
            headers=tenant.headers,
        )

    assert top_up(voided_credits="2").json()["error_details"] == {
        "voided_credits": ["insufficient_credits"]
    }
    assert top_up(paid_credits="1").json()["error_details"] == {
        "paid_credits": ["amount_below_minimum"]
    }
    assert top_up(paid_credits="1", ignore_paid_top_up_limits=True).status_code == 200
    assert top_up(granted_credits="abc").json()["error_details"] == {
        "granted_credits": ["value_is_invalid"]
    }
    unknown = client.post(
        "/api/v1/wallet_transactions",
        json={"wallet_transaction": {"wallet_id": None, "granted_credits": "1"}},
        headers=tenant.headers,
    )
    assert (unknown.status_code, unknown.json()["code"]) == (404, "wallet_not_found")


def test_transactions_are_listed_with_lagos_filters(
    client: Client, tenant: Tenant, customer: str
) -> None:
    wallet_id = create(client, tenant, paid_credits="10", granted_credits="5").json()["wallet"][
        "lago_id"
    ]
    listed = transactions(client, tenant, wallet_id)
    assert [t["transaction_status"] for t in listed.json()["wallet_transactions"]] == [
        "granted",
        "purchased",
    ]
    assert listed.json()["meta"]["total_count"] == 2
    pending = transactions(client, tenant, wallet_id, status="pending").json()
    assert [t["transaction_status"] for t in pending["wallet_transactions"]] == ["purchased"]
    granted = transactions(client, tenant, wallet_id, transaction_status="granted").json()
    assert len(granted["wallet_transactions"]) == 1
    outbound = transactions(client, tenant, wallet_id, transaction_type="outbound").json()
    assert outbound["wallet_transactions"] == [] and outbound["meta"]["total_count"] == 0
    invalid = transactions(client, tenant, wallet_id, status="lost")
    assert invalid.json()["error_details"] == {"status": ["value_is_invalid"]}
    one = listed.json()["wallet_transactions"][0]
    found = client.get(f"/api/v1/wallet_transactions/{one['lago_id']}", headers=tenant.headers)
    assert found.json()["wallet_transaction"] == one


def test_paying_the_credit_invoice_settles_the_credits(
    client: Client, tenant: Tenant, customer: str, ledger: Ledger
) -> None:
    wallet_id = create(client, tenant, paid_credits="10").json()["wallet"]["lago_id"]
    [purchased] = transactions(client, tenant, wallet_id).json()["wallet_transactions"]
    ledger.invoicing.set_payment_status(
        tenant.organization_id, UUID(purchased["lago_invoice_id"]), "succeeded"
    )
    [settled] = transactions(client, tenant, wallet_id).json()["wallet_transactions"]
    assert (settled["status"], settled["remaining_amount_cents"]) == ("settled", 1500)
    wallet = client.get(f"/api/v1/wallets/{wallet_id}", headers=tenant.headers).json()["wallet"]
    assert (wallet["balance_cents"], wallet["credits_balance"]) == (1500, "10.0")
    invoice = client.get(
        f"/api/v1/invoices/{purchased['lago_invoice_id']}", headers=tenant.headers
    ).json()["invoice"]
    assert (invoice["invoice_type"], invoice["payment_status"], invoice["taxes_amount_cents"]) == (
        "credit",
        "succeeded",
        0,
    )
    [fee] = invoice["fees"]
    assert (fee["amount_cents"], fee["item"]["type"], fee["item"]["lago_item_id"]) == (
        1500,
        "credit",
        purchased["lago_id"],
    )


def test_a_declined_credit_invoice_fails_its_transaction(
    client: Client, tenant: Tenant, customer: str
) -> None:
    wallet_id = create(client, tenant, paid_credits="10").json()["wallet"]["lago_id"]
    [purchased] = transactions(client, tenant, wallet_id).json()["wallet_transactions"]
    response = client.put(
        f"/api/v1/invoices/{purchased['lago_invoice_id']}",
        json={"invoice": {"payment_status": "failed"}},
        headers=tenant.headers,
    )
    assert response.status_code == 200
    [failed] = transactions(client, tenant, wallet_id).json()["wallet_transactions"]
    assert (failed["status"], failed["failed_at"] is not None) == ("failed", True)
    wallet = client.get(f"/api/v1/wallets/{wallet_id}", headers=tenant.headers).json()["wallet"]
    assert wallet["balance_cents"] == 0


def test_a_top_up_with_an_idempotency_key_is_made_once(
    client: Client, tenant: Tenant, customer: str
) -> None:
    wallet_id = create(client, tenant).json()["wallet"]["lago_id"]
    headers = {**tenant.headers, "Idempotency-Key": "top-up-1"}
    body = {"wallet_transaction": {"wallet_id": wallet_id, "granted_credits": "4"}}
    first = client.post("/api/v1/wallet_transactions", json=body, headers=headers)
    again = client.post("/api/v1/wallet_transactions", json=body, headers=headers)
    assert first.status_code == again.status_code == 200
    assert again.json() == first.json()
    assert again.headers["idempotent-replayed"] == "true"
    wallet = client.get(f"/api/v1/wallets/{wallet_id}", headers=tenant.headers).json()["wallet"]
    assert wallet["balance_cents"] == 600  # 4 credits at 1.5, once.
    other = client.post(
        "/api/v1/wallet_transactions",
        json={"wallet_transaction": {"wallet_id": wallet_id, "granted_credits": "5"}},
        headers=headers,
    )
    assert other.status_code == 422
    assert other.json()["error_details"] == {"idempotency_key": ["value_already_exist"]}


def test_usage_posted_through_the_api_triggers_exactly_one_threshold_top_up(
    client: Client, tenant: Tenant, ledger: Ledger
) -> None:
    # Tokens at 0.01 EUR; a wallet of 20 credits (1 EUR each) with threshold 15, paid 10.
    billing, org = ledger.billing, tenant.organization_id
    metric = billing.create_billable_metric(
        org, "tokens", {"name": "Tokens", "aggregation_type": "sum_agg", "field_name": "tokens"}
    )
    billing.create_plan(
        org,
        "basic",
        {
            "name": "Basic",
            "interval": "monthly",
            "amount_cents": 0,
            "amount_currency": "EUR",
            "pay_in_advance": False,
            "charges": [
                {
                    "billable_metric_id": str(metric.id),
                    "charge_model": "standard",
                    "properties": {"amount": "0.01"},
                }
            ],
        },
    )
    billing.create_subscription(
        org,
        "sub_1",
        external_customer_id="cus_1",
        plan_code="basic",
        subscription_at=datetime.now(UTC) - timedelta(hours=1),
    )
    wallet_id = create(
        client,
        tenant,
        rate_amount="1",
        granted_credits="20",
        recurring_transaction_rules=[
            {"trigger": "threshold", "threshold_credits": "15", "paid_credits": "10"}
        ],
    ).json()["wallet"]["lago_id"]
    # Seven events of 1.00 EUR: the ongoing balance goes 19, 18, ... 13, crossing 15 once.
    for number in range(7):
        response = client.post(
            "/api/v1/events",
            json={
                "event": {
                    "transaction_id": f"t{number}",
                    "external_subscription_id": "sub_1",
                    "code": "tokens",
                    "timestamp": None,
                    "properties": {"tokens": 100},
                }
            },
            headers=tenant.headers,
        )
        assert response.status_code == 200
    deadline = time.monotonic() + 2.0
    automatic: list[Any] = []
    while not automatic and time.monotonic() < deadline:
        listed = transactions(client, tenant, wallet_id).json()["wallet_transactions"]
        automatic = [t for t in listed if t["source"] == "threshold"]
        if not automatic:
            time.sleep(0.01)  # Polling with a deadline, not a blind wait.
    wallet = client.get(f"/api/v1/wallets/{wallet_id}", headers=tenant.headers).json()["wallet"]
    assert wallet["ongoing_balance_cents"] == 1300
    # Let the worker see any later refresh, then check there is still exactly one.
    ledger.wallets.refresh(org, "cus_1")
    listed = transactions(client, tenant, wallet_id).json()["wallet_transactions"]
    assert [(t["transaction_status"], t["amount"]) for t in listed if t["source"] != "manual"] == [
        ("purchased", "10.00")
    ]
