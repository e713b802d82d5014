"""The per-key rate limit's shared token buckets, on PostgreSQL, SQLite and memory (ADR 0023).

One row per API key holds its bucket: the tokens left as of an instant. A lease refills the
bucket for the time elapsed (rate_per_s, up to burst) and takes up to `want` tokens from it, in
one statement on PostgreSQL (an upsert, one round trip) and one write transaction on SQLite,
so every process and every node on the store draws from the same bucket. The API spends leased
tokens locally (api/security.py), so a lease is needed about once per `want` requests.

The buckets are not the record of anything: PostgreSQL keeps them in an UNLOGGED table (no WAL,
emptied by a crash, not replicated), SQLite in a file of its own written without fsync; losing
them only ever gives keys a full bucket again.
"""

import sqlite3
import threading
import time
from collections.abc import Callable
from typing import Any
from uuid import UUID

from eventsourcing.persistence import InfrastructureFactory
from eventsourcing.postgres import PostgresDatastore, PostgresFactory
from eventsourcing.sqlite import SQLiteFactory
from psycopg.sql import SQL, Identifier


def take(
    tokens: float, elapsed_s: float, want: int, rate_per_s: float, burst: int
) -> tuple[int, float]:
    """The bucket's arithmetic: (tokens granted, tokens left) after refilling for elapsed_s."""
    refilled = min(float(burst), tokens + max(0.0, elapsed_s) * rate_per_s)
    granted = min(want, int(refilled))
    return granted, refilled - granted


class MemoryRateLeases:
    """One process's buckets (the in-memory store serves one process)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._buckets: dict[UUID, tuple[float, float]] = {}  # Key id → (tokens, as of).
        self._lock = threading.Lock()

    def lease(self, key_id: UUID, want: int, rate_per_s: float, burst: int) -> tuple[int, float]:
        with self._lock:
            now = self.clock()
            tokens, as_of = self._buckets.get(key_id, (float(burst), now))
            granted, left = take(tokens, now - as_of, want, rate_per_s, burst)
            self._buckets[key_id] = (left, now)
            return granted, left


class SQLiteRateLeases:
    """Buckets shared by the processes on one SQLite store, by the wall clock (one machine).

    They live in a file of their own beside the database (`<database>-ratelimit`), written
    without fsync (synchronous=OFF): a lease never waits for the database's one writer (ingest
    holds it most), and a crash can at most give a key a fuller bucket.
    """

    def __init__(self, path: str, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self._lock = threading.Lock()  # One connection, shared by the process's threads.
        self._connection = sqlite3.connect(
            path, timeout=10, isolation_level=None, check_same_thread=False
        )
        self._connection.execute("PRAGMA journal_mode = WAL")
        self._connection.execute("PRAGMA synchronous = OFF")
        self._connection.execute(
            "CREATE TABLE IF NOT EXISTS rate_limit_buckets (key_id TEXT PRIMARY KEY, "
            "tokens REAL NOT NULL, as_of REAL NOT NULL)"
        )

    def lease(self, key_id: UUID, want: int, rate_per_s: float, burst: int) -> tuple[int, float]:
        with self._lock:
            c = self._connection
            # IMMEDIATE: the read and the write cannot interleave with another process's lease.
            c.execute("BEGIN IMMEDIATE")
            try:
                now = self.clock()
                row = c.execute(
                    "SELECT tokens, as_of FROM rate_limit_buckets WHERE key_id = ?",
                    (str(key_id),),
                ).fetchone()
                tokens, as_of = (float(burst), now) if row is None else (row[0], row[1])
                granted, left = take(tokens, now - as_of, want, rate_per_s, burst)
                c.execute(
                    "INSERT INTO rate_limit_buckets VALUES (?, ?, ?) ON CONFLICT (key_id) "
                    "DO UPDATE SET tokens = excluded.tokens, as_of = excluded.as_of",
                    (str(key_id), left, now),
                )
            except BaseException:
                c.execute("ROLLBACK")
                raise
            c.execute("COMMIT")
        return granted, left


class PostgresRateLeases:
    """Buckets shared by every node on the database, by the database's clock: one upsert."""

    def __init__(self, datastore: PostgresDatastore) -> None:
        self.datastore = datastore
        table = SQL("{0}.rate_limit_buckets").format(Identifier(datastore.schema))
        with self.datastore.transaction(commit=True) as curs:
            curs.execute(
                SQL(
                    "CREATE UNLOGGED TABLE IF NOT EXISTS {0} (key_id uuid PRIMARY KEY, "
                    "tokens double precision NOT NULL, as_of timestamptz NOT NULL, "
                    "granted integer NOT NULL)"
                ).format(table)
            )
        # `refilled` is the bucket refilled up to now (the statement's instant); a new key
        # starts full. granted = min(want, floor(refilled)); tokens = refilled - granted.
        refilled = SQL(
            "LEAST(%(burst)s, b.tokens + GREATEST(0, EXTRACT(EPOCH FROM now() - b.as_of)) "
            "* %(rate)s)"
        )
        granted = SQL("LEAST(%(want)s, FLOOR({0}))::integer").format(refilled)
        self.statement = SQL(
            "INSERT INTO {0} AS b VALUES (%(key)s, %(burst)s::double precision - "
            "LEAST(%(want)s, %(burst)s), now(), LEAST(%(want)s, %(burst)s)) "
            "ON CONFLICT (key_id) DO UPDATE SET granted = {2}, tokens = {1} - {2}, as_of = now() "
            "RETURNING granted, tokens"
        ).format(table, refilled, granted)

    def lease(self, key_id: UUID, want: int, rate_per_s: float, burst: int) -> tuple[int, float]:
        params = {"key": key_id, "want": want, "rate": rate_per_s, "burst": burst}
        # Autocommit (the library's connections): the statement is its own transaction.
        with self.datastore.get_connection() as connection:
            row = connection.execute(self.statement, params).fetchone()
        assert row is not None
        return int(row["granted"]), float(row["tokens"])


def rate_leases(
    factory: InfrastructureFactory[Any],
) -> MemoryRateLeases | SQLiteRateLeases | PostgresRateLeases:
    """The buckets on the ledger's store."""
    if isinstance(factory, SQLiteFactory):
        pool = factory.datastore.pool
        if not pool.is_sqlite_memory_mode:
            return SQLiteRateLeases(pool.db_name + "-ratelimit")
    if isinstance(factory, PostgresFactory):
        return PostgresRateLeases(factory.datastore)
    return MemoryRateLeases()


__all__ = ["MemoryRateLeases", "PostgresRateLeases", "SQLiteRateLeases", "rate_leases", "take"]
