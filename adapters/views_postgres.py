"""Projection views on PostgreSQL: rows and tracking position written in one transaction."""

from collections.abc import Sequence
from itertools import groupby
from typing import Any
from uuid import UUID

from eventsourcing.persistence import Tracking
from eventsourcing.postgres import PostgresDatastore, PostgresTrackingRecorder
from psycopg.sql import SQL, Composable, Identifier

from application.ports import IndexEntry
from application.projections import IndexChange, IndexView


class PostgresIndexView(PostgresTrackingRecorder, IndexView):
    def __init__(self, datastore: PostgresDatastore, **kwargs: Any) -> None:
        super().__init__(datastore, **kwargs)
        self.table = SQL("{0}.resource_index").format(Identifier(self.datastore.schema))
        self.sql_create_statements.extend(
            [
                SQL(
                    "CREATE TABLE IF NOT EXISTS {0} (aggregate_id uuid PRIMARY KEY, "
                    "organization_id uuid NOT NULL, kind text NOT NULL, key text NOT NULL, "
                    "parent_key text, status text NOT NULL, created_at timestamptz NOT NULL)"
                ).format(self.table),
                SQL(
                    "CREATE INDEX IF NOT EXISTS resource_index_list ON {0} "
                    "(organization_id, kind, created_at)"
                ).format(self.table),
            ]
        )
        self._upsert = SQL(
            "INSERT INTO {0} VALUES (%s, %s, %s, %s, %s, %s, %s) "
            "ON CONFLICT (aggregate_id) DO UPDATE SET key = excluded.key, "
            "parent_key = excluded.parent_key, status = excluded.status"
        ).format(self.table)
        self._set_status = SQL("UPDATE {0} SET status = %s WHERE aggregate_id = %s").format(
            self.table
        )

    def apply(self, changes: Sequence[IndexChange], tracking: Tracking) -> None:
        with self.datastore.transaction(commit=True) as curs:
            # In order; each run of one kind of change is one pipelined executemany.
            for is_entry, run in groupby(changes, lambda change: isinstance(change, IndexEntry)):
                if is_entry:
                    rows = [_entry_row(e) for e in run if isinstance(e, IndexEntry)]
                    curs.executemany(self._upsert, rows)
                else:
                    statuses = [(c.status, c.aggregate_id) for c in run]
                    curs.executemany(self._set_status, statuses)
            self._insert_tracking(curs, tracking)

    def aggregate_ids_of_kind(self, kind: str) -> list[UUID]:
        with self.datastore.transaction(commit=False) as curs:
            curs.execute(
                SQL(
                    "SELECT aggregate_id FROM {0} WHERE kind = %s ORDER BY created_at, aggregate_id"
                ).format(self.table),
                (kind,),
            )
            return [row["aggregate_id"] for row in curs.fetchall()]

    def page(
        self,
        organization_id: UUID,
        kind: str,
        page: int,
        per_page: int,
        *,
        parent_key: str | None = None,
        statuses: Sequence[str] = (),
    ) -> tuple[list[UUID], int]:
        where: Composable = SQL("organization_id = %s AND kind = %s")
        params: list[Any] = [organization_id, kind]
        if parent_key is not None:
            where = SQL("{0} AND parent_key = %s").format(where)
            params.append(parent_key)
        if statuses:
            where = SQL("{0} AND status = ANY(%s)").format(where)
            params.append(list(statuses))
        with self.datastore.transaction(commit=False) as curs:
            curs.execute(
                SQL("SELECT COUNT(*) AS n FROM {0} WHERE {1}").format(self.table, where), params
            )
            row = curs.fetchone()
            assert row is not None
            total = int(row["n"])
            curs.execute(
                SQL(
                    "SELECT aggregate_id FROM {0} WHERE {1} "
                    "ORDER BY created_at DESC, aggregate_id DESC LIMIT %s OFFSET %s"
                ).format(self.table, where),
                [*params, per_page, (page - 1) * per_page],
            )
            return [row["aggregate_id"] for row in curs.fetchall()], total

    def parent_keys(self, organization_id: UUID, kinds: Sequence[str]) -> set[str]:
        with self.datastore.transaction(commit=False) as curs:
            curs.execute(
                SQL(
                    "SELECT DISTINCT parent_key FROM {0} WHERE organization_id = %s "
                    "AND kind = ANY(%s) AND parent_key IS NOT NULL"
                ).format(self.table),
                (organization_id, list(kinds)),
            )
            return {row["parent_key"] for row in curs.fetchall()}


def _entry_row(entry: IndexEntry) -> tuple[Any, ...]:
    return (
        entry.aggregate_id,
        entry.organization_id,
        entry.kind,
        entry.key,
        entry.parent_key,
        entry.status,
        entry.created_at,
    )
