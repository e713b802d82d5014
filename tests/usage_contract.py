"""The UsageLog contract, checked on every implementation (memory, SQLite, PostgreSQL).

Each check takes a log that may already hold other tests' events, so it works in a fresh
organization of its own. The reference for every total is domain.usage.combine.
"""

import random
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from uuid import UUID, uuid4

import pytest
from hypothesis import strategies as st

from application.errors import TransactionIdConflictError
from application.usage_log import StoredUsage, UsageLog, UsageTotal, dimensions_text, totals_of
from domain.usage import (
    BUCKET_SECONDS,
    UsageEvent,
    combine,
    dimension_key,
    payload_fingerprint,
    rollup_of_value,
)

START = datetime(2026, 6, 1, tzinfo=UTC)
BUCKET = timedelta(seconds=BUCKET_SECONDS)
MICROSECOND = timedelta(microseconds=1)
RECEIVED_AT = datetime(2026, 6, 2, 12, tzinfo=UTC)
DIMENSION_KEYS = ("model",)


def usage(
    organization_id: UUID,
    transaction_id: str,
    *,
    subscription: str = "sub_1",
    code: str = "tokens",
    at: datetime = START,
    value: str | None = "1",
    model: str | None = "large",
    precise: str | None = None,
    received_at: datetime = RECEIVED_AT,
    timestamp_given: bool = True,
) -> StoredUsage:
    """An event as the ingest use case would hand it to the log (value None: a count metric)."""
    properties = {}
    if value is not None:
        properties["tokens"] = value
    if model is not None:
        properties["model"] = model
    event = UsageEvent(
        organization_id=organization_id,
        external_subscription_id=subscription,
        transaction_id=transaction_id,
        code=code,
        timestamp=at,
        properties=properties,
        precise_total_amount_cents=None if precise is None else Decimal(precise),
        timestamp_given=timestamp_given,
    )
    return StoredUsage(
        event=event,
        value=None if value is None else Decimal(value),
        dimensions=dimension_key(properties, DIMENSION_KEYS),
        fingerprint=payload_fingerprint(event),
        received_at=received_at,
    )


def assert_stored(record: StoredUsage, sent: StoredUsage) -> None:
    """record is sent as the log stored it: equal in everything but the assigned sequence and
    position."""
    assert record.sequence > 0 and record.position > 0, record
    assert record == replace(sent, sequence=record.sequence, position=record.position)


def covering_watermark(log: UsageLog, position: int, timeout: float = 10.0) -> int:
    """The watermark once it covers `position`. At once on SQLite and in memory; on PostgreSQL
    once every transaction of the cluster that was running when that record was written has
    ended (another session's transaction may hold it back for a moment)."""
    deadline = time.monotonic() + timeout
    while (watermark := log.watermark()) < position:
        assert time.monotonic() < deadline, f"the watermark {watermark} stays below {position}"
        time.sleep(0.01)
    return watermark


def oracle_totals(
    records: Iterable[StoredUsage],
    subscription: str,
    code: str,
    start_at: datetime,
    end_at: datetime,
) -> list[UsageTotal]:
    """What totals() must answer, from the events themselves and domain.usage.combine."""
    grouped: dict[tuple[tuple[str, str | None], ...], list[StoredUsage]] = defaultdict(list)
    for record in records:
        event = record.event
        if (event.external_subscription_id, event.code) == (subscription, code) and (
            start_at <= event.timestamp < end_at
        ):
            grouped[record.dimensions].append(record)
    totals = [
        UsageTotal(
            dimensions,
            combine(rollup_of_value(r.event.timestamp, r.value) for r in group),
            sum((r.event.precise_total_amount_cents or Decimal(0) for r in group), Decimal(0)),
        )
        for dimensions, group in grouped.items()
    ]
    return sorted(totals, key=lambda total: dimensions_text(total.dimensions))


def snapshot(log: UsageLog, organization_id: UUID) -> object:
    """Everything an organization's usage answers, to show that a refused batch changed nothing."""
    records, total = log.page(organization_id, 1, 1000)
    return (
        records,
        total,
        [
            log.totals(organization_id, subscription, code, START, START + timedelta(days=1))
            for subscription in ("sub_1", "sub_2")
            for code in ("tokens", "calls")
        ],
    )


# --- Append, find, page -----------------------------------------------------------------------


def check_append_find_and_page(log: UsageLog) -> None:
    org = uuid4()
    sent = [
        usage(org, "tx_1", at=START + timedelta(minutes=1)),
        usage(org, "tx_2", at=START + timedelta(minutes=3), value="2.50"),
        usage(org, "tx_3", at=START + timedelta(minutes=3), code="calls", value=None),
        usage(org, "tx_1", at=START + timedelta(minutes=2), subscription="sub_2", model=None),
        usage(org, "tx_4", at=START + timedelta(hours=2), subscription="sub_2", precise="0.0005"),
    ]
    stored = log.append(sent)

    for record, event in zip(stored, sent, strict=True):
        assert_stored(record, event)
    sequences = [record.sequence for record in stored]
    assert sequences == sorted(set(sequences))  # One batch is stored in input order.
    positions = [record.position for record in stored]
    assert positions == sorted(positions)  # The sequences, or one transaction's id.
    covering_watermark(log, positions[-1])
    assert log.find(org, "tx_2", "sub_1") == stored[1]
    assert log.find(org, "tx_1", "sub_2") == stored[3]
    assert log.find(org, "tx_1", None) == stored[0]  # The first stored of the two.
    assert log.find(org, "tx_9", None) is None
    assert log.find(org, "tx_4", "sub_1") is None
    assert log.find(uuid4(), "tx_1", None) is None  # Another organization sees nothing.

    # Newest first: by timestamp, then by sequence (tx_3 was stored after tx_2).
    assert log.page(org, 1, 10) == ([stored[4], stored[2], stored[1], stored[3], stored[0]], 5)
    assert log.page(org, 2, 2) == ([stored[1], stored[3]], 5)
    assert log.page(org, 4, 2) == ([], 5)
    assert log.page(org, 1, 10, external_subscription_id="sub_2") == ([stored[4], stored[3]], 2)
    assert log.page(org, 1, 10, code="calls") == ([stored[2]], 1)
    # Both timestamp bounds are included (Lago's events query).
    window = log.page(
        org,
        1,
        10,
        timestamp_from=START + timedelta(minutes=2),
        timestamp_to=START + timedelta(minutes=3),
    )
    assert window == ([stored[2], stored[1], stored[3]], 3)
    assert log.page(uuid4(), 1, 10) == ([], 0)


# --- Duplicates and conflicts -----------------------------------------------------------------


def check_identical_resends_are_stored_once(log: UsageLog) -> None:
    org = uuid4()
    later = RECEIVED_AT + timedelta(hours=1)
    [first] = log.append([usage(org, "a", value="5")])
    watermark = covering_watermark(log, first.position)

    # Alone: the retry (received later) answers the record stored first and stores nothing.
    assert log.append([usage(org, "a", value="5", received_at=later)]) == [first]
    assert log.page(org, 1, 10)[1] == 1

    # Inside one batch: counted once, both inputs answer the same record.
    twice = log.append([usage(org, "b", value="7"), usage(org, "b", value="7", received_at=later)])
    assert_stored(twice[0], usage(org, "b", value="7"))
    assert twice[1] == twice[0]

    # Mixed with new events, a stored one and a repeat inside the batch.
    mixed = log.append(
        [
            usage(org, "c", value="1"),
            usage(org, "a", value="5", received_at=later),
            usage(org, "d", value="2"),
            usage(org, "c", value="1", received_at=later),
            usage(org, "b", value="7"),
        ]
    )
    assert mixed[1] == first
    assert mixed[3] == mixed[0]
    assert mixed[4] == twice[0]
    assert_stored(mixed[0], usage(org, "c", value="1"))
    assert_stored(mixed[2], usage(org, "d", value="2"))
    assert first.sequence < mixed[0].sequence < mixed[2].sequence
    assert watermark < mixed[0].position <= mixed[2].position

    records, total = log.page(org, 1, 100)
    assert total == 4
    assert sorted(r.event.transaction_id for r in records) == ["a", "b", "c", "d"]
    [total_row] = log.totals(org, "sub_1", "tokens", START, START + BUCKET)
    assert (total_row.rollup.count, total_row.rollup.sum) == (4, Decimal(15))

    # Without a client timestamp, the receipt time is the event's: a retry received later is
    # the same payload, and its answer keeps the stored timestamp, dimensions and receipt.
    first_at = START + timedelta(minutes=1)
    [untimed] = log.append([usage(org, "e", at=first_at, timestamp_given=False)])
    retry = replace(
        usage(org, "e", at=first_at + BUCKET, timestamp_given=False, received_at=later),
        dimensions=(),
    )
    assert retry.fingerprint == untimed.fingerprint
    assert log.append([retry]) == [untimed]
    assert untimed.event.timestamp == first_at


def check_a_reused_key_with_another_payload_refuses_the_whole_batch(log: UsageLog) -> None:
    org = uuid4()
    log.append([usage(org, "a", value="5"), usage(org, "b", value="1", subscription="sub_2")])
    before = snapshot(log, org)

    # A stored key with another payload, among new events: nothing of the batch is stored.
    with pytest.raises(TransactionIdConflictError) as stored_conflict:
        log.append([usage(org, "new_1"), usage(org, "a", value="6"), usage(org, "new_2")])
    assert (stored_conflict.value.index, stored_conflict.value.transaction_id) == (1, "a")

    # Two inputs of one batch disagree.
    with pytest.raises(TransactionIdConflictError) as batch_conflict:
        log.append([usage(org, "new_1"), usage(org, "new_3"), usage(org, "new_1", value="9")])
    assert (batch_conflict.value.index, batch_conflict.value.transaction_id) == (2, "new_1")

    # The first conflicting input is named, whether it conflicts with the store or the batch.
    with pytest.raises(TransactionIdConflictError) as first_conflict:
        log.append(
            [usage(org, "new_1"), usage(org, "a", model="small"), usage(org, "new_1", value="9")]
        )
    assert (first_conflict.value.index, first_conflict.value.transaction_id) == (1, "a")

    # An identical re-send does not excuse a conflict later in the batch.
    with pytest.raises(TransactionIdConflictError) as after_resend:
        log.append([usage(org, "a", value="5"), usage(org, "b", value="2", subscription="sub_2")])
    assert (after_resend.value.index, after_resend.value.transaction_id) == (1, "b")

    assert snapshot(log, org) == before
    assert log.find(org, "new_1", None) is None
    # The same transaction_id on another subscription is another event, not a conflict.
    [other] = log.append([usage(org, "a", value="6", subscription="sub_2")])
    assert_stored(other, usage(org, "a", value="6", subscription="sub_2"))


# --- Totals against the reference model -------------------------------------------------------

SLOTS = 6  # Buckets the generated events fall into.
OFFSETS = (timedelta(0), MICROSECOND, timedelta(minutes=7), BUCKET - MICROSECOND)
values = st.one_of(
    st.decimals(min_value=-(10**6), max_value=10**6, places=2),
    st.decimals(min_value=-(10**3), max_value=10**3, places=15),
    st.sampled_from([Decimal("99999999999999999999999.999999999999999"), Decimal("1E+3")]),
)


@dataclass(frozen=True)
class EventSpec:
    slot: int
    offset: timedelta
    code: str
    value: Decimal
    model: str | None
    precise: Decimal | None


@dataclass(frozen=True)
class History:
    """Events sent in batches, some sent again later (identical re-sends), and the intervals
    whose totals are compared."""

    events: list[EventSpec]
    batch_sizes: list[int]
    resent: list[int]
    intervals: list[tuple[int, int]]


event_specs = st.builds(
    EventSpec,
    slot=st.integers(0, SLOTS - 1),
    offset=st.sampled_from(OFFSETS),
    code=st.sampled_from(["tokens", "calls"]),
    value=values,
    model=st.sampled_from(["large", "small", None]),
    precise=st.none() | st.decimals(min_value=0, max_value=10**4, places=4),
)


@st.composite
def usage_histories(draw: st.DrawFn) -> History:
    events = draw(st.lists(event_specs, min_size=1, max_size=25))
    sizes = draw(st.lists(st.integers(1, 10), min_size=1, max_size=len(events)))
    resent = draw(st.lists(st.integers(0, len(events) - 1), max_size=6))
    intervals = draw(
        st.lists(
            st.tuples(st.integers(0, SLOTS), st.integers(0, SLOTS))
            .map(sorted)
            .filter(lambda pair: pair[0] < pair[1])
            .map(tuple),
            min_size=1,
            max_size=4,
        )
    )
    return History(events, sizes, resent, intervals)


def check_totals_equal_combine_of_the_events(log: UsageLog, history: History) -> None:
    org = uuid4()
    sent = [
        usage(
            org,
            f"tx_{index}",
            code=spec.code,
            at=START + spec.slot * BUCKET + spec.offset,
            value=None if spec.code == "calls" else str(spec.value),
            model=spec.model,
            precise=None if spec.precise is None else str(spec.precise),
        )
        for index, spec in enumerate(history.events)
    ]
    batches: list[list[StoredUsage]] = []
    position = 0
    for size in history.batch_sizes:
        batches.append(sent[position : position + size])
        position += size
    batches.append(sent[position:])
    # Identical re-sends ride along with a later batch, or come alone at the end.
    for index in history.resent:
        retry = replace(sent[index], received_at=RECEIVED_AT + timedelta(minutes=index))
        later = next(n for n, batch in enumerate(batches) if sent[index] in batch)
        batches[min(later + 1, len(batches) - 1)].append(retry)
    for batch in batches:
        if batch:
            log.append(batch)

    assert log.page(org, 1, 1)[1] == len(sent)
    for first, last in history.intervals:
        start_at, end_at = START + first * BUCKET, START + last * BUCKET
        for code in ("tokens", "calls"):
            expected = oracle_totals(sent, "sub_1", code, start_at, end_at)
            assert log.totals(org, "sub_1", code, start_at, end_at) == expected, (first, last)


# --- The log itself: order, sequences, watermark ----------------------------------------------


def check_events_are_ordered_and_bounded_by_sequence(log: UsageLog) -> None:
    org = uuid4()
    at = START + timedelta(minutes=20)
    # Code point order at one instant: digits, upper case, "_", lower case, then beyond ASCII.
    names = ["é", "b", "_", "B", "a", "1"]
    first = log.append([usage(org, name, at=at) for name in names])
    watermark = covering_watermark(log, first[-1].position)
    second = log.append(
        [
            usage(org, "late", at=START + timedelta(minutes=5)),
            usage(org, "edge_start", at=START),
            usage(org, "edge_end", at=START + timedelta(hours=1)),  # End excluded.
            usage(org, "other_code", at=at, code="calls", value=None),
        ]
    )
    end_at = START + timedelta(hours=1)

    listed = log.events(org, "sub_1", "tokens", START, end_at)
    assert [r.event.transaction_id for r in listed] == ["edge_start", "late", *sorted(names)]
    assert listed[0] == second[1]
    assert sorted(names) == ["1", "B", "_", "a", "b", "é"]
    assert all(record.position > watermark for record in second)
    up_to = log.events(org, "sub_1", "tokens", START, end_at, up_to_position=watermark)
    assert up_to == sorted(first, key=lambda r: r.event.transaction_id)
    assert log.events(org, "sub_1", "tokens", START, end_at, up_to_position=0) == []
    since = log.events_since(
        org,
        "sub_1",
        "tokens",
        START,
        end_at,
        watermark,
        covering_watermark(log, second[0].position),
    )
    assert [r.event.transaction_id for r in since] == ["edge_start", "late"]
    assert log.events(org, "sub_2", "tokens", START, end_at) == []


def check_the_watermark_only_grows(log: UsageLog) -> None:
    org = uuid4()
    marks = [log.watermark()]
    for n in range(4):
        stored = log.append([usage(org, f"w{n}_{i}") for i in range(3)])
        # A write after a watermark was taken is above it.
        assert min(r.position for r in stored) > marks[-1]
        marks.append(covering_watermark(log, max(r.position for r in stored)))
        log.append(stored[:1])  # A re-send writes nothing (other writers may move the mark).
        assert log.watermark() >= marks[-1]
    assert marks == sorted(marks) and len(set(marks)) == len(marks)


# --- Rebuild ----------------------------------------------------------------------------------


def check_rebuilt_rollups_equal_the_live_ones(
    log: UsageLog, dump: Callable[[], object] | None = None
) -> None:
    org = uuid4()
    rng = random.Random(7)
    sent = [
        usage(
            org,
            f"tx_{n}",
            subscription=rng.choice(["sub_1", "sub_2"]),
            code=(code := rng.choice(["tokens", "calls"])),
            at=START + rng.randrange(8) * BUCKET + rng.choice(OFFSETS),
            value=None if code == "calls" else str(Decimal(rng.randrange(-999, 9999)) / 100),
            model=rng.choice(["large", "small", None]),
            precise=rng.choice([None, "0.5", "12.0001"]),
        )
        for n in range(60)
    ]
    for n in range(0, len(sent), 7):
        log.append(sent[n : n + 7])

    def per_bucket() -> list[list[UsageTotal]]:
        return [
            log.totals(org, subscription, code, START + n * BUCKET, START + (n + 1) * BUCKET)
            for subscription in ("sub_1", "sub_2")
            for code in ("tokens", "calls")
            for n in range(8)
        ]

    live_totals = per_bucket()
    live_rows = None if dump is None else dump()
    rows = log.rebuild_rollups()
    assert rows > 0
    assert per_bucket() == live_totals
    if dump is not None:
        assert dump() == live_rows
    expected = oracle_totals(sent, "sub_1", "tokens", START, START + 8 * BUCKET)
    assert log.totals(org, "sub_1", "tokens", START, START + 8 * BUCKET) == expected


# --- Concurrency --------------------------------------------------------------------------------


def check_concurrent_overlapping_appends_store_each_event_once(log: UsageLog) -> None:
    """The retry storm in miniature: 4 writers send the same 120 events in their own order and
    batching, while a reader checks that a watermark, once seen, never gains a lower event."""
    org = uuid4()
    sent = [
        usage(
            org,
            f"tx_{n}",
            at=START + (n % 5) * BUCKET + timedelta(seconds=n),
            value=str(n),
            model=("large", "small")[n % 2],
        )
        for n in range(120)
    ]
    end_at = START + 5 * BUCKET
    barrier = threading.Barrier(5)
    done = threading.Event()
    answers: list[list[StoredUsage]] = []
    seen: list[tuple[int, list[StoredUsage]]] = []
    failures: list[BaseException] = []

    def write(seed: int) -> None:
        rng = random.Random(seed)
        order = rng.sample(sent, len(sent))
        mine: list[StoredUsage] = []
        barrier.wait()
        position = 0
        while position < len(order):
            size = rng.randint(5, 25)
            mine.extend(log.append(order[position : position + size]))
            position += size
        answers.append(mine)

    def read() -> None:
        barrier.wait()
        while not done.is_set() and len(seen) < 40:
            watermark = log.watermark()
            if not seen or watermark > seen[-1][0]:
                listed = log.events(org, "sub_1", "tokens", START, end_at, watermark)
                seen.append((watermark, listed))

    def guarded(target: Callable[[], None]) -> Callable[[], None]:
        def run() -> None:
            try:
                target()
            except BaseException as error:  # Re-raised below, in the test's thread.
                failures.append(error)

        return run

    writers = [threading.Thread(target=guarded(lambda s=s: write(s))) for s in range(4)]
    reader = threading.Thread(target=guarded(read))
    for thread in [*writers, reader]:
        thread.start()
    for thread in writers:
        thread.join(timeout=60)
    done.set()
    reader.join(timeout=60)
    if failures:
        raise failures[0]
    assert len(answers) == 4

    records, total = log.page(org, 1, 1000)
    assert total == len(sent)
    by_key = {r.event.transaction_id: r for r in records}
    for mine in answers:  # Every writer got the one stored record of each event.
        assert sorted(mine, key=lambda r: r.sequence) == sorted(records, key=lambda r: r.sequence)
        assert all(by_key[r.event.transaction_id] == r for r in mine)
    assert log.totals(org, "sub_1", "tokens", START, end_at) == oracle_totals(
        sent, "sub_1", "tokens", START, end_at
    )
    in_order = sorted(records, key=lambda r: (r.event.timestamp, r.event.transaction_id))
    for watermark, listed in seen:
        # Never missed: every event at or below the watermark was there when it was read.
        assert listed == [r for r in in_order if r.position <= watermark]
        # Never gains: read again now, after every writer is done, it is the same.
        assert log.events(org, "sub_1", "tokens", START, end_at, watermark) == listed


def check_out_of_order_commits(
    log: UsageLog, held_append: Callable[[list[StoredUsage]], AbstractContextManager[None]]
) -> None:
    """A writer that started first commits last: a watermark taken meanwhile covers neither
    writer, though the second one has committed; once the first commits, a new watermark covers
    both, and the listing at the old watermark never changes. `held_append(batch)` appends the
    batch in a transaction that commits when the context exits (PostgreSQL only: SQLite and the
    memory log have one writer, so their commits cannot overtake each other)."""
    org = uuid4()
    end_at = START + BUCKET
    first = [usage(org, f"first_{n}", value=str(n)) for n in range(3)]
    with held_append(first):
        # Another rollup row: the held writer keeps its own rows locked until it commits.
        [second] = log.append([usage(org, "second", value="10", model="small")])
        watermark = log.watermark()
        assert watermark < second.position
        before = log.events(org, "sub_1", "tokens", START, end_at, watermark)
        assert log.find(org, "second", "sub_1") == second  # Committed, but not yet covered.
        assert before == []
    covering = covering_watermark(log, second.position)
    after = log.events(org, "sub_1", "tokens", START, end_at, covering)
    assert sorted(r.event.transaction_id for r in after) == [
        "first_0",
        "first_1",
        "first_2",
        "second",
    ]
    assert all(r.position < second.position for r in after if r != second)  # Out of order.
    assert log.events(org, "sub_1", "tokens", START, end_at, watermark) == before
    since = log.events_since(org, "sub_1", "tokens", START, end_at, watermark, covering)
    assert since == after


# --- Voids ------------------------------------------------------------------------------------


def check_voids_append_a_reversal_and_drop_from_totals(log: UsageLog) -> None:
    org = uuid4()
    voided_at = RECEIVED_AT + timedelta(hours=3)
    at = START + timedelta(minutes=1)
    sent = [
        usage(org, "a", at=at, value="5", precise="1.5"),
        usage(org, "b", at=at + timedelta(minutes=2), value="9", precise="2.25"),  # Max, latest.
        usage(org, "c", at=at, value="2", model="small"),
        usage(org, "d", at=at + BUCKET, value="4"),  # Alone in its bucket.
        usage(org, "e", at=at, code="calls", value=None),
        usage(org, "f", at=at, code="calls", value=None),
    ]
    stored = {r.event.transaction_id: r for r in log.append(sent)}
    before_void = covering_watermark(log, stored["a"].position)
    listing = log.events(org, "sub_1", "tokens", START, START + 2 * BUCKET, before_void)

    voided = log.void(org, "b", "sub_1", voided_at)
    assert voided == replace(stored["b"], voided_at=voided_at)
    assert log.find(org, "b", "sub_1") == voided
    assert log.find(org, "b", None) == voided
    # Idempotent: voiding again answers the same (the first void's time) and changes nothing.
    assert log.void(org, "b", "sub_1", voided_at + timedelta(hours=1)) == voided
    assert log.void(org, "b", "sub_2", voided_at) is None  # Another subscription's key.
    assert log.void(org, "zz", "sub_1", voided_at) is None
    assert log.void(uuid4(), "a", "sub_1", voided_at) is None
    for transaction_id in ("d", "e"):
        assert log.void(org, transaction_id, "sub_1", voided_at) is not None

    # Nothing is deleted: the log still lists every event, the voided ones marked.
    records, total = log.page(org, 1, 100)
    assert total == len(sent)
    marks = {r.event.transaction_id: r.voided_at for r in records}
    assert marks == {
        "a": None,
        "b": voided_at,
        "c": None,
        "d": voided_at,
        "e": voided_at,
        "f": None,
    }

    # Totals are those of the live events: count and sum, and max and latest recomputed.
    live = [r for r in sent if r.event.transaction_id in {"a", "c", "f"}]
    for code in ("tokens", "calls"):
        for first, last in ((0, 1), (1, 2), (0, 2)):
            start_at, end_at = START + first * BUCKET, START + last * BUCKET
            expected = oracle_totals(live, "sub_1", code, start_at, end_at)
            assert log.totals(org, "sub_1", code, start_at, end_at) == expected, (code, first)
    [large] = [
        t
        for t in log.totals(org, "sub_1", "tokens", START, START + BUCKET)
        if t.dimensions == (("model", "large"),)
    ]
    assert (large.rollup.count, large.rollup.sum, large.rollup.max) == (1, 5, 5)
    assert large.precise_total_amount_cents == Decimal("1.5")

    # The log at a watermark: a void above it changes nothing there; at a later one it counts.
    end_at = START + 2 * BUCKET
    assert log.events(org, "sub_1", "tokens", START, end_at, before_void) == listing
    [marker] = log.append([usage(org, "marker", at=START + 3 * BUCKET)])
    after_void = covering_watermark(log, marker.position)  # Written after the voids: above them.
    now = log.events(org, "sub_1", "tokens", START, end_at, after_void)
    assert [r.event.transaction_id for r in now] == ["a", "c"]
    assert log.events(org, "sub_1", "tokens", START, end_at) == now
    assert [r.event.transaction_id for r in log.events(org, "sub_1", "calls", START, end_at)] == [
        "f"
    ]
    # What changed between the two watermarks: the voided events.
    since = log.events_since(org, "sub_1", "tokens", START, end_at, before_void, after_void)
    assert [r.event.transaction_id for r in since] == ["b", "d"]
    assert all(r.voided_at is None for r in since)
    # The store's totals at a watermark (the billing run's) are those of the events there,
    # between bounds on bucket edges or not.
    for bound in (before_void, after_void):
        for start_at, until in ((START, end_at), (at + timedelta(minutes=1), at + BUCKET)):
            expected_at = totals_of(
                r
                for code in ("tokens", "calls")
                for r in log.events(org, "sub_1", code, start_at, until, bound)
            )
            found = log.totals_at(org, "sub_1", ["tokens", "calls"], start_at, until, bound)
            assert found == expected_at, (bound, start_at)
            # Many spans in one read (the billing run's): each as totals_at, none left out.
            spans = [("sub_1", start_at, until), ("sub_none", start_at, until)]
            assert log.totals_at_many(org, spans, ["tokens", "calls"], bound) == {
                spans[0]: found,
                spans[1]: {},
            }
    assert log.totals_at(org, "sub_1", ["tokens"], START, end_at, before_void)["tokens"][0] == (
        UsageTotal(
            (("model", "large"),),
            combine(
                rollup_of_value(r.event.timestamp, r.value)
                for r in sent
                if r.event.transaction_id in ("a", "b", "d")
            ),
            Decimal("3.75"),
        )
    )

    # An identical re-send of a voided event is a duplicate: it answers the voided record.
    assert log.append([sent[1]]) == [voided]
    assert log.totals(org, "sub_1", "tokens", START, START + BUCKET) == oracle_totals(
        live, "sub_1", "tokens", START, START + BUCKET
    )
    # The rebuild leaves voided events out, as the live rollups do.
    totals = [log.totals(org, "sub_1", c, START, end_at) for c in ("tokens", "calls")]
    log.rebuild_rollups()
    assert [log.totals(org, "sub_1", c, START, end_at) for c in ("tokens", "calls")] == totals


def check_concurrent_voids_and_appends_keep_rollups_exact(log: UsageLog) -> None:
    """Voids recompute a rollup row while appends add to it: the totals end equal to the live
    events, and a listing at a watermark never changes afterwards."""
    org = uuid4()
    sent = [
        usage(org, f"tx_{n}", at=START + timedelta(seconds=n), value=str(n % 17), model="large")
        for n in range(160)
    ]
    for n in range(0, 80, 20):
        log.append(sent[n : n + 20])  # Half stored before; the voids pick among them.
    to_void = [f"tx_{n}" for n in range(0, 80, 3)]
    barrier = threading.Barrier(4)
    failures: list[BaseException] = []
    seen: list[tuple[int, list[StoredUsage]]] = []

    def append_rest() -> None:
        barrier.wait()
        for n in range(80, 160, 10):
            log.append(sent[n : n + 10])

    def void_some(share: list[str]) -> None:
        barrier.wait()
        for transaction_id in share:
            assert log.void(org, transaction_id, "sub_1", RECEIVED_AT) is not None

    def read() -> None:
        barrier.wait()
        for _ in range(15):
            watermark = log.watermark()
            seen.append(
                (watermark, log.events(org, "sub_1", "tokens", START, START + BUCKET, watermark))
            )

    def guarded(target: Callable[[], None]) -> Callable[[], None]:
        def run() -> None:
            try:
                target()
            except BaseException as error:
                failures.append(error)

        return run

    threads = [
        threading.Thread(target=guarded(append_rest)),
        threading.Thread(target=guarded(lambda: void_some(to_void[::2]))),
        threading.Thread(target=guarded(lambda: void_some(to_void[1::2]))),
        threading.Thread(target=guarded(read)),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    if failures:
        raise failures[0]
    live = [r for r in sent if r.event.transaction_id not in set(to_void)]
    assert log.totals(org, "sub_1", "tokens", START, START + BUCKET) == oracle_totals(
        live, "sub_1", "tokens", START, START + BUCKET
    )
    for watermark, listed in seen:
        assert log.events(org, "sub_1", "tokens", START, START + BUCKET, watermark) == listed
