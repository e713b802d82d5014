"""Billing: the one eventsourcing Application; a method per command or query."""

from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any
from uuid import UUID

from eventsourcing.application import AggregateNotFoundError
from eventsourcing.persistence import InfrastructureFactory, IntegrityError, Mapper

from application.base import BillingBase, HistoryEntry, history_entry
from application.catalog import CatalogCommands
from application.errors import AlreadyExistsError, NotFoundError
from application.keys import ApiKeyCommands
from application.personal_data import PersonalDataCommands, PersonalDataKeys, PersonalDataMapper
from application.plans import PlanCommands
from application.projections import IndexView
from application.subscriptions import SubscriptionCommands
from application.vat import EuVatCommands
from domain import ids
from domain.customer import Customer
from domain.organization import ApiKey, Organization, api_key_hash, new_api_key

__all__ = ["Billing", "HistoryEntry"]


class Billing(
    ApiKeyCommands,
    PersonalDataCommands,
    EuVatCommands,
    SubscriptionCommands,
    PlanCommands,
    CatalogCommands,
    BillingBase,
):
    name = "tally"  # Stable: it names the PostgreSQL tables and the environment prefix.

    def __init__(
        self,
        env: Mapping[str, str] | None = None,
        *,
        index_view: Callable[[InfrastructureFactory[Any]], IndexView] | None = None,
        personal_data: Callable[[InfrastructureFactory[Any]], PersonalDataKeys] | None = None,
    ) -> None:
        """personal_data builds the data-key store on this application's store; without it
        (bare unit tests) customer events are stored unsealed (application/personal_data.py)."""
        self._personal_data_factory = personal_data
        self.personal_data = None
        super().__init__(env, index_view=index_view)

    def construct_mapper(self) -> Mapper[UUID]:
        """The library's mapper, sealing personal data with the customers' keys."""
        if self._personal_data_factory is not None:
            self.personal_data = self._personal_data_factory(self.factory)
        return PersonalDataMapper(
            transcoder=self.construct_transcoder(),
            compressor=self.factory.compressor(),
            cipher=self.factory.cipher(),
            keys=self.personal_data,
        )

    # Organizations and API keys.

    def create_organization(self, name: str) -> tuple[Organization, str]:
        """A new organization and its first API key, which is returned once and never stored."""
        organization = Organization.create(name)
        api_key = new_api_key()
        key_hash = api_key_hash(api_key)
        organization.issue_api_key(key_hash, self.now())
        try:
            self.save(organization, ApiKey.create(organization.id, key_hash))
        except IntegrityError:
            raise AlreadyExistsError("name", organization.name) from None
        return organization, api_key

    def issue_api_key(
        self,
        organization_id: UUID,
        *,
        scope: str = "full",
        expires_at: datetime | None = None,
    ) -> str:
        """Another key of the organization (application/keys.py); returned once, never stored."""
        _, api_key = self.create_api_key(organization_id, scope=scope, expires_at=expires_at)
        return api_key

    def organization(self, organization_id: UUID) -> Organization:
        return self._get(
            Organization,
            organization_id,
            organization_id,
            NotFoundError("organization", organization_id),
        )

    def organization_ids(self) -> list[UUID]:
        """Every organization (the billing run visits them all); each indexes itself."""
        self.catch_up()
        return self.index.view.aggregate_ids_of_kind("organization")

    def find_organization(self, name: str) -> Organization | None:
        try:
            organization: Organization = self.repository.get(ids.organization_id(name))
        except AggregateNotFoundError:
            return None
        return organization

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
