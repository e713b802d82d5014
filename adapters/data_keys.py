"""Per-customer data keys (AES-256-GCM) on SQLite, PostgreSQL and memory: the PersonalDataKeys
port of application/personal_data.py.

A subject (a customer) has at most one key at a time, in a table of its own; erasure deletes its
rows. The ciphertext is nonce ‖ AES-GCM(plaintext), authenticated with the subject's id and the
key's id, so a sealed value cannot be moved to another customer. On SQLite the deletion zeroes
the freed bytes (secure_delete) and truncates the write-ahead log; on PostgreSQL the row's bytes
stay in the table's pages until reused, and in base backups and WAL archives (ADR 0017).
"""

import os
import threading
from uuid import UUID, uuid4

import msgspec
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from eventsourcing.postgres import PostgresDatastore
from eventsourcing.sqlite import SQLiteDatastore
from psycopg.sql import SQL, Identifier

from application.personal_data import (
    SEALED,
    PersonalDataKeys,
    seal_customer_objects,
    unseal_customer_objects,
)

KEY_BYTES = 32  # AES-256.
NONCE_BYTES = 12  # GCM's standard nonce; random, and a key seals few values (one customer's).


def _associated_data(subject_id: UUID, key_id: str) -> bytes:
    return subject_id.bytes + key_id.encode()


class _AesGcmKeys:
    """The cipher; subclasses keep the keys."""

    def encrypt(self, subject_id: UUID, plaintext: bytes) -> tuple[str, bytes]:
        key_id, key = self._current_key(subject_id)
        nonce = os.urandom(NONCE_BYTES)
        sealed = AESGCM(key).encrypt(nonce, plaintext, _associated_data(subject_id, key_id))
        return key_id, nonce + sealed

    def encrypt_existing(self, subject_id: UUID, plaintext: bytes) -> tuple[str, bytes] | None:
        """Like encrypt, but None (never a new key) when the subject has no key: erased."""
        found = self._subject_key(subject_id)
        if found is None:
            return None
        key_id, key = found
        nonce = os.urandom(NONCE_BYTES)
        sealed = AESGCM(key).encrypt(nonce, plaintext, _associated_data(subject_id, key_id))
        return key_id, nonce + sealed

    def decrypt(self, key_id: str, subject_id: UUID, ciphertext: bytes) -> bytes | None:
        found = self._key(key_id)
        if found is None:
            return None  # Erased.
        owner, key = found
        assert owner == subject_id, (key_id, owner, subject_id)
        nonce, sealed = ciphertext[:NONCE_BYTES], ciphertext[NONCE_BYTES:]
        # A wrong tag is corrupt storage, not erasure: InvalidTag propagates.
        return AESGCM(key).decrypt(nonce, sealed, _associated_data(subject_id, key_id))

    def _current_key(self, subject_id: UUID) -> tuple[str, bytes]:
        raise NotImplementedError

    def _key(self, key_id: str) -> tuple[UUID, bytes] | None:
        raise NotImplementedError

    def _subject_key(self, subject_id: UUID) -> tuple[str, bytes] | None:
        raise NotImplementedError


class MemoryDataKeys(_AesGcmKeys):
    def __init__(self) -> None:
        self._keys: dict[str, tuple[UUID, bytes]] = {}
        self._current: dict[UUID, str] = {}
        self._lock = threading.Lock()

    def _current_key(self, subject_id: UUID) -> tuple[str, bytes]:
        with self._lock:
            key_id = self._current.get(subject_id)
            if key_id is None:
                key_id = self._current[subject_id] = uuid4().hex
                self._keys[key_id] = (subject_id, AESGCM.generate_key(KEY_BYTES * 8))
            return key_id, self._keys[key_id][1]

    def _key(self, key_id: str) -> tuple[UUID, bytes] | None:
        with self._lock:
            return self._keys.get(key_id)

    def _subject_key(self, subject_id: UUID) -> tuple[str, bytes] | None:
        with self._lock:
            key_id = self._current.get(subject_id)
            return None if key_id is None else (key_id, self._keys[key_id][1])

    def erase(self, subject_id: UUID) -> int:
        with self._lock:
            doomed = [k for k, (owner, _) in self._keys.items() if owner == subject_id]
            for key_id in doomed:
                del self._keys[key_id]
            self._current.pop(subject_id, None)
            return len(doomed)


class SQLiteDataKeys(_AesGcmKeys):
    def __init__(self, datastore: SQLiteDatastore) -> None:
        self.datastore = datastore
        with self.datastore.transaction(commit=True) as c:
            c.execute(
                "CREATE TABLE IF NOT EXISTS personal_data_keys (key_id TEXT PRIMARY KEY, "
                "subject_id TEXT NOT NULL UNIQUE, key BLOB NOT NULL)"
            )

    def _current_key(self, subject_id: UUID) -> tuple[str, bytes]:
        with self.datastore.transaction(commit=True) as c:
            c.execute(
                "INSERT INTO personal_data_keys VALUES (?, ?, ?) ON CONFLICT DO NOTHING",
                (uuid4().hex, str(subject_id), AESGCM.generate_key(KEY_BYTES * 8)),
            )
            c.execute(
                "SELECT key_id, key FROM personal_data_keys WHERE subject_id = ?",
                (str(subject_id),),
            )
            row = c.fetchone()
        return str(row[0]), bytes(row[1])

    def _key(self, key_id: str) -> tuple[UUID, bytes] | None:
        with self.datastore.transaction(commit=False) as c:
            c.execute("SELECT subject_id, key FROM personal_data_keys WHERE key_id = ?", (key_id,))
            row = c.fetchone()
        return None if row is None else (UUID(row[0]), bytes(row[1]))

    def _subject_key(self, subject_id: UUID) -> tuple[str, bytes] | None:
        with self.datastore.transaction(commit=False) as c:
            c.execute(
                "SELECT key_id, key FROM personal_data_keys WHERE subject_id = ?",
                (str(subject_id),),
            )
            row = c.fetchone()
        return None if row is None else (str(row[0]), bytes(row[1]))

    def erase(self, subject_id: UUID) -> int:
        with self.datastore.transaction(commit=True) as c:
            # Zero the freed bytes in the pages, instead of leaving the key in free space.
            c.execute("PRAGMA secure_delete = ON")
            c.execute("DELETE FROM personal_data_keys WHERE subject_id = ?", (str(subject_id),))
            c.execute("SELECT changes()")
            deleted = int(c.fetchone()[0])
        if not self.datastore.pool.is_sqlite_memory_mode:
            # Copy the zeroed pages into the file and empty the write-ahead log, whose older
            # frames still hold the page with the key. Best effort: a reader may hold it back.
            with self.datastore.get_connection(commit=True) as connection:
                connection.cursor().execute("PRAGMA wal_checkpoint(TRUNCATE)")
        return deleted


class PostgresDataKeys(_AesGcmKeys):
    def __init__(self, datastore: PostgresDatastore) -> None:
        self.datastore = datastore
        self.table = SQL("{0}.personal_data_keys").format(Identifier(datastore.schema))
        with self.datastore.transaction(commit=True) as curs:
            curs.execute(
                SQL(
                    "CREATE TABLE IF NOT EXISTS {0} (key_id text PRIMARY KEY, "
                    "subject_id uuid NOT NULL UNIQUE, key bytea NOT NULL)"
                ).format(self.table)
            )

    def _current_key(self, subject_id: UUID) -> tuple[str, bytes]:
        with self.datastore.transaction(commit=True) as curs:
            curs.execute(
                SQL("INSERT INTO {0} VALUES (%s, %s, %s) ON CONFLICT DO NOTHING").format(
                    self.table
                ),
                (uuid4().hex, subject_id, AESGCM.generate_key(KEY_BYTES * 8)),
            )
            curs.execute(
                SQL("SELECT key_id, key FROM {0} WHERE subject_id = %s").format(self.table),
                (subject_id,),
            )
            row = curs.fetchone()
        assert row is not None
        return str(row["key_id"]), bytes(row["key"])

    def _key(self, key_id: str) -> tuple[UUID, bytes] | None:
        with self.datastore.transaction(commit=False) as curs:
            curs.execute(
                SQL("SELECT subject_id, key FROM {0} WHERE key_id = %s").format(self.table),
                (key_id,),
            )
            row = curs.fetchone()
        return None if row is None else (row["subject_id"], bytes(row["key"]))

    def _subject_key(self, subject_id: UUID) -> tuple[str, bytes] | None:
        with self.datastore.transaction(commit=False) as curs:
            curs.execute(
                SQL("SELECT key_id, key FROM {0} WHERE subject_id = %s").format(self.table),
                (subject_id,),
            )
            row = curs.fetchone()
        return None if row is None else (str(row["key_id"]), bytes(row["key"]))

    def erase(self, subject_id: UUID) -> int:
        with self.datastore.transaction(commit=True) as curs:
            curs.execute(
                SQL("DELETE FROM {0} WHERE subject_id = %s").format(self.table), (subject_id,)
            )
            return int(curs.rowcount)


# Stored JSON documents holding customer objects: webhook payloads in the outbox, responses kept
# for Idempotency-Key replays (ADR 0023).


def seal_json(keys: PersonalDataKeys, document: bytes) -> bytes:
    """The document with its customers' personal values sealed with their existing keys (or
    ERASED, for a customer whose key is gone), re-encoded only if it held any."""
    if b'"customer"' not in document:
        return document  # Cheap: most documents (usage events, ...) hold no customer.
    try:
        parsed = msgspec.json.decode(document)
    except msgspec.DecodeError:
        return document
    if not seal_customer_objects(parsed, keys.encrypt_existing):
        return document
    return msgspec.json.encode(parsed)


def unseal_json(keys: PersonalDataKeys, document: bytes) -> bytes:
    """The inverse of seal_json: clear values, or ERASED once the customer's key is deleted."""
    if SEALED.encode() not in document:
        return document
    parsed = msgspec.json.decode(document)
    if not unseal_customer_objects(parsed, keys.decrypt):
        return document
    return msgspec.json.encode(parsed)
