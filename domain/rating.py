"""Rating: a charge's usage over a period, classified into buckets and priced, purely.

Each event belongs to exactly one bucket of its charge: one charge filter (the most specific that
matches, D13) or the default bucket, times the values of the pricing group keys (§3.9, §3.10).
The same classification serves two sources of usage: the raw events (the reference, used by the
audit replay and by the aggregations rollups cannot answer) and the quarter-hour rollups (the
fast path for count, sum, max and latest).
"""

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any, Final

from domain.charges import ChargeAmount, charge_amount, pricing_group_keys
from domain.money import EXACT
from domain.usage import (
    ROLLUP_AGGREGATION_TYPES,
    Aggregate,
    Rollup,
    UsageEvent,
    aggregate,
    combine,
    match_filter,
    units_from_rollup,
)

Dimensions = tuple[tuple[str, str | None], ...]
# Charge models whose price needs each event's value (free allowances, per-transaction bounds).
EVENT_VALUE_MODELS: Final = ("percentage",)


@dataclass(frozen=True)
class MetricRule:
    """What rating needs of a billable metric's definition."""

    code: str
    aggregation_type: str
    field_name: str | None
    recurring: bool
    rounding_function: str | None
    rounding_precision: int | None
    filters: Mapping[str, tuple[str, ...]]

    @classmethod
    def from_definition(cls, code: str, definition: Mapping[str, Any]) -> "MetricRule":
        return cls(
            code=code,
            aggregation_type=definition["aggregation_type"],
            field_name=definition["field_name"],
            recurring=definition["recurring"],
            rounding_function=definition["rounding_function"],
            rounding_precision=definition["rounding_precision"],
            filters={f["key"]: tuple(f["values"]) for f in definition["filters"]},
        )


@dataclass(frozen=True)
class BucketKey:
    filter_index: int  # -1: the default bucket (events matching no filter)
    grouped_by: Dimensions

    def sort_key(self) -> tuple[int, tuple[tuple[str, bool, str], ...]]:
        """Filters in order, the default bucket first; a missing group value before any other."""
        return (
            self.filter_index,
            tuple((key, value is not None, value or "") for key, value in self.grouped_by),
        )


@dataclass(frozen=True)
class ChargeFee:
    """One priced bucket of a charge over a period."""

    charge_id: str
    charge_code: str
    charge_model: str
    metric_code: str
    bucket: BucketKey
    filter_values: Mapping[str, Sequence[str]] | None
    invoice_display_name: str | None
    units: Decimal
    events_count: int
    amount: ChargeAmount

    @property
    def amount_cents(self) -> int:
        return self.amount.amount_cents

    @property
    def grouped_by(self) -> dict[str, str | None]:
        return dict(self.bucket.grouped_by)


def charge_filters(charge: Mapping[str, Any]) -> list[Mapping[str, Sequence[str]]]:
    return [f["values"] for f in charge.get("filters", [])]


def bucket_properties(charge: Mapping[str, Any], filter_index: int) -> Mapping[str, Any]:
    """The properties that price a bucket: its filter's, or the charge's for the default one."""
    if filter_index < 0:
        properties: Mapping[str, Any] = charge["properties"]
    else:
        properties = charge["filters"][filter_index]["properties"]
    return properties


def classify(
    charge: Mapping[str, Any], metric: MetricRule, properties: Mapping[str, str]
) -> BucketKey:
    """The one bucket an event (or a rollup row, by its dimension values) belongs to."""
    index = match_filter(charge_filters(charge), properties, metric.filters)
    filter_index = -1 if index is None else index
    keys = pricing_group_keys(bucket_properties(charge, filter_index))
    return BucketKey(filter_index, tuple((key, properties.get(key)) for key in sorted(set(keys))))


def needs_events(charge: Mapping[str, Any], metric: MetricRule) -> bool:
    """Whether the charge must be aggregated from the raw events rather than the rollups."""
    return (
        metric.aggregation_type not in ROLLUP_AGGREGATION_TYPES
        or charge["charge_model"] in EVENT_VALUE_MODELS
        or bool(charge.get("prorated"))
    )


def aggregate_events(
    charge: Mapping[str, Any],
    metric: MetricRule,
    events: Iterable[UsageEvent],
    period_start: datetime,
    period_end: datetime,
    timezone: str,
) -> dict[BucketKey, Aggregate]:
    """Per bucket, the aggregate of the events (for a recurring metric, with their history)."""
    by_bucket: dict[BucketKey, list[UsageEvent]] = {}
    for event in events:
        by_bucket.setdefault(classify(charge, metric, event.properties), []).append(event)
    prorated = bool(charge.get("prorated"))
    return {
        key: aggregate(
            metric.aggregation_type,
            metric.field_name,
            bucket_events,
            period_start,
            period_end,
            recurring=metric.recurring,
            prorated=prorated,
            timezone=timezone,
            rounding_function=metric.rounding_function,
            rounding_precision=metric.rounding_precision,
        )
        for key, bucket_events in by_bucket.items()
    }


def aggregate_totals(
    charge: Mapping[str, Any],
    metric: MetricRule,
    period_totals: Iterable[tuple[Dimensions, Rollup, Decimal]],
    history_totals: Iterable[tuple[Dimensions, Rollup, Decimal]] = (),
) -> dict[BucketKey, Aggregate]:
    """Per bucket, the aggregate from rollup rows (count, sum, max, latest only).

    history_totals are a recurring metric's rows before the period: they add to its units but
    not to its events count.
    """
    assert not needs_events(charge, metric), charge["code"]
    period: dict[BucketKey, list[tuple[Rollup, Decimal]]] = {}
    history: dict[BucketKey, list[Rollup]] = {}
    for dimensions, rollup, precise in period_totals:
        key = classify(charge, metric, _present(dimensions))
        period.setdefault(key, []).append((rollup, precise))
    for dimensions, rollup, _ in history_totals:
        history.setdefault(classify(charge, metric, _present(dimensions)), []).append(rollup)
    aggregates = {}
    for key in period.keys() | history.keys():
        in_period = combine(rollup for rollup, _ in period.get(key, []))
        everything = combine([in_period, *history.get(key, [])])
        units = units_from_rollup(
            metric.aggregation_type,
            everything,
            metric.rounding_function,
            metric.rounding_precision,
        )
        precise = sum((p for _, p in period.get(key, [])), Decimal(0))
        aggregates[key] = Aggregate(
            units=units,
            full_units=units,
            events_count=in_period.count,
            precise_total_amount_cents=EXACT.plus(precise),
        )
    return aggregates


def rate_charge(
    charge: Mapping[str, Any],
    metric: MetricRule,
    aggregates: Mapping[BucketKey, Aggregate],
    currency: str,
) -> list[ChargeFee]:
    """Price every bucket of the charge: each filter and the default bucket, with or without
    usage (a graduated first-range flat fee is due at zero units, §4.2), split by group values
    where usage has them; sorted by bucket."""
    keys = set(aggregates)
    for filter_index in (-1, *range(len(charge.get("filters", [])))):
        if not any(key.filter_index == filter_index for key in keys):
            keys.add(BucketKey(filter_index, ()))
    empty = Aggregate(units=Decimal(0), full_units=Decimal(0), events_count=0)
    fees = []
    for key in sorted(keys, key=BucketKey.sort_key):
        usage = aggregates.get(key, empty)
        model = charge["charge_model"]
        priced = charge_amount(
            model,
            bucket_properties(charge, key.filter_index),
            usage.units,
            currency,
            events_count=usage.events_count,
            event_values=usage.values if model in EVENT_VALUE_MODELS else (),
            precise_total_amount_cents=usage.precise_total_amount_cents,
            full_units=(
                usage.full_units
                if charge.get("prorated") and model in ("standard", "volume")
                else None
            ),
        )
        filters = charge.get("filters", [])
        fees.append(
            ChargeFee(
                charge_id=charge["lago_id"],
                charge_code=charge["code"],
                charge_model=model,
                metric_code=metric.code,
                bucket=key,
                filter_values=None if key.filter_index < 0 else filters[key.filter_index]["values"],
                invoice_display_name=(
                    charge.get("invoice_display_name")
                    if key.filter_index < 0
                    else filters[key.filter_index].get("invoice_display_name")
                ),
                units=usage.units,
                events_count=usage.events_count,
                amount=priced,
            )
        )
    return fees


def _present(dimensions: Dimensions) -> dict[str, str]:
    return {key: value for key, value in dimensions if value is not None}
