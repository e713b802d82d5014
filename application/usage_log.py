"""The usage log port: append-only metered events, deduplicated, with quarter-hour rollups.

Usage is not aggregate events (DESIGN.md, "two write paths"): adapters/usage_*.py store it in
its own tables. This module holds the port, the record type and the in-memory implementation.
"""

import json
import threading
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from decimal import Decimal
from functools import lru_cache
from typing import Final, Protocol
from uuid import UUID

from application.errors import TransactionIdConflictError
from domain.json_text import is_plain, plain_or_null
from domain.money import EXACT
from domain.usage import (
    EMPTY_ROLLUP,
    Rollup,
    UsageEvent,
    bucket_start,
    combine,
    rollup_of_value,
)

Dimensions = tuple[tuple[str, str | None], ...]


@dataclass(frozen=True)
class StoredUsage:
    """One event as the log keeps it.

    `value` is the metric's numeric field (None for count and unique count metrics), `dimensions`
    the values of the keys rollups group by (the metric's filter keys and the charges' pricing
    group keys, sorted), `fingerprint` domain.usage.payload_fingerprint(event).

    The log assigns the rest (0 and None before): `sequence` orders the log (increasing in
    insertion order, unique; used for paging, not for watermarks), `position` places the record
    against a watermark (see UsageLog.watermark: the writing transaction's id on PostgreSQL, the
    sequence on SQLite and in memory), and `voided_at` is when the event was voided, if it was
    (set by find, page and a re-send's answer; events() only returns events live at its bound).
    """

    event: UsageEvent
    value: Decimal | None
    dimensions: Dimensions
    fingerprint: str
    received_at: datetime
    sequence: int = 0
    position: int = 0
    voided_at: datetime | None = None

    def placed(self, sequence: int, position: int) -> "StoredUsage":
        """This record as stored at (sequence, position): dataclasses.replace, without its
        introspection or the frozen __init__ (called for every event ingested)."""
        placed = object.__new__(StoredUsage)
        fields = placed.__dict__
        fields.update(self.__dict__)
        fields["sequence"] = sequence
        fields["position"] = position
        return placed


@dataclass(frozen=True)
class UsageTotal:
    """The rollup of one dimension combination over a bucket-aligned interval."""

    dimensions: Dimensions
    rollup: Rollup
    precise_total_amount_cents: Decimal


Span = tuple[str, datetime, datetime]  # (external_subscription_id, start_at, end_at)


class UsageLog(Protocol):
    """Append-only usage: events and their reversals (voids), with rollups kept in step.

    Positions and watermarks. Every record (an event, or the reversal that voids one) gets a
    position when it is written. A watermark W is a position such that every write with a
    position <= W has ended (committed or rolled back) when watermark() returns it: the set of
    records at or below W is fixed from then on, however writers interleave. "At or below W"
    means position <= W on every store: on PostgreSQL the position is the writing
    transaction's id (xid8) and W is one less than the oldest transaction id still running
    (pg_snapshot_xmin of a snapshot taken in its own statement); SQLite and memory have one
    writer, so the position is the sequence and W is the highest committed one.
    """

    def append(self, batch: Sequence[StoredUsage]) -> list[StoredUsage]:
        """Store a batch, all or nothing, and update the rollups in the same transaction.

        Returns, for each input in order, the stored record: the new one with its sequence and
        position, or for an identical re-send (same key, same fingerprint, stored before or
        earlier in the batch) the record stored first, counted once (voided or not). Raises
        TransactionIdConflictError naming the first input whose key exists with another
        fingerprint; then nothing is stored.
        """

    def void(
        self,
        organization_id: UUID,
        transaction_id: str,
        external_subscription_id: str,
        voided_at: datetime,
    ) -> StoredUsage | None:
        """Void an event: append its reversal (a record of its own, with its own position) and
        take the event out of the rollups in the same transaction. Nothing is deleted.

        Returns the event with its `voided_at`; voiding it again changes nothing and returns
        the same. None if there is no such event.
        """

    def find(
        self, organization_id: UUID, transaction_id: str, external_subscription_id: str | None
    ) -> StoredUsage | None:
        """An event (never a reversal) with its voided_at; without a subscription, the first
        stored of that transaction id."""

    def page(
        self,
        organization_id: UUID,
        page: int,
        per_page: int,
        *,
        external_subscription_id: str | None = None,
        code: str | None = None,
        timestamp_from: datetime | None = None,
        timestamp_to: datetime | None = None,
    ) -> tuple[list[StoredUsage], int]:
        """Events, voided ones included (with voided_at), newest first (by timestamp, then
        sequence), and the total count."""

    def totals(
        self,
        organization_id: UUID,
        external_subscription_id: str,
        code: str,
        start_at: datetime,
        end_at: datetime,
    ) -> list[UsageTotal]:
        """From the rollups (voided events left out): one total per dimension combination over
        [start_at, end_at).

        Both bounds are multiples of 15 minutes (every period boundary is).
        """

    def events(
        self,
        organization_id: UUID,
        external_subscription_id: str,
        code: str,
        start_at: datetime,
        end_at: datetime,
        up_to_position: int | None = None,
    ) -> list[StoredUsage]:
        """From the log itself: events with start_at <= timestamp < end_at that are live at
        up_to_position (an event at or below it whose reversal, if any, is above it), ordered by
        (timestamp, transaction_id), voided_at None. Without a bound, every event not voided."""

    def totals_at(
        self,
        organization_id: UUID,
        external_subscription_id: str,
        codes: Sequence[str],
        start_at: datetime,
        end_at: datetime,
        up_to_position: int,
    ) -> dict[str, list[UsageTotal]]:
        """From the log itself, in one read: for each code, one total per dimension combination
        of the events that events() returns (live at up_to_position, start_at <= timestamp <
        end_at), from their stored values (`value`, the precise amount), sorted as totals().
        A code without such events is absent. The bounds need not be bucket-aligned."""

    def totals_at_many(
        self,
        organization_id: UUID,
        spans: Sequence[Span],
        codes: Sequence[str],
        up_to_position: int,
    ) -> dict[Span, dict[str, list[UsageTotal]]]:
        """totals_at(organization_id, subscription, codes, start_at, end_at, up_to_position)
        of each (subscription, start_at, end_at) span, in one read where the store can: the
        billing run's read for many subscriptions at once (ADR 0027)."""

    def events_since(
        self,
        organization_id: UUID,
        external_subscription_id: str,
        code: str,
        start_at: datetime,
        end_at: datetime,
        after_position: int,
        up_to_position: int,
    ) -> list[StoredUsage]:
        """Events with start_at <= timestamp < end_at appended, or voided, at a position above
        after_position and at or below up_to_position: those whose presence may differ between
        the two watermarks (late usage). Ordered as events(), voided_at None."""

    def watermark(self) -> int:
        """A position at or above which nothing is still being written (see the class):
        every record at or below it is visible, and no record at or below it will ever be
        added. It never decreases."""

    def rebuild_rollups(self) -> int:
        """Recompute every rollup from the log (voided events left out); returns the number of
        rollup rows."""


# --- Shared by every implementation: batch deduplication, dimensions, rollup rows -----------

UsageKey = tuple[UUID, str, str]  # (organization_id, external_subscription_id, transaction_id)
# A rollup row's key: (organization_id, external_subscription_id, code, dimensions, bucket_start).
RollupKey = tuple[UUID, str, str, Dimensions, datetime]
# A rollup row's values: the rollup and the sum of the events' precise amounts.
RollupRow = tuple[Rollup, Decimal]
EMPTY_ROLLUP_ROW: Final[RollupRow] = (EMPTY_ROLLUP, Decimal(0))


def usage_key(usage: StoredUsage) -> UsageKey:
    event = usage.event
    return (event.organization_id, event.external_subscription_id, event.transaction_id)


def dedupe_batch(
    batch: Sequence[StoredUsage], stored_fingerprints: Mapping[UsageKey, str] | None = None
) -> tuple[list[int], dict[int, int]]:
    """Resolve the repeated keys of a batch, before or after looking at the stored ones.

    Returns the index of each key's first input, in order, and for every later input with the
    same key the index of that first one (an identical re-send, counted once). Raises
    TransactionIdConflictError for the first input whose fingerprint differs from the stored
    one (`stored_fingerprints`, by key) or from an earlier input with the same key.
    """
    # Keyed by the organization's number: a tuple holding a UUID hashes it in Python.
    known: dict[tuple[int, str, str], tuple[str, int | None]] = {
        (organization_id.int, subscription, transaction): (fingerprint, None)
        for (organization_id, subscription, transaction), fingerprint in (
            stored_fingerprints or {}
        ).items()
    }
    firsts: list[int] = []
    duplicates: dict[int, int] = {}
    for index, usage in enumerate(batch):
        event = usage.event
        key = (event.organization_id.int, event.external_subscription_id, event.transaction_id)
        seen = known.get(key)
        if seen is None:
            known[key] = (usage.fingerprint, index)
            firsts.append(index)
            continue
        fingerprint, first = seen
        if fingerprint != usage.fingerprint:
            raise TransactionIdConflictError(index, usage.event.transaction_id)
        if first is None:  # Stored before: the first input of this key in the batch re-sends it.
            known[key] = (fingerprint, index)
            firsts.append(index)
        else:
            duplicates[index] = first
    return firsts, duplicates


@lru_cache(maxsize=65_536)  # Few combinations, one per event appended.
def dimensions_text(dimensions: Dimensions) -> str:
    """Canonical JSON of the dimension pairs (sorted by key): how stores key rollup rows."""
    keys = [key for key, _ in dimensions]
    assert keys == sorted(set(keys)), dimensions
    if all(is_plain(key) and (value is None or is_plain(value)) for key, value in dimensions):
        # What json.dumps below gives, joined directly (ingest computes one per event).
        return (
            "[" + ",".join(f'["{key}",{plain_or_null(value)}]' for key, value in dimensions) + "]"
        )
    return json.dumps([list(pair) for pair in dimensions], separators=(",", ":"))


@lru_cache(maxsize=65_536)  # The stores' totals repeat few texts; the tuples are immutable.
def dimensions_from_text(text: str) -> Dimensions:
    return tuple((key, value) for key, value in json.loads(text))


def rollup_row(usage: StoredUsage) -> RollupRow:
    """The rollup row of one event."""
    amount = usage.event.precise_total_amount_cents
    rollup = rollup_of_value(usage.event.timestamp, usage.value)
    return rollup, Decimal(0) if amount is None else amount


def merge_rollup_rows(rows: Iterable[RollupRow]) -> RollupRow:
    """One row for the union of the events of several rows (domain.usage.combine, plus Σ)."""
    rows = list(rows)
    precise = Decimal(0)
    for _, amount in rows:
        precise = EXACT.add(precise, amount)
    return combine(rollup for rollup, _ in rows), precise


def rollup_key(usage: StoredUsage) -> RollupKey:
    """The key of the rollup row an event counts in."""
    event = usage.event
    return (
        event.organization_id,
        event.external_subscription_id,
        event.code,
        usage.dimensions,
        bucket_start(event.timestamp),
    )


def rollup_rows(records: Iterable[StoredUsage]) -> dict[RollupKey, RollupRow]:
    """The rollup rows of some events, by key."""
    grouped: dict[RollupKey, list[RollupRow]] = defaultdict(list)
    for usage in records:
        grouped[rollup_key(usage)].append(rollup_row(usage))
    return {key: merge_rollup_rows(rows) for key, rows in grouped.items()}


def totals_of(records: Iterable[StoredUsage]) -> dict[str, list[UsageTotal]]:
    """Per code, one total per dimension combination of the records, sorted as totals()."""
    grouped: dict[tuple[str, Dimensions], list[RollupRow]] = defaultdict(list)
    for usage in records:
        grouped[(usage.event.code, usage.dimensions)].append(rollup_row(usage))
    totals: dict[str, list[UsageTotal]] = defaultdict(list)
    for (code, dimensions), rows in grouped.items():
        rollup, precise = merge_rollup_rows(rows)
        totals[code].append(UsageTotal(dimensions, rollup, precise))
    return {
        code: sorted(found, key=lambda total: dimensions_text(total.dimensions))
        for code, found in totals.items()
    }


def totals_at_each(
    log: UsageLog,
    organization_id: UUID,
    spans: Sequence[Span],
    codes: Sequence[str],
    up_to_position: int,
) -> dict[Span, dict[str, list[UsageTotal]]]:
    """totals_at_many() as one totals_at() per span: for stores where a read is cheap."""
    return {
        span: log.totals_at(organization_id, span[0], codes, span[1], span[2], up_to_position)
        for span in dict.fromkeys(spans)
    }


def totals_from_events(
    log: UsageLog,
    organization_id: UUID,
    external_subscription_id: str,
    codes: Sequence[str],
    start_at: datetime,
    end_at: datetime,
    up_to_position: int,
) -> dict[str, list[UsageTotal]]:
    """UsageLog.totals_at from events(), summed exactly in Python (one read per code): for a
    store that cannot aggregate where its rows are."""
    return totals_of(
        record
        for code in dict.fromkeys(codes)
        for record in log.events(
            organization_id, external_subscription_id, code, start_at, end_at, up_to_position
        )
    )


def check_bucket_aligned(start_at: datetime, end_at: datetime) -> None:
    for instant in (start_at, end_at):
        assert bucket_start(instant) == instant, instant


# --- In memory ------------------------------------------------------------------------------


class MemoryUsageLog:
    """The usage log of unit and API tests: the same contract, in dictionaries, under a lock.

    One writer at a time (the lock): the position of a record is its sequence, and the
    watermark the last sequence given.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._records: list[StoredUsage] = []  # Events, in sequence order.
        self._by_key: dict[UsageKey, StoredUsage] = {}
        # The reversal of each voided event: its sequence (= position) and when it was made.
        self._voids: dict[UsageKey, tuple[int, datetime]] = {}
        self._rollups: dict[RollupKey, RollupRow] = {}
        self._sequence = 0

    def append(self, batch: Sequence[StoredUsage]) -> list[StoredUsage]:
        for usage in batch:
            dimensions_text(usage.dimensions)  # Asserts the dimensions are canonical.
        with self._lock:
            stored = {
                key: record.fingerprint
                for key in map(usage_key, batch)
                if (record := self._by_key.get(key)) is not None
            }
            firsts, duplicates = dedupe_batch(batch, stored)  # Raises before any change.
            results: dict[int, StoredUsage] = {}
            added: list[StoredUsage] = []
            for index in firsts:
                existing = self._by_key.get(usage_key(batch[index]))
                if existing is None:
                    self._sequence += 1
                    existing = replace(
                        batch[index], sequence=self._sequence, position=self._sequence
                    )
                    added.append(existing)
                    self._by_key[usage_key(existing)] = existing
                results[index] = self._found(existing)
            self._records.extend(added)
            for key, row in rollup_rows(added).items():
                self._rollups[key] = merge_rollup_rows(
                    [self._rollups.get(key, EMPTY_ROLLUP_ROW), row]
                )
        return [results[duplicates.get(index, index)] for index in range(len(batch))]

    def void(
        self,
        organization_id: UUID,
        transaction_id: str,
        external_subscription_id: str,
        voided_at: datetime,
    ) -> StoredUsage | None:
        key = (organization_id, external_subscription_id, transaction_id)
        with self._lock:
            record = self._by_key.get(key)
            if record is None:
                return None
            if key not in self._voids:
                self._sequence += 1
                self._voids[key] = (self._sequence, voided_at)
                # Recompute the event's rollup row from the events still live in it.
                bucket = rollup_key(record)
                live = [r for r in self._records if rollup_key(r) == bucket and self._live(r)]
                rows = rollup_rows(live)
                if bucket in rows:
                    self._rollups[bucket] = rows[bucket]
                else:
                    self._rollups.pop(bucket, None)
            return self._found(record)

    def _live(self, record: StoredUsage, up_to: int | None = None) -> bool:
        """The event is at or below `up_to` (None: any) and not voided there."""
        if up_to is not None and record.position > up_to:
            return False
        void = self._voids.get(usage_key(record))
        return void is None or (up_to is not None and void[0] > up_to)

    def _found(self, record: StoredUsage) -> StoredUsage:
        void = self._voids.get(usage_key(record))
        return record if void is None else replace(record, voided_at=void[1])

    def find(
        self, organization_id: UUID, transaction_id: str, external_subscription_id: str | None
    ) -> StoredUsage | None:
        with self._lock:
            if external_subscription_id is not None:
                found = self._by_key.get(
                    (organization_id, external_subscription_id, transaction_id)
                )
            else:
                found = next(
                    (
                        record
                        for record in self._records
                        if record.event.organization_id == organization_id
                        and record.event.transaction_id == transaction_id
                    ),
                    None,
                )
            return None if found is None else self._found(found)

    def page(
        self,
        organization_id: UUID,
        page: int,
        per_page: int,
        *,
        external_subscription_id: str | None = None,
        code: str | None = None,
        timestamp_from: datetime | None = None,
        timestamp_to: datetime | None = None,
    ) -> tuple[list[StoredUsage], int]:
        assert page >= 1 and per_page >= 1, (page, per_page)
        with self._lock:
            records = [self._found(record) for record in self._records]
        selected = [
            record
            for record in records
            if record.event.organization_id == organization_id
            and external_subscription_id in (None, record.event.external_subscription_id)
            and code in (None, record.event.code)
            and (timestamp_from is None or record.event.timestamp >= timestamp_from)
            and (timestamp_to is None or record.event.timestamp <= timestamp_to)
        ]
        selected.sort(key=lambda record: (record.event.timestamp, record.sequence), reverse=True)
        offset = (page - 1) * per_page
        return selected[offset : offset + per_page], len(selected)

    def totals(
        self,
        organization_id: UUID,
        external_subscription_id: str,
        code: str,
        start_at: datetime,
        end_at: datetime,
    ) -> list[UsageTotal]:
        check_bucket_aligned(start_at, end_at)
        grouped: dict[Dimensions, list[RollupRow]] = defaultdict(list)
        with self._lock:
            for (org, subscription, row_code, dimensions, bucket), row in self._rollups.items():
                if (org, subscription, row_code) == (
                    organization_id,
                    external_subscription_id,
                    code,
                ) and (start_at <= bucket < end_at):
                    grouped[dimensions].append(row)
        totals = []
        for dimensions, rows in grouped.items():
            rollup, precise = merge_rollup_rows(rows)
            totals.append(UsageTotal(dimensions, rollup, precise))
        return sorted(totals, key=lambda total: dimensions_text(total.dimensions))

    def _select(
        self,
        organization_id: UUID,
        external_subscription_id: str,
        code: str,
        start_at: datetime,
        end_at: datetime,
        keep: Callable[[StoredUsage], bool],
    ) -> list[StoredUsage]:
        with self._lock:
            selected = [
                record
                for record in self._records
                if record.event.organization_id == organization_id
                and record.event.external_subscription_id == external_subscription_id
                and record.event.code == code
                and start_at <= record.event.timestamp < end_at
                and keep(record)
            ]
        return sorted(selected, key=lambda r: (r.event.timestamp, r.event.transaction_id))

    def events(
        self,
        organization_id: UUID,
        external_subscription_id: str,
        code: str,
        start_at: datetime,
        end_at: datetime,
        up_to_position: int | None = None,
    ) -> list[StoredUsage]:
        return self._select(
            organization_id,
            external_subscription_id,
            code,
            start_at,
            end_at,
            lambda record: self._live(record, up_to_position),
        )

    def totals_at(
        self,
        organization_id: UUID,
        external_subscription_id: str,
        codes: Sequence[str],
        start_at: datetime,
        end_at: datetime,
        up_to_position: int,
    ) -> dict[str, list[UsageTotal]]:
        return totals_from_events(
            self, organization_id, external_subscription_id, codes, start_at, end_at, up_to_position
        )

    def totals_at_many(
        self,
        organization_id: UUID,
        spans: Sequence[Span],
        codes: Sequence[str],
        up_to_position: int,
    ) -> dict[Span, dict[str, list[UsageTotal]]]:
        return totals_at_each(self, organization_id, spans, codes, up_to_position)

    def events_since(
        self,
        organization_id: UUID,
        external_subscription_id: str,
        code: str,
        start_at: datetime,
        end_at: datetime,
        after_position: int,
        up_to_position: int,
    ) -> list[StoredUsage]:
        def changed(record: StoredUsage) -> bool:
            void = self._voids.get(usage_key(record))
            return after_position < record.position <= up_to_position or (
                void is not None and after_position < void[0] <= up_to_position
            )

        return self._select(
            organization_id, external_subscription_id, code, start_at, end_at, changed
        )

    def watermark(self) -> int:
        with self._lock:
            return self._sequence

    def rebuild_rollups(self) -> int:
        with self._lock:
            self._rollups = rollup_rows(r for r in self._records if self._live(r))
            return len(self._rollups)
