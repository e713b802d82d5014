"""The PaymentStore port on SQLite, PostgreSQL and memory (ADR 0018): connection secrets, and
the inbox of inbound processor webhooks.

Secrets live here, beside the event store and never in it: events are replayed, exported and
shown in history, and a secret must be replaceable and deletable. On SQLite and PostgreSQL they
are sealed with a key held outside the database (adapters/secret_seal.py, ADR 0021), bound to
their organization and connection code; rows left in clear by an older version, or under a key
since retired, are sealed again under the current key when the store opens. The inbox is unique
on (organization, connection, processor event id), so a redelivered webhook is stored once.
"""

import json
import threading
from collections.abc import Mapping
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

from eventsourcing.postgres import PostgresDatastore
from eventsourcing.sqlite import SQLiteDatastore
from psycopg.sql import SQL, Identifier

from adapters.secret_seal import SecretSealer, is_sealed
from application.payments import InboxItem

SECRETS_DDL = (
    "CREATE TABLE IF NOT EXISTS {secrets} (organization_id {uuid} NOT NULL, code TEXT NOT NULL, "
    "provider TEXT NOT NULL, secrets TEXT NOT NULL, PRIMARY KEY (organization_id, code))"
)
INBOX_DDL = (
    "CREATE TABLE IF NOT EXISTS {inbox} (organization_id {uuid} NOT NULL, "
    "connection_code TEXT NOT NULL, event_id TEXT NOT NULL, event_type TEXT NOT NULL, "
    "payload {blob} NOT NULL, received_at TEXT NOT NULL, processed_at TEXT, "
    "attempts INTEGER NOT NULL DEFAULT 0, last_error TEXT, "
    "PRIMARY KEY (organization_id, connection_code, event_id))"
)
INBOX_COLUMNS = (
    "organization_id, connection_code, event_id, event_type, payload, received_at, "
    "processed_at, attempts, last_error"
)


def _context(organization_id: UUID, code: str) -> bytes:
    """What a sealed value is bound to: another row's secrets do not open here."""
    return b"payment_connection_secrets\x00" + organization_id.bytes + code.encode()


def _seal(
    sealer: SecretSealer, organization_id: UUID, code: str, secrets: Mapping[str, str]
) -> str:
    return sealer.seal(json.dumps(dict(secrets)).encode(), _context(organization_id, code))


def _unseal(sealer: SecretSealer, organization_id: UUID, code: str, stored: str) -> dict[str, str]:
    if not is_sealed(stored):
        return dict(json.loads(stored))  # Written before sealing; sealed when the store opens.
    return dict(json.loads(sealer.unseal(stored, _context(organization_id, code))))


def _item(row: Any) -> InboxItem:
    return InboxItem(
        organization_id=UUID(str(row[0])),
        connection_code=row[1],
        event_id=row[2],
        event_type=row[3],
        payload=bytes(row[4]),
        received_at=datetime.fromisoformat(row[5]),
        processed_at=datetime.fromisoformat(row[6]) if row[6] else None,
        attempts=int(row[7]),
        last_error=row[8],
    )


class MemoryPaymentStore:
    def __init__(self) -> None:
        self._secrets: dict[tuple[UUID, str], tuple[str, dict[str, str]]] = {}
        self._inbox: dict[tuple[UUID, str, str], InboxItem] = {}
        self._lock = threading.Lock()

    def put_secrets(
        self, organization_id: UUID, code: str, provider: str, secrets: Mapping[str, str]
    ) -> None:
        with self._lock:
            self._secrets[(organization_id, code)] = (provider, dict(secrets))

    def secrets(self, organization_id: UUID, code: str) -> dict[str, str] | None:
        with self._lock:
            found = self._secrets.get((organization_id, code))
        return dict(found[1]) if found else None

    def delete_secrets(self, organization_id: UUID, code: str) -> None:
        with self._lock:
            self._secrets.pop((organization_id, code), None)

    def connection_codes(self, organization_id: UUID) -> list[str]:
        with self._lock:
            return sorted(code for org, code in self._secrets if org == organization_id)

    def connections_with_code(self, provider: str, code: str) -> list[tuple[UUID, dict[str, str]]]:
        with self._lock:
            return [
                (org, dict(secrets))
                for (org, found_code), (found_provider, secrets) in self._secrets.items()
                if found_code == code and found_provider == provider
            ]

    def add_to_inbox(self, item: InboxItem) -> bool:
        key = (item.organization_id, item.connection_code, item.event_id)
        with self._lock:
            if key in self._inbox:
                return False
            self._inbox[key] = item
            return True

    def unprocessed(self, limit: int) -> list[InboxItem]:
        with self._lock:
            items = [i for i in self._inbox.values() if i.processed_at is None]
        return sorted(items, key=lambda i: i.received_at)[:limit]

    def inbox_item(
        self, organization_id: UUID, connection_code: str, event_id: str
    ) -> InboxItem | None:
        with self._lock:
            return self._inbox.get((organization_id, connection_code, event_id))

    def mark_processed(
        self, organization_id: UUID, connection_code: str, event_id: str, at: datetime
    ) -> None:
        key = (organization_id, connection_code, event_id)
        with self._lock:
            item = self._inbox[key]
            if item.processed_at is None:
                self._inbox[key] = replace(item, processed_at=at)

    def mark_failed(
        self, organization_id: UUID, connection_code: str, event_id: str, error: str
    ) -> None:
        key = (organization_id, connection_code, event_id)
        with self._lock:
            item = self._inbox[key]
            self._inbox[key] = replace(item, attempts=item.attempts + 1, last_error=error)


class SQLitePaymentStore:
    def __init__(self, datastore: SQLiteDatastore, sealer: SecretSealer) -> None:
        self.datastore = datastore
        self.sealer = sealer
        with self.datastore.transaction(commit=True) as c:
            c.execute(SECRETS_DDL.format(secrets="payment_connection_secrets", uuid="TEXT"))
            c.execute(INBOX_DDL.format(inbox="payment_inbox", uuid="TEXT", blob="BLOB"))
            c.execute(
                "CREATE INDEX IF NOT EXISTS payment_inbox_unprocessed "
                "ON payment_inbox (received_at) WHERE processed_at IS NULL"
            )
        self._reseal()

    def _reseal(self) -> None:
        with self.datastore.transaction(commit=True) as c:
            c.execute("SELECT organization_id, code, secrets FROM payment_connection_secrets")
            stale = [row for row in c.fetchall() if self.sealer.needs_resealing(row[2])]
            for org, code, stored in stale:
                organization_id = UUID(org)
                secrets = _unseal(self.sealer, organization_id, code, stored)
                c.execute(
                    "UPDATE payment_connection_secrets SET secrets = ? "
                    "WHERE organization_id = ? AND code = ?",
                    (_seal(self.sealer, organization_id, code, secrets), org, code),
                )

    def put_secrets(
        self, organization_id: UUID, code: str, provider: str, secrets: Mapping[str, str]
    ) -> None:
        with self.datastore.transaction(commit=True) as c:
            c.execute(
                "INSERT INTO payment_connection_secrets VALUES (?, ?, ?, ?) ON CONFLICT "
                "(organization_id, code) DO UPDATE SET provider = excluded.provider, "
                "secrets = excluded.secrets",
                (
                    str(organization_id),
                    code,
                    provider,
                    _seal(self.sealer, organization_id, code, secrets),
                ),
            )

    def secrets(self, organization_id: UUID, code: str) -> dict[str, str] | None:
        with self.datastore.transaction(commit=False) as c:
            c.execute(
                "SELECT secrets FROM payment_connection_secrets "
                "WHERE organization_id = ? AND code = ?",
                (str(organization_id), code),
            )
            row = c.fetchone()
        return _unseal(self.sealer, organization_id, code, row[0]) if row else None

    def delete_secrets(self, organization_id: UUID, code: str) -> None:
        with self.datastore.transaction(commit=True) as c:
            c.execute(
                "DELETE FROM payment_connection_secrets WHERE organization_id = ? AND code = ?",
                (str(organization_id), code),
            )

    def connection_codes(self, organization_id: UUID) -> list[str]:
        with self.datastore.transaction(commit=False) as c:
            c.execute(
                "SELECT code FROM payment_connection_secrets WHERE organization_id = ? "
                "ORDER BY code",
                (str(organization_id),),
            )
            return [row[0] for row in c.fetchall()]

    def connections_with_code(self, provider: str, code: str) -> list[tuple[UUID, dict[str, str]]]:
        with self.datastore.transaction(commit=False) as c:
            c.execute(
                "SELECT organization_id, secrets FROM payment_connection_secrets "
                "WHERE provider = ? AND code = ?",
                (provider, code),
            )
            rows = c.fetchall()
        return [(UUID(org), _unseal(self.sealer, UUID(org), code, stored)) for org, stored in rows]

    def add_to_inbox(self, item: InboxItem) -> bool:
        with self.datastore.transaction(commit=True) as c:
            c.execute(
                f"INSERT INTO payment_inbox ({INBOX_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, NULL, 0, "
                "NULL) ON CONFLICT DO NOTHING RETURNING 1",
                (
                    str(item.organization_id),
                    item.connection_code,
                    item.event_id,
                    item.event_type,
                    item.payload,
                    item.received_at.astimezone(UTC).isoformat(),
                ),
            )
            return c.fetchone() is not None

    def unprocessed(self, limit: int) -> list[InboxItem]:
        with self.datastore.transaction(commit=False) as c:
            c.execute(
                f"SELECT {INBOX_COLUMNS} FROM payment_inbox WHERE processed_at IS NULL "
                "ORDER BY received_at LIMIT ?",
                (limit,),
            )
            return [_item(row) for row in c.fetchall()]

    def inbox_item(
        self, organization_id: UUID, connection_code: str, event_id: str
    ) -> InboxItem | None:
        with self.datastore.transaction(commit=False) as c:
            c.execute(
                f"SELECT {INBOX_COLUMNS} FROM payment_inbox WHERE organization_id = ? "
                "AND connection_code = ? AND event_id = ?",
                (str(organization_id), connection_code, event_id),
            )
            row = c.fetchone()
        return _item(row) if row else None

    def mark_processed(
        self, organization_id: UUID, connection_code: str, event_id: str, at: datetime
    ) -> None:
        with self.datastore.transaction(commit=True) as c:
            c.execute(
                "UPDATE payment_inbox SET processed_at = ? WHERE organization_id = ? "
                "AND connection_code = ? AND event_id = ? AND processed_at IS NULL",
                (at.astimezone(UTC).isoformat(), str(organization_id), connection_code, event_id),
            )

    def mark_failed(
        self, organization_id: UUID, connection_code: str, event_id: str, error: str
    ) -> None:
        with self.datastore.transaction(commit=True) as c:
            c.execute(
                "UPDATE payment_inbox SET attempts = attempts + 1, last_error = ? "
                "WHERE organization_id = ? AND connection_code = ? AND event_id = ?",
                (error, str(organization_id), connection_code, event_id),
            )


class PostgresPaymentStore:
    def __init__(self, datastore: PostgresDatastore, sealer: SecretSealer) -> None:
        self.datastore = datastore
        self.sealer = sealer
        schema = Identifier(datastore.schema)
        self.secrets_table = SQL("{0}.payment_connection_secrets").format(schema)
        self.inbox = SQL("{0}.payment_inbox").format(schema)
        with self.datastore.transaction(commit=True) as curs:
            curs.execute(
                SQL(SECRETS_DDL.format(secrets="{0}", uuid="uuid")).format(self.secrets_table)
            )
            curs.execute(
                SQL(INBOX_DDL.format(inbox="{0}", uuid="uuid", blob="bytea")).format(self.inbox)
            )
        self._reseal()

    def _reseal(self) -> None:
        with self.datastore.transaction(commit=True) as curs:
            curs.execute(
                SQL("SELECT organization_id, code, secrets FROM {0} FOR UPDATE").format(
                    self.secrets_table
                )
            )
            stale = [row for row in curs.fetchall() if self.sealer.needs_resealing(row["secrets"])]
            for row in stale:
                organization_id, code = UUID(str(row["organization_id"])), row["code"]
                secrets = _unseal(self.sealer, organization_id, code, row["secrets"])
                curs.execute(
                    SQL(
                        "UPDATE {0} SET secrets = %s WHERE organization_id = %s AND code = %s"
                    ).format(self.secrets_table),
                    (_seal(self.sealer, organization_id, code, secrets), organization_id, code),
                )

    def put_secrets(
        self, organization_id: UUID, code: str, provider: str, secrets: Mapping[str, str]
    ) -> None:
        with self.datastore.transaction(commit=True) as curs:
            curs.execute(
                SQL(
                    "INSERT INTO {0} VALUES (%s, %s, %s, %s) ON CONFLICT (organization_id, code) "
                    "DO UPDATE SET provider = excluded.provider, secrets = excluded.secrets"
                ).format(self.secrets_table),
                (
                    organization_id,
                    code,
                    provider,
                    _seal(self.sealer, organization_id, code, secrets),
                ),
            )

    def secrets(self, organization_id: UUID, code: str) -> dict[str, str] | None:
        with self.datastore.transaction(commit=False) as curs:
            curs.execute(
                SQL("SELECT secrets FROM {0} WHERE organization_id = %s AND code = %s").format(
                    self.secrets_table
                ),
                (organization_id, code),
            )
            row = curs.fetchone()
        return _unseal(self.sealer, organization_id, code, row["secrets"]) if row else None

    def delete_secrets(self, organization_id: UUID, code: str) -> None:
        with self.datastore.transaction(commit=True) as curs:
            curs.execute(
                SQL("DELETE FROM {0} WHERE organization_id = %s AND code = %s").format(
                    self.secrets_table
                ),
                (organization_id, code),
            )

    def connection_codes(self, organization_id: UUID) -> list[str]:
        with self.datastore.transaction(commit=False) as curs:
            curs.execute(
                SQL("SELECT code FROM {0} WHERE organization_id = %s ORDER BY code").format(
                    self.secrets_table
                ),
                (organization_id,),
            )
            return [row["code"] for row in curs.fetchall()]

    def connections_with_code(self, provider: str, code: str) -> list[tuple[UUID, dict[str, str]]]:
        with self.datastore.transaction(commit=False) as curs:
            curs.execute(
                SQL(
                    "SELECT organization_id, secrets FROM {0} WHERE provider = %s AND code = %s"
                ).format(self.secrets_table),
                (provider, code),
            )
            rows = curs.fetchall()
        return [
            (
                UUID(str(row["organization_id"])),
                _unseal(self.sealer, UUID(str(row["organization_id"])), code, row["secrets"]),
            )
            for row in rows
        ]

    def add_to_inbox(self, item: InboxItem) -> bool:
        with self.datastore.transaction(commit=True) as curs:
            curs.execute(
                SQL(
                    f"INSERT INTO {{0}} ({INBOX_COLUMNS}) VALUES (%s, %s, %s, %s, %s, %s, NULL, "
                    "0, NULL) ON CONFLICT DO NOTHING RETURNING 1"
                ).format(self.inbox),
                (
                    item.organization_id,
                    item.connection_code,
                    item.event_id,
                    item.event_type,
                    item.payload,
                    item.received_at.astimezone(UTC).isoformat(),
                ),
            )
            return curs.fetchone() is not None

    def _select(self, where: str, params: tuple[Any, ...]) -> list[InboxItem]:
        with self.datastore.transaction(commit=False) as curs:
            curs.execute(
                SQL(f"SELECT {INBOX_COLUMNS} FROM {{0}} {where}").format(self.inbox),
                params,
            )
            return [
                _item([row[c.strip()] for c in INBOX_COLUMNS.split(",")]) for row in curs.fetchall()
            ]

    def unprocessed(self, limit: int) -> list[InboxItem]:
        return self._select("WHERE processed_at IS NULL ORDER BY received_at LIMIT %s", (limit,))

    def inbox_item(
        self, organization_id: UUID, connection_code: str, event_id: str
    ) -> InboxItem | None:
        found = self._select(
            "WHERE organization_id = %s AND connection_code = %s AND event_id = %s",
            (organization_id, connection_code, event_id),
        )
        return found[0] if found else None

    def mark_processed(
        self, organization_id: UUID, connection_code: str, event_id: str, at: datetime
    ) -> None:
        with self.datastore.transaction(commit=True) as curs:
            curs.execute(
                SQL(
                    "UPDATE {0} SET processed_at = %s WHERE organization_id = %s "
                    "AND connection_code = %s AND event_id = %s AND processed_at IS NULL"
                ).format(self.inbox),
                (at.astimezone(UTC).isoformat(), organization_id, connection_code, event_id),
            )

    def mark_failed(
        self, organization_id: UUID, connection_code: str, event_id: str, error: str
    ) -> None:
        with self.datastore.transaction(commit=True) as curs:
            curs.execute(
                SQL(
                    "UPDATE {0} SET attempts = attempts + 1, last_error = %s "
                    "WHERE organization_id = %s AND connection_code = %s AND event_id = %s"
                ).format(self.inbox),
                (error, organization_id, connection_code, event_id),
            )
