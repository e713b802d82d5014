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
from api.controllers.wallets import transaction_object, wallet_object
from application.base import BillingBase
from application.billing import Billing
from application.payments import invoice_payments_of
from application.wallets import OngoingBalance
from application.webhooks import Notice
from domain.credit_note import CreditNote
from domain.customer import Customer
from domain.invoice import Invoice
from domain.payment import Collection, InvoicePaymentState, Payment
from domain.subscription import Subscription
from domain.wallet import Wallet


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


class _RepositoryAt:
    """A repository that answers with aggregates as of an instant (and "not found" before)."""

    def __init__(self, billing: Billing, at: datetime) -> None:
        self._billing = billing
        self._at = at

    def get(self, aggregate_id: UUID, version: int | None = None) -> Any:
        assert version is None, version
        found = aggregate_at(self._billing, aggregate_id, self._at)
        if found is None:
            raise AggregateNotFoundError(aggregate_id)
        return found


class _BillingAt:
    """What invoice_payments_of reads (the repository), as of an instant."""

    def __init__(self, billing: Billing, at: datetime) -> None:
        self.repository = _RepositoryAt(billing, at)


class _LookupAt(_Lookup):
    """The invoice's lookups (customer, subscriptions, organization, payments) as of an
    instant."""

    def __init__(self, billing: Billing, organization_id: UUID, at: datetime) -> None:
        super().__init__(billing, organization_id)
        self.at = at

    def payments(self, invoice: Invoice) -> InvoicePaymentState:
        """Paid, due and overdue as the payments and the collection were at the instant."""
        return invoice_payments_of(cast(BillingBase, _BillingAt(self.billing, self.at)), invoice)

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
            shown = invoice_object(aggregate, lookup, base_url=self.api_url)
            if notice.object_type == "fee":  # fee.created: the fee as the invoice shows it.
                return next(fee for fee in shown.fees or [] if fee.lago_id == notice.subject_id)
            return shown
        if isinstance(aggregate, CreditNote):
            if notice.object_type == "credit_note_payment_provider_refund_error":
                return self._refund_error(billing, aggregate, notice)
            invoice = aggregate_at(billing, aggregate.invoice_id, notice.at)
            customer = aggregate_at(billing, aggregate.customer_id, notice.at)
            taxes = _Taxes(billing, notice.organization_id)
            return credit_note_object(aggregate, invoice, customer, taxes)
        if isinstance(aggregate, Wallet):
            if notice.subject_id is not None:
                return transaction_object(aggregate, aggregate.transactions[notice.subject_id])
            return wallet_object(_ongoing(aggregate, notice))
        if isinstance(aggregate, Payment):
            return _payment_error(aggregate, notice)
        if isinstance(aggregate, Collection):
            invoice = aggregate_at(billing, aggregate.invoice_id, notice.at)
            assert isinstance(invoice, Invoice), aggregate.invoice_id
            lookup = _LookupAt(billing, notice.organization_id, notice.at)
            shown = invoice_object(invoice, lookup, base_url=self.api_url)
            # Overdue from this instant on: the collection's event is what makes it so.
            return msgspec.structs.replace(shown, payment_overdue=True)
        raise AssertionError(f"No payload for {type(aggregate).__name__}")

    @staticmethod
    def _refund_error(billing: Billing, note: CreditNote, notice: Notice) -> dict[str, Any]:
        """Lago's V1::CreditNotes::PaymentProviderRefundErrorSerializer."""
        customer = aggregate_at(billing, note.customer_id, notice.at)
        configuration = customer.fields.get("billing_configuration", {}) if customer else {}
        return {
            "lago_credit_note_id": str(note.id),
            "lago_customer_id": str(note.customer_id),
            "external_customer_id": note.external_customer_id,
            "provider_customer_id": configuration.get("provider_customer_id"),
            "payment_provider": configuration.get("payment_provider"),
            "provider_error": dict(notice.details or {}),
        }


def _ongoing(wallet: Wallet, notice: Notice) -> OngoingBalance:
    """The ongoing balance a wallet webhook shows. It depends on usage, computed when read and
    recorded only when it crosses zero: wallet.depleted_ongoing_balance shows the recorded one;
    the other wallet webhooks show the balance, without the unbilled usage (GET computes it)."""
    details = notice.details or {}
    if "ongoing_balance_cents" in details:
        usage_cents = wallet.balance_cents - int(details["ongoing_balance_cents"])
        return OngoingBalance(wallet, usage_cents, details["at"])
    return OngoingBalance(wallet, 0, notice.at)


def _payment_error(payment: Payment, notice: Notice) -> dict[str, Any]:
    """Lago's V1::PaymentProviders::InvoicePaymentErrorSerializer, or its wallet transaction
    counterpart for a paid top-up's credit invoice."""
    provider_error = dict(notice.details or {})
    common = {
        "lago_customer_id": str(payment.customer_id),
        "external_customer_id": payment.external_customer_id,
        "provider_customer_id": payment.provider_customer_id,
        "payment_provider": payment.provider,
        "payment_provider_code": payment.connection_code,
        "provider_error": provider_error,
    }
    if notice.object_type == "payment_provider_wallet_transaction_payment_error":
        return {"lago_wallet_transaction_id": str(notice.subject_id), **common}
    assert notice.object_type == "payment_provider_invoice_payment_error", notice.object_type
    return {"lago_invoice_id": str(payment.invoice_id), **common, "error_details": None}
