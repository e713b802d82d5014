"""Projection views on SQLite: rows and tracking position written in one transaction."""

from collections.abc import Sequence
from datetime import datetime
from typing import Any
from uuid import UUID

from eventsourcing.persistence import Tracking
from eventsourcing.sqlite import SQLiteTrackingRecorder

from application.ports import IndexEntry
from application.projections import IndexChange, IndexView


class SQLiteIndexView(SQLiteTrackingRecorder, IndexView):
    def construct_create_table_statements(self) -> list[str]:
        return [
            *super().construct_create_table_statements(),
            "CREATE TABLE IF NOT EXISTS resource_index ("
            "aggregate_id TEXT PRIMARY KEY, organization_id TEXT NOT NULL, kind TEXT NOT NULL, "
            "key TEXT NOT NULL, parent_key TEXT, status TEXT NOT NULL, created_at TEXT NOT NULL)",
            "CREATE INDEX IF NOT EXISTS resource_index_list ON resource_index "
            "(organization_id, kind, created_at)",
        ]

    def apply(self, changes: Sequence[IndexChange], tracking: Tracking) -> None:
        with self.datastore.transaction(commit=True) as c:
            for change in changes:
                if isinstance(change, IndexEntry):
                    c.execute(
                        "INSERT INTO resource_index VALUES (?, ?, ?, ?, ?, ?, ?) "
                        "ON CONFLICT (aggregate_id) DO UPDATE SET key = excluded.key, "
                        "parent_key = excluded.parent_key, status = excluded.status",
                        (
                            str(change.aggregate_id),
                            str(change.organization_id),
                            change.kind,
                            change.key,
                            change.parent_key,
                            change.status,
                            _sortable(change.created_at),
                        ),
                    )
                else:
                    c.execute(
                        "UPDATE resource_index SET status = ? WHERE aggregate_id = ?",
                        (change.status, str(change.aggregate_id)),
                    )
            self._insert_tracking(c, tracking)

    def aggregate_ids_of_kind(self, kind: str) -> list[UUID]:
        with self.datastore.transaction(commit=False) as c:
            c.execute(
                "SELECT aggregate_id FROM resource_index WHERE kind = ? "
                "ORDER BY created_at, aggregate_id",
                (kind,),
            )
            return [UUID(row[0]) for row in c.fetchall()]

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
        where = "organization_id = ? AND kind = ?"
        params: list[Any] = [str(organization_id), kind]
        if parent_key is not None:
            where += " AND parent_key = ?"
            params.append(parent_key)
        if statuses:
            where += f" AND status IN ({', '.join('?' for _ in statuses)})"
            params.extend(statuses)
        with self.datastore.transaction(commit=False) as c:
            c.execute(f"SELECT COUNT(*) FROM resource_index WHERE {where}", params)
            total = int(c.fetchone()[0])
            c.execute(
                f"SELECT aggregate_id FROM resource_index WHERE {where} "
                "ORDER BY created_at DESC, aggregate_id DESC LIMIT ? OFFSET ?",
                [*params, per_page, (page - 1) * per_page],
            )
            return [UUID(row[0]) for row in c.fetchall()], total

    def parent_keys(self, organization_id: UUID, kinds: Sequence[str]) -> set[str]:
        with self.datastore.transaction(commit=False) as c:
            c.execute(
                "SELECT DISTINCT parent_key FROM resource_index WHERE organization_id = ? "
                f"AND kind IN ({', '.join('?' for _ in kinds)}) AND parent_key IS NOT NULL",
                [str(organization_id), *kinds],
            )
            return {row[0] for row in c.fetchall()}


def _sortable(instant: datetime) -> str:
    return instant.isoformat(timespec="microseconds")
