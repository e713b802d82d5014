"""Lago's POST /events/estimate_fees: the fee an event would bill on pay-in-advance charges if
sent now (§4.9), checked like an event, and nothing stored."""

from datetime import UTC, datetime
from typing import Any

import pytest
from litestar import Litestar
from litestar.testing import TestClient

from adapters.stores import Ledger
from tests.conftest import Tenant

Client = TestClient[Litestar]
NOW = datetime(2026, 3, 16, 12, tzinfo=UTC)
MARCH_10 = int(datetime(2026, 3, 10, tzinfo=UTC).timestamp())


@pytest.fixture
def seats(client: Client, tenant: Tenant, ledger: Ledger) -> Client:
    """Seats at €10 each billed in advance, calls at €1 in arrears, a 20 % VAT applied to the
    organization, and a subscription since March 1."""
    ledger.billing.now = lambda: NOW
    headers = tenant.headers
    metrics = {
        code: client.post(
            "/api/v1/billable_metrics",
            json={"billable_metric": {"name": code, "code": code, **aggregation}},
            headers=headers,
        ).json()["billable_metric"]["lago_id"]
        for code, aggregation in (
            ("seats", {"aggregation_type": "sum_agg", "field_name": "seats"}),
            ("calls", {"aggregation_type": "count_agg"}),
        )
    }
    client.post(
        "/api/v1/taxes",
        json={"tax": {"code": "vat", "name": "VAT", "rate": "20", "applied_to_organization": True}},
        headers=headers,
    ).raise_for_status()
    client.post(
        "/api/v1/plans",
        json={
            "plan": {
                "name": "Team",
                "code": "team",
                "interval": "monthly",
                "amount_cents": 0,
                "amount_currency": "EUR",
                "pay_in_advance": False,
                "charges": [
                    {
                        "billable_metric_id": metrics["seats"],
                        "charge_model": "standard",
                        "pay_in_advance": True,
                        "properties": {"amount": "10"},
                    },
                    {
                        "billable_metric_id": metrics["calls"],
                        "charge_model": "standard",
                        "properties": {"amount": "1"},
                    },
                ],
            }
        },
        headers=headers,
    ).raise_for_status()
    client.post(
        "/api/v1/subscriptions",
        json={
            "subscription": {
                "external_customer_id": "acme",
                "plan_code": "team",
                "external_id": "sub_1",
                "subscription_at": "2026-03-01T00:00:00Z",
            }
        },
        headers=headers,
    ).raise_for_status()
    return client


def estimate(client: Client, tenant: Tenant, **event: Any) -> Any:
    body = {"event": {"external_subscription_id": "sub_1", "timestamp": MARCH_10, **event}}
    return client.post("/api/v1/events/estimate_fees", json=body, headers=tenant.headers)


def test_the_fee_is_what_the_event_would_add_to_its_period(seats: Client, tenant: Tenant) -> None:
    first = estimate(seats, tenant, code="seats", properties={"seats": 3})
    assert first.status_code == 200, first.text
    [fee] = first.json()["fees"]
    assert (fee["lago_id"], fee["lago_invoice_id"]) == (None, None)
    assert (fee["amount_cents"], fee["taxes_amount_cents"], fee["total_amount_cents"]) == (
        3_000,
        600,
        3_600,
    )
    assert (fee["units"], fee["events_count"], fee["pay_in_advance"]) == ("3", 1, True)
    assert (fee["from_date"], fee["item"]["code"]) == ("2026-03-01T00:00:00Z", "seats")
    # Five seats sent, then an estimate for three more: a high-water mark of 5 → 8, €30 again.
    seats.post(
        "/api/v1/events",
        json={
            "event": {
                "transaction_id": "s1",
                "external_subscription_id": "sub_1",
                "code": "seats",
                "timestamp": MARCH_10,
                "properties": {"seats": 5},
            }
        },
        headers=tenant.headers,
    ).raise_for_status()
    [again] = estimate(seats, tenant, code="seats", properties={"seats": 3}).json()["fees"]
    assert again["amount_cents"] == 3_000
    # A decrease bills nothing (§4.9: never refunded within the period).
    [lower] = estimate(seats, tenant, code="seats", properties={"seats": -2}).json()["fees"]
    assert lower["amount_cents"] == 0
    # Nothing was stored: only s1 is listed.
    listed = seats.get("/api/v1/events", headers=tenant.headers).json()["events"]
    assert [e["transaction_id"] for e in listed] == ["s1"]


def test_a_charge_in_arrears_has_no_fee_and_a_bad_event_is_refused(
    seats: Client, tenant: Tenant
) -> None:
    assert estimate(seats, tenant, code="calls", properties={}).json() == {"fees": []}
    refused = estimate(seats, tenant, code="unknown", properties={})
    assert refused.status_code == 422
    assert "code" in refused.json()["error_details"]
