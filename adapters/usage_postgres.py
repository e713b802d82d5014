"""The usage log on PostgreSQL: one statement per batch stores the new events and their rollups.

Measured shape (performance-and-reliability.md §7): the batch goes in as arrays (unnest), the
insert skips known keys (ON CONFLICT DO NOTHING), and the rollups are upserted, sorted by key,
from only the rows actually inserted; numbers are `numeric`, so every sum is exact. Only a batch
that meets stored keys takes a second statement, to read them and compare fingerprints.
"""

import hashlib
import json
from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

from eventsourcing.postgres import PostgresDatastore
from psycopg import Cursor
from psycopg.rows import DictRow
from psycopg.sql import SQL, Composable, Composed, Identifier, Literal

from application.errors import TransactionIdConflictError
from application.usage_log import (
    StoredUsage,
    UsageKey,
    UsageTotal,
    check_bucket_aligned,
    dedupe_batch,
    dimensions_from_text,
    dimensions_text,
    usage_key,
)
from domain.usage import BUCKET_SECONDS, Rollup, UsageEvent

# Columns given by the caller, in the order of the append statement's arrays.
_INPUT_COLUMNS = (
    ("organization_id", "uuid"),
    ("external_subscription_id", "text"),
    ("transaction_id", "text"),
    ("code", "text"),
    ("timestamp", "timestamptz"),
    ("timestamp_given", "boolean"),
    ("properties", "jsonb"),
    ("precise_total_amount_cents", "numeric"),
    ("value", "numeric"),
    ("dimensions", "text"),
    ("fingerprint", "text"),
    ("received_at", "timestamptz"),
)
_KEY = SQL("organization_id, transaction_id, external_subscription_id")
# bucket_start before dimensions: totals() reads one period's buckets as one index range.
_ROLLUP_KEY = SQL("organization_id, external_subscription_id, code, bucket_start, dimensions")


class PostgresUsageLog:
    def __init__(self, datastore: PostgresDatastore) -> None:
        self.datastore = datastore
        schema = Identifier(datastore.schema)
        self.events_table = SQL("{0}.usage_events").format(schema)
        self.rollups_table = SQL("{0}.usage_rollups").format(schema)
        # One writer at a time per schema (see append); a constant of this schema, so tests in
        # other schemas of one database do not queue behind each other.
        digest = hashlib.sha256(f"tally.usage_log:{datastore.schema}".encode()).digest()
        self.lock_key = int.from_bytes(digest[:8], "big", signed=True)
        self._lock = SQL("SELECT pg_advisory_xact_lock({0})").format(Literal(self.lock_key))
        self._append = self._append_statement()
        with self.datastore.transaction(commit=True) as curs:
            curs.execute(self._lock)  # Two processes starting at once must not race on DDL.
            for statement in self._create_statements():
                curs.execute(statement)

    def _create_statements(self) -> list[Composed]:
        return [
            SQL(
                "CREATE TABLE IF NOT EXISTS {0} ("
                "sequence bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, "
                "organization_id uuid NOT NULL, external_subscription_id text NOT NULL, "
                "transaction_id text NOT NULL, code text NOT NULL, "
                "timestamp timestamptz NOT NULL, timestamp_given boolean NOT NULL, "
                "properties jsonb NOT NULL, precise_total_amount_cents numeric, value numeric, "
                "dimensions text NOT NULL, fingerprint text NOT NULL, "
                "received_at timestamptz NOT NULL, "
                # The key (D4) with transaction_id second: the same index then serves find()
                # without a subscription (organization, transaction_id), and no other is needed.
                "CONSTRAINT usage_events_key UNIQUE ({1}))"
            ).format(self.events_table, _KEY),
            SQL(
                # Led by the subscription: a key lookup then matches one column of this index
                # and all three of the key's, so the planner probes the key even before the
                # table has statistics (led by the organization, it once chose this index and
                # filtered the subscription's events). Period queries use all four columns.
                "CREATE INDEX IF NOT EXISTS usage_events_by_time ON {0} "
                "(external_subscription_id, code, organization_id, timestamp)"
            ).format(self.events_table),
            SQL(
                "CREATE TABLE IF NOT EXISTS {0} ("
                "organization_id uuid NOT NULL, external_subscription_id text NOT NULL, "
                "code text NOT NULL, dimensions text NOT NULL, "
                "bucket_start timestamptz NOT NULL, count bigint NOT NULL, sum numeric NOT NULL, "
                "max numeric, latest_value numeric, latest_at timestamptz, "
                "precise_sum numeric NOT NULL, PRIMARY KEY ({1}))"
            ).format(self.rollups_table, _ROLLUP_KEY),
        ]

    def _append_statement(self) -> Composed:
        columns = SQL(", ").join(Identifier(name) for name, _ in _INPUT_COLUMNS)
        # Binary parameters: psycopg's text arrays escape every element with a regex.
        arrays = SQL(", ").join(SQL(f"%b::{sql_type}[]") for _, sql_type in _INPUT_COLUMNS)
        return SQL(
            "WITH input AS (SELECT * FROM unnest({arrays}) WITH ORDINALITY "
            "AS input ({columns}, position)), "
            "inserted AS (INSERT INTO {events} ({columns}) "
            "SELECT {columns} FROM input ORDER BY position "
            "ON CONFLICT ({key}) DO NOTHING RETURNING *), "
            "added AS ({upsert}) "
            "SELECT sequence, organization_id, external_subscription_id, transaction_id "
            "FROM inserted"
        ).format(
            arrays=arrays,
            columns=columns,
            events=self.events_table,
            key=_KEY,
            upsert=self._upsert_rollups(SQL("inserted")),
        )

    def _upsert_rollups(self, source: Composable) -> Composed:
        """Add the rollups of the events in `source` to the rollup rows, as combine() does.

        Rows are written sorted by key: one lock order, so writers could never deadlock even
        without the append lock. The latest value is the one with the latest timestamp, and at equal
        timestamps the greater value, like domain.usage.combine.
        """
        return SQL(
            "INSERT INTO {rollups} AS r (organization_id, external_subscription_id, code, "
            "dimensions, bucket_start, count, sum, max, latest_value, latest_at, precise_sum) "
            "{aggregate} "
            "ON CONFLICT ({key}) DO UPDATE SET count = r.count + excluded.count, "
            "sum = r.sum + excluded.sum, max = greatest(r.max, excluded.max), "
            "latest_value = CASE WHEN excluded.latest_at IS NULL THEN r.latest_value "
            "WHEN r.latest_at IS NULL "
            "OR (excluded.latest_at, excluded.latest_value) > (r.latest_at, r.latest_value) "
            "THEN excluded.latest_value ELSE r.latest_value END, "
            "latest_at = greatest(r.latest_at, excluded.latest_at), "
            "precise_sum = r.precise_sum + excluded.precise_sum"
        ).format(rollups=self.rollups_table, key=_ROLLUP_KEY, aggregate=_aggregate(source))

    def append(self, batch: Sequence[StoredUsage]) -> list[StoredUsage]:
        if not batch:
            return []
        try:
            firsts, duplicates = dedupe_batch(batch)
        except TransactionIdConflictError:
            # Two inputs disagree; an earlier one may already disagree with a stored event.
            with self.datastore.transaction(commit=False) as curs:
                rows = self._stored(curs, [usage_key(usage) for usage in batch])
            dedupe_batch(batch, {key: row["fingerprint"] for key, row in rows.items()})
            raise
        new = [batch[index] for index in firsts]
        with self.datastore.transaction(commit=True) as curs:
            # Writers take turns, so sequences commit in increasing order: a reader that sees
            # sequence n sees every sequence below n that will ever commit, and watermark()
            # (the highest committed sequence) never hides a lower one committed later. The
            # lock is released after the commit is visible. Also, every stored key that
            # ON CONFLICT skips is then committed, so the lookup below finds it.
            curs.execute(self._lock)
            curs.execute(self._append, _arrays(new))
            sequences = {_row_key(row): row["sequence"] for row in curs.fetchall()}
            rows = {}
            if len(sequences) < len(new):
                rows = self._stored(curs, [k for k in map(usage_key, new) if k not in sequences])
                # Raises for an input that reuses a stored key with another payload; leaving
                # the block then rolls the whole batch back.
                dedupe_batch(batch, {key: row["fingerprint"] for key, row in rows.items()})
        results = {}
        for index, usage in zip(firsts, new, strict=True):
            key = usage_key(usage)
            if key in rows:
                results[index] = _resent(usage, rows[key])
            else:
                results[index] = replace(usage, sequence=sequences[key])
        return [results[duplicates.get(index, index)] for index in range(len(batch))]

    def _stored(self, curs: Cursor[DictRow], keys: Sequence[UsageKey]) -> dict[UsageKey, DictRow]:
        """The stored rows of these keys, without their payload (see _resent).

        Planned at each call (never a cached plan): a plan cached while the table was small
        would scan it whole, while a fresh plan sees its size and probes the key index.
        """
        organizations, subscriptions, transactions = zip(*keys, strict=True)
        curs.execute(
            SQL(
                "SELECT sequence, organization_id, external_subscription_id, transaction_id, "
                "timestamp, value, dimensions, fingerprint, received_at FROM {0} WHERE ({1}) IN "
                "(SELECT * FROM unnest(%b::uuid[], %b::text[], %b::text[]))"
            ).format(self.events_table, _KEY),
            (list(organizations), list(transactions), list(subscriptions)),
            prepare=False,
        )
        return {_row_key(row): row for row in curs.fetchall()}

    def find(
        self, organization_id: UUID, transaction_id: str, external_subscription_id: str | None
    ) -> StoredUsage | None:
        where: Composable = SQL("organization_id = %s AND transaction_id = %s")
        params: list[Any] = [organization_id, transaction_id]
        if external_subscription_id is not None:
            where = SQL("{0} AND external_subscription_id = %s").format(where)
            params.append(external_subscription_id)
        with self.datastore.transaction(commit=False) as curs:
            curs.execute(
                SQL("SELECT * FROM {0} WHERE {1} ORDER BY sequence LIMIT 1").format(
                    self.events_table, where
                ),
                params,
            )
            row = curs.fetchone()
        return None if row is None else _stored_usage(row)

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
        conditions: list[Composable] = [SQL("organization_id = %s")]
        params: list[Any] = [organization_id]
        for condition, value in (
            ("external_subscription_id = %s", external_subscription_id),
            ("code = %s", code),
            ("timestamp >= %s", timestamp_from),
            ("timestamp <= %s", timestamp_to),
        ):
            if value is not None:
                conditions.append(SQL(condition))
                params.append(value)
        where = SQL(" AND ").join(conditions)
        with self.datastore.transaction(commit=False) as curs:
            curs.execute(
                SQL("SELECT count(*) AS total FROM {0} WHERE {1}").format(self.events_table, where),
                params,
            )
            row = curs.fetchone()
            assert row is not None
            curs.execute(
                SQL(
                    "SELECT * FROM {0} WHERE {1} ORDER BY timestamp DESC, sequence DESC "
                    "LIMIT %s OFFSET %s"
                ).format(self.events_table, where),
                [*params, per_page, (page - 1) * per_page],
            )
            rows = curs.fetchall()
        return [_stored_usage(r) for r in rows], row["total"]

    def totals(
        self,
        organization_id: UUID,
        external_subscription_id: str,
        code: str,
        start_at: datetime,
        end_at: datetime,
    ) -> list[UsageTotal]:
        check_bucket_aligned(start_at, end_at)
        with self.datastore.transaction(commit=False) as curs:
            curs.execute(
                SQL(
                    "SELECT dimensions, sum(count)::bigint AS count, sum(sum) AS sum, "
                    "max(max) AS max, (array_agg(latest_value ORDER BY latest_at DESC, "
                    "latest_value DESC) FILTER (WHERE latest_at IS NOT NULL))[1] AS latest_value, "
                    "max(latest_at) AS latest_at, sum(precise_sum) AS precise_sum FROM {0} "
                    "WHERE organization_id = %s AND external_subscription_id = %s AND code = %s "
                    "AND bucket_start >= %s AND bucket_start < %s GROUP BY dimensions"
                ).format(self.rollups_table),
                (organization_id, external_subscription_id, code, start_at, end_at),
            )
            rows = curs.fetchall()
        totals = [
            UsageTotal(
                dimensions_from_text(row["dimensions"]),
                Rollup(
                    count=row["count"],
                    sum=row["sum"],
                    max=row["max"],
                    latest_value=row["latest_value"],
                    latest_at=_utc(row["latest_at"]),
                ),
                row["precise_sum"],
            )
            for row in rows
        ]
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
        # COLLATE "C": transaction ids in code point order, as Python sorts them in the domain.
        with self.datastore.transaction(commit=False) as curs:
            curs.execute(
                SQL(
                    "SELECT * FROM {0} WHERE organization_id = %s "
                    "AND external_subscription_id = %s AND code = %s "
                    "AND timestamp >= %s AND timestamp < %s "
                    "AND (%s::bigint IS NULL OR sequence <= %s::bigint) "
                    'ORDER BY timestamp, transaction_id COLLATE "C"'
                ).format(self.events_table),
                (
                    organization_id,
                    external_subscription_id,
                    code,
                    start_at,
                    end_at,
                    up_to_sequence,
                    up_to_sequence,
                ),
            )
            rows = curs.fetchall()
        return [_stored_usage(row) for row in rows]

    def watermark(self) -> int:
        with self.datastore.transaction(commit=False) as curs:
            curs.execute(
                SQL("SELECT coalesce(max(sequence), 0) AS watermark FROM {0}").format(
                    self.events_table
                )
            )
            row = curs.fetchone()
        assert row is not None
        return int(row["watermark"])

    def rebuild_rollups(self) -> int:
        with self.datastore.transaction(commit=True) as curs:
            curs.execute(self._lock)  # No append may add to rows being rebuilt.
            curs.execute(SQL("DELETE FROM {0}").format(self.rollups_table))
            curs.execute(self._upsert_rollups(self.events_table))
            return curs.rowcount


def _aggregate(source: Composable) -> Composed:
    """The rollup rows of the events in `source`, one per key, sorted by key."""
    return SQL(
        "SELECT organization_id, external_subscription_id, code, dimensions, "
        "date_bin({stride}, timestamp, timestamptz '1970-01-01T00:00:00Z') AS bucket_start, "
        "count(*), coalesce(sum(value), 0), max(value), "
        "(array_agg(value ORDER BY timestamp DESC, value DESC) "
        "FILTER (WHERE value IS NOT NULL))[1], "
        "max(timestamp) FILTER (WHERE value IS NOT NULL), "
        "coalesce(sum(precise_total_amount_cents), 0) "
        "FROM {source} GROUP BY {key} ORDER BY {key}"
    ).format(
        stride=SQL("interval {0}").format(Literal(f"{BUCKET_SECONDS} seconds")),
        source=source,
        key=_ROLLUP_KEY,
    )


def _arrays(batch: Sequence[StoredUsage]) -> list[list[Any]]:
    """The batch as one array per input column."""
    return [
        [usage.event.organization_id for usage in batch],
        [usage.event.external_subscription_id for usage in batch],
        [usage.event.transaction_id for usage in batch],
        [usage.event.code for usage in batch],
        [usage.event.timestamp for usage in batch],
        [usage.event.timestamp_given for usage in batch],
        [json.dumps(dict(usage.event.properties), separators=(",", ":")) for usage in batch],
        [usage.event.precise_total_amount_cents for usage in batch],
        [usage.value for usage in batch],
        [dimensions_text(usage.dimensions) for usage in batch],
        [usage.fingerprint for usage in batch],
        [usage.received_at for usage in batch],
    ]


def _stored_usage(row: DictRow) -> StoredUsage:
    event = UsageEvent(
        organization_id=row["organization_id"],
        external_subscription_id=row["external_subscription_id"],
        transaction_id=row["transaction_id"],
        code=row["code"],
        timestamp=row["timestamp"].astimezone(UTC),
        properties=row["properties"],
        precise_total_amount_cents=row["precise_total_amount_cents"],
        timestamp_given=row["timestamp_given"],
    )
    return StoredUsage(
        event=event,
        value=row["value"],
        dimensions=dimensions_from_text(row["dimensions"]),
        fingerprint=row["fingerprint"],
        received_at=row["received_at"].astimezone(UTC),
        sequence=row["sequence"],
    )


def _row_key(row: DictRow) -> UsageKey:
    return (row["organization_id"], row["external_subscription_id"], row["transaction_id"])


def _resent(sent: StoredUsage, row: DictRow) -> StoredUsage:
    """The stored record of an identical re-send, without reading its payload back.

    Equal fingerprints mean equal code, properties, precise amount and given timestamp
    (canonical_event_payload); a timestamp the client did not give is the stored one. The rest
    (value, dimensions, receipt, sequence) is the row's.
    """
    event = sent.event
    if not event.timestamp_given:
        event = replace(event, timestamp=row["timestamp"].astimezone(UTC))
    return StoredUsage(
        event=event,
        value=row["value"],
        dimensions=dimensions_from_text(row["dimensions"]),
        fingerprint=row["fingerprint"],
        received_at=row["received_at"].astimezone(UTC),
        sequence=row["sequence"],
    )


def _utc(instant: datetime | None) -> datetime | None:
    return None if instant is None else instant.astimezone(UTC)
