"""Subscriptions, usage events and current usage end to end, through Lago's official client."""

import time

import pytest
from lago_python_client.client import Client
from lago_python_client.exceptions import LagoApiError
from lago_python_client.models import (
    BatchEvent,
    BillableMetric,
    BillableMetricFilter,
    BillableMetricFilters,
    Charge,
    ChargeFilter,
    ChargeFilters,
    Charges,
    Customer,
    Event,
    Plan,
    Subscription,
    Tax,
)
from lago_python_client.models.plan import PlanOverrides

from tests.conftest import Server


@pytest.fixture
def lago(server: Server) -> Client:
    return Client(api_key=server.api_key, api_url=server.url)


def test_an_llm_provider_bills_tokens_through_the_official_client(lago: Client) -> None:
    tax = lago.taxes.create(Tax(name="VAT FR", code="vat_fr", rate=20.0))
    assert tax.rate == 20.0
    metric = lago.billable_metrics.create(
        BillableMetric(
            name="Tokens",
            code="tokens",
            aggregation_type="sum_agg",
            field_name="tokens",
            filters=BillableMetricFilters(
                __root__=[BillableMetricFilter(key="model", values=["small", "large"])]
            ),
        )
    )
    graduated = [
        {"from_value": 0, "to_value": 10, "per_unit_amount": "0", "flat_amount": "0"},
        {"from_value": 11, "to_value": None, "per_unit_amount": "0.5", "flat_amount": "0"},
    ]
    calls = lago.billable_metrics.create(
        BillableMetric(name="Calls", code="calls", aggregation_type="count_agg")
    )
    lago.plans.create(
        Plan(
            name="LLM",
            code="llm",
            interval="monthly",
            amount_cents=0,
            amount_currency="EUR",
            pay_in_advance=False,
            tax_codes=["vat_fr"],
            charges=Charges(
                __root__=[
                    Charge(
                        billable_metric_id=metric.lago_id,
                        charge_model="standard",
                        properties={"amount": "0.000003"},
                        filters=ChargeFilters(
                            __root__=[
                                ChargeFilter(
                                    values={"model": ["large"]},
                                    properties={"amount": "0.00001"},
                                )
                            ]
                        ),
                    ),
                    Charge(
                        billable_metric_id=calls.lago_id,
                        charge_model="graduated",
                        properties={"graduated_ranges": graduated},
                    ),
                ]
            ),
        )
    )
    lago.customers.create(Customer(external_id="acme", name="Acme", currency="EUR"))
    subscription = lago.subscriptions.create(
        Subscription(
            external_customer_id="acme",
            plan_code="llm",
            external_id="sub_1",
            plan_overrides=PlanOverrides(amount_cents=1000),
        )
    )
    assert (subscription.status, subscription.plan_amount_cents) == ("active", "1000")

    now = int(time.time())
    lago.events.create(
        Event(
            transaction_id="t1",
            external_subscription_id="sub_1",
            code="tokens",
            timestamp=now,
            properties={"tokens": 1_500_000, "model": "small"},
        )
    )
    lago.events.batch_create(
        BatchEvent(
            events=[
                Event(
                    transaction_id="t2",
                    external_subscription_id="sub_1",
                    code="tokens",
                    timestamp=now,
                    properties={"tokens": 100_000, "model": "large"},
                ),
                *(
                    Event(transaction_id=f"c{n}", external_subscription_id="sub_1", code="calls")
                    for n in range(12)
                ),
            ]
        )
    )
    # A retry of the same event is accepted and counted once.
    lago.events.create(
        Event(
            transaction_id="t1",
            external_subscription_id="sub_1",
            code="tokens",
            timestamp=now,
            properties={"tokens": 1_500_000, "model": "small"},
        )
    )
    usage = lago.customers.current_usage("acme", "sub_1")
    # 1.5M × 0.000003 = 4.50; 100k × 0.00001 = 1.00; 12 calls: 2 above 10 × 0.50 = 1.00.
    assert (usage.amount_cents, usage.taxes_amount_cents, usage.total_amount_cents) == (
        650,
        130,
        780,
    )
    with pytest.raises(LagoApiError) as conflict:
        lago.events.create(
            Event(
                transaction_id="t1",
                external_subscription_id="sub_1",
                code="tokens",
                timestamp=now,
                properties={"tokens": 7, "model": "small"},
            )
        )
    assert conflict.value.response["error_details"] == {"transaction_id": ["value_already_exist"]}

    updated = lago.subscriptions.update(Subscription(name="Main"), "sub_1")
    assert updated.name == "Main"
    terminated = lago.subscriptions.destroy("sub_1")
    assert terminated.status == "terminated"
    with pytest.raises(LagoApiError) as gone:
        lago.subscriptions.find("sub_1")
    assert gone.value.status_code == 404


def test_an_event_for_an_unknown_metric_is_refused(lago: Client) -> None:
    with pytest.raises(LagoApiError) as error:
        lago.events.create(
            Event(transaction_id="t1", external_subscription_id="nobody", code="nothing")
        )
    assert error.value.status_code == 422
    assert error.value.response["error_details"] == {"code": ["metric_not_found"]}
