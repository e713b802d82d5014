"""Billable-metric rules: which definitions Lago (and Tally) accept, and unit rounding (§3.8)."""

from collections.abc import Sequence
from decimal import Decimal

import pytest

from domain.errors import InvalidValueError
from domain.metrics import (
    AGGREGATION_TYPES,
    ALL_FILTER_VALUES,
    ROUNDING_PRECISION_MAX,
    ROUNDING_PRECISION_MIN,
    check_metric,
    round_units,
)


def check(
    aggregation_type: str = "sum_agg",
    field_name: str | None = "tokens",
    recurring: bool = False,
    rounding_function: str | None = None,
    rounding_precision: int | None = None,
    weighted_interval: str | None = None,
    filters: Sequence[tuple[str, Sequence[str]]] = (),
) -> None:
    check_metric(
        aggregation_type,
        field_name,
        recurring,
        rounding_function,
        rounding_precision,
        weighted_interval,
        filters,
    )


def refusal(**kwargs: object) -> tuple[str, str]:
    with pytest.raises(InvalidValueError) as error:
        check(**kwargs)  # type: ignore[arg-type]
    return error.value.field, error.value.reason


def test_every_lago_aggregation_type_is_accepted_with_a_field_name() -> None:
    for aggregation_type in AGGREGATION_TYPES:
        interval = "seconds" if aggregation_type == "weighted_sum_agg" else None
        check(aggregation_type, "value", weighted_interval=interval)


def test_an_unknown_or_deprecated_aggregation_type_is_refused() -> None:
    assert refusal(aggregation_type="custom_agg") == ("aggregation_type", "value_is_invalid")
    assert refusal(aggregation_type="recurring_count_agg") == (
        "aggregation_type",
        "value_is_invalid",
    )


def test_count_needs_no_field_name_but_every_other_type_does() -> None:
    check("count_agg", None)
    for aggregation_type in ("sum_agg", "max_agg", "unique_count_agg", "latest_agg"):
        assert refusal(aggregation_type=aggregation_type, field_name=None) == (
            "field_name",
            "value_is_mandatory",
        )
    assert refusal(field_name="  ") == ("field_name", "value_is_mandatory")


def test_recurring_is_allowed_for_sum_unique_count_and_weighted_sum_only() -> None:
    check("sum_agg", "v", recurring=True)
    check("unique_count_agg", "v", recurring=True)
    check("weighted_sum_agg", "v", recurring=True, weighted_interval="seconds")
    for aggregation_type in ("count_agg", "max_agg", "latest_agg"):
        # Lago: errors.add(:recurring, :not_compatible_with_aggregation_type).
        assert refusal(aggregation_type=aggregation_type, recurring=True) == (
            "recurring",
            "not_compatible_with_aggregation_type",
        )


def test_weighted_sum_needs_the_seconds_interval() -> None:
    assert refusal(aggregation_type="weighted_sum_agg") == ("weighted_interval", "value_is_invalid")
    assert refusal(aggregation_type="weighted_sum_agg", weighted_interval="hours") == (
        "weighted_interval",
        "value_is_invalid",
    )
    assert refusal(weighted_interval="minutes") == ("weighted_interval", "value_is_invalid")


def test_rounding_function_and_precision_are_bounded() -> None:
    check(rounding_function="ceil", rounding_precision=ROUNDING_PRECISION_MAX)
    check(rounding_function="round", rounding_precision=ROUNDING_PRECISION_MIN)
    assert refusal(rounding_function="truncate") == ("rounding_function", "value_is_invalid")
    assert refusal(rounding_function="round", rounding_precision=ROUNDING_PRECISION_MAX + 1) == (
        "rounding_precision",
        "value_is_out_of_range",
    )
    assert refusal(rounding_function="round", rounding_precision=ROUNDING_PRECISION_MIN - 1) == (
        "rounding_precision",
        "value_is_out_of_range",
    )
    assert refusal(rounding_function="round", rounding_precision=True) == (
        "rounding_precision",
        "value_is_invalid",
    )


def test_metric_filters_have_unique_keys_and_unique_non_empty_values() -> None:
    check(filters=[("model", ["large", "small"]), ("direction", ["input", "output"])])
    assert refusal(filters=[("", ["a"])]) == ("filters", "value_is_mandatory")
    assert refusal(filters=[("model", [])]) == ("filters", "value_is_mandatory")
    assert refusal(filters=[("model", "large")]) == ("filters", "value_is_mandatory")
    assert refusal(filters=[("model", ["a"]), ("model", ["b"])]) == (
        "filters",
        "value_already_exist",
    )
    assert refusal(filters=[("model", ["a", "a"])]) == ("filters", "value_already_exist")
    assert refusal(filters=[("model", ["a", ""])]) == ("filters", "value_is_invalid")
    assert refusal(filters=[("model", [ALL_FILTER_VALUES])]) == ("filters", "value_is_invalid")


@pytest.mark.parametrize(
    ("function", "precision", "expected"),
    [
        # §3.8: 12.3456 GB → round/2 12.35; ceil/0 13; floor/1 12.3.
        ("round", 2, "12.35"),
        ("ceil", 0, "13"),
        ("floor", 1, "12.3"),
        ("ceil", None, "13"),  # The precision defaults to 0.
        ("round", -1, "10"),  # Negative precision rounds to tens, as Ruby's BigDecimal#round.
    ],
)
def test_units_round_as_the_worked_example_says(
    function: str, precision: int | None, expected: str
) -> None:
    assert round_units(Decimal("12.3456"), function, precision) == Decimal(expected)


def test_round_is_half_up_away_from_zero_never_half_even() -> None:
    assert round_units(Decimal("2.345"), "round", 2) == Decimal("2.35")
    assert round_units(Decimal("2.5"), "round", 0) == Decimal(3)
    assert round_units(Decimal("-2.5"), "round", 0) == Decimal(-3)
    assert round_units(Decimal("1250"), "round", -2) == Decimal(1300)


def test_ceil_and_floor_go_towards_plus_and_minus_infinity() -> None:
    assert round_units(Decimal("-1.5"), "ceil", 0) == Decimal(-1)
    assert round_units(Decimal("-1.5"), "floor", 0) == Decimal(-2)


def test_without_a_rounding_function_units_are_unchanged() -> None:
    assert round_units(Decimal("12.3456"), None, 2) == Decimal("12.3456")
