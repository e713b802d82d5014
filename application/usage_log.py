"""The usage log port: append-only metered events, deduplicated, with quarter-hour rollups.

Usage is not aggregate events (DESIGN.md, "two write paths"): adapters/usage_*.py store it in
its own tables. This module holds the port, the record type and the in-memory implementation.
"""

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Protocol
from uuid import UUID

from domain.usage import Rollup, UsageEvent

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
