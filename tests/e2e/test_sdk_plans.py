"""Plans end to end: a real `tally serve` process driven by Lago's official Python client."""

import pytest
from lago_python_client.client import Client
from lago_python_client.exceptions import LagoApiError
from lago_python_client.models import (
    BillableMetric,
    BillableMetricFilter,
    BillableMetricFilters,
    Charge,
    ChargeFilter,
    ChargeFilters,
    Charges,
    Plan,
)

from tests.conftest import Server


@pytest.fixture
def lago(server: Server) -> Client:
    return Client(api_key=server.api_key, api_url=server.url)


def test_plans_round_trip_through_the_official_client(lago: Client) -> None:
    tokens = lago.billable_metrics.create(
        BillableMetric(
            name="Tokens",
            code="tokens",
            aggregation_type="sum_agg",
            field_name="total",
            filters=BillableMetricFilters(
                __root__=[BillableMetricFilter(key="model", values=["small", "large"])]
            ),
        )
    )
    calls = lago.billable_metrics.create(
        BillableMetric(name="Calls", code="calls", aggregation_type="count_agg")
    )
    graduated_ranges = [
        {"from_value": 0, "to_value": 100, "per_unit_amount": "0", "flat_amount": "0"},
        {"from_value": 101, "to_value": None, "per_unit_amount": "0.01", "flat_amount": "0"},
    ]
    created = lago.plans.create(
        Plan(
            name="Pro",
            code="pro",
            interval="monthly",
            amount_cents=4900,
            amount_currency="EUR",
            pay_in_advance=True,
            trial_period=14,
            charges=Charges(
                __root__=[
                    Charge(
                        billable_metric_id=tokens.lago_id,
                        charge_model="standard",
                        properties={"amount": "0.000003"},
                        filters=ChargeFilters(
                            __root__=[
                                ChargeFilter(
                                    values={"model": ["large"]},
                                    properties={"amount": "0.000015"},
                                    invoice_display_name="Large model",
                                )
                            ]
                        ),
                    ),
                    Charge(
                        billable_metric_id=calls.lago_id,
                        charge_model="graduated",
                        properties={"graduated_ranges": graduated_ranges},
                    ),
                ]
            ),
        )
    )
    assert (created.code, created.trial_period, created.amount_cents) == ("pro", 14.0, 4900)
    assert created.charges is not None
    standard, graduated = created.charges.__root__
    assert (standard.code, standard.properties) == ("tokens", {"amount": "0.000003"})
    assert standard.filters is not None
    [large] = standard.filters.__root__
    assert (large.values, large.properties) == ({"model": ["large"]}, {"amount": "0.000015"})
    assert graduated.properties == {"graduated_ranges": graduated_ranges}

    found = lago.plans.find("pro")
    assert found.lago_id == created.lago_id

    updated = lago.plans.update(
        Plan(
            name="Pro 2026",
            charges=Charges(
                __root__=[
                    Charge(id=standard.lago_id, properties={"amount": "0.000002"}),
                    Charge(id=graduated.lago_id),
                ]
            ),
        ),
        "pro",
    )
    assert updated.name == "Pro 2026"
    assert updated.charges is not None
    assert [c.lago_id for c in updated.charges.__root__] == [standard.lago_id, graduated.lago_id]
    assert updated.charges.__root__[0].properties == {"amount": "0.000002"}

    lago.plans.create(
        Plan(
            name="Starter",
            code="starter",
            interval="monthly",
            amount_cents=0,
            amount_currency="EUR",
            pay_in_advance=False,
        )
    )
    listed = lago.plans.find_all({"per_page": 10, "page": 1})
    assert [p.code for p in listed["plans"]] == ["starter", "pro"]
    assert listed["meta"]["total_count"] == 2

    deleted = lago.plans.destroy("pro")
    assert deleted.code == "pro"
    with pytest.raises(LagoApiError) as missing:
        lago.plans.find("pro")
    assert missing.value.status_code == 404
    assert missing.value.response["code"] == "plan_not_found"


def test_a_bad_price_is_refused_naming_the_field(lago: Client) -> None:
    calls = lago.billable_metrics.create(
        BillableMetric(name="Calls", code="calls", aggregation_type="count_agg")
    )
    overlapping = [
        {"from_value": 0, "to_value": 100, "per_unit_amount": "1", "flat_amount": "0"},
        {"from_value": 50, "to_value": None, "per_unit_amount": "1", "flat_amount": "0"},
    ]
    with pytest.raises(LagoApiError) as error:
        lago.plans.create(
            Plan(
                name="Pro",
                code="pro",
                interval="monthly",
                amount_cents=0,
                amount_currency="EUR",
                pay_in_advance=False,
                charges=Charges(
                    __root__=[
                        Charge(
                            billable_metric_id=calls.lago_id,
                            charge_model="graduated",
                            properties={"graduated_ranges": overlapping},
                        )
                    ]
                ),
            )
        )
    assert error.value.status_code == 422
    assert error.value.response["error_details"] == {
        "charges.0.properties.graduated_ranges": ["invalid_graduated_ranges"]
    }
