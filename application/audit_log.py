"""The audit trail: who did what, when and from where, one hash-chained entry per mutating request.

Each entry stores sha256(previous entry's hash ‖ its canonical form), and the store keeps the
chain's head (last sequence and hash) beside it, so editing, deleting or reordering entries, or
cutting the tail, breaks the chain where it happened; `verify` names the first broken entry
(ADR 0016). The AuditLog port is implemented on every store by adapters/audit_log.py.
"""

import hashlib
import json
import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final, Protocol
from uuid import UUID

logger = logging.getLogger("tally.audit_log")

GENESIS_HASH: Final = "0" * 64  # The "previous hash" of the first entry.
VERIFY_BATCH: Final = 1_000
APPEND_BATCH_MAX: Final = 500  # Entries per transaction when requests arrive faster than commits.
FLUSH_TIMEOUT_S: Final = 10.0


@dataclass(frozen=True)
class AuditEntry:
    """One mutating request as it was answered."""

    id: UUID
    organization_id: UUID
    api_key_id: UUID | None
    method: str
    path: str
    resource_type: str | None  # Lago's resource name: "customer", "event", ...
    resource_key: str | None  # Its external_id, code, transaction_id or lago_id, when known.
    status_code: int
    client_address: str | None
    idempotency_key: str | None
    occurred_at: datetime  # When the request arrived (UTC).


@dataclass(frozen=True)
class ChainedEntry:
    sequence: int  # 1, 2, 3... without gaps, in the order entries were appended.
    entry: AuditEntry
    previous_hash: str
    hash: str


@dataclass(frozen=True)
class AuditFilter:
    occurred_from: datetime | None = None  # Included.
    occurred_to: datetime | None = None  # Included.
    api_key_id: UUID | None = None
    method: str | None = None
    status_code: int | None = None


@dataclass(frozen=True)
class ChainBreak:
    """The first entry where the chain does not hold, and why."""

    sequence: int
    entry_id: UUID | None
    reason: str


class AuditLog(Protocol):
    def append(self, entry: AuditEntry) -> ChainedEntry:
        """Chain the entry after the head, atomically, even against other processes."""

    def append_many(self, entries: Sequence[AuditEntry]) -> list[ChainedEntry]:
        """Chain the entries, in order, in one transaction."""

    def page(
        self, organization_id: UUID, filters: AuditFilter, page: int, per_page: int
    ) -> tuple[list[ChainedEntry], int]:
        """An organization's entries, newest first, and their total count."""

    def chain(self, after_sequence: int, limit: int) -> list[ChainedEntry]:
        """Entries of every organization in sequence order, as stored (for verification)."""

    def head(self) -> tuple[int, str]:
        """The last sequence appended and its hash, as the head records them."""


class AuditWriter:
    """Appends entries off the request path: the API submits each entry after its response and
    one thread writes them, many per transaction under load, so a keep-alive connection's next
    request never waits for the audit commit. Entries still queued when the process dies are
    lost, as an entry whose response was sent just before a crash always could be."""

    def __init__(self, log: AuditLog, batch_max: int = APPEND_BATCH_MAX) -> None:
        self.log = log
        self.batch_max = batch_max
        self._pending: list[AuditEntry] = []
        self._unwritten = 0  # Submitted and not yet written (or failed).
        self._condition = threading.Condition()
        self._thread: threading.Thread | None = None
        self._stopping = False

    def start(self) -> None:
        with self._condition:
            if self._thread is not None:
                return
            self._stopping = False
            self._thread = threading.Thread(target=self._run, name="audit-writer", daemon=True)
            self._thread.start()

    def stop(self, timeout_s: float = FLUSH_TIMEOUT_S) -> None:
        """Write what is queued, then end the thread."""
        with self._condition:
            thread, self._thread = self._thread, None
            self._stopping = True
            self._condition.notify_all()
        if thread is not None:
            thread.join(timeout_s)

    def submit(self, entry: AuditEntry) -> None:
        """Queue the entry; without a running thread, write it now."""
        with self._condition:
            if self._thread is not None:
                self._pending.append(entry)
                self._unwritten += 1
                self._condition.notify_all()
                return
        self._write([entry])

    def flush(self, timeout_s: float = FLUSH_TIMEOUT_S) -> bool:
        """Wait until every entry submitted so far is written; False on timeout."""
        with self._condition:
            return self._condition.wait_for(lambda: self._unwritten == 0, timeout_s)

    def _run(self) -> None:
        while True:
            with self._condition:
                self._condition.wait_for(lambda: self._pending or self._stopping)
                if not self._pending:
                    return  # Stopping, and everything is written.
                batch = self._pending[: self.batch_max]
                del self._pending[: self.batch_max]
            self._write(batch)
            with self._condition:
                self._unwritten -= len(batch)
                self._condition.notify_all()

    def _write(self, batch: list[AuditEntry]) -> None:
        try:
            self.log.append_many(batch)
        except Exception:
            # The responses are gone already; the failure must be visible to operators.
            logger.exception("Could not append %d entries to the audit log", len(batch))


def instant_text(instant: datetime) -> str:
    """The one text form of an instant in the log: stored, hashed and compared as text."""
    return instant.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_instant_text(text: str) -> datetime:
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)


def canonical(sequence: int, entry: AuditEntry) -> bytes:
    """The entry as hashed: sorted-key compact JSON of every field, the sequence included."""
    fields = {
        "sequence": sequence,
        "id": str(entry.id),
        "organization_id": str(entry.organization_id),
        "api_key_id": None if entry.api_key_id is None else str(entry.api_key_id),
        "method": entry.method,
        "path": entry.path,
        "resource_type": entry.resource_type,
        "resource_key": entry.resource_key,
        "status_code": entry.status_code,
        "client_address": entry.client_address,
        "idempotency_key": entry.idempotency_key,
        "occurred_at": instant_text(entry.occurred_at),
    }
    return json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def chain_hash(previous_hash: str, sequence: int, entry: AuditEntry) -> str:
    return hashlib.sha256(previous_hash.encode() + canonical(sequence, entry)).hexdigest()


def verify(log: AuditLog, batch: int = VERIFY_BATCH) -> tuple[int, ChainBreak | None]:
    """Walk the whole chain: (entries checked, the first break or None)."""
    expected_sequence, previous_hash = 1, GENESIS_HASH
    checked = 0
    while True:
        entries = log.chain(expected_sequence - 1, batch)
        for chained in entries:
            entry_id = chained.entry.id
            if chained.sequence != expected_sequence:
                return checked, ChainBreak(
                    chained.sequence,
                    entry_id,
                    f"entries {expected_sequence} to {chained.sequence - 1} are missing",
                )
            if chained.previous_hash != previous_hash:
                return checked, ChainBreak(
                    chained.sequence, entry_id, "its previous hash is not the previous entry's hash"
                )
            if chain_hash(previous_hash, chained.sequence, chained.entry) != chained.hash:
                return checked, ChainBreak(
                    chained.sequence, entry_id, "its content does not match its hash (edited)"
                )
            checked += 1
            expected_sequence, previous_hash = chained.sequence + 1, chained.hash
        if len(entries) < batch:
            break
    head_sequence, head_hash = log.head()
    if head_sequence != expected_sequence - 1 or head_hash != previous_hash:
        return checked, ChainBreak(
            expected_sequence,
            None,
            f"the head records entry {head_sequence} ({head_hash[:12]}…), the chain ends at "
            f"entry {expected_sequence - 1}: entries were removed or the head was edited",
        )
    return checked, None


__all__ = [
    "GENESIS_HASH",
    "AuditEntry",
    "AuditFilter",
    "AuditLog",
    "AuditWriter",
    "ChainBreak",
    "ChainedEntry",
    "canonical",
    "chain_hash",
    "instant_text",
    "parse_instant_text",
    "verify",
]
