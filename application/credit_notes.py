"""Credit notes (Lago's credit_notes endpoints) and the customer's credit balance (§8.7).

A credit note is saved with the invoice that records it and with the invoice's credit-note
number sequence, in one transaction: two racing notes on one invoice cannot both pass its caps.
"""

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any
from uuid import UUID

from eventsourcing.application import AggregateNotFoundError

from application.base import BillingBase
from application.errors import NotFoundError
from domain import ids
from domain.credit_note import (
    CREDIT_STATUSES,
    REFUND_STATUSES,
    CreditNote,
    CreditNoteAmounts,
    check_reason,
    credit_note_series,
)
from domain.customer import Customer
from domain.errors import InvalidValueError
from domain.invoice import Invoice, NumberSequence, VoidCreditNote
from domain.periods import local_date

if TYPE_CHECKING:
    from application.billing import Billing
    from application.invoicing import Invoicing

DEFAULT_REASON = "other"


@dataclass(frozen=True)
class CreditNoteEstimate:
    """Lago's estimate: what a credit note on these items would come to, never stored."""

    invoice: Invoice
    amounts: CreditNoteAmounts
    max_creditable_amount_cents: int
    max_refundable_amount_cents: int
    max_offsettable_amount_cents: int


class CreditNotes:
    def __init__(self, billing: "Billing", invoicing: "Invoicing") -> None:
        self.billing = billing
        self.invoicing = invoicing

    # Commands.

    def create(
        self,
        organization_id: UUID,
        invoice_id: UUID,
        items: Sequence[tuple[str, int]],
        *,
        reason: str | None = None,
        description: str | None = None,
        credit_amount_cents: int = 0,
        refund_amount_cents: int = 0,
        offset_amount_cents: int = 0,
    ) -> CreditNote:
        """Lago's POST /credit_notes. Items name fees by lago_id (or by key)."""
        check_reason(reason or DEFAULT_REASON)
        now = self.billing.now()

        def decide() -> list[Any]:
            invoice = self.invoicing.invoice(organization_id, invoice_id)
            return issue_credit_note(
                self.billing,
                invoice,
                fee_amounts(invoice, items),
                credit_amount_cents=credit_amount_cents,
                refund_amount_cents=refund_amount_cents,
                offset_amount_cents=offset_amount_cents,
                reason=reason or DEFAULT_REASON,
                description=description,
                origin=None,
                now=now,
            )

        credit_note: CreditNote = self.billing._command_many("invoice", invoice_id, decide)[0]
        return credit_note

    def void(self, organization_id: UUID, credit_note_id: UUID) -> CreditNote:
        now = self.billing.now()

        def decide() -> CreditNote:
            credit_note = self.credit_note(organization_id, credit_note_id)
            credit_note.void(now)
            return credit_note

        return self.billing._command("credit_note", credit_note_id, decide)

    def set_refund_status(
        self, organization_id: UUID, credit_note_id: UUID, refund_status: str
    ) -> CreditNote:
        def decide() -> CreditNote:
            credit_note = self.credit_note(organization_id, credit_note_id)
            credit_note.set_refund_status(refund_status)
            return credit_note

        return self.billing._command("credit_note", credit_note_id, decide)

    # Queries.

    def estimate(
        self, organization_id: UUID, invoice_id: UUID, items: Sequence[tuple[str, int]]
    ) -> CreditNoteEstimate:
        """Lago's POST /credit_notes/estimate: the amounts and the most each destination takes."""
        invoice = self.invoicing.invoice(organization_id, invoice_id)
        amounts = invoice.credit_note_amounts(fee_amounts(invoice, items))
        total_cents = amounts.total_amount_cents
        return CreditNoteEstimate(
            invoice=invoice,
            amounts=amounts,
            max_creditable_amount_cents=total_cents,
            max_refundable_amount_cents=min(total_cents, invoice.refundable_amount_cents),
            max_offsettable_amount_cents=min(total_cents, invoice.offsettable_amount_cents),
        )

    def credit_note(self, organization_id: UUID, credit_note_id: UUID) -> CreditNote:
        return self.billing._get(
            CreditNote,
            credit_note_id,
            organization_id,
            NotFoundError("credit_note", credit_note_id),
        )

    def credit_notes(
        self,
        organization_id: UUID,
        page: int,
        per_page: int,
        *,
        external_customer_id: str | None = None,
        credit_status: str | None = None,
        refund_status: str | None = None,
        reason: str | None = None,
    ) -> tuple[list[CreditNote], int]:
        """Credit notes, newest first, with Lago's filters."""
        if credit_status is not None and credit_status not in CREDIT_STATUSES:
            raise InvalidValueError("credit_status", "value_is_invalid", credit_status)
        if refund_status is not None and refund_status not in REFUND_STATUSES:
            raise InvalidValueError("refund_status", "value_is_invalid", refund_status)
        if reason is not None:
            check_reason(reason)
        if refund_status is None and reason is None:
            statuses = [credit_status] if credit_status else []
            return self.billing._page(
                CreditNote,
                "credit_note",
                organization_id,
                page,
                per_page,
                statuses,
                parent_key=external_customer_id,
            )
        found = self.billing._all(CreditNote, "credit_note", organization_id, external_customer_id)
        matching = [
            note
            for note in found
            if (credit_status is None or note.credit_status == credit_status)
            and (refund_status is None or note.refund_status == refund_status)
            and (reason is None or note.reason == reason)
        ]
        start = (page - 1) * per_page
        return matching[start : start + per_page], len(matching)

    def credit_balance_cents(
        self, organization_id: UUID, external_customer_id: str, currency: str
    ) -> int:
        """The customer's credit balance: what later invoices in this currency will consume."""
        notes = available_credit_notes(self.billing, organization_id, external_customer_id)
        return sum(note.balance_amount_cents for note in notes if note.currency == currency)


def fee_amounts(invoice: Invoice, items: Sequence[tuple[str, int]]) -> dict[str, int]:
    """Items by fee key; a fee is named by its lago_id or its key, and named twice adds up."""
    keys = {str(ids.fee_id(invoice.id, fee["key"])): fee["key"] for fee in invoice.fee_events}
    keys.update({fee["key"]: fee["key"] for fee in invoice.fee_events})
    amounts: dict[str, int] = {}
    for fee_ref, amount_cents in items:
        key = keys.get(fee_ref) or keys.get(fee_ref.strip().lower())
        if key is None:
            raise NotFoundError("fee", fee_ref)
        if amount_cents < 0:
            raise InvalidValueError("amount_cents", "invalid_value", amount_cents)
        amounts[key] = amounts.get(key, 0) + amount_cents
    return amounts


def issue_credit_note(
    billing: BillingBase,
    invoice: Invoice,
    items: Mapping[str, int],
    *,
    credit_amount_cents: int,
    refund_amount_cents: int,
    offset_amount_cents: int,
    reason: str,
    description: str | None,
    origin: str | None,
    now: datetime,
    void: VoidCreditNote | None = None,
    sequence: NumberSequence | None = None,
) -> list[Any]:
    """Decide a credit note against a loaded invoice: the invoice checks and records it, the
    invoice's sequence numbers it. Returns [credit note, invoice, sequence], to save together.

    `void` is a note Invoice.void_credit_notes decided (items ignored); `sequence` the
    invoice's credit-note sequence when several notes are decided in one transaction."""
    if sequence is None:
        series = credit_note_series(invoice.id)
        try:
            sequence = billing.repository.get(ids.sequence_id(invoice.organization_id, series))
        except AggregateNotFoundError:
            sequence = NumberSequence.start(invoice.organization_id, series)
    assert sequence is not None
    sequential_id = sequence.last_value + 1
    credit_note_id = ids.credit_note_id(invoice.id, sequential_id)
    if void is not None:
        assert origin is not None, invoice.id
        invoice.record_void_credit_note(credit_note_id, void, origin)
        amounts = void.amounts
    else:
        amounts = invoice.record_credit_note(
            credit_note_id,
            items,
            credit_amount_cents=credit_amount_cents,
            refund_amount_cents=refund_amount_cents,
            offset_amount_cents=offset_amount_cents,
            origin=origin,
        )
    allocated = sequence.allocate(credit_note_id)
    assert allocated == sequential_id, (allocated, sequential_id)
    customer: Customer = billing.repository.get(invoice.customer_id)
    assert invoice.number is not None, invoice.id  # Finalized: record_credit_note checked.
    credit_note = CreditNote.issue(
        credit_note_id,
        organization_id=invoice.organization_id,
        invoice_id=invoice.id,
        invoice_number=invoice.number,
        customer_id=invoice.customer_id,
        external_customer_id=invoice.external_customer_id,
        currency=invoice.currency,
        sequential_id=sequential_id,
        issuing_date=local_date(now, customer.timezone or "UTC"),
        reason=reason,
        description=description,
        origin=origin,
        amounts=amounts,
        credit_amount_cents=credit_amount_cents,
        refund_amount_cents=refund_amount_cents,
        offset_amount_cents=offset_amount_cents,
    )
    return [credit_note, invoice, sequence]


def available_credit_notes(
    billing: BillingBase, organization_id: UUID, external_customer_id: str
) -> list[CreditNote]:
    """The customer's credit notes with a balance, oldest first (the order credit is used).

    The resource index finds them; each is then loaded, so its balance is the aggregate's own.
    """
    billing.catch_up()
    found, _ = billing.index.view.page(
        organization_id,
        "credit_note",
        1,
        10**9,
        parent_key=external_customer_id,
        statuses=["available"],
    )
    notes = []
    for credit_note_id in found:
        note: CreditNote = billing.repository.get(credit_note_id)
        if note.credit_status == "available" and note.balance_amount_cents > 0:
            notes.append(note)
    notes.sort(key=lambda note: (note.created_on, note.number))
    return notes
