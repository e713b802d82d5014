"""Invoice and the gapless number Sequence: drafts recomputed until finalized, then immutable."""

from collections.abc import Mapping, Sequence
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Any, Final
from uuid import UUID

from eventsourcing.domain import AggregateCreated, AggregateEvent, BaseAggregate, event

from domain import ids
from domain.errors import InvalidValueError, NotAllowedError
from domain.invoicing import FeeLine, Totals, totals

INVOICE_TYPES: Final = ("subscription", "add_on", "credit", "one_off", "advance_charges")
PAYMENT_STATUSES: Final = ("pending", "succeeded", "failed")
INVOICING_REASONS: Final = (
    "subscription_starting",
    "subscription_periodic",
    "subscription_terminating",
)


class InvoiceNotDraftError(NotAllowedError):
    code = "invoice_not_draft"


class InvoiceNotVoidableError(NotAllowedError):
    code = "not_voidable"


class PaymentStatusOnDraftError(NotAllowedError):
    code = "payment_status_update_on_draft_invoice"


class Invoice(BaseAggregate[UUID]):
    TOPIC = "tally.Invoice"

    class Event(AggregateEvent):
        pass

    class Created(AggregateCreated, Event):
        """A draft, with every input its amounts came from."""

        TOPIC = "tally.Invoice.Created"
        organization_id: UUID
        customer_id: UUID
        external_customer_id: str
        invoice_type: str
        currency: str
        issuing_date: date
        net_payment_term: int
        billing_periods: list[dict[str, Any]]
        fees: list[dict[str, Any]]
        watermark: int
        tax_rates: dict[str, Decimal]

    class Refreshed(Event):
        """A draft recomputed (late usage before finalization, a refresh, the grace period)."""

        TOPIC = "tally.Invoice.Refreshed"
        billing_periods: list[dict[str, Any]]
        fees: list[dict[str, Any]]
        watermark: int
        tax_rates: dict[str, Decimal]

    class Finalized(Event):
        TOPIC = "tally.Invoice.Finalized"
        number: str
        sequential_id: int
        issuing_date: date
        payment_due_date: date
        payment_status: str

    class Voided(Event):
        TOPIC = "tally.Invoice.Voided"
        voided_at: datetime

    class PaymentStatusChanged(Event):
        TOPIC = "tally.Invoice.PaymentStatusChanged"
        payment_status: str

    @classmethod
    def draft(
        cls,
        invoice_id: UUID,
        *,
        organization_id: UUID,
        customer_id: UUID,
        external_customer_id: str,
        invoice_type: str,
        currency: str,
        issuing_date: date,
        net_payment_term: int,
        billing_periods: Sequence[Mapping[str, Any]],
        fees: Sequence[FeeLine],
        watermark: int,
        tax_rates: Mapping[str, Decimal],
    ) -> "Invoice":
        assert invoice_type in INVOICE_TYPES, invoice_type
        return cls._create(
            cls.Created,
            id=invoice_id,
            organization_id=organization_id,
            customer_id=customer_id,
            external_customer_id=external_customer_id,
            invoice_type=invoice_type,
            currency=currency,
            issuing_date=issuing_date,
            net_payment_term=net_payment_term,
            billing_periods=[dict(p) for p in billing_periods],
            fees=[fee.as_event() for fee in fees],
            watermark=watermark,
            tax_rates=dict(tax_rates),
        )

    # Commands decide.

    def refresh(
        self,
        billing_periods: Sequence[Mapping[str, Any]],
        fees: Sequence[FeeLine],
        watermark: int,
        tax_rates: Mapping[str, Decimal],
    ) -> bool:
        """Recompute a draft; records nothing when nothing changed. Returns whether it did."""
        if self.status != "draft":
            raise InvoiceNotDraftError(f"Invoice {self.id} is {self.status}.")
        new_fees = [fee.as_event() for fee in fees]
        if new_fees == self.fee_events and dict(tax_rates) == self.tax_rates:
            return False
        self._refreshed(
            billing_periods=[dict(p) for p in billing_periods],
            fees=new_fees,
            watermark=watermark,
            tax_rates=dict(tax_rates),
        )
        return True

    def finalize(self, number: str, sequential_id: int, issuing_date: date) -> None:
        if self.status != "draft":
            raise InvoiceNotDraftError(f"Invoice {self.id} is {self.status}.")
        self._finalized(
            number=number,
            sequential_id=sequential_id,
            issuing_date=issuing_date,
            payment_due_date=issuing_date + timedelta(days=self.net_payment_term),
            # Nothing to collect: settled at once (§8.2).
            payment_status="succeeded" if self.totals.total_amount_cents <= 0 else "pending",
        )

    def void(self, now: datetime) -> None:
        """Lago's void: finalized invoices whose payment has not succeeded (§8.8)."""
        if self.status != "finalized" or self.payment_status == "succeeded":
            raise InvoiceNotVoidableError(f"Invoice {self.id} cannot be voided.")
        self._voided(voided_at=now)

    def set_payment_status(self, payment_status: str) -> None:
        if payment_status not in PAYMENT_STATUSES:
            raise InvalidValueError("payment_status", "value_is_invalid", payment_status)
        if self.status == "draft":
            raise PaymentStatusOnDraftError(f"Invoice {self.id} is a draft.")
        if payment_status != self.payment_status:
            self._payment_status_changed(payment_status=payment_status)

    # Evolvers apply.

    @event(Created)
    def __init__(
        self,
        organization_id: UUID,
        customer_id: UUID,
        external_customer_id: str,
        invoice_type: str,
        currency: str,
        issuing_date: date,
        net_payment_term: int,
        billing_periods: list[dict[str, Any]],
        fees: list[dict[str, Any]],
        watermark: int,
        tax_rates: dict[str, Decimal],
    ) -> None:
        self.organization_id = organization_id
        self.customer_id = customer_id
        self.external_customer_id = external_customer_id
        self.invoice_type = invoice_type
        self.currency = currency
        self.issuing_date = issuing_date
        self.net_payment_term = net_payment_term
        self.billing_periods = billing_periods
        self.fee_events = fees
        self.watermark = watermark
        self.tax_rates = tax_rates
        self.status = "draft"
        self.payment_status = "pending"
        self.number: str | None = None
        self.sequential_id: int | None = None
        self.payment_due_date: date | None = None
        self.finalized_at: datetime | None = None
        self.voided_at: datetime | None = None

    @event(Refreshed)
    def _refreshed(
        self,
        billing_periods: list[dict[str, Any]],
        fees: list[dict[str, Any]],
        watermark: int,
        tax_rates: dict[str, Decimal],
    ) -> None:
        self.billing_periods = billing_periods
        self.fee_events = fees
        self.watermark = watermark
        self.tax_rates = tax_rates

    @event(Finalized)
    def _finalized(
        self,
        number: str,
        sequential_id: int,
        issuing_date: date,
        payment_due_date: date,
        payment_status: str,
    ) -> None:
        self.status = "finalized"
        self.number = number
        self.sequential_id = sequential_id
        self.issuing_date = issuing_date
        self.payment_due_date = payment_due_date
        self.payment_status = payment_status
        self.finalized_at = self.modified_on

    @event(Voided)
    def _voided(self, voided_at: datetime) -> None:
        self.status = "voided"
        self.voided_at = voided_at

    @event(PaymentStatusChanged)
    def _payment_status_changed(self, payment_status: str) -> None:
        self.payment_status = payment_status

    # Queries.

    @property
    def fees(self) -> list[FeeLine]:
        return [FeeLine.from_event(fee) for fee in self.fee_events]

    @property
    def totals(self) -> Totals:
        return totals(self.fees, self.tax_rates)


class NumberSequence(BaseAggregate[UUID]):
    """A gapless series of document numbers: each allocation is saved with its document."""

    TOPIC = "tally.Sequence"

    class Event(AggregateEvent):
        pass

    class Created(AggregateCreated, Event):
        TOPIC = "tally.Sequence.Created"
        organization_id: UUID
        series: str

    class Allocated(Event):
        TOPIC = "tally.Sequence.Allocated"
        value: int
        document_id: UUID

    @staticmethod
    def create_id(organization_id: UUID, series: str) -> UUID:
        return ids.sequence_id(organization_id, series)

    @classmethod
    def start(cls, organization_id: UUID, series: str) -> "NumberSequence":
        return cls(organization_id=organization_id, series=series)

    def allocate(self, document_id: UUID) -> int:
        value = self.last_value + 1
        self._allocated(value=value, document_id=document_id)
        return value

    @event(Created)
    def __init__(self, organization_id: UUID, series: str) -> None:
        self.organization_id = organization_id
        self.series = series
        self.last_value = 0

    @event(Allocated)
    def _allocated(self, value: int, document_id: UUID) -> None:
        assert value == self.last_value + 1, (value, self.last_value)  # Gapless by construction.
        self.last_value = value


def invoice_number(prefix: str, sequential_id: int, finalized_on: date) -> str:
    """Lago's per-organization form: <prefix>-<YYYYMM>-<sequence %03d>, one series across months."""
    return f"{prefix}-{finalized_on:%Y%m}-{sequential_id:03d}"


def document_prefix(organization_name: str, organization_id: UUID) -> str:
    """Lago's default prefix: the name's first three letters and the id's last four characters."""
    letters = "".join(c for c in organization_name.upper() if c.isalnum())[:3] or "ORG"
    return f"{letters}-{str(organization_id)[-4:].upper()}"
