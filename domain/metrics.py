"""Billable-metric rules as pure functions: which definitions are valid, and how units round."""

import math
from collections.abc import Sequence
from decimal import Decimal
from fractions import Fraction
from typing import Final

from domain.errors import InvalidValueError
from domain.limits import DECIMAL_DIGITS_MAX, DECIMAL_PLACES_MAX
from domain.money import EXACT

# Lago's aggregation types (getlago/lago-api:app/models/billable_metric.rb); `custom_agg` is
# deprecated and premium, so Tally refuses it.
AGGREGATION_TYPES: Final = (
    "count_agg",
    "sum_agg",
    "max_agg",
    "unique_count_agg",
    "latest_agg",
    "weighted_sum_agg",
)
# Only these carry usage across periods (Lago's validate_recurring; billing-semantics §3.7).
RECURRING_AGGREGATION_TYPES: Final = ("sum_agg", "unique_count_agg", "weighted_sum_agg")
ROUNDING_FUNCTIONS: Final = ("round", "ceil", "floor")
# Lago's only weighted interval (BillableMetric::WEIGHTED_INTERVAL); required for weighted_sum.
WEIGHTED_INTERVALS: Final = ("seconds",)
# Lago rounds with BigDecimal#round(precision), so a negative precision rounds to tens, hundreds...
# Tally bounds it by the digits any of its decimals may have, on either side of the point.
ROUNDING_PRECISION_MIN: Final = -DECIMAL_DIGITS_MAX
ROUNDING_PRECISION_MAX: Final = DECIMAL_PLACES_MAX
# A charge filter value for "any value of this key" (Lago: ChargeFilterValue::ALL_FILTER_VALUES).
ALL_FILTER_VALUES: Final = "__ALL_FILTER_VALUES__"


def check_metric(
    aggregation_type: str,
    field_name: str | None,
    recurring: bool,
    rounding_function: str | None,
    rounding_precision: int | None,
    weighted_interval: str | None,
    filters: Sequence[tuple[str, Sequence[str]]],
) -> None:
    """Refuse a billable-metric definition Lago refuses, or that Tally could not bill exactly.

    Raises InvalidValueError naming the first offending field, with Lago's error code.
    """
    if aggregation_type not in AGGREGATION_TYPES:
        raise InvalidValueError("aggregation_type", "value_is_invalid", aggregation_type)
    if aggregation_type != "count_agg" and not (field_name and field_name.strip()):
        raise InvalidValueError("field_name", "value_is_mandatory", field_name)
    if recurring and aggregation_type not in RECURRING_AGGREGATION_TYPES:
        # Lago's code for this: errors.add(:recurring, :not_compatible_with_aggregation_type).
        raise InvalidValueError("recurring", "not_compatible_with_aggregation_type", recurring)
    if weighted_interval is not None and weighted_interval not in WEIGHTED_INTERVALS:
        raise InvalidValueError("weighted_interval", "value_is_invalid", weighted_interval)
    if aggregation_type == "weighted_sum_agg" and weighted_interval is None:
        # Lago validates inclusion in WEIGHTED_INTERVAL, so null is refused, as "invalid".
        raise InvalidValueError("weighted_interval", "value_is_invalid", weighted_interval)
    if rounding_function is not None and rounding_function not in ROUNDING_FUNCTIONS:
        raise InvalidValueError("rounding_function", "value_is_invalid", rounding_function)
    if rounding_precision is not None:
        if isinstance(rounding_precision, bool) or not isinstance(rounding_precision, int):
            raise InvalidValueError("rounding_precision", "value_is_invalid", rounding_precision)
        if not ROUNDING_PRECISION_MIN <= rounding_precision <= ROUNDING_PRECISION_MAX:
            raise InvalidValueError(
                "rounding_precision", "value_is_out_of_range", rounding_precision
            )
    check_metric_filters(filters)


def check_metric_filters(filters: Sequence[tuple[str, Sequence[str]]]) -> None:
    """Filter keys are unique and non-empty; each has a non-empty list of unique string values."""
    keys: set[str] = set()
    for key, values in filters:
        if not isinstance(key, str) or not key.strip():
            raise InvalidValueError("filters", "value_is_mandatory", key)
        if key in keys:
            raise InvalidValueError("filters", "value_already_exist", key)
        keys.add(key)
        if isinstance(values, str) or not values:
            # A bare string is a sequence too; Lago wants a list of strings.
            raise InvalidValueError("filters", "value_is_mandatory", {key: values})
        seen: set[str] = set()
        for value in values:
            if not isinstance(value, str) or not value or value == ALL_FILTER_VALUES:
                raise InvalidValueError("filters", "value_is_invalid", {key: value})
            if value in seen:
                raise InvalidValueError("filters", "value_already_exist", {key: value})
            seen.add(value)


def round_units(
    units: Decimal, rounding_function: str | None, rounding_precision: int | None
) -> Decimal:
    """Apply the metric's unit rounding (billing-semantics §3.8) to one bucket's period aggregate.

    `round` is half-up (away from zero), `ceil` and `floor` go towards +∞ and −∞, as Ruby's
    BigDecimal does for Lago. The precision defaults to 0 and may be negative (−2: hundreds).
    Without a rounding function the units are returned unchanged.
    """
    if rounding_function is None:
        return units
    return round_fraction(Fraction(units), rounding_function, rounding_precision)


def round_fraction(
    value: Fraction, rounding_function: str, rounding_precision: int | None
) -> Decimal:
    """round_units on an exact rational, so ceil(25/3) is 9 without an intermediate rounding."""
    assert rounding_function in ROUNDING_FUNCTIONS, rounding_function
    precision = 0 if rounding_precision is None else rounding_precision
    scaled = value * Fraction(10) ** precision
    if rounding_function == "ceil":
        whole = math.ceil(scaled)
    elif rounding_function == "floor":
        whole = math.floor(scaled)
    else:
        whole = math.floor(abs(scaled) + Fraction(1, 2))
        whole = whole if scaled >= 0 else -whole
    if precision <= 0:
        return Decimal(whole * 10**-precision)
    return Decimal(whole).scaleb(-precision, EXACT)
