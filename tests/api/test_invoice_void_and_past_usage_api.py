"""Void with a credit note, pay-in-advance fees and past usage through the HTTP API.

March's invoice (tests/api/test_invoices_api.py): €30 from March 10 → 21.29, 1.5M small tokens
at €3/M → 4.50, 100k large tokens at €10/M → 1.00; fees 26.79, VAT 20 % 5.36, total 32.15.
"""

from datetime import UTC, datetime

from lago_python_client.models.customer_usage import CustomerUsageResponse

from adapters.stores import Ledger
from api.problems import PROBLEM_TYPE_BASE
from tests.api.test_invoices_api import (
    APRIL_1,
    APRIL_2,
    MARCH_20,
    Client,
    add_customer,
    at,
    bill,
    catalog,
    march,
    subscribe,
)
from tests.conftest import Tenant

__all__ = ["catalog", "march"]


def test_a_paid_invoice_is_voided_with_a_refund_never_above_what_was_paid(
    catalog: Client,
    march: str,
    tenant: Tenant,
    ledger: Ledger,
) -> None:
    path = f"/api/v1/invoices/{march}"
    catalog.put(path, json={"invoice": {"payment_status": "succeeded"}}, headers=tenant.headers)
    at(ledger, APRIL_2)
    refused = catalog.post(f"{path}/void", headers=tenant.headers)
    assert (refused.status_code, refused.json()["code"]) == (405, "not_voidable")
    too_much = catalog.post(
        f"{path}/void",
        json={"generate_credit_note": True, "refund_amount": 3216, "credit_amount": 0},
        headers=tenant.headers,
    )
    body = too_much.json()
    assert too_much.status_code == 422
    assert {k: body[k] for k in ("type", "status", "code", "error_details")} == {
        "type": PROBLEM_TYPE_BASE + "validation_errors",
        "status": 422,
        "code": "validation_errors",
        "error_details": {"credit_refund_amount": ["total_amount_exceeds_invoice_amount"]},
    }
    voided = catalog.post(
        f"{path}/void",
        json={"generate_credit_note": True, "refund_amount": 3215, "credit_amount": 0},
        headers=tenant.headers,
    )
    assert voided.status_code == 200, voided.text
    assert voided.json()["invoice"]["status"] == "voided"
    notes = catalog.get("/api/v1/credit_notes", headers=tenant.headers).json()["credit_notes"]
    [note] = notes  # All 32.15 refunded: nothing left for a second note.
    assert {
        k: note[k]
        for k in (
            "lago_invoice_id",
            "refund_amount_cents",
            "credit_amount_cents",
            "total_amount_cents",
            "taxes_amount_cents",
            "sub_total_excluding_taxes_amount_cents",
        )
    } == {
        "lago_invoice_id": march,
        "refund_amount_cents": 3215,
        "credit_amount_cents": 0,
        "total_amount_cents": 3215,
        "taxes_amount_cents": 536,
        "sub_total_excluding_taxes_amount_cents": 2679,
    }


def test_past_usage_is_the_invoiced_periods_charges_in_lagos_shape(
    catalog: Client,
    march: str,
    tenant: Tenant,
) -> None:
    response = catalog.get(
        "/api/v1/customers/acme/past_usage",
        params={"external_subscription_id": "sub_1", "periods_count": 5},
        headers=tenant.headers,
    )
    assert response.status_code == 200, response.text
    body = response.json()
    [period] = body["usage_periods"]
    # VAT 5.36 shared over the lines 21.29, 4.50 and 1.00 (largest remainder): 4.26, 0.90, 0.20.
    assert {k: v for k, v in period.items() if k != "charges_usage"} == {
        "from_datetime": "2026-03-10T00:00:00Z",
        "to_datetime": "2026-03-31T23:59:59Z",
        "issuing_date": "2026-04-01",
        "currency": "EUR",
        "amount_cents": 550,
        "taxes_amount_cents": 110,
        "total_amount_cents": 660,
        "lago_invoice_id": march,
    }
    [charge] = period["charges_usage"]
    assert (charge["units"], charge["amount_cents"], charge["billable_metric"]["code"]) == (
        "1600000",
        550,
        "tokens",
    )
    assert sorted((f["values"] is None, f["amount_cents"]) for f in charge["filters"]) == [
        (False, 100),
        (True, 450),
    ]
    assert body["meta"]["total_count"] == 1
    CustomerUsageResponse.parse_obj(period)  # Lago's client reads it (pydantic v1 model).
    none = catalog.get(
        "/api/v1/customers/acme/past_usage",
        params={"external_subscription_id": "sub_1", "billable_metric_code": "tokens"},
        headers=tenant.headers,
    ).json()
    assert none["usage_periods"][0]["amount_cents"] == 550
    unknown = catalog.get(
        "/api/v1/customers/acme/past_usage",
        params={"external_subscription_id": "sub_1", "billable_metric_code": "nope"},
        headers=tenant.headers,
    )
    assert (unknown.status_code, unknown.json()["code"]) == (404, "billable_metric_not_found")
    missing = catalog.get("/api/v1/customers/acme/past_usage", headers=tenant.headers)
    assert (missing.status_code, missing.json()["error_details"]) == (
        422,
        {"external_subscription_id": ["value_is_mandatory"]},
    )
    nobody = catalog.get(
        "/api/v1/customers/nobody/past_usage",
        params={"external_subscription_id": "sub_1"},
        headers=tenant.headers,
    )
    assert (nobody.status_code, nobody.json()["code"]) == (404, "customer_not_found")


def test_a_pay_in_advance_fee_names_its_event(
    catalog: Client,
    tenant: Tenant,
    ledger: Ledger,
) -> None:
    headers = tenant.headers
    metric = catalog.get("/api/v1/billable_metrics/tokens", headers=headers).json()
    plan = catalog.post(
        "/api/v1/plans",
        json={
            "plan": {
                "name": "Advance",
                "code": "advance",
                "interval": "monthly",
                "amount_cents": 0,
                "amount_currency": "EUR",
                "pay_in_advance": False,
                "charges": [
                    {
                        "billable_metric_id": metric["billable_metric"]["lago_id"],
                        "charge_model": "standard",
                        "pay_in_advance": True,
                        "properties": {"amount": "0.00001"},
                    }
                ],
            }
        },
        headers=headers,
    )
    assert plan.status_code == 200, plan.text
    catalog.post("/api/v1/customers", json={"customer": {"external_id": "bob"}}, headers=headers)
    created = catalog.post(
        "/api/v1/subscriptions",
        json={
            "subscription": {
                "external_customer_id": "bob",
                "plan_code": "advance",
                "external_id": "sub_b",
                "subscription_at": "2026-03-10T00:00:00Z",
            }
        },
        headers=headers,
    )
    assert created.status_code == 200, created.text
    at(ledger, MARCH_20)
    event = {
        "transaction_id": "adv_1",
        "external_subscription_id": "sub_b",
        "code": "tokens",
        "timestamp": int(MARCH_20.timestamp()),
        "properties": {"tokens": 250_000, "model": "small"},
    }
    assert catalog.post("/api/v1/events", json={"event": event}, headers=headers).is_success
    [invoice_id] = bill(ledger, datetime(2026, 3, 20, 0, 5, tzinfo=UTC))
    invoice = catalog.get(f"/api/v1/invoices/{invoice_id}", headers=headers).json()["invoice"]
    [fee] = invoice["fees"]
    assert (fee["pay_in_advance"], fee["event_transaction_id"], fee["amount_cents"]) == (
        True,
        "adv_1",
        250,
    )
    assert invoice["billing_periods"][0]["invoicing_reason"] == "in_advance_charge"
    assert (invoice["status"], invoice["total_amount_cents"]) == ("finalized", 300)  # VAT 20 %.


def test_a_voided_invoice_gives_the_wallet_its_credits_back(
    catalog: Client,
    tenant: Tenant,
    ledger: Ledger,
) -> None:
    headers = tenant.headers
    add_customer(catalog, tenant)
    wallet = catalog.post(
        "/api/v1/wallets",
        json={
            "wallet": {
                "external_customer_id": "acme",
                "currency": "EUR",
                "rate_amount": "1",
                "granted_credits": "10",
            }
        },
        headers=headers,
    ).json()["wallet"]
    subscribe(catalog, tenant)
    [invoice_id] = bill(ledger, APRIL_1)  # 21.29 + VAT 4.26 = 25.55: the wallet pays 10.00.
    at(ledger, APRIL_2)
    voided = catalog.post(f"/api/v1/invoices/{invoice_id}/void", headers=headers)
    assert voided.json()["invoice"]["prepaid_credit_amount_cents"] == 1000
    found = catalog.get(f"/api/v1/wallets/{wallet['lago_id']}", headers=headers).json()
    assert found["wallet"]["balance_cents"] == 1000
    listed = catalog.get(
        f"/api/v1/wallets/{wallet['lago_id']}/wallet_transactions", headers=headers
    ).json()["wallet_transactions"]
    [back] = [t for t in listed if t["lago_voided_invoice_id"] is not None]
    assert {
        k: back[k]
        for k in ("transaction_type", "transaction_status", "status", "amount", "lago_invoice_id")
    } == {
        "transaction_type": "inbound",
        "transaction_status": "granted",
        "status": "settled",
        "amount": "10.00",
        "lago_invoice_id": None,
    }
    assert back["lago_voided_invoice_id"] == invoice_id
