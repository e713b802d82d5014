"""Ingest validation and current usage cache aggregates per process, and stay exact: a change
made by another process (another `tally serve` worker) counts at the next request."""

from datetime import UTC, datetime, timedelta

import pytest

from adapters.settings import Settings
from adapters.stores import open_ledger
from application.metering import EventInput, EventRejectedError

START = datetime(2026, 3, 1, tzinfo=UTC)


def test_a_change_by_another_process_is_seen_by_the_next_request(
    store_settings: Settings,
) -> None:
    first, second = open_ledger(store_settings), open_ledger(store_settings)  # Two "workers".
    try:
        now = START + timedelta(days=3)
        for ledger in (first, second):
            ledger.billing.now = lambda: now
        organization, _ = first.billing.create_organization("acme")
        org = organization.id
        metric = first.billing.create_billable_metric(
            org, "tokens", {"name": "Tokens", "aggregation_type": "sum_agg", "field_name": "n"}
        )
        first.billing.create_plan(
            org,
            "p",
            {
                "name": "p",
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
        first.billing.create_subscription(
            org, "sub_1", external_customer_id="c1", plan_code="p", subscription_at=START
        )

        def send(
            ledger_index: int,
            transaction_id: str,
            properties: dict[str, str],
            subscription: str = "sub_1",
        ) -> None:
            ledger = (first, second)[ledger_index]
            event = EventInput(
                transaction_id, subscription, "tokens", int(now.timestamp()), properties, None
            )
            ledger.metering.ingest(org, [event], batch=False)

        send(1, "t1", {"n": "2"})  # The second process caches the subscription and the metric.
        usage = second.usage_queries.current_usage(org, "c1", "sub_1")
        assert usage.amount_cents == 200

        # The first process declares a filter: the second validates with it at once.
        send(1, "t2", {"n": "3", "model": "b"})
        first.billing.update_billable_metric(
            org, "tokens", {"filters": [{"key": "model", "values": ["a"]}]}
        )
        with pytest.raises(EventRejectedError) as rejected:
            send(1, "t3", {"n": "3", "model": "b"})
        assert "model" in rejected.value.field
        send(1, "t3", {"n": "3", "model": "a"})

        # An unknown subscription is refused (and remembered as unknown) until the first
        # process creates it.
        with pytest.raises(EventRejectedError) as unknown:
            send(1, "u1", {"n": "1"}, "sub_2")
        assert unknown.value.reason == "subscription_not_found"
        first.billing.create_subscription(
            org, "sub_2", external_customer_id="c1", plan_code="p", subscription_at=START
        )
        send(1, "u1", {"n": "1"}, "sub_2")

        # The first process terminates the subscription: the second refuses later events.
        first.billing.terminate_subscription(org, "sub_1")
        now = START + timedelta(days=4)
        with pytest.raises(EventRejectedError) as inactive:
            send(1, "t4", {"n": "1"})
        assert inactive.value.reason == "subscription_not_active"
    finally:
        first.close()
        second.close()
