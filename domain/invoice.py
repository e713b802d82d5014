"""Invoice and the gapless number Sequence: drafts recomputed until finalized, then immutable."""

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Any, Final
from uuid import UUID

from eventsourcing.domain import AggregateCreated, AggregateEvent, BaseAggregate, event

from domain import ids
from domain.credit_note import (
    CREDITABLE_INVOICE_TYPES,
    CreditNoteAmounts,
    CreditNoteInvalidTypeOrStatusError,
    check_split,
    credit_note_amounts,
    split_credit_note_amounts,
)
from domain.errors import InvalidValueError, NotAllowedError
from domain.invoicing import FeeLine, Totals, totals
from domain.limits import AMOUNT_CENTS_MAX

INVOICE_TYPES: Final = ("subscription", "add_on", "credit", "one_off", "advance_charges")
PAYMENT_STATUSES: Final = ("pending", "succeeded", "failed")
INVOICING_REASONS: Final = (
    "subscription_starting",
    "subscription_periodic",
    "subscription_terminating",
    "in_advance_charge",
)


class InvoiceNotDraftError(NotAllowedError):
    code = "invoice_not_draft"


class InvoiceNotVoidableError(NotAllowedError):
    code = "not_voidable"


class PaymentStatusOnDraftError(NotAllowedError):
    code = "payment_status_update_on_draft_invoice"


@dataclass(frozen=True)
class VoidCreditNote:
    """A credit note a void with generate_credit_note issues (§8.8), decided by the invoice."""

    amounts: CreditNoteAmounts
    credit_amount_cents: int
    refund_amount_cents: int
    offset_amount_cents: int
    voided: bool  # Its credit is voided at once: the part nobody gets back.


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

    class TaxDecisionRecorded(Event):
        """A tax engine's decision for this invoice: regime, country, rates-dataset version,
        evidence, and the legal mention the invoice must carry."""

        TOPIC = "tally.Invoice.TaxDecisionRecorded"
        decision: dict[str, Any]
        legal_mention: str | None

    class Voided(Event):
        TOPIC = "tally.Invoice.Voided"
        voided_at: datetime

    class PaymentStatusChanged(Event):
        TOPIC = "tally.Invoice.PaymentStatusChanged"
        payment_status: str

    class CreditNoteRecorded(Event):
        """A credit note issued against this invoice: per fee, what it credited (§8.7)."""

        TOPIC = "tally.Invoice.CreditNoteRecorded"
        credit_note_id: UUID
        origin: str | None  # A lifecycle note's natural key (§5.6, §5.7); None when manual.
        items: list[dict[str, Any]]  # [{"fee_key": str, "amount_cents": int}]
        total_amount_cents: int
        credit_amount_cents: int
        refund_amount_cents: int
        offset_amount_cents: int

    class CreditApplied(Event):
        """Part of the customer's credit (a credit note's balance) pays this draft (§8.2)."""

        TOPIC = "tally.Invoice.CreditApplied"
        credit_note_id: UUID
        amount_cents: int

    class PrepaidCreditApplied(Event):
        """A wallet's credits pay part of this draft, after tax and credit notes (§6.3)."""

        TOPIC = "tally.Invoice.PrepaidCreditApplied"
        wallet_id: UUID
        wallet_transaction_id: UUID
        amount_cents: int
        granted_amount_cents: int  # Of which granted credits (Lago's prepaid_granted_...).

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

    def record_tax_decision(self, decision: dict[str, Any], legal_mention: str | None) -> None:
        """Keep the tax engine's decision with a draft; records nothing when unchanged."""
        if self.status != "draft":
            raise InvoiceNotDraftError(f"Invoice {self.id} is {self.status}.")
        if (decision, legal_mention) != (self.tax_decision, self.legal_mention):
            self._tax_decision_recorded(decision=decision, legal_mention=legal_mention)

    def void(self, now: datetime, *, generate_credit_note: bool = False) -> None:
        """Lago's void: finalized invoices whose payment has not succeeded, or any finalized
        one with generate_credit_note (its notes recorded first: void_credit_notes, §8.8)."""
        if self.status != "finalized" or (
            self.payment_status == "succeeded" and not generate_credit_note
        ):
            raise InvoiceNotVoidableError(f"Invoice {self.id} cannot be voided.")
        self._voided(voided_at=now)

    def void_credit_notes(
        self,
        credit_amount_cents: int,
        refund_amount_cents: int,
        *,
        paid_amount_cents: int,
        returned_cents: int,
    ) -> list[VoidCreditNote]:
        """The credit notes a void with generate_credit_note issues (Lago's Invoices::
        VoidService, §8.8), or a refusal. Decides, records nothing.

        `paid_amount_cents` is what payments brought in; `returned_cents` what the void gives
        back to wallets. The first note credits and refunds the amounts asked, tax included;
        the second takes everything else left to credit: what is still due and what went back
        to the wallets as an offset (the receivable the void closes), the rest as credit voided
        at once (what the customer does not get back). Both are shares of one note on every
        remaining line, so together they credit the invoice exactly, tax per rate included.

        Refused (422 credit_refund_amount, Lago's total_amount_exceeds_invoice_amount): a
        refund above what was paid and not refunded yet, or credit + refund above what the
        customer paid for the invoice (in money or credit notes, less what notes gave back).
        Stricter than Lago, which lets credit reach the whole creditable amount even unpaid.
        """
        if self.status != "finalized":
            raise InvoiceNotVoidableError(f"Invoice {self.id} cannot be voided.")
        self._check_creditable()
        for field, value in (
            ("credit_amount", credit_amount_cents),
            ("refund_amount", refund_amount_cents),
        ):
            if not 0 <= value <= AMOUNT_CENTS_MAX:
                raise InvalidValueError(field, "invalid_value", value)
        remaining = {
            fee.key: fee.amount_cents - self.credited_fee_cents.get(fee.key, 0)
            for fee in self.fees
            if fee.amount_cents - self.credited_fee_cents.get(fee.key, 0) > 0
        }
        whole = self.credit_note_amounts(remaining) if remaining else None
        creditable = whole.total_amount_cents if whole is not None else 0
        paid = self.payment_status == "succeeded"
        due = max(0, self.total_due_amount_cents - (0 if paid else paid_amount_cents))
        refundable = max(0, paid_amount_cents - self.total_refunded_amount_cents)
        allowed = creditable - due - returned_cents
        wanted = credit_amount_cents + refund_amount_cents
        if refund_amount_cents > refundable or wanted > max(0, allowed):
            raise InvalidValueError(
                "credit_refund_amount", "total_amount_exceeds_invoice_amount", wanted
            )
        if whole is None:
            return []
        first, rest = split_credit_note_amounts(
            self.fees, self.tax_rates, whole, [wanted, creditable - wanted]
        )
        notes = []
        if wanted > 0:
            notes.append(VoidCreditNote(first, credit_amount_cents, refund_amount_cents, 0, False))
        left = creditable - wanted
        if left > 0:
            offset = min(left, due + returned_cents)
            notes.append(VoidCreditNote(rest, left - offset, 0, offset, left > offset))
        return notes

    def record_void_credit_note(
        self, credit_note_id: UUID, note: VoidCreditNote, origin: str
    ) -> None:
        """Record a note void_credit_notes decided (it checked the caps)."""
        assert origin not in self.credit_note_origins, origin
        self._check_creditable()
        for key, cents in note.amounts.items:
            fee = next(f for f in self.fees if f.key == key)
            assert cents <= fee.amount_cents - self.credited_fee_cents.get(key, 0), (key, cents)
        total_cents = note.amounts.total_amount_cents
        check_split(
            total_cents,
            note.credit_amount_cents,
            note.refund_amount_cents,
            note.offset_amount_cents,
        )
        self._credit_note_recorded(
            credit_note_id=credit_note_id,
            origin=origin,
            items=[{"fee_key": key, "amount_cents": cents} for key, cents in note.amounts.items],
            total_amount_cents=total_cents,
            credit_amount_cents=note.credit_amount_cents,
            refund_amount_cents=note.refund_amount_cents,
            offset_amount_cents=note.offset_amount_cents,
        )

    def set_payment_status(self, payment_status: str) -> None:
        if payment_status not in PAYMENT_STATUSES:
            raise InvalidValueError("payment_status", "value_is_invalid", payment_status)
        if self.status == "draft":
            raise PaymentStatusOnDraftError(f"Invoice {self.id} is a draft.")
        if payment_status != self.payment_status:
            self._payment_status_changed(payment_status=payment_status)

    # Credit notes issued against this invoice (§8.7), and credits applied to it (§8.2).

    def credit_note_amounts(self, items: Mapping[str, int]) -> CreditNoteAmounts:
        """What a credit note on these fee amounts (by fee key) would come to; refuses an
        invoice that takes no credit note and any item over what is left of its fee."""
        self._check_creditable()
        fees = {fee.key: fee for fee in self.fees}
        for key, amount_cents in items.items():
            fee = fees.get(key)
            if fee is None:
                raise InvalidValueError("fee_id", "value_is_invalid", key)
            if amount_cents < 0:
                raise InvalidValueError("amount_cents", "invalid_value", amount_cents)
            if amount_cents > fee.amount_cents - self.credited_fee_cents.get(key, 0):
                raise InvalidValueError(
                    "amount_cents", "higher_than_remaining_fee_amount", amount_cents
                )
        amounts = credit_note_amounts(self.fees, self.tax_rates, self.credited_fee_cents, items)
        # Guaranteed by the per-fee caps and the cumulative tax (domain/credit_note.py).
        assert amounts.total_amount_cents <= self.creditable_amount_cents, (
            amounts.total_amount_cents,
            self.creditable_amount_cents,
        )
        return amounts

    def record_credit_note(
        self,
        credit_note_id: UUID,
        items: Mapping[str, int],
        *,
        credit_amount_cents: int,
        refund_amount_cents: int,
        offset_amount_cents: int,
        origin: str | None = None,
    ) -> CreditNoteAmounts:
        """Accept a credit note against this invoice, or refuse it; returns its amounts.

        The total is Σ items + tax (per rate, at this invoice's rates) and must split exactly
        into credit + refund + offset; refund ≤ paid − refunded; offset ≤ the amount due.
        """
        assert origin is None or origin not in self.credit_note_origins, origin
        amounts = self.credit_note_amounts(items)
        total_cents = amounts.total_amount_cents
        check_split(total_cents, credit_amount_cents, refund_amount_cents, offset_amount_cents)
        if refund_amount_cents > 0 and self.total_paid_amount_cents <= 0:
            raise InvalidValueError(
                "refund_amount_cents", "cannot_refund_unpaid_invoice", refund_amount_cents
            )
        if refund_amount_cents > self.refundable_amount_cents:
            raise InvalidValueError(
                "refund_amount_cents", "higher_than_remaining_invoice_amount", refund_amount_cents
            )
        if offset_amount_cents > self.offsettable_amount_cents:
            raise InvalidValueError(
                "offset_amount_cents", "higher_than_remaining_invoice_amount", offset_amount_cents
            )
        self._credit_note_recorded(
            credit_note_id=credit_note_id,
            origin=origin,
            items=[{"fee_key": key, "amount_cents": cents} for key, cents in amounts.items],
            total_amount_cents=total_cents,
            credit_amount_cents=credit_amount_cents,
            refund_amount_cents=refund_amount_cents,
            offset_amount_cents=offset_amount_cents,
        )
        return amounts

    def apply_credit(self, credit_note_id: UUID, amount_cents: int) -> None:
        """Credit from a credit note pays part of this draft, after tax (§8.2)."""
        if self.status != "draft":
            raise InvoiceNotDraftError(f"Invoice {self.id} is {self.status}.")
        assert 0 < amount_cents <= self.totals.total_amount_cents, amount_cents
        self._credit_applied(credit_note_id=credit_note_id, amount_cents=amount_cents)

    def apply_prepaid_credit(
        self,
        wallet_id: UUID,
        wallet_transaction_id: UUID,
        amount_cents: int,
        granted_amount_cents: int,
    ) -> None:
        """A wallet's credits pay part of this draft (§6.3), recorded with the wallet's debit."""
        if self.status != "draft":
            raise InvoiceNotDraftError(f"Invoice {self.id} is {self.status}.")
        assert 0 < amount_cents <= self.totals.total_amount_cents, amount_cents
        assert 0 <= granted_amount_cents <= amount_cents, granted_amount_cents
        self._prepaid_credit_applied(
            wallet_id=wallet_id,
            wallet_transaction_id=wallet_transaction_id,
            amount_cents=amount_cents,
            granted_amount_cents=granted_amount_cents,
        )

    def _check_creditable(self) -> None:
        if self.status != "finalized" or self.invoice_type not in CREDITABLE_INVOICE_TYPES:
            raise CreditNoteInvalidTypeOrStatusError(
                f"Invoice {self.id} ({self.invoice_type}, {self.status}) takes no credit note."
            )

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
        self.tax_decision: dict[str, Any] | None = None
        self.legal_mention: str | None = None
        self.number: str | None = None
        self.sequential_id: int | None = None
        self.payment_due_date: date | None = None
        self.finalized_at: datetime | None = None
        self.voided_at: datetime | None = None
        self.credited_fee_cents: dict[str, int] = {}  # fee key → credited by credit notes
        self.credit_notes_issued: list[dict[str, Any]] = []  # Notes against this invoice.
        self.credit_note_origins: dict[str, UUID] = {}
        self.applied_credits: list[tuple[UUID, int]] = []  # Notes' credit paying this one.
        self.prepaid_credits: list[dict[str, Any]] = []  # Wallets' credits paying this one.

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

    @event(TaxDecisionRecorded)
    def _tax_decision_recorded(self, decision: dict[str, Any], legal_mention: str | None) -> None:
        self.tax_decision = decision
        self.legal_mention = legal_mention

    @event(Voided)
    def _voided(self, voided_at: datetime) -> None:
        self.status = "voided"
        self.voided_at = voided_at

    @event(PaymentStatusChanged)
    def _payment_status_changed(self, payment_status: str) -> None:
        self.payment_status = payment_status

    @event(CreditNoteRecorded)
    def _credit_note_recorded(
        self,
        credit_note_id: UUID,
        origin: str | None,
        items: list[dict[str, Any]],
        total_amount_cents: int,
        credit_amount_cents: int,
        refund_amount_cents: int,
        offset_amount_cents: int,
    ) -> None:
        amounts = {fee["key"]: fee["amount_cents"] for fee in self.fee_events}
        for item in items:
            key = item["fee_key"]
            self.credited_fee_cents[key] = (
                self.credited_fee_cents.get(key, 0) + item["amount_cents"]
            )
            assert self.credited_fee_cents[key] <= amounts[key], (key, self.credited_fee_cents)
        self.credit_notes_issued.append(
            {
                "credit_note_id": credit_note_id,
                "origin": origin,
                "items": items,
                "total_amount_cents": total_amount_cents,
                "credit_amount_cents": credit_amount_cents,
                "refund_amount_cents": refund_amount_cents,
                "offset_amount_cents": offset_amount_cents,
            }
        )
        if origin is not None:
            self.credit_note_origins[origin] = credit_note_id

    @event(CreditApplied)
    def _credit_applied(self, credit_note_id: UUID, amount_cents: int) -> None:
        self.applied_credits.append((credit_note_id, amount_cents))
        assert self.totals.total_amount_cents >= 0, self.applied_credits

    @event(PrepaidCreditApplied)
    def _prepaid_credit_applied(
        self,
        wallet_id: UUID,
        wallet_transaction_id: UUID,
        amount_cents: int,
        granted_amount_cents: int,
    ) -> None:
        self.prepaid_credits.append(
            {
                "wallet_id": wallet_id,
                "wallet_transaction_id": wallet_transaction_id,
                "amount_cents": amount_cents,
                "granted_amount_cents": granted_amount_cents,
            }
        )
        assert self.totals.total_amount_cents >= 0, self.prepaid_credits

    # Queries.

    @property
    def fees(self) -> list[FeeLine]:
        return [FeeLine.from_event(fee) for fee in self.fee_events]

    @property
    def totals(self) -> Totals:
        return replace(
            totals(self.fees, self.tax_rates),
            credit_notes_amount_cents=self.credit_notes_amount_cents,
            prepaid_credit_amount_cents=self.prepaid_credit_amount_cents,
        )

    @property
    def prepaid_credit_amount_cents(self) -> int:
        """Wallets' credits applied to this invoice (§6.3)."""
        return sum(int(credit["amount_cents"]) for credit in self.prepaid_credits)

    @property
    def prepaid_granted_credit_amount_cents(self) -> int:
        return sum(int(credit["granted_amount_cents"]) for credit in self.prepaid_credits)

    @property
    def credit_notes_amount_cents(self) -> int:
        """Credit from credit notes applied to this invoice (Lago's credit_notes_amount_cents)."""
        return sum(cents for _, cents in self.applied_credits)

    def _issued_sum(self, field: str) -> int:
        return sum(int(note[field]) for note in self.credit_notes_issued)

    @property
    def credit_notes_total_amount_cents(self) -> int:
        """Σ totals of the credit notes issued against this invoice."""
        return self._issued_sum("total_amount_cents")

    @property
    def creditable_amount_cents(self) -> int:
        """What credit notes may still take: fees and taxes billed minus earlier notes."""
        billed = self.totals.sub_total_including_taxes_amount_cents
        return billed - self.credit_notes_total_amount_cents

    @property
    def total_paid_amount_cents(self) -> int:
        return self.totals.total_amount_cents if self.payment_status == "succeeded" else 0

    @property
    def total_refunded_amount_cents(self) -> int:
        return self._issued_sum("refund_amount_cents")

    @property
    def total_offsetted_credit_note_amount_cents(self) -> int:
        return self._issued_sum("offset_amount_cents")

    @property
    def void_offset_amount_cents(self) -> int:
        """Offsets of the credit notes a void issued (§8.8): they close what the void reopened
        (the amount due, the wallets' part), never part of what a payment status covered."""
        return sum(
            int(note["offset_amount_cents"])
            for note in self.credit_notes_issued
            if (note["origin"] or "").startswith("void:")
        )

    @property
    def refundable_amount_cents(self) -> int:
        return max(0, self.total_paid_amount_cents - self.total_refunded_amount_cents)

    @property
    def total_due_amount_cents(self) -> int:
        """§8.2: total_amount − paid − credit-note offsets."""
        return max(
            0,
            self.totals.total_amount_cents
            - self.total_paid_amount_cents
            - self.total_offsetted_credit_note_amount_cents,
        )

    @property
    def offsettable_amount_cents(self) -> int:
        return min(self.total_due_amount_cents, self.creditable_amount_cents)


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
