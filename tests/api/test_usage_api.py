"""Subscriptions, usage events and current usage through the HTTP API, on a fixed clock."""

from collections.abc import Iterator
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
def llm(client: Client, tenant: Tenant, ledger: Ledger) -> Iterator[Client]:
    """An LLM provider's catalog: tokens by model and direction, a subscription since March 1."""
    ledger.billing.now = lambda: NOW
    headers = tenant.headers
    metric = client.post(
        "/api/v1/billable_metrics",
        json={
            "billable_metric": {
                "name": "Tokens",
                "code": "tokens",
                "aggregation_type": "sum_agg",
                "field_name": "tokens",
                "filters": [
                    {"key": "model", "values": ["small", "large"]},
                    {"key": "direction", "values": ["input", "output"]},
                ],
            }
        },
        headers=headers,
    ).json()["billable_metric"]
    client.post(
        "/api/v1/taxes",
        json={"tax": {"code": "vat", "name": "VAT", "rate": "20", "applied_to_organization": True}},
        headers=headers,
    )
    plan = client.post(
        "/api/v1/plans",
        json={
            "plan": {
                "name": "LLM",
                "code": "llm",
                "interval": "monthly",
                "amount_cents": 0,
                "amount_currency": "EUR",
                "pay_in_advance": False,
                "charges": [
                    {
                        "billable_metric_id": metric["lago_id"],
                        "charge_model": "standard",
                        "properties": {"amount": "0.000003"},
                        "filters": [
                            {
                                "values": {"model": ["large"], "direction": ["output"]},
                                "properties": {"amount": "0.00006"},
                            },
                            {
                                "values": {"model": ["large"]},
                                "properties": {"amount": "0.00001"},
                            },
                        ],
                    }
                ],
            }
        },
        headers=headers,
    )
    assert plan.status_code == 200, plan.text
    subscription = client.post(
        "/api/v1/subscriptions",
        json={
            "subscription": {
                "external_customer_id": "acme",
                "plan_code": "llm",
                "external_id": "sub_1",
                "subscription_at": "2026-03-01T00:00:00Z",
            }
        },
        headers=headers,
    )
    assert subscription.status_code == 200, subscription.text
    yield client


def event(transaction_id: str, tokens: Any, **properties: Any) -> dict[str, Any]:
    return {
        "transaction_id": transaction_id,
        "external_subscription_id": "sub_1",
        "code": "tokens",
        "timestamp": MARCH_10,
        "properties": {"tokens": tokens, **properties},
    }


def post_events(client: Client, tenant: Tenant, *events: dict[str, Any]) -> Any:
    return client.post(
        "/api/v1/events/batch", json={"events": list(events)}, headers=tenant.headers
    )


def usage(client: Client, tenant: Tenant, **query: str) -> Any:
    return client.get(
        "/api/v1/customers/acme/current_usage",
        params={"external_subscription_id": "sub_1", **query},
        headers=tenant.headers,
    )


def test_a_subscription_creates_its_customer_with_the_plan_currency(
    llm: Client, tenant: Tenant
) -> None:
    subscription = llm.get("/api/v1/subscriptions/sub_1", headers=tenant.headers).json()
    assert subscription["subscription"]["status"] == "active"
    assert subscription["subscription"]["current_billing_period_started_at"] == (
        "2026-03-01T00:00:00Z"
    )
    assert subscription["subscription"]["current_billing_period_ending_at"] == (
        "2026-03-31T23:59:59Z"
    )
    customer = llm.get("/api/v1/customers/acme", headers=tenant.headers).json()["customer"]
    assert customer["currency"] == "EUR"


def test_current_usage_prices_each_filter_bucket(llm: Client, tenant: Tenant) -> None:
    response = post_events(
        llm,
        tenant,
        event("t1", 1_500_000, model="small", direction="input"),  # default: 4.50
        event("t2", 100_000, model="large", direction="output"),  # large/output: 6.00
        event("t3", 200_000, model="large", direction="input"),  # large: 2.00
        event("t4", "300000", model="large"),  # large: 3.00
    )
    assert response.status_code == 200, response.text
    body = usage(llm, tenant).json()["customer_usage"]
    assert (body["from_datetime"], body["to_datetime"]) == (
        "2026-03-01T00:00:00Z",
        "2026-03-31T23:59:59Z",
    )
    assert (body["amount_cents"], body["taxes_amount_cents"], body["total_amount_cents"]) == (
        1550,
        310,
        1860,
    )
    [charge] = body["charges_usage"]
    assert (charge["units"], charge["events_count"], charge["amount_cents"]) == ("2100000", 4, 1550)
    buckets = {str(f["values"]): (f["units"], f["amount_cents"]) for f in charge["filters"]}
    assert buckets == {
        "None": ("1500000", 450),
        "{'model': ['large'], 'direction': ['output']}": ("100000", 600),
        "{'model': ['large']}": ("500000", 500),
    }
    untaxed = usage(llm, tenant, apply_taxes="false").json()["customer_usage"]
    assert (untaxed["taxes_amount_cents"], untaxed["total_amount_cents"]) == (0, 1550)


def test_an_identical_resend_counts_once_and_another_payload_is_refused(
    llm: Client, tenant: Tenant
) -> None:
    first = llm.post("/api/v1/events", json={"event": event("t1", 1000)}, headers=tenant.headers)
    again = llm.post("/api/v1/events", json={"event": event("t1", 1000)}, headers=tenant.headers)
    assert (first.status_code, again.status_code) == (200, 200)
    assert first.json() == again.json()
    other = llm.post("/api/v1/events", json={"event": event("t1", 2000)}, headers=tenant.headers)
    assert other.status_code == 422
    assert other.json()["error_details"] == {"transaction_id": ["value_already_exist"]}
    assert usage(llm, tenant).json()["customer_usage"]["charges_usage"][0]["units"] == "1000"


def test_a_batch_with_one_bad_event_stores_nothing(llm: Client, tenant: Tenant) -> None:
    response = post_events(
        llm,
        tenant,
        event("t1", 1000),
        event("t2", 1000, model="medium"),  # Not a declared filter value.
    )
    assert response.status_code == 422
    assert response.json()["error_details"] == {"1": {"properties.model": ["value_is_invalid"]}}
    assert usage(llm, tenant).json()["customer_usage"]["amount_cents"] == 0
    assert llm.get("/api/v1/events/t1", headers=tenant.headers).status_code == 404


@pytest.mark.parametrize(
    ("change", "field", "reason"),
    [
        ({"code": "nope"}, "code", "metric_not_found"),
        (
            {"external_subscription_id": "sub_x"},
            "external_subscription_id",
            "subscription_not_found",
        ),
        (
            {"timestamp": int(datetime(2026, 2, 1, tzinfo=UTC).timestamp())},
            "timestamp",
            "subscription_not_active",
        ),
        ({"timestamp": int(NOW.timestamp()) + 301}, "timestamp", "value_is_in_future"),
        ({"timestamp": "2026-03-10T00:00:00Z"}, "timestamp", "invalid_format"),
        ({"properties": {"model": "small"}}, "properties.tokens", "value_is_mandatory"),
        ({"properties": {"tokens": "many"}}, "properties.tokens", "value_is_invalid"),
        ({"transaction_id": None}, "transaction_id", "value_is_mandatory"),
        # PostgreSQL's text holds no NUL character: refused on every store.
        ({"transaction_id": "t\u0000"}, "transaction_id", "value_is_invalid"),
        (
            {"external_subscription_id": "sub_1\u0000"},
            "external_subscription_id",
            "value_is_invalid",
        ),
        ({"code": "tokens\u0000"}, "code", "value_is_invalid"),
        (
            {"properties": {"tokens": "1", "model": "a\u0000"}},
            "properties.model",
            "value_is_invalid",
        ),
        ({"properties": {"tokens": "1", "m\u0000": "a"}}, "properties", "value_is_invalid"),
    ],
)
def test_an_invalid_event_is_refused_naming_its_field(
    llm: Client, tenant: Tenant, change: dict[str, Any], field: str, reason: str
) -> None:
    response = llm.post(
        "/api/v1/events", json={"event": {**event("t1", 1000), **change}}, headers=tenant.headers
    )
    assert response.status_code == 422, response.text
    assert response.json()["error_details"] == {field: [reason]}


def test_batch_limits_are_lagos(llm: Client, tenant: Tenant) -> None:
    empty = post_events(llm, tenant)
    assert empty.json()["error_details"] == {"events": ["no_events"]}
    too_many = post_events(llm, tenant, *(event(f"t{n}", 1) for n in range(101)))
    assert too_many.json()["error_details"] == {"events": ["too_many_events"]}


def test_timestamps_in_every_wire_form_are_exact(llm: Client, tenant: Tenant) -> None:
    for n, stamp in enumerate([MARCH_10, str(MARCH_10), f"{MARCH_10}.123", None]):
        body = {**event(f"t{n}", 1), "timestamp": stamp}
        response = llm.post("/api/v1/events", json={"event": body}, headers=tenant.headers)
        assert response.status_code == 200, response.text
    found = llm.get("/api/v1/events/t2", headers=tenant.headers).json()["event"]
    assert found["timestamp"] == "2026-03-10T00:00:00.123Z"
    now_event = llm.get("/api/v1/events/t3", headers=tenant.headers).json()["event"]
    assert now_event["timestamp"] == "2026-03-16T12:00:00.000Z"
    listed = llm.get("/api/v1/events?per_page=2", headers=tenant.headers).json()
    assert listed["meta"]["total_count"] == 4


def test_an_upgrade_keeps_the_subscription_and_applies_from_today(
    llm: Client, tenant: Tenant
) -> None:
    plan = llm.get("/api/v1/plans/llm", headers=tenant.headers).json()["plan"]
    llm.post(
        "/api/v1/plans",
        json={
            "plan": {
                "name": "LLM Pro",
                "code": "llm_pro",
                "interval": "monthly",
                "amount_cents": 5000,
                "amount_currency": "EUR",
                "pay_in_advance": False,
                "charges": [
                    {
                        "billable_metric_id": plan["charges"][0]["lago_billable_metric_id"],
                        "charge_model": "standard",
                        "properties": {"amount": "0.000002"},
                    }
                ],
            }
        },
        headers=tenant.headers,
    )
    upgraded = llm.post(
        "/api/v1/subscriptions",
        json={
            "subscription": {
                "external_customer_id": "acme",
                "plan_code": "llm_pro",
                "external_id": "sub_1",
            }
        },
        headers=tenant.headers,
    ).json()["subscription"]
    assert (upgraded["plan_code"], upgraded["previous_plan_code"]) == ("llm_pro", "llm")
    assert upgraded["current_billing_period_started_at"] == "2026-03-16T00:00:00Z"


def test_terminating_ends_the_subscription_and_its_usage(llm: Client, tenant: Tenant) -> None:
    deleted = llm.delete("/api/v1/subscriptions/sub_1", headers=tenant.headers)
    assert deleted.json()["subscription"]["status"] == "terminated"
    assert llm.get("/api/v1/subscriptions/sub_1", headers=tenant.headers).status_code == 404
    found = llm.get(
        "/api/v1/subscriptions/sub_1", params={"status": "terminated"}, headers=tenant.headers
    )
    assert found.json()["subscription"]["terminated_at"] == "2026-03-16T12:00:00Z"
    response = usage(llm, tenant)
    assert (response.status_code, response.json()["code"]) == (405, "no_active_subscription")
    late = llm.post(
        "/api/v1/events",
        json={"event": {**event("t9", 1), "timestamp": int(NOW.timestamp()) + 60}},
        headers=tenant.headers,
    )
    assert late.json()["error_details"] == {"timestamp": ["subscription_not_active"]}


def test_lists_filter_subscriptions_by_status(llm: Client, tenant: Tenant) -> None:
    llm.post(
        "/api/v1/subscriptions",
        json={
            "subscription": {
                "external_customer_id": "acme",
                "plan_code": "llm",
                "external_id": "sub_later",
                "subscription_at": "2026-04-01T00:00:00Z",
            }
        },
        headers=tenant.headers,
    )
    active = llm.get("/api/v1/subscriptions", headers=tenant.headers).json()
    assert [s["external_id"] for s in active["subscriptions"]] == ["sub_1"]
    both = llm.get(
        "/api/v1/subscriptions?status[]=active&status[]=pending&external_customer_id=acme",
        headers=tenant.headers,
    ).json()
    assert sorted(s["external_id"] for s in both["subscriptions"]) == ["sub_1", "sub_later"]


def test_a_plan_in_another_currency_than_the_customer_is_refused(
    llm: Client, tenant: Tenant
) -> None:
    llm.post(
        "/api/v1/plans",
        json={
            "plan": {
                "name": "USD",
                "code": "usd",
                "interval": "monthly",
                "amount_cents": 100,
                "amount_currency": "USD",
                "pay_in_advance": False,
            }
        },
        headers=tenant.headers,
    )
    response = llm.post(
        "/api/v1/subscriptions",
        json={
            "subscription": {
                "external_customer_id": "acme",
                "plan_code": "usd",
                "external_id": "sub_usd",
            }
        },
        headers=tenant.headers,
    )
    assert response.json()["error_details"] == {"plan_code": ["currencies_does_not_match"]}
