"""Payments: attempts to collect an invoice through a processor, manual payments, their refunds,
the per-invoice collection that numbers them, and the processor connections (ADR 0018).

Amounts are the invoice's integer minor units; a processor's own units (Stripe's zero-decimal
currencies) are the adapter's business. A processor attempt is numbered per invoice, and its
idempotency key derives from (invoice, attempt number), so a call retried after an outage is the
same call to the processor and never charges twice.
"""

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Final
from uuid import UUID

from eventsourcing.domain import AggregateCreated, AggregateEvent, BaseAggregate, event

from domain import ids
from domain.customer import check_key
from domain.errors import InvalidValueError, NotAllowedError
from domain.invoice import Invoice
from domain.limits import AMOUNT_CENTS_MAX, TEXT_LENGTH_MAX
from domain.money import check_currency

PAYMENT_STATUSES: Final = ("pending", "succeeded", "failed", "canceled", "refunded")
PAYMENT_TYPES: Final = ("provider", "manual")
PROVIDERS: Final = ("stripe", "bank_transfer")
REFUND_STATUSES: Final = ("pending", "succeeded", "failed")
DISPUTE_STATUSES: Final = ("won", "lost")
# Lago's dunning default: retries a day, three days and a week after a failed payment.
RETRY_SCHEDULE_DEFAULT: Final = "1d,3d,7d"
RETRIES_MAX: Final = 10  # More is harassment, not dunning.
RETRY_DELAY_MAX: Final = timedelta(days=90)
_DELAY: Final = re.compile(r"^(\d{1,6})([smhd])$")
_UNITS: Final = {"s": 1, "m": 60, "h": 3600, "d": 86_400}


class PaymentRetryStatusError(NotAllowedError):
    """Lago's invalid_status: only a failed payment of a finalized invoice is retried."""

    code = "invalid_status"


class PaymentInProgressError(NotAllowedError):
    """An attempt is still with the processor (Lago's code for it)."""

    code = "payment_processor_is_currently_handling_payment"


def parse_retry_schedule(value: str, field: str = "retry_schedule") -> tuple[timedelta, ...]:
    """ "1d,3d,7d" → the delay after the n-th failed attempt before attempt n+1; "" is none."""
    if not isinstance(value, str):
        raise InvalidValueError(field, "value_is_invalid", value)
    parts = [part.strip() for part in value.split(",") if part.strip()]
    if len(parts) > RETRIES_MAX:
        raise InvalidValueError(field, "value_is_invalid", value)
    delays = []
    for part in parts:
        match = _DELAY.match(part)
        if match is None:
            raise InvalidValueError(field, "value_is_invalid", value)
        delay = timedelta(seconds=int(match.group(1)) * _UNITS[match.group(2)])
        if not timedelta(0) < delay <= RETRY_DELAY_MAX:
            raise InvalidValueError(field, "value_is_invalid", value)
        delays.append(delay)
    return tuple(delays)


def idempotency_key(invoice_id: UUID, attempt: int) -> str:
    """The processor's idempotency key of an invoice's n-th attempt: the same on every retry."""
    return f"tally-invoice-{invoice_id}-attempt-{attempt}"


def refund_idempotency_key(credit_note_id: UUID, payment_id: UUID) -> str:
    return f"tally-refund-{credit_note_id}-{payment_id}"


def bank_reference(payment_id: UUID, prefix: str) -> str:
    """What a customer writes on a transfer: short, unambiguous, derived from the payment."""
    return f"{prefix}-{payment_id.hex[:12].upper()}"


class PaymentConnection(BaseAggregate[UUID]):
    """A processor account of an organization, named by a code customers refer to
    (billing_configuration.payment_provider_code). Its secrets are never in its events: they
    live in a side table (adapters/payment_store.py)."""

    TOPIC = "tally.PaymentConnection"

    class Event(AggregateEvent):
        pass

    class Created(AggregateCreated, Event):
        TOPIC = "tally.PaymentConnection.Created"
        organization_id: UUID
        code: str
        provider: str
        settings: dict[str, Any]

    class Updated(Event):
        TOPIC = "tally.PaymentConnection.Updated"
        changes: dict[str, Any]

    class Deleted(Event):
        TOPIC = "tally.PaymentConnection.Deleted"

    class Recreated(Event):
        TOPIC = "tally.PaymentConnection.Recreated"
        provider: str
        settings: dict[str, Any]

    @staticmethod
    def create_id(organization_id: UUID, code: str) -> UUID:
        return ids.payment_connection_id(organization_id, code)

    @classmethod
    def create(
        cls, organization_id: UUID, code: str, provider: str, settings: Mapping[str, Any]
    ) -> "PaymentConnection":
        if provider not in PROVIDERS:
            raise InvalidValueError("provider", "value_is_invalid", provider)
        return cls._create(
            cls.Created,
            id=cls.create_id(organization_id, code),
            organization_id=organization_id,
            code=check_key(code, "code"),
            provider=provider,
            settings=check_connection_settings(settings),
        )

    def update(self, settings: Mapping[str, Any]) -> None:
        checked = check_connection_settings(settings)
        changes = {k: v for k, v in checked.items() if self.settings.get(k) != v}
        if changes:
            self._updated(changes=changes)

    def delete(self) -> None:
        if not self.deleted:
            self._deleted()

    def recreate(self, provider: str, settings: Mapping[str, Any]) -> None:
        assert self.deleted, self.id
        if provider not in PROVIDERS:
            raise InvalidValueError("provider", "value_is_invalid", provider)
        self._recreated(provider=provider, settings=check_connection_settings(settings))

    @event(Created)
    def __init__(
        self, organization_id: UUID, code: str, provider: str, settings: dict[str, Any]
    ) -> None:
        self.organization_id = organization_id
        self.code = code
        self.provider = provider
        self.settings = dict(settings)
        self.deleted = False

    @event(Updated)
    def _updated(self, changes: dict[str, Any]) -> None:
        self.settings.update(changes)

    @event(Deleted)
    def _deleted(self) -> None:
        self.deleted = True

    @event(Recreated)
    def _recreated(self, provider: str, settings: dict[str, Any]) -> None:
        self.provider = provider
        self.settings = dict(settings)
        self.deleted = False

    @property
    def name(self) -> str | None:
        value = self.settings.get("name")
        return value if isinstance(value, str) else None

    @property
    def retry_schedule(self) -> tuple[timedelta, ...]:
        return parse_retry_schedule(str(self.settings.get("retry_schedule", "")))

    @property
    def success_redirect_url(self) -> str | None:
        value = self.settings.get("success_redirect_url")
        return value if isinstance(value, str) else None

    @property
    def reference_prefix(self) -> str:
        return str(self.settings.get("reference_prefix") or "TLY")


CONNECTION_SETTINGS: Final = ("name", "retry_schedule", "success_redirect_url", "reference_prefix")


def check_connection_settings(values: Mapping[str, Any]) -> dict[str, Any]:
    """The non-secret settings of a connection, validated; None means not given."""
    checked: dict[str, Any] = {}
    for field, value in values.items():
        if value is None:
            continue
        if field not in CONNECTION_SETTINGS:
            raise InvalidValueError(field, "unsupported_field", value)
        if not isinstance(value, str) or len(value) > TEXT_LENGTH_MAX:
            raise InvalidValueError(field, "value_is_invalid", value)
        if field == "retry_schedule":
            parse_retry_schedule(value, field)
            value = ",".join(part.strip() for part in value.split(",") if part.strip())
        if field == "success_redirect_url" and not value.startswith(("https://", "http://")):
            raise InvalidValueError(field, "url_is_invalid", value)
        if field == "reference_prefix" and not re.fullmatch(r"[A-Z0-9]{1,8}", value):
            raise InvalidValueError(field, "value_is_invalid", value)
        checked[field] = value
    return checked


class Payment(BaseAggregate[UUID]):
    """One payment of one invoice: a processor attempt (numbered per invoice) or a manual one.

    pending → succeeded | failed | canceled; succeeded → refunded once refunds cover it. A
    processor's late news never undoes money received: failed or canceled after succeeded
    records nothing, while succeeded after failed does (the customer paid after all).
    """

    TOPIC = "tally.Payment"

    class Event(AggregateEvent):
        pass

    class Created(AggregateCreated, Event):
        TOPIC = "tally.Payment.Created"
        organization_id: UUID
        invoice_id: UUID
        customer_id: UUID
        external_customer_id: str
        payment_type: str
        number: int  # The n-th of its type for this invoice.
        amount_cents: int
        currency: str
        provider: str | None
        connection_code: str | None
        provider_customer_id: str | None
        payment_method_id: str | None
        idempotency_key: str | None
        reference: str | None
        created_at: datetime

    class Submitted(Event):
        """The processor answered: its id for the payment (and a transfer's reference)."""

        TOPIC = "tally.Payment.Submitted"
        provider_payment_id: str
        at: datetime

    class SubmissionFailed(Event):
        """The processor could not be reached or answered 5xx: retried with the same key."""

        TOPIC = "tally.Payment.SubmissionFailed"
        error: str
        at: datetime

    class Succeeded(Event):
        TOPIC = "tally.Payment.Succeeded"
        provider_payment_id: str | None
        paid_at: datetime

    class Failed(Event):
        TOPIC = "tally.Payment.Failed"
        code: str
        message: str | None
        failed_at: datetime

    class Canceled(Event):
        TOPIC = "tally.Payment.Canceled"
        reason: str
        canceled_at: datetime

    class RefundRequested(Event):
        """Part of this payment goes back for a credit note, recorded before the processor
        is asked, so a retry after an outage asks with the same key."""

        TOPIC = "tally.Payment.RefundRequested"
        credit_note_id: UUID
        amount_cents: int
        idempotency_key: str
        at: datetime

    class RefundUpdated(Event):
        TOPIC = "tally.Payment.RefundUpdated"
        credit_note_id: UUID
        provider_refund_id: str | None
        status: str
        at: datetime

    class DisputeClosed(Event):
        TOPIC = "tally.Payment.DisputeClosed"
        status: str
        at: datetime

    @staticmethod
    def create_id(invoice_id: UUID, payment_type: str, number: int) -> UUID:
        return ids.payment_id(invoice_id, payment_type, number)

    # Commands decide.

    @classmethod
    def attempt(
        cls,
        *,
        organization_id: UUID,
        invoice_id: UUID,
        customer_id: UUID,
        external_customer_id: str,
        number: int,
        amount_cents: int,
        currency: str,
        provider: str,
        connection_code: str,
        provider_customer_id: str | None,
        payment_method_id: str | None,
        reference_prefix: str,
        now: datetime,
    ) -> "Payment":
        """The n-th processor attempt at an invoice, recorded before the processor is called."""
        assert provider in PROVIDERS, provider
        assert number >= 1, number
        _check_amount(amount_cents)
        payment_id = cls.create_id(invoice_id, "provider", number)
        return cls._create(
            cls.Created,
            id=payment_id,
            organization_id=organization_id,
            invoice_id=invoice_id,
            customer_id=customer_id,
            external_customer_id=external_customer_id,
            payment_type="provider",
            number=number,
            amount_cents=amount_cents,
            currency=check_currency(currency),
            provider=provider,
            connection_code=connection_code,
            provider_customer_id=provider_customer_id,
            payment_method_id=payment_method_id,
            idempotency_key=idempotency_key(invoice_id, number),
            reference=(
                bank_reference(payment_id, reference_prefix)
                if provider == "bank_transfer"
                else None
            ),
            created_at=now,
        )

    @classmethod
    def manual(
        cls,
        *,
        organization_id: UUID,
        invoice_id: UUID,
        customer_id: UUID,
        external_customer_id: str,
        number: int,
        amount_cents: int,
        currency: str,
        reference: str,
        paid_at: datetime,
        now: datetime,
    ) -> "Payment":
        """Lago's POST /payments: money received outside any processor, succeeded at once."""
        _check_amount(amount_cents)
        if not isinstance(reference, str) or not 0 < len(reference.strip()) <= 255:
            raise InvalidValueError("reference", "value_is_invalid", reference)
        if paid_at.tzinfo is None:
            raise InvalidValueError("paid_at", "invalid_date", paid_at)
        payment = cls._create(
            cls.Created,
            id=cls.create_id(invoice_id, "manual", number),
            organization_id=organization_id,
            invoice_id=invoice_id,
            customer_id=customer_id,
            external_customer_id=external_customer_id,
            payment_type="manual",
            number=number,
            amount_cents=amount_cents,
            currency=check_currency(currency),
            provider=None,
            connection_code=None,
            provider_customer_id=None,
            payment_method_id=None,
            idempotency_key=None,
            reference=reference,
            created_at=now,
        )
        payment._succeeded(provider_payment_id=None, paid_at=paid_at)
        return payment

    def record_submission(self, provider_payment_id: str, now: datetime) -> bool:
        """The processor's id for this attempt; the same id again records nothing."""
        if self.provider_payment_id == provider_payment_id:
            return False
        assert self.payment_type == "provider", self.id
        self._submitted(provider_payment_id=provider_payment_id, at=now)
        return True

    def record_submission_failure(self, error: str, now: datetime) -> bool:
        if self.status != "pending" or self.provider_payment_id is not None:
            return False  # The processor answered meanwhile (a webhook, a racing worker).
        self._submission_failed(error=error[:TEXT_LENGTH_MAX], at=now)
        return True

    def succeed(self, provider_payment_id: str | None, paid_at: datetime) -> bool:
        if self.status in ("succeeded", "refunded"):
            return False
        self._succeeded(
            provider_payment_id=provider_payment_id or self.provider_payment_id, paid_at=paid_at
        )
        return True

    def fail(self, code: str, message: str | None, failed_at: datetime) -> bool:
        if self.status != "pending":
            return False  # Never undo money received; a second failure is the same failure.
        self._failed(
            code=code[:255] or "unknown",
            message=None if message is None else message[:TEXT_LENGTH_MAX],
            failed_at=failed_at,
        )
        return True

    def cancel(self, reason: str, canceled_at: datetime) -> bool:
        if self.status != "pending":
            return False
        self._canceled(reason=reason[:255] or "canceled", canceled_at=canceled_at)
        return True

    def request_refund(self, credit_note_id: UUID, amount_cents: int, now: datetime) -> bool:
        """Set part of this payment aside for a credit note's refund; once per note."""
        if credit_note_id in self.refunds:
            return False
        if self.status not in ("succeeded", "refunded"):
            raise PaymentNotRefundableError(f"Payment {self.id} is {self.status}.")
        if not 0 < amount_cents <= self.refundable_amount_cents:
            raise InvalidValueError("refund_amount_cents", "value_is_out_of_range", amount_cents)
        self._refund_requested(
            credit_note_id=credit_note_id,
            amount_cents=amount_cents,
            idempotency_key=refund_idempotency_key(credit_note_id, self.id),
            at=now,
        )
        return True

    def update_refund(
        self, credit_note_id: UUID, provider_refund_id: str | None, status: str, now: datetime
    ) -> bool:
        assert status in REFUND_STATUSES, status
        refund = self.refunds[credit_note_id]
        if refund["status"] == status and refund["provider_refund_id"] == (
            provider_refund_id or refund["provider_refund_id"]
        ):
            return False
        if refund["status"] in ("succeeded", "failed") and status == "pending":
            return False  # A late "pending" after the outcome changes nothing.
        self._refund_updated(
            credit_note_id=credit_note_id,
            provider_refund_id=provider_refund_id or refund["provider_refund_id"],
            status=status,
            at=now,
        )
        return True

    def close_dispute(self, status: str, at: datetime) -> bool:
        assert status in DISPUTE_STATUSES, status
        if self.dispute_status == status:
            return False
        self._dispute_closed(status=status, at=at)
        return True

    # Evolvers apply.

    @event(Created)
    def __init__(
        self,
        organization_id: UUID,
        invoice_id: UUID,
        customer_id: UUID,
        external_customer_id: str,
        payment_type: str,
        number: int,
        amount_cents: int,
        currency: str,
        provider: str | None,
        connection_code: str | None,
        provider_customer_id: str | None,
        payment_method_id: str | None,
        idempotency_key: str | None,
        reference: str | None,
        created_at: datetime,
    ) -> None:
        assert payment_type in PAYMENT_TYPES, payment_type
        self.organization_id = organization_id
        self.invoice_id = invoice_id
        self.customer_id = customer_id
        self.external_customer_id = external_customer_id
        self.payment_type = payment_type
        self.number = number
        self.amount_cents = amount_cents
        self.currency = currency
        self.provider = provider
        self.connection_code = connection_code
        self.provider_customer_id = provider_customer_id
        self.payment_method_id = payment_method_id
        self.idempotency_key = idempotency_key
        self.reference = reference
        self.created_at = created_at
        self.provider_payment_id: str | None = None
        self.submission_errors = 0
        self.last_error: str | None = None
        self.settled_status = "pending"  # pending, succeeded, failed or canceled
        self.paid_at: datetime | None = None
        self.failed_at: datetime | None = None
        self.canceled_at: datetime | None = None
        self.failure_code: str | None = None
        self.failure_message: str | None = None
        self.refunds: dict[UUID, dict[str, Any]] = {}
        self.dispute_status: str | None = None
        self.dispute_closed_at: datetime | None = None

    @event(Submitted)
    def _submitted(self, provider_payment_id: str, at: datetime) -> None:
        self.provider_payment_id = provider_payment_id

    @event(SubmissionFailed)
    def _submission_failed(self, error: str, at: datetime) -> None:
        self.submission_errors += 1
        self.last_error = error

    @event(Succeeded)
    def _succeeded(self, provider_payment_id: str | None, paid_at: datetime) -> None:
        self.settled_status = "succeeded"
        self.provider_payment_id = provider_payment_id
        self.paid_at = paid_at

    @event(Failed)
    def _failed(self, code: str, message: str | None, failed_at: datetime) -> None:
        assert self.settled_status == "pending", self.settled_status
        self.settled_status = "failed"
        self.failure_code = code
        self.failure_message = message
        self.failed_at = failed_at

    @event(Canceled)
    def _canceled(self, reason: str, canceled_at: datetime) -> None:
        assert self.settled_status == "pending", self.settled_status
        self.settled_status = "canceled"
        self.failure_code = reason
        self.canceled_at = canceled_at

    @event(RefundRequested)
    def _refund_requested(
        self, credit_note_id: UUID, amount_cents: int, idempotency_key: str, at: datetime
    ) -> None:
        self.refunds[credit_note_id] = {
            "credit_note_id": credit_note_id,
            "amount_cents": amount_cents,
            "idempotency_key": idempotency_key,
            "provider_refund_id": None,
            "status": "pending",
            "requested_at": at,
        }
        assert self.refundable_amount_cents >= 0, self.refunds

    @event(RefundUpdated)
    def _refund_updated(
        self, credit_note_id: UUID, provider_refund_id: str | None, status: str, at: datetime
    ) -> None:
        refund = self.refunds[credit_note_id]
        refund["provider_refund_id"] = provider_refund_id
        refund["status"] = status

    @event(DisputeClosed)
    def _dispute_closed(self, status: str, at: datetime) -> None:
        self.dispute_status = status
        self.dispute_closed_at = at

    # Queries.

    @property
    def status(self) -> str:
        if self.settled_status == "succeeded" and self.refunded_amount_cents >= self.amount_cents:
            return "refunded"
        return self.settled_status

    @property
    def is_submitted(self) -> bool:
        return self.provider_payment_id is not None

    @property
    def refunded_amount_cents(self) -> int:
        """Refunds that went through (requested ones count against the refundable amount)."""
        return sum(
            int(r["amount_cents"]) for r in self.refunds.values() if r["status"] == "succeeded"
        )

    @property
    def refundable_amount_cents(self) -> int:
        if self.settled_status != "succeeded":
            return 0
        reserved = sum(
            int(r["amount_cents"]) for r in self.refunds.values() if r["status"] != "failed"
        )
        return self.amount_cents - reserved


class PaymentNotRefundableError(NotAllowedError):
    code = "payment_not_refundable"


def _check_amount(amount_cents: int) -> None:
    if type(amount_cents) is not int or not 0 < amount_cents <= AMOUNT_CENTS_MAX:
        raise InvalidValueError("amount_cents", "value_is_out_of_range", amount_cents)


class Collection(BaseAggregate[UUID]):
    """The collection of one invoice: its payments in order, and whether it went overdue.

    Saved with every payment it numbers, so two workers racing to start the same attempt
    collide on its version instead of starting two.
    """

    TOPIC = "tally.Collection"

    class Event(AggregateEvent):
        pass

    class Created(AggregateCreated, Event):
        TOPIC = "tally.Collection.Created"
        organization_id: UUID
        invoice_id: UUID

    class PaymentAdded(Event):
        TOPIC = "tally.Collection.PaymentAdded"
        payment_id: UUID
        payment_type: str
        number: int

    class MarkedOverdue(Event):
        TOPIC = "tally.Collection.MarkedOverdue"
        overdue_at: datetime

    @staticmethod
    def create_id(invoice_id: UUID) -> UUID:
        return ids.collection_id(invoice_id)

    @classmethod
    def start(cls, organization_id: UUID, invoice_id: UUID) -> "Collection":
        return cls._create(
            cls.Created,
            id=cls.create_id(invoice_id),
            organization_id=organization_id,
            invoice_id=invoice_id,
        )

    def next_number(self, payment_type: str) -> int:
        return 1 + sum(1 for _, kind in self.payments if kind == payment_type)

    def add(self, payment: Payment) -> None:
        assert payment.invoice_id == self.invoice_id, (payment.invoice_id, self.invoice_id)
        assert payment.number == self.next_number(payment.payment_type), payment.number
        self._payment_added(
            payment_id=payment.id, payment_type=payment.payment_type, number=payment.number
        )

    def mark_overdue(self, now: datetime) -> bool:
        if self.overdue_at is not None:
            return False
        self._marked_overdue(overdue_at=now)
        return True

    @event(Created)
    def __init__(self, organization_id: UUID, invoice_id: UUID) -> None:
        self.organization_id = organization_id
        self.invoice_id = invoice_id
        self.payments: list[tuple[UUID, str]] = []
        self.overdue_at: datetime | None = None

    @event(PaymentAdded)
    def _payment_added(self, payment_id: UUID, payment_type: str, number: int) -> None:
        self.payments.append((payment_id, payment_type))
        assert number == sum(1 for _, kind in self.payments if kind == payment_type), number

    @event(MarkedOverdue)
    def _marked_overdue(self, overdue_at: datetime) -> None:
        self.overdue_at = overdue_at

    @property
    def payment_ids(self) -> Sequence[UUID]:
        return [payment_id for payment_id, _ in self.payments]


@dataclass(frozen=True)
class InvoicePaymentState:
    """What an invoice's payments amount to, as Lago's invoice shows it."""

    total_paid_amount_cents: int
    total_due_amount_cents: int
    payment_overdue: bool
    payment_dispute_lost_at: datetime | None = None


def invoice_payment_state(
    invoice: Invoice, collection: Collection | None, payments: Iterable[Payment]
) -> InvoicePaymentState:
    """Lago's total_paid_amount_cents (the total once paid; before that, what succeeded
    payments brought, partial manual ones included), total_due_amount_cents (total − paid −
    credit-note offsets) and payment_overdue (finalized, not paid, something still due, and
    marked overdue by dunning once its payment_due_date passed), and when a dispute of one of
    its payments was lost (Lago's payment_dispute_lost_at)."""
    payments = list(payments)
    total_cents = invoice.totals.total_amount_cents
    if invoice.payment_status == "succeeded":
        paid_cents = total_cents
    else:
        received = sum(p.amount_cents for p in payments if p.settled_status == "succeeded")
        paid_cents = min(total_cents, received)
    due_cents = max(0, total_cents - paid_cents - invoice.total_offsetted_credit_note_amount_cents)
    overdue = (
        invoice.status == "finalized"
        and invoice.payment_status != "succeeded"
        and due_cents > 0
        and collection is not None
        and collection.overdue_at is not None
    )
    lost = [p.dispute_closed_at for p in payments if p.dispute_status == "lost"]
    lost_at = max((at for at in lost if at is not None), default=None)
    return InvoicePaymentState(paid_cents, due_cents, overdue, lost_at)
