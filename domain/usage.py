"""Usage events: the value type, its ingest-time checks, filter buckets and pure aggregations.

The aggregations here are the reference model: the SQL rollups of adapters/usage_*.py and the
audit replay must agree with them (property tests compare them).
"""

import hashlib
import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal, Inexact, InvalidOperation, Overflow
from fractions import Fraction
from functools import lru_cache
from types import MappingProxyType
from typing import Any, Final
from uuid import UUID
from zoneinfo import ZoneInfo

from domain.errors import InvalidValueError
from domain.json_text import is_plain, plain_or_null
from domain.limits import DECIMAL_DIGITS_MAX, DECIMAL_PLACES_MAX, EVENT_FUTURE_S_MAX
from domain.metrics import (
    AGGREGATION_TYPES,
    ALL_FILTER_VALUES,
    RECURRING_AGGREGATION_TYPES,
    round_fraction,
)
from domain.money import EXACT, to_decimal

EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
# Rollups are kept per quarter hour: every UTC offset in use is a multiple of 15 minutes, so
# every local midnight, and so every billing-period boundary, falls on a bucket edge.
BUCKET_SECONDS: Final = 900
# unique_count_agg reads properties.operation_type; absent means "add" (Lago).
OPERATION_TYPES: Final = ("add", "remove")
# Units that are not a terminating decimal (a time-weighted average, a prorated count: 250/30)
# keep this many places, rounded half-up, like every other decimal Tally stores.
UNITS_PLACES: Final = DECIMAL_PLACES_MAX
# Types whose units count/sum/max/latest rollups answer; unique_count and weighted_sum need the
# log (distinct values, time weighting).
ROLLUP_AGGREGATION_TYPES: Final = ("count_agg", "sum_agg", "max_agg", "latest_agg")

# Unix seconds as text: digits with an optional fraction; no sign, exponent or blanks.
_UNIX_SECONDS: Final = re.compile(r"[0-9]+(?:\.[0-9]+)?", re.ASCII)
_UNIX_SECONDS_END_INT: Final = 253402300800  # 10000-01-01T00:00:00Z, past datetime.max.
_UNIX_SECONDS_END: Final = Decimal(_UNIX_SECONDS_END_INT)
_MICROSECOND: Final = timedelta(microseconds=1)
_NO_OFFSET: Final = timedelta(0)
_FUTURE_MAX: Final = timedelta(seconds=EVENT_FUTURE_S_MAX)
_ZERO: Final = Decimal(0)


# --- The event ------------------------------------------------------------------------------


@dataclass(frozen=True)
class UsageEvent:
    """One metered fact as stored in the usage log, keyed by (organization,
    external_subscription_id, transaction_id).

    `properties` hold strings only (normalise_properties). `timestamp_given` is False when the
    client sent no timestamp and the receipt time was used: a retry of such an event is the same
    payload even though it arrives later.
    """

    organization_id: UUID
    external_subscription_id: str
    transaction_id: str
    code: str
    timestamp: datetime
    properties: Mapping[str, str]
    precise_total_amount_cents: Decimal | None = None
    timestamp_given: bool = True

    @classmethod
    def normalised(
        cls,
        organization_id: UUID,
        external_subscription_id: str,
        transaction_id: str,
        code: str,
        timestamp: datetime,
        properties: dict[str, str],
        precise_total_amount_cents: Decimal | None,
        timestamp_given: bool,
    ) -> "UsageEvent":
        """The event of fields ingest has just checked: `timestamp` from parse_timestamp (UTC)
        and `properties` a new dict from normalise_properties that no one else holds. Equal to
        UsageEvent(...) of the same fields, without __post_init__'s checks and copy (ingest
        makes one per event)."""
        event = object.__new__(cls)
        event.__dict__.update(
            organization_id=organization_id,
            external_subscription_id=external_subscription_id,
            transaction_id=transaction_id,
            code=code,
            timestamp=timestamp,
            properties=MappingProxyType(properties),
            precise_total_amount_cents=precise_total_amount_cents,
            timestamp_given=timestamp_given,
        )
        return event

    def __post_init__(self) -> None:
        assert self.timestamp.utcoffset() == _NO_OFFSET, self.timestamp
        # A read-only copy: the event is a value, and the caller's dict may change later.
        properties = dict(self.properties)
        assert all(type(key) is str and type(value) is str for key, value in properties.items())
        object.__setattr__(self, "properties", MappingProxyType(properties))


def canonical_event_payload(event: UsageEvent) -> str:
    """The payload that decides "identical re-send" versus "same id, other payload" (D5).

    Code, timestamp to the microsecond (null when the client sent none), properties sorted by
    key, and the precise amount as canonical decimal text. The key fields are not part of it.
    """
    amount = (
        None
        if event.precise_total_amount_cents is None
        else _plain(event.precise_total_amount_cents)
    )
    timestamp = _iso(event.timestamp) if event.timestamp_given else None
    properties = sorted(event.properties.items())
    texts = [event.code]
    for pair in properties:
        texts.extend(pair)
    if is_plain("".join(texts)):
        # What json.dumps below gives, joined directly (the timestamp and amount are plain).
        fields = ",".join([f'"{key}":"{value}"' for key, value in properties])
        return (
            f'{{"code":"{event.code}","precise_total_amount_cents":{plain_or_null(amount)},'
            f'"properties":{{{fields}}},"timestamp":{plain_or_null(timestamp)}}}'
        )
    payload = {
        "code": event.code,
        "timestamp": timestamp,
        "properties": dict(properties),
        "precise_total_amount_cents": amount,
    }
    return json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def payload_fingerprint(event: UsageEvent) -> str:
    """SHA-256 (hex) of canonical_event_payload: equal exactly when the payloads are equal."""
    return hashlib.sha256(canonical_event_payload(event).encode("ascii")).hexdigest()


@lru_cache(maxsize=16_384)  # Events come in bursts that share their second.
def _iso(instant: datetime) -> str:
    """To the microsecond with a Z (strftime's "%Y-%m-%dT%H:%M:%S.%fZ" for years 1000-9999, as
    every event's is, at a fraction of its cost)."""
    if instant.tzinfo is UTC:  # Every event's: "+00:00" becomes "Z".
        return instant.isoformat(timespec="microseconds")[:-6] + "Z"
    utc = instant.astimezone(UTC).replace(tzinfo=None)
    return utc.isoformat(timespec="microseconds") + "Z"


# --- Parsing and validation at ingest -------------------------------------------------------


def parse_timestamp(
    value: str | int | Decimal | None, received_at: datetime, field: str = "timestamp"
) -> datetime:
    """An event's business time from Lago's wire forms (lago-api.md §1.3).

    A JSON integer, a JSON number (the caller passes it as a Decimal from its literal text), or a
    string of Unix seconds with an optional fraction; None means the time of receipt. Never
    through float. Finer than a microsecond is truncated (towards the past), so an instant just
    before a bucket or period edge stays before it. ISO-8601 and other strings are Lago's 422
    `invalid_format`; negative or beyond year 9999 is `value_is_out_of_range`.
    """
    assert received_at.utcoffset() is not None, received_at
    if value is None:
        return received_at.astimezone(UTC)
    if isinstance(value, bool):
        raise InvalidValueError(field, "invalid_format", value)
    if isinstance(value, int):
        if not 0 <= value < _UNIX_SECONDS_END_INT:
            raise InvalidValueError(field, "value_is_out_of_range", value)
        return _whole_seconds(value)
    if isinstance(value, Decimal):
        if not value.is_finite():
            raise InvalidValueError(field, "invalid_format", value)
        seconds = value
    elif isinstance(value, str) and _UNIX_SECONDS.fullmatch(value):
        seconds = Decimal(value)
    else:
        raise InvalidValueError(field, "invalid_format", value)
    if not 0 <= seconds < _UNIX_SECONDS_END:
        raise InvalidValueError(field, "value_is_out_of_range", value)
    return EPOCH + timedelta(microseconds=math.floor(Fraction(seconds) * 10**6))


@lru_cache(maxsize=16_384)  # Events come in bursts that share their second.
def _whole_seconds(seconds: int) -> datetime:
    return EPOCH + timedelta(seconds=seconds)  # Exact: no Fraction needed.


def check_not_in_future(timestamp: datetime, received_at: datetime) -> None:
    """Refuse a timestamp more than EVENT_FUTURE_S_MAX ahead of receipt; exactly that is fine."""
    if timestamp - received_at > _FUTURE_MAX:
        raise InvalidValueError("timestamp", "value_is_in_future", _iso(timestamp))


def normalise_properties(
    properties: Mapping[str, Any] | None, field: str = "properties"
) -> dict[str, str]:
    """Event properties as strings: what the log stores, filters match and fingerprints hash.

    Strings are kept verbatim; numbers (int, or Decimal decoded from the JSON literal) become
    canonical decimal text (number_text: 1.50 → "1.5"); booleans become "true"/"false" (Lago
    reads them as text too); a null value means the property is absent. Objects, arrays,
    floats and text holding a NUL character are refused with `value_is_invalid` on
    `properties.<key>` (on `properties` for such a key). None means {}.
    """
    if properties is None:
        return {}
    if not isinstance(properties, Mapping):
        raise InvalidValueError(field, "value_is_invalid", properties)
    normalised: dict[str, str] = {}
    for key, value in properties.items():
        if type(value) is str and type(key) is str and "\x00" not in key + value:
            normalised[key] = value  # The common case, first.
            continue
        # Text holds no NUL character (PostgreSQL's cannot): refused on every store alike.
        if not isinstance(key, str) or "\x00" in key:
            raise InvalidValueError(field, "value_is_invalid", key)
        if value is None:
            continue
        if isinstance(value, bool):
            normalised[key] = "true" if value else "false"
        elif isinstance(value, str) and "\x00" not in value:
            normalised[key] = value
        elif isinstance(value, int | Decimal):
            normalised[key] = number_text(value, f"{field}.{key}")
        else:
            raise InvalidValueError(f"{field}.{key}", "value_is_invalid", value)
    return normalised


def number_text(value: int | Decimal, field: str) -> str:
    """Canonical text of a number: no exponent, no trailing fractional zeros, no "-0".

    Within Tally's decimal bounds (DECIMAL_DIGITS_MAX integer digits, DECIMAL_PLACES_MAX places),
    so 1, 1.0 and 1.00 are all "1" and the text always parses back with to_decimal.
    """
    if isinstance(value, bool):
        raise InvalidValueError(field, "value_is_invalid", value)
    if isinstance(value, int):
        if abs(value) >= 10**DECIMAL_DIGITS_MAX:
            raise InvalidValueError(field, "value_is_out_of_range", value)
        return str(value)
    if not value.is_finite():
        raise InvalidValueError(field, "value_is_invalid", value)
    if value.is_zero():
        return "0"
    if value.adjusted() >= DECIMAL_DIGITS_MAX:
        raise InvalidValueError(field, "value_is_out_of_range", value)
    try:
        normal = value.normalize(EXACT)
    except (Inexact, InvalidOperation, Overflow):
        raise InvalidValueError(field, "value_is_invalid", value) from None
    exponent = normal.as_tuple().exponent
    assert isinstance(exponent, int), normal
    if exponent < -DECIMAL_PLACES_MAX:
        raise InvalidValueError(field, "value_is_invalid", value)
    return format(normal, "f")


def parse_precise_total_amount_cents(
    value: str | int | Decimal | None, field: str = "precise_total_amount_cents"
) -> Decimal | None:
    """The dynamic charge model's per-event amount: a decimal string (or number), ≥ 0, or None."""
    if value is None:
        return None
    if isinstance(value, Decimal):
        amount = to_decimal(number_text(value, field), field)
    else:
        amount = to_decimal(value, field)
    if amount < 0:
        raise InvalidValueError(field, "value_is_out_of_range", value)
    return amount


def metric_value(
    event_properties: Mapping[str, str], aggregation_type: str, field_name: str | None
) -> Decimal | str | None:
    """The value an event brings to its metric, checked at ingest (billing-semantics §2.3 (c)).

    None for count_agg; the raw string for unique_count_agg (whose operation_type must be add or
    remove); otherwise the number in properties[field_name]. Missing (or empty) is
    `value_is_mandatory` and not a number `value_is_invalid`, both on `properties.<field_name>`.
    """
    assert aggregation_type in AGGREGATION_TYPES, aggregation_type
    if aggregation_type == "count_agg":
        return None
    assert field_name, field_name
    raw = event_properties.get(field_name)
    if raw is None or raw == "":
        raise InvalidValueError(f"properties.{field_name}", "value_is_mandatory", raw)
    if aggregation_type == "unique_count_agg":
        operation_type(event_properties)
        return raw
    return to_decimal(raw, f"properties.{field_name}")


def operation_type(event_properties: Mapping[str, str]) -> str:
    """A unique_count event's operation: "add" (the default) or "remove"."""
    operation = event_properties.get("operation_type", "add")
    if operation not in OPERATION_TYPES:
        raise InvalidValueError("properties.operation_type", "value_is_invalid", operation)
    return operation


def check_filter_values(
    event_properties: Mapping[str, str], metric_filters: Mapping[str, Sequence[str]]
) -> None:
    """Refuse an event whose filter key carries a value the metric does not declare (§2.3 (d))."""
    for key, values in metric_filters.items():
        value = event_properties.get(key)
        if value is not None and value not in values:
            raise InvalidValueError(f"properties.{key}", "value_is_invalid", value)


# --- Buckets, dimensions and filters ---------------------------------------------------------


def bucket_start(timestamp: datetime) -> datetime:
    """The start of the 15-minute UTC bucket holding timestamp (start included, end excluded)."""
    assert timestamp.utcoffset() is not None, timestamp
    index = (timestamp - EPOCH) // timedelta(seconds=BUCKET_SECONDS)
    return EPOCH + index * timedelta(seconds=BUCKET_SECONDS)


def dimension_key(
    properties: Mapping[str, str], keys: Sequence[str]
) -> tuple[tuple[str, str | None], ...]:
    """The dimension values a rollup row carries: (key, value or None), keys sorted and unique.

    `keys` are the metric's filter keys and its charges' pricing group keys. Sorting makes the
    key independent of the order the keys were declared in.
    """
    return tuple([(key, properties.get(key)) for key in sorted(set(keys))])


def match_filter(
    charge_filters: Sequence[Mapping[str, Sequence[str]]],
    properties: Mapping[str, str],
    declared: Mapping[str, Sequence[str]] | None = None,
) -> int | None:
    """The index of the one charge filter an event is priced in, or None for the default bucket.

    An event matches a filter when every key of the filter is among its properties with one of
    the filter's values (ALL_FILTER_VALUES: any value). Of the matching filters the most specific
    wins (billing-semantics §3.9, D13): the most keys (Lago's rule), then the fewest values,
    wildcards counted as every value the metric declares (`declared`; without it, as more
    than any list), then the earliest. For a filter set check_charge_filters accepts, the matching
    filters are nested, so this is the innermost.
    """
    best: tuple[int, int, int, int] | None = None
    for index, charge_filter in enumerate(charge_filters):
        if all(
            key in properties and (_is_wildcard(values) or properties[key] in values)
            for key, values in charge_filter.items()
        ):
            open_wildcards, breadth = _breadth(charge_filter, declared)
            rank = (-len(charge_filter), open_wildcards, breadth, index)
            if best is None or rank < best:
                best = rank
    return None if best is None else best[3]


def check_charge_filters(
    charge_filters: Sequence[Mapping[str, Sequence[str]]],
    declared: Mapping[str, Sequence[str]],
) -> None:
    """Refuse charge filters that could price one event twice, or name what the metric lacks.

    Each filter's keys and values must be declared by the metric (or be [ALL_FILTER_VALUES]).
    D13: two filters that can match one event must be nested (one a child of the other: every
    key of the parent, and on those keys a subset of its values, wildcards expanded to the
    declared values); otherwise `overlapping_filters`. Identical filters are
    `value_already_exist` (Lago keeps the oldest; Tally refuses).
    """
    expanded: list[dict[str, frozenset[str]]] = []
    for charge_filter in charge_filters:
        if not charge_filter:
            raise InvalidValueError("filters", "value_is_mandatory", dict(charge_filter))
        sets: dict[str, frozenset[str]] = {}
        for key, values in charge_filter.items():
            if key not in declared:
                raise InvalidValueError("filters", "value_is_invalid", {key: values})
            if isinstance(values, str) or not values:
                raise InvalidValueError("filters", "value_is_mandatory", {key: values})
            if len(set(values)) != len(values):
                raise InvalidValueError("filters", "value_already_exist", {key: values})
            if _is_wildcard(values):
                sets[key] = frozenset(declared[key])
            elif any(value not in declared[key] for value in values):
                # Also catches a wildcard listed beside other values.
                raise InvalidValueError("filters", "value_is_invalid", {key: values})
            else:
                sets[key] = frozenset(values)
        expanded.append(sets)
    for i, first in enumerate(expanded):
        for second in expanded[i + 1 :]:
            if first == second:
                raise InvalidValueError("filters", "value_already_exist", charge_filters[i])
            if _can_overlap(first, second) and not (
                _is_child(first, second) or _is_child(second, first)
            ):
                raise InvalidValueError("filters", "overlapping_filters", charge_filters[i])


def _is_wildcard(values: Sequence[str]) -> bool:
    return len(values) == 1 and values[0] == ALL_FILTER_VALUES


def _breadth(
    charge_filter: Mapping[str, Sequence[str]], declared: Mapping[str, Sequence[str]] | None
) -> tuple[int, int]:
    """(wildcards not expandable, values counted) for ranking filters by specificity."""
    open_wildcards = breadth = 0
    for key, values in charge_filter.items():
        if not _is_wildcard(values):
            breadth += len(values)
        elif declared is not None and key in declared:
            breadth += len(declared[key])
        else:
            open_wildcards += 1
    return open_wildcards, breadth


def _can_overlap(first: Mapping[str, frozenset[str]], second: Mapping[str, frozenset[str]]) -> bool:
    return all(first[key] & second[key] for key in first.keys() & second.keys())


def _is_child(child: Mapping[str, frozenset[str]], parent: Mapping[str, frozenset[str]]) -> bool:
    return all(key in child and child[key] <= values for key, values in parent.items())


# --- Aggregation over the log (the reference model) ----------------------------------------


@dataclass(frozen=True)
class Aggregate:
    """One bucket's usage over a period.

    units: what the charge model prices, after the metric's unit rounding (§3.8).
    full_units: the same before proration (§4.8 picks ranges with it); units when not prorated.
    events_count: events stamped inside the period (history of a recurring metric excluded).
    values: per-event values in (timestamp, transaction_id) order for percentage pricing
      (sum_agg: each value; count_agg: 1 each; other types: empty).
    closing_value: weighted_sum_agg's level at the period end (the next recurring period's
      previous_value); None for other types.
    precise_total_amount_cents: Σ of the events' precise amounts (the dynamic charge model).
    """

    units: Decimal
    full_units: Decimal
    events_count: int
    values: tuple[Decimal, ...] = ()
    closing_value: Decimal | None = None
    precise_total_amount_cents: Decimal = _ZERO


def aggregate(
    aggregation_type: str,
    field_name: str | None,
    events: Sequence[UsageEvent],
    period_start: datetime,
    period_end: datetime,
    *,
    recurring: bool = False,
    previous_value: Decimal | None = None,
    prorated: bool = False,
    timezone: str = "UTC",
    rounding_function: str | None = None,
    rounding_precision: int | None = None,
) -> Aggregate:
    """Aggregate one bucket's events over the half-open period [period_start, period_end).

    `events` are the bucket's events (one subscription, metric, filter bucket and group); those
    outside the period are ignored, except that a recurring metric counts its history: all
    events before period_end for sum and unique_count, and for weighted_sum the deltas before
    period_start, added to `previous_value` (the opening level), set the initial level.
    `previous_value` is an opening total for recurring sum and weighted_sum only. `prorated`
    (recurring sum and unique_count) weights by local calendar days in `timezone` (§3.7).
    Events at one instant are ordered by transaction_id, so the result never depends on input
    order.
    """
    assert aggregation_type in AGGREGATION_TYPES, aggregation_type
    assert period_start < period_end, (period_start, period_end)
    assert not recurring or aggregation_type in RECURRING_AGGREGATION_TYPES, aggregation_type
    assert previous_value is None or (
        recurring and aggregation_type in ("sum_agg", "weighted_sum_agg")
    ), (aggregation_type, recurring, previous_value)
    assert not prorated or (recurring and aggregation_type in ("sum_agg", "unique_count_agg")), (
        aggregation_type,
        recurring,
    )
    ordered = sorted(events, key=lambda event: (event.timestamp, event.transaction_id))
    in_period = [e for e in ordered if period_start <= e.timestamp < period_end]
    history = [e for e in ordered if e.timestamp < period_start] if recurring else []
    precise = Decimal(0)
    for event in in_period:
        if event.precise_total_amount_cents is not None:
            precise = EXACT.add(precise, event.precise_total_amount_cents)
    values: tuple[Decimal, ...] = ()
    closing: Decimal | None = None

    def numbers(selected: Iterable[UsageEvent]) -> list[Decimal]:
        return [_number(e, aggregation_type, field_name) for e in selected]

    if aggregation_type == "count_agg":
        values = (Decimal(1),) * len(in_period)
        full = units = Fraction(len(in_period))
    elif aggregation_type == "sum_agg":
        values = tuple(numbers(in_period))
        opening = Fraction(previous_value or 0) + sum(map(Fraction, numbers(history)))
        full = opening + sum(map(Fraction, values))
        if prorated:
            days = _LocalDays(period_start, period_end, timezone)
            units = opening + sum(
                Fraction(value) * days.remaining(e.timestamp)
                for value, e in zip(values, in_period, strict=True)
            )
        else:
            units = full
    elif aggregation_type == "max_agg":
        full = units = Fraction(max(numbers(in_period), default=0))
    elif aggregation_type == "latest_agg":
        latest = max(
            ((e.timestamp, _number(e, aggregation_type, field_name)) for e in in_period),
            default=None,
        )
        full = units = Fraction(0) if latest is None or latest[1] < 0 else Fraction(latest[1])
    elif aggregation_type == "unique_count_agg":
        assert field_name, field_name
        full, units = _unique_count(
            [*history, *in_period], field_name, period_start, period_end, prorated, timezone
        )
    else:
        opening = Fraction(previous_value or 0) + sum(map(Fraction, numbers(history)))
        level, full = _weighted_sum(
            opening, in_period, aggregation_type, field_name, period_start, period_end
        )
        units = full
        closing = _fraction_to_decimal(level)
    return Aggregate(
        units=_units(units, rounding_function, rounding_precision),
        full_units=_units(full, rounding_function, rounding_precision),
        events_count=len(in_period),
        values=values,
        closing_value=closing,
        precise_total_amount_cents=precise,
    )


def _number(event: UsageEvent, aggregation_type: str, field_name: str | None) -> Decimal:
    value = metric_value(event.properties, aggregation_type, field_name)
    assert isinstance(value, Decimal), value
    return value


def _unique_count(
    events: Sequence[UsageEvent],
    field_name: str,
    period_start: datetime,
    period_end: datetime,
    prorated: bool,
    timezone: str,
) -> tuple[Fraction, Fraction]:
    """(values active at the period end, prorated value-days / period days) per §3.4 and §3.7.

    Per value, in order: an add opens a span unless one is open, a remove closes the open span;
    repeats change nothing. A span reopened on the local day it closed continues (same-day
    add/remove/add cancel). A remove's day is charged.
    """
    closed: dict[str, list[tuple[date | None, date | None]]] = {}  # value → [(add, remove)]
    open_since: dict[str, date | None] = {}  # value → the day its open span began
    days = _LocalDays(period_start, period_end, timezone) if prorated else None
    for event in events:
        value = event.properties[field_name]
        day = days.day(event.timestamp) if days else None
        if operation_type(event.properties) == "add":
            if value in open_since:
                continue  # Already added: a repeat changes nothing.
            spans = closed.setdefault(value, [])
            if days and spans and spans[-1][1] == day:
                open_since[value] = spans.pop()[0]  # Removed and added again on one day.
            else:
                open_since[value] = day
        elif value in open_since:
            closed.setdefault(value, []).append((open_since.pop(value), day))
    active = Fraction(len(open_since))
    if days is None:
        return active, active
    value_days = sum(days.span(start, end) for spans in closed.values() for start, end in spans)
    value_days += sum(days.span(start, None) for start in open_since.values())
    return active, Fraction(value_days, days.count)


def _weighted_sum(
    opening: Fraction,
    in_period: Sequence[UsageEvent],
    aggregation_type: str,
    field_name: str | None,
    period_start: datetime,
    period_end: datetime,
) -> tuple[Fraction, Fraction]:
    """(closing level, Σ level × duration / period length) for a level built from deltas (§3.6).

    The level starts at `opening` and each event adds its delta at its instant (microseconds).

    Divides by the real length of the period (Tally rule: a DST month is an hour short or long).
    """
    level = opening
    period = (period_end - period_start) // _MICROSECOND
    weighted = Fraction(0)
    cursor = period_start
    for event in in_period:
        weighted += level * ((event.timestamp - cursor) // _MICROSECOND)
        level += Fraction(_number(event, aggregation_type, field_name))
        cursor = event.timestamp
    weighted += level * ((period_end - cursor) // _MICROSECOND)
    return level, weighted / period


class _LocalDays:
    """Local calendar days of a period, for proration (counted on dates, not hours)."""

    def __init__(self, period_start: datetime, period_end: datetime, timezone: str) -> None:
        self.zone = ZoneInfo(timezone)
        self.first = self.day(period_start)
        self.last = self.day(period_end - _MICROSECOND)
        self.count = (self.last - self.first).days + 1

    def day(self, instant: datetime) -> date:
        return instant.astimezone(self.zone).date()

    def remaining(self, instant: datetime) -> Fraction:
        """Share of the period from instant's day to its end, both days included."""
        return Fraction(self.span(self.day(instant), None), self.count)

    def span(self, start: date | None, end: date | None) -> int:
        """Days of [start, end] inside the period (None: from its first / to its last day)."""
        first = self.first if start is None else max(start, self.first)
        last = self.last if end is None else min(end, self.last)
        return max((last - first).days + 1, 0)


def _units(
    value: Fraction, rounding_function: str | None, rounding_precision: int | None
) -> Decimal:
    if rounding_function is None:
        return _fraction_to_decimal(value)
    return round_fraction(value, rounding_function, rounding_precision)


def _fraction_to_decimal(value: Fraction) -> Decimal:
    """Exact when it has at most UNITS_PLACES places, else rounded half-up to UNITS_PLACES."""
    if value.denominator == 1:  # Whole units (token counts): what the rounding below gives.
        return Decimal(value.numerator)
    whole = round_fraction(value, "round", UNITS_PLACES)
    return plain_decimal(whole)


def plain_decimal(value: Decimal) -> Decimal:
    """value without trailing fractional zeros, in plain notation (2.10 → 2.1, 1E+2 → 100)."""
    if value == value.to_integral_value():
        return Decimal(int(value))
    return Decimal(format(value.normalize(EXACT), "f"))


def _plain(value: Decimal) -> str:
    return format(plain_decimal(value), "f")


# --- Rollups ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Rollup:
    """count, sum, max and latest of a set of events' values: what a quarter-hour rollup row
    holds. combine() is associative and commutative, so any partition of the events into rows
    (buckets, batches, backends) combines to the rollup of all of them.

    The latest value is the one with the latest timestamp; at equal timestamps the greater value
    (a rule that needs nothing but the row, so combining stays order-free).
    """

    count: int
    sum: Decimal
    max: Decimal | None
    latest_value: Decimal | None
    latest_at: datetime | None

    def __post_init__(self) -> None:
        assert self.count >= 0, self.count
        assert (self.max is None) == (self.latest_value is None) == (self.latest_at is None), self


EMPTY_ROLLUP: Final = Rollup(count=0, sum=Decimal(0), max=None, latest_value=None, latest_at=None)


def rollup_of_value(timestamp: datetime, value: Decimal | None) -> Rollup:
    """The rollup of one event; value None for metrics whose values are not numbers."""
    if value is None:
        return Rollup(count=1, sum=Decimal(0), max=None, latest_value=None, latest_at=None)
    return Rollup(count=1, sum=value, max=value, latest_value=value, latest_at=timestamp)


def rollup_of(events: Iterable[UsageEvent], field_name: str | None) -> Rollup:
    """The rollup of events; field_name None (count_agg, unique_count_agg) counts only."""
    return combine(
        rollup_of_value(
            event.timestamp,
            None if field_name is None else _number(event, "sum_agg", field_name),
        )
        for event in events
    )


def combine(rollups: Iterable[Rollup]) -> Rollup:
    """One rollup for the union of the events of several (disjoint) rollups."""
    count = 0
    total = Decimal(0)
    highest: Decimal | None = None
    latest: tuple[datetime, Decimal] | None = None
    for rollup in rollups:
        count += rollup.count
        total = EXACT.add(total, rollup.sum)
        if rollup.max is not None:
            highest = rollup.max if highest is None else max(highest, rollup.max)
        if rollup.latest_at is not None:
            assert rollup.latest_value is not None, rollup
            candidate = (rollup.latest_at, rollup.latest_value)
            latest = candidate if latest is None else max(latest, candidate)
    return Rollup(
        count=count,
        sum=total,
        max=highest,
        latest_value=None if latest is None else latest[1],
        latest_at=None if latest is None else latest[0],
    )


def units_from_rollup(
    aggregation_type: str,
    rollup: Rollup,
    rounding_function: str | None = None,
    rounding_precision: int | None = None,
) -> Decimal:
    """Units from the rollup of a period's events, as aggregate() gives them from the events.

    Only for ROLLUP_AGGREGATION_TYPES (count, sum, max, latest): unique_count needs the distinct
    values and weighted_sum the instants, so both are computed from the log.
    """
    assert aggregation_type in ROLLUP_AGGREGATION_TYPES, aggregation_type
    if aggregation_type == "count_agg":
        units = Fraction(rollup.count)
    elif aggregation_type == "sum_agg":
        units = Fraction(rollup.sum)
    elif aggregation_type == "max_agg":
        units = Fraction(rollup.max or 0)
    else:
        latest = rollup.latest_value
        units = Fraction(0) if latest is None or latest < 0 else Fraction(latest)
    return _units(units, rounding_function, rounding_precision)
