"""The mechanics every use case shares: load, decide, save with retries; scoped reads; pages."""

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any, TypeVar
from uuid import UUID

from eventsourcing.application import AggregateNotFoundError, Application, project_aggregate
from eventsourcing.domain import BaseAggregate, DomainEventProtocol
from eventsourcing.persistence import (
    InfrastructureFactory,
    IntegrityError,
    JSONTranscoder,
    Transcoding,
)

from application.errors import AlreadyExistsError, ConcurrencyConflictError, NotFoundError
from application.ports import EventsReader
from application.projections import CatchUp, IndexView, MemoryIndexView, ResourceIndexProjection
from domain.limits import COMMAND_RETRIES_MAX

A = TypeVar("A", bound=BaseAggregate[UUID])
T = TypeVar("T")


@dataclass(frozen=True)
class HistoryEntry:
    """One recorded event of an aggregate, as the history endpoints show it."""

    version: int
    type: str
    recorded_at: datetime
    changes: dict[str, Any]


class DateAsISO(Transcoding):
    """Local calendar dates (issuing dates) as ISO strings."""

    type = date
    name = "date_iso"

    def encode(self, obj: date) -> str:
        return obj.isoformat()

    def decode(self, data: str) -> date:
        return date.fromisoformat(data)


class BillingBase(Application[UUID]):
    """Billing's foundation; the use cases are mixins on it (application/billing.py)."""

    name = "tally"  # Environment variables may be prefixed: TALLY_SQLITE_DBNAME, ...

    def __init__(
        self,
        env: Mapping[str, str] | None = None,
        *,
        index_view: Callable[[InfrastructureFactory[Any]], IndexView] | None = None,
    ) -> None:
        """index_view builds the resource index on this application's store (default: memory)."""
        super().__init__(env)
        self.now: Callable[[], datetime] = lambda: datetime.now(UTC)  # Tests set a clock.
        view = index_view(self.factory) if index_view else MemoryIndexView()
        self.index = ResourceIndexProjection(view=view)
        self.catch_up = CatchUp(self, self.index)
        self._organization_by_key_hash: dict[str, UUID] = {}
        self.events_reader: EventsReader | None = None  # Set where the store has one.

    def register_transcodings(self, transcoder: JSONTranscoder) -> None:
        super().register_transcodings(transcoder)
        transcoder.register(DateAsISO())

    # Health.

    def is_store_reachable(self) -> bool:
        self.recorder.max_notification_id()
        return True

    # Shared mechanics.

    def _command(self, resource: str, key: object, decide: Callable[[], A]) -> A:
        """Load, let the aggregate decide, save; on a concurrent write reload and decide again."""
        aggregate: A = self._command_many(resource, key, lambda: [decide()])[0]
        return aggregate

    def _create_new(self, aggregate: A, field: str, value: object) -> A:
        """Save a new aggregate; its natural-key id makes a repeated or racing create collide."""
        try:
            self.save(aggregate)
        except IntegrityError:
            raise AlreadyExistsError(field, value) from None
        self.catch_up()
        return aggregate

    def _command_many(
        self, resource: str, key: object, decide: Callable[[], list[Any]]
    ) -> list[Any]:
        """Like _command, for a decision that changes several aggregates in one transaction."""
        for _ in range(COMMAND_RETRIES_MAX):
            aggregates = decide()
            try:
                self.save(*aggregates)
            except IntegrityError:
                continue
            self.catch_up()
            return aggregates
        raise ConcurrencyConflictError(resource, key)

    def _all(
        self, cls: type[A], kind: str, organization_id: UUID, parent_key: str | None = None
    ) -> list[A]:
        """Every indexed resource of a kind (newest first), for filters the index cannot apply."""
        self.catch_up()
        aggregate_ids, _ = self.index.view.page(
            organization_id, kind, 1, 10**9, parent_key=parent_key
        )
        loaded = self.load_many(aggregate_ids)
        found = [loaded[aggregate_id] for aggregate_id in aggregate_ids]
        assert all(isinstance(aggregate, cls) for aggregate in found), cls
        return found

    def load_many(self, aggregate_ids: Sequence[UUID]) -> dict[UUID, Any]:
        """The aggregates that exist of these ids, in one read where the store can."""
        if self.events_reader is None:
            loaded: dict[UUID, Any] = {}
            for aggregate_id in aggregate_ids:
                try:
                    loaded[aggregate_id] = self.repository.get(aggregate_id)
                except AggregateNotFoundError:
                    continue
            return loaded
        by_id: dict[UUID, list[Any]] = {}
        for stored in self.events_reader.select_many(aggregate_ids):
            event = self.mapper.to_domain_event(stored)
            by_id.setdefault(event.originator_id, []).append(event)
        return {
            aggregate_id: project_aggregate(None, events) for aggregate_id, events in by_id.items()
        }

    def _get(
        self,
        cls: type[A],
        aggregate_id: UUID,
        organization_id: UUID,
        missing: NotFoundError,
        version: int | None = None,
    ) -> A:
        try:
            aggregate: BaseAggregate[UUID] = self.repository.get(aggregate_id, version=version)
        except AggregateNotFoundError:
            raise missing from None
        if not isinstance(aggregate, cls):
            raise missing
        # A lago_id from another organization must look exactly like a missing one.
        if getattr(aggregate, "organization_id", aggregate.id) != organization_id:
            raise missing
        return aggregate

    def _page(
        self,
        cls: type[A],
        kind: str,
        organization_id: UUID,
        page: int,
        per_page: int,
        statuses: list[str],
        parent_key: str | None = None,
    ) -> tuple[list[A], int]:
        self.catch_up()  # Read your writes, also those made by another process.
        aggregate_ids, total = self.index.view.page(
            organization_id, kind, page, per_page, parent_key=parent_key, statuses=statuses
        )
        aggregates: list[A] = []
        for aggregate_id in aggregate_ids:
            loaded: BaseAggregate[UUID] = self.repository.get(aggregate_id)
            assert isinstance(loaded, cls), loaded
            aggregates.append(loaded)
        return aggregates, total


def history_entry(domain_event: DomainEventProtocol[UUID]) -> HistoryEntry:
    changes = {
        k: v
        for k, v in domain_event.__dict__.items()
        if k not in ("originator_id", "originator_version", "timestamp", "originator_topic")
    }
    for nested in ("fields", "changes"):  # Show the changed fields themselves, not a wrapper.
        if isinstance(changes.get(nested), dict):
            changes.update(changes.pop(nested))
    return HistoryEntry(
        version=domain_event.originator_version,
        type=type(domain_event).__qualname__,
        recorded_at=getattr(domain_event, "timestamp"),  # noqa: B009 (not in the Protocol)
        changes=changes,
    )
