"""Voiding an invoice (§8.8): wallets get their credits back; with generate_credit_note a paid
invoice is voided with credit notes for the amounts asked and for the rest.

The worked invoice: a 20.00 EUR plan in arrears plus 8,000 tokens at 0.01 = 100.00, VAT 20 %
= 20.00, 120.00 in all; a wallet pays 50.00 of it, so 70.00 is due.
"""

from datetime import UTC, date, datetime
from decimal import Decimal
from uuid import UUID

import pytest

from adapters.stores import Ledger
from domain.credit_note import CreditNote
from domain.errors import InvalidValueError
from domain.invoice import Invoice, InvoiceNotVoidableError
from tests.application.test_wallets import (
    APRIL_1,
    MARCH_2,
    MARCH_10,
    at,
    create_wallet,
    ingest,
    org,
    reload,
)

__all__ = ["org"]
APRIL_2 = datetime(2026, 4, 2, tzinfo=UTC)


@pytest.fixture
def invoice(ledger: Ledger, org: UUID) -> Invoice:
    ledger.billing.create_tax(
        org, "vat", {"name": "VAT", "rate": "20", "applied_to_organization": True}
    )
    at(ledger, MARCH_2)
    create_wallet(ledger, org, "main", granted_credits=Decimal(50))
    at(ledger, MARCH_10)
    ingest(ledger, org, "t1", 8000)
    at(ledger, APRIL_1)
    [invoice] = ledger.invoicing.run(APRIL_1)
    totals = invoice.totals
    assert (totals.sub_total_including_taxes_amount_cents, totals.total_amount_cents) == (
        12000,
        7000,
    )
    at(ledger, APRIL_2)
    return invoice


def wallet_balance_cents(ledger: Ledger, org: UUID) -> int:
    [wallet] = ledger.wallets.wallets(org, "acme", 1, 10)[0]
    return reload(ledger, org, wallet).balance_cents


def notes_of(ledger: Ledger, org: UUID, invoice: Invoice) -> list[CreditNote]:
    notes, _ = ledger.credit_notes.credit_notes(org, 1, 100)
    return sorted((n for n in notes if n.invoice_id == invoice.id), key=lambda n: n.number)


def test_a_void_gives_the_wallet_its_credits_back_once(
    ledger: Ledger,
    org: UUID,
    invoice: Invoice,
) -> None:
    assert wallet_balance_cents(ledger, org) == 0
    voided = ledger.invoicing.void(org, invoice.id, APRIL_2)
    assert voided.status == "voided"
    assert wallet_balance_cents(ledger, org) == 5000
    [wallet] = ledger.wallets.wallets(org, "acme", 1, 10)[0]
    [back] = [t for t in reload(ledger, org, wallet).entries() if t.kind == "recredited"]
    assert (back.invoice_id, back.amount_cents, back.transaction_type) == (
        invoice.id,
        5000,
        "inbound",
    )
    assert back.transaction_status == "granted"  # Lago's enum has no other name for it.
    assert reload(ledger, org, wallet).invariant_violations() == []
    with pytest.raises(InvoiceNotVoidableError):
        ledger.invoicing.void(org, invoice.id, APRIL_2)
    assert wallet_balance_cents(ledger, org) == 5000
    assert ledger.journal.reconcile(date(2026, 3, 1), date(2026, 4, 30), org) == []


def test_a_paid_invoice_is_voided_only_with_a_credit_note(
    ledger: Ledger,
    org: UUID,
    invoice: Invoice,
) -> None:
    ledger.invoicing.set_payment_status(org, invoice.id, "succeeded")
    with pytest.raises(InvoiceNotVoidableError):
        ledger.invoicing.void(org, invoice.id, APRIL_2)
    assert wallet_balance_cents(ledger, org) == 0  # Nothing half-done.


def test_voiding_a_paid_invoice_refunds_what_was_paid_and_offsets_the_wallets_part(
    ledger: Ledger,
    org: UUID,
    invoice: Invoice,
) -> None:
    ledger.invoicing.set_payment_status(org, invoice.id, "succeeded")
    voided = ledger.invoicing.void(
        org, invoice.id, APRIL_2, generate_credit_note=True, refund_amount_cents=7000
    )
    assert voided.status == "voided"
    refund, rest = notes_of(ledger, org, invoice)
    # The 70.00 paid, refunded: a share of every line and of the tax (largest remainder over
    # 20.00, 80.00 and 20.00 of VAT): 11.67 + 46.67 + 11.66 VAT = 70.00 exactly.
    assert (refund.total_amount_cents, refund.refund_amount_cents, refund.credit_amount_cents) == (
        7000,
        7000,
        0,
    )
    assert sorted(item["amount_cents"] for item in refund.items) == [1167, 4667]
    assert refund.taxes_amount_cents == 1166
    # The rest, 50.00, is the wallet's part: back in the wallet, so offset, not credited.
    assert (rest.total_amount_cents, rest.offset_amount_cents, rest.credit_amount_cents) == (
        5000,
        5000,
        0,
    )
    assert sorted(item["amount_cents"] for item in rest.items) == [833, 3333]
    assert rest.taxes_amount_cents == 834
    # Every line and the whole tax are credited, exactly.
    assert voided.credited_fee_cents == {fee.key: fee.amount_cents for fee in voided.fees}
    assert refund.taxes_amount_cents + rest.taxes_amount_cents == 2000
    assert wallet_balance_cents(ledger, org) == 5000
    assert ledger.journal.reconcile(date(2026, 3, 1), date(2026, 4, 30), org) == []


def test_credit_and_refund_asked_are_issued_and_the_rest_is_voided_credit(
    ledger: Ledger,
    org: UUID,
    invoice: Invoice,
) -> None:
    ledger.invoicing.set_payment_status(org, invoice.id, "succeeded")
    ledger.invoicing.void(
        org,
        invoice.id,
        APRIL_2,
        generate_credit_note=True,
        credit_amount_cents=2000,
        refund_amount_cents=3000,
    )
    asked, rest = notes_of(ledger, org, invoice)
    assert (asked.credit_amount_cents, asked.refund_amount_cents, asked.total_amount_cents) == (
        2000,
        3000,
        5000,
    )
    assert asked.credit_status == "available"
    # 120.00 − 50.00 asked = 70.00: 50.00 offsets the wallet's part, 20.00 nobody gets back.
    assert (rest.offset_amount_cents, rest.credit_amount_cents, rest.credit_status) == (
        5000,
        2000,
        "voided",
    )
    assert ledger.credit_notes.credit_balance_cents(org, "acme", "EUR") == 2000
    assert ledger.journal.reconcile(date(2026, 3, 1), date(2026, 4, 30), org) == []


@pytest.mark.parametrize(
    ("credit", "refund"),
    [(0, 7001), (1, 7000), (7001, 0), (-1, 0)],
)
def test_more_than_was_paid_is_refused_naming_the_field(
    ledger: Ledger,
    org: UUID,
    invoice: Invoice,
    credit: int,
    refund: int,
) -> None:
    ledger.invoicing.set_payment_status(org, invoice.id, "succeeded")
    with pytest.raises(InvalidValueError) as refused:
        ledger.invoicing.void(
            org,
            invoice.id,
            APRIL_2,
            generate_credit_note=True,
            credit_amount_cents=credit,
            refund_amount_cents=refund,
        )
    assert refused.value.field in ("credit_refund_amount", "credit_amount")
    assert ledger.invoicing.invoice(org, invoice.id).status == "finalized"
    assert notes_of(ledger, org, invoice) == []
    assert wallet_balance_cents(ledger, org) == 0


def test_an_unpaid_invoice_voided_with_a_credit_note_offsets_everything(
    ledger: Ledger,
    org: UUID,
    invoice: Invoice,
) -> None:
    with pytest.raises(InvalidValueError):  # Nothing was paid: nothing to refund or credit.
        ledger.invoicing.void(
            org, invoice.id, APRIL_2, generate_credit_note=True, credit_amount_cents=1
        )
    ledger.invoicing.void(org, invoice.id, APRIL_2, generate_credit_note=True)
    [rest] = notes_of(ledger, org, invoice)
    assert (rest.total_amount_cents, rest.offset_amount_cents, rest.credit_amount_cents) == (
        12000,
        12000,
        0,
    )
    assert wallet_balance_cents(ledger, org) == 5000
    assert ledger.journal.reconcile(date(2026, 3, 1), date(2026, 4, 30), org) == []


def test_a_partly_paid_invoice_refunds_at_most_its_payments(
    ledger: Ledger,
    org: UUID,
    invoice: Invoice,
) -> None:
    ledger.payments.create_manual_payment(org, invoice.id, 3000, "wire", None)
    with pytest.raises(InvalidValueError):
        ledger.invoicing.void(
            org, invoice.id, APRIL_2, generate_credit_note=True, refund_amount_cents=3001
        )
    ledger.invoicing.void(
        org, invoice.id, APRIL_2, generate_credit_note=True, refund_amount_cents=3000
    )
    refund, rest = notes_of(ledger, org, invoice)
    assert (refund.refund_amount_cents, refund.total_amount_cents) == (3000, 3000)
    # Still due 40.00 and the wallet's 50.00: offset.
    assert (rest.offset_amount_cents, rest.credit_amount_cents) == (9000, 0)
    assert ledger.journal.reconcile(date(2026, 3, 1), date(2026, 4, 30), org) == []
