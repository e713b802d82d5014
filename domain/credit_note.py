"""Credit notes: fees of a finalized invoice credited back, as credit, refund or offset (§8.7).

The invoice decides what may be credited (domain/invoice.py records every note against it, so
no fee is ever over-credited); a CreditNote holds what was decided and its credit balance, which
later invoices consume (§8.2: after tax, before wallets).
"""

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from typing import Any, Final
from uuid import UUID

from eventsourcing.domain import AggregateCreated, AggregateEvent, BaseAggregate, event

from domain.errors import CurrencyMismatchError, InvalidValueError, NotAllowedError
from domain.invoicing import FeeLine
from domain.limits import AMOUNT_CENTS_MAX, TEXT_LENGTH_MAX
from domain.money import allocate_cents
from domain.taxes import AppliedTax, invoice_taxes

REASONS: Final = (
    "duplicated_charge",
    "product_unsatisfactory",
    "order_change",
    "order_cancellation",
    "fraudulent_charge",
    "other",
)
CREDIT_STATUSES: Final = ("available", "consumed", "voided")
REFUND_STATUSES: Final = ("pending", "succeeded", "failed")
# Lago credits every invoice type but wallet top-ups (`credit`), whose credits live in wallets.
CREDITABLE_INVOICE_TYPES: Final = ("subscription", "add_on", "one_off", "advance_charges")


class CreditNoteInvalidTypeOrStatusError(NotAllowedError):
    """Only finalized invoices of a creditable type take credit notes (Lago's 405)."""

    code = "invalid_type_or_status"


class CreditNoteNoVoidableAmountError(NotAllowedError):
    code = "no_voidable_amount"


@dataclass(frozen=True)
class CreditNoteAmounts:
    """What a credit note on some fee amounts comes to, at the original invoice's rates."""

    items: tuple[tuple[str, int], ...]  # (fee key, amount_cents), in the invoice's fee order
    applied_taxes: tuple[AppliedTax, ...]  # This note's tax per (code, rate), on its own base.
    taxes_rate: Decimal  # Display only: the note's base-weighted average rate, percent.
    coupons_adjustment_amount_cents: int = 0  # Tally has no coupons yet.

    @property
    def sub_total_excluding_taxes_amount_cents(self) -> int:
        return sum(cents for _, cents in self.items) - self.coupons_adjustment_amount_cents

    @property
    def taxes_amount_cents(self) -> int:
        return sum(tax.tax_cents for tax in self.applied_taxes)

    @property
    def total_amount_cents(self) -> int:
        return self.sub_total_excluding_taxes_amount_cents + self.taxes_amount_cents


def credit_note_amounts(
    fees: Sequence[FeeLine],
    rates: Mapping[str, Decimal],
    credited_before: Mapping[str, int],
    items: Mapping[str, int],
) -> CreditNoteAmounts:
    """Tax per (code, rate) at the invoice's recorded rates (§8.7), computed cumulatively.

    A note's tax at a rate is the tax of everything credited at that rate so far, this note
    included, minus what earlier notes credited: round_half_up is monotonic, so the notes of an
    invoice never credit more tax per rate than the invoice charged, and crediting every fee
    credits exactly the invoice's tax. A note alone is taxed exactly like an invoice of its items.
    Lago taxes each note on its own and needs a one-cent tolerance (lago-api#2643); Tally does not.
    """
    known = {fee.key for fee in fees}
    assert set(items) <= known, set(items) - known
    after = {key: credited_before.get(key, 0) + items.get(key, 0) for key in known}
    earlier = {
        (tax.tax_code, tax.rate): tax
        for tax in invoice_taxes(_lines(fees, rates, credited_before)).applied_taxes
    }
    applied = []
    for tax in invoice_taxes(_lines(fees, rates, after)).applied_taxes:
        before = earlier.get((tax.tax_code, tax.rate))
        base_cents = tax.taxable_base_cents - (before.taxable_base_cents if before else 0)
        tax_cents = tax.tax_cents - (before.tax_cents if before else 0)
        assert base_cents >= 0 and tax_cents >= 0, (tax, before)  # Bases only ever grow.
        if base_cents > 0:
            applied.append(AppliedTax(tax.tax_code, tax.rate, base_cents, tax_cents))
    own = [(items.get(fee.key, 0), _codes(fee, rates)) for fee in fees]
    return CreditNoteAmounts(
        items=tuple((fee.key, items[fee.key]) for fee in fees if fee.key in items),
        applied_taxes=tuple(applied),
        taxes_rate=invoice_taxes(own).taxes_rate,
    )


def split_credit_note_amounts(
    fees: Sequence[FeeLine],
    rates: Mapping[str, Decimal],
    whole: CreditNoteAmounts,
    totals: Sequence[int],
) -> list[CreditNoteAmounts]:
    """Share one credit note's amounts out into notes with exactly these totals (§8.8: a void
    credits and refunds given amounts, tax included). Every item and every tax of the whole is
    split by largest remainder, part after part, so the parts add up to the whole item by item
    and tax by tax: together they credit exactly what the whole would (its tax per rate
    included), and none credits more of a line or a rate than is left of it."""
    assert sum(totals) == whole.total_amount_cents and min(totals) >= 0, (totals, whole)
    codes = {fee.key: _codes(fee, rates) for fee in fees}
    items_left = [cents for _, cents in whole.items]
    taxes_left = [tax.tax_cents for tax in whole.applied_taxes]
    parts = []
    for index, total in enumerate(totals):
        if index == len(totals) - 1:
            shares = [*items_left, *taxes_left]
        elif total == 0:
            shares = [0] * (len(items_left) + len(taxes_left))
        else:
            shares = allocate_cents(total, [*items_left, *taxes_left])
        item_shares, tax_shares = shares[: len(items_left)], shares[len(items_left) :]
        items_left = [left - share for left, share in zip(items_left, item_shares, strict=True)]
        taxes_left = [left - share for left, share in zip(taxes_left, tax_shares, strict=True)]
        assert min([*items_left, *taxes_left], default=0) >= 0, (items_left, taxes_left)
        items = [
            (key, share) for (key, _), share in zip(whole.items, item_shares, strict=True) if share
        ]
        applied = []
        for tax, share in zip(whole.applied_taxes, tax_shares, strict=True):
            base = sum(c for key, c in items if (tax.tax_code, tax.rate) in codes[key])
            if base or share:
                applied.append(AppliedTax(tax.tax_code, tax.rate, base, share))
        parts.append(
            CreditNoteAmounts(
                items=tuple(items),
                applied_taxes=tuple(applied),
                taxes_rate=invoice_taxes([(c, codes[key]) for key, c in items]).taxes_rate,
            )
        )
    return parts


def _codes(fee: FeeLine, rates: Mapping[str, Decimal]) -> list[tuple[str, Decimal]]:
    return [(code, rates[code]) for code in fee.tax_codes]


def _lines(
    fees: Sequence[FeeLine], rates: Mapping[str, Decimal], credited: Mapping[str, int]
) -> list[tuple[int, list[tuple[str, Decimal]]]]:
    return [(credited.get(fee.key, 0), _codes(fee, rates)) for fee in fees]


def check_split(
    total_amount_cents: int,
    credit_amount_cents: int,
    refund_amount_cents: int,
    offset_amount_cents: int,
) -> None:
    """The three destinations add up to the note's total exactly (Lago's error codes)."""
    for field, value in (
        ("credit_amount_cents", credit_amount_cents),
        ("refund_amount_cents", refund_amount_cents),
        ("offset_amount_cents", offset_amount_cents),
    ):
        if not 0 <= value <= AMOUNT_CENTS_MAX:
            raise InvalidValueError(field, "invalid_value", value)
    if total_amount_cents <= 0:
        raise InvalidValueError("base", "total_amount_must_be_positive", total_amount_cents)
    split = credit_amount_cents + refund_amount_cents + offset_amount_cents
    if split != total_amount_cents:
        raise InvalidValueError("base", "does_not_match_item_amounts", split)


def credit_note_number(invoice_number: str, sequential_id: int) -> str:
    """§8.3: `<invoice number>-CN<seq %03d>`, one sequence per invoice."""
    return f"{invoice_number}-CN{sequential_id:03d}"


def credit_note_series(invoice_id: UUID) -> str:
    return f"credit_note:{invoice_id}"


class CreditNote(BaseAggregate[UUID]):
    TOPIC = "tally.CreditNote"

    class Event(AggregateEvent):
        pass

    class Created(AggregateCreated, Event):
        """Everything decided against the invoice, with the amounts it came to."""

        TOPIC = "tally.CreditNote.Created"
        organization_id: UUID
        invoice_id: UUID
        invoice_number: str
        customer_id: UUID
        external_customer_id: str
        currency: str
        sequential_id: int
        number: str
        issuing_date: date
        reason: str
        description: str | None
        origin: str | None
        items: list[dict[str, Any]]
        applied_taxes: list[dict[str, Any]]
        taxes_rate: Decimal
        coupons_adjustment_amount_cents: int
        credit_amount_cents: int
        refund_amount_cents: int
        offset_amount_cents: int
        credit_status: str
        refund_status: str | None

    class Consumed(Event):
        """Part of the credit balance paid an invoice (§8.2)."""

        TOPIC = "tally.CreditNote.Consumed"
        invoice_id: UUID
        amount_cents: int
        credit_status: str  # "consumed" once the balance is 0, else still "available".

    class Voided(Event):
        TOPIC = "tally.CreditNote.Voided"
        voided_at: datetime
        amount_cents: int

    class RefundStatusChanged(Event):
        TOPIC = "tally.CreditNote.RefundStatusChanged"
        refund_status: str

    # Commands decide.

    @classmethod
    def issue(
        cls,
        credit_note_id: UUID,
        *,
        organization_id: UUID,
        invoice_id: UUID,
        invoice_number: str,
        customer_id: UUID,
        external_customer_id: str,
        currency: str,
        sequential_id: int,
        issuing_date: date,
        reason: str,
        description: str | None,
        origin: str | None,
        amounts: CreditNoteAmounts,
        credit_amount_cents: int,
        refund_amount_cents: int,
        offset_amount_cents: int,
    ) -> "CreditNote":
        """A note the invoice has accepted (Invoice.record_credit_note checked its caps)."""
        check_reason(reason)
        if description is not None and len(description) > TEXT_LENGTH_MAX:
            raise InvalidValueError("description", "value_is_invalid", description)
        check_split(
            amounts.total_amount_cents,
            credit_amount_cents,
            refund_amount_cents,
            offset_amount_cents,
        )
        return cls._create(
            cls.Created,
            id=credit_note_id,
            organization_id=organization_id,
            invoice_id=invoice_id,
            invoice_number=invoice_number,
            customer_id=customer_id,
            external_customer_id=external_customer_id,
            currency=currency,
            sequential_id=sequential_id,
            number=credit_note_number(invoice_number, sequential_id),
            issuing_date=issuing_date,
            reason=reason,
            description=description,
            origin=origin,
            items=[{"fee_key": key, "amount_cents": cents} for key, cents in amounts.items],
            applied_taxes=[
                {
                    "tax_code": tax.tax_code,
                    "rate": tax.rate,
                    "base_amount_cents": tax.taxable_base_cents,
                    "amount_cents": tax.tax_cents,
                }
                for tax in amounts.applied_taxes
            ],
            taxes_rate=amounts.taxes_rate,
            coupons_adjustment_amount_cents=amounts.coupons_adjustment_amount_cents,
            credit_amount_cents=credit_amount_cents,
            refund_amount_cents=refund_amount_cents,
            offset_amount_cents=offset_amount_cents,
            # Nothing to spend is nothing left: a refund-only note is consumed from the start.
            credit_status="available" if credit_amount_cents > 0 else "consumed",
            refund_status="pending" if refund_amount_cents > 0 else None,
        )

    def consume(self, invoice_id: UUID, due_cents: int, currency: str) -> int:
        """Pay as much of an invoice's amount due as the balance allows; returns the cents."""
        if currency != self.currency:
            raise CurrencyMismatchError(expected=self.currency, got=currency)
        assert 0 <= due_cents <= AMOUNT_CENTS_MAX, due_cents  # The invoice guarantees this.
        if self.credit_status != "available":
            return 0
        applied_cents = min(self.balance_amount_cents, due_cents)
        if applied_cents > 0:
            left = self.balance_amount_cents - applied_cents
            self._consumed(
                invoice_id=invoice_id,
                amount_cents=applied_cents,
                credit_status="available" if left > 0 else "consumed",
            )
        return applied_cents

    def void(self, now: datetime) -> None:
        """Lago's void: the remaining credit balance can no longer be used."""
        if self.credit_status != "available" or self.balance_amount_cents <= 0:
            raise CreditNoteNoVoidableAmountError(f"Credit note {self.id} has no voidable amount.")
        self._voided(voided_at=now, amount_cents=self.balance_amount_cents)

    def set_refund_status(self, refund_status: str) -> None:
        if refund_status not in REFUND_STATUSES:
            raise InvalidValueError("refund_status", "value_is_invalid", refund_status)
        if self.refund_amount_cents <= 0:
            # Stricter than Lago, which stores a refund status on a note that refunds nothing.
            raise InvalidValueError("refund_status", "value_is_invalid", refund_status)
        if refund_status != self.refund_status:
            self._refund_status_changed(refund_status=refund_status)

    # Evolvers apply.

    @event(Created)
    def __init__(
        self,
        organization_id: UUID,
        invoice_id: UUID,
        invoice_number: str,
        customer_id: UUID,
        external_customer_id: str,
        currency: str,
        sequential_id: int,
        number: str,
        issuing_date: date,
        reason: str,
        description: str | None,
        origin: str | None,
        items: list[dict[str, Any]],
        applied_taxes: list[dict[str, Any]],
        taxes_rate: Decimal,
        coupons_adjustment_amount_cents: int,
        credit_amount_cents: int,
        refund_amount_cents: int,
        offset_amount_cents: int,
        credit_status: str,
        refund_status: str | None,
    ) -> None:
        self.organization_id = organization_id
        self.invoice_id = invoice_id
        self.invoice_number = invoice_number
        self.customer_id = customer_id
        self.external_customer_id = external_customer_id
        self.currency = currency
        self.sequential_id = sequential_id
        self.number = number
        self.issuing_date = issuing_date
        self.reason = reason
        self.description = description
        self.origin = origin
        self.items = items
        self.applied_taxes = applied_taxes
        self.taxes_rate = taxes_rate
        self.coupons_adjustment_amount_cents = coupons_adjustment_amount_cents
        self.credit_amount_cents = credit_amount_cents
        self.refund_amount_cents = refund_amount_cents
        self.offset_amount_cents = offset_amount_cents
        self.credit_status = credit_status
        self.refund_status = refund_status
        self.balance_amount_cents = credit_amount_cents
        self.consumptions: list[tuple[UUID, int]] = []
        self.voided_at: datetime | None = None

    @event(Consumed)
    def _consumed(self, invoice_id: UUID, amount_cents: int, credit_status: str) -> None:
        self.balance_amount_cents -= amount_cents
        assert self.balance_amount_cents >= 0, self.balance_amount_cents  # min() in consume.
        self.consumptions.append((invoice_id, amount_cents))
        self.credit_status = credit_status

    @event(Voided)
    def _voided(self, voided_at: datetime, amount_cents: int) -> None:
        assert amount_cents == self.balance_amount_cents, (amount_cents, self.balance_amount_cents)
        self.balance_amount_cents = 0
        self.credit_status = "voided"
        self.voided_at = voided_at

    @event(RefundStatusChanged)
    def _refund_status_changed(self, refund_status: str) -> None:
        self.refund_status = refund_status

    # Queries.

    @property
    def sub_total_excluding_taxes_amount_cents(self) -> int:
        items = sum(int(item["amount_cents"]) for item in self.items)
        return items - self.coupons_adjustment_amount_cents

    @property
    def taxes_amount_cents(self) -> int:
        return sum(int(tax["amount_cents"]) for tax in self.applied_taxes)

    @property
    def total_amount_cents(self) -> int:
        return self.sub_total_excluding_taxes_amount_cents + self.taxes_amount_cents

    @property
    def consumed_amount_cents(self) -> int:
        return sum(cents for _, cents in self.consumptions)


def check_reason(reason: str) -> str:
    if reason not in REASONS:
        raise InvalidValueError("reason", "value_is_invalid", reason)
    return reason
