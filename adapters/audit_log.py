"""The hash-chained audit log (application/audit_log.py) on SQLite, PostgreSQL and memory.

An append first bumps the one-row head table, which takes the write lock (SQLite) or the row
lock (PostgreSQL) before the previous hash is read, so appenders in any number of processes
chain one after another without gaps or forks.
"""

import threading
from collections.abc import Sequence
from typing import Any, Final
from uuid import UUID

from eventsourcing.postgres import PostgresDatastore
from eventsourcing.sqlite import SQLiteDatastore
from psycopg.sql import SQL, Composed, Identifier

from application.audit_log import (
    GENESIS_HASH,
    AuditEntry,
    AuditFilter,
    ChainedEntry,
    chain_hash,
    instant_text,
    parse_instant_text,
)

COLUMNS: Final = (
    "sequence",
    "id",
    "organization_id",
    "api_key_id",
    "method",
    "path",
    "resource_type",
    "resource_key",
    "status_code",
    "client_address",
    "idempotency_key",
    "occurred_at",
    "previous_hash",
    "hash",
)


def _row(chained: ChainedEntry) -> tuple[Any, ...]:
    entry = chained.entry
    return (
        chained.sequence,
        str(entry.id),
        str(entry.organization_id),
        None if entry.api_key_id is None else str(entry.api_key_id),
        entry.method,
        entry.path,
        entry.resource_type,
        entry.resource_key,
        entry.status_code,
        entry.client_address,
        entry.idempotency_key,
        instant_text(entry.occurred_at),
        chained.previous_hash,
        chained.hash,
    )


def _chained(row: Sequence[Any]) -> ChainedEntry:
    values = dict(zip(COLUMNS, row, strict=True))
    return ChainedEntry(
        sequence=int(values["sequence"]),
        entry=AuditEntry(
            id=UUID(str(values["id"])),
            organization_id=UUID(str(values["organization_id"])),
            api_key_id=None if values["api_key_id"] is None else UUID(str(values["api_key_id"])),
            method=values["method"],
            path=values["path"],
            resource_type=values["resource_type"],
            resource_key=values["resource_key"],
            status_code=int(values["status_code"]),
            client_address=values["client_address"],
            idempotency_key=values["idempotency_key"],
            occurred_at=parse_instant_text(values["occurred_at"]),
        ),
        previous_hash=values["previous_hash"],
        hash=values["hash"],
    )


def _chain(first: int, previous_hash: str, entries: Sequence[AuditEntry]) -> list[ChainedEntry]:
    chained = []
    for sequence, entry in enumerate(entries, start=first):
        hash_ = chain_hash(previous_hash, sequence, entry)
        chained.append(ChainedEntry(sequence, entry, previous_hash, hash_))
        previous_hash = hash_
    return chained


def _matches(chained: ChainedEntry, organization_id: UUID, filters: AuditFilter) -> bool:
    entry = chained.entry
    return (
        entry.organization_id == organization_id
        and (filters.occurred_from is None or entry.occurred_at >= filters.occurred_from)
        and (filters.occurred_to is None or entry.occurred_at <= filters.occurred_to)
        and (filters.api_key_id is None or entry.api_key_id == filters.api_key_id)
        and (filters.method is None or entry.method == filters.method)
        and (filters.status_code is None or entry.status_code == filters.status_code)
    )


def _conditions(
    organization_id: UUID, filters: AuditFilter, placeholder: str
) -> tuple[str, list[Any]]:
    """A WHERE clause for the filters (the instants compare as their fixed-width text)."""
    clauses = [f"organization_id = {placeholder}"]
    params: list[Any] = [str(organization_id)]
    if filters.occurred_from is not None:
        clauses.append(f"occurred_at >= {placeholder}")
        params.append(instant_text(filters.occurred_from))
    if filters.occurred_to is not None:
        clauses.append(f"occurred_at <= {placeholder}")
        params.append(instant_text(filters.occurred_to))
    if filters.api_key_id is not None:
        clauses.append(f"api_key_id = {placeholder}")
        params.append(str(filters.api_key_id))
    if filters.method is not None:
        clauses.append(f"method = {placeholder}")
        params.append(filters.method)
    if filters.status_code is not None:
        clauses.append(f"status_code = {placeholder}")
        params.append(filters.status_code)
    return " AND ".join(clauses), params


class MemoryAuditLog:
    def __init__(self) -> None:
        self._entries: list[ChainedEntry] = []
        self._head: tuple[int, str] = (0, GENESIS_HASH)
        self._lock = threading.Lock()

    def append(self, entry: AuditEntry) -> ChainedEntry:
        return self.append_many([entry])[0]

    def append_many(self, entries: Sequence[AuditEntry]) -> list[ChainedEntry]:
        with self._lock:
            chained = _chain(self._head[0] + 1, self._head[1], entries)
            self._entries.extend(chained)
            if chained:
                self._head = (chained[-1].sequence, chained[-1].hash)
            return chained

    def page(
        self, organization_id: UUID, filters: AuditFilter, page: int, per_page: int
    ) -> tuple[list[ChainedEntry], int]:
        with self._lock:
            matching = [c for c in reversed(self._entries) if _matches(c, organization_id, filters)]
        start = (page - 1) * per_page
        return matching[start : start + per_page], len(matching)

    def chain(self, after_sequence: int, limit: int) -> list[ChainedEntry]:
        with self._lock:
            return [c for c in self._entries if c.sequence > after_sequence][:limit]

    def head(self) -> tuple[int, str]:
        with self._lock:
            return self._head


class SQLiteAuditLog:
    def __init__(self, datastore: SQLiteDatastore) -> None:
        self.datastore = datastore
        with self.datastore.transaction(commit=True) as c:
            c.execute(
                "CREATE TABLE IF NOT EXISTS audit_log (sequence INTEGER PRIMARY KEY, "
                "id TEXT NOT NULL UNIQUE, organization_id TEXT NOT NULL, api_key_id TEXT, "
                "method TEXT NOT NULL, path TEXT NOT NULL, resource_type TEXT, "
                "resource_key TEXT, status_code INTEGER NOT NULL, client_address TEXT, "
                "idempotency_key TEXT, occurred_at TEXT NOT NULL, previous_hash TEXT NOT NULL, "
                "hash TEXT NOT NULL)"
            )
            c.execute(
                "CREATE INDEX IF NOT EXISTS audit_log_organization "
                "ON audit_log (organization_id, sequence)"
            )
            c.execute(
                "CREATE TABLE IF NOT EXISTS audit_log_head (id INTEGER PRIMARY KEY "
                "CHECK (id = 1), sequence INTEGER NOT NULL, hash TEXT NOT NULL)"
            )
            c.execute(
                "INSERT INTO audit_log_head VALUES (1, 0, ?) ON CONFLICT DO NOTHING",
                (GENESIS_HASH,),
            )

    def append(self, entry: AuditEntry) -> ChainedEntry:
        return self.append_many([entry])[0]

    def append_many(self, entries: Sequence[AuditEntry]) -> list[ChainedEntry]:
        if not entries:
            return []
        with self.datastore.transaction(commit=True) as c:
            # A write first: it takes the database's write lock before the head is read.
            c.execute(
                "UPDATE audit_log_head SET sequence = sequence + ? WHERE id = 1 "
                "RETURNING sequence, hash",
                (len(entries),),
            )
            last, previous_hash = c.fetchone()
            chained = _chain(int(last) - len(entries) + 1, str(previous_hash), entries)
            c.executemany(
                f"INSERT INTO audit_log ({', '.join(COLUMNS)}) "
                f"VALUES ({', '.join('?' for _ in COLUMNS)})",
                [_row(item) for item in chained],
            )
            c.execute("UPDATE audit_log_head SET hash = ? WHERE id = 1", (chained[-1].hash,))
        return chained

    def page(
        self, organization_id: UUID, filters: AuditFilter, page: int, per_page: int
    ) -> tuple[list[ChainedEntry], int]:
        where, params = _conditions(organization_id, filters, "?")
        with self.datastore.transaction(commit=False) as c:
            c.execute(f"SELECT count(*) FROM audit_log WHERE {where}", params)
            total = int(c.fetchone()[0])
            c.execute(
                f"SELECT {', '.join(COLUMNS)} FROM audit_log WHERE {where} "
                "ORDER BY sequence DESC LIMIT ? OFFSET ?",
                [*params, per_page, (page - 1) * per_page],
            )
            rows = c.fetchall()
        return [_chained(row) for row in rows], total

    def chain(self, after_sequence: int, limit: int) -> list[ChainedEntry]:
        with self.datastore.transaction(commit=False) as c:
            c.execute(
                f"SELECT {', '.join(COLUMNS)} FROM audit_log WHERE sequence > ? "
                "ORDER BY sequence LIMIT ?",
                (after_sequence, limit),
            )
            return [_chained(row) for row in c.fetchall()]

    def head(self) -> tuple[int, str]:
        with self.datastore.transaction(commit=False) as c:
            c.execute("SELECT sequence, hash FROM audit_log_head WHERE id = 1")
            sequence, hash_ = c.fetchone()
        return int(sequence), str(hash_)


class PostgresAuditLog:
    def __init__(self, datastore: PostgresDatastore) -> None:
        self.datastore = datastore
        schema = Identifier(datastore.schema)
        self.table = SQL("{0}.audit_log").format(schema)
        self.head_table = SQL("{0}.audit_log_head").format(schema)
        statements: list[Composed] = [
            SQL(
                "CREATE TABLE IF NOT EXISTS {0} (sequence bigint PRIMARY KEY, "
                "id uuid NOT NULL UNIQUE, organization_id uuid NOT NULL, api_key_id uuid, "
                "method text NOT NULL, path text NOT NULL, resource_type text, "
                "resource_key text, status_code integer NOT NULL, client_address text, "
                "idempotency_key text, occurred_at text NOT NULL, previous_hash text NOT NULL, "
                "hash text NOT NULL)"
            ).format(self.table),
            SQL(
                "CREATE INDEX IF NOT EXISTS audit_log_organization ON {0} "
                "(organization_id, sequence)"
            ).format(self.table),
            SQL(
                "CREATE TABLE IF NOT EXISTS {0} (id integer PRIMARY KEY CHECK (id = 1), "
                "sequence bigint NOT NULL, hash text NOT NULL)"
            ).format(self.head_table),
            SQL("INSERT INTO {0} VALUES (1, 0, %s) ON CONFLICT DO NOTHING").format(self.head_table),
        ]
        with self.datastore.transaction(commit=True) as curs:
            for statement in statements[:-1]:
                curs.execute(statement)
            curs.execute(statements[-1], (GENESIS_HASH,))
            # Rendered once: every request appends (ADR 0029).
            self._advance_head = (
                SQL("UPDATE {0} SET sequence = sequence + %s WHERE id = 1 RETURNING sequence, hash")
                .format(self.head_table)
                .as_string(curs)
            )
            self._insert = (
                SQL("INSERT INTO {0} ({1}) VALUES ({2})")
                .format(
                    self.table,
                    SQL(", ").join(Identifier(c) for c in COLUMNS),
                    SQL(", ").join(SQL("%s") for _ in COLUMNS),
                )
                .as_string(curs)
            )
            self._set_head = (
                SQL("UPDATE {0} SET hash = %s WHERE id = 1").format(self.head_table).as_string(curs)
            )

    def append(self, entry: AuditEntry) -> ChainedEntry:
        return self.append_many([entry])[0]

    def append_many(self, entries: Sequence[AuditEntry]) -> list[ChainedEntry]:
        if not entries:
            return []
        with self.datastore.transaction(commit=True) as curs:
            # The row lock serialises appenders; READ COMMITTED re-reads the head after it.
            curs.execute(self._advance_head, (len(entries),))
            head = curs.fetchone()
            assert head is not None
            first = int(head["sequence"]) - len(entries) + 1
            chained = _chain(first, str(head["hash"]), entries)
            curs.executemany(self._insert, [_row(item) for item in chained])
            curs.execute(self._set_head, (chained[-1].hash,))
        return chained

    def page(
        self, organization_id: UUID, filters: AuditFilter, page: int, per_page: int
    ) -> tuple[list[ChainedEntry], int]:
        where, params = _conditions(organization_id, filters, "%s")
        columns = SQL(", ").join(Identifier(c) for c in COLUMNS)
        with self.datastore.transaction(commit=False) as curs:
            curs.execute(
                SQL("SELECT count(*) AS total FROM {0} WHERE " + where).format(self.table), params
            )
            counted = curs.fetchone()
            assert counted is not None
            curs.execute(
                SQL(
                    "SELECT {0} FROM {1} WHERE " + where + " ORDER BY sequence DESC "
                    "LIMIT %s OFFSET %s"
                ).format(columns, self.table),
                [*params, per_page, (page - 1) * per_page],
            )
            rows = curs.fetchall()
        return [_chained([row[c] for c in COLUMNS]) for row in rows], int(counted["total"])

    def chain(self, after_sequence: int, limit: int) -> list[ChainedEntry]:
        columns = SQL(", ").join(Identifier(c) for c in COLUMNS)
        with self.datastore.transaction(commit=False) as curs:
            curs.execute(
                SQL("SELECT {0} FROM {1} WHERE sequence > %s ORDER BY sequence LIMIT %s").format(
                    columns, self.table
                ),
                (after_sequence, limit),
            )
            rows = curs.fetchall()
        return [_chained([row[c] for c in COLUMNS]) for row in rows]

    def head(self) -> tuple[int, str]:
        with self.datastore.transaction(commit=False) as curs:
            curs.execute(SQL("SELECT sequence, hash FROM {0} WHERE id = 1").format(self.head_table))
            row = curs.fetchone()
        assert row is not None
        return int(row["sequence"]), str(row["hash"])
