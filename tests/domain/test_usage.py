"""Usage events and aggregation: the worked examples of billing-semantics §2 and §3."""

import itertools
from collections import defaultdict
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any
from uuid import UUID
from zoneinfo import ZoneInfo

import pytest

from domain.errors import InvalidValueError
from domain.limits import EVENT_FUTURE_S_MAX
from domain.metrics import ALL_FILTER_VALUES
from domain.money import fee_amount_cents
from domain.usage import (
    EMPTY_ROLLUP,
    Rollup,
    UsageEvent,
    aggregate,
    bucket_start,
    canonical_event_payload,
    check_charge_filters,
    check_filter_values,
    check_not_in_future,
    combine,
    dimension_key,
    match_filter,
    metric_value,
    normalise_properties,
    parse_precise_total_amount_cents,
    parse_timestamp,
    payload_fingerprint,
    rollup_of,
    units_from_rollup,
)

ORG_ID = UUID("00000000-0000-4000-8000-000000000001")
PARIS = ZoneInfo("Europe/Paris")
RECEIVED_AT = datetime(2023, 11, 14, 22, 13, 20, tzinfo=UTC)  # Unix 1700000000.
_SEQUENCE = itertools.count()


def june(day: int, hour: int = 12) -> datetime:
    """An instant in June 2026, Paris time, as UTC (the example period of §3)."""
    return datetime(2026, 6, day, hour, tzinfo=PARIS).astimezone(UTC)


JUNE_START = datetime(2026, 6, 1, tzinfo=PARIS).astimezone(UTC)
JUNE_END = datetime(2026, 7, 1, tzinfo=PARIS).astimezone(UTC)


def event(
    timestamp: datetime,
    properties: Mapping[str, Any] | None = None,
    *,
    transaction_id: str | None = None,
    code: str = "tokens",
    precise_total_amount_cents: Decimal | None = None,
    timestamp_given: bool = True,
) -> UsageEvent:
    return UsageEvent(
        organization_id=ORG_ID,
        external_subscription_id="sub_1",
        transaction_id=transaction_id or f"tx_{next(_SEQUENCE)}",
        code=code,
        timestamp=timestamp,
        properties=normalise_properties(properties),
        precise_total_amount_cents=precise_total_amount_cents,
        timestamp_given=timestamp_given,
    )


def refusal(error: pytest.ExceptionInfo[InvalidValueError]) -> tuple[str, str]:
    return error.value.field, error.value.reason


# --- §2.1 Identity and duplicates -------------------------------------------------------------


def test_an_identical_resend_has_the_same_fingerprint() -> None:
    # Given an event, and its re-send with the properties in another order and 2 as 2.00
    first = event(june(2), {"model": "large", "tokens": 2}, transaction_id="tx_1")
    resend = event(june(2), {"tokens": Decimal("2.00"), "model": "large"}, transaction_id="tx_1")
    # Then both are the same payload: counted once
    assert payload_fingerprint(first) == payload_fingerprint(resend)
    assert canonical_event_payload(first) == canonical_event_payload(resend)


@pytest.mark.parametrize(
    "changed",
    [
        {"timestamp": june(2) + timedelta(microseconds=1)},
        {"properties": {"model": "large", "tokens": 3}},
        {"properties": {"model": "large", "tokens": 2, "extra": "x"}},
        {"code": "requests"},
        {"precise_total_amount_cents": Decimal("12.5")},
    ],
)
def test_the_same_id_with_another_payload_has_another_fingerprint(changed: dict[str, Any]) -> None:
    # Given an event
    arguments: dict[str, Any] = {
        "timestamp": june(2),
        "properties": {"model": "large", "tokens": 2},
        "transaction_id": "tx_1",
    }
    first = event(**arguments)
    # When the same transaction id comes with one thing changed
    other = event(**(arguments | changed))
    # Then it is another payload: Lago's 422 value_already_exist, the first event kept
    assert payload_fingerprint(first) != payload_fingerprint(other)


def test_property_strings_are_compared_verbatim_but_numbers_by_value() -> None:
    as_strings = [event(june(2), {"v": text}, transaction_id="t") for text in ("1.0", "1.00")]
    as_numbers = [
        event(june(2), {"v": Decimal(text)}, transaction_id="t") for text in ("1.0", "1.00", "1")
    ]
    assert payload_fingerprint(as_strings[0]) != payload_fingerprint(as_strings[1])
    assert len({payload_fingerprint(e) for e in as_numbers}) == 1
    # A number and the string of its canonical text are the same property value.
    assert payload_fingerprint(as_numbers[0]) == payload_fingerprint(
        event(june(2), {"v": "1"}, transaction_id="t")
    )


def test_a_retry_without_timestamp_is_identical_although_received_later() -> None:
    # Given an event sent with "timestamp": null, stamped with its receipt time
    first = event(
        parse_timestamp(None, RECEIVED_AT), {"tokens": 1}, transaction_id="t", timestamp_given=False
    )
    # When the client retries it a minute later, still without timestamp
    retry_at = RECEIVED_AT + timedelta(minutes=1)
    retry = event(
        parse_timestamp(None, retry_at), {"tokens": 1}, transaction_id="t", timestamp_given=False
    )
    # Then it is the same payload; with an explicit timestamp it would not be
    assert payload_fingerprint(first) == payload_fingerprint(retry)
    assert payload_fingerprint(first) != payload_fingerprint(
        event(RECEIVED_AT, {"tokens": 1}, transaction_id="t")
    )


def test_the_precise_amount_is_compared_by_value() -> None:
    a = event(june(2), transaction_id="t", precise_total_amount_cents=Decimal("12.50"))
    b = event(june(2), transaction_id="t", precise_total_amount_cents=Decimal("12.5"))
    assert payload_fingerprint(a) == payload_fingerprint(b)


def test_the_precise_amount_is_a_non_negative_decimal() -> None:
    assert parse_precise_total_amount_cents("12.5") == Decimal("12.5")
    assert parse_precise_total_amount_cents(Decimal("7.25")) == Decimal("7.25")
    assert parse_precise_total_amount_cents(None) is None
    with pytest.raises(InvalidValueError) as error:
        parse_precise_total_amount_cents("-1")
    assert refusal(error) == ("precise_total_amount_cents", "value_is_out_of_range")
    with pytest.raises(InvalidValueError) as error:
        parse_precise_total_amount_cents("abc")
    assert refusal(error) == ("precise_total_amount_cents", "value_is_invalid")


# --- §2.2 Timestamps ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sent", "expected"),
    [
        ("1700000000", RECEIVED_AT),  # pydantic v1 turns timestamp=1700000000 into a string
        (1700000000, RECEIVED_AT),  # a JSON integer
        (Decimal("1700000000"), RECEIVED_AT),  # a JSON number, from its literal text
        ("1700000000.123", RECEIVED_AT + timedelta(milliseconds=123)),
        (Decimal("1700000000.5"), RECEIVED_AT + timedelta(milliseconds=500)),
        # Lago parsed through float until PR #5651: .1 became .0999999.
        ("1700000000.1", RECEIVED_AT + timedelta(microseconds=100_000)),
        (None, RECEIVED_AT),  # null is the time of receipt
    ],
)
def test_timestamps_in_every_wire_form(
    sent: str | int | Decimal | None, expected: datetime
) -> None:
    parsed = parse_timestamp(sent, RECEIVED_AT)
    assert parsed == expected
    assert parsed.tzinfo is UTC


def test_a_null_timestamp_is_the_receipt_time_in_utc() -> None:
    received_in_paris = RECEIVED_AT.astimezone(PARIS)
    parsed = parse_timestamp(None, received_in_paris)
    assert (parsed, parsed.tzinfo) == (RECEIVED_AT, UTC)


def test_below_a_microsecond_is_truncated_towards_the_past() -> None:
    # So an instant just before a period end never rounds into the next period.
    assert parse_timestamp("1700000000.1234569", RECEIVED_AT) == RECEIVED_AT + timedelta(
        microseconds=123456
    )
    assert parse_timestamp("1700000899.9999999", RECEIVED_AT) < RECEIVED_AT + timedelta(seconds=900)


@pytest.mark.parametrize(
    "sent",
    [
        "2023-11-14T22:13:20Z",  # ISO-8601: Lago's 422 {"timestamp": ["invalid_format"]}
        "2023-11-14",
        "1.7e9",
        " 1700000000",
        "1700000000.",
        "-1700000000",
        "",
        "abc",
        True,
        1700000000.5,  # a float never reaches the domain: it has already lost digits
        Decimal("NaN"),
    ],
)
def test_anything_but_unix_seconds_is_an_invalid_format(sent: Any) -> None:
    with pytest.raises(InvalidValueError) as error:
        parse_timestamp(sent, RECEIVED_AT)
    assert refusal(error) == ("timestamp", "invalid_format")


def test_timestamps_outside_what_a_datetime_holds_are_out_of_range() -> None:
    for sent in (-1, Decimal("-0.5"), "253402300800", Decimal("1E+20")):
        with pytest.raises(InvalidValueError) as error:
            parse_timestamp(sent, RECEIVED_AT, field="events.0.timestamp")
        assert refusal(error) == ("events.0.timestamp", "value_is_out_of_range")


def test_five_minutes_ahead_is_accepted_and_a_microsecond_more_is_not() -> None:
    # Given an event received at T
    # When it is stamped exactly EVENT_FUTURE_S_MAX (5 minutes) after T, it is accepted
    limit = RECEIVED_AT + timedelta(seconds=EVENT_FUTURE_S_MAX)
    check_not_in_future(limit, RECEIVED_AT)
    check_not_in_future(
        RECEIVED_AT - timedelta(days=400), RECEIVED_AT
    )  # the past is not bounded here
    # When it is one microsecond later, it is refused
    with pytest.raises(InvalidValueError) as error:
        check_not_in_future(limit + timedelta(microseconds=1), RECEIVED_AT)
    assert refusal(error) == ("timestamp", "value_is_in_future")
    assert EVENT_FUTURE_S_MAX == 300


# --- §2.3 Validation at ingest -----------------------------------------------------------------


def test_properties_become_strings_and_numbers_their_canonical_text() -> None:
    assert normalise_properties(
        {
            "model": "large",
            "tokens": 1200,
            "seconds": Decimal("500.50"),
            "hundred": Decimal("1E+2"),
            "zero": Decimal("-0.0"),
            "premium": True,
            "region": None,  # null is absent
        }
    ) == {
        "model": "large",
        "tokens": "1200",
        "seconds": "500.5",
        "hundred": "100",
        "zero": "0",
        "premium": "true",
    }
    assert normalise_properties(None) == {}


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ({"nested": "object"}, "value_is_invalid"),
        (["a", "b"], "value_is_invalid"),
        (0.5, "value_is_invalid"),
        (Decimal("Infinity"), "value_is_invalid"),
        (Decimal("0.0000000000000001"), "value_is_invalid"),  # 16 places
        (10**24, "value_is_out_of_range"),
        (Decimal("1E+24"), "value_is_out_of_range"),
    ],
)
def test_objects_arrays_floats_and_unbounded_numbers_are_refused(value: Any, reason: str) -> None:
    with pytest.raises(InvalidValueError) as error:
        normalise_properties({"ok": "1", "bad": value})
    assert refusal(error) == ("properties.bad", reason)


def test_properties_must_be_an_object() -> None:
    with pytest.raises(InvalidValueError) as error:
        normalise_properties(["tokens"])  # type: ignore[arg-type]
    assert refusal(error) == ("properties", "value_is_invalid")


@pytest.mark.parametrize(
    "aggregation_type", ["sum_agg", "max_agg", "latest_agg", "weighted_sum_agg"]
)
def test_a_numeric_metric_needs_a_number_in_its_field(aggregation_type: str) -> None:
    # Lago accepts these with 200 and skips them; Tally refuses synchronously (D7).
    assert metric_value({"tokens": "12.5"}, aggregation_type, "tokens") == Decimal("12.5")
    with pytest.raises(InvalidValueError) as error:
        metric_value({"other": "1"}, aggregation_type, "tokens")
    assert refusal(error) == ("properties.tokens", "value_is_mandatory")
    with pytest.raises(InvalidValueError) as error:
        metric_value({"tokens": "twelve"}, aggregation_type, "tokens")
    assert refusal(error) == ("properties.tokens", "value_is_invalid")


def test_count_reads_no_value_and_unique_count_the_raw_string() -> None:
    assert metric_value({}, "count_agg", None) is None
    assert metric_value({"user": "u1"}, "unique_count_agg", "user") == "u1"
    with pytest.raises(InvalidValueError) as error:
        metric_value({}, "unique_count_agg", "user")
    assert refusal(error) == ("properties.user", "value_is_mandatory")
    with pytest.raises(InvalidValueError) as error:
        metric_value({"user": "u1", "operation_type": "delete"}, "unique_count_agg", "user")
    assert refusal(error) == ("properties.operation_type", "value_is_invalid")


def test_a_filter_value_the_metric_does_not_declare_is_refused() -> None:
    # Lago prices it in the default bucket; Tally refuses it (§2.3 (d)).
    declared = {"model": ["large", "small"]}
    check_filter_values({"model": "large", "other": "x"}, declared)
    check_filter_values({"tokens": "1"}, declared)  # absent keys are fine: default bucket
    with pytest.raises(InvalidValueError) as error:
        check_filter_values({"model": "medium"}, declared)
    assert refusal(error) == ("properties.model", "value_is_invalid")


# --- §3.1–3.6 Aggregation types --------------------------------------------------------------


def units(aggregation_type: str, events: Sequence[UsageEvent], **kwargs: Any) -> Decimal:
    return aggregate(aggregation_type, "value", events, JUNE_START, JUNE_END, **kwargs).units


def test_count_counts_the_events_of_the_period() -> None:
    # Given 3 events in June and one on each side of it
    events = [event(june(day)) for day in (1, 15, 30)]
    outside = [event(JUNE_START - timedelta(microseconds=1)), event(JUNE_END)]
    # Then count_agg is 3: the period is half-open
    assert units("count_agg", [*events, *outside]) == 3


def test_sum_adds_numbers_and_numeric_strings() -> None:
    events = [event(june(2), {"value": 1200}), event(june(3), {"value": "800"})]
    events.append(event(june(4), {"value": Decimal("500.5")}))
    assert units("sum_agg", events) == Decimal("2500.5")


def test_max_is_the_largest_value() -> None:
    events = [event(june(day), {"value": v}) for day, v in ((2, 3), (3, 7), (4, 5))]
    assert units("max_agg", events) == 7
    assert units("max_agg", []) == 0


def test_latest_is_the_last_value_by_timestamp_and_a_negative_one_gives_zero() -> None:
    # 10 (Jun 2), 4 (Jun 20), −2 (Jun 25) → 0
    events = [event(june(day), {"value": v}) for day, v in ((2, 10), (20, 4), (25, -2))]
    assert units("latest_agg", events) == 0
    assert units("latest_agg", events[:2]) == 4
    assert units("latest_agg", list(reversed(events[:2]))) == 4  # by timestamp, not input order


def test_latest_breaks_a_tie_of_timestamps_with_the_greater_value() -> None:
    events = [event(june(2), {"value": 5}, transaction_id="a")]
    events.append(event(june(2), {"value": 3}, transaction_id="b"))
    assert units("latest_agg", events) == 5
    assert units_from_rollup("latest_agg", rollup_of(events, "value")) == 5


UNIQUE_COUNT_EVENTS = [
    ("u1", "add", 1),
    ("u2", "add", 3),
    ("u1", "remove", 10),
    ("u1", "add", 15),
    ("u3", "add", 20),
    ("u3", "add", 21),
    ("u2", "remove", 28),
]


def unique_count_events() -> list[UsageEvent]:
    return [
        event(june(day), {"value": user, "operation_type": operation})
        for user, operation, day in UNIQUE_COUNT_EVENTS
    ]


def test_unique_count_counts_values_whose_last_operation_is_add() -> None:
    # u1 = +1−1+1 = 1, u2 = +1−1 = 0, u3 = +1+0 = 1 → 2
    assert units("unique_count_agg", unique_count_events()) == 2


def test_unique_count_without_operation_type_counts_distinct_values() -> None:
    events = [event(june(day), {"value": user}) for day, user in ((2, "a"), (3, "b"), (4, "a"))]
    assert units("unique_count_agg", events) == 2


def test_weighted_sum_is_the_time_weighted_level() -> None:
    # Deltas +10 (Jun 1), +5 (Jun 11), −15 (Jun 21) → levels 10, 15, 0 for 10 days each
    events = [event(june(day, 0), {"value": v}) for day, v in ((1, 10), (11, 5), (21, -15))]
    result = aggregate("weighted_sum_agg", "value", events, JUNE_START, JUNE_END)
    # Then (100 + 150 + 0) / 30 = 8.3333…, kept to 15 places (Lago: ceil(20) = 8.3…34)
    assert result.units == Decimal("8.333333333333333")
    assert result.closing_value == 0
    # At €2 per unit: €16.67
    assert fee_amount_cents(result.units, Decimal(2), "EUR") == 1667


def test_weighted_sum_divides_by_the_real_length_of_a_daylight_saving_month() -> None:
    # March 2026 in New York is 743 hours; Lago divides by 31 × 24 h and gets 0.99866 L.
    new_york = ZoneInfo("America/New_York")
    start = datetime(2026, 3, 1, tzinfo=new_york).astimezone(UTC)
    end = datetime(2026, 4, 1, tzinfo=new_york).astimezone(UTC)
    assert end - start == timedelta(hours=743)
    events = [event(start, {"value": 7})]
    assert aggregate("weighted_sum_agg", "value", events, start, end).units == 7


# --- §3.7 Recurring metrics -------------------------------------------------------------------


def test_a_recurring_sum_has_no_lower_time_bound() -> None:
    events = [event(june(1) - timedelta(days=40), {"value": 5}), event(june(2), {"value": 3})]
    assert units("sum_agg", events, recurring=True) == 8
    assert units("sum_agg", events) == 3
    # An opening total stands for history the caller did not pass.
    assert units("sum_agg", events[1:], recurring=True, previous_value=Decimal(5)) == 8


def test_a_recurring_unique_count_carries_its_state_over() -> None:
    # Given u1 added in May and u2 added then removed in May
    may = [
        event(june(1) - timedelta(days=20), {"value": "u1"}),
        event(june(1) - timedelta(days=19), {"value": "u2"}),
        event(june(1) - timedelta(days=10), {"value": "u2", "operation_type": "remove"}),
    ]
    # When u3 is added in June
    events = [*may, event(june(5), {"value": "u3"})]
    # Then June counts u1 and u3 when recurring, only u3 otherwise
    assert units("unique_count_agg", events, recurring=True) == 2
    assert units("unique_count_agg", events) == 1


def test_a_recurring_weighted_sum_starts_from_the_previous_closing_level() -> None:
    # Given a May closing level of 15, and −15 on Jun 16 (Paris midnight)
    events = [event(june(16, 0), {"value": -15})]
    result = aggregate(
        "weighted_sum_agg",
        "value",
        events,
        JUNE_START,
        JUNE_END,
        recurring=True,
        previous_value=Decimal(15),
    )
    # Then June weighs 15 for 15 days of 30, and closes at 0
    assert (result.units, result.closing_value) == (Decimal("7.5"), Decimal(0))
    # The same from the history itself rather than the closing level
    history = [event(june(1) - timedelta(days=3), {"value": 15})]
    assert units("weighted_sum_agg", [*history, *events], recurring=True) == Decimal("7.5")


def test_a_prorated_recurring_sum_weights_events_by_days_left() -> None:
    # +3 on Jun 21 → 3 × 10/30 = 1.0; an event of an earlier period counts for the whole period
    events = [event(june(21), {"value": 3})]
    prorated: dict[str, Any] = {"recurring": True, "prorated": True, "timezone": "Europe/Paris"}
    assert units("sum_agg", events, **prorated) == 1
    events.append(event(june(1) - timedelta(days=10), {"value": 2}))
    result = aggregate("sum_agg", "value", events, JUNE_START, JUNE_END, **prorated)
    assert (result.units, result.full_units) == (Decimal(3), Decimal(5))


def test_a_prorated_unique_count_weights_each_span_by_its_days() -> None:
    # u1 Jun 1–10 = 10 days, u1 Jun 15–30 = 16, u2 Jun 3–28 = 26, u3 Jun 20–30 = 11 → 63/30
    prorated: dict[str, Any] = {"recurring": True, "prorated": True, "timezone": "Europe/Paris"}
    result = aggregate(
        "unique_count_agg", "value", unique_count_events(), JUNE_START, JUNE_END, **prorated
    )
    assert (result.units, result.full_units) == (Decimal("2.1"), Decimal(2))


def test_a_same_day_add_remove_add_is_one_span() -> None:
    prorated: dict[str, Any] = {"recurring": True, "prorated": True, "timezone": "Europe/Paris"}
    events = [
        event(june(21, 9), {"value": "u1"}),
        event(june(21, 10), {"value": "u1", "operation_type": "remove"}),
        event(june(21, 11), {"value": "u1"}),
    ]
    # Jun 21–30: 10 days of 30, not 11
    assert units("unique_count_agg", events, **prorated) == Decimal("0.333333333333333")


# --- §3.8 Rounding of units -------------------------------------------------------------------


def test_rounding_applies_to_the_period_aggregate_not_per_event() -> None:
    # Three events of 0.4 GB, rounded to whole GB: per event 0 each, on the aggregate 1
    events = [event(june(day), {"value": Decimal("0.4")}) for day in (2, 3, 4)]
    assert units("sum_agg", events, rounding_function="round") == 1
    assert units("sum_agg", events, rounding_function="ceil", rounding_precision=0) == 2
    assert units("sum_agg", events) == Decimal("1.2")


def test_rounding_a_weighted_sum_uses_the_exact_value() -> None:
    events = [event(june(day, 0), {"value": v}) for day, v in ((1, 10), (11, 5), (21, -15))]
    assert units("weighted_sum_agg", events, rounding_function="ceil") == 9
    assert units("weighted_sum_agg", events, rounding_function="round", rounding_precision=2) == (
        Decimal("8.33")
    )


# --- §3.9 Filters and the default bucket -------------------------------------------------------

TOKEN_FILTERS: list[dict[str, list[str]]] = [
    {"model": ["large"], "direction": ["input"]},
    {"model": ["large"], "direction": ["output"]},
    {"model": ["small"], "direction": ["input"]},
    {"model": ["small"], "direction": ["output"]},
]
TOKEN_KEYS = {"model": ["large", "small"], "direction": ["input", "output"]}


def test_each_event_goes_to_the_filter_its_properties_match() -> None:
    check_charge_filters(TOKEN_FILTERS, TOKEN_KEYS)
    assert match_filter(TOKEN_FILTERS, {"model": "small", "direction": "input"}) == 2
    assert match_filter(TOKEN_FILTERS, {"model": "large", "direction": "output", "x": "y"}) == 1


def test_an_event_matching_no_filter_goes_to_the_default_bucket() -> None:
    # model=large without direction matches no filter → the default bucket (the charge's price)
    assert match_filter(TOKEN_FILTERS, {"model": "large"}) is None
    assert match_filter(TOKEN_FILTERS, {}) is None
    assert match_filter([], {"model": "large"}) is None


def test_the_all_values_wildcard_matches_any_value_but_needs_the_key() -> None:
    filters = [{"model": [ALL_FILTER_VALUES]}]
    check_charge_filters(filters, TOKEN_KEYS)
    assert match_filter(filters, {"model": "small"}) == 0
    assert match_filter(filters, {"direction": "input"}) is None


def test_an_event_goes_to_exactly_one_bucket_the_most_specific() -> None:
    # Given a parent filter and two children (D13: nested filters are allowed)
    filters = [
        {"model": [ALL_FILTER_VALUES]},
        {"model": ["large"]},
        {"model": ["large"], "direction": ["input"]},
    ]
    check_charge_filters(filters, TOKEN_KEYS)
    # When events are bucketed, each lands in the innermost filter that matches it
    cases = {
        ("large", "input"): 2,
        ("large", "output"): 1,
        ("small", "input"): 0,
    }
    for (model, direction), bucket in cases.items():
        assert match_filter(filters, {"model": model, "direction": direction}, TOKEN_KEYS) == bucket
        # The same without the declared values: the wildcard counts as the widest
        assert match_filter(filters, {"model": model, "direction": direction}) == bucket
    # Then the bucket counts add up to the events: nothing is counted twice
    events = [{"model": m, "direction": d} for m in ("large", "small") for d in ("input", "output")]
    counts: dict[int | None, int] = defaultdict(int)
    for properties in events:
        counts[match_filter(filters, properties, TOKEN_KEYS)] += 1
    assert sum(counts.values()) == len(events)
    assert dict(counts) == {2: 1, 1: 1, 0: 2}


def test_a_wildcard_expanded_to_the_declared_values_ranks_by_them() -> None:
    # {model: all, direction: [input]} is a child of {model: [large, small], direction: all}
    filters = [
        {"model": ["large", "small"], "direction": [ALL_FILTER_VALUES]},
        {"model": [ALL_FILTER_VALUES], "direction": ["input"]},
    ]
    check_charge_filters(filters, TOKEN_KEYS)
    assert match_filter(filters, {"model": "large", "direction": "input"}, TOKEN_KEYS) == 1
    assert match_filter(filters, {"model": "large", "direction": "output"}, TOKEN_KEYS) == 0


def test_filters_that_overlap_without_nesting_are_refused() -> None:
    # {model: [large]} and {direction: [input]} both match model=large, direction=input (D13)
    with pytest.raises(InvalidValueError) as error:
        check_charge_filters([{"model": ["large"]}, {"direction": ["input"]}], TOKEN_KEYS)
    assert refusal(error) == ("filters", "overlapping_filters")
    # Disjoint values never overlap, whatever the keys
    check_charge_filters(
        [{"model": ["large"]}, {"model": ["small"], "direction": ["input"]}], TOKEN_KEYS
    )


def test_identical_filters_are_refused() -> None:
    # Lago counts the oldest; Tally refuses the charge. A wildcard equals the full list.
    for second in ({"model": ["large", "small"]}, {"model": ["small", "large"]}):
        with pytest.raises(InvalidValueError) as error:
            check_charge_filters([{"model": [ALL_FILTER_VALUES]}, second], TOKEN_KEYS)
        assert refusal(error) == ("filters", "value_already_exist")


@pytest.mark.parametrize(
    ("charge_filter", "reason"),
    [
        ({}, "value_is_mandatory"),
        ({"region": ["eu"]}, "value_is_invalid"),
        ({"model": []}, "value_is_mandatory"),
        ({"model": ["medium"]}, "value_is_invalid"),
        ({"model": [ALL_FILTER_VALUES, "large"]}, "value_is_invalid"),
        ({"model": ["large", "large"]}, "value_already_exist"),
    ],
)
def test_charge_filters_use_only_what_the_metric_declares(
    charge_filter: dict[str, list[str]], reason: str
) -> None:
    with pytest.raises(InvalidValueError) as error:
        check_charge_filters([charge_filter], TOKEN_KEYS)
    assert refusal(error) == ("filters", reason)


# --- §3.10 Pricing group keys ------------------------------------------------------------------


def test_each_pricing_group_is_aggregated_and_priced_separately() -> None:
    # Given requests grouped by workspace: A 1,000, B 250 (and one without a workspace)
    events = [event(june(2), {"workspace": "A"}, transaction_id=f"a{i}") for i in range(1000)]
    events += [event(june(3), {"workspace": "B"}, transaction_id=f"b{i}") for i in range(250)]
    events.append(event(june(4), {}, transaction_id="none"))
    # When they are grouped by their dimension key and counted
    groups: dict[tuple[tuple[str, str | None], ...], list[UsageEvent]] = defaultdict(list)
    for e in events:
        groups[dimension_key(e.properties, ["workspace"])].append(e)
    fees = {
        key: fee_amount_cents(
            aggregate("count_agg", None, group, JUNE_START, JUNE_END).units, Decimal("0.01"), "EUR"
        )
        for key, group in groups.items()
    }
    # Then at €0.01 each: A €10.00, B €2.50
    assert fees == {
        (("workspace", "A"),): 1000,
        (("workspace", "B"),): 250,
        (("workspace", None),): 1,
    }


def test_a_dimension_key_does_not_depend_on_key_order() -> None:
    properties = {"model": "large", "workspace": "A"}
    assert dimension_key(properties, ["workspace", "model", "model"]) == (
        ("model", "large"),
        ("workspace", "A"),
    )


# --- Values for percentage and dynamic pricing, buckets, rollups ---------------------------------


def test_per_event_values_come_in_timestamp_order() -> None:
    # §4.5's events 100, 300, 400, 200 (u = 1000), posted out of order
    sent = [(4, 200), (1, 100), (3, 400), (2, 300)]
    events = [event(june(day), {"value": v}) for day, v in sent]
    result = aggregate("sum_agg", "value", events, JUNE_START, JUNE_END)
    assert result.values == tuple(map(Decimal, (100, 300, 400, 200)))
    assert (result.units, result.events_count) == (Decimal(1000), 4)
    count = aggregate("count_agg", None, events, JUNE_START, JUNE_END)
    assert count.values == (Decimal(1),) * 4


def test_precise_amounts_add_up_for_the_dynamic_model() -> None:
    # "12.5" + "7.25" = 19.75 cents → €0.1975
    events = [
        event(june(2), {"value": 1}, precise_total_amount_cents=Decimal("12.5")),
        event(june(3), {"value": 1}, precise_total_amount_cents=Decimal("7.25")),
        event(june(4), {"value": 1}),
    ]
    assert aggregate(
        "sum_agg", "value", events, JUNE_START, JUNE_END
    ).precise_total_amount_cents == (Decimal("19.75"))


def test_a_bucket_is_the_quarter_hour_holding_the_instant() -> None:
    quarter = datetime(2026, 6, 1, 10, 0, tzinfo=UTC)
    assert bucket_start(quarter) == quarter
    assert bucket_start(quarter + timedelta(minutes=15) - timedelta(microseconds=1)) == quarter
    assert bucket_start(quarter + timedelta(minutes=15)) == quarter + timedelta(minutes=15)
    # Local midnights fall on bucket edges, even at +05:45 (Nepal)
    kathmandu = datetime(2026, 6, 1, tzinfo=ZoneInfo("Asia/Kathmandu"))
    assert bucket_start(kathmandu) == kathmandu
    assert bucket_start(kathmandu).tzinfo is UTC


def test_rollups_combine_to_the_rollup_of_all_their_events() -> None:
    events = [event(june(day), {"value": v}) for day, v in ((2, 10), (20, 4), (25, -2))]
    parts = [rollup_of(events[:1], "value"), rollup_of(events[1:], "value"), EMPTY_ROLLUP]
    whole = combine(parts)
    assert whole == rollup_of(events, "value")
    assert (whole.count, whole.sum, whole.max, whole.latest_value) == (
        3,
        Decimal(12),
        Decimal(10),
        Decimal(-2),
    )
    assert whole.latest_at == june(25)
    assert combine([]) == EMPTY_ROLLUP
    assert rollup_of(events, None) == Rollup(3, Decimal(0), None, None, None)


def test_rollups_answer_count_sum_max_and_latest_only() -> None:
    events = [event(june(day), {"value": v}) for day, v in ((2, 10), (20, 4), (25, -2))]
    rollup = rollup_of(events, "value")
    assert [
        units_from_rollup(t, rollup) for t in ("count_agg", "sum_agg", "max_agg", "latest_agg")
    ] == [
        3,
        12,
        10,
        0,
    ]
    for aggregation_type in ("unique_count_agg", "weighted_sum_agg"):
        with pytest.raises(AssertionError):
            units_from_rollup(aggregation_type, rollup)


def test_an_event_is_a_value() -> None:
    properties = {"tokens": "1"}
    e = UsageEvent(ORG_ID, "sub_1", "tx", "tokens", june(2), properties)
    properties["tokens"] = "2"
    assert e.properties == {"tokens": "1"}
    with pytest.raises(TypeError):
        e.properties["tokens"] = "3"  # type: ignore[index]
    with pytest.raises(AssertionError):
        event(datetime(2026, 6, 2))  # naive
