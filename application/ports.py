"""Protocols for what lies outside the use cases; adapters implement them."""

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol
from uuid import UUID

from eventsourcing.persistence import StoredEvent


@dataclass(frozen=True)
class StoredResponse:
    status_code: int
    body: bytes


class IdempotencyStore(Protocol):
    """Remembers the first response to each (organization, Idempotency-Key)."""

    def reserve(self, organization_id: UUID, key: str, request_hash: str) -> StoredResponse | None:
        """Claim the key, or return the stored response of an identical earlier request.

        Raises IdempotencyKeyReusedError for another body and IdempotencyKeyInProgressError
        while the first request runs.
        """

    def complete(self, organization_id: UUID, key: str, response: StoredResponse) -> None: ...

    def release(self, organization_id: UUID, key: str) -> None:
        """Forget a claim whose request failed, so that a retry runs again."""


@dataclass(frozen=True)
class IndexEntry:
    """One resource in the organization-scoped index that serves list queries."""

    kind: str
    organization_id: UUID
    aggregate_id: UUID
    key: str
    parent_key: str | None
    status: str
    created_at: datetime


@dataclass(frozen=True)
class IndexStatus:
    """A change of an indexed resource's status."""

    aggregate_id: UUID
    status: str


class EventsReader(Protocol):
    """Many aggregates' stored events in one read, by aggregate and version."""

    def select_many(self, originator_ids: Sequence[UUID]) -> list[StoredEvent]: ...


class Clock(Protocol):
    def now(self) -> datetime: ...


class IndexReader(Protocol):
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
        """Aggregate ids of one page, newest first, and the total count."""
