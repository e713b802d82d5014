"""The usage log on SQLite: the PostgreSQL tables, with numbers kept as exact decimal text.

SQLite has no exact decimal type, so numbers are stored as text (a column with TEXT affinity
keeps "1.50" as written) and the rollups are combined in Python with domain.usage.combine,
inside the batch's write transaction. SQLite runs one writer at a time, so sequences commit in
increasing order: a record's position is its sequence and the highest one is a watermark. A
void is a row of its own (`reversal` = 1, a copy of the event with its own sequence); it
recomputes the event's rollup row from the live log in the same transaction.
"""

import json
from collections import defaultdict
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any
from uuid import UUID

from eventsourcing.sqlite import SQLiteCursor, SQLiteDatastore

from application.errors import TransactionIdConflictError
from application.usage_log import (
    EMPTY_ROLLUP_ROW,
    RollupRow,
    Span,
    StoredUsage,
    UsageKey,
    UsageTotal,
    check_bucket_aligned,
    dedupe_batch,
    dimensions_from_text,
    dimensions_text,
    merge_rollup_rows,
    rollup_rows,
    totals_at_each,
    totals_from_events,
    usage_key,
)
from domain.usage import BUCKET_SECONDS, Rollup, UsageEvent, bucket_start, rollup_of_value

_CREATE_STATEMENTS = (
    "CREATE TABLE IF NOT EXISTS usage_events ("
    "sequence INTEGER PRIMARY KEY AUTOINCREMENT, reversal INTEGER NOT NULL DEFAULT 0, "
    "organization_id TEXT NOT NULL, "
    "external_subscription_id TEXT NOT NULL, transaction_id TEXT NOT NULL, code TEXT NOT NULL, "
    "timestamp TEXT NOT NULL, timestamp_given INTEGER NOT NULL, properties TEXT NOT NULL, "
    "precise_total_amount_cents TEXT, value TEXT, dimensions TEXT NOT NULL, "
    "fingerprint TEXT NOT NULL, received_at TEXT NOT NULL, "
    # transaction_id second: the key's index also serves find() without a subscription. An
    # event and its reversal share the event's key.
    "UNIQUE (organization_id, transaction_id, external_subscription_id, reversal))",
    "CREATE INDEX IF NOT EXISTS usage_events_by_time ON usage_events "
    "(organization_id, external_subscription_id, code, timestamp)",
    "CREATE TABLE IF NOT EXISTS usage_rollups ("
    "organization_id TEXT NOT NULL, external_subscription_id TEXT NOT NULL, code TEXT NOT NULL, "
    "dimensions TEXT NOT NULL, bucket_start TEXT NOT NULL, count INTEGER NOT NULL, "
    "sum TEXT NOT NULL, max TEXT, latest_value TEXT, latest_at TEXT, precise_sum TEXT NOT NULL, "
    # bucket_start before dimensions: totals() reads one period's buckets as one index range.
    "PRIMARY KEY (organization_id, external_subscription_id, code, bucket_start, dimensions)"
    ") WITHOUT ROWID",
)
_INSERT_EVENT = (
    "INSERT INTO usage_events (organization_id, external_subscription_id, transaction_id, code, "
    "timestamp, timestamp_given, properties, precise_total_amount_cents, value, dimensions, "
    "fingerprint, received_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
    "ON CONFLICT DO NOTHING RETURNING sequence"
)
_SELECT_ROLLUP = (
    "SELECT count, sum, max, latest_value, latest_at, precise_sum FROM usage_rollups "
    "WHERE organization_id = ? AND external_subscription_id = ? AND code = ? "
    "AND dimensions = ? AND bucket_start = ?"
)
_UPSERT_ROLLUP = (
    "INSERT INTO usage_rollups VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
    "ON CONFLICT (organization_id, external_subscription_id, code, bucket_start, dimensions) "
    "DO UPDATE SET count = excluded.count, sum = excluded.sum, max = excluded.max, "
    "latest_value = excluded.latest_value, latest_at = excluded.latest_at, "
    "precise_sum = excluded.precise_sum"
)
# Events (alias e) with the receipt time of their reversal, if any, as voided_at.
_WITH_VOIDS = (
    "SELECT e.*, v.received_at AS voided_at FROM usage_events e LEFT JOIN usage_events v "
    "ON v.reversal = 1 AND v.organization_id = e.organization_id "
    "AND v.transaction_id = e.transaction_id "
    "AND v.external_subscription_id = e.external_subscription_id WHERE e.reversal = 0"
)
# An event (alias e) no reversal at or below the bound ? (NULL: any) voids.
_NOT_VOIDED = (
    "NOT EXISTS (SELECT 1 FROM usage_events v WHERE v.reversal = 1 "
    "AND v.organization_id = e.organization_id AND v.transaction_id = e.transaction_id "
    "AND v.external_subscription_id = e.external_subscription_id "
    "AND (? IS NULL OR v.sequence <= ?))"
)
_REBUILD_CHUNK = 10_000
# Rollup keys as stored: (organization_id, external_subscription_id, code, dimensions,
# bucket_start), all text.
TextKey = tuple[str, str, str, str, str]


class SQLiteUsageLog:
    def __init__(self, datastore: SQLiteDatastore) -> None:
        self.datastore = datastore
        with self.datastore.transaction(commit=True) as c:
            for statement in _CREATE_STATEMENTS:
                c.execute(statement)

    def append(self, batch: Sequence[StoredUsage]) -> list[StoredUsage]:
        if not batch:
            return []
        with self.datastore.transaction(commit=True) as c:
            try:
                firsts, duplicates = dedupe_batch(batch)
            except TransactionIdConflictError:
                # Two inputs disagree; an earlier one may already disagree with a stored event.
                dedupe_batch(batch, _fingerprints(self._stored(c, map(usage_key, batch))))
                raise
            results: dict[int, StoredUsage] = {}
            added: list[StoredUsage] = []
            pending: list[int] = []
            for index in firsts:
                usage = batch[index]
                c.execute(_INSERT_EVENT, _event_row(usage))
                row = c.fetchone()
                if row is None:
                    pending.append(index)  # Stored before: identical, or a conflict.
                else:
                    results[index] = usage.placed(row[0], row[0])
                    added.append(results[index])
            if pending:
                stored = self._stored(c, (usage_key(batch[index]) for index in pending))
                # Raises for a key stored with another payload; the batch then rolls back.
                dedupe_batch(batch, _fingerprints(stored))
                for index in pending:
                    results[index] = stored[usage_key(batch[index])]
            for key, row_values in rollup_rows(added).items():
                organization_id, subscription, code, dimensions, bucket = key
                text_key = (
                    str(organization_id),
                    subscription,
                    code,
                    dimensions_text(dimensions),
                    _instant(bucket),
                )
                c.execute(_SELECT_ROLLUP, text_key)
                existing = c.fetchone()
                merged = merge_rollup_rows(
                    [EMPTY_ROLLUP_ROW if existing is None else _rollup_row(existing), row_values]
                )
                c.execute(_UPSERT_ROLLUP, (*text_key, *_rollup_values(merged)))
        return [results[duplicates.get(index, index)] for index in range(len(batch))]

    def _stored(self, c: SQLiteCursor, keys: Iterable[UsageKey]) -> dict[UsageKey, StoredUsage]:
        stored = {}
        for organization_id, subscription, transaction_id in keys:
            c.execute(
                f"{_WITH_VOIDS} AND e.organization_id = ? AND e.transaction_id = ? "
                "AND e.external_subscription_id = ?",
                (str(organization_id), transaction_id, subscription),
            )
            row = c.fetchone()
            if row is not None:
                stored[(organization_id, subscription, transaction_id)] = _stored_usage(row)
        return stored

    def find(
        self, organization_id: UUID, transaction_id: str, external_subscription_id: str | None
    ) -> StoredUsage | None:
        with self.datastore.transaction(commit=False) as c:
            return _find(c, organization_id, transaction_id, external_subscription_id)

    def void(
        self,
        organization_id: UUID,
        transaction_id: str,
        external_subscription_id: str,
        voided_at: datetime,
    ) -> StoredUsage | None:
        columns = (
            "organization_id, external_subscription_id, transaction_id, code, timestamp, "
            "timestamp_given, properties, precise_total_amount_cents, value, dimensions, "
            "fingerprint"
        )
        with self.datastore.transaction(commit=True) as c:
            event = _find(c, organization_id, transaction_id, external_subscription_id)
            if event is None or event.voided_at is not None:
                return event
            c.execute(
                f"INSERT INTO usage_events ({columns}, received_at, reversal) "
                f"SELECT {columns}, ?, 1 FROM usage_events WHERE organization_id = ? "
                "AND transaction_id = ? AND external_subscription_id = ? AND reversal = 0",
                (
                    _instant(voided_at),
                    str(organization_id),
                    transaction_id,
                    external_subscription_id,
                ),
            )
            # The event's rollup row, recomputed from the events still live in it.
            bucket = bucket_start(event.event.timestamp)
            text_key = (
                str(organization_id),
                external_subscription_id,
                event.event.code,
                dimensions_text(event.dimensions),
                _instant(bucket),
            )
            c.execute(
                f"SELECT e.* FROM usage_events e WHERE e.reversal = 0 AND e.organization_id = ? "
                "AND e.external_subscription_id = ? AND e.code = ? AND e.dimensions = ? "
                f"AND e.timestamp >= ? AND e.timestamp < ? AND {_NOT_VOIDED}",
                (
                    *text_key[:4],
                    _instant(bucket),
                    _instant(bucket + timedelta(seconds=BUCKET_SECONDS)),
                    None,
                    None,
                ),
            )
            rows = rollup_rows(_stored_usage(row) for row in c.fetchall())
            if rows:
                [merged] = rows.values()
                c.execute(_UPSERT_ROLLUP, (*text_key, *_rollup_values(merged)))
            else:
                c.execute(
                    "DELETE FROM usage_rollups WHERE organization_id = ? "
                    "AND external_subscription_id = ? AND code = ? AND dimensions = ? "
                    "AND bucket_start = ?",
                    text_key,
                )
            return _find(c, organization_id, transaction_id, external_subscription_id)

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
        """Both timestamp bounds are included, as in Lago's events query."""
        assert page >= 1 and per_page >= 1, (page, per_page)
        conditions = ["e.organization_id = ?"]
        params: list[Any] = [str(organization_id)]
        for condition, value in (
            ("e.external_subscription_id = ?", external_subscription_id),
            ("e.code = ?", code),
            ("e.timestamp >= ?", None if timestamp_from is None else _instant(timestamp_from)),
            ("e.timestamp <= ?", None if timestamp_to is None else _instant(timestamp_to)),
        ):
            if value is not None:
                conditions.append(condition)
                params.append(value)
        where = " AND ".join(conditions)
        with self.datastore.transaction(commit=False) as c:
            c.execute(
                f"SELECT count(*) FROM usage_events e WHERE e.reversal = 0 AND {where}", params
            )
            total = int(c.fetchone()[0])
            c.execute(
                f"{_WITH_VOIDS} AND {where} "
                "ORDER BY e.timestamp DESC, e.sequence DESC LIMIT ? OFFSET ?",
                [*params, per_page, (page - 1) * per_page],
            )
            rows = c.fetchall()
        return [_stored_usage(row) for row in rows], total

    def totals(
        self,
        organization_id: UUID,
        external_subscription_id: str,
        code: str,
        start_at: datetime,
        end_at: datetime,
    ) -> list[UsageTotal]:
        check_bucket_aligned(start_at, end_at)
        with self.datastore.transaction(commit=False) as c:
            c.execute(
                "SELECT dimensions, count, sum, max, latest_value, latest_at, precise_sum "
                "FROM usage_rollups WHERE organization_id = ? AND external_subscription_id = ? "
                "AND code = ? AND bucket_start >= ? AND bucket_start < ?",
                (
                    str(organization_id),
                    external_subscription_id,
                    code,
                    _instant(start_at),
                    _instant(end_at),
                ),
            )
            rows = c.fetchall()
        grouped: dict[str, list[RollupRow]] = defaultdict(list)
        for row in rows:
            grouped[row["dimensions"]].append(_rollup_row(row))
        totals = []
        for dimensions, group in sorted(grouped.items()):
            rollup, precise = merge_rollup_rows(group)
            totals.append(UsageTotal(dimensions_from_text(dimensions), rollup, precise))
        return totals

    def events(
        self,
        organization_id: UUID,
        external_subscription_id: str,
        code: str,
        start_at: datetime,
        end_at: datetime,
        up_to_position: int | None = None,
    ) -> list[StoredUsage]:
        # The default (BINARY) collation orders UTF-8 text by code point, as Python does.
        with self.datastore.transaction(commit=False) as c:
            c.execute(
                "SELECT e.* FROM usage_events e WHERE e.reversal = 0 AND e.organization_id = ? "
                "AND e.external_subscription_id = ? AND e.code = ? "
                "AND e.timestamp >= ? AND e.timestamp < ? AND (? IS NULL OR e.sequence <= ?) "
                f"AND {_NOT_VOIDED} ORDER BY e.timestamp, e.transaction_id",
                (
                    str(organization_id),
                    external_subscription_id,
                    code,
                    _instant(start_at),
                    _instant(end_at),
                    up_to_position,
                    up_to_position,
                    up_to_position,
                    up_to_position,
                ),
            )
            rows = c.fetchall()
        return [_stored_usage(row) for row in rows]

    def totals_at(
        self,
        organization_id: UUID,
        external_subscription_id: str,
        codes: Sequence[str],
        start_at: datetime,
        end_at: datetime,
        up_to_position: int,
    ) -> dict[str, list[UsageTotal]]:
        # Numbers are text here: summed exactly in Python.
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
        with self.datastore.transaction(commit=False) as c:
            c.execute(
                "SELECT e.* FROM usage_events e WHERE e.reversal = 0 AND e.organization_id = ? "
                "AND e.external_subscription_id = ? AND e.code = ? "
                "AND e.timestamp >= ? AND e.timestamp < ? "
                "AND ((e.sequence > ? AND e.sequence <= ?) "
                "OR EXISTS (SELECT 1 FROM usage_events v WHERE v.reversal = 1 "
                "AND v.organization_id = e.organization_id AND v.transaction_id = e.transaction_id "
                "AND v.external_subscription_id = e.external_subscription_id "
                "AND v.sequence > ? AND v.sequence <= ?)) ORDER BY e.timestamp, e.transaction_id",
                (
                    str(organization_id),
                    external_subscription_id,
                    code,
                    _instant(start_at),
                    _instant(end_at),
                    after_position,
                    up_to_position,
                    after_position,
                    up_to_position,
                ),
            )
            rows = c.fetchall()
        return [_stored_usage(row) for row in rows]

    def watermark(self) -> int:
        with self.datastore.transaction(commit=False) as c:
            c.execute("SELECT coalesce(max(sequence), 0) FROM usage_events")
            return int(c.fetchone()[0])

    def rebuild_rollups(self) -> int:
        """Recompute in chunks of the log, so memory grows with the rollups, not the events."""
        rows: dict[TextKey, RollupRow] = {}
        with self.datastore.transaction(commit=True) as c:
            c.execute("DELETE FROM usage_rollups")
            after = 0
            while True:
                c.execute(
                    "SELECT sequence, organization_id, external_subscription_id, code, "
                    "dimensions, timestamp, value, precise_total_amount_cents FROM usage_events e "
                    f"WHERE e.sequence > ? AND e.reversal = 0 AND {_NOT_VOIDED} "
                    "ORDER BY e.sequence LIMIT ?",
                    (after, None, None, _REBUILD_CHUNK),
                )
                chunk = c.fetchall()
                if not chunk:
                    break
                after = chunk[-1]["sequence"]
                grouped: dict[TextKey, list[RollupRow]] = defaultdict(list)
                for row in chunk:
                    timestamp = _parse_instant(row["timestamp"])
                    key = (
                        row["organization_id"],
                        row["external_subscription_id"],
                        row["code"],
                        row["dimensions"],
                        _instant(bucket_start(timestamp)),
                    )
                    amount = _decimal(row["precise_total_amount_cents"])
                    grouped[key].append(
                        (
                            rollup_of_value(timestamp, _decimal(row["value"])),
                            Decimal(0) if amount is None else amount,
                        )
                    )
                for key, group in grouped.items():
                    rows[key] = merge_rollup_rows([rows.get(key, EMPTY_ROLLUP_ROW), *group])
            for key, merged in sorted(rows.items()):
                c.execute(_UPSERT_ROLLUP, (*key, *_rollup_values(merged)))
        return len(rows)


def _fingerprints(stored: dict[UsageKey, StoredUsage]) -> dict[UsageKey, str]:
    return {key: usage.fingerprint for key, usage in stored.items()}


def _instant(instant: datetime) -> str:
    """Fixed-width ISO 8601 in UTC, so text order is time order."""
    return instant.astimezone(UTC).replace(tzinfo=None).isoformat(timespec="microseconds")


def _parse_instant(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def _text(number: Decimal | None) -> str | None:
    return None if number is None else str(number)


def _decimal(text: str | None) -> Decimal | None:
    return None if text is None else Decimal(text)  # Our own exact text: no context needed.


def _event_row(usage: StoredUsage) -> tuple[Any, ...]:
    event = usage.event
    return (
        str(event.organization_id),
        event.external_subscription_id,
        event.transaction_id,
        event.code,
        _instant(event.timestamp),
        event.timestamp_given,
        json.dumps(dict(event.properties), separators=(",", ":")),
        _text(event.precise_total_amount_cents),
        _text(usage.value),
        dimensions_text(usage.dimensions),
        usage.fingerprint,
        _instant(usage.received_at),
    )


def _stored_usage(row: Any) -> StoredUsage:
    event = UsageEvent(
        organization_id=UUID(row["organization_id"]),
        external_subscription_id=row["external_subscription_id"],
        transaction_id=row["transaction_id"],
        code=row["code"],
        timestamp=_parse_instant(row["timestamp"]),
        properties=json.loads(row["properties"]),
        precise_total_amount_cents=_decimal(row["precise_total_amount_cents"]),
        timestamp_given=bool(row["timestamp_given"]),
    )
    return StoredUsage(
        event=event,
        value=_decimal(row["value"]),
        dimensions=dimensions_from_text(row["dimensions"]),
        fingerprint=row["fingerprint"],
        received_at=_parse_instant(row["received_at"]),
        sequence=row["sequence"],
        position=row["sequence"],
        voided_at=(
            _parse_instant(row["voided_at"])
            if "voided_at" in row.keys() and row["voided_at"] is not None  # noqa: SIM118 (a Row)
            else None
        ),
    )


def _find(
    c: SQLiteCursor,
    organization_id: UUID,
    transaction_id: str,
    external_subscription_id: str | None,
) -> StoredUsage | None:
    where = "e.organization_id = ? AND e.transaction_id = ?"
    params: list[Any] = [str(organization_id), transaction_id]
    if external_subscription_id is not None:
        where += " AND e.external_subscription_id = ?"
        params.append(external_subscription_id)
    c.execute(f"{_WITH_VOIDS} AND {where} ORDER BY e.sequence LIMIT 1", params)
    row = c.fetchone()
    return None if row is None else _stored_usage(row)


def _rollup_row(row: Any) -> RollupRow:
    latest_at = row["latest_at"]
    rollup = Rollup(
        count=row["count"],
        sum=Decimal(row["sum"]),
        max=_decimal(row["max"]),
        latest_value=_decimal(row["latest_value"]),
        latest_at=None if latest_at is None else _parse_instant(latest_at),
    )
    return rollup, Decimal(row["precise_sum"])


def _rollup_values(row: RollupRow) -> tuple[Any, ...]:
    rollup, precise = row
    return (
        rollup.count,
        str(rollup.sum),
        _text(rollup.max),
        _text(rollup.latest_value),
        None if rollup.latest_at is None else _instant(rollup.latest_at),
        str(precise),
    )
