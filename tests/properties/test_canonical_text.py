"""The hot path's hand-joined JSON and timestamps are byte-identical to the slow reference.

Ids, event fingerprints and timestamps are stored and compared across versions: a fast path that
differed in one byte would split one event into two, or give a resource a second id.
"""

import json
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from hypothesis import given
from hypothesis import strategies as st

from api.http import iso, iso_ms
from application.usage_log import dimensions_text
from domain import ids
from domain.json_text import string_array
from domain.usage import UsageEvent, canonical_event_payload, parse_timestamp

# Plain ASCII most of the time (the fast path), anything else often enough (the fallback).
texts = st.one_of(
    st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=12),
    st.text(max_size=12),
)
instants = st.datetimes(
    min_value=datetime(1970, 1, 1), max_value=datetime(9999, 12, 30), timezones=st.just(UTC)
)


def reference_payload(event: UsageEvent) -> str:
    """canonical_event_payload as it was first written: json.dumps of the payload."""
    amount = event.precise_total_amount_cents
    payload = {
        "code": event.code,
        "timestamp": event.timestamp.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        if event.timestamp_given
        else None,
        "properties": dict(sorted(event.properties.items())),
        "precise_total_amount_cents": None if amount is None else format(amount, "f"),
    }
    return json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


@given(st.lists(texts, max_size=5))
def test_a_string_array_is_what_json_dumps_gives(parts: list[str]) -> None:
    assert string_array(parts) == json.dumps(parts, separators=(",", ":"))


@given(texts, texts)
def test_ids_do_not_depend_on_the_path_taken(organization: str, external_id: str) -> None:
    organization_id = ids.organization_id(organization)
    name = json.dumps(["subscription", str(organization_id), external_id], separators=(",", ":"))
    expected = ids._id("subscription", organization_id, external_id)
    assert ids.subscription_id(organization_id, external_id) == expected
    assert expected == uuid.uuid5(ids.NAMESPACE, name)


@given(texts, texts, texts)
def test_an_event_id_as_text_is_its_uuid5(organization: str, subscription: str, key: str) -> None:
    organization_id = ids.organization_id(organization)
    name = json.dumps(
        ["usage_event", str(organization_id), subscription, key], separators=(",", ":")
    )
    expected = uuid.uuid5(ids.NAMESPACE, name)
    assert ids.usage_event_id_text(organization_id, subscription, key) == str(expected)
    assert ids.usage_event_id(organization_id, subscription, key) == expected


@given(
    code=texts,
    properties=st.dictionaries(texts, texts, max_size=4),
    timestamp=instants,
    timestamp_given=st.booleans(),
    amount=st.none() | st.decimals(min_value=0, max_value=10**9, places=4),
)
def test_the_fingerprinted_payload_is_the_reference_json(
    code: str,
    properties: dict[str, str],
    timestamp: datetime,
    timestamp_given: bool,
    amount: Decimal | None,
) -> None:
    amount = None if amount is None else Decimal(format(amount.normalize(), "f"))
    event = UsageEvent(
        organization_id=uuid.UUID(int=1),
        external_subscription_id="s",
        transaction_id="t",
        code=code,
        timestamp=timestamp,
        properties=properties,
        precise_total_amount_cents=amount,
        timestamp_given=timestamp_given,
    )
    assert canonical_event_payload(event) == reference_payload(event)


@given(instants)
def test_api_timestamps_are_strftime_s(instant: datetime) -> None:
    assert iso(instant) == instant.strftime("%Y-%m-%dT%H:%M:%SZ")
    assert iso_ms(instant) == (
        instant.strftime("%Y-%m-%dT%H:%M:%S.") + f"{instant.microsecond // 1000:03d}Z"
    )


@given(st.integers(0, 253402300799))
def test_whole_seconds_parse_to_the_same_instant_as_their_text(seconds: int) -> None:
    received = datetime(2026, 1, 1, tzinfo=UTC)
    assert parse_timestamp(seconds, received) == parse_timestamp(str(seconds), received)
    assert parse_timestamp(seconds, received) == datetime(1970, 1, 1, tzinfo=UTC) + timedelta(
        seconds=seconds
    )


@given(st.dictionaries(texts, st.none() | texts, max_size=4))
def test_rollup_dimension_keys_are_the_reference_json(pairs: dict[str, str | None]) -> None:
    dimensions = tuple(sorted(pairs.items()))
    reference = json.dumps([list(pair) for pair in dimensions], separators=(",", ":"))
    assert dimensions_text(dimensions) == reference
