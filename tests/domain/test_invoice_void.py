"""Voiding invoices (§8.8) and late-usage and pay-in-advance lines, purely: given, when, then."""

from datetime import UTC, datetime
from decimal import Decimal
from uuid import uuid4

import pytest
from hypothesis import given
from hypothesis import strategies as st

from domain.credit_note import split_credit_note_amounts
from domain.errors import InvalidValueError
from domain.invoice import Invoice, InvoiceNotVoidableError
from domain.invoicing import advance_fees
from domain.periods import Period
from domain.rating import MetricRule
from domain.usage import UsageEvent
from domain.wallet import Wallet
from tests.builders import ORG_ID
from tests.domain.test_credit_note import VAT, fee, finalized
from tests.domain.test_wallet import LATER, NOW, holding

MARCH = Period(datetime(2026, 3, 1, tzinfo=UTC), datetime(2026, 4, 1, tzinfo=UTC))


def paid_invoice() -> Invoice:
    """Fees 20.00 and 80.00 at 20 % VAT: 120.00, paid."""
    return finalized([fee("sub", 2000, "vat"), fee("charge", 8000, "vat")], VAT, paid=True)


# Void with generate_credit_note.


def test_a_paid_invoice_is_voided_with_a_refund_and_an_offset_for_the_wallets_part() -> None:
    # Given a paid invoice of 120.00, 50.00 of it paid by a wallet that gets it back
    invoice = paid_invoice()
    # When it plans the notes of a void refunding 70.00
    refund, rest = invoice.void_credit_notes(0, 7000, paid_amount_cents=12000, returned_cents=5000)
    # Then the refund is a share of each line and of the tax, exactly 70.00, and the rest
    # offsets what went back to the wallet
    assert (refund.amounts.total_amount_cents, refund.refund_amount_cents) == (7000, 7000)
    assert dict(refund.amounts.items) == {"sub": 1167, "charge": 4667}
    assert refund.amounts.taxes_amount_cents == 1166
    assert (rest.amounts.total_amount_cents, rest.offset_amount_cents, rest.voided) == (
        5000,
        5000,
        False,
    )
    assert invoice.collect_events() == []  # Planning records nothing.


def test_what_nobody_gets_back_is_credit_voided_at_once() -> None:
    invoice = paid_invoice()
    asked, rest = invoice.void_credit_notes(2000, 3000, paid_amount_cents=12000, returned_cents=0)
    assert (asked.credit_amount_cents, asked.refund_amount_cents) == (2000, 3000)
    assert (rest.credit_amount_cents, rest.offset_amount_cents, rest.voided) == (7000, 0, True)


def test_recording_the_notes_credits_every_line_exactly_then_the_paid_invoice_voids() -> None:
    # Given a paid invoice and the notes of its void
    invoice = paid_invoice()
    notes = invoice.void_credit_notes(0, 12000, paid_amount_cents=12000, returned_cents=0)
    # When they are recorded and it is voided
    for number, note in enumerate(notes, start=1):
        invoice.record_void_credit_note(uuid4(), note, f"void:{invoice.id}:{number}")
    invoice.void(NOW, generate_credit_note=True)
    # Then every line and the whole tax are credited, and it is voided
    *recorded, voided = invoice.collect_events()
    assert [type(e) for e in recorded] == [Invoice.CreditNoteRecorded]
    assert isinstance(voided, Invoice.Voided)
    assert invoice.credited_fee_cents == {"sub": 2000, "charge": 8000}
    assert invoice.credit_notes_total_amount_cents == 12000
    assert invoice.creditable_amount_cents == 0


@pytest.mark.parametrize(
    ("credit", "refund", "field"),
    [
        (0, 12001, "credit_refund_amount"),
        (1, 12000, "credit_refund_amount"),
        (-1, 0, "credit_amount"),
    ],
)
def test_more_than_was_paid_is_refused(credit: int, refund: int, field: str) -> None:
    invoice = paid_invoice()
    with pytest.raises(InvalidValueError) as refused:
        invoice.void_credit_notes(credit, refund, paid_amount_cents=12000, returned_cents=0)
    assert refused.value.field == field
    assert invoice.collect_events() == []


def test_a_paid_invoice_is_not_voided_without_a_credit_note() -> None:
    invoice = paid_invoice()
    with pytest.raises(InvoiceNotVoidableError):
        invoice.void(NOW)
    assert invoice.collect_events() == []


@given(
    amounts=st.lists(st.integers(1, 10**6), min_size=1, max_size=4),
    share=st.fractions(0, 1),
)
def test_a_split_note_adds_up_to_the_whole_line_by_line_and_tax_by_tax(
    amounts: list[int], share: object
) -> None:
    fees = [fee(f"f{i}", cents, "vat") for i, cents in enumerate(amounts)]
    invoice = finalized(fees, {"vat": Decimal("20")})
    whole = invoice.credit_note_amounts({f.key: f.amount_cents for f in fees})
    first_total = int(whole.total_amount_cents * share)  # type: ignore[operator]
    first, rest = split_credit_note_amounts(
        fees, invoice.tax_rates, whole, [first_total, whole.total_amount_cents - first_total]
    )
    assert first.total_amount_cents == first_total
    assert first.total_amount_cents + rest.total_amount_cents == whole.total_amount_cents
    for key, cents in whole.items:
        assert dict(first.items).get(key, 0) + dict(rest.items).get(key, 0) == cents
    assert first.taxes_amount_cents + rest.taxes_amount_cents == whole.taxes_amount_cents


# A voided invoice's credits back in the wallet.


def test_a_void_returns_each_lot_what_the_invoice_took_once() -> None:
    # Given a wallet (granted 3.00, purchased 10.00) that paid 8.00 of an invoice
    wallet = holding(granted_cents=300, purchased_cents=1000)
    invoice_id = uuid4()
    wallet.pay_invoice(invoice_id, 800, "EUR", NOW)
    wallet.collect_events()
    # When the invoice is voided
    returned = wallet.recredit_invoice(invoice_id, LATER)
    # Then the lots it took get their cents back, recorded as one inbound entry
    [recredited] = wallet.collect_events()
    assert isinstance(recredited, Wallet.Recredited)
    assert (returned, wallet.balance_cents) == (800, 1300)
    assert [lot["amount_cents"] for lot in recredited.lots] == [300, 500]
    assert wallet.invariant_violations() == []
    # And again, nothing more; and its history rebuilds it
    assert wallet.recredit_invoice(invoice_id, LATER) == 0
    assert wallet.collect_events() == []
    assert wallet.recredit_invoice(uuid4(), LATER) == 0  # An invoice it never paid.


def test_a_terminated_wallet_gets_nothing_back() -> None:
    wallet = holding(granted_cents=300)
    invoice_id = uuid4()
    wallet.pay_invoice(invoice_id, 300, "EUR", NOW)
    wallet.terminate(NOW)
    wallet.collect_events()
    assert wallet.recredit_invoice(invoice_id, LATER) == 0
    assert wallet.collect_events() == []


# Pay-in-advance fees (§4.9).

SEATS = MetricRule("seats", "sum_agg", "seats", False, None, None, {})
CALLS = MetricRule("calls", "count_agg", None, False, None, None, {})


def event(transaction_id: str, **properties: str) -> UsageEvent:
    return UsageEvent(ORG_ID, "sub_1", transaction_id, "seats", MARCH.start_at, properties)


def charge(model: str, properties: dict[str, object]) -> dict[str, object]:
    return {
        "lago_id": "c1",
        "code": "c1",
        "charge_model": model,
        "billable_metric_code": "seats",
        "properties": properties,
        "filters": [],
    }


def test_package_in_advance_bills_each_event_its_increase() -> None:
    # §4.9: package of 100 at 5.00; events of 60 and 60 → 5.00 then 5.00.
    package = charge("package", {"amount": "5", "package_size": 100, "free_units": 0})
    first, second = event("e1", seats="60"), event("e2", seats="60")
    fees = advance_fees(package, SEATS, "EUR", MARCH, [], [], [first, second])
    assert [(f.event.transaction_id, f.amount_cents) for f in fees] == [("e1", 500), ("e2", 500)]
    # Billed in two bills, the second sees the first as billed: the same fees.
    [later] = advance_fees(package, SEATS, "EUR", MARCH, [first], [first], [second])
    assert later.amount_cents == 500


def test_graduated_in_advance_first_event_pays_the_flat_amount() -> None:
    graduated = charge(
        "graduated",
        {
            "graduated_ranges": [
                {"from_value": 0, "to_value": 100, "per_unit_amount": "1", "flat_amount": "10"},
                {"from_value": 101, "to_value": None, "per_unit_amount": "0.5", "flat_amount": "0"},
            ]
        },
    )
    fees = advance_fees(
        graduated, SEATS, "EUR", MARCH, [], [], [event("e1", seats="60"), event("e2", seats="60")]
    )
    assert [f.amount_cents for f in fees] == [7000, 5000]  # Σ = model(120) = 120.00.


def test_sum_in_advance_bills_a_high_water_mark() -> None:
    standard = charge("standard", {"amount": "1"})
    events = [event("e1", seats="50"), event("e2", seats="-20"), event("e3", seats="30")]
    fees = advance_fees(standard, SEATS, "EUR", MARCH, [], [], events)
    assert [(f.units, f.amount_cents) for f in fees] == [
        (Decimal(50), 5000),
        (Decimal(0), 0),
        (Decimal(10), 1000),
    ]


def test_count_in_advance_with_a_sub_cent_price_sums_to_the_rounded_total() -> None:
    standard = charge("standard", {"amount": "0.004"})
    calls = [event(f"e{i}") for i in range(5)]
    fees = advance_fees(standard, CALLS, "EUR", MARCH, [], [], calls)
    # 0.4, 0.8, 1.2, 1.6, 2.0 cents rounded: 0, 1, 1, 2, 2 → fees 0, 1, 0, 1, 0 = 2 = round(2.0).
    assert [f.amount_cents for f in fees] == [0, 1, 0, 1, 0]
