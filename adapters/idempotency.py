"""Idempotency-Key storage on SQLite, PostgreSQL and memory: the first response to each key.

A request claims its key before it runs (a row without a response), stores the response when it
succeeds, and releases the claim when it fails, so that a retry runs again. A stored response's
customer objects are sealed with the customers' data keys, so erasing a customer reaches the
responses kept for replays: a replay after erasure shows its personal values as erased (ADR 0023).
"""

import threading
from uuid import UUID

from eventsourcing.postgres import PostgresDatastore
from eventsourcing.sqlite import SQLiteDatastore
from psycopg.sql import SQL, Identifier

from adapters.data_keys import PostgresDataKeys, SQLiteDataKeys, seal_json, unseal_json
from application.errors import IdempotencyKeyInProgressError, IdempotencyKeyReusedError
from application.ports import StoredResponse

Row = tuple[str, int | None, bytes | None]  # request hash, status code, body


def _decide(key: str, request_hash: str, row: Row) -> StoredResponse:
    stored_hash, status_code, body = row
    if stored_hash != request_hash:
        raise IdempotencyKeyReusedError(key)
    if status_code is None or body is None:
        raise IdempotencyKeyInProgressError(key)
    return StoredResponse(status_code, bytes(body))


class MemoryIdempotencyStore:
    def __init__(self) -> None:
        self._rows: dict[tuple[UUID, str], Row] = {}
        self._lock = threading.Lock()

    def reserve(self, organization_id: UUID, key: str, request_hash: str) -> StoredResponse | None:
        with self._lock:
            row = self._rows.get((organization_id, key))
            if row is None:
                self._rows[(organization_id, key)] = (request_hash, None, None)
                return None
        return _decide(key, request_hash, row)

    def complete(self, organization_id: UUID, key: str, response: StoredResponse) -> None:
        with self._lock:
            request_hash = self._rows[(organization_id, key)][0]
            self._rows[(organization_id, key)] = (request_hash, response.status_code, response.body)

    def release(self, organization_id: UUID, key: str) -> None:
        with self._lock:
            self._rows.pop((organization_id, key), None)


class SQLiteIdempotencyStore:
    def __init__(self, datastore: SQLiteDatastore) -> None:
        self.datastore = datastore
        with self.datastore.transaction(commit=True) as c:
            c.execute(
                "CREATE TABLE IF NOT EXISTS idempotency_keys (organization_id TEXT NOT NULL, "
                "key TEXT NOT NULL, request_hash TEXT NOT NULL, status_code INTEGER, body BLOB, "
                "PRIMARY KEY (organization_id, key))"
            )
        self.data_keys = SQLiteDataKeys(datastore)

    def reserve(self, organization_id: UUID, key: str, request_hash: str) -> StoredResponse | None:
        with self.datastore.transaction(commit=True) as c:
            c.execute(
                "INSERT INTO idempotency_keys VALUES (?, ?, ?, NULL, NULL) "
                "ON CONFLICT DO NOTHING RETURNING 1",
                (str(organization_id), key, request_hash),
            )
            if c.fetchone() is not None:
                return None
            c.execute(
                "SELECT request_hash, status_code, body FROM idempotency_keys "
                "WHERE organization_id = ? AND key = ?",
                (str(organization_id), key),
            )
            row = c.fetchone()
        stored = _decide(key, request_hash, (row[0], row[1], row[2]))
        return StoredResponse(stored.status_code, unseal_json(self.data_keys, stored.body))

    def complete(self, organization_id: UUID, key: str, response: StoredResponse) -> None:
        body = seal_json(self.data_keys, response.body)  # Before the transaction.
        with self.datastore.transaction(commit=True) as c:
            c.execute(
                "UPDATE idempotency_keys SET status_code = ?, body = ? "
                "WHERE organization_id = ? AND key = ?",
                (response.status_code, body, str(organization_id), key),
            )

    def release(self, organization_id: UUID, key: str) -> None:
        with self.datastore.transaction(commit=True) as c:
            c.execute(
                "DELETE FROM idempotency_keys WHERE organization_id = ? AND key = ? "
                "AND status_code IS NULL",
                (str(organization_id), key),
            )


class PostgresIdempotencyStore:
    def __init__(self, datastore: PostgresDatastore) -> None:
        self.datastore = datastore
        self.table = SQL("{0}.idempotency_keys").format(Identifier(datastore.schema))
        with self.datastore.transaction(commit=True) as curs:
            curs.execute(
                SQL(
                    "CREATE TABLE IF NOT EXISTS {0} (organization_id uuid NOT NULL, "
                    "key text NOT NULL, request_hash text NOT NULL, status_code integer, "
                    "body bytea, PRIMARY KEY (organization_id, key))"
                ).format(self.table)
            )
        self.data_keys = PostgresDataKeys(datastore)

    def reserve(self, organization_id: UUID, key: str, request_hash: str) -> StoredResponse | None:
        with self.datastore.transaction(commit=True) as curs:
            curs.execute(
                SQL(
                    "INSERT INTO {0} VALUES (%s, %s, %s, NULL, NULL) "
                    "ON CONFLICT DO NOTHING RETURNING 1"
                ).format(self.table),
                (organization_id, key, request_hash),
            )
            if curs.fetchone() is not None:
                return None
            curs.execute(
                SQL(
                    "SELECT request_hash, status_code, body FROM {0} "
                    "WHERE organization_id = %s AND key = %s"
                ).format(self.table),
                (organization_id, key),
            )
            row = curs.fetchone()
        assert row is not None
        stored = _decide(key, request_hash, (row["request_hash"], row["status_code"], row["body"]))
        return StoredResponse(stored.status_code, unseal_json(self.data_keys, stored.body))

    def complete(self, organization_id: UUID, key: str, response: StoredResponse) -> None:
        body = seal_json(self.data_keys, response.body)
        with self.datastore.transaction(commit=True) as curs:
            curs.execute(
                SQL(
                    "UPDATE {0} SET status_code = %s, body = %s "
                    "WHERE organization_id = %s AND key = %s"
                ).format(self.table),
                (response.status_code, body, organization_id, key),
            )

    def release(self, organization_id: UUID, key: str) -> None:
        with self.datastore.transaction(commit=True) as curs:
            curs.execute(
                SQL(
                    "DELETE FROM {0} WHERE organization_id = %s AND key = %s "
                    "AND status_code IS NULL"
                ).format(self.table),
                (organization_id, key),
            )
