"""Payments (ADR 0018): collecting finalized invoices through processors, inbound processor
webhooks, manual payments, refunds of credit notes, and dunning.

The ports come first: a PaymentProvider per connection (Stripe today, bank transfers beside it),
built by PaymentProviders from a connection's secrets; and the PaymentStore, the side tables that
hold those secrets (never in events) and the inbox of inbound webhooks.

Collection. Every finalized invoice with something due whose customer names a connection
(billing_configuration.payment_provider and payment_provider_code) gets a processor attempt.
The attempt is saved (with the invoice's Collection, which numbers it) before the processor is
called, with an idempotency key derived from (invoice, attempt number); after an outage the same
attempt is submitted again with the same key, so the processor charges once. A failed attempt is
followed by the next one on the connection's retry schedule (dunning); an unpaid invoice past its
payment_due_date is marked overdue.

Webhooks. A webhook is verified by the connection's secret, stored in the inbox (unique on the
processor's event id) before anything else, then processed; a redelivery is stored once and
processed once, and processing itself is idempotent (a payment succeeds once, and a failure
arriving after the success changes nothing), so out-of-order deliveries settle on the truth.

Reconciliation (ADR 0021). The processor's balance transactions (a bank's imported statement)
are matched to the payments recorded through each connection, and what does not match, the
fees and the payouts are reported; nothing is changed by it.
"""

import hashlib
import json
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from typing import TYPE_CHECKING, Any, Final, Protocol, TypeVar
from uuid import UUID

from eventsourcing.application import AggregateNotFoundError
from eventsourcing.persistence import IntegrityError

from application.errors import AlreadyExistsError, ConcurrencyConflictError, NotFoundError
from domain import ids
from domain.credit_note import CreditNote
from domain.customer import ERASED, Customer
from domain.errors import InvalidValueError
from domain.invoice import Invoice
from domain.limits import COMMAND_RETRIES_MAX
from domain.payment import (
    PROVIDERS,
    Collection,
    InvoicePaymentState,
    Payment,
    PaymentConnection,
    PaymentInProgressError,
    PaymentRetryStatusError,
    invoice_payment_state,
)
from domain.periods import local_date

if TYPE_CHECKING:
    from application.base import BillingBase
    from application.billing import Billing
    from application.credit_notes import CreditNotes
    from application.invoicing import Invoicing

logger = logging.getLogger("tally.payments")
T = TypeVar("T")

# Secrets each provider needs; nothing else is accepted as a secret.
PROVIDER_SECRETS: Final = {
    "stripe": ("secret_key", "webhook_secret"),
    "bank_transfer": (),
}
# Stripe keeps an idempotency key for 24 hours: an attempt never acknowledged within this window
# is not submitted again (a new key could charge twice), but failed and left to the next one.
RESUBMIT_WINDOW: Final = timedelta(hours=23)
INBOX_BATCH: Final = 100
INBOX_ATTEMPTS_MAX: Final = 20  # A webhook that keeps failing is left for an operator.


# Ports.


class ProviderUnavailableError(Exception):
    """The processor could not be reached, timed out, or answered 5xx or 429: try again later,
    with the same idempotency key."""


class ProviderError(Exception):
    """The processor refused a request that is not a payment (a customer, a checkout)."""

    def __init__(self, code: str, message: str, connection_code: str | None = None) -> None:
        super().__init__(f"The payment provider refused: {message}")
        self.code = code
        self.message = message
        self.connection_code = connection_code


class WebhookSignatureError(Exception):
    """An inbound webhook whose signature no connection's secret verifies: stored nowhere."""


@dataclass(frozen=True)
class ProviderCustomer:
    customer_id: UUID
    external_id: str
    name: str | None
    email: str | None


@dataclass(frozen=True)
class PaymentRequest:
    """One attempt, in Tally's terms: the adapter converts the amount to the processor's units."""

    organization_id: UUID
    payment_id: UUID
    invoice_id: UUID
    idempotency_key: str
    amount_cents: int
    currency: str
    provider_customer_id: str | None
    payment_method_id: str | None
    reference: str | None
    description: str


@dataclass(frozen=True)
class PaymentResult:
    status: str  # pending (processing, or awaiting a transfer), succeeded, failed, canceled
    provider_payment_id: str | None
    failure_code: str | None = None
    failure_message: str | None = None


@dataclass(frozen=True)
class RefundRequest:
    idempotency_key: str
    payment_id: UUID
    credit_note_id: UUID
    provider_payment_id: str
    amount_cents: int
    currency: str


@dataclass(frozen=True)
class RefundResult:
    provider_refund_id: str | None
    status: str  # pending, succeeded, failed


@dataclass(frozen=True)
class ProviderEvent:
    """An inbound webhook, normalized; amounts are back in Tally's minor units."""

    event_id: str
    event_type: str
    occurred_at: datetime
    payment_id: UUID | None = None  # Ours, from the processor object's metadata.
    provider_payment_id: str | None = None
    provider_customer_id: str | None = None
    payment_method_id: str | None = None
    failure_code: str | None = None
    failure_message: str | None = None
    refunded_amount_cents: int | None = None
    credit_note_id: UUID | None = None
    refund_id: str | None = None
    refund_status: str | None = None
    dispute_status: str | None = None


@dataclass(frozen=True)
class BalanceTransaction:
    """One movement of the processor's balance (Stripe's balance transaction, or a line of an
    imported bank statement), in Tally's minor units: amount is gross and signed (+ into the
    balance: a charge; − out: a refund, a payout), fee what the processor kept, net the rest."""

    transaction_id: str
    kind: str  # charge, payment, refund, payment_refund, payout, transfer (a statement line), ...
    amount_cents: int
    fee_cents: int
    net_cents: int
    currency: str
    created_at: datetime
    provider_payment_id: str | None = None  # Stripe's PaymentIntent, a transfer's reference.
    payment_id: UUID | None = None  # Ours, from the processor object's metadata.
    provider_refund_id: str | None = None
    payout_id: str | None = None
    description: str | None = None


@dataclass(frozen=True)
class Payout:
    """Money the processor sent to the seller's bank account."""

    payout_id: str
    amount_cents: int
    currency: str
    status: str
    created_at: datetime
    arrival_on: date | None


class PaymentProvider(Protocol):
    """One connection's processor account."""

    @property
    def requires_customer(self) -> bool:
        """Whether payments need a customer at the processor (Stripe: yes; transfers: no)."""

    def create_customer(self, customer: ProviderCustomer, idempotency_key: str) -> str:
        """The processor's id of a new customer."""

    def default_payment_method(self, provider_customer_id: str | None) -> str | None:
        """The payment method an off-session payment uses, or None when there is none."""

    def set_default_payment_method(self, provider_customer_id: str, payment_method_id: str) -> None:
        """Make a method collected by checkout (setup_intent.succeeded) the default."""

    def checkout_url(
        self, provider_customer_id: str, currency: str | None, success_url: str | None
    ) -> str:
        """A page where the customer registers a payment method (Lago's checkout_url)."""

    def create_payment(self, request: PaymentRequest) -> PaymentResult:
        """Start (or, with the same idempotency key, find again) an off-session payment.

        Raises ProviderUnavailableError when the outcome is unknown."""

    def find_payment(self, provider_payment_id: str) -> UUID | None:
        """Our payment id, from the processor payment's metadata."""

    def refund(self, request: RefundRequest) -> RefundResult: ...

    def parse_webhook(self, payload: bytes, signature: str | None) -> ProviderEvent:
        """Verify and read an inbound webhook; raises WebhookSignatureError."""

    def read_event(self, payload: bytes) -> ProviderEvent:
        """Read a webhook verified when it was received (processing from the inbox)."""

    def balance_transactions(
        self, created_from: datetime, created_to: datetime
    ) -> list[BalanceTransaction]:
        """The balance's movements created in [from, to), oldest first; a processor that
        cannot be queried (a bank) returns none: its statement is imported instead.

        Raises ProviderUnavailableError."""

    def payouts(self, created_from: datetime, created_to: datetime) -> list[Payout]:
        """Payouts created in [from, to), oldest first."""


class PaymentProviders(Protocol):
    def open(self, provider: str, secrets: Mapping[str, str]) -> PaymentProvider: ...


@dataclass(frozen=True)
class InboxItem:
    organization_id: UUID
    connection_code: str
    event_id: str
    event_type: str
    payload: bytes
    received_at: datetime
    processed_at: datetime | None = None
    attempts: int = 0
    last_error: str | None = None


class PaymentStore(Protocol):
    """Side tables: connection secrets (out of the event store, so out of every replay, export
    and history) and the inbox of inbound webhooks."""

    def put_secrets(
        self, organization_id: UUID, code: str, provider: str, secrets: Mapping[str, str]
    ) -> None: ...

    def secrets(self, organization_id: UUID, code: str) -> dict[str, str] | None: ...

    def delete_secrets(self, organization_id: UUID, code: str) -> None: ...

    def connection_codes(self, organization_id: UUID) -> list[str]: ...

    def connections_with_code(self, provider: str, code: str) -> list[tuple[UUID, dict[str, str]]]:
        """Every organization's secrets for a connection of this provider and code."""

    def add_to_inbox(self, item: InboxItem) -> bool:
        """Store a received webhook; False when this event id was stored before."""

    def unprocessed(self, limit: int) -> list[InboxItem]:
        """Stored webhooks not processed yet, oldest first."""

    def inbox_item(
        self, organization_id: UUID, connection_code: str, event_id: str
    ) -> InboxItem | None: ...

    def mark_processed(
        self, organization_id: UUID, connection_code: str, event_id: str, at: datetime
    ) -> None: ...

    def mark_failed(
        self, organization_id: UUID, connection_code: str, event_id: str, error: str
    ) -> None: ...


# Use cases.


@dataclass(frozen=True)
class TransferReceived:
    """One line of a bank statement (adapters/bank_transfer.py reads them from CSV)."""

    reference: str
    amount_cents: int
    currency: str
    received_at: datetime


@dataclass(frozen=True)
class Reconciliation:
    transfer: TransferReceived
    result: str  # matched, already_matched, amount_mismatch, unknown_reference
    payment_id: UUID | None = None
    invoice_id: UUID | None = None


# Processor reconciliation (ADR 0021): what a result means, and whether finance must look at it.
MATCH_RESULTS: Final = {
    "matched": False,  # A charge or transfer for a payment Tally recorded, same amount.
    "refund_matched": False,  # A refund Tally requested, same amount.
    "amount_mismatch": True,  # Matched by id, but another amount or currency.
    "duplicate": True,  # A second charge for one payment: the customer paid twice.
    "not_recorded_as_paid": True,  # The processor took the money; Tally's payment is not paid.
    "unknown_payment": True,  # Money in that names no payment of this connection.
    "unknown_refund": True,  # Money out that names no payment, or no refund Tally requested.
    "missing_at_processor": True,  # Tally recorded it paid; the processor shows no money in.
    "other": True,  # An adjustment, a dispute, a fee: booked by hand.
    "processor_unavailable": True,  # The processor could not be asked: try again.
}
MATCH_WINDOW: Final = timedelta(days=3)  # A charge and its webhook may straddle a month's end.
MONEY_IN: Final = ("charge", "payment", "transfer")
MONEY_BACK: Final = ("refund", "payment_refund")


@dataclass(frozen=True)
class ProcessorItem:
    """One line of the processor reconciliation."""

    connection_code: str
    result: str  # A key of MATCH_RESULTS.
    currency: str | None
    processor_cents: int | None  # The processor's gross amount (signed).
    recorded_cents: int | None  # What Tally recorded (a payment's, or a refund's, amount).
    fee_cents: int = 0
    transaction_id: str | None = None
    kind: str | None = None
    payment_id: UUID | None = None
    invoice_id: UUID | None = None
    on: date | None = None
    detail: str | None = None

    @property
    def is_difference(self) -> bool:
        return MATCH_RESULTS[self.result]

    def __str__(self) -> str:
        amounts = f"processor {self.processor_cents}, recorded {self.recorded_cents}"
        parts = [
            f"processor {self.connection_code} {self.result}",
            self.transaction_id or "-",
            f"{self.kind or '-'} {self.currency or '-'}: {amounts}",
        ]
        if self.payment_id is not None:
            parts.append(f"payment {self.payment_id}")
        if self.detail:
            parts.append(self.detail)
        return " ".join(parts)


@dataclass(frozen=True)
class ProcessorReconciliation:
    """A period's processor balance transactions matched to the payments Tally recorded."""

    items: tuple[ProcessorItem, ...]
    fees: tuple[tuple[str, str, int], ...]  # (connection, currency, Σ fees in the period)
    payouts: tuple[tuple[str, Payout], ...]  # (connection, payout) created in the period

    @property
    def differences(self) -> list[ProcessorItem]:
        return [item for item in self.items if item.is_difference]

    @property
    def matched(self) -> list[ProcessorItem]:
        return [item for item in self.items if not item.is_difference]


def statement_transactions(lines: Iterable[TransferReceived]) -> list[BalanceTransaction]:
    """A bank statement's lines as balance transactions: money in, no fee, named by their
    reference; a line's id hashes its content, so the same line read twice is one line."""
    found: dict[str, BalanceTransaction] = {}
    for line in lines:
        digest = hashlib.sha256(
            json.dumps(
                [line.reference, line.amount_cents, line.currency, line.received_at.isoformat()]
            ).encode()
        ).hexdigest()[:16]
        found[digest] = BalanceTransaction(
            transaction_id=f"statement-{digest}",
            kind="transfer",
            amount_cents=line.amount_cents,
            fee_cents=0,
            net_cents=line.amount_cents,
            currency=line.currency,
            created_at=line.received_at,
            provider_payment_id=line.reference.strip().upper(),
        )
    return sorted(found.values(), key=lambda t: (t.created_at, t.transaction_id))


def match_transactions(
    connection_code: str,
    transactions: Sequence[BalanceTransaction],
    payments: Sequence[Payment],
    period: tuple[datetime, datetime],
) -> list[ProcessorItem]:
    """Match a connection's balance transactions to its recorded payments. Transactions are
    read a few days past each end of the period, so a charge and its payment straddling the
    boundary still match; only what falls in the period is reported."""
    start, end = period
    by_id = {p.id: p for p in payments}
    by_provider_id = {
        p.provider_payment_id.upper(): p for p in payments if p.provider_payment_id is not None
    }
    by_provider_id.update({p.reference.upper(): p for p in payments if p.reference is not None})
    seen: set[UUID] = set()
    items: list[ProcessorItem] = []

    def find(transaction: BalanceTransaction) -> Payment | None:
        if transaction.payment_id is not None and transaction.payment_id in by_id:
            return by_id[transaction.payment_id]
        if transaction.provider_payment_id:
            return by_provider_id.get(transaction.provider_payment_id.upper())
        return None

    for transaction in transactions:
        inside = start <= transaction.created_at < end
        payment = find(transaction)
        common: dict[str, Any] = {
            "connection_code": connection_code,
            "currency": transaction.currency,
            "processor_cents": transaction.amount_cents,
            "fee_cents": transaction.fee_cents,
            "transaction_id": transaction.transaction_id,
            "kind": transaction.kind,
            "on": transaction.created_at.date(),
        }
        if transaction.kind == "payout":
            continue  # Listed with the payouts.
        if transaction.kind in MONEY_IN:
            again = payment is not None and payment.id in seen
            if payment is not None:
                seen.add(payment.id)
            if not inside:
                continue
            if payment is None:
                items.append(ProcessorItem(result="unknown_payment", recorded_cents=None, **common))
                continue
            refs: dict[str, Any] = {"payment_id": payment.id, "invoice_id": payment.invoice_id}
            if again:
                result = "duplicate"
            elif payment.settled_status != "succeeded":
                result = "not_recorded_as_paid"
            elif (transaction.amount_cents, transaction.currency) != (
                payment.amount_cents,
                payment.currency,
            ):
                result = "amount_mismatch"
            else:
                result = "matched"
            items.append(
                ProcessorItem(
                    result=result,
                    recorded_cents=payment.amount_cents,
                    detail=None if result == "matched" else f"payment is {payment.status}",
                    **refs,
                    **common,
                )
            )
        elif transaction.kind in MONEY_BACK:
            if not inside:
                continue
            refund = None
            if payment is not None:
                refund = next(
                    (
                        r
                        for r in payment.refunds.values()
                        if transaction.provider_refund_id is not None
                        and r["provider_refund_id"] == transaction.provider_refund_id
                    ),
                    None,
                )
            if payment is None or refund is None:
                items.append(
                    ProcessorItem(
                        result="unknown_refund",
                        recorded_cents=None,
                        payment_id=payment.id if payment else None,
                        invoice_id=payment.invoice_id if payment else None,
                        **common,
                    )
                )
                continue
            recorded = int(refund["amount_cents"])
            result = (
                "refund_matched" if -transaction.amount_cents == recorded else "amount_mismatch"
            )
            items.append(
                ProcessorItem(
                    result=result,
                    recorded_cents=-recorded,
                    payment_id=payment.id,
                    invoice_id=payment.invoice_id,
                    **common,
                )
            )
        elif inside:
            items.append(ProcessorItem(result="other", recorded_cents=None, **common))
    for payment in payments:
        paid_at = payment.paid_at
        if (
            payment.settled_status == "succeeded"
            and paid_at is not None
            and start <= paid_at < end
            and payment.id not in seen
        ):
            items.append(
                ProcessorItem(
                    connection_code=connection_code,
                    result="missing_at_processor",
                    currency=payment.currency,
                    processor_cents=None,
                    recorded_cents=payment.amount_cents,
                    payment_id=payment.id,
                    invoice_id=payment.invoice_id,
                    on=paid_at.date(),
                    detail=payment.provider_payment_id or payment.reference,
                )
            )
    return items


@dataclass
class _Tick:
    """What one collection round loaded, so each customer and connection is read once."""

    customers: dict[UUID, Customer] = field(default_factory=dict)
    connections: dict[tuple[UUID, str], PaymentConnection | None] = field(default_factory=dict)


class NoPaymentProviderError(InvalidValueError):
    """The customer names no usable connection (Lago's no_linked_payment_provider)."""

    def __init__(self, external_customer_id: str) -> None:
        super().__init__("payment_provider", "no_linked_payment_provider", external_customer_id)


class Payments:
    def __init__(
        self,
        billing: "Billing",
        invoicing: "Invoicing",
        credit_notes: "CreditNotes",
        providers: PaymentProviders,
        store: PaymentStore,
    ) -> None:
        self.billing = billing
        self.invoicing = invoicing
        self.credit_notes = credit_notes
        self.providers = providers
        self.store = store
        self._opened: dict[tuple[UUID, str, tuple[tuple[str, str], ...]], PaymentProvider] = {}

    # Connections (Tally's /payment_providers extension).

    def create_connection(
        self,
        organization_id: UUID,
        code: str,
        provider: str,
        settings: Mapping[str, Any],
        secrets: Mapping[str, str | None],
    ) -> PaymentConnection:
        """A processor account; its secrets go to the side table first, so a connection never
        exists without them (a crash in between leaves secrets no connection uses)."""
        if provider not in PROVIDERS:
            raise InvalidValueError("provider", "value_is_invalid", provider)
        checked = _check_secrets(provider, secrets, required=True)
        connection_id = ids.payment_connection_id(organization_id, code)

        def decide() -> PaymentConnection:
            try:
                existing: PaymentConnection = self.billing.repository.get(connection_id)
            except AggregateNotFoundError:
                return PaymentConnection.create(organization_id, code, provider, settings)
            if not existing.deleted:
                raise AlreadyExistsError("code", code)
            existing.recreate(provider, settings)
            return existing

        decide()  # Validate the settings before the secrets are written.
        self.store.put_secrets(organization_id, code, provider, checked)
        return self.billing._command("payment_provider", code, decide)

    def update_connection(
        self,
        organization_id: UUID,
        code: str,
        settings: Mapping[str, Any],
        secrets: Mapping[str, str | None],
    ) -> PaymentConnection:
        connection = self.connection(organization_id, code)
        given = {k: v for k, v in secrets.items() if v is not None}
        if given:
            current = self.store.secrets(organization_id, code) or {}
            merged = {**current, **_check_secrets(connection.provider, given, required=False)}
            self.store.put_secrets(organization_id, code, connection.provider, merged)

        def decide() -> PaymentConnection:
            found = self.connection(organization_id, code)
            found.update(settings)
            return found

        return self.billing._command("payment_provider", code, decide)

    def delete_connection(self, organization_id: UUID, code: str) -> PaymentConnection:
        def decide() -> PaymentConnection:
            found = self.connection(organization_id, code)
            found.delete()
            return found

        connection = self.billing._command("payment_provider", code, decide)
        self.store.delete_secrets(organization_id, code)
        return connection

    def connection(self, organization_id: UUID, code: str) -> PaymentConnection:
        connection = self.billing._get(
            PaymentConnection,
            ids.payment_connection_id(organization_id, code),
            organization_id,
            NotFoundError("payment_provider", code),
        )
        if connection.deleted:
            raise NotFoundError("payment_provider", code)
        return connection

    def connections(self, organization_id: UUID) -> list[PaymentConnection]:
        found = []
        for code in sorted(self.store.connection_codes(organization_id)):
            try:
                found.append(self.connection(organization_id, code))
            except NotFoundError:
                continue  # Secrets written by a create that did not finish.
        return found

    def secret_hints(self, organization_id: UUID, code: str) -> dict[str, str]:
        """The last four characters of each secret, for display: never the secret itself."""
        secrets = self.store.secrets(organization_id, code) or {}
        return {name: f"…{value[-4:]}" for name, value in sorted(secrets.items()) if value}

    # Customers.

    def checkout_url(self, organization_id: UUID, external_customer_id: str) -> str:
        """Lago's checkout_url: a processor page where the customer saves a payment method."""
        customer = self.billing.customer(organization_id, external_customer_id)
        connection = self._customer_connection(organization_id, customer, _Tick())
        if connection is None:
            raise NoPaymentProviderError(external_customer_id)
        provider = self._provider(connection)
        if not provider.requires_customer:
            raise InvalidValueError("payment_provider", "checkout_not_supported", connection.code)
        try:
            provider_customer_id = self._provider_customer(customer, connection, provider)
            assert provider_customer_id is not None
            return provider.checkout_url(
                provider_customer_id, customer.currency, connection.success_redirect_url
            )
        except ProviderError as error:
            error.connection_code = connection.code
            raise

    # Collection.

    def collect(self, now: datetime) -> list[Payment]:
        """One collection round: webhooks left in the inbox, a first attempt for every invoice
        due, attempts to submit again after an outage, and refunds of credit notes."""
        self.process_inbox(now)
        started: list[Payment] = []
        for organization_id in self._organization_ids():
            if not self.store.connection_codes(organization_id):
                continue
            tick = _Tick()
            for invoice in self._open_invoices(organization_id):
                payment = self._guarded(
                    invoice.id, self._collect, invoice, now, tick, retry_failed=False
                )
                if payment is not None:
                    started.append(payment)
            self._guarded(organization_id, self._refund_notes, organization_id, now)
        return started

    def dunning(self, now: datetime) -> list[Payment]:
        """Retries of failed payments on their connection's schedule, and overdue marking."""
        retried: list[Payment] = []
        for organization_id in self._organization_ids():
            tick = _Tick()
            for invoice in self._open_invoices(organization_id):
                self._guarded(invoice.id, self._mark_overdue, invoice, now, tick)
                payment = self._guarded(
                    invoice.id, self._collect, invoice, now, tick, retry_failed=True
                )
                if payment is not None:
                    retried.append(payment)
        return retried

    def retry_payment(self, organization_id: UUID, invoice_id: UUID) -> Payment | None:
        """Lago's retry_payment: a new attempt now, for a finalized invoice whose payment failed.
        Without a connection there is nothing to retry through (Lago answers 200 all the same)."""
        invoice = self.invoicing.invoice(organization_id, invoice_id)
        if invoice.status != "finalized" or invoice.payment_status != "failed":
            raise PaymentRetryStatusError(
                f"Invoice {invoice.id} is {invoice.status} with payment {invoice.payment_status}:"
                " only a failed payment of a finalized invoice can be retried."
            )
        last = self._last_attempt(self.invoice_payments(organization_id, invoice_id))
        if last is not None and last.status == "pending":
            raise PaymentInProgressError(f"Invoice {invoice.id}: attempt {last.number} is pending.")
        return self._collect(invoice, self.billing.now(), _Tick(), retry_failed=True, now_due=True)

    def _collect(
        self,
        invoice: Invoice,
        now: datetime,
        tick: _Tick,
        *,
        retry_failed: bool,
        now_due: bool = False,
    ) -> Payment | None:
        """Decide what the invoice needs now: nothing, the current attempt submitted again, or
        a new attempt (the first one; or, with retry_failed, the next after a failure)."""
        organization_id = invoice.organization_id
        payments = self.invoice_payments(organization_id, invoice.id)
        due_cents = invoice.total_due_amount_cents - _paid_cents(payments)
        if due_cents <= 0:
            self._settle_invoice(organization_id, invoice.id, now)
            return None
        last = self._last_attempt(payments)
        if last is None:
            if retry_failed and not now_due:
                return None  # Never attempted: collect() makes the first attempt.
        elif last.status == "pending":
            if not retry_failed and not last.is_submitted:
                self._resubmit(last, now)
            return None  # With the processor: its webhook (or the next round) settles it.
        elif last.status == "failed":
            if not retry_failed or (not now_due and not self._retry_due(last, now, tick)):
                return None
        elif last.status == "canceled":
            if not now_due:
                return None  # Amount too small, or canceled at the processor: by hand.
        elif retry_failed:
            return None  # Succeeded, with a remainder paid by hand since: collect() goes on.
        customer = self._customer(invoice.customer_id, tick)
        connection = self._customer_connection(organization_id, customer, tick)
        if connection is None:
            return None
        return self._start_attempt(invoice, customer, connection, due_cents, now)

    def _retry_due(self, last: Payment, now: datetime, tick: _Tick) -> bool:
        """Whether the connection's schedule calls for the attempt after this failed one."""
        connection = self._connection(last.organization_id, last.connection_code or "", tick)
        schedule = connection.retry_schedule if connection else ()
        if last.number > len(schedule) or last.failed_at is None:
            return False  # Dunning is over: the invoice stays failed until retried by hand.
        return now >= last.failed_at + schedule[last.number - 1]

    def _resubmit(self, last: Payment, now: datetime) -> None:
        """An attempt the processor never acknowledged (an outage): the same call again, with
        the same key; past the key's lifetime it is failed instead, so a new key never risks
        a second charge for a first one that went through unseen."""
        if now - last.created_at > RESUBMIT_WINDOW:
            self._update(last.id, lambda p: p.fail("submission_unconfirmed", None, now))
            self._settle_invoice(last.organization_id, last.invoice_id, now)
            return
        self._submit(last, now)

    def _start_attempt(
        self,
        invoice: Invoice,
        customer: Customer,
        connection: PaymentConnection,
        due_cents: int,
        now: datetime,
    ) -> Payment | None:
        provider = self._provider(connection)
        try:
            provider_customer_id = self._provider_customer(customer, connection, provider)
            payment_method_id = provider.default_payment_method(provider_customer_id)
        except ProviderUnavailableError as error:
            logger.warning("Invoice %s: %s is unavailable: %s", invoice.id, connection.code, error)
            return None
        try:
            collection: Collection = self.billing.repository.get(ids.collection_id(invoice.id))
        except AggregateNotFoundError:
            collection = Collection.start(invoice.organization_id, invoice.id)
        payment = Payment.attempt(
            organization_id=invoice.organization_id,
            invoice_id=invoice.id,
            customer_id=invoice.customer_id,
            external_customer_id=invoice.external_customer_id,
            number=collection.next_number("provider"),
            amount_cents=due_cents,
            currency=invoice.currency,
            provider=connection.provider,
            connection_code=connection.code,
            provider_customer_id=provider_customer_id,
            payment_method_id=payment_method_id,
            reference_prefix=connection.reference_prefix,
            now=now,
        )
        collection.add(payment)
        if payment_method_id is None:
            # Nothing to charge: failed at once, so dunning and checkout (setup_intent) retry.
            payment.fail("payment_method_missing", "The customer has no payment method.", now)
        try:
            self.billing.save(collection, payment)
        except IntegrityError:
            return None  # Another worker started this attempt: it submits it.
        if payment.status == "pending":
            self._submit(payment, now)
        self._settle_invoice(invoice.organization_id, invoice.id, now)
        return self._payment(payment.id)

    def _submit(self, payment: Payment, now: datetime) -> None:
        """Send an attempt to its processor, with its idempotency key; an outage is recorded
        and the next round sends it again, with the same key."""
        assert payment.idempotency_key is not None, payment.id
        connection = self._connection(
            payment.organization_id, payment.connection_code or "", _Tick()
        )
        if connection is None:  # Deleted meanwhile: nothing to send it through.
            self._update(payment.id, lambda p: p.cancel("connection_deleted", now))
            self._settle_invoice(payment.organization_id, payment.invoice_id, now)
            return
        provider = self._provider(connection)
        request = PaymentRequest(
            organization_id=payment.organization_id,
            payment_id=payment.id,
            invoice_id=payment.invoice_id,
            idempotency_key=payment.idempotency_key,
            amount_cents=payment.amount_cents,
            currency=payment.currency,
            provider_customer_id=payment.provider_customer_id,
            payment_method_id=payment.payment_method_id,
            reference=payment.reference,
            description=f"Invoice {self._invoice_number(payment)}",
        )
        try:
            result = provider.create_payment(request)
        except ProviderUnavailableError as error:
            logger.warning("Payment %s: processor unavailable: %s", payment.id, error)
            reason = str(error)
            self._update(payment.id, lambda p: p.record_submission_failure(reason, now))
            return
        self._apply(payment.id, result, now)
        self._settle_invoice(payment.organization_id, payment.invoice_id, now)

    def _apply(self, payment_id: UUID, result: PaymentResult, at: datetime) -> None:
        def decide(payment: Payment) -> bool:
            changed = False
            if result.provider_payment_id is not None:
                changed = payment.record_submission(result.provider_payment_id, at)
            if result.status == "succeeded":
                changed = payment.succeed(result.provider_payment_id, at) or changed
            elif result.status == "failed":
                code = result.failure_code or "failed"
                changed = payment.fail(code, result.failure_message, at) or changed
            elif result.status == "canceled":
                changed = payment.cancel(result.failure_code or "canceled", at) or changed
            return changed

        self._update(payment_id, decide)

    def _settle_invoice(self, organization_id: UUID, invoice_id: UUID, now: datetime) -> None:
        """Carry the payments' outcome to the invoice (and through it, a top-up's wallet):
        succeeded once they cover what is due; failed when the latest attempt failed; pending
        again while a retry is with the processor."""
        invoice = self.invoicing.invoice(organization_id, invoice_id)
        if invoice.status != "finalized" or invoice.payment_status == "succeeded":
            return
        payments = self.invoice_payments(organization_id, invoice_id)
        paid_cents = _paid_cents(payments)
        wanted = None
        if paid_cents > 0 and paid_cents >= invoice.total_due_amount_cents:
            wanted = "succeeded"
        else:
            last = self._last_attempt(payments)
            if last is not None and last.status == "failed":
                wanted = "failed"
            elif last is not None and last.status == "pending":
                wanted = "pending"
        if wanted is not None and wanted != invoice.payment_status:
            self.invoicing.set_payment_status(organization_id, invoice_id, wanted)

    def _mark_overdue(self, invoice: Invoice, now: datetime, tick: _Tick) -> None:
        """Lago's payment_overdue: unpaid after its payment_due_date, in the customer's zone."""
        if invoice.payment_due_date is None or invoice.totals.total_amount_cents <= 0:
            return
        customer = self._customer(invoice.customer_id, tick)
        if local_date(now, customer.timezone or "UTC") <= invoice.payment_due_date:
            return
        if self.payment_overdue(invoice):
            return

        def decide() -> Collection:
            try:
                collection: Collection = self.billing.repository.get(ids.collection_id(invoice.id))
            except AggregateNotFoundError:
                collection = Collection.start(invoice.organization_id, invoice.id)
            collection.mark_overdue(now)
            return collection

        self.billing._command("invoice", invoice.id, decide)

    def payment_overdue(self, invoice: Invoice) -> bool:
        if invoice.status != "finalized" or invoice.payment_status == "succeeded":
            return False
        try:
            collection: Collection = self.billing.repository.get(ids.collection_id(invoice.id))
        except AggregateNotFoundError:
            return False
        return collection.overdue_at is not None

    # Manual payments (Lago's POST /payments).

    def create_manual_payment(
        self,
        organization_id: UUID,
        invoice_id: UUID,
        amount_cents: int,
        reference: str,
        paid_at: datetime | None,
    ) -> Payment:
        """Money received by other means; several add up, and the invoice is paid once they
        reach what is due."""
        now = self.billing.now()

        def decide() -> list[Any]:
            invoice = self.invoicing.invoice(organization_id, invoice_id)
            if invoice.status != "finalized" or invoice.payment_status == "succeeded":
                raise InvalidValueError("invoice_id", "invalid_status", str(invoice_id))
            payments = self.invoice_payments(organization_id, invoice_id)
            remaining = invoice.total_due_amount_cents - _paid_cents(payments)
            if amount_cents > remaining:
                raise InvalidValueError("amount_cents", "invalid_amount", amount_cents)
            try:
                collection: Collection = self.billing.repository.get(ids.collection_id(invoice_id))
            except AggregateNotFoundError:
                collection = Collection.start(organization_id, invoice_id)
            payment = Payment.manual(
                organization_id=organization_id,
                invoice_id=invoice_id,
                customer_id=invoice.customer_id,
                external_customer_id=invoice.external_customer_id,
                number=collection.next_number("manual"),
                amount_cents=amount_cents,
                currency=invoice.currency,
                reference=reference,
                paid_at=paid_at or now,
                now=now,
            )
            collection.add(payment)
            return [payment, collection]

        payment: Payment = self.billing._command_many("invoice", invoice_id, decide)[0]
        self._settle_invoice(organization_id, invoice_id, now)
        return payment

    # Queries.

    def payment(self, organization_id: UUID, payment_id: UUID) -> Payment:
        return self.billing._get(
            Payment, payment_id, organization_id, NotFoundError("payment", payment_id)
        )

    def invoice_payments(self, organization_id: UUID, invoice_id: UUID) -> list[Payment]:
        """The invoice's payments in the order they were made."""
        try:
            collection: Collection = self.billing.repository.get(ids.collection_id(invoice_id))
        except AggregateNotFoundError:
            return []
        if collection.organization_id != organization_id:
            return []
        return [self._payment(payment_id) for payment_id in collection.payment_ids]

    def payments(
        self,
        organization_id: UUID,
        page: int,
        per_page: int,
        *,
        invoice_id: UUID | None = None,
        external_customer_id: str | None = None,
    ) -> tuple[list[Payment], int]:
        """Lago's GET /payments: newest first, by invoice or by customer."""
        if invoice_id is not None:
            self.invoicing.invoice(organization_id, invoice_id)  # 404 for a stranger's.
            found = self.invoice_payments(organization_id, invoice_id)
        else:
            found = [
                payment
                for invoice in self.billing._all(
                    Invoice, "invoice", organization_id, external_customer_id
                )
                for payment in self.invoice_payments(organization_id, invoice.id)
            ]
        found.sort(key=lambda p: (p.created_on, p.id.int), reverse=True)
        start = (page - 1) * per_page
        return found[start : start + per_page], len(found)

    # Inbound webhooks.

    def receive_webhook(
        self, provider: str, connection_code: str, payload: bytes, signature: str | None
    ) -> InboxItem:
        """Verify an inbound webhook with the secret of the connection it is addressed to,
        store it, then process it. The code is an organization's; the secret that verifies the
        signature tells whose. Raises WebhookSignatureError, having stored nothing."""
        for organization_id, secrets in self.store.connections_with_code(provider, connection_code):
            opened = self._open(organization_id, connection_code, provider, secrets)
            try:
                event = opened.parse_webhook(payload, signature)
            except WebhookSignatureError:
                continue
            item = InboxItem(
                organization_id=organization_id,
                connection_code=connection_code,
                event_id=event.event_id,
                event_type=event.event_type,
                payload=payload,
                received_at=self.billing.now(),
            )
            self.store.add_to_inbox(item)  # False for a redelivery: stored once.
            stored = self.store.inbox_item(organization_id, connection_code, event.event_id)
            assert stored is not None, event.event_id
            if stored.processed_at is None:  # New, or left by a failure: process it now.
                self._process_item(stored, self.billing.now())
                stored = self.store.inbox_item(organization_id, connection_code, event.event_id)
                assert stored is not None, event.event_id
            return stored
        raise WebhookSignatureError(f"No {provider} connection '{connection_code}' signed this.")

    def process_inbox(self, now: datetime, limit: int = INBOX_BATCH) -> int:
        """Process stored webhooks that are not yet (a crash, a failure): oldest first."""
        items = [i for i in self.store.unprocessed(limit) if i.attempts < INBOX_ATTEMPTS_MAX]
        for item in items:
            self._process_item(item, now)
        return len(items)

    def _process_item(self, item: InboxItem, now: datetime) -> None:
        try:
            self._process(item, now)
        except Exception as error:  # Kept in the inbox and tried again by the next round.
            logger.exception("Webhook %s failed; it stays in the inbox", item.event_id)
            self.store.mark_failed(
                item.organization_id, item.connection_code, item.event_id, repr(error)[:1000]
            )
            return
        self.store.mark_processed(item.organization_id, item.connection_code, item.event_id, now)

    def _process(self, item: InboxItem, now: datetime) -> None:
        connection = self._any_connection(item.organization_id, item.connection_code)
        if connection is None:
            return  # Deleted since: nothing to act on.
        provider = self._provider(connection)
        event = provider.read_event(item.payload)
        kind = event.event_type
        if kind == "setup_intent.succeeded":
            self._payment_method_saved(connection, provider, event, now)
            return
        payment = self._payment_of(item.organization_id, connection, provider, event)
        if payment is None:
            logger.info("Webhook %s names no payment of ours; ignored", event.event_id)
            return
        at = event.occurred_at
        if kind == "payment_intent.succeeded":
            self._update(payment.id, lambda p: p.succeed(event.provider_payment_id, at))
        elif kind == "payment_intent.payment_failed":
            code, message = event.failure_code or "failed", event.failure_message
            self._update(payment.id, lambda p: p.fail(code, message, at))
        elif kind == "payment_intent.canceled":
            self._update(payment.id, lambda p: p.cancel(event.failure_code or "canceled", at))
        elif kind == "payment_intent.processing" and event.provider_payment_id:
            pid = event.provider_payment_id
            self._update(payment.id, lambda p: p.record_submission(pid, at))
        elif kind == "charge.refunded" and event.refunded_amount_cents is not None:
            self._refunds_done(payment, event.refunded_amount_cents, now)
        elif kind in ("charge.refund.updated", "refund.updated", "refund.failed"):
            if event.credit_note_id is not None and event.refund_status is not None:
                self._refund_outcome(
                    payment.id, event.credit_note_id, event.refund_id, event.refund_status, now
                )
        elif kind == "charge.dispute.closed" and event.dispute_status in ("won", "lost"):
            status = event.dispute_status
            self._update(payment.id, lambda p: p.close_dispute(status, at))
            return
        else:
            return
        self._settle_invoice(payment.organization_id, payment.invoice_id, now)

    def _payment_of(
        self,
        organization_id: UUID,
        connection: PaymentConnection,
        provider: PaymentProvider,
        event: ProviderEvent,
    ) -> Payment | None:
        payment_id = event.payment_id
        if payment_id is None and event.provider_payment_id:
            payment_id = provider.find_payment(event.provider_payment_id)
        if payment_id is None:
            return None
        try:
            payment = self.payment(organization_id, payment_id)
        except NotFoundError:
            return None
        if payment.connection_code != connection.code:
            return None  # Another account's metadata cannot move our payments.
        return payment

    def _payment_method_saved(
        self,
        connection: PaymentConnection,
        provider: PaymentProvider,
        event: ProviderEvent,
        now: datetime,
    ) -> None:
        """Checkout saved a payment method: it becomes the customer's default, and the
        customer's invoices whose payment failed are tried again now."""
        if not event.provider_customer_id or not event.payment_method_id:
            return
        provider.set_default_payment_method(event.provider_customer_id, event.payment_method_id)
        organization_id = connection.organization_id
        tick = _Tick()
        for invoice in self._open_invoices(organization_id):
            if invoice.payment_status != "failed":
                continue
            customer = self._customer(invoice.customer_id, tick)
            configuration = customer.fields.get("billing_configuration") or {}
            if configuration.get("provider_customer_id") != event.provider_customer_id:
                continue
            last = self._last_attempt(self.invoice_payments(organization_id, invoice.id))
            if last is None or last.status == "failed":
                self._guarded(
                    invoice.id, self._collect, invoice, now, tick, retry_failed=True, now_due=True
                )

    # Refunds of credit notes.

    def _refund_notes(self, organization_id: UUID, now: datetime) -> None:
        """Credit notes with a refund pending: the refund goes back through the processor that
        took the payment, split over the invoice's processor payments, largest first."""
        notes, _ = self.credit_notes.credit_notes(
            organization_id, 1, 10**6, refund_status="pending"
        )
        for note in notes:
            if note.refund_amount_cents <= 0:
                continue
            payments = [
                p
                for p in self.invoice_payments(organization_id, note.invoice_id)
                if p.payment_type == "provider" and p.provider == "stripe"
            ]
            if not payments:
                continue  # Paid by hand or by transfer: refunded by hand (PUT refund_status).
            self._guarded(note.id, self._refund_note, note, payments, now)

    def _refund_note(self, note: CreditNote, payments: list[Payment], now: datetime) -> None:
        requested = sum(
            p.refunds[note.id]["amount_cents"]
            for p in payments
            if note.id in p.refunds and p.refunds[note.id]["status"] != "failed"
        )
        left = note.refund_amount_cents - requested
        for payment in sorted(payments, key=lambda p: -p.refundable_amount_cents):
            if left <= 0:
                break
            share = min(left, payment.refundable_amount_cents)
            if share <= 0 or note.id in payment.refunds:
                continue
            self._request_refund(payment.id, note.id, share, now)
            left -= share
        for payment in [self._payment(p.id) for p in payments]:
            refund = payment.refunds.get(note.id)
            if refund is None or refund["status"] != "pending" or refund["provider_refund_id"]:
                continue
            assert payment.provider_payment_id is not None, payment.id
            provider = self._provider(
                self._connection(payment.organization_id, payment.connection_code or "", _Tick())
            )
            try:
                result = provider.refund(
                    RefundRequest(
                        idempotency_key=refund["idempotency_key"],
                        payment_id=payment.id,
                        credit_note_id=note.id,
                        provider_payment_id=payment.provider_payment_id,
                        amount_cents=refund["amount_cents"],
                        currency=payment.currency,
                    )
                )
            except ProviderUnavailableError as error:
                logger.warning("Refund of %s unavailable: %s", note.id, error)
                continue
            self._refund_outcome(payment.id, note.id, result.provider_refund_id, result.status, now)

    def _request_refund(
        self, payment_id: UUID, credit_note_id: UUID, amount_cents: int, now: datetime
    ) -> None:
        self._update(payment_id, lambda p: p.request_refund(credit_note_id, amount_cents, now))

    def _refund_outcome(
        self,
        payment_id: UUID,
        credit_note_id: UUID,
        provider_refund_id: str | None,
        status: str,
        now: datetime,
    ) -> None:
        payment = self._payment(payment_id)
        if credit_note_id not in payment.refunds:
            return
        self._update(
            payment_id, lambda p: p.update_refund(credit_note_id, provider_refund_id, status, now)
        )
        self._settle_refund(payment.organization_id, payment.invoice_id, credit_note_id)

    def _refunds_done(self, payment: Payment, refunded_amount_cents: int, now: datetime) -> None:
        """charge.refunded: the processor's running total of refunds on this payment settles
        our requests in the order they were made."""
        done = payment.refunded_amount_cents
        pending = sorted(
            (r for r in payment.refunds.values() if r["status"] == "pending"),
            key=lambda r: r["requested_at"],
        )
        for refund in pending:
            if done + refund["amount_cents"] > refunded_amount_cents:
                break
            done += refund["amount_cents"]
            self._refund_outcome(
                payment.id, refund["credit_note_id"], refund["provider_refund_id"], "succeeded", now
            )

    def _settle_refund(self, organization_id: UUID, invoice_id: UUID, credit_note_id: UUID) -> None:
        parts = [
            p.refunds[credit_note_id]
            for p in self.invoice_payments(organization_id, invoice_id)
            if credit_note_id in p.refunds
        ]
        note = self.credit_notes.credit_note(organization_id, credit_note_id)
        if any(r["status"] == "failed" for r in parts):
            wanted = "failed"
        elif (
            sum(r["amount_cents"] for r in parts if r["status"] == "succeeded")
            >= note.refund_amount_cents
        ):
            wanted = "succeeded"
        else:
            return
        if note.refund_status != wanted:
            self.credit_notes.set_refund_status(organization_id, credit_note_id, wanted)

    # Bank transfers.

    def reconcile_transfers(
        self, organization_id: UUID, transfers: Iterable[TransferReceived]
    ) -> list[Reconciliation]:
        """Match received transfers to pending bank-transfer payments by reference and amount;
        a line seen again matches nothing new."""
        by_reference: dict[str, Payment] = {}
        for invoice in self.billing._all(Invoice, "invoice", organization_id):
            if invoice.status != "finalized":
                continue
            for payment in self.invoice_payments(organization_id, invoice.id):
                if payment.provider == "bank_transfer" and payment.reference:
                    by_reference[payment.reference.upper()] = payment
        results = []
        for transfer in transfers:
            pending = by_reference.get(transfer.reference.strip().upper())
            if pending is None:
                results.append(Reconciliation(transfer, "unknown_reference"))
                continue
            found = self._payment(pending.id)
            if found.status in ("succeeded", "refunded"):
                result = "already_matched"
            elif (transfer.amount_cents, transfer.currency) != (found.amount_cents, found.currency):
                result = "amount_mismatch"
            else:
                self._receive_transfer(found, transfer)
                result = "matched"
            results.append(Reconciliation(transfer, result, found.id, found.invoice_id))
        return results

    def _receive_transfer(self, payment: Payment, transfer: TransferReceived) -> None:
        self._update(payment.id, lambda p: p.succeed(p.reference, transfer.received_at))
        self._settle_invoice(payment.organization_id, payment.invoice_id, transfer.received_at)

    # Processor reconciliation (`tally reconcile`, ADR 0021).

    def reconcile_processors(
        self,
        organization_id: UUID | None,
        date_from: date,
        date_to: date,
        statements: Mapping[str, Sequence[TransferReceived]] | None = None,
    ) -> ProcessorReconciliation:
        """Match each connection's balance transactions of a period (UTC days, both included)
        to the payments Tally recorded through it: unmatched items on either side, amount
        differences, the processor's fees and its payouts; for one organization or (None)
        every one. A bank is not queried: its statement (by connection code) is; a bank
        connection without one is left out. Nothing changes: a statement pays transfers
        through reconcile_transfers."""
        if date_to < date_from:
            raise InvalidValueError("to", "invalid_date", date_to.isoformat())
        if organization_id is None:
            self.billing.catch_up()
        organizations = [organization_id] if organization_id else self._organization_ids()
        parts = [
            self._reconcile_processors(org, date_from, date_to, statements or {})
            for org in organizations
        ]
        return ProcessorReconciliation(
            tuple(item for part in parts for item in part.items),
            tuple(fee for part in parts for fee in part.fees),
            tuple(payout for part in parts for payout in part.payouts),
        )

    def _reconcile_processors(
        self,
        organization_id: UUID,
        date_from: date,
        date_to: date,
        statements: Mapping[str, Sequence[TransferReceived]],
    ) -> ProcessorReconciliation:
        start = datetime.combine(date_from, time(), UTC)
        end = datetime.combine(date_to + timedelta(days=1), time(), UTC)
        by_connection: dict[str, list[Payment]] = {}
        for invoice in self.billing._all(Invoice, "invoice", organization_id):
            for payment in self.invoice_payments(organization_id, invoice.id):
                if payment.payment_type == "provider" and payment.connection_code:
                    by_connection.setdefault(payment.connection_code, []).append(payment)
        items: list[ProcessorItem] = []
        fees: dict[tuple[str, str], int] = {}
        payouts: list[tuple[str, Payout]] = []
        for connection in self.connections(organization_id):
            code = connection.code
            if connection.provider == "bank_transfer":
                if code not in statements:
                    continue
                transactions = statement_transactions(statements[code])
                found_payouts: list[Payout] = []
            else:
                provider = self._provider(connection)
                try:
                    transactions = provider.balance_transactions(
                        start - MATCH_WINDOW, end + MATCH_WINDOW
                    )
                    found_payouts = provider.payouts(start, end)
                except ProviderUnavailableError as error:
                    items.append(
                        ProcessorItem(
                            connection_code=code,
                            result="processor_unavailable",
                            currency=None,
                            processor_cents=None,
                            recorded_cents=None,
                            detail=str(error),
                        )
                    )
                    continue
            items += match_transactions(
                code, transactions, by_connection.get(code, []), (start, end)
            )
            for transaction in transactions:
                if start <= transaction.created_at < end and transaction.fee_cents:
                    key = (code, transaction.currency)
                    fees[key] = fees.get(key, 0) + transaction.fee_cents
            payouts += [(code, payout) for payout in found_payouts]
        return ProcessorReconciliation(
            tuple(items),
            tuple((code, currency, cents) for (code, currency), cents in sorted(fees.items())),
            tuple(payouts),
        )

    # Helpers.

    def _organization_ids(self) -> list[UUID]:
        """Every organization, as the index knows them. No catch-up of its own: the rounds run
        right after a billing run, which caught up, and an extra write on every round only
        contends with the API's writers (SQLite has one)."""
        return self.billing.index.view.aggregate_ids_of_kind("organization")

    def _open_invoices(self, organization_id: UUID) -> list[Invoice]:
        """Finalized invoices not paid yet, oldest first (as far as the index has caught up)."""
        invoice_ids, _ = self.billing.index.view.page(
            organization_id, "invoice", 1, 10**9, statuses=["finalized"]
        )
        found = []
        for invoice_id in reversed(invoice_ids):
            invoice: Invoice = self.billing.repository.get(invoice_id)
            if invoice.status == "finalized" and invoice.payment_status != "succeeded":
                found.append(invoice)
        return found

    def _guarded(
        self, key: object, action: Callable[..., T], *args: Any, **kwargs: Any
    ) -> T | None:
        """One invoice's failure (a bug, a store hiccup) must not stop the round."""
        try:
            return action(*args, **kwargs)
        except Exception:
            logger.exception("Payments: %s failed; the next round tries again", key)
            return None

    def _payment(self, payment_id: UUID) -> Payment:
        payment: Payment = self.billing.repository.get(payment_id)
        return payment

    def _update(self, payment_id: UUID, decide: Callable[[Payment], bool]) -> Payment:
        """Load, decide, save; a concurrent change (a webhook, another worker) reloads."""
        for _ in range(COMMAND_RETRIES_MAX):
            payment = self._payment(payment_id)
            if not decide(payment):
                return payment
            try:
                self.billing.save(payment)
            except IntegrityError:
                continue
            return payment
        raise ConcurrencyConflictError("payment", payment_id)

    @staticmethod
    def _last_attempt(payments: Sequence[Payment]) -> Payment | None:
        attempts = [p for p in payments if p.payment_type == "provider"]
        return attempts[-1] if attempts else None

    def _invoice_number(self, payment: Payment) -> str:
        invoice: Invoice = self.billing.repository.get(payment.invoice_id)
        return invoice.number or str(invoice.id)

    def _customer(self, customer_id: UUID, tick: _Tick) -> Customer:
        if customer_id not in tick.customers:
            customer: Customer = self.billing.repository.get(customer_id)
            tick.customers[customer_id] = customer
        return tick.customers[customer_id]

    def _connection(
        self, organization_id: UUID, code: str, tick: _Tick
    ) -> PaymentConnection | None:
        key = (organization_id, code)
        if key not in tick.connections:
            try:
                tick.connections[key] = self.connection(organization_id, code)
            except NotFoundError:
                tick.connections[key] = None
        return tick.connections[key]

    def _any_connection(self, organization_id: UUID, code: str) -> PaymentConnection | None:
        try:
            return self.connection(organization_id, code)
        except NotFoundError:
            return None

    def _customer_connection(
        self, organization_id: UUID, customer: Customer, tick: _Tick
    ) -> PaymentConnection | None:
        """The connection a customer names: payment_provider and payment_provider_code; the
        code may be left out when the organization has one connection of that provider."""
        if customer.deleted:
            return None
        configuration = customer.fields.get("billing_configuration") or {}
        provider = configuration.get("payment_provider")
        if provider not in PROVIDERS:
            return None
        code = configuration.get("payment_provider_code")
        if code:
            connection = self._connection(organization_id, str(code), tick)
            return connection if connection and connection.provider == provider else None
        candidates = [
            c
            for c in (
                self._connection(organization_id, c, tick)
                for c in self.store.connection_codes(organization_id)
            )
            if c is not None and c.provider == provider
        ]
        return candidates[0] if len(candidates) == 1 else None

    def _provider_customer(
        self, customer: Customer, connection: PaymentConnection, provider: PaymentProvider
    ) -> str | None:
        """The customer's id at the processor (billing_configuration.provider_customer_id),
        created there on first use with a key of its own, and recorded on the customer."""
        if not provider.requires_customer:
            return None
        configuration = customer.fields.get("billing_configuration") or {}
        existing = configuration.get("provider_customer_id")
        if existing:
            return str(existing)
        name = customer.fields.get("name")
        email = customer.fields.get("email")
        provider_customer_id = provider.create_customer(
            ProviderCustomer(
                customer_id=customer.id,
                external_id=customer.external_id,
                name=name if isinstance(name, str) and name != ERASED else None,
                email=email if isinstance(email, str) and email != ERASED else None,
            ),
            idempotency_key=f"tally-customer-{customer.id}-{connection.code}",
        )

        def decide() -> Customer:
            found: Customer = self.billing.repository.get(customer.id)
            current = dict(found.fields.get("billing_configuration") or {})
            if not current.get("provider_customer_id"):
                current["provider_customer_id"] = provider_customer_id
                found.upsert({"billing_configuration": current})
            return found

        recorded = self.billing._command("customer", customer.external_id, decide)
        configuration = recorded.fields.get("billing_configuration") or {}
        return str(configuration["provider_customer_id"])

    def _provider(self, connection: PaymentConnection | None) -> PaymentProvider:
        if connection is None:
            raise NotFoundError("payment_provider", "")
        secrets = self.store.secrets(connection.organization_id, connection.code) or {}
        return self._open(connection.organization_id, connection.code, connection.provider, secrets)

    def _open(
        self, organization_id: UUID, code: str, provider: str, secrets: Mapping[str, str]
    ) -> PaymentProvider:
        key = (organization_id, code, tuple(sorted(secrets.items())))
        if key not in self._opened:
            self._opened[key] = self.providers.open(provider, secrets)
        return self._opened[key]


def invoice_payments_of(billing: "BillingBase", invoice: Invoice) -> InvoicePaymentState:
    """An invoice's payment totals and overdue flag, for its Lago representation."""
    try:
        collection: Collection | None = billing.repository.get(ids.collection_id(invoice.id))
    except AggregateNotFoundError:
        collection = None
    payments: list[Payment] = []
    if collection is not None and collection.organization_id == invoice.organization_id:
        payments = [billing.repository.get(payment_id) for payment_id in collection.payment_ids]
    return invoice_payment_state(invoice, collection, payments)


def _paid_cents(payments: Iterable[Payment]) -> int:
    return sum(p.amount_cents for p in payments if p.status in ("succeeded", "refunded"))


def _check_secrets(
    provider: str, secrets: Mapping[str, str | None], *, required: bool
) -> dict[str, str]:
    names = PROVIDER_SECRETS[provider]
    checked: dict[str, str] = {}
    for name, value in secrets.items():
        if value is None:
            continue
        if name not in names:
            raise InvalidValueError(name, "unsupported_field", "…")
        if not isinstance(value, str) or not 8 <= len(value) <= 500 or value != value.strip():
            raise InvalidValueError(name, "value_is_invalid", "…")  # Never echo a secret.
        checked[name] = value
    if required:
        for name in names:
            if name not in checked:
                raise InvalidValueError(name, "value_is_mandatory")
    return checked
