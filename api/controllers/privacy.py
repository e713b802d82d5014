"""Tally extensions for data protection: erase a customer's personal data (crypto-shredding,
GDPR art. 17) and export everything held about a customer (right of access, art. 15)."""

from datetime import UTC, datetime
from typing import Any, Final
from urllib.parse import urlencode
from uuid import UUID

from litestar import Request, get, post
from litestar.di import NamedDependency
from litestar.params import FromPath

from api.controllers.credit_notes import CreditNoteObject, _Renderer
from api.controllers.customers import (
    CustomerObject,
    CustomerResponse,
    HistoryEventObject,
    customer_object,
    history_object,
)
from api.controllers.events import EventObject, event_object
from api.controllers.invoices import InvoiceObject, _Lookup, invoice_object
from api.controllers.subscriptions import SubscriptionObject, subscription_object
from api.controllers.wallets import WalletObject, wallet_object
from api.http import Output, iso
from application.billing import Billing
from domain.limits import PER_PAGE_MAX

# Usage events per subscription in an export; the rest is a link to GET /events, page by page.
EXPORT_EVENTS_MAX: Final = PER_PAGE_MAX


class UsageEventsExport(Output):
    external_subscription_id: str
    total_count: int
    events: list[EventObject]  # Newest first, at most EXPORT_EVENTS_MAX.
    next_url: str | None  # The GET /events page that continues the list.


class CustomerExportObject(Output):
    generated_at: str
    lago_id: UUID
    external_id: str
    deleted_at: str | None
    erased_at: str | None
    customer: CustomerObject
    history: list[HistoryEventObject]
    subscriptions: list[SubscriptionObject]
    usage_events: list[UsageEventsExport]
    invoices: list[InvoiceObject]
    credit_notes: list[CreditNoteObject]
    wallets: list[WalletObject]


class CustomerExportResponse(Output):
    customer_export: CustomerExportObject


@post(
    "/customers/{external_id:str}/erase",
    operation_id="eraseCustomer",
    status_code=200,
    sync_to_thread=True,
)
def erase_customer(
    external_id: FromPath[str],
    billing: NamedDependency[Billing],
    organization_id: NamedDependency[UUID],
) -> CustomerResponse:
    """Erase the customer's personal data by deleting its data key: its history, invoices and
    audits stay, and show the data as "[erased]". Refused (405 not_erasable) while unpaid or
    draft invoices, active subscriptions or active wallets require identifying the customer."""
    customer = billing.erase_customer(organization_id, external_id)
    return CustomerResponse(customer=customer_object(customer))


@get("/customers/{external_id:str}/export", operation_id="exportCustomer", sync_to_thread=True)
def export_customer(
    request: Request[Any, Any, Any],
    external_id: FromPath[str],
    billing: NamedDependency[Billing],
    organization_id: NamedDependency[UUID],
) -> CustomerExportResponse:
    """Everything Tally holds about the customer, deleted or erased included: the customer and
    its history, subscriptions, usage events (the newest per subscription, with a link to the
    rest), invoices, credit notes and wallets."""
    ledger = request.app.state.ledger
    records = billing.customer_records(organization_id, external_id)
    customer = records.customer
    base_url = str(request.base_url).rstrip("/")
    lookup = _Lookup(billing, organization_id)
    render_credit_note = _Renderer(ledger.credit_notes, organization_id)
    usage_events = []
    for subscription in records.subscriptions:
        events, total = ledger.usage.page(
            organization_id, 1, EXPORT_EVENTS_MAX, external_subscription_id=subscription.external_id
        )
        query = urlencode(
            {
                "external_subscription_id": subscription.external_id,
                "page": 2,
                "per_page": EXPORT_EVENTS_MAX,
            }
        )
        usage_events.append(
            UsageEventsExport(
                external_subscription_id=subscription.external_id,
                total_count=total,
                events=[event_object(e) for e in events],
                next_url=f"{base_url}/api/v1/events?{query}" if total > len(events) else None,
            )
        )
    return CustomerExportResponse(
        customer_export=CustomerExportObject(
            generated_at=iso(datetime.now(UTC)) or "",
            lago_id=customer.id,
            external_id=customer.external_id,
            deleted_at=iso(customer.deleted_at),
            erased_at=iso(customer.erased_at),
            customer=customer_object(customer),
            history=[history_object(entry) for entry in records.history],
            subscriptions=[subscription_object(s, billing) for s in records.subscriptions],
            usage_events=usage_events,
            invoices=[
                invoice_object(i, lookup, base_url=base_url, details=True) for i in records.invoices
            ],
            credit_notes=[render_credit_note(note) for note in records.credit_notes],
            wallets=[wallet_object(ledger.wallets.ongoing_balance(w)) for w in records.wallets],
        )
    )
