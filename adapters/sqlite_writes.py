"""SQLite write transactions take the write lock when they begin (BEGIN IMMEDIATE).

The eventsourcing library begins every transaction with a deferred BEGIN. In WAL mode a deferred
transaction that reads before it writes cannot wait for the write lock: if another writer
committed since its first read, SQLite answers "database is locked" at once instead of using
the busy timeout. Tally's SQLite writers (event store, usage log, views, audit log, outbox) run
in several threads and processes, so write transactions begin IMMEDIATE and queue on the busy
timeout (SQLITE_LOCK_TIMEOUT); read-only transactions stay deferred. Imported for its effect by
adapters/stores.py, before any store is opened.
"""

from eventsourcing.sqlite import SQLiteCursor, SQLiteTransaction


def _begin(self: SQLiteTransaction) -> SQLiteCursor:
    cursor = self.connection.cursor()
    cursor.execute("BEGIN IMMEDIATE" if self.commit else "BEGIN")
    return cursor


SQLiteTransaction.__enter__ = _begin  # type: ignore[method-assign]
