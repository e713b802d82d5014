"""Lago's webhook bodies, rendered with the REST API's objects from the aggregate at its event.

Everything a payload shows is read as it was at the event's instant (the aggregate at the
event's version, the others at their last version recorded by then, and `now` for computed
statuses), so a replay of the log renders the same bytes.
"""

from datetime import datetime
from typing import Any, cast
from uuid import UUID

import msgspec
from eventsourcing.application import AggregateNotFoundError

from api.controllers.credit_notes import _Taxes, credit_note_object
from api.controllers.customers import customer_object
from api.controllers.invoices import _Lookup, invoice_object
from api.controllers.subscriptions import subscription_object
from application.billing import Billing
from application.webhooks import Notice
from domain.credit_note import CreditNote
from domain.customer import Customer
from domain.invoice import Invoice
from domain.subscription import Subscription


class _AsOf:
    """Billing as seen at an instant: `now()` is the instant; everything else is Billing's."""

    def __init__(self, billing: Billing, at: datetime) -> None:
        self._billing = billing
        self._at = at

    def now(self) -> datetime:
        return self._at

    def __getattr__(self, name: str) -> Any:
        return getattr(self._billing, name)


def aggregate_at(billing: Billing, aggregate_id: UUID, at: datetime) -> Any:
    """The aggregate as its events recorded up to the instant made it; None before it existed."""
    version = 0
    for domain_event in billing.events.get(aggregate_id):
        if getattr(domain_event, "timestamp") > at:  # noqa: B009 (not in the Protocol)
            break
        version = domain_event.originator_version
    if version == 0:
        return None
    try:
        return billing.repository.get(aggregate_id, version=version)
    except AggregateNotFoundError:
        return None


class _LookupAt(_Lookup):
    """The invoice's lookups (customer, subscriptions, organization) as of an instant."""

    def __init__(self, billing: Billing, organization_id: UUID, at: datetime) -> None:
        super().__init__(billing, organization_id)
        self.at = at

    def _load(self, aggregate_id: UUID) -> Any:
        if aggregate_id not in self._cache:
            found = aggregate_at(self.billing, aggregate_id, self.at)
            # A catalog object created later (it cannot be) would be shown as it is now.
            self._cache[aggregate_id] = found if found is not None else super()._load(aggregate_id)
        return self._cache[aggregate_id]


class WebhookPayloads:
    """The PayloadRenderer: {"webhook_type", "object_type", "organization_id", <object>}."""

    def __init__(self, api_url: str) -> None:
        self.api_url = api_url  # The invoices' file_url points at the public API.

    def __call__(self, billing: Billing, notice: Notice) -> bytes:
        as_of = cast(Billing, _AsOf(billing, notice.at))
        body = {
            "webhook_type": notice.webhook_type,
            "object_type": notice.object_type,
            "organization_id": str(notice.organization_id),
            notice.object_type: self._object(as_of, notice),
        }
        return msgspec.json.encode(body)

    def _object(self, billing: Billing, notice: Notice) -> Any:
        aggregate = notice.aggregate
        if isinstance(aggregate, Customer):
            return customer_object(aggregate)
        if isinstance(aggregate, Subscription):
            return subscription_object(aggregate, billing)
        if isinstance(aggregate, Invoice):
            lookup = _LookupAt(billing, notice.organization_id, notice.at)
            return invoice_object(aggregate, lookup, base_url=self.api_url)
        if isinstance(aggregate, CreditNote):
            invoice = aggregate_at(billing, aggregate.invoice_id, notice.at)
            customer = aggregate_at(billing, aggregate.customer_id, notice.at)
            taxes = _Taxes(billing, notice.organization_id)
            return credit_note_object(aggregate, invoice, customer, taxes)
        raise AssertionError(f"No payload for {type(aggregate).__name__}")
