"""The usage log on PostgreSQL: one statement per batch stores the new events and their rollups.

Measured shape (performance-and-reliability.md §7, ADR 0029): the batch goes in as one JSON
array of rows (json_to_recordset) and the rollups are upserted, sorted by key, from the rows
inserted; numbers are `numeric`, so every sum is exact. A batch of new keys is one statement in
its own transaction (autocommit): one round trip, and its row locks are never held while Python
waits for the GIL. A batch that meets a stored key fails that statement as a whole (unique
violation); its stored keys are then read and their fingerprints compared, and, unless every key
was stored (a re-send, written by no one), a transaction inserts what is new, skipping known keys
(ON CONFLICT DO NOTHING).

Writers run concurrently (no lock). Each row carries the writing transaction's id
(`position`, pg_current_xact_id()), and the watermark is one less than the oldest transaction
id still running (pg_snapshot_xmin): every row at or below it has committed or rolled back, so
the rows "position <= watermark" never change (ADR 0011). Rows are inserted sorted by key and
rollups upserted sorted by key, so concurrent overlapping batches wait for each other in one
order and never deadlock. A void is a row of its own (`reversal`), with its own position; it
takes the event out of its rollup row by recomputing that row from the live log, under the
row's lock, in the same transaction.
"""

import hashlib
import time
from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, Final
from uuid import UUID

import msgspec
from eventsourcing.persistence import IntegrityError
from eventsourcing.postgres import PostgresDatastore
from psycopg import Cursor
from psycopg.errors import UniqueViolation
from psycopg.rows import DictRow
from psycopg.sql import SQL, Composable, Composed, Identifier, Literal

from application.errors import TransactionIdConflictError
from application.usage_log import (
    Span,
    StoredUsage,
    UsageKey,
    UsageTotal,
    check_bucket_aligned,
    dedupe_batch,
    dimensions_from_text,
    dimensions_text,
    usage_key,
)
from domain.usage import BUCKET_SECONDS, Rollup, UsageEvent, bucket_start

# How long watermark() waits for the transactions running at its call to end, and how often
# it looks.
WATERMARK_WAIT_S: Final = 2.0
WATERMARK_POLL_S: Final = 0.005
_JSON = msgspec.json.Encoder()

# Columns given by the caller (input_values), with their types in the append statement.
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
# The unique key of a row: an event and its reversal share the event's key.
_ROW_KEY = SQL("organization_id, transaction_id, external_subscription_id, reversal")
_STRIDE: Final = SQL("interval {0}").format(Literal(f"{BUCKET_SECONDS} seconds"))
# bucket_start before dimensions: totals() reads one period's buckets as one index range.
_ROLLUP_KEY = SQL("organization_id, external_subscription_id, code, bucket_start, dimensions")


class PostgresUsageLog:
    def __init__(self, datastore: PostgresDatastore) -> None:
        self.datastore = datastore
        self.watermark_wait_s = WATERMARK_WAIT_S
        schema = Identifier(datastore.schema)
        self.events_table = SQL("{0}.usage_events").format(schema)
        self.rollups_table = SQL("{0}.usage_rollups").format(schema)
        # Only the DDL below is serialised: two processes starting at once must not race on it.
        digest = hashlib.sha256(f"tally.usage_log:{datastore.schema}".encode()).digest()
        self.lock_key = int.from_bytes(digest[:8], "big", signed=True)
        with self.datastore.transaction(commit=True) as curs:
            curs.execute(SQL("SELECT pg_advisory_xact_lock({0})").format(Literal(self.lock_key)))
            for statement in self._create_statements():
                curs.execute(statement)
            curs.execute(
                "SELECT pg_get_serial_sequence(%s, 'sequence') AS name",
                (self.events_table.as_string(curs),),
            )
            row = curs.fetchone()
        assert row is not None and row["name"], "usage_events.sequence has no sequence"
        self._sequence_name = str(row["name"])
        # Rendered once: psycopg caches the parsing of a plain query text, not of a Composed.
        with self.datastore.transaction(commit=False) as curs:
            self._append = self._append_statement().as_string(curs)
            self._append_new = self._append_statement(skip_known=False).as_string(curs)
            self._totals = self._totals_statement().as_string(curs)
            self._stored_keys = self._stored_statement().as_string(curs)
            self._totals_at = self._totals_at_statement().as_string(curs)
            self._totals_at_many = self._totals_at_many_statement().as_string(curs)

    def _create_statements(self) -> list[Composed]:
        return [
            SQL(
                "CREATE TABLE IF NOT EXISTS {0} ("
                # Orders the log (paging); assigned in input order within a batch.
                "sequence bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY, "
                # Against watermarks: the id of the transaction that wrote the row.
                "position bigint NOT NULL DEFAULT (pg_current_xact_id()::text::bigint), "
                # True for the row that voids the event of the same key (a copy of it).
                "reversal boolean NOT NULL DEFAULT false, "
                "organization_id uuid NOT NULL, external_subscription_id text NOT NULL, "
                "transaction_id text NOT NULL, code text NOT NULL, "
                "timestamp timestamptz NOT NULL, timestamp_given boolean NOT NULL, "
                "properties jsonb NOT NULL, precise_total_amount_cents numeric, value numeric, "
                "dimensions text NOT NULL, fingerprint text NOT NULL, "
                "received_at timestamptz NOT NULL, "
                # The key (D4) with transaction_id second: the same index then serves find()
                # without a subscription (organization, transaction_id), and no other is needed.
                "CONSTRAINT usage_events_key UNIQUE ({1}))"
            ).format(self.events_table, _ROW_KEY),
            SQL(
                # Led by the subscription: a key lookup then matches one column of this index
                # and all three of the key's, so the planner probes the key even before the
                # table has statistics (led by the organization, it once chose this index and
                # filtered the subscription's events). Period queries use all four columns.
                "CREATE INDEX IF NOT EXISTS usage_events_by_time ON {0} "
                "(external_subscription_id, code, organization_id, timestamp)"
            ).format(self.events_table),
            SQL(
                # The (few) reversals of a period, for the anti-join of events().
                "CREATE INDEX IF NOT EXISTS usage_events_reversals ON {0} "
                "(external_subscription_id, code, organization_id, timestamp) WHERE reversal"
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

    def _append_statement(self, *, skip_known: bool = True) -> Composed:
        columns = SQL(", ").join(Identifier(name) for name, _ in _INPUT_COLUMNS)
        typed = SQL(", ").join(
            SQL("{0} {1}").format(Identifier(name), SQL(sql_type))
            for name, sql_type in _INPUT_COLUMNS
        )
        # The batch comes as one JSON array of row objects (_rows: msgspec encodes it in C,
        # where binary arrays cost a Python call per element); PostgreSQL reads each field
        # with its column type's input function. Sequences are drawn in input order, rows
        # inserted in key order: concurrent batches that share keys then wait for each other
        # in one order (no deadlock).
        return SQL(
            "WITH input AS (SELECT * FROM ROWS FROM (json_to_recordset(%s::json) AS ({typed})) "
            "WITH ORDINALITY AS input ({columns}, ordinal)), "
            "numbered AS (SELECT *, nextval({sequence}::regclass) AS sequence FROM input "
            "ORDER BY ordinal), "
            "inserted AS (INSERT INTO {events} (sequence, {columns}) "
            "SELECT sequence, {columns} FROM numbered ORDER BY {key} "
            "{on_conflict} RETURNING *), "
            "added AS ({upsert}) "
            "SELECT n.ordinal, i.sequence, i.position FROM inserted i JOIN numbered n "
            "USING (sequence)"
        ).format(
            typed=typed,
            columns=columns,
            sequence=Literal(self._sequence_name),
            events=self.events_table,
            key=_KEY,
            on_conflict=SQL("ON CONFLICT ({0}) DO NOTHING").format(_ROW_KEY)
            if skip_known
            else SQL(""),
            upsert=self._upsert_rollups(SQL("inserted")),
        )

    def _stored_statement(self) -> Composed:
        """_stored(): the events of the keys given as a JSON array (_Key objects)."""
        return SQL(
            "SELECT e.sequence, e.position, e.organization_id, e.external_subscription_id, "
            "e.transaction_id, e.timestamp, e.value, e.dimensions, e.fingerprint, "
            "e.received_at, v.received_at AS voided_at FROM {0} e LEFT JOIN {0} v "
            "ON v.reversal AND v.organization_id = e.organization_id "
            "AND v.transaction_id = e.transaction_id "
            "AND v.external_subscription_id = e.external_subscription_id "
            "WHERE NOT e.reversal AND (e.organization_id, e.transaction_id, "
            "e.external_subscription_id) IN (SELECT organization_id, transaction_id, "
            "external_subscription_id FROM json_to_recordset(%s::json) AS k(organization_id uuid, "
            "external_subscription_id text, transaction_id text))"
        ).format(self.events_table)

    def _totals_statement(self) -> Composed:
        """totals(): the rollup rows of the interval, summed per dimensions. The latest value
        is the one of the row holding the latest instant: a row's latest_at lies in its own
        bucket, so that row is found by its key (no sort of the interval's rows)."""
        return SQL(
            "WITH totals AS (SELECT dimensions, sum(count)::bigint AS count, sum(sum) AS sum, "
            "max(max) AS max, max(latest_at) AS latest_at, sum(precise_sum) AS precise_sum "
            "FROM {rollups} WHERE organization_id = %(org)s "
            "AND external_subscription_id = %(sub)s AND code = %(code)s "
            "AND bucket_start >= %(start)s AND bucket_start < %(end)s GROUP BY dimensions) "
            "SELECT t.dimensions, t.count, t.sum, t.max, r.latest_value, t.latest_at, "
            "t.precise_sum FROM totals t LEFT JOIN {rollups} r "
            "ON r.organization_id = %(org)s AND r.external_subscription_id = %(sub)s "
            "AND r.code = %(code)s AND r.bucket_start = date_bin({stride}, t.latest_at, "
            "timestamptz '1970-01-01T00:00:00Z') AND r.dimensions = t.dimensions "
            "AND r.latest_at = t.latest_at"
        ).format(rollups=self.rollups_table, stride=_STRIDE)

    def _totals_at_statement(self) -> Composed:
        """totals_at(): the live events of events(), grouped by code and dimensions."""
        return SQL(
            "SELECT e.code, e.dimensions, count(*)::bigint AS count, "
            "coalesce(sum(e.value), 0) AS sum, max(e.value) AS max, "
            "(array_agg(e.value ORDER BY e.timestamp DESC, e.value DESC) "
            "FILTER (WHERE e.value IS NOT NULL))[1] AS latest_value, "
            "max(e.timestamp) FILTER (WHERE e.value IS NOT NULL) AS latest_at, "
            "coalesce(sum(e.precise_total_amount_cents), 0) AS precise_sum "
            "FROM {0} e WHERE NOT e.reversal AND e.organization_id = %(org)s "
            "AND e.external_subscription_id = %(sub)s AND e.code = ANY(%(codes)s) "
            "AND e.timestamp >= %(start)s AND e.timestamp < %(end)s "
            "AND e.position <= %(bound)s "
            "AND NOT EXISTS (SELECT 1 FROM {0} v WHERE v.reversal "
            "AND v.organization_id = %(org)s AND v.external_subscription_id = %(sub)s "
            "AND v.code = e.code AND v.timestamp >= %(start)s AND v.timestamp < %(end)s "
            "AND v.transaction_id = e.transaction_id AND v.timestamp = e.timestamp "
            "AND v.position <= %(bound)s) "
            "GROUP BY e.code, e.dimensions"
        ).format(self.events_table)

    def _totals_at_many_statement(self) -> Composed:
        """totals_at_many(): totals_at() of many spans, joined to the events in one query."""
        return SQL(
            "SELECT s.sub, s.start_at, s.end_at, e.code, e.dimensions, count(*)::bigint AS count, "
            "coalesce(sum(e.value), 0) AS sum, max(e.value) AS max, "
            "(array_agg(e.value ORDER BY e.timestamp DESC, e.value DESC) "
            "FILTER (WHERE e.value IS NOT NULL))[1] AS latest_value, "
            "max(e.timestamp) FILTER (WHERE e.value IS NOT NULL) AS latest_at, "
            "coalesce(sum(e.precise_total_amount_cents), 0) AS precise_sum "
            "FROM unnest(%(subs)s::text[], %(starts)s::timestamptz[], %(ends)s::timestamptz[]) "
            "AS s(sub, start_at, end_at) "
            "JOIN {0} e ON e.external_subscription_id = s.sub AND e.code = ANY(%(codes)s) "
            "AND e.organization_id = %(org)s "
            "AND e.timestamp >= s.start_at AND e.timestamp < s.end_at "
            "WHERE NOT e.reversal AND e.position <= %(bound)s "
            "AND NOT EXISTS (SELECT 1 FROM {0} v WHERE v.reversal "
            "AND v.organization_id = %(org)s AND v.external_subscription_id = s.sub "
            "AND v.code = e.code AND v.timestamp >= s.start_at AND v.timestamp < s.end_at "
            "AND v.transaction_id = e.transaction_id AND v.timestamp = e.timestamp "
            "AND v.position <= %(bound)s) "
            "GROUP BY s.sub, s.start_at, s.end_at, e.code, e.dimensions"
        ).format(self.events_table)

    def _upsert_rollups(self, source: Composable) -> Composed:
        """Add the rollups of the events in `source` to the rollup rows, as combine() does.

        Rows are written sorted by key: one lock order, so concurrent writers never deadlock.
        The latest value is the one with the latest timestamp, and at equal timestamps the
        greater value, like domain.usage.combine.
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

    def _live_events(self, where: Composable) -> Composed:
        """Events (not reversals) matching `where` (on alias e) that no reversal voids."""
        return SQL(
            "(SELECT e.* FROM {events} e WHERE NOT e.reversal AND {where} AND NOT EXISTS "
            "(SELECT 1 FROM {events} v WHERE v.reversal "
            "AND v.organization_id = e.organization_id "
            "AND v.transaction_id = e.transaction_id "
            "AND v.external_subscription_id = e.external_subscription_id))"
        ).format(events=self.events_table, where=where)

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
        inserted, rows = self._insert_new(new), {}
        if inserted is None:  # Some key is stored already, or being stored.
            with self.datastore.cursor() as curs:
                rows = self._stored(curs, [usage_key(usage) for usage in new])
            dedupe_batch(batch, {key: row["fingerprint"] for key, row in rows.items()})
            if len(rows) == len(new):
                inserted = {}  # A re-send: every event is stored, nothing to write.
            else:
                with self.datastore.transaction(commit=True) as curs:
                    inserted, rows = self._insert(curs, batch, new)
        results = {}
        for offset, (index, usage) in enumerate(zip(firsts, new, strict=True)):
            placed = inserted.get(offset)
            if placed is None:
                results[index] = _resent(usage, rows[usage_key(usage)])
            else:
                results[index] = usage.placed(*placed)
        return [results[duplicates.get(index, index)] for index in range(len(batch))]

    def _insert_new(self, new: Sequence[StoredUsage]) -> dict[int, tuple[int, int]] | None:
        """The common case, in one round trip: a batch of keys never seen, stored by a single
        statement outside any explicit transaction (its own, committed as it ends), so row locks
        are held for the statement and its commit only, never while Python holds the GIL. A key
        stored already, or being stored by a concurrent writer, fails the whole statement
        (unique violation): None, and the caller takes the general path."""
        try:
            with self.datastore.cursor() as curs:
                return self._execute_append(curs, self._append_new, new)
        except IntegrityError as error:  # The datastore wraps psycopg's errors.
            if isinstance(error.__cause__, UniqueViolation):
                return None
            raise

    def _execute_append(
        self, curs: Cursor[DictRow], statement: str, new: Sequence[StoredUsage]
    ) -> dict[int, tuple[int, int]]:
        """Run an append statement; the (sequence, position) of each input inserted, by its
        offset in `new`."""
        curs.execute(statement, _rows(new))
        rows: list[Any] = curs.fetchall()
        return {row["ordinal"] - 1: (row["sequence"], row["position"]) for row in rows}

    def _insert(
        self, curs: Cursor[DictRow], batch: Sequence[StoredUsage], new: Sequence[StoredUsage]
    ) -> tuple[dict[int, tuple[int, int]], dict[UsageKey, DictRow]]:
        """Write the batch's distinct inputs (`new`) in the transaction of `curs`.

        Returns the (sequence, position) of each input inserted, by its offset in `new`, and the
        stored rows of the keys stored before. Raises TransactionIdConflictError (the caller's
        block then rolls the whole batch back) for an input that reuses a stored key with
        another payload.
        """
        inserted = self._execute_append(curs, self._append, new)
        rows = {}
        if len(inserted) < len(new):
            # ON CONFLICT skipped these keys: it waits for a conflicting writer to end, so each
            # of them is committed, and this new statement (a new snapshot) sees it.
            rows = self._stored(
                curs, [usage_key(usage) for at, usage in enumerate(new) if at not in inserted]
            )
            dedupe_batch(batch, {key: row["fingerprint"] for key, row in rows.items()})
        return inserted, rows

    def _stored(self, curs: Cursor[DictRow], keys: Sequence[UsageKey]) -> dict[UsageKey, DictRow]:
        """The stored events of these keys, without their payload (see _resent).

        Planned at each call (never a cached plan): a plan cached while the table was small
        would scan it whole, while a fresh plan sees its size and probes the key index.
        """
        keys_json = _JSON.encode([_Key(*key) for key in keys]).decode()
        curs.execute(self._stored_keys, (keys_json,), prepare=False)
        return {_row_key(row): row for row in curs.fetchall()}

    def void(
        self,
        organization_id: UUID,
        transaction_id: str,
        external_subscription_id: str,
        voided_at: datetime,
    ) -> StoredUsage | None:
        copied = SQL(", ").join(
            Identifier(name) for name, _ in _INPUT_COLUMNS if name != "received_at"
        )
        with self.datastore.transaction(commit=True) as curs:
            # The reversal: a copy of the event, with its own position and receipt time. A
            # concurrent void of the same event makes this one wait, then do nothing.
            curs.execute(
                SQL(
                    "INSERT INTO {events} ({copied}, received_at, reversal) "
                    "SELECT {copied}, %s, true FROM {events} WHERE organization_id = %s "
                    "AND transaction_id = %s AND external_subscription_id = %s "
                    "AND NOT reversal ON CONFLICT ({row_key}) DO NOTHING "
                    "RETURNING code, timestamp, dimensions"
                ).format(events=self.events_table, copied=copied, row_key=_ROW_KEY),
                (voided_at, organization_id, transaction_id, external_subscription_id),
            )
            reversal = curs.fetchone()
            if reversal is not None:
                self._recompute_rollup(
                    curs,
                    (
                        organization_id,
                        external_subscription_id,
                        reversal["code"],
                        bucket_start(reversal["timestamp"]),
                        reversal["dimensions"],
                    ),
                )
            return self._find(curs, organization_id, transaction_id, external_subscription_id)

    def _recompute_rollup(self, curs: Cursor[DictRow], key: tuple[Any, ...]) -> None:
        """Set one rollup row to the aggregate of the live events in it (or delete it).

        The row is locked first; the recomputation is a later statement, so its snapshot sees
        every append that updated the row before the lock was granted, and an append still
        waiting for the lock adds its events to the recomputed row afterwards (its upsert adds
        to the row's latest version). Exact for count, sum, max and latest alike.
        """
        organization_id, subscription, code, bucket, dimensions = key
        match = SQL(
            "organization_id = %s AND external_subscription_id = %s AND code = %s "
            "AND bucket_start = %s AND dimensions = %s"
        )
        curs.execute(
            SQL("SELECT 1 FROM {0} WHERE {1} FOR UPDATE").format(self.rollups_table, match), key
        )
        live = self._live_events(
            SQL(
                "e.organization_id = %s AND e.external_subscription_id = %s AND e.code = %s "
                "AND e.timestamp >= %s AND e.timestamp < %s AND e.dimensions = %s"
            )
        )
        stride = timedelta(seconds=BUCKET_SECONDS)
        curs.execute(
            SQL(
                "WITH aggregate AS ({aggregate}), "
                "updated AS (UPDATE {rollups} r SET count = a.count, sum = a.sum, max = a.max, "
                "latest_value = a.latest_value, latest_at = a.latest_at, "
                "precise_sum = a.precise_sum FROM aggregate a WHERE ({key_r}) = ({key_a}) "
                "RETURNING 1) "
                "DELETE FROM {rollups} WHERE {match} AND NOT EXISTS (SELECT 1 FROM aggregate)"
            ).format(
                aggregate=_aggregate(SQL("{0} AS live").format(live)),
                rollups=self.rollups_table,
                key_r=SQL(", ").join(SQL("r.") + k for k in _rollup_key_columns()),
                key_a=SQL(", ").join(SQL("a.") + k for k in _rollup_key_columns()),
                match=match,
            ),
            (
                organization_id,
                subscription,
                code,
                bucket,
                bucket + stride,
                dimensions,
                *key,
            ),
        )

    def find(
        self, organization_id: UUID, transaction_id: str, external_subscription_id: str | None
    ) -> StoredUsage | None:
        with self.datastore.transaction(commit=False) as curs:
            return self._find(curs, organization_id, transaction_id, external_subscription_id)

    def _find(
        self,
        curs: Cursor[DictRow],
        organization_id: UUID,
        transaction_id: str,
        external_subscription_id: str | None,
    ) -> StoredUsage | None:
        where: Composable = SQL("e.organization_id = %s AND e.transaction_id = %s")
        params: list[Any] = [organization_id, transaction_id]
        if external_subscription_id is not None:
            where = SQL("{0} AND e.external_subscription_id = %s").format(where)
            params.append(external_subscription_id)
        curs.execute(
            SQL("SELECT {0} {1} ORDER BY e.sequence LIMIT 1").format(self._with_voids(), where),
            params,
        )
        row = curs.fetchone()
        return None if row is None else _stored_usage(row)

    def _with_voids(self) -> Composed:
        """Events (alias e) with the receipt time of their reversal, if any, as voided_at."""
        return SQL(
            "e.*, v.received_at AS voided_at FROM {0} e LEFT JOIN {0} v ON v.reversal "
            "AND v.organization_id = e.organization_id AND v.transaction_id = e.transaction_id "
            "AND v.external_subscription_id = e.external_subscription_id "
            "WHERE NOT e.reversal AND"
        ).format(self.events_table)

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
        conditions: list[Composable] = [SQL("e.organization_id = %s")]
        params: list[Any] = [organization_id]
        for condition, value in (
            ("e.external_subscription_id = %s", external_subscription_id),
            ("e.code = %s", code),
            ("e.timestamp >= %s", timestamp_from),
            ("e.timestamp <= %s", timestamp_to),
        ):
            if value is not None:
                conditions.append(SQL(condition))
                params.append(value)
        where = SQL(" AND ").join(conditions)
        with self.datastore.transaction(commit=False) as curs:
            curs.execute(
                SQL("SELECT count(*) AS total FROM {0} e WHERE NOT e.reversal AND {1}").format(
                    self.events_table, where
                ),
                params,
            )
            row = curs.fetchone()
            assert row is not None
            curs.execute(
                SQL(
                    "SELECT {0} {1} ORDER BY e.timestamp DESC, e.sequence DESC LIMIT %s OFFSET %s"
                ).format(self._with_voids(), where),
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
        with self.datastore.cursor() as curs:  # One statement: its own snapshot.
            curs.execute(
                self._totals,
                {
                    "org": organization_id,
                    "sub": external_subscription_id,
                    "code": code,
                    "start": start_at,
                    "end": end_at,
                },
            )
            rows = curs.fetchall()
        totals = [_usage_total(row) for row in rows]
        return sorted(totals, key=lambda total: dimensions_text(total.dimensions))

    def events(
        self,
        organization_id: UUID,
        external_subscription_id: str,
        code: str,
        start_at: datetime,
        end_at: datetime,
        up_to_position: int | None = None,
    ) -> list[StoredUsage]:
        # The reversals of the period come from their own (partial) index; an event is left out
        # if its reversal is at or below the bound. COLLATE "C": transaction ids in code point
        # order, as Python sorts them in the domain.
        with self.datastore.cursor() as curs:  # One statement: its own snapshot.
            curs.execute(
                SQL(
                    "SELECT e.* FROM {0} e WHERE NOT e.reversal AND e.organization_id = %(org)s "
                    "AND e.external_subscription_id = %(sub)s AND e.code = %(code)s "
                    "AND e.timestamp >= %(start)s AND e.timestamp < %(end)s "
                    "AND (%(bound)s::bigint IS NULL OR e.position <= %(bound)s::bigint) "
                    "AND NOT EXISTS (SELECT 1 FROM {0} v WHERE v.reversal "
                    "AND v.organization_id = %(org)s AND v.external_subscription_id = %(sub)s "
                    "AND v.code = %(code)s AND v.timestamp >= %(start)s "
                    "AND v.timestamp < %(end)s AND v.transaction_id = e.transaction_id "
                    "AND v.timestamp = e.timestamp "
                    "AND (%(bound)s::bigint IS NULL OR v.position <= %(bound)s::bigint)) "
                    'ORDER BY e.timestamp, e.transaction_id COLLATE "C"'
                ).format(self.events_table),
                {
                    "org": organization_id,
                    "sub": external_subscription_id,
                    "code": code,
                    "start": start_at,
                    "end": end_at,
                    "bound": up_to_position,
                },
            )
            rows = curs.fetchall()
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
        # events()'s rows, aggregated where they are (one round trip, no row leaves the
        # server): the same expressions as the rollups (_aggregate), so the same totals.
        with self.datastore.cursor() as curs:  # One statement: its own snapshot.
            curs.execute(
                self._totals_at,
                {
                    "org": organization_id,
                    "sub": external_subscription_id,
                    "codes": list(dict.fromkeys(codes)),
                    "start": start_at,
                    "end": end_at,
                    "bound": up_to_position,
                },
            )
            rows = curs.fetchall()
        totals: dict[str, list[UsageTotal]] = {}
        for row in rows:
            totals.setdefault(row["code"], []).append(_usage_total(row))
        return {
            code: sorted(found, key=lambda total: dimensions_text(total.dimensions))
            for code, found in totals.items()
        }

    def totals_at_many(
        self,
        organization_id: UUID,
        spans: Sequence[Span],
        codes: Sequence[str],
        up_to_position: int,
    ) -> dict[Span, dict[str, list[UsageTotal]]]:
        unique = list(dict.fromkeys(spans))
        with self.datastore.cursor() as curs:  # One statement: its own snapshot.
            curs.execute(
                self._totals_at_many,
                {
                    "org": organization_id,
                    "subs": [span[0] for span in unique],
                    "starts": [span[1] for span in unique],
                    "ends": [span[2] for span in unique],
                    "codes": list(dict.fromkeys(codes)),
                    "bound": up_to_position,
                },
            )
            rows = curs.fetchall()
        # Sorted as totals_at() sorts: by the dimensions' text, which the rows hold.
        rows.sort(key=lambda row: row["dimensions"])
        found: dict[Span, dict[str, list[UsageTotal]]] = {span: {} for span in unique}
        for row in rows:
            # Aware datetimes: equal (and hashed) as instants, whatever their zone.
            span = (row["sub"], row["start_at"], row["end_at"])
            found[span].setdefault(row["code"], []).append(_usage_total(row))
        return found

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
        period = SQL(
            "{0}.organization_id = %(org)s AND {0}.external_subscription_id = %(sub)s "
            "AND {0}.code = %(code)s AND {0}.timestamp >= %(start)s AND {0}.timestamp < %(end)s "
            "AND {0}.position > %(after)s AND {0}.position <= %(bound)s"
        )
        with self.datastore.transaction(commit=False) as curs:
            curs.execute(
                SQL(
                    "SELECT e.* FROM {events} e WHERE NOT e.reversal AND e.sequence IN ("
                    "SELECT e.sequence FROM {events} e WHERE NOT e.reversal AND {appended} "
                    "UNION SELECT e.sequence FROM {events} v JOIN {events} e "
                    "ON NOT e.reversal AND e.organization_id = v.organization_id "
                    "AND e.transaction_id = v.transaction_id "
                    "AND e.external_subscription_id = v.external_subscription_id "
                    "WHERE v.reversal AND {voided}) "
                    'ORDER BY e.timestamp, e.transaction_id COLLATE "C"'
                ).format(
                    events=self.events_table,
                    appended=period.format(Identifier("e")),
                    voided=period.format(Identifier("v")),
                ),
                {
                    "org": organization_id,
                    "sub": external_subscription_id,
                    "code": code,
                    "start": start_at,
                    "end": end_at,
                    "after": after_position,
                    "bound": up_to_position,
                },
            )
            rows = curs.fetchall()
        return [_stored_usage(row) for row in rows]

    def watermark(self) -> int:
        """One less than the oldest transaction id still running: every row at or below it has
        committed or rolled back. Read by a statement of its own, in a transaction that writes
        nothing (so holds no id).

        The oldest running transaction may be anyone's, even another database's: while it runs
        the watermark lags behind rows already committed (they are billed later, as late usage).
        So it first waits, up to watermark_wait_s, for every transaction running at the call to
        end: a billing run then covers every event acknowledged before it began.
        """
        deadline = time.monotonic() + self.watermark_wait_s
        target: int | None = None
        while True:
            with self.datastore.cursor() as curs:
                curs.execute(
                    "SELECT pg_snapshot_xmin(s)::text::bigint AS xmin, "
                    "pg_snapshot_xmax(s)::text::bigint AS xmax FROM pg_current_snapshot() s"
                )
                row = curs.fetchone()
            assert row is not None
            xmin = int(row["xmin"])
            target = int(row["xmax"]) if target is None else target
            if xmin >= target or time.monotonic() >= deadline:
                return xmin - 1
            time.sleep(WATERMARK_POLL_S)

    def rebuild_rollups(self) -> int:
        with self.datastore.transaction(commit=True) as curs:
            # SHARE mode waits for the appends and voids under way and holds off new ones
            # (both take ROW EXCLUSIVE), so no write adds to rows being rebuilt.
            curs.execute(SQL("LOCK TABLE {0} IN SHARE MODE").format(self.events_table))
            curs.execute(SQL("DELETE FROM {0}").format(self.rollups_table))
            curs.execute(
                self._upsert_rollups(SQL("{0} AS live").format(self._live_events(SQL("true"))))
            )
            return curs.rowcount


def _rollup_key_columns() -> list[Identifier]:
    return [
        Identifier(name)
        for name in (
            "organization_id",
            "external_subscription_id",
            "code",
            "bucket_start",
            "dimensions",
        )
    ]


def _aggregate(source: Composable) -> Composed:
    """The rollup rows of the events in `source`, one per key, sorted by key."""
    return SQL(
        "SELECT organization_id, external_subscription_id, code, dimensions, "
        "date_bin({stride}, timestamp, timestamptz '1970-01-01T00:00:00Z') AS bucket_start, "
        "count(*) AS count, coalesce(sum(value), 0) AS sum, max(value) AS max, "
        "(array_agg(value ORDER BY timestamp DESC, value DESC) "
        "FILTER (WHERE value IS NOT NULL))[1] AS latest_value, "
        "max(timestamp) FILTER (WHERE value IS NOT NULL) AS latest_at, "
        "coalesce(sum(precise_total_amount_cents), 0) AS precise_sum "
        "FROM {source} GROUP BY {key} ORDER BY {key}"
    ).format(
        stride=_STRIDE,
        source=source,
        key=_ROLLUP_KEY,
    )


class _Key(msgspec.Struct):
    """A UsageKey as _stored() sends it."""

    organization_id: UUID
    external_subscription_id: str
    transaction_id: str


class _Row(msgspec.Struct):
    """One input row of the append statement; field names are its columns (_INPUT_COLUMNS)."""

    organization_id: UUID
    external_subscription_id: str
    transaction_id: str
    code: str
    timestamp: datetime
    timestamp_given: bool
    properties: dict[str, str]
    precise_total_amount_cents: Decimal | None
    value: Decimal | None
    dimensions: str
    fingerprint: str
    received_at: datetime


def input_values(usage: StoredUsage) -> tuple[Any, ...]:
    """An event's values in the order of the append statement's columns (_INPUT_COLUMNS): what
    the log stores of it (the benches' raw baselines copy the same)."""
    event = usage.event
    return (
        event.organization_id,
        event.external_subscription_id,
        event.transaction_id,
        event.code,
        event.timestamp,
        event.timestamp_given,
        dict(event.properties),  # msgspec encodes dicts, not mapping proxies.
        event.precise_total_amount_cents,
        usage.value,
        dimensions_text(usage.dimensions),
        usage.fingerprint,
        usage.received_at,
    )


def _rows(batch: Sequence[StoredUsage]) -> tuple[str]:
    """The append statement's parameter: the batch as a JSON array of rows (decimals as exact
    strings, instants in RFC 3339 to the microsecond)."""
    return (_JSON.encode([_Row(*input_values(usage)) for usage in batch]).decode(),)


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
        position=row["position"],
        voided_at=_utc(row.get("voided_at")),
    )


def _usage_total(row: DictRow) -> UsageTotal:
    return UsageTotal(
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
        position=row["position"],
        voided_at=_utc(row["voided_at"]),
    )


def _utc(instant: datetime | None) -> datetime | None:
    return None if instant is None else instant.astimezone(UTC)
