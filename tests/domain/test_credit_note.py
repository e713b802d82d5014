"""Credit notes against an invoice, and their credit balance: given, when, then (§8.7)."""

from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any
from uuid import UUID, uuid4

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from domain.credit_note import (
    CreditNote,
    CreditNoteInvalidTypeOrStatusError,
    CreditNoteNoVoidableAmountError,
)
from domain.errors import CurrencyMismatchError, InvalidValueError
from domain.invoice import Invoice
from domain.invoicing import FeeLine
from tests.builders import ORG_ID

MARCH_1 = datetime(2026, 3, 1, tzinfo=UTC)
APRIL_1 = datetime(2026, 4, 1, tzinfo=UTC)
VAT = {"vat": Decimal("20")}


def fee(key: str, amount_cents: int, *tax_codes: str) -> FeeLine:
    return FeeLine(
        key=key,
        fee_type="charge",
        external_subscription_id="sub_1",
        plan_id="plan",
        plan_version=1,
        from_at=MARCH_1,
        to_at=APRIL_1,
        units=Decimal(1),
        events_count=0,
        unit_amount=Decimal(amount_cents) / 100,
        precise_amount_cents=Decimal(amount_cents),
        amount_cents=amount_cents,
        tax_codes=tax_codes,
    )


def draft(
    fees: list[FeeLine], rates: dict[str, Decimal], invoice_type: str = "subscription"
) -> Invoice:
    invoice = Invoice.draft(
        uuid4(),
        organization_id=ORG_ID,
        customer_id=UUID(int=7),
        external_customer_id="cus_1",
        invoice_type=invoice_type,
        currency="EUR",
        issuing_date=date(2026, 4, 1),
        net_payment_term=0,
        billing_periods=[],
        fees=fees,
        watermark=0,
        tax_rates=rates,
    )
    invoice.collect_events()
    return invoice


def finalized(
    fees: list[FeeLine],
    rates: dict[str, Decimal] | None = None,
    *,
    paid: bool = False,
    invoice_type: str = "subscription",
) -> Invoice:
    invoice = draft(fees, VAT if rates is None else rates, invoice_type)
    invoice.finalize("ACM-202604-001", 1, date(2026, 4, 1))
    if paid:
        invoice.set_payment_status("succeeded")
    invoice.collect_events()
    return invoice


def record(invoice: Invoice, items: dict[str, int], **split: int) -> Any:
    """Record a note whose whole total is credit unless the split says otherwise."""
    if not split:
        split = {"credit_amount_cents": invoice.credit_note_amounts(items).total_amount_cents}
    return invoice.record_credit_note(
        uuid4(),
        items,
        credit_amount_cents=split.get("credit_amount_cents", 0),
        refund_amount_cents=split.get("refund_amount_cents", 0),
        offset_amount_cents=split.get("offset_amount_cents", 0),
    )


def issued(invoice: Invoice, items: dict[str, int], **split: int) -> CreditNote:
    amounts = record(invoice, items, **split)
    if not split:
        split = {"credit_amount_cents": amounts.total_amount_cents}
    note = CreditNote.issue(
        uuid4(),
        organization_id=ORG_ID,
        invoice_id=invoice.id,
        invoice_number=invoice.number or "",
        customer_id=invoice.customer_id,
        external_customer_id=invoice.external_customer_id,
        currency=invoice.currency,
        sequential_id=1,
        issuing_date=date(2026, 4, 2),
        reason="other",
        description=None,
        origin=None,
        amounts=amounts,
        credit_amount_cents=split.get("credit_amount_cents", 0),
        refund_amount_cents=split.get("refund_amount_cents", 0),
        offset_amount_cents=split.get("offset_amount_cents", 0),
    )
    note.collect_events()
    return note


def refused(invoice: Invoice, field: str, reason: str, items: dict[str, int], **split: int) -> None:
    with pytest.raises(InvalidValueError) as error:
        record(invoice, items, **split)
    assert (error.value.field, error.value.reason) == (field, reason)
    assert invoice.collect_events() == []


# The invoice records each note, per fee.


def test_a_credit_note_is_taxed_per_rate_at_the_invoice_rates() -> None:
    # Given an invoice taxed at 20 % and 5.5 %
    invoice = finalized(
        [fee("a", 1000, "vat"), fee("b", 333, "reduced")],
        {"vat": Decimal("20"), "reduced": Decimal("5.5")},
    )
    # When half of a and all of b are credited
    amounts = record(invoice, {"a": 500, "b": 333}, credit_amount_cents=951)
    # Then the tax is per rate: 500 × 20 % = 100, 333 × 5.5 % = 18.315 → 18
    [recorded] = invoice.collect_events()
    assert isinstance(recorded, Invoice.CreditNoteRecorded)
    assert [(t.tax_code, t.taxable_base_cents, t.tax_cents) for t in amounts.applied_taxes] == [
        ("vat", 500, 100),
        ("reduced", 333, 18),
    ]
    assert (amounts.sub_total_excluding_taxes_amount_cents, amounts.total_amount_cents) == (
        833,
        951,
    )
    assert recorded.items == [
        {"fee_key": "a", "amount_cents": 500},
        {"fee_key": "b", "amount_cents": 333},
    ]
    assert invoice.credited_fee_cents == {"a": 500, "b": 333}


def test_notes_never_credit_more_tax_than_the_invoice_charged() -> None:
    # Given two 3-cent fees at 19 %: tax 6 × 19 % = 1.14 → 1 cent, total 7 (lago-api#2643)
    invoice = finalized([fee("a", 3, "vat"), fee("b", 3, "vat")], {"vat": Decimal("19")})
    assert invoice.totals.sub_total_including_taxes_amount_cents == 7
    # When each fee is credited by its own note
    first = record(invoice, {"a": 3})
    second = record(invoice, {"b": 3})
    # Then the first takes 0.57 → 1 cent of tax and the second none: 7 in all, never 8
    assert (first.total_amount_cents, second.total_amount_cents) == (4, 3)
    assert invoice.creditable_amount_cents == 0


def test_crediting_every_fee_credits_exactly_the_invoice_total() -> None:
    invoice = finalized([fee("a", 1001, "vat"), fee("b", 2, "vat"), fee("c", 7)])
    totals = [record(invoice, items).total_amount_cents for items in ({"a": 333}, {"b": 1})]
    totals.append(record(invoice, {"a": 668, "b": 1, "c": 7}).total_amount_cents)
    assert sum(totals) == invoice.totals.sub_total_including_taxes_amount_cents == 1211


def test_an_item_above_what_is_left_of_its_fee_is_refused() -> None:
    # Given an invoice whose 10.00 fee is already credited for 6.00
    invoice = finalized([fee("a", 1000, "vat")])
    record(invoice, {"a": 600})
    invoice.collect_events()
    # When 4.01 more is credited, then it is refused and nothing is recorded
    refused(invoice, "amount_cents", "higher_than_remaining_fee_amount", {"a": 401})
    assert record(invoice, {"a": 400}).total_amount_cents == 480  # Exactly what is left.


def test_a_negative_item_is_refused() -> None:
    invoice = finalized([fee("a", 1000, "vat")])
    refused(invoice, "amount_cents", "invalid_value", {"a": -1}, credit_amount_cents=0)


def test_an_unknown_fee_is_refused() -> None:
    invoice = finalized([fee("a", 1000, "vat")])
    refused(invoice, "fee_id", "value_is_invalid", {"z": 1}, credit_amount_cents=1)


@pytest.mark.parametrize("off_by", [-1, 1])
def test_the_split_must_equal_the_total_exactly(off_by: int) -> None:
    # Given an invoice of 10.00 + 20 % (a full credit is 12.00)
    invoice = finalized([fee("a", 1000, "vat")], paid=True)
    # When credit + refund is one cent away from 12.00, then it is refused: no tolerance
    split = {"credit_amount_cents": 600, "refund_amount_cents": 600 + off_by}
    refused(invoice, "base", "does_not_match_item_amounts", {"a": 1000}, **split)


def test_a_note_of_nothing_is_refused() -> None:
    invoice = finalized([fee("a", 1000, "vat")])
    refused(invoice, "base", "total_amount_must_be_positive", {"a": 0}, credit_amount_cents=0)


def test_a_negative_destination_is_refused() -> None:
    invoice = finalized([fee("a", 1000, "vat")], paid=True)
    split = {"credit_amount_cents": 1300, "refund_amount_cents": -100}
    refused(invoice, "refund_amount_cents", "invalid_value", {"a": 1000}, **split)


def test_an_unpaid_invoice_cannot_be_refunded() -> None:
    invoice = finalized([fee("a", 1000, "vat")])
    split = {"refund_amount_cents": 120}
    refused(invoice, "refund_amount_cents", "cannot_refund_unpaid_invoice", {"a": 100}, **split)


def test_a_refund_is_at_most_what_was_paid_minus_earlier_refunds() -> None:
    # Given 12.00 billed, 5.00 of it paid by credit and 7.00 paid, of which 6.00 refunded
    invoice = draft([fee("a", 1000, "vat")], VAT)
    invoice.apply_credit(uuid4(), 500)
    invoice.finalize("ACM-202604-001", 1, date(2026, 4, 1))
    invoice.set_payment_status("succeeded")
    assert invoice.total_paid_amount_cents == 700
    record(invoice, {"a": 500}, refund_amount_cents=600)
    invoice.collect_events()
    # When 1.20 more is refunded, then it is refused; 1.00 is not
    refused(
        invoice,
        "refund_amount_cents",
        "higher_than_remaining_invoice_amount",
        {"a": 100},
        refund_amount_cents=120,
    )
    split = {"refund_amount_cents": 100, "credit_amount_cents": 20}
    assert record(invoice, {"a": 100}, **split).total_amount_cents == 120


def test_an_offset_is_at_most_the_amount_still_due() -> None:
    # Given a paid invoice: nothing is due
    invoice = finalized([fee("a", 1000, "vat")], paid=True)
    split = {"offset_amount_cents": 120}
    refused(
        invoice, "offset_amount_cents", "higher_than_remaining_invoice_amount", {"a": 100}, **split
    )


def test_an_offset_reduces_the_amount_due() -> None:
    invoice = finalized([fee("a", 1000, "vat")])
    record(invoice, {"a": 500}, offset_amount_cents=600)
    assert (invoice.total_due_amount_cents, invoice.total_offsetted_credit_note_amount_cents) == (
        600,
        600,
    )


@pytest.mark.parametrize(
    ("invoice", "status"),
    [
        (draft([fee("a", 1000, "vat")], VAT), "draft"),
        (finalized([fee("a", 1000, "vat")], invoice_type="credit"), "finalized"),
    ],
)
def test_only_finalized_invoices_of_a_creditable_type_take_notes(
    invoice: Invoice, status: str
) -> None:
    assert invoice.status == status
    with pytest.raises(CreditNoteInvalidTypeOrStatusError):
        record(invoice, {"a": 100}, credit_amount_cents=120)
    assert invoice.collect_events() == []


def test_a_voided_invoice_takes_no_note() -> None:
    invoice = finalized([fee("a", 1000, "vat")])
    invoice.void(APRIL_1)
    invoice.collect_events()
    with pytest.raises(CreditNoteInvalidTypeOrStatusError):
        record(invoice, {"a": 100}, credit_amount_cents=120)
    assert invoice.collect_events() == []


def test_credit_applied_to_a_draft_lowers_its_total_after_tax() -> None:
    # Given a 12.00 draft
    invoice = draft([fee("a", 1000, "vat")], VAT)
    # When 12.00 of credit is applied and it is finalized
    invoice.apply_credit(uuid4(), 1200)
    invoice.finalize("ACM-202604-001", 1, date(2026, 4, 1))
    # Then nothing is left to pay and the invoice is settled
    applied, finalized_event = invoice.collect_events()
    assert isinstance(applied, Invoice.CreditApplied) and applied.amount_cents == 1200
    assert isinstance(finalized_event, Invoice.Finalized)
    assert (invoice.totals.credit_notes_amount_cents, invoice.totals.total_amount_cents) == (
        1200,
        0,
    )
    assert invoice.payment_status == "succeeded"


# The credit note and its balance.


def test_a_credit_note_holds_its_credit_as_an_available_balance() -> None:
    note = issued(finalized([fee("a", 1000, "vat")]), {"a": 1000})
    assert (note.number, note.credit_status, note.refund_status) == (
        "ACM-202604-001-CN001",
        "available",
        None,
    )
    assert (note.total_amount_cents, note.balance_amount_cents, note.taxes_amount_cents) == (
        1200,
        1200,
        200,
    )


def test_a_refund_only_note_has_nothing_to_spend_and_a_pending_refund() -> None:
    note = issued(
        finalized([fee("a", 1000, "vat")], paid=True), {"a": 1000}, refund_amount_cents=1200
    )
    assert (note.credit_status, note.balance_amount_cents, note.refund_status) == (
        "consumed",
        0,
        "pending",
    )


def test_consuming_part_of_the_balance_keeps_the_note_available() -> None:
    # Given a note with 12.00 of credit
    note = issued(finalized([fee("a", 1000, "vat")]), {"a": 1000})
    # When an invoice of 5.00 consumes it
    applied = note.consume(uuid4(), 500, "EUR")
    # Then 5.00 is applied and 7.00 is left
    [consumed] = note.collect_events()
    assert isinstance(consumed, CreditNote.Consumed)
    assert (applied, consumed.credit_status, note.balance_amount_cents) == (500, "available", 700)


def test_consuming_the_whole_balance_consumes_the_note() -> None:
    note = issued(finalized([fee("a", 1000, "vat")]), {"a": 1000})
    assert note.consume(uuid4(), 5000, "EUR") == 1200
    [consumed] = note.collect_events()
    assert isinstance(consumed, CreditNote.Consumed)
    assert (consumed.amount_cents, note.credit_status, note.balance_amount_cents) == (
        1200,
        "consumed",
        0,
    )


def test_credit_in_another_currency_is_refused() -> None:
    note = issued(finalized([fee("a", 1000, "vat")]), {"a": 1000})
    with pytest.raises(CurrencyMismatchError):
        note.consume(uuid4(), 500, "USD")
    assert note.collect_events() == []


def test_voiding_voids_the_remaining_balance() -> None:
    note = issued(finalized([fee("a", 1000, "vat")]), {"a": 1000})
    note.consume(uuid4(), 500, "EUR")
    note.collect_events()
    note.void(APRIL_1)
    [voided] = note.collect_events()
    assert isinstance(voided, CreditNote.Voided)
    assert (voided.amount_cents, note.credit_status, note.balance_amount_cents) == (
        700,
        "voided",
        0,
    )
    assert note.consume(uuid4(), 500, "EUR") == 0  # A voided note pays nothing.


@pytest.mark.parametrize("spent", [True, False])
def test_a_note_without_balance_cannot_be_voided(spent: bool) -> None:
    note = issued(finalized([fee("a", 1000, "vat")], paid=True), {"a": 1000})
    if spent:
        note.consume(uuid4(), 1200, "EUR")
    else:
        note.void(APRIL_1)
    note.collect_events()
    with pytest.raises(CreditNoteNoVoidableAmountError):
        note.void(APRIL_1)
    assert note.collect_events() == []


def test_the_refund_status_follows_the_payment_processor() -> None:
    note = issued(
        finalized([fee("a", 1000, "vat")], paid=True), {"a": 1000}, refund_amount_cents=1200
    )
    note.set_refund_status("succeeded")
    [changed] = note.collect_events()
    assert isinstance(changed, CreditNote.RefundStatusChanged)
    assert note.refund_status == "succeeded"


@pytest.mark.parametrize(("refund", "status"), [(1200, "refunded"), (0, "succeeded")])
def test_a_refund_status_is_refused_when_invalid_or_without_refund(
    refund: int, status: str
) -> None:
    invoice = finalized([fee("a", 1000, "vat")], paid=True)
    note = issued(
        invoice, {"a": 1000}, refund_amount_cents=refund, credit_amount_cents=1200 - refund
    )
    with pytest.raises(InvalidValueError) as error:
        note.set_refund_status(status)
    assert error.value.field == "refund_status"
    assert note.collect_events() == []


def test_a_reason_outside_lagos_list_is_refused() -> None:
    invoice = finalized([fee("a", 1000, "vat")])
    amounts = invoice.credit_note_amounts({"a": 1000})
    with pytest.raises(InvalidValueError) as error:
        CreditNote.issue(
            uuid4(),
            organization_id=ORG_ID,
            invoice_id=invoice.id,
            invoice_number="X",
            customer_id=invoice.customer_id,
            external_customer_id="cus_1",
            currency="EUR",
            sequential_id=1,
            issuing_date=date(2026, 4, 2),
            reason="because",
            description=None,
            origin=None,
            amounts=amounts,
            credit_amount_cents=1200,
            refund_amount_cents=0,
            offset_amount_cents=0,
        )
    assert (error.value.field, error.value.reason) == ("reason", "value_is_invalid")


# Property: random notes on random invoices never exceed the caps, and always split exactly.

RATES = {"a": Decimal("20"), "b": Decimal("5.5"), "c": Decimal("19"), "d": Decimal("0")}
fees_strategy = st.lists(
    st.tuples(
        st.integers(0, 10**6),
        st.lists(st.sampled_from(sorted(RATES)), max_size=2, unique=True),
    ),
    min_size=1,
    max_size=5,
)


@settings(max_examples=200)
@given(fees=fees_strategy, paid=st.booleans(), data=st.data())
def test_random_credit_notes_never_exceed_the_caps_and_split_exactly(
    fees: list[tuple[int, list[str]]], paid: bool, data: st.DataObject
) -> None:
    lines = [fee(f"f{i}", cents, *codes) for i, (cents, codes) in enumerate(fees)]
    invoice = finalized(lines, RATES, paid=paid)
    billed = invoice.totals
    for _ in range(data.draw(st.integers(1, 6))):
        items = {
            line.key: data.draw(st.integers(0, line.amount_cents + 2))
            for line in lines
            if data.draw(st.booleans())
        }
        try:
            total = invoice.credit_note_amounts(items).total_amount_cents
        except InvalidValueError as error:
            assert error.reason == "higher_than_remaining_fee_amount"
            assert any(
                c > f.amount_cents - invoice.credited_fee_cents.get(f.key, 0)
                for f in lines
                for k, c in items.items()
                if k == f.key
            )
            continue
        refund = data.draw(st.integers(0, max(total, 0)))
        offset = data.draw(st.integers(0, max(total - refund, 0)))
        error_cents = data.draw(st.sampled_from([0, 0, 0, -1, 1]))
        credit = total - refund - offset + error_cents
        try:
            amounts = invoice.record_credit_note(
                uuid4(),
                items,
                credit_amount_cents=credit,
                refund_amount_cents=refund,
                offset_amount_cents=offset,
            )
        except InvalidValueError:
            assert invoice.collect_events() == []
            continue
        assert len(invoice.collect_events()) == 1
        assert error_cents == 0 and credit >= 0
        assert credit + refund + offset == amounts.total_amount_cents == total
        # Caps: per fee, per tax rate, the invoice, what was paid and what was due.
        for line in lines:
            assert invoice.credited_fee_cents.get(line.key, 0) <= line.amount_cents
        assert (
            invoice.credit_notes_total_amount_cents <= billed.sub_total_including_taxes_amount_cents
        )
        assert invoice.total_refunded_amount_cents <= invoice.total_paid_amount_cents
        assert (
            invoice.total_offsetted_credit_note_amount_cents + invoice.total_paid_amount_cents
            <= (billed.total_amount_cents)
        )
    # Crediting everything left credits exactly what the invoice billed.
    rest = {
        line.key: line.amount_cents - invoice.credited_fee_cents.get(line.key, 0) for line in lines
    }
    if invoice.credit_note_amounts(rest).total_amount_cents > 0:
        record(invoice, rest)
    assert invoice.credit_notes_total_amount_cents == billed.sub_total_including_taxes_amount_cents
