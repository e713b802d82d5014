"""POST /api/v1/events/{transaction_id}/void (Tally extension) through the HTTP API."""

from datetime import UTC, datetime

from adapters.stores import Ledger
from tests.api.test_usage_api import Client, event, post_events, usage
from tests.conftest import Tenant

pytest_plugins = ["tests.api.test_usage_api"]  # The llm fixture: a catalog and sub_1.

VOID_TIME = datetime(2026, 3, 17, 8, tzinfo=UTC)


def test_a_void_drops_the_event_from_current_usage_and_marks_it(
    llm: Client, tenant: Tenant, ledger: Ledger
) -> None:
    response = post_events(
        llm,
        tenant,
        event("t1", 1_500_000, model="small", direction="input"),  # 4.50
        event("t2", 100_000, model="large", direction="output"),  # 6.00
    )
    assert response.status_code == 200, response.text
    assert usage(llm, tenant).json()["customer_usage"]["amount_cents"] == 1050
    assert response.json()["events"][1]["voided_at"] is None

    ledger.billing.now = lambda: VOID_TIME
    voided = llm.post(
        "/api/v1/events/t2/void",
        params={"external_subscription_id": "sub_1"},
        headers=tenant.headers,
    )
    assert voided.status_code == 200, voided.text
    body = voided.json()["event"]
    assert (body["transaction_id"], body["voided_at"]) == ("t2", "2026-03-17T08:00:00Z")
    assert usage(llm, tenant).json()["customer_usage"]["amount_cents"] == 450

    found = llm.get("/api/v1/events/t2", headers=tenant.headers).json()["event"]
    assert found == body
    listed = llm.get("/api/v1/events", headers=tenant.headers).json()["events"]
    assert {e["transaction_id"]: e["voided_at"] for e in listed} == {
        "t1": None,
        "t2": "2026-03-17T08:00:00Z",
    }

    # Again, later, with the subscription in the body or Lago's envelope: the same answer.
    ledger.billing.now = lambda: datetime(2026, 3, 18, tzinfo=UTC)
    for payload in (
        {"external_subscription_id": "sub_1"},
        {"event": {"external_subscription_id": "sub_1"}},
    ):
        again = llm.post("/api/v1/events/t2/void", json=payload, headers=tenant.headers)
        assert (again.status_code, again.json()) == (200, voided.json())
    assert usage(llm, tenant).json()["customer_usage"]["amount_cents"] == 450

    # An identical re-send of the voided event is a duplicate: accepted, still not counted.
    resent = post_events(llm, tenant, event("t2", 100_000, model="large", direction="output"))
    assert resent.status_code == 200
    assert resent.json()["events"][0]["voided_at"] == "2026-03-17T08:00:00Z"
    assert usage(llm, tenant).json()["customer_usage"]["amount_cents"] == 450


def test_voiding_an_unknown_event_is_404_and_the_subscription_is_required(
    llm: Client, tenant: Tenant
) -> None:
    post_events(llm, tenant, event("t1", 1_000, model="small"))
    unknown = llm.post(
        "/api/v1/events/nope/void",
        params={"external_subscription_id": "sub_1"},
        headers=tenant.headers,
    )
    assert unknown.status_code == 404
    assert unknown.json()["code"] == "event_not_found"
    other = llm.post(
        "/api/v1/events/t1/void",
        params={"external_subscription_id": "sub_2"},
        headers=tenant.headers,
    )
    assert other.status_code == 404
    missing = llm.post("/api/v1/events/t1/void", headers=tenant.headers)
    assert missing.status_code == 422
    assert missing.json()["error_details"] == {"external_subscription_id": ["value_is_mandatory"]}
