"""Tax and BillableMetric aggregates: given, when, then."""

from decimal import Decimal

import pytest

from domain.billable_metric import BillableMetric
from domain.errors import InvalidValueError
from domain.tax import Tax
from tests.builders import ORG_ID


def test_a_tax_rate_is_kept_exact() -> None:
    tax = Tax.create(ORG_ID, "fi_vat", {"name": "Finnish VAT", "rate": "25.5"})
    [created] = tax.collect_events()
    assert isinstance(created, Tax.Created)
    assert created.rate == Decimal("25.5")


@pytest.mark.parametrize("rate", ["-1", "100.5", "abc", True, 0.5])
def test_a_tax_rate_outside_0_to_100_or_not_exact_is_refused(rate: object) -> None:
    with pytest.raises(InvalidValueError) as error:
        Tax.create(ORG_ID, "vat", {"name": "VAT", "rate": rate})
    assert error.value.field == "rate"


def test_a_tax_update_records_only_what_changes() -> None:
    tax = Tax.create(ORG_ID, "vat", {"name": "VAT", "rate": "20"})
    tax.collect_events()
    tax.update({"name": "VAT", "rate": "20.0", "description": "Standard"})
    [updated] = tax.collect_events()
    assert isinstance(updated, Tax.Updated)
    assert updated.changes == {"description": "Standard"}


def token_metric() -> BillableMetric:
    metric = BillableMetric.create(
        ORG_ID,
        "tokens",
        {
            "name": "Tokens",
            "aggregation_type": "sum_agg",
            "field_name": "tokens",
            "filters": [{"key": "model", "values": ["small", "large"]}],
        },
    )
    metric.collect_events()
    return metric


def test_a_metric_records_its_whole_definition() -> None:
    metric = token_metric()
    assert metric.definition["aggregation_type"] == "sum_agg"
    assert metric.filter_keys == ("model",)


@pytest.mark.parametrize(
    ("values", "field", "reason"),
    [
        (
            {"aggregation_type": "count_agg", "recurring": True},
            "recurring",
            "not_compatible_with_aggregation_type",
        ),
        ({"aggregation_type": "sum_agg"}, "field_name", "value_is_mandatory"),
        (
            {"aggregation_type": "median_agg", "field_name": "x"},
            "aggregation_type",
            "value_is_invalid",
        ),
        (
            {"aggregation_type": "count_agg", "expression": "round(x)"},
            "expression",
            "unsupported_field",
        ),
        (
            {"aggregation_type": "count_agg", "filters": [{"key": "m", "values": []}]},
            "filters",
            "value_is_mandatory",
        ),
    ],
)
def test_an_invalid_metric_is_refused_naming_the_field(
    values: dict[str, object], field: str, reason: str
) -> None:
    with pytest.raises(InvalidValueError) as error:
        BillableMetric.create(ORG_ID, "m", {"name": "M", **values})
    assert (error.value.field, error.value.reason) == (field, reason)


def test_what_decides_a_metrics_value_cannot_change() -> None:
    # Given a sum of the tokens field
    metric = token_metric()
    # When an update asks to count instead, then it is refused and nothing is recorded
    with pytest.raises(InvalidValueError) as error:
        metric.update({"aggregation_type": "count_agg"})
    assert (error.value.field, error.value.reason) == ("aggregation_type", "value_is_immutable")
    assert metric.collect_events() == []


def test_a_metric_rename_records_only_the_name() -> None:
    metric = token_metric()
    metric.update({"name": "LLM tokens", "field_name": "tokens"})
    [updated] = metric.collect_events()
    assert isinstance(updated, BillableMetric.Updated)
    assert updated.changes == {"name": "LLM tokens"}
