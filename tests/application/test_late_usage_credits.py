"""Late usage lowering an invoiced period (§8.5): a credit note on the invoice that billed it.

The catalog (tests/application/test_wallets.py): a 20.00 EUR monthly plan in arrears with
tokens at 0.01 EUR each; acme subscribed from March 1.
"""

from datetime import UTC, datetime
from uuid import UUID

from adapters.stores import Ledger
from application.metering import EventInput
from domain.invoice import Invoice
from tests.application.test_wallets import (
    APRIL_1,
    MARCH_10,
    at,
    ingest,
    org,
)

__all__ = ["org"]
APRIL_2 = datetime(2026, 4, 2, tzinfo=UTC)
MAY_1 = datetime(2026, 5, 1, tzinfo=UTC)
MAY_2 = datetime(2026, 5, 2, tzinfo=UTC)
JUNE_1 = datetime(2026, 6, 1, tzinfo=UTC)


def bill(ledger: Ledger, now: datetime) -> list[Invoice]:
    at(ledger, now)
    return ledger.invoicing.run(now)


def march_invoice(ledger: Ledger, org: UUID) -> Invoice:
    at(ledger, MARCH_10)
    ingest(ledger, org, "t1", 1000)
    ingest(ledger, org, "t2", 500)
    [invoice] = bill(ledger, APRIL_1)
    assert [(fee.fee_type, fee.amount_cents) for fee in invoice.fees] == [
        ("charge", 1500),
        ("subscription", 2000),
    ]
    return invoice


def test_a_voided_event_is_credited_on_the_invoice_that_billed_it(
    ledger: Ledger,
    org: UUID,
) -> None:
    march = march_invoice(ledger, org)
    ledger.invoicing.set_payment_status(org, march.id, "succeeded")
    at(ledger, APRIL_2)
    ledger.metering.void(org, "t1", "sub_1")  # March's total falls by 1000 tokens: −10.00.
    april = next(i for i in bill(ledger, MAY_1) if i.id != march.id)
    [note] = ledger.credit_notes.credit_notes(org, 1, 10)[0]
    assert (note.invoice_id, note.total_amount_cents, note.credit_amount_cents) == (
        march.id,
        1000,
        1000,
    )
    [item] = note.items
    charge_key = next(fee.key for fee in march.fees if fee.fee_type == "charge")
    assert (item["fee_key"], item["amount_cents"]) == (charge_key, 1000)  # Names the period.
    assert note.description == (
        "Late usage lowered the charge of 2026-03-01T00:00:00+00:00 to 2026-04-01T00:00:00+00:00."
    )
    # Issued before April's invoice, whose total the credit pays: 20.00 − 10.00.
    assert [(fee.fee_type, fee.amount_cents) for fee in april.fees] == [
        ("charge", 0),
        ("subscription", 2000),
    ]
    assert april.totals.credit_notes_amount_cents == 1000
    assert april.totals.total_amount_cents == 1000
    assert ledger.invoicing.audit(org, april.id).matches
    bill(ledger, MAY_1)  # A rerun credits nothing twice.
    assert ledger.credit_notes.credit_notes(org, 1, 10)[1] == 1


def test_an_unpaid_invoice_is_offset_and_a_later_rise_is_a_line_again(
    ledger: Ledger,
    org: UUID,
) -> None:
    march = march_invoice(ledger, org)
    at(ledger, APRIL_2)
    ledger.metering.void(org, "t2", "sub_1")  # −5.00, while March's 35.00 is still due.
    bill(ledger, MAY_1)
    [note] = ledger.credit_notes.credit_notes(org, 1, 10)[0]
    assert (note.offset_amount_cents, note.credit_amount_cents) == (500, 0)
    assert ledger.invoicing.invoice(org, march.id).total_due_amount_cents == 3000
    # Then 300 more March tokens arrive: +3.00 on June's invoice, naming March.
    at(ledger, MAY_2)
    ledger.metering.ingest(
        org,
        [EventInput("t3", "sub_1", "tokens", int(MARCH_10.timestamp()), {"tokens": 300}, None)],
        batch=False,
    )
    june = next(i for i in bill(ledger, JUNE_1) if i.issuing_date.month == 6)
    [adjustment] = [fee for fee in june.fees if fee.fee_type == "adjustment"]
    assert (adjustment.amount_cents, adjustment.from_at, adjustment.to_at) == (
        300,
        datetime(2026, 3, 1, tzinfo=UTC),
        APRIL_1,
    )
    assert ledger.invoicing.audit(org, june.id).matches
    assert ledger.credit_notes.credit_notes(org, 1, 10)[1] == 1


def test_a_fall_below_the_original_line_is_credited_on_the_adjustment_too(
    ledger: Ledger,
    org: UUID,
) -> None:
    # March billed 15.00 on April's invoice, then +3.00 of late March usage on May's.
    march = march_invoice(ledger, org)
    at(ledger, APRIL_2)
    ledger.metering.ingest(
        org,
        [EventInput("t3", "sub_1", "tokens", int(MARCH_10.timestamp()), {"tokens": 300}, None)],
        batch=False,
    )
    may = next(i for i in bill(ledger, MAY_1) if i.id != march.id)
    [adjustment] = [fee for fee in may.fees if fee.fee_type == "adjustment"]
    assert adjustment.amount_cents == 300
    # Then every March event is voided: 18.00 billed for March, 0 due.
    at(ledger, MAY_2)
    for transaction_id in ("t1", "t2", "t3"):
        ledger.metering.void(org, transaction_id, "sub_1")
    june = next(i for i in bill(ledger, JUNE_1) if i.issuing_date.month == 6)
    notes, _ = ledger.credit_notes.credit_notes(org, 1, 10)
    assert sorted(
        (n.invoice_id == march.id, n.sub_total_excluding_taxes_amount_cents) for n in notes
    ) == [
        (False, 300),  # The adjustment line on May's invoice.
        (True, 1500),  # The whole original line.
    ]
    assert ledger.invoicing.audit(org, june.id).matches
    bill(ledger, JUNE_1)
    assert ledger.credit_notes.credit_notes(org, 1, 10)[1] == 2
