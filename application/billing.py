"""Billing: the one eventsourcing Application; a method per command or query."""

from collections.abc import Mapping
from typing import Any
from uuid import UUID

from eventsourcing.application import AggregateNotFoundError
from eventsourcing.persistence import IntegrityError

from application.base import BillingBase, HistoryEntry, history_entry
from application.catalog import CatalogCommands
from application.errors import AlreadyExistsError, NotFoundError
from application.plans import PlanCommands
from application.subscriptions import SubscriptionCommands
from domain import ids
from domain.customer import Customer
from domain.organization import ApiKey, Organization, api_key_hash, new_api_key

__all__ = ["Billing", "HistoryEntry"]


class Billing(SubscriptionCommands, PlanCommands, CatalogCommands, BillingBase):
    name = "tally"  # Stable: it names the PostgreSQL tables and the environment prefix.

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
