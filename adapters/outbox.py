"""The webhook outbox on SQLite, PostgreSQL and memory, and the store of the signing key.

Rows and the tracking position are written in one transaction (application/webhooks.py). A
message is claimed with a lease: the oldest pending message of each (endpoint, resource) only,
so a resource's messages go out in order; on PostgreSQL the claim skips rows another worker is
claiming (FOR UPDATE SKIP LOCKED), on SQLite the one writer serialises claims.
"""

import json
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any, Final
from uuid import UUID

from eventsourcing.persistence import Tracking
from eventsourcing.popo import POPOTrackingRecorder
from eventsourcing.postgres import PostgresDatastore, PostgresTrackingRecorder
from eventsourcing.sqlite import SQLiteDatastore, SQLiteTrackingRecorder
from psycopg.sql import SQL, Composable, Identifier

from adapters.data_keys import PostgresDataKeys, SQLiteDataKeys, seal_json, unseal_json
from application.personal_data import PersonalDataKeys
from application.webhooks import (
    MESSAGE_STATUSES,
    OutboxView,
    Outcome,
    Route,
    WebhookMessage,
    replace_status,
)

COLUMNS: Final = (
    "id",
    "organization_id",
    "endpoint_id",
    "webhook_type",
    "object_type",
    "object_id",
    "notification_id",
    "ordinal",
    "payload",
    "status",
    "attempts",
    "next_attempt_at",
    "created_at",
    "updated_at",
    "endpoint",
    "http_status",
    "response",
    "last_error",
    "last_attempt_at",
    "delivered_at",
)
_STATUS_CHECK: Final = "status IN ({})".format(", ".join(f"'{s}'" for s in MESSAGE_STATUSES))
# A pending message waits for every pending message of its endpoint and resource before it.
_IS_HEAD: Final = (
    "NOT EXISTS (SELECT 1 FROM {0} p WHERE p.status = 'pending' "
    "AND p.endpoint_id = m.endpoint_id AND p.object_id = m.object_id "
    "AND (p.notification_id < m.notification_id "
    "OR (p.notification_id = m.notification_id AND p.ordinal < m.ordinal)))"
)


def _values(message: WebhookMessage) -> tuple[Any, ...]:
    return tuple(getattr(message, "position" if c == "notification_id" else c) for c in COLUMNS)


def _message(row: Mapping[str, Any], parse: Callable[[Any], Any]) -> WebhookMessage:
    def instant(name: str) -> datetime | None:
        value = row[name]
        return None if value is None else parse(value)

    def uuid(name: str) -> UUID:
        value = row[name]
        return value if isinstance(value, UUID) else UUID(value)

    return WebhookMessage(
        id=uuid("id"),
        organization_id=uuid("organization_id"),
        endpoint_id=uuid("endpoint_id"),
        webhook_type=row["webhook_type"],
        object_type=row["object_type"],
        object_id=uuid("object_id"),
        position=int(row["notification_id"]),
        ordinal=int(row["ordinal"]),
        payload=row["payload"],
        status=row["status"],
        attempts=int(row["attempts"]),
        next_attempt_at=parse(row["next_attempt_at"]),
        created_at=parse(row["created_at"]),
        updated_at=parse(row["updated_at"]),
        endpoint=row["endpoint"],
        http_status=row["http_status"],
        response=row["response"],
        last_error=row["last_error"],
        last_attempt_at=instant("last_attempt_at"),
        delivered_at=instant("delivered_at"),
    )


def _route(row: Mapping[str, Any], parse: Callable[[Any], Any]) -> Route:
    event_types = row["event_types"]
    return Route(
        endpoint_id=row["endpoint_id"]
        if isinstance(row["endpoint_id"], UUID)
        else UUID(row["endpoint_id"]),
        organization_id=row["organization_id"]
        if isinstance(row["organization_id"], UUID)
        else UUID(row["organization_id"]),
        webhook_url=row["webhook_url"],
        event_types=None if event_types is None else tuple(json.loads(event_types)),
        created_at=parse(row["created_at"]),
    )


def _event_types(route: Route) -> str | None:
    return None if route.event_types is None else json.dumps(list(route.event_types))


def _outcome_values(outcome: Outcome) -> dict[str, Any]:
    return {
        "status": outcome.status,
        "updated_at": outcome.at,
        "endpoint": outcome.endpoint,
        "http_status": outcome.http_status,
        "response": outcome.response,
        "last_error": outcome.error,
        "last_attempt_at": outcome.at,
        "next_attempt_at": outcome.next_attempt_at,
        "delivered_at": outcome.at if outcome.status == "succeeded" else None,
    }


class MemoryOutbox(POPOTrackingRecorder, OutboxView):
    """The outbox for the in-memory store (unit and API tests)."""

    def __init__(self) -> None:
        super().__init__()
        self._routes: dict[UUID, Route] = {}
        self._messages: dict[UUID, WebhookMessage] = {}
        self._leases: dict[UUID, tuple[datetime, str]] = {}

    def put_route(self, route: Route, tracking: Tracking) -> None:
        with self._database_lock:
            self._assert_tracking_uniqueness(tracking)
            self._routes[route.endpoint_id] = route
            self._insert_tracking(tracking)

    def remove_route(self, endpoint_id: UUID, tracking: Tracking) -> None:
        with self._database_lock:
            self._assert_tracking_uniqueness(tracking)
            self._routes.pop(endpoint_id, None)
            self._insert_tracking(tracking)

    def routes(self, organization_id: UUID) -> list[Route]:
        with self._database_lock:
            found = [r for r in self._routes.values() if r.organization_id == organization_id]
        return sorted(found, key=lambda r: (r.created_at, r.endpoint_id.int))

    def route_page(self, organization_id: UUID, page: int, per_page: int) -> tuple[list[UUID], int]:
        found = self.routes(organization_id)[::-1]
        start = (page - 1) * per_page
        return [r.endpoint_id for r in found[start : start + per_page]], len(found)

    def enqueue(
        self,
        messages: Sequence[WebhookMessage],
        cancel: Sequence[tuple[UUID, str]],
        tracking: Tracking,
    ) -> None:
        with self._database_lock:
            self._assert_tracking_uniqueness(tracking)
            assert not any(m.id in self._messages for m in messages), messages
            for message in list(self._messages.values()):
                if message.status == "pending" and (
                    (message.object_id, message.webhook_type) in cancel
                ):
                    self._messages[message.id] = replace(message, status="canceled")
                    self._leases.pop(message.id, None)
            for message in messages:
                self._messages[message.id] = message
            self._insert_tracking(tracking)

    def claim(
        self, now: datetime, limit: int, lease_until: datetime, token: str
    ) -> list[WebhookMessage]:
        with self._database_lock:
            pending = [m for m in self._messages.values() if m.status == "pending"]
            heads: dict[tuple[UUID, UUID], WebhookMessage] = {}
            for message in pending:
                key = (message.endpoint_id, message.object_id)
                head = heads.get(key)
                if head is None or (message.position, message.ordinal) < (
                    head.position,
                    head.ordinal,
                ):
                    heads[key] = message
            due = [
                m
                for m in heads.values()
                if m.next_attempt_at <= now
                and (m.id not in self._leases or self._leases[m.id][0] < now)
            ]
            due.sort(key=lambda m: (m.next_attempt_at, m.position, m.ordinal))
            claimed = []
            for message in due[:limit]:
                self._leases[message.id] = (lease_until, token)
                self._messages[message.id] = replace(message, attempts=message.attempts + 1)
                claimed.append(self._messages[message.id])
            return claimed

    def finish(self, message_id: UUID, token: str, outcome: Outcome) -> bool:
        with self._database_lock:
            lease = self._leases.get(message_id)
            message = self._messages[message_id]
            if lease is None or lease[1] != token or message.status != "pending":
                return False
            del self._leases[message_id]
            self._messages[message_id] = replace_status(message, outcome)
            return True

    def message(self, organization_id: UUID, message_id: UUID) -> WebhookMessage | None:
        with self._database_lock:
            found = self._messages.get(message_id)
        return found if found is not None and found.organization_id == organization_id else None

    def page(
        self, organization_id: UUID, statuses: Sequence[str], page: int, per_page: int
    ) -> tuple[list[WebhookMessage], int]:
        with self._database_lock:
            found = [
                m
                for m in self._messages.values()
                if m.organization_id == organization_id and (not statuses or m.status in statuses)
            ]
        found.sort(key=lambda m: (m.position, m.ordinal, m.id.int), reverse=True)
        start = (page - 1) * per_page
        return found[start : start + per_page], len(found)

    def retry(self, organization_id: UUID, message_id: UUID, now: datetime) -> bool:
        with self._database_lock:
            found = self._messages.get(message_id)
            if found is None or found.organization_id != organization_id:
                return False
            if found.status != "failed":
                return False
            self._messages[message_id] = replace(
                found, status="pending", attempts=0, next_attempt_at=now, updated_at=now
            )
            return True


# SQLite.


def _ts(instant: datetime) -> str:
    """UTC ISO text with microseconds: sorts like the instants it names."""
    return instant.astimezone(UTC).isoformat(timespec="microseconds")


def _sqlite_value(value: Any) -> Any:
    if isinstance(value, datetime):
        return _ts(value)
    if isinstance(value, UUID):
        return str(value)
    return value


def _sealed(keys: PersonalDataKeys, message: WebhookMessage) -> WebhookMessage:
    """The message as stored: its customers' personal values sealed with their keys, so that
    erasing a customer reaches a message not yet delivered (ADR 0023)."""
    payload = seal_json(keys, message.payload.encode())
    return replace(message, payload=payload.decode())


def _unsealed(keys: PersonalDataKeys, message: WebhookMessage) -> WebhookMessage:
    """The message as delivered and shown: clear values, or ERASED once the key is gone."""
    payload = unseal_json(keys, message.payload.encode())
    return replace(message, payload=payload.decode())


class SQLiteOutbox(SQLiteTrackingRecorder, OutboxView):
    def __init__(self, datastore: SQLiteDatastore, **kwargs: Any) -> None:
        super().__init__(datastore, **kwargs)
        self.data_keys = SQLiteDataKeys(datastore)  # Customers' keys seal payloads (ADR 0023).

    def _message(self, row: Mapping[str, Any]) -> WebhookMessage:
        return _unsealed(self.data_keys, _message(row, datetime.fromisoformat))

    def construct_create_table_statements(self) -> list[str]:
        return [
            *super().construct_create_table_statements(),
            "CREATE TABLE IF NOT EXISTS webhook_routes (endpoint_id TEXT PRIMARY KEY, "
            "organization_id TEXT NOT NULL, webhook_url TEXT NOT NULL, event_types TEXT, "
            "created_at TEXT NOT NULL)",
            "CREATE INDEX IF NOT EXISTS webhook_routes_list ON webhook_routes "
            "(organization_id, created_at)",
            "CREATE TABLE IF NOT EXISTS webhook_messages (id TEXT PRIMARY KEY, "
            "organization_id TEXT NOT NULL, endpoint_id TEXT NOT NULL, "
            "webhook_type TEXT NOT NULL, object_type TEXT NOT NULL, object_id TEXT NOT NULL, "
            "notification_id INTEGER NOT NULL, ordinal INTEGER NOT NULL, payload TEXT NOT NULL, "
            f"status TEXT NOT NULL CHECK ({_STATUS_CHECK}), "
            "attempts INTEGER NOT NULL CHECK (attempts >= 0), next_attempt_at TEXT NOT NULL, "
            "created_at TEXT NOT NULL, updated_at TEXT NOT NULL, endpoint TEXT NOT NULL, "
            "http_status INTEGER, response TEXT, last_error TEXT, last_attempt_at TEXT, "
            "delivered_at TEXT, lease_until TEXT, lease_token TEXT)",
            "CREATE INDEX IF NOT EXISTS webhook_messages_due ON webhook_messages "
            "(next_attempt_at) WHERE status = 'pending'",
            "CREATE INDEX IF NOT EXISTS webhook_messages_order ON webhook_messages "
            "(endpoint_id, object_id, notification_id, ordinal) WHERE status = 'pending'",
            "CREATE INDEX IF NOT EXISTS webhook_messages_list ON webhook_messages "
            "(organization_id, notification_id)",
        ]

    def put_route(self, route: Route, tracking: Tracking) -> None:
        with self.datastore.transaction(commit=True) as c:
            c.execute(
                "INSERT INTO webhook_routes VALUES (?, ?, ?, ?, ?) ON CONFLICT (endpoint_id) "
                "DO UPDATE SET webhook_url = excluded.webhook_url, "
                "event_types = excluded.event_types",
                (
                    str(route.endpoint_id),
                    str(route.organization_id),
                    route.webhook_url,
                    _event_types(route),
                    _ts(route.created_at),
                ),
            )
            self._insert_tracking(c, tracking)

    def remove_route(self, endpoint_id: UUID, tracking: Tracking) -> None:
        with self.datastore.transaction(commit=True) as c:
            c.execute("DELETE FROM webhook_routes WHERE endpoint_id = ?", (str(endpoint_id),))
            self._insert_tracking(c, tracking)

    def routes(self, organization_id: UUID) -> list[Route]:
        with self.datastore.transaction(commit=False) as c:
            c.execute(
                "SELECT * FROM webhook_routes WHERE organization_id = ? "
                "ORDER BY created_at, endpoint_id",
                (str(organization_id),),
            )
            return [_route(row, datetime.fromisoformat) for row in c.fetchall()]

    def route_page(self, organization_id: UUID, page: int, per_page: int) -> tuple[list[UUID], int]:
        with self.datastore.transaction(commit=False) as c:
            c.execute(
                "SELECT COUNT(*) FROM webhook_routes WHERE organization_id = ?",
                (str(organization_id),),
            )
            total = int(c.fetchone()[0])
            c.execute(
                "SELECT endpoint_id FROM webhook_routes WHERE organization_id = ? "
                "ORDER BY created_at DESC, endpoint_id DESC LIMIT ? OFFSET ?",
                (str(organization_id), per_page, (page - 1) * per_page),
            )
            return [UUID(row[0]) for row in c.fetchall()], total

    def enqueue(
        self,
        messages: Sequence[WebhookMessage],
        cancel: Sequence[tuple[UUID, str]],
        tracking: Tracking,
    ) -> None:
        messages = [_sealed(self.data_keys, m) for m in messages]  # Before the transaction.
        with self.datastore.transaction(commit=True) as c:
            for object_id, webhook_type in cancel:
                c.execute(
                    "UPDATE webhook_messages SET status = 'canceled', lease_until = NULL, "
                    "lease_token = NULL WHERE object_id = ? AND webhook_type = ? "
                    "AND status = 'pending'",
                    (str(object_id), webhook_type),
                )
            placeholders = ", ".join("?" for _ in COLUMNS)
            for message in messages:
                c.execute(
                    f"INSERT INTO webhook_messages ({', '.join(COLUMNS)}) VALUES ({placeholders})",
                    tuple(_sqlite_value(v) for v in _values(message)),
                )
            self._insert_tracking(c, tracking)

    def claim(
        self, now: datetime, limit: int, lease_until: datetime, token: str
    ) -> list[WebhookMessage]:
        with self.datastore.transaction(commit=True) as c:
            c.execute(
                "UPDATE webhook_messages SET lease_until = ?, lease_token = ?, "
                "attempts = attempts + 1 WHERE id IN (SELECT m.id FROM webhook_messages m "
                "WHERE m.status = 'pending' AND m.next_attempt_at <= ? "
                "AND (m.lease_until IS NULL OR m.lease_until < ?) AND "
                + _IS_HEAD.format("webhook_messages")
                + " ORDER BY m.next_attempt_at, m.notification_id, m.ordinal LIMIT ?) "
                "RETURNING *",
                (_ts(lease_until), token, _ts(now), _ts(now), limit),
            )
            rows = c.fetchall()
        claimed = [self._message(row) for row in rows]  # Reads keys: after the transaction.
        claimed.sort(key=lambda m: (m.next_attempt_at, m.position, m.ordinal))
        return claimed

    def finish(self, message_id: UUID, token: str, outcome: Outcome) -> bool:
        values = _outcome_values(outcome)
        sets = ", ".join(
            f"{k} = COALESCE(?, {k})" if k == "next_attempt_at" else f"{k} = ?" for k in values
        )
        with self.datastore.transaction(commit=True) as c:
            c.execute(
                f"UPDATE webhook_messages SET {sets}, lease_until = NULL, lease_token = NULL "
                "WHERE id = ? AND lease_token = ? AND status = 'pending' RETURNING 1",
                (*(_sqlite_value(v) for v in values.values()), str(message_id), token),
            )
            return c.fetchone() is not None

    def message(self, organization_id: UUID, message_id: UUID) -> WebhookMessage | None:
        with self.datastore.transaction(commit=False) as c:
            c.execute(
                "SELECT * FROM webhook_messages WHERE id = ? AND organization_id = ?",
                (str(message_id), str(organization_id)),
            )
            row = c.fetchone()
        return None if row is None else self._message(row)

    def page(
        self, organization_id: UUID, statuses: Sequence[str], page: int, per_page: int
    ) -> tuple[list[WebhookMessage], int]:
        where = "organization_id = ?"
        params: list[Any] = [str(organization_id)]
        if statuses:
            where += f" AND status IN ({', '.join('?' for _ in statuses)})"
            params.extend(statuses)
        with self.datastore.transaction(commit=False) as c:
            c.execute(f"SELECT COUNT(*) FROM webhook_messages WHERE {where}", params)
            total = int(c.fetchone()[0])
            c.execute(
                f"SELECT * FROM webhook_messages WHERE {where} "
                "ORDER BY notification_id DESC, ordinal DESC, id DESC LIMIT ? OFFSET ?",
                [*params, per_page, (page - 1) * per_page],
            )
            rows = c.fetchall()
        return [self._message(row) for row in rows], total

    def retry(self, organization_id: UUID, message_id: UUID, now: datetime) -> bool:
        with self.datastore.transaction(commit=True) as c:
            c.execute(
                "UPDATE webhook_messages SET status = 'pending', attempts = 0, "
                "next_attempt_at = ?, updated_at = ? "
                "WHERE id = ? AND organization_id = ? AND status = 'failed' RETURNING 1",
                (_ts(now), _ts(now), str(message_id), str(organization_id)),
            )
            return c.fetchone() is not None


# PostgreSQL.


def _pg_instant(value: datetime) -> datetime:
    return value.astimezone(UTC)


class PostgresOutbox(PostgresTrackingRecorder, OutboxView):
    def __init__(self, datastore: PostgresDatastore, **kwargs: Any) -> None:
        super().__init__(datastore, **kwargs)
        self.data_keys = PostgresDataKeys(datastore)  # Customers' keys seal payloads (ADR 0023).
        schema = Identifier(self.datastore.schema)
        self.routes_table = SQL("{0}.webhook_routes").format(schema)
        self.messages_table = SQL("{0}.webhook_messages").format(schema)
        self.sql_create_statements.extend(
            [
                SQL(
                    "CREATE TABLE IF NOT EXISTS {0} (endpoint_id uuid PRIMARY KEY, "
                    "organization_id uuid NOT NULL, webhook_url text NOT NULL, "
                    "event_types text, created_at timestamptz NOT NULL)"
                ).format(self.routes_table),
                SQL(
                    "CREATE INDEX IF NOT EXISTS webhook_routes_list ON {0} "
                    "(organization_id, created_at)"
                ).format(self.routes_table),
                SQL(
                    "CREATE TABLE IF NOT EXISTS {0} (id uuid PRIMARY KEY, "
                    "organization_id uuid NOT NULL, endpoint_id uuid NOT NULL, "
                    "webhook_type text NOT NULL, object_type text NOT NULL, "
                    "object_id uuid NOT NULL, notification_id bigint NOT NULL, "
                    "ordinal integer NOT NULL, payload text NOT NULL, "
                    "status text NOT NULL CHECK (" + _STATUS_CHECK + "), "
                    "attempts integer NOT NULL CHECK (attempts >= 0), "
                    "next_attempt_at timestamptz NOT NULL, created_at timestamptz NOT NULL, "
                    "updated_at timestamptz NOT NULL, endpoint text NOT NULL, "
                    "http_status integer, response text, last_error text, "
                    "last_attempt_at timestamptz, delivered_at timestamptz, "
                    "lease_until timestamptz, lease_token text)"
                ).format(self.messages_table),
                SQL(
                    "CREATE INDEX IF NOT EXISTS webhook_messages_due ON {0} "
                    "(next_attempt_at) WHERE status = 'pending'"
                ).format(self.messages_table),
                SQL(
                    "CREATE INDEX IF NOT EXISTS webhook_messages_order ON {0} "
                    "(endpoint_id, object_id, notification_id, ordinal) WHERE status = 'pending'"
                ).format(self.messages_table),
                SQL(
                    "CREATE INDEX IF NOT EXISTS webhook_messages_list ON {0} "
                    "(organization_id, notification_id)"
                ).format(self.messages_table),
            ]
        )

    def _message(self, row: Mapping[str, Any]) -> WebhookMessage:
        return _unsealed(self.data_keys, _message(row, _pg_instant))

    def put_route(self, route: Route, tracking: Tracking) -> None:
        with self.datastore.transaction(commit=True) as curs:
            curs.execute(
                SQL(
                    "INSERT INTO {0} VALUES (%s, %s, %s, %s, %s) ON CONFLICT (endpoint_id) "
                    "DO UPDATE SET webhook_url = excluded.webhook_url, "
                    "event_types = excluded.event_types"
                ).format(self.routes_table),
                (
                    route.endpoint_id,
                    route.organization_id,
                    route.webhook_url,
                    _event_types(route),
                    route.created_at,
                ),
            )
            self._insert_tracking(curs, tracking)

    def remove_route(self, endpoint_id: UUID, tracking: Tracking) -> None:
        with self.datastore.transaction(commit=True) as curs:
            curs.execute(
                SQL("DELETE FROM {0} WHERE endpoint_id = %s").format(self.routes_table),
                (endpoint_id,),
            )
            self._insert_tracking(curs, tracking)

    def routes(self, organization_id: UUID) -> list[Route]:
        with self.datastore.transaction(commit=False) as curs:
            curs.execute(
                SQL(
                    "SELECT * FROM {0} WHERE organization_id = %s ORDER BY created_at, endpoint_id"
                ).format(self.routes_table),
                (organization_id,),
            )
            return [_route(row, _pg_instant) for row in curs.fetchall()]

    def route_page(self, organization_id: UUID, page: int, per_page: int) -> tuple[list[UUID], int]:
        with self.datastore.transaction(commit=False) as curs:
            curs.execute(
                SQL("SELECT COUNT(*) AS n FROM {0} WHERE organization_id = %s").format(
                    self.routes_table
                ),
                (organization_id,),
            )
            row = curs.fetchone()
            assert row is not None
            total = int(row["n"])
            curs.execute(
                SQL(
                    "SELECT endpoint_id FROM {0} WHERE organization_id = %s "
                    "ORDER BY created_at DESC, endpoint_id DESC LIMIT %s OFFSET %s"
                ).format(self.routes_table),
                (organization_id, per_page, (page - 1) * per_page),
            )
            return [row["endpoint_id"] for row in curs.fetchall()], total

    def enqueue(
        self,
        messages: Sequence[WebhookMessage],
        cancel: Sequence[tuple[UUID, str]],
        tracking: Tracking,
    ) -> None:
        messages = [_sealed(self.data_keys, m) for m in messages]  # Before the transaction.
        with self.datastore.transaction(commit=True) as curs:
            for object_id, webhook_type in cancel:
                curs.execute(
                    SQL(
                        "UPDATE {0} SET status = 'canceled', lease_until = NULL, "
                        "lease_token = NULL WHERE object_id = %s AND webhook_type = %s "
                        "AND status = 'pending'"
                    ).format(self.messages_table),
                    (object_id, webhook_type),
                )
            insert = SQL("INSERT INTO {0} ({1}) VALUES ({2})").format(
                self.messages_table,
                SQL(", ").join(Identifier(c) for c in COLUMNS),
                SQL(", ").join(SQL("%s") for _ in COLUMNS),
            )
            for message in messages:
                curs.execute(insert, _values(message))
            self._insert_tracking(curs, tracking)

    def claim(
        self, now: datetime, limit: int, lease_until: datetime, token: str
    ) -> list[WebhookMessage]:
        with self.datastore.transaction(commit=True) as curs:
            curs.execute(
                SQL(
                    "UPDATE {0} SET lease_until = %s, lease_token = %s, "
                    "attempts = attempts + 1 WHERE id IN (SELECT m.id FROM {0} m "
                    "WHERE m.status = 'pending' AND m.next_attempt_at <= %s "
                    "AND (m.lease_until IS NULL OR m.lease_until < %s) AND "
                    + _IS_HEAD
                    + " ORDER BY m.next_attempt_at, m.notification_id, m.ordinal LIMIT %s "
                    "FOR UPDATE SKIP LOCKED) RETURNING *"
                ).format(self.messages_table),
                (lease_until, token, now, now, limit),
            )
            rows = curs.fetchall()
        claimed = [self._message(row) for row in rows]  # Reads keys: after the transaction.
        claimed.sort(key=lambda m: (m.next_attempt_at, m.position, m.ordinal))
        return claimed

    def finish(self, message_id: UUID, token: str, outcome: Outcome) -> bool:
        values = _outcome_values(outcome)
        sets = SQL(", ").join(
            SQL("{0} = COALESCE(%s, {0})").format(Identifier(k))
            if k == "next_attempt_at"
            else SQL("{0} = %s").format(Identifier(k))
            for k in values
        )
        with self.datastore.transaction(commit=True) as curs:
            curs.execute(
                SQL(
                    "UPDATE {0} SET {1}, lease_until = NULL, lease_token = NULL "
                    "WHERE id = %s AND lease_token = %s AND status = 'pending' RETURNING 1"
                ).format(self.messages_table, sets),
                (*values.values(), message_id, token),
            )
            return curs.fetchone() is not None

    def message(self, organization_id: UUID, message_id: UUID) -> WebhookMessage | None:
        with self.datastore.transaction(commit=False) as curs:
            curs.execute(
                SQL("SELECT * FROM {0} WHERE id = %s AND organization_id = %s").format(
                    self.messages_table
                ),
                (message_id, organization_id),
            )
            row = curs.fetchone()
        return None if row is None else self._message(row)

    def page(
        self, organization_id: UUID, statuses: Sequence[str], page: int, per_page: int
    ) -> tuple[list[WebhookMessage], int]:
        where: Composable = SQL("organization_id = %s")
        params: list[Any] = [organization_id]
        if statuses:
            where = SQL("{0} AND status = ANY(%s)").format(where)
            params.append(list(statuses))
        with self.datastore.transaction(commit=False) as curs:
            curs.execute(
                SQL("SELECT COUNT(*) AS n FROM {0} WHERE {1}").format(self.messages_table, where),
                params,
            )
            row = curs.fetchone()
            assert row is not None
            total = int(row["n"])
            curs.execute(
                SQL(
                    "SELECT * FROM {0} WHERE {1} "
                    "ORDER BY notification_id DESC, ordinal DESC, id DESC LIMIT %s OFFSET %s"
                ).format(self.messages_table, where),
                [*params, per_page, (page - 1) * per_page],
            )
            rows = curs.fetchall()
        return [self._message(row) for row in rows], total

    def retry(self, organization_id: UUID, message_id: UUID, now: datetime) -> bool:
        with self.datastore.transaction(commit=True) as curs:
            curs.execute(
                SQL(
                    "UPDATE {0} SET status = 'pending', attempts = 0, next_attempt_at = %s, "
                    "updated_at = %s WHERE id = %s AND organization_id = %s "
                    "AND status = 'failed' RETURNING 1"
                ).format(self.messages_table),
                (now, now, message_id, organization_id),
            )
            return curs.fetchone() is not None


# The RSA private key that signs the JWTs: one per store, never in an event.


# A rotation (ADR 0022) replaces it and keeps only the public half of the one it retires.
RetiredKey = tuple[str, datetime, datetime]  # (public key PEM, created_at, retired_at)


class MemorySigningKeyStore:
    def __init__(self) -> None:
        self._pem: str | None = None
        self._lock = threading.Lock()
        self._created_at = datetime.now(UTC)
        self._retired: list[RetiredKey] = []

    def private_key_pem(self, generate: Callable[[], str]) -> str:
        with self._lock:
            if self._pem is None:
                self._pem = generate()
                self._created_at = datetime.now(UTC)
            return self._pem

    def rotate(self, old_pem: str, old_public_pem: str, new_pem: str, now: datetime) -> bool:
        """Replace old_pem by new_pem, if old_pem is still the current key."""
        with self._lock:
            if self._pem != old_pem:
                return False
            self._retired.append((old_public_pem, self._created_at, now))
            self._pem, self._created_at = new_pem, now
            return True

    def created_at(self) -> datetime:
        return self._created_at

    def retired(self) -> list[RetiredKey]:
        """Retired public keys, newest first."""
        with self._lock:
            return sorted(self._retired, key=lambda key: key[2], reverse=True)


class SQLiteSigningKeyStore:
    def __init__(self, datastore: SQLiteDatastore) -> None:
        self.datastore = datastore
        with self.datastore.transaction(commit=True) as c:
            c.execute(
                "CREATE TABLE IF NOT EXISTS webhook_signing_keys ("
                "id INTEGER PRIMARY KEY CHECK (id = 1), private_key_pem TEXT NOT NULL, "
                "created_at TEXT NOT NULL)"
            )
            c.execute(
                "CREATE TABLE IF NOT EXISTS webhook_retired_signing_keys ("
                "public_key_pem TEXT PRIMARY KEY, created_at TEXT NOT NULL, "
                "retired_at TEXT NOT NULL)"
            )

    def private_key_pem(self, generate: Callable[[], str]) -> str:
        pem = self._select()
        if pem is None:
            # Racing processes each generate one; the first insert wins and all use it.
            with self.datastore.transaction(commit=True) as c:
                c.execute(
                    "INSERT INTO webhook_signing_keys VALUES (1, ?, ?) ON CONFLICT DO NOTHING",
                    (generate(), _ts(datetime.now(UTC))),
                )
            pem = self._select()
        assert pem is not None
        return pem

    def _select(self) -> str | None:
        with self.datastore.transaction(commit=False) as c:
            c.execute("SELECT private_key_pem FROM webhook_signing_keys WHERE id = 1")
            row = c.fetchone()
        return None if row is None else str(row[0])

    def rotate(self, old_pem: str, old_public_pem: str, new_pem: str, now: datetime) -> bool:
        """Replace old_pem by new_pem, if old_pem is still the current key; one transaction."""
        with self.datastore.transaction(commit=True) as c:
            c.execute("SELECT created_at FROM webhook_signing_keys WHERE id = 1")
            row = c.fetchone()
            c.execute(
                "UPDATE webhook_signing_keys SET private_key_pem = ?, created_at = ? "
                "WHERE id = 1 AND private_key_pem = ?",
                (new_pem, _ts(now), old_pem),
            )
            c.execute("SELECT changes()")
            if row is None or c.fetchone()[0] != 1:
                return False
            c.execute(
                "INSERT INTO webhook_retired_signing_keys VALUES (?, ?, ?)",
                (old_public_pem, row[0], _ts(now)),
            )
        return True

    def created_at(self) -> datetime:
        with self.datastore.transaction(commit=False) as c:
            c.execute("SELECT created_at FROM webhook_signing_keys WHERE id = 1")
            row = c.fetchone()
        return datetime.now(UTC) if row is None else datetime.fromisoformat(row[0])

    def retired(self) -> list[RetiredKey]:
        with self.datastore.transaction(commit=False) as c:
            c.execute(
                "SELECT public_key_pem, created_at, retired_at FROM webhook_retired_signing_keys "
                "ORDER BY retired_at DESC"
            )
            return [
                (str(pem), datetime.fromisoformat(created), datetime.fromisoformat(retired))
                for pem, created, retired in c.fetchall()
            ]


class PostgresSigningKeyStore:
    def __init__(self, datastore: PostgresDatastore) -> None:
        self.datastore = datastore
        self.table = SQL("{0}.webhook_signing_keys").format(Identifier(datastore.schema))
        self.retired_table = SQL("{0}.webhook_retired_signing_keys").format(
            Identifier(datastore.schema)
        )
        with self.datastore.transaction(commit=True) as curs:
            curs.execute(
                SQL(
                    "CREATE TABLE IF NOT EXISTS {0} (id integer PRIMARY KEY CHECK (id = 1), "
                    "private_key_pem text NOT NULL, created_at timestamptz NOT NULL)"
                ).format(self.table)
            )
            curs.execute(
                SQL(
                    "CREATE TABLE IF NOT EXISTS {0} (public_key_pem text PRIMARY KEY, "
                    "created_at timestamptz NOT NULL, retired_at timestamptz NOT NULL)"
                ).format(self.retired_table)
            )

    def private_key_pem(self, generate: Callable[[], str]) -> str:
        pem = self._select()
        if pem is None:
            with self.datastore.transaction(commit=True) as curs:
                curs.execute(
                    SQL("INSERT INTO {0} VALUES (1, %s, now()) ON CONFLICT DO NOTHING").format(
                        self.table
                    ),
                    (generate(),),
                )
            pem = self._select()
        assert pem is not None
        return pem

    def _select(self) -> str | None:
        with self.datastore.transaction(commit=False) as curs:
            curs.execute(SQL("SELECT private_key_pem FROM {0} WHERE id = 1").format(self.table))
            row = curs.fetchone()
        return None if row is None else str(row["private_key_pem"])

    def rotate(self, old_pem: str, old_public_pem: str, new_pem: str, now: datetime) -> bool:
        """Replace old_pem by new_pem, if old_pem is still the current key; one transaction."""
        with self.datastore.transaction(commit=True) as curs:
            curs.execute(
                SQL(
                    "SELECT created_at FROM {0} WHERE id = 1 AND private_key_pem = %s FOR UPDATE"
                ).format(self.table),
                (old_pem,),
            )
            row = curs.fetchone()
            if row is None:
                return False
            curs.execute(
                SQL("UPDATE {0} SET private_key_pem = %s, created_at = %s WHERE id = 1").format(
                    self.table
                ),
                (new_pem, now),
            )
            curs.execute(
                SQL("INSERT INTO {0} VALUES (%s, %s, %s)").format(self.retired_table),
                (old_public_pem, row["created_at"], now),
            )
        return True

    def created_at(self) -> datetime:
        with self.datastore.transaction(commit=False) as curs:
            curs.execute(SQL("SELECT created_at FROM {0} WHERE id = 1").format(self.table))
            row = curs.fetchone()
        return datetime.now(UTC) if row is None else _pg_instant(row["created_at"])

    def retired(self) -> list[RetiredKey]:
        with self.datastore.transaction(commit=False) as curs:
            curs.execute(
                SQL(
                    "SELECT public_key_pem, created_at, retired_at FROM {0} "
                    "ORDER BY retired_at DESC"
                ).format(self.retired_table)
            )
            return [
                (
                    str(row["public_key_pem"]),
                    _pg_instant(row["created_at"]),
                    _pg_instant(row["retired_at"]),
                )
                for row in curs.fetchall()
            ]


__all__ = [
    "MemoryOutbox",
    "MemorySigningKeyStore",
    "PostgresOutbox",
    "PostgresSigningKeyStore",
    "SQLiteOutbox",
    "SQLiteSigningKeyStore",
]
