"""The usage log port: append-only metered events, deduplicated, with quarter-hour rollups.

Usage is not aggregate events (DESIGN.md, "two write paths"): adapters/usage_*.py store it in
its own tables. This module holds the port, the record type and the in-memory implementation.
"""

import json
import threading
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from decimal import Decimal
from typing import Final, Protocol
from uuid import UUID

from application.errors import TransactionIdConflictError
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
    group keys, sorted), `fingerprint` domain.usage.payload_fingerprint(event), and `sequence`
    the log position (0 before the log assigns it; strictly increasing in commit order).
    """

    event: UsageEvent
    value: Decimal | None
    dimensions: Dimensions
    fingerprint: str
    received_at: datetime
    sequence: int = 0


@dataclass(frozen=True)
class UsageTotal:
    """The rollup of one dimension combination over a bucket-aligned interval."""

    dimensions: Dimensions
    rollup: Rollup
    precise_total_amount_cents: Decimal


class UsageLog(Protocol):
    def append(self, batch: Sequence[StoredUsage]) -> list[StoredUsage]:
        """Store a batch, all or nothing, and update the rollups in the same transaction.

        Returns, for each input in order, the stored record: the new one with its sequence, or
        for an identical re-send (same key, same fingerprint, stored before or earlier in the
        batch) the record stored first, counted once. Raises TransactionIdConflictError naming
        the first input whose key exists with another fingerprint; then nothing is stored.
        """

    def find(
        self, organization_id: UUID, transaction_id: str, external_subscription_id: str | None
    ) -> StoredUsage | None: ...

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
        """Events newest first (by timestamp, then sequence) and the total count."""

    def totals(
        self,
        organization_id: UUID,
        external_subscription_id: str,
        code: str,
        start_at: datetime,
        end_at: datetime,
    ) -> list[UsageTotal]:
        """From the rollups: one total per dimension combination over [start_at, end_at).

        Both bounds are multiples of 15 minutes (every period boundary is).
        """

    def events(
        self,
        organization_id: UUID,
        external_subscription_id: str,
        code: str,
        start_at: datetime,
        end_at: datetime,
        up_to_sequence: int | None = None,
    ) -> list[StoredUsage]:
        """From the log itself: events with start_at <= timestamp < end_at (and sequence <=
        up_to_sequence), ordered by (timestamp, transaction_id)."""

    def watermark(self) -> int:
        """The highest sequence committed; every event at or below it is visible."""

    def rebuild_rollups(self) -> int:
        """Recompute every rollup from the log; returns the number of rollup rows."""


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
    known: dict[UsageKey, tuple[str, int | None]] = {
        key: (fingerprint, None) for key, fingerprint in (stored_fingerprints or {}).items()
    }
    firsts: list[int] = []
    duplicates: dict[int, int] = {}
    for index, usage in enumerate(batch):
        key = usage_key(usage)
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


def dimensions_text(dimensions: Dimensions) -> str:
    """Canonical JSON of the dimension pairs (sorted by key): how stores key rollup rows."""
    keys = [key for key, _ in dimensions]
    assert keys == sorted(set(keys)), dimensions
    return json.dumps([list(pair) for pair in dimensions], separators=(",", ":"))


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


def rollup_rows(records: Iterable[StoredUsage]) -> dict[RollupKey, RollupRow]:
    """The rollup rows of some events, by key."""
    grouped: dict[RollupKey, list[RollupRow]] = defaultdict(list)
    for usage in records:
        event = usage.event
        key = (
            event.organization_id,
            event.external_subscription_id,
            event.code,
            usage.dimensions,
            bucket_start(event.timestamp),
        )
        grouped[key].append(rollup_row(usage))
    return {key: merge_rollup_rows(rows) for key, rows in grouped.items()}


def check_bucket_aligned(start_at: datetime, end_at: datetime) -> None:
    for instant in (start_at, end_at):
        assert bucket_start(instant) == instant, instant


# --- In memory ------------------------------------------------------------------------------


class MemoryUsageLog:
    """The usage log of unit and API tests: the same contract, in dictionaries, under a lock."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._records: list[StoredUsage] = []  # In sequence order.
        self._by_key: dict[UsageKey, StoredUsage] = {}
        self._rollups: dict[RollupKey, RollupRow] = {}

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
            sequence = self._records[-1].sequence if self._records else 0
            for index in firsts:
                existing = self._by_key.get(usage_key(batch[index]))
                if existing is None:
                    sequence += 1
                    existing = replace(batch[index], sequence=sequence)
                    added.append(existing)
                results[index] = existing
            self._records.extend(added)
            self._by_key.update((usage_key(record), record) for record in added)
            for key, row in rollup_rows(added).items():
                self._rollups[key] = merge_rollup_rows(
                    [self._rollups.get(key, EMPTY_ROLLUP_ROW), row]
                )
        return [results[duplicates.get(index, index)] for index in range(len(batch))]

    def find(
        self, organization_id: UUID, transaction_id: str, external_subscription_id: str | None
    ) -> StoredUsage | None:
        with self._lock:
            if external_subscription_id is not None:
                return self._by_key.get((organization_id, external_subscription_id, transaction_id))
            return next(
                (
                    record
                    for record in self._records
                    if record.event.organization_id == organization_id
                    and record.event.transaction_id == transaction_id
                ),
                None,
            )

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
            records = list(self._records)
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

    def events(
        self,
        organization_id: UUID,
        external_subscription_id: str,
        code: str,
        start_at: datetime,
        end_at: datetime,
        up_to_sequence: int | None = None,
    ) -> list[StoredUsage]:
        with self._lock:
            records = list(self._records)
        selected = [
            record
            for record in records
            if record.event.organization_id == organization_id
            and record.event.external_subscription_id == external_subscription_id
            and record.event.code == code
            and start_at <= record.event.timestamp < end_at
            and (up_to_sequence is None or record.sequence <= up_to_sequence)
        ]
        return sorted(selected, key=lambda r: (r.event.timestamp, r.event.transaction_id))

    def watermark(self) -> int:
        with self._lock:
            return self._records[-1].sequence if self._records else 0

    def rebuild_rollups(self) -> int:
        with self._lock:
            self._rollups = rollup_rows(self._records)
            return len(self._rollups)
