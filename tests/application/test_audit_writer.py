"""The audit writer: entries leave the request path and are chained in order, many per commit."""

import logging
import threading
from collections.abc import Sequence
from datetime import UTC, datetime
from uuid import uuid4

import pytest

from adapters.audit_log import MemoryAuditLog
from application.audit_log import AuditEntry, AuditFilter, AuditWriter, ChainedEntry, verify
from tests.builders import ORG_ID


def entry(n: int) -> AuditEntry:
    return AuditEntry(
        id=uuid4(),
        organization_id=ORG_ID,
        api_key_id=None,
        method="POST",
        path="/api/v1/events",
        resource_type="event",
        resource_key=f"t{n}",
        status_code=200,
        client_address=None,
        idempotency_key=None,
        occurred_at=datetime(2026, 3, 1, tzinfo=UTC),
    )


class SlowLog(MemoryAuditLog):
    """Holds the first commit until released, as a slow database would."""

    def __init__(self) -> None:
        super().__init__()
        self.release = threading.Event()
        self.batches: list[int] = []

    def append_many(self, entries: Sequence[AuditEntry]) -> list[ChainedEntry]:
        self.release.wait(10)
        self.batches.append(len(entries))
        return super().append_many(entries)


def test_entries_queued_while_a_commit_runs_share_the_next_one() -> None:
    log = SlowLog()
    writer = AuditWriter(log, batch_max=50)
    writer.start()
    try:
        for n in range(120):
            writer.submit(entry(n))  # Never waits for the database.
        assert not writer.flush(0.05)
        log.release.set()
        assert writer.flush()
    finally:
        writer.stop()
    assert sum(log.batches) == 120 and len(log.batches) < 120 and max(log.batches) <= 50
    assert verify(log) == (120, None)
    entries, _ = log.page(ORG_ID, AuditFilter(), 1, 1000)
    assert [e.entry.resource_key for e in reversed(entries)] == [f"t{n}" for n in range(120)]


def test_stopping_writes_what_is_queued_and_a_stopped_writer_writes_at_once() -> None:
    log = MemoryAuditLog()
    writer = AuditWriter(log)
    writer.start()
    for n in range(10):
        writer.submit(entry(n))
    writer.stop()
    assert log.head()[0] == 10
    writer.submit(entry(10))
    assert log.head()[0] == 11


def test_a_failed_commit_is_logged_and_does_not_stop_the_writer(
    caplog: pytest.LogCaptureFixture,
) -> None:
    class FailingOnce(MemoryAuditLog):
        failed = False

        def append_many(self, entries: Sequence[AuditEntry]) -> list[ChainedEntry]:
            if not self.failed:
                self.failed = True
                raise RuntimeError("database gone")
            return super().append_many(entries)

    log = FailingOnce()
    writer = AuditWriter(log)
    writer.start()
    try:
        with caplog.at_level(logging.ERROR, logger="tally.audit_log"):
            writer.submit(entry(1))
            assert writer.flush()
        writer.submit(entry(2))
        assert writer.flush()
    finally:
        writer.stop()
    assert "Could not append 1 entries to the audit log" in caplog.text
    assert log.head()[0] == 1
