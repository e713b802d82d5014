"""Erasure and export over HTTP, on the in-memory store."""

from datetime import UTC, datetime

import pytest
from litestar import Litestar
from litestar.testing import TestClient

from adapters.stores import Ledger
from api.controllers import privacy
from api.problems import PROBLEM_TYPE_BASE
from application.metering import EventInput
from domain.customer import ERASED
from tests.conftest import Tenant
from tests.erasure_scenario import EMAIL, NAME, PERSONAL

Client = TestClient[Litestar]


def test_an_erased_customer_reads_as_erased_everywhere(client: Client, tenant: Tenant) -> None:
    headers = tenant.headers
    client.post(
        "/api/v1/customers",
        json={"customer": {"external_id": "cus_1", **PERSONAL}},
        headers=headers,
    ).raise_for_status()
    erased = client.post("/api/v1/customers/cus_1/erase", headers=headers)
    assert erased.status_code == 200
    for customer in (
        erased.json()["customer"],
        client.get("/api/v1/customers/cus_1", headers=headers).json()["customer"],
        client.get("/api/v1/customers", headers=headers).json()["customers"][0],
    ):
        assert customer["name"] == customer["email"] == customer["city"] == ERASED
        assert customer["shipping_address"]["city"] == ERASED
        assert customer["shipping_address"]["country"] == "FR"
        assert customer["metadata"][0]["key"] == "nickname"
        assert customer["metadata"][0]["value"] == ERASED
    history = client.get("/api/v1/customers/cus_1/history", headers=headers).json()["events"]
    assert [e["type"] for e in history] == ["Customer.Created", "Customer.Erased"]
    assert NAME not in str(history) and EMAIL not in str(history)
    assert history[0]["changes"]["name"] == ERASED


def test_erasing_an_unknown_customer_is_a_404(client: Client, tenant: Tenant) -> None:
    response = client.post("/api/v1/customers/nobody/erase", headers=tenant.headers)
    assert response.status_code == 404
    assert response.json()["code"] == "customer_not_found"


def test_a_customer_with_a_live_subscription_is_not_erasable(
    client: Client, tenant: Tenant, ledger: Ledger
) -> None:
    ledger.billing.now = lambda: datetime(2026, 3, 2, tzinfo=UTC)
    ledger.billing.create_plan(
        tenant.organization_id,
        "basic",
        {
            "name": "Basic",
            "interval": "monthly",
            "amount_cents": 100,
            "amount_currency": "EUR",
            "pay_in_advance": False,
        },
    )
    ledger.billing.create_subscription(
        tenant.organization_id, "sub_1", external_customer_id="cus_1", plan_code="basic"
    )
    response = client.post("/api/v1/customers/cus_1/erase", headers=tenant.headers)
    assert response.status_code == 405
    assert response.json() == {
        "type": PROBLEM_TYPE_BASE + "not_erasable",
        "title": "Method Not Allowed",
        "status": 405,
        "detail": "Customer 'cus_1' cannot be erased yet: active_subscriptions.",
        "error": "Method Not Allowed",
        "code": "not_erasable",
        "error_details": {"customer": ["active_subscriptions"]},
    }


def test_the_export_links_to_the_usage_events_it_leaves_out(
    client: Client, tenant: Tenant, ledger: Ledger, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(privacy, "EXPORT_EVENTS_MAX", 2)
    now = datetime(2026, 3, 2, tzinfo=UTC)
    ledger.billing.now = lambda: now
    metric = ledger.billing.create_billable_metric(
        tenant.organization_id, "calls", {"name": "Calls", "aggregation_type": "count_agg"}
    )
    ledger.billing.create_plan(
        tenant.organization_id,
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
                    "properties": {"amount": "1"},
                }
            ],
        },
    )
    ledger.billing.create_subscription(
        tenant.organization_id,
        "sub 1",
        external_customer_id="cus_1",
        plan_code="basic",
        subscription_at=datetime(2026, 3, 1, tzinfo=UTC),
    )
    ledger.metering.ingest(
        tenant.organization_id,
        [EventInput(f"t{n}", "sub 1", "calls", int(now.timestamp()), {}, None) for n in range(3)],
        batch=True,
    )
    export = client.get("/api/v1/customers/cus_1/export", headers=tenant.headers).json()
    [usage] = export["customer_export"]["usage_events"]
    assert (usage["total_count"], len(usage["events"])) == (3, 2)
    assert usage["next_url"] == (
        "http://testserver.local/api/v1/events?external_subscription_id=sub+1&page=2&per_page=2"
    )
    rest = client.get(
        usage["next_url"].removeprefix("http://testserver.local"), headers=tenant.headers
    )
    assert [e["transaction_id"] for e in rest.json()["events"]] == [
        e for e in ["t0", "t1", "t2"] if e not in {x["transaction_id"] for x in usage["events"]}
    ]
