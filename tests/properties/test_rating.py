"""Rating from the rollups equals rating from the raw events, bucket by bucket and to the cent."""

from collections import defaultdict
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any
from uuid import UUID

from hypothesis import given, settings
from hypothesis import strategies as st

from domain.charges import parse_properties
from domain.rating import MetricRule, aggregate_events, aggregate_totals, rate_charge
from domain.usage import UsageEvent, bucket_start, dimension_key, rollup_of_value

START = datetime(2026, 3, 1, tzinfo=UTC)
END = datetime(2026, 4, 1, tzinfo=UTC)
MODELS = ["small", "large"]
DIRECTIONS = ["input", "output"]


def metric(aggregation_type: str) -> MetricRule:
    return MetricRule(
        code="tokens",
        aggregation_type=aggregation_type,
        field_name=None if aggregation_type == "count_agg" else "tokens",
        recurring=False,
        rounding_function=None,
        rounding_precision=None,
        filters={"model": tuple(MODELS), "direction": tuple(DIRECTIONS)},
    )


def price(model: str, unit: str, grouped: bool) -> dict[str, Any]:
    if model == "graduated":
        raw: dict[str, Any] = {
            "graduated_ranges": [
                {"from_value": 0, "to_value": 1000, "per_unit_amount": unit, "flat_amount": "1"},
                {
                    "from_value": 1001,
                    "to_value": None,
                    "per_unit_amount": "0.005",
                    "flat_amount": "0",
                },
            ]
        }
    else:
        raw = {"amount": unit}
    if grouped:
        raw["pricing_group_keys"] = ["region"]
    return parse_properties(model, raw)


def charge(model: str, grouped: bool) -> dict[str, Any]:
    properties = price(model, "0.000003", grouped)
    large_input = price(model, "0.00001", grouped)
    return {
        "lago_id": "c1",
        "code": "tokens",
        "charge_model": model,
        "properties": properties,
        "filters": [
            {"values": {"model": ["large"], "direction": ["input"]}, "properties": large_input},
            {"values": {"model": ["large"]}, "properties": properties},
        ],
    }


events_strategy = st.lists(
    st.tuples(
        st.integers(0, 31 * 24 * 3600 - 1),
        st.sampled_from([None, *MODELS]),
        st.sampled_from([None, *DIRECTIONS]),
        st.sampled_from([None, "eu", "us"]),
        st.integers(0, 10**6),
    ),
    max_size=60,
)


@settings(max_examples=150, deadline=None)
@given(
    raw_events=events_strategy,
    aggregation_type=st.sampled_from(["count_agg", "sum_agg", "max_agg", "latest_agg"]),
    model=st.sampled_from(["standard", "graduated"]),
    grouped=st.booleans(),
)
def test_rollups_and_events_rate_identically(
    raw_events: list[tuple[int, str | None, str | None, str | None, int]],
    aggregation_type: str,
    model: str,
    grouped: bool,
) -> None:
    rule = metric(aggregation_type)
    definition = charge(model, grouped)
    events = []
    for n, (offset, model_value, direction, region, tokens) in enumerate(raw_events):
        properties = {"tokens": str(tokens)}
        for key, value in (("model", model_value), ("direction", direction), ("region", region)):
            if value is not None:
                properties[key] = value
        events.append(
            UsageEvent(
                UUID(int=1), "sub", f"t{n}", "tokens", START + timedelta(seconds=offset), properties
            )
        )
    # The rollups, as the usage log keeps them: per dimension values and quarter hour.
    keys = ["model", "direction", *(["region"] if grouped else [])]
    rows: dict[Any, list[Any]] = defaultdict(list)
    for event in events:
        value = None if aggregation_type == "count_agg" else Decimal(event.properties["tokens"])
        dims = dimension_key(event.properties, keys)
        rows[(dims, bucket_start(event.timestamp))].append(rollup_of_value(event.timestamp, value))
    from domain.usage import combine

    by_dims: dict[Any, list[Any]] = defaultdict(list)
    for (dims, _), rollups in rows.items():
        by_dims[dims].append(combine(rollups))
    totals = [(dims, combine(rollups), Decimal(0)) for dims, rollups in by_dims.items()]

    from_events = rate_charge(
        definition, rule, aggregate_events(definition, rule, events, START, END, "UTC"), "EUR"
    )
    from_rollups = rate_charge(definition, rule, aggregate_totals(definition, rule, totals), "EUR")
    assert [(f.bucket, f.units, f.events_count, f.amount_cents) for f in from_events] == [
        (f.bucket, f.units, f.events_count, f.amount_cents) for f in from_rollups
    ]
    # Every event lands in exactly one bucket.
    assert sum(f.events_count for f in from_events) == len(events)
