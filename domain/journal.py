"""The chart of accounts and the balanced postings of every money event, purely (ADR 0019).

A posting is one journal transaction: the entries one event of an invoice, a credit note or a
wallet moves, in that document's currency, debits equal to credits. Each function takes the
aggregate as it was right after the event (and what the event alone cannot say: a country, a
date, the previous status) and returns the posting, or None when the event moves no money.

Posting rules (integer minor units, D6):
- invoice finalized: receivable (gross, taxes included) against revenue per fee line (product
  line: billable metric and filter values) and VAT payable per (country, tax code, rate); a
  `credit` invoice (paid wallet top-up) against top-ups awaiting payment instead;
- credit note issued: revenue and VAT debited back, against customer credit, refunds payable and
  receivable (its credit, refund and offset parts);
- credit applied to an invoice (credit note consumed): customer credit against receivable;
- payment recorded (a Payment succeeded: processor, transfer or manual, partial ones too): cash
  against receivable for its own amount, on the day it was paid; an invoice marked paid without
  payments covering it: cash for what they left due, reversed when the status leaves succeeded;
  a refund paid: refunds payable against cash (and back when it leaves succeeded);
- invoice voided: what it still carries (fees and taxes not yet credited) reversed against the
  receivable; a voided `credit` invoice no longer awaits payment;
- granted credits: promotional expense against granted-credit liability;
- paid top-up settled: top-ups awaiting payment against paid-credit liability (deferred revenue);
- credits paying an invoice: each lot's liability (granted or paid) against the receivable;
- credits returned by a voided invoice: the receivable against each lot's liability (the reverse);
- credits voided or forfeited at expiry or termination (D15): paid credits to other income,
  granted credits back out of promotional expense;
- a credit note's credit voided: customer credit to other income.
"""

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date
from decimal import Decimal
from types import MappingProxyType
from typing import Any, Final
from uuid import UUID

from domain.credit_note import CreditNote
from domain.invoice import Invoice
from domain.invoicing import FeeLine
from domain.payment import Payment
from domain.taxes import AppliedTax, invoice_taxes
from domain.wallet import Wallet

RECEIVABLES: Final = "1100"
CASH: Final = "1200"
VAT_PAYABLE: Final = "2200"
WALLET_PAID: Final = "2300"
WALLET_GRANTED: Final = "2310"
TOP_UPS_AWAITING_PAYMENT: Final = "2350"
CUSTOMER_CREDIT: Final = "2400"
REFUNDS_PAYABLE: Final = "2450"
REVENUE: Final = "4000"
OTHER_INCOME: Final = "4900"
PROMOTIONAL_EXPENSE: Final = "6100"

ACCOUNT_TYPES: Final = ("asset", "liability", "revenue", "expense")


@dataclass(frozen=True)
class Account:
    code: str
    name: str
    type: str  # One of ACCOUNT_TYPES; assets and expenses have debit balances.

    @property
    def normal_side(self) -> str:
        return "debit" if self.type in ("asset", "expense") else "credit"


CHART: Final = MappingProxyType(
    {
        account.code: account
        for account in (
            Account(RECEIVABLES, "Accounts receivable", "asset"),
            Account(CASH, "Cash and processor clearing", "asset"),
            Account(VAT_PAYABLE, "VAT payable", "liability"),
            Account(WALLET_PAID, "Wallet credits, paid (deferred revenue)", "liability"),
            Account(WALLET_GRANTED, "Wallet credits, granted", "liability"),
            Account(TOP_UPS_AWAITING_PAYMENT, "Wallet top-ups awaiting payment", "liability"),
            Account(CUSTOMER_CREDIT, "Customer credit (credit notes)", "liability"),
            Account(REFUNDS_PAYABLE, "Refunds payable", "liability"),
            Account(REVENUE, "Revenue", "revenue"),
            Account(OTHER_INCOME, "Other income: forfeited and voided credits", "revenue"),
            Account(PROMOTIONAL_EXPENSE, "Promotional credits expense", "expense"),
        )
    }
)


@dataclass(frozen=True)
class Entry:
    """One line of a posting: an account debited or credited, with the dimensions reports use.

    base_cents (VAT lines): the taxable base, signed like credit − debit, so a reversal lowers
    it; a zero-rate line (reverse charge, exempt) keeps its base with no amount. line_tax_cents
    (revenue lines of an invoice): the line's share of the invoice's tax (MRR counts it).
    """

    account: str
    debit_cents: int
    credit_cents: int
    reference: str  # The document: invoice or credit note number, wallet transaction id.
    invoice_id: UUID | None = None
    credit_note_id: UUID | None = None
    wallet_id: UUID | None = None
    product_line: str | None = None
    metric_code: str | None = None
    fee_type: str | None = None
    country: str | None = None
    tax_code: str | None = None
    tax_rate: Decimal | None = None
    base_cents: int | None = None
    line_tax_cents: int | None = None
    period_from: date | None = None
    period_to: date | None = None
    due_on: date | None = None

    def __post_init__(self) -> None:
        assert self.account in CHART, self.account
        assert self.debit_cents >= 0 and self.credit_cents >= 0, self
        assert self.debit_cents == 0 or self.credit_cents == 0, self


@dataclass(frozen=True)
class Posting:
    """One journal transaction, balanced: Σ debits = Σ credits, in one currency."""

    transaction_id: str  # "<aggregate id>:<version>": one event, one posting.
    kind: str
    organization_id: UUID
    customer_id: UUID
    external_customer_id: str
    currency: str
    posted_on: date
    entries: tuple[Entry, ...]

    def __post_init__(self) -> None:
        assert self.entries, self.transaction_id
        assert self.debit_cents == self.credit_cents, (
            self.kind,
            self.transaction_id,
            self.debit_cents,
            self.credit_cents,
        )

    @property
    def debit_cents(self) -> int:
        return sum(entry.debit_cents for entry in self.entries)

    @property
    def credit_cents(self) -> int:
        return sum(entry.credit_cents for entry in self.entries)


def transaction_id(aggregate_id: UUID, version: int) -> str:
    return f"{aggregate_id}:{version}"


def product_line(fee: FeeLine) -> str:
    """The billable metric and the filter values of a charge fee, e.g. `tokens[direction=input,
    model=large]`; other fees are their type (subscription, commitment, credit)."""
    name = fee.metric_code or fee.charge_code or fee.fee_type
    if not fee.filter_values:
        return name
    values = ",".join(
        f"{key}={'|'.join(str(v) for v in fee.filter_values[key])}"
        for key in sorted(fee.filter_values)
    )
    return f"{name}[{values}]"


def credit_top_up(invoice: Invoice) -> tuple[UUID, UUID] | None:
    """The (wallet, wallet transaction) a `credit` invoice sells; None for other invoices."""
    if invoice.invoice_type != "credit":
        return None
    for fee in invoice.fee_events:
        kind, wallet_id, transaction = str(fee["key"]).split(":")
        if kind == "credit":
            return UUID(wallet_id), UUID(transaction)
    return None


# Invoices.


def invoice_finalized(invoice: Invoice, country: str | None) -> Posting | None:
    """The invoice's gross amount owed: revenue per fee line, VAT per (code, rate)."""
    assert invoice.status == "finalized", invoice.status
    assert invoice.number is not None, invoice.id
    totals = invoice.totals
    gross_cents = totals.sub_total_including_taxes_amount_cents
    if gross_cents == 0:
        return None
    due = {"invoice_id": invoice.id, "due_on": invoice.payment_due_date, "country": country}
    top_up = credit_top_up(invoice)
    if top_up is not None:
        dims = {"invoice_id": invoice.id, "wallet_id": top_up[0], "country": country}
        entries = [
            _line(RECEIVABLES, gross_cents, 0, invoice.number, **due, wallet_id=top_up[0]),
            _line(TOP_UPS_AWAITING_PAYMENT, 0, gross_cents, invoice.number, **dims),
        ]
        return _posting(invoice, "invoice_finalized", invoice.issuing_date, entries)
    entries = [_line(RECEIVABLES, gross_cents, 0, invoice.number, **due)]
    for fee, line in zip(invoice.fees, totals.taxes.lines, strict=True):
        if fee.amount_cents > 0:
            entries.append(
                _revenue(
                    fee,
                    invoice,
                    country,
                    credit_cents=fee.amount_cents,
                    line_tax_cents=line.taxes_amount_cents,
                )
            )
    entries.extend(_vat(tax, invoice, country, sign=1) for tax in totals.taxes.applied_taxes)
    return _posting(invoice, "invoice_finalized", invoice.issuing_date, entries)


def invoice_voided(invoice: Invoice, country: str | None) -> Posting | None:
    """What the invoice still carries, reversed: fees and taxes not yet credited by notes."""
    assert invoice.status == "voided" and invoice.voided_at is not None, invoice.status
    assert invoice.number is not None, invoice.id
    on = invoice.voided_at.date()
    gross_cents = invoice.totals.sub_total_including_taxes_amount_cents
    top_up = credit_top_up(invoice)
    if top_up is not None:
        if gross_cents == 0:
            return None
        dims = {"invoice_id": invoice.id, "wallet_id": top_up[0], "country": country}
        entries = [
            _line(TOP_UPS_AWAITING_PAYMENT, gross_cents, 0, invoice.number, **dims),
            _line(RECEIVABLES, 0, gross_cents, invoice.number, **dims),
        ]
        return _posting(invoice, "invoice_voided", on, entries)
    credited = invoice.credited_fee_cents
    entries = []
    for fee in invoice.fees:
        remaining_cents = fee.amount_cents - credited.get(fee.key, 0)
        if remaining_cents > 0:
            entries.append(_revenue(fee, invoice, country, debit_cents=remaining_cents))
    rates = invoice.tax_rates
    credited_taxes = {
        (tax.tax_code, tax.rate): tax
        for tax in invoice_taxes(
            [
                (credited.get(fee.key, 0), [(code, rates[code]) for code in fee.tax_codes])
                for fee in invoice.fees
            ]
        ).applied_taxes
    }
    for tax in invoice.totals.taxes.applied_taxes:
        before = credited_taxes.get((tax.tax_code, tax.rate))
        left = AppliedTax(
            tax.tax_code,
            tax.rate,
            tax.taxable_base_cents - (before.taxable_base_cents if before else 0),
            tax.tax_cents - (before.tax_cents if before else 0),
        )
        if left.taxable_base_cents or left.tax_cents:
            entries.append(_vat(left, invoice, country, sign=-1))
    reversed_cents = sum(entry.debit_cents for entry in entries)
    # Guaranteed by credit_note_amounts: notes credit tax cumulatively at the invoice's rates.
    assert reversed_cents == gross_cents - invoice.credit_notes_total_amount_cents, (
        reversed_cents,
        gross_cents,
        invoice.credit_notes_total_amount_cents,
    )
    if reversed_cents == 0:
        return None
    entries.append(
        _line(
            RECEIVABLES, 0, reversed_cents, invoice.number, invoice_id=invoice.id, country=country
        )
    )
    return _posting(invoice, "invoice_voided", on, entries)


def cash_received_cents(invoice: Invoice) -> int:
    """What a succeeded payment status means was received: the total after credits and
    wallets, less credit-note offsets (a payment status never covers an offset)."""
    offsets = invoice.total_offsetted_credit_note_amount_cents - invoice.void_offset_amount_cents
    return max(0, invoice.totals.total_amount_cents - offsets)


def payment_status_changed(
    invoice: Invoice,
    previous: str,
    on: date,
    *,
    payments_cents: int = 0,
    marked_cents: int | None = None,
) -> Posting | None:
    """The invoice marked paid without payments covering it (Lago's PUT payment_status, a
    top-up paid by hand): cash against the receivable for what recorded payments
    (payments_cents, posted by their own events) left due; when the status leaves succeeded,
    that marked part (marked_cents) is taken back, never the recorded payments."""
    assert invoice.number is not None, invoice.id
    paid, was_paid = invoice.payment_status == "succeeded", previous == "succeeded"
    if paid == was_paid:
        return None
    if paid:
        cents = max(0, cash_received_cents(invoice) - payments_cents)
    else:
        cents = cash_received_cents(invoice) if marked_cents is None else marked_cents
    if cents <= 0:
        return None
    dims = _payment_dims(invoice)
    if paid:
        entries = [
            _line(CASH, cents, 0, invoice.number, **dims),
            _line(RECEIVABLES, 0, cents, invoice.number, **dims),
        ]
        return _posting(invoice, "payment_received", on, entries)
    entries = [
        _line(RECEIVABLES, cents, 0, invoice.number, **dims),
        _line(CASH, 0, cents, invoice.number, **dims),
    ]
    return _posting(invoice, "payment_reversed", on, entries)


def payment_received(payment: Payment, invoice: Invoice) -> Posting:
    """A payment recorded as succeeded (processor, transfer or manual, partial or whole):
    cash (processor clearing) against the invoice's receivable, for its own amount, dated the
    day it was paid."""
    assert invoice.number is not None, invoice.id
    assert payment.paid_at is not None and payment.invoice_id == invoice.id, payment.id
    assert payment.currency == invoice.currency, (payment.currency, invoice.currency)
    dims = _payment_dims(invoice)
    entries = [
        _line(CASH, payment.amount_cents, 0, invoice.number, **dims),
        _line(RECEIVABLES, 0, payment.amount_cents, invoice.number, **dims),
    ]
    return _posting(payment, "payment_received", payment.paid_at.astimezone(UTC).date(), entries)


def _payment_dims(invoice: Invoice) -> dict[str, Any]:
    dims: dict[str, Any] = {"invoice_id": invoice.id}
    top_up = credit_top_up(invoice)
    if top_up is not None:
        dims["wallet_id"] = top_up[0]
    return dims


# Credit notes.


def credit_note_issued(note: CreditNote, invoice: Invoice, country: str | None) -> Posting:
    """Revenue and VAT of the credited items back, against the note's three destinations."""
    fees = {fee.key: fee for fee in invoice.fees}
    dims = {"invoice_id": invoice.id, "credit_note_id": note.id, "country": country}
    entries = []
    for item in note.items:
        fee = fees[item["fee_key"]]
        cents = int(item["amount_cents"])
        if cents > 0:
            entries.append(
                _revenue(fee, invoice, country, debit_cents=cents, credit_note_id=note.id)
            )
    if note.coupons_adjustment_amount_cents > 0:
        entries.append(_line(REVENUE, 0, note.coupons_adjustment_amount_cents, note.number, **dims))
    for tax in note.applied_taxes:
        applied = AppliedTax(
            tax["tax_code"],
            Decimal(tax["rate"]),
            int(tax["base_amount_cents"]),
            int(tax["amount_cents"]),
        )
        entries.append(_vat(applied, invoice, country, sign=-1, credit_note_id=note.id))
    for account, cents in (
        (CUSTOMER_CREDIT, note.credit_amount_cents),
        (REFUNDS_PAYABLE, note.refund_amount_cents),
        (RECEIVABLES, note.offset_amount_cents),
    ):
        if cents > 0:
            entries.append(_line(account, 0, cents, note.number, **dims))
    return _posting(note, "credit_note_issued", note.issuing_date, entries)


def credit_note_consumed(
    note: CreditNote, invoice_id: UUID, amount_cents: int, on: date
) -> Posting:
    """The note's credit pays part of another invoice (§8.2)."""
    dims = {"invoice_id": invoice_id, "credit_note_id": note.id}
    entries = [
        _line(CUSTOMER_CREDIT, amount_cents, 0, note.number, **dims),
        _line(RECEIVABLES, 0, amount_cents, note.number, **dims),
    ]
    return _posting(note, "credit_note_consumed", on, entries)


def credit_note_voided(note: CreditNote, amount_cents: int, on: date) -> Posting:
    """The credit left on a voided note can no longer be used: other income."""
    dims = {"invoice_id": note.invoice_id, "credit_note_id": note.id}
    entries = [
        _line(CUSTOMER_CREDIT, amount_cents, 0, note.number, **dims),
        _line(OTHER_INCOME, 0, amount_cents, note.number, **dims),
    ]
    return _posting(note, "credit_note_voided", on, entries)


def refund_status_changed(note: CreditNote, previous: str | None, on: date) -> Posting | None:
    """The refund paid out (its status becomes succeeded), or taken back when it leaves it."""
    paid, was_paid = note.refund_status == "succeeded", previous == "succeeded"
    cents = note.refund_amount_cents
    if paid == was_paid or cents == 0:
        return None
    dims = {"invoice_id": note.invoice_id, "credit_note_id": note.id}
    if paid:
        entries = [
            _line(REFUNDS_PAYABLE, cents, 0, note.number, **dims),
            _line(CASH, 0, cents, note.number, **dims),
        ]
        return _posting(note, "refund_paid", on, entries)
    entries = [
        _line(CASH, cents, 0, note.number, **dims),
        _line(REFUNDS_PAYABLE, 0, cents, note.number, **dims),
    ]
    return _posting(note, "refund_reversed", on, entries)


# Wallets.


def credits_granted(wallet: Wallet, wallet_transaction_id: UUID) -> Posting:
    """Free credits: a promotional expense, owed as credits (the documented choice)."""
    transaction = wallet.transactions[wallet_transaction_id]
    assert transaction.kind == "granted", transaction
    reference = str(wallet_transaction_id)
    entries = [
        _line(PROMOTIONAL_EXPENSE, transaction.amount_cents, 0, reference, wallet_id=wallet.id),
        _line(WALLET_GRANTED, 0, transaction.amount_cents, reference, wallet_id=wallet.id),
    ]
    return _posting(wallet, "credits_granted", transaction.created_at.date(), entries)


def top_up_settled(wallet: Wallet, wallet_transaction_id: UUID) -> Posting:
    """A paid top-up's invoice was paid: its credits become deferred revenue."""
    transaction = wallet.transactions[wallet_transaction_id]
    assert transaction.kind == "purchased" and transaction.settled_at is not None, transaction
    dims = {"wallet_id": wallet.id, "invoice_id": transaction.invoice_id}
    reference = str(wallet_transaction_id)
    entries = [
        _line(TOP_UPS_AWAITING_PAYMENT, transaction.amount_cents, 0, reference, **dims),
        _line(WALLET_PAID, 0, transaction.amount_cents, reference, **dims),
    ]
    return _posting(wallet, "top_up_settled", transaction.settled_at.date(), entries)


def credits_debited(wallet: Wallet, wallet_transaction_id: UUID, on: date | None = None) -> Posting:
    """An outbound transaction, lot by lot: invoiced credits pay the receivable; voided and
    forfeited ones leave the wallet (paid: other income; granted: expense reversed)."""
    transaction = wallet.transactions[wallet_transaction_id]
    assert transaction.transaction_type == "outbound", transaction
    granted_cents = paid_cents = 0
    for lot_id, cents in transaction.lots:
        if wallet.transactions[lot_id].kind == "granted":
            granted_cents += cents
        else:
            paid_cents += cents
    reference = str(wallet_transaction_id)
    dims: dict[str, Any] = {"wallet_id": wallet.id}
    if transaction.kind == "invoiced":
        kind, granted_to, paid_to = "credits_consumed", RECEIVABLES, RECEIVABLES
        dims["invoice_id"] = transaction.invoice_id
    else:
        kind = "credits_voided" if transaction.void_reason == "manual" else "credits_forfeited"
        granted_to, paid_to = PROMOTIONAL_EXPENSE, OTHER_INCOME
    entries = []
    for liability, cents, to in (
        (WALLET_GRANTED, granted_cents, granted_to),
        (WALLET_PAID, paid_cents, paid_to),
    ):
        if cents > 0:
            entries += [
                _line(liability, cents, 0, reference, **dims),
                _line(to, 0, cents, reference, **dims),
            ]
    return _posting(wallet, kind, on or transaction.created_at.date(), entries)


def credits_recredited(wallet: Wallet, wallet_transaction_id: UUID) -> Posting:
    """A voided invoice's credits back in the wallet: its payment by credits reversed, lot by
    lot (the void then reverses the whole receivable)."""
    transaction = wallet.transactions[wallet_transaction_id]
    assert transaction.kind == "recredited", transaction
    dims: dict[str, Any] = {"wallet_id": wallet.id, "invoice_id": transaction.invoice_id}
    reference = str(wallet_transaction_id)
    entries = []
    for lot_id, cents in transaction.lots:
        liability = WALLET_GRANTED if wallet.transactions[lot_id].kind == "granted" else WALLET_PAID
        entries += [
            _line(RECEIVABLES, cents, 0, reference, **dims),
            _line(liability, 0, cents, reference, **dims),
        ]
    return _posting(wallet, "credits_recredited", transaction.created_at.date(), entries)


# Helpers.


def _line(account: str, debit_cents: int, credit_cents: int, reference: str, **dims: Any) -> Entry:
    return Entry(account, debit_cents, credit_cents, reference, **dims)


def _revenue(
    fee: FeeLine,
    invoice: Invoice,
    country: str | None,
    *,
    debit_cents: int = 0,
    credit_cents: int = 0,
    credit_note_id: UUID | None = None,
    line_tax_cents: int | None = None,
) -> Entry:
    assert invoice.number is not None, invoice.id
    return Entry(
        REVENUE,
        debit_cents,
        credit_cents,
        invoice.number,
        invoice_id=invoice.id,
        credit_note_id=credit_note_id,
        product_line=product_line(fee),
        metric_code=fee.metric_code,
        fee_type=fee.fee_type,
        country=country,
        line_tax_cents=line_tax_cents,
        period_from=fee.from_at.date(),
        period_to=fee.to_at.date(),
    )


def _vat(
    tax: AppliedTax,
    invoice: Invoice,
    country: str | None,
    *,
    sign: int,
    credit_note_id: UUID | None = None,
) -> Entry:
    """A VAT line: credited (sign 1) when charged, debited (sign -1) when taken back."""
    assert invoice.number is not None, invoice.id
    return Entry(
        VAT_PAYABLE,
        tax.tax_cents if sign < 0 else 0,
        tax.tax_cents if sign > 0 else 0,
        invoice.number,
        invoice_id=invoice.id,
        credit_note_id=credit_note_id,
        country=country,
        tax_code=tax.tax_code,
        tax_rate=tax.rate,
        base_cents=sign * tax.taxable_base_cents,
    )


def _posting(aggregate: Any, kind: str, on: date, entries: Sequence[Entry]) -> Posting:
    """The posting of the event that brought the aggregate to its current version."""
    return Posting(
        transaction_id=transaction_id(aggregate.id, aggregate.version),
        kind=kind,
        organization_id=aggregate.organization_id,
        customer_id=aggregate.customer_id,
        external_customer_id=aggregate.external_customer_id,
        currency=aggregate.currency,
        posted_on=on,
        entries=tuple(entries),
    )


def balances(postings: Iterable[Posting]) -> Mapping[tuple[str, str], int]:
    """Debit minus credit per (account, currency): what a trial balance shows."""
    result: dict[tuple[str, str], int] = {}
    for posting in postings:
        for entry in posting.entries:
            key = (entry.account, posting.currency)
            result[key] = result.get(key, 0) + entry.debit_cents - entry.credit_cents
    return result
