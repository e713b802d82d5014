"""Properties of usage aggregation: why quarter-hour rollups give the same totals as the log."""

import itertools
import random
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from uuid import UUID

from hypothesis import assume, given
from hypothesis import strategies as st

from domain.errors import InvalidValueError
from domain.metrics import ALL_FILTER_VALUES
from domain.money import to_decimal
from domain.usage import (
    BUCKET_SECONDS,
    EPOCH,
    ROLLUP_AGGREGATION_TYPES,
    Rollup,
    UsageEvent,
    aggregate,
    bucket_start,
    canonical_event_payload,
    check_charge_filters,
    combine,
    match_filter,
    number_text,
    parse_timestamp,
    payload_fingerprint,
    rollup_of,
    units_from_rollup,
)

ORG_ID = UUID("00000000-0000-4000-8000-000000000001")
DAY_START = datetime(2026, 6, 1, tzinfo=UTC)
BUCKET = timedelta(seconds=BUCKET_SECONDS)

instants = st.datetimes(
    min_value=datetime(2026, 6, 1), max_value=datetime(2026, 6, 2), timezones=st.just(UTC)
)
values = st.decimals(min_value=-(10**6), max_value=10**6, places=3, allow_nan=False)


@st.composite
def usage_events(draw: st.DrawFn, max_size: int = 30) -> list[UsageEvent]:
    """Events of one bucket (subscription, metric, dimensions) with distinct transaction ids."""
    rows = draw(
        st.lists(st.tuples(st.sampled_from([*range(8)]), instants, values), max_size=max_size)
    )
    return [
        UsageEvent(
            organization_id=ORG_ID,
            external_subscription_id="sub_1",
            transaction_id=f"tx_{index}",
            code="tokens",
            timestamp=DAY_START + timedelta(minutes=15 * slot) if index % 3 == 0 else instant,
            properties={"value": number_text(value, "value")},
        )
        for index, (slot, instant, value) in enumerate(rows)
    ]


@given(events=usage_events(), cuts=st.lists(st.integers(0, 30), max_size=5), seed=st.integers())
def test_combining_any_partition_gives_the_rollup_of_all_events(
    events: list[UsageEvent], cuts: list[int], seed: int
) -> None:
    # Given the events shuffled and cut into consecutive parts
    shuffled = list(events)
    random.Random(seed).shuffle(shuffled)
    bounds = [0, *sorted(cut for cut in cuts if cut <= len(shuffled)), len(shuffled)]
    parts = [shuffled[a:b] for a, b in itertools.pairwise(bounds)]
    # When each part is rolled up and the rollups are combined, in any order
    rollups = [rollup_of(part, "value") for part in parts]
    random.Random(seed + 1).shuffle(rollups)
    # Then the result is the rollup of all the events
    assert combine(rollups) == rollup_of(events, "value")


@given(a=usage_events(10), b=usage_events(10), c=usage_events(10))
def test_combine_is_associative_and_commutative(
    a: list[UsageEvent], b: list[UsageEvent], c: list[UsageEvent]
) -> None:
    ra, rb, rc = (rollup_of(events, "value") for events in (a, b, c))
    assert combine([ra, rb]) == combine([rb, ra])
    assert combine([combine([ra, rb]), rc]) == combine([ra, combine([rb, rc])])
    assert combine([ra]) == ra


@given(
    events=usage_events(),
    aggregation_type=st.sampled_from(ROLLUP_AGGREGATION_TYPES),
    first_bucket=st.integers(0, 96),
    buckets=st.integers(1, 96),
)
def test_quarter_hour_rollups_answer_what_the_log_answers(
    events: list[UsageEvent], aggregation_type: str, first_bucket: int, buckets: int
) -> None:
    # Given a period on bucket edges (every local midnight is one)
    start = DAY_START + first_bucket * BUCKET
    end = start + buckets * BUCKET
    # When the events are rolled up per quarter hour, as the ingest does
    rows: dict[datetime, list[UsageEvent]] = defaultdict(list)
    for event in events:
        rows[bucket_start(event.timestamp)].append(event)
    in_period = [rollup_of(row, "value") for at, row in rows.items() if start <= at < end]
    # Then the period's rows give the units the reference aggregation gives from the log
    field_name = None if aggregation_type == "count_agg" else "value"
    expected = aggregate(aggregation_type, field_name, events, start, end).units
    assert units_from_rollup(aggregation_type, combine(in_period)) == expected


@given(
    events=usage_events(),
    aggregation_type=st.sampled_from(
        ["count_agg", "sum_agg", "max_agg", "latest_agg", "unique_count_agg", "weighted_sum_agg"]
    ),
    seed=st.integers(),
)
def test_aggregation_does_not_depend_on_the_order_of_the_events(
    events: list[UsageEvent], aggregation_type: str, seed: int
) -> None:
    shuffled = list(events)
    random.Random(seed).shuffle(shuffled)
    field_name = None if aggregation_type == "count_agg" else "value"
    end = DAY_START + timedelta(days=1)
    assert aggregate(aggregation_type, field_name, shuffled, DAY_START, end) == aggregate(
        aggregation_type, field_name, events, DAY_START, end
    )


@given(instant=st.datetimes(timezones=st.just(UTC), min_value=datetime(1970, 1, 2)))
def test_a_bucket_holds_its_instant_and_starts_on_a_quarter_hour(instant: datetime) -> None:
    start = bucket_start(instant)
    assert start <= instant < start + BUCKET
    assert bucket_start(start) == start
    assert (start - EPOCH) % BUCKET == timedelta(0)
    assert start.tzinfo is UTC


payload_properties = st.dictionaries(
    st.sampled_from(["model", "tokens", "region"]),
    st.one_of(
        st.sampled_from(["large", "1", "1.0", "1.00"]),
        st.sampled_from([Decimal("1"), Decimal("1.0"), Decimal("1.00"), Decimal("2")]),
    ),
    max_size=3,
)


@st.composite
def payloads(draw: st.DrawFn) -> UsageEvent:
    properties = draw(payload_properties)
    return UsageEvent(
        organization_id=ORG_ID,
        external_subscription_id="sub_1",
        transaction_id="tx_1",
        code=draw(st.sampled_from(["tokens", "requests"])),
        timestamp=DAY_START + timedelta(microseconds=draw(st.integers(0, 1))),
        properties={
            key: value if isinstance(value, str) else number_text(value, key)
            for key, value in properties.items()
        },
        precise_total_amount_cents=draw(st.sampled_from([None, Decimal("12.5"), Decimal("12.50")])),
        timestamp_given=draw(st.booleans()),
    )


@given(a=payloads(), b=payloads())
def test_fingerprints_are_equal_exactly_when_payloads_are(a: UsageEvent, b: UsageEvent) -> None:
    same_payload = canonical_event_payload(a) == canonical_event_payload(b)
    assert (payload_fingerprint(a) == payload_fingerprint(b)) == same_payload
    # Two events with equal content (numbers compared by value, not spelling) are one payload.
    content_a = (a.code, a.timestamp if a.timestamp_given else None, dict(a.properties))
    content_b = (b.code, b.timestamp if b.timestamp_given else None, dict(b.properties))
    assert same_payload == (
        content_a == content_b and a.precise_total_amount_cents == b.precise_total_amount_cents
    )


@given(event=payloads(), seed=st.integers())
def test_property_order_does_not_change_the_fingerprint(event: UsageEvent, seed: int) -> None:
    items = list(event.properties.items())
    random.Random(seed).shuffle(items)
    reordered = UsageEvent(
        event.organization_id,
        event.external_subscription_id,
        event.transaction_id,
        event.code,
        event.timestamp,
        dict(items),
        event.precise_total_amount_cents,
        event.timestamp_given,
    )
    assert payload_fingerprint(reordered) == payload_fingerprint(event)


@given(microseconds=st.integers(0, (253402300800 * 10**6) - 1))
def test_unix_seconds_round_trip_to_the_microsecond(microseconds: int) -> None:
    seconds, fraction = divmod(microseconds, 10**6)
    expected = EPOCH + timedelta(microseconds=microseconds)
    received_at = DAY_START
    assert parse_timestamp(f"{seconds}.{fraction:06d}", received_at) == expected
    assert parse_timestamp(Decimal(microseconds).scaleb(-6), received_at) == expected
    if fraction == 0:
        assert parse_timestamp(seconds, received_at) == expected


@given(value=st.decimals(min_value=-(10**20), max_value=10**20, places=15, allow_nan=False))
def test_canonical_number_text_keeps_the_value(value: Decimal) -> None:
    text = number_text(value, "value")
    assert to_decimal(text, "value") == value
    assert "E" not in text and (text == "0" or not text.endswith("0") or "." not in text)


def test_an_empty_rollup_is_the_identity() -> None:
    empty = Rollup(0, Decimal(0), None, None, None)
    assert combine([empty, empty]) == empty


DECLARED = {"model": ["large", "medium", "small"], "direction": ["input", "output"]}
charge_filters = st.lists(
    st.dictionaries(
        st.sampled_from(sorted(DECLARED)),
        st.sampled_from(
            [
                [ALL_FILTER_VALUES],
                ["large"],
                ["small"],
                ["large", "small"],
                ["input"],
                ["output"],
            ]
        ),
        min_size=1,
    ).filter(lambda f: all(set(v) <= {*DECLARED[k], ALL_FILTER_VALUES} for k, v in f.items())),
    max_size=4,
)
event_properties = st.fixed_dictionaries(
    {},
    optional={
        "model": st.sampled_from(DECLARED["model"]),
        "direction": st.sampled_from(DECLARED["direction"]),
    },
)


@given(filters=charge_filters, properties=event_properties, declared=st.booleans())
def test_an_accepted_filter_set_prices_each_event_in_exactly_one_bucket(
    filters: list[dict[str, list[str]]], properties: dict[str, str], declared: bool
) -> None:
    # Given charge filters that D13 accepts
    try:
        check_charge_filters(filters, DECLARED)
    except InvalidValueError:
        assume(False)
    # When an event is bucketed
    chosen = match_filter(filters, properties, DECLARED if declared else None)
    matching = [
        i
        for i, f in enumerate(filters)
        if all(
            k in properties and (v == [ALL_FILTER_VALUES] or properties[k] in v)
            for k, v in f.items()
        )
    ]
    # Then it is the default bucket exactly when no filter matches, and otherwise the one
    # matching filter that is nested inside every other matching filter
    if not matching:
        assert chosen is None
        return
    assert chosen in matching
    inner = {
        k: set(DECLARED[k] if v == [ALL_FILTER_VALUES] else v) for k, v in filters[chosen].items()
    }
    for i in matching:
        outer = {
            k: set(DECLARED[k] if v == [ALL_FILTER_VALUES] else v) for k, v in filters[i].items()
        }
        assert all(k in inner and inner[k] <= values for k, values in outer.items())


@given(
    properties=st.dictionaries(st.text(max_size=6), st.text(max_size=6), max_size=4),
    timestamp=instants,
    amount=st.none() | st.decimals(min_value=0, max_value=10**6, places=2),
    timestamp_given=st.booleans(),
)
def test_a_normalised_event_is_the_event_built_with_its_checks(
    properties: dict[str, str],
    timestamp: datetime,
    amount: Decimal | None,
    timestamp_given: bool,
) -> None:
    fields = (ORG_ID, "sub", "t-1", "tokens", timestamp)
    built = UsageEvent(*fields, properties, amount, timestamp_given)
    normalised = UsageEvent.normalised(*fields, dict(properties), amount, timestamp_given)
    assert normalised == built
    assert payload_fingerprint(normalised) == payload_fingerprint(built)
