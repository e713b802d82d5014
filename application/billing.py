"""Billing: the one eventsourcing Application; a method per command or query."""

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar
from uuid import UUID

from eventsourcing.application import AggregateNotFoundError, Application
from eventsourcing.domain import BaseAggregate, DomainEventProtocol
from eventsourcing.persistence import InfrastructureFactory, IntegrityError

from application.errors import AlreadyExistsError, ConcurrencyConflictError, NotFoundError
from application.projections import CatchUp, IndexView, MemoryIndexView, ResourceIndexProjection
from domain import ids
from domain.customer import Customer
from domain.limits import COMMAND_RETRIES_MAX
from domain.organization import ApiKey, Organization, api_key_hash, new_api_key

A = TypeVar("A", bound=BaseAggregate[UUID])
T = TypeVar("T")


@dataclass(frozen=True)
class HistoryEntry:
    """One recorded event of an aggregate, as the history endpoints show it."""

    version: int
    type: str
    recorded_at: datetime
    changes: dict[str, Any]


class Billing(Application[UUID]):
    name = "tally"  # Environment variables may be prefixed: TALLY_SQLITE_DBNAME, ...

    def __init__(
        self,
        env: Mapping[str, str] | None = None,
        *,
        index_view: Callable[[InfrastructureFactory[Any]], IndexView] | None = None,
    ) -> None:
        """index_view builds the resource index on this application's store (default: memory)."""
        super().__init__(env)
        view = index_view(self.factory) if index_view else MemoryIndexView()
        self.index = ResourceIndexProjection(view=view)
        self.catch_up = CatchUp(self, self.index)
        self._organization_by_key_hash: dict[str, UUID] = {}

    # Organizations and API keys.

    def create_organization(self, name: str) -> tuple[Organization, str]:
        """A new organization and its first API key, which is returned once and never stored."""
        organization = Organization.create(name)
        api_key = new_api_key()
        key_hash = api_key_hash(api_key)
        organization.issue_api_key(key_hash)
        try:
            self.save(organization, ApiKey.create(organization.id, key_hash))
        except IntegrityError:
            raise AlreadyExistsError("name", organization.name) from None
        return organization, api_key

    def issue_api_key(self, organization_id: UUID) -> str:
        organization = self.organization(organization_id)
        api_key = new_api_key()
        key_hash = api_key_hash(api_key)
        organization.issue_api_key(key_hash)
        self.save(organization, ApiKey.create(organization.id, key_hash))
        return api_key

    def organization(self, organization_id: UUID) -> Organization:
        return self._get(
            Organization,
            organization_id,
            organization_id,
            NotFoundError("organization", organization_id),
        )

    def find_organization(self, name: str) -> Organization | None:
        try:
            organization: Organization = self.repository.get(ids.organization_id(name))
        except AggregateNotFoundError:
            return None
        return organization

    def organization_for_api_key(self, api_key: str) -> UUID | None:
        """The organization that owns this key, or None; keys are looked up by their hash."""
        key_hash = api_key_hash(api_key)
        organization_id = self._organization_by_key_hash.get(key_hash)
        if organization_id is None:
            try:
                record: ApiKey = self.repository.get(ids.api_key_index_id(key_hash))
            except AggregateNotFoundError:
                return None
            organization_id = self._organization_by_key_hash[key_hash] = record.organization_id
        return organization_id

    # Customers.

    def upsert_customer(
        self, organization_id: UUID, external_id: str, values: Mapping[str, Any]
    ) -> Customer:
        """Lago's POST /customers: create the customer, or update the one with this external_id."""

        def decide() -> Customer:
            try:
                customer: Customer = self.repository.get(
                    ids.customer_id(organization_id, external_id)
                )
            except AggregateNotFoundError:
                return Customer.create(organization_id, external_id, values)
            customer.upsert(values)
            return customer

        return self._command("customer", external_id, decide)

    def customer(self, organization_id: UUID, external_id: str) -> Customer:
        customer = self._get(
            Customer,
            ids.customer_id(organization_id, external_id),
            organization_id,
            NotFoundError("customer", external_id),
        )
        if customer.deleted:
            raise NotFoundError("customer", external_id)
        return customer

    def customers(
        self, organization_id: UUID, page: int, per_page: int
    ) -> tuple[list[Customer], int]:
        return self._page(Customer, "customer", organization_id, page, per_page, ["active"])

    def delete_customer(self, organization_id: UUID, external_id: str) -> Customer:
        def decide() -> Customer:
            customer = self.customer(organization_id, external_id)
            customer.delete()
            return customer

        return self._command("customer", external_id, decide)

    def customer_history(self, organization_id: UUID, external_id: str) -> list[HistoryEntry]:
        customer_id = self._get(
            Customer,
            ids.customer_id(organization_id, external_id),
            organization_id,
            NotFoundError("customer", external_id),
        ).id
        return [history_entry(e) for e in self.events.get(customer_id)]

    # Health.

    def is_store_reachable(self) -> bool:
        self.recorder.max_notification_id()
        return True

    # Shared mechanics.

    def _command(self, resource: str, key: object, decide: Callable[[], A]) -> A:
        """Load, let the aggregate decide, save; on a concurrent write reload and decide again."""
        for _ in range(COMMAND_RETRIES_MAX):
            aggregate = decide()
            try:
                self.save(aggregate)
            except IntegrityError:
                continue  # Another request created or changed it first.
            self.catch_up()
            return aggregate
        raise ConcurrencyConflictError(resource, key)

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
