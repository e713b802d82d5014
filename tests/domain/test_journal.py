"""The journal's postings: given an aggregate after a money event, then its balanced entries."""

from datetime import UTC, date, datetime
from decimal import Decimal
from uuid import UUID, uuid4

import pytest

from domain import journal
from domain.credit_note import CreditNote
from domain.invoice import Invoice
from domain.invoicing import FeeLine
from domain.journal import Entry, Posting
from domain.payment import Payment
from domain.wallet import Wallet
from tests.builders import ORG_ID

MARCH_1 = datetime(2026, 3, 1, tzinfo=UTC)
APRIL_1 = datetime(2026, 4, 1, tzinfo=UTC)
CUSTOMER_ID = UUID(int=7)
VAT = {"vat_fr": Decimal("20"), "vat_de": Decimal("19")}


def fee(
    key: str,
    amount_cents: int,
    *tax_codes: str,
    fee_type: str = "charge",
    metric_code: str | None = "tokens",
    filter_values: dict[str, list[str]] | None = None,
) -> FeeLine:
    return FeeLine(
        key=key,
        fee_type=fee_type,
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
        metric_code=metric_code if fee_type != "subscription" else None,
        filter_values=filter_values,
        tax_codes=tax_codes,
    )


def finalized(fees: list[FeeLine], invoice_type: str = "subscription") -> Invoice:
    invoice = Invoice.draft(
        uuid4(),
        organization_id=ORG_ID,
        customer_id=CUSTOMER_ID,
        external_customer_id="cus_1",
        invoice_type=invoice_type,
        currency="EUR",
        issuing_date=date(2026, 4, 1),
        net_payment_term=30,
        billing_periods=[],
        fees=fees,
        watermark=0,
        tax_rates=VAT if invoice_type != "credit" else {},
    )
    invoice.finalize("ACM-202604-001", 1, date(2026, 4, 1))
    invoice.collect_events()
    return invoice


def wallet() -> Wallet:
    created = Wallet.create(
        uuid4(),
        organization_id=ORG_ID,
        customer_id=CUSTOMER_ID,
        external_customer_id="cus_1",
        currency="EUR",
        rate_amount=Decimal(1),
        name=None,
        code="w",
        priority=None,
        expiration_at=None,
        fee_types=[],
        billable_metric_codes=[],
        rules=[],
        invoice_requires_successful_payment=False,
        paid_top_up_min_amount_cents=None,
        paid_top_up_max_amount_cents=None,
        metadata={},
        now=MARCH_1,
        rule_ids=[],
    )
    created.collect_events()
    return created


def lines(posting: Posting | None) -> list[tuple[str, int, int]]:
    """(account, debit, credit) per entry, after checking the posting balances."""
    assert posting is not None
    assert posting.debit_cents == posting.credit_cents
    return [(e.account, e.debit_cents, e.credit_cents) for e in posting.entries]


TOKENS_IN = fee(
    "charge:in", 10_000, "vat_fr", filter_values={"model": ["large"], "direction": ["input"]}
)
BASE = fee("subscription:1", 5_000, "vat_fr", fee_type="subscription")


def test_a_finalized_invoice_owes_revenue_per_product_line_and_vat_per_rate() -> None:
    # Given a finalized invoice: tokens 100.00 and a base fee 50.00, VAT 20 %
    invoice = finalized([TOKENS_IN, BASE])
    # When it posts
    posting = journal.invoice_finalized(invoice, "FR")
    # Then the receivable is the gross, revenue goes per line, VAT per rate
    assert lines(posting) == [
        ("1100", 18_000, 0),
        ("4000", 0, 10_000),
        ("4000", 0, 5_000),
        ("2200", 0, 3_000),
    ]
    assert posting is not None
    receivable, tokens, base, vat = posting.entries
    assert (receivable.invoice_id, receivable.due_on) == (invoice.id, date(2026, 5, 1))
    assert (tokens.product_line, tokens.metric_code) == (
        "tokens[direction=input,model=large]",
        "tokens",
    )
    assert (tokens.line_tax_cents, base.product_line) == (2_000, "subscription")
    assert (vat.country, vat.tax_code, vat.tax_rate, vat.base_cents) == (
        "FR",
        "vat_fr",
        Decimal("20"),
        15_000,
    )
    assert (posting.kind, posting.posted_on, posting.currency) == (
        "invoice_finalized",
        date(2026, 4, 1),
        "EUR",
    )
    assert posting.transaction_id == f"{invoice.id}:{invoice.version}"


def test_a_zero_rate_keeps_its_base_without_an_amount() -> None:
    invoice = Invoice.draft(
        uuid4(),
        organization_id=ORG_ID,
        customer_id=CUSTOMER_ID,
        external_customer_id="cus_1",
        invoice_type="subscription",
        currency="EUR",
        issuing_date=date(2026, 4, 1),
        net_payment_term=0,
        billing_periods=[],
        fees=[fee("charge:1", 1_000, "reverse_charge")],
        watermark=0,
        tax_rates={"reverse_charge": Decimal(0)},
    )
    invoice.finalize("ACM-202604-001", 1, date(2026, 4, 1))
    posting = journal.invoice_finalized(invoice, "DE")
    assert lines(posting) == [("1100", 1_000, 0), ("4000", 0, 1_000), ("2200", 0, 0)]
    assert posting is not None
    assert posting.entries[-1].base_cents == 1_000


def test_a_paid_top_up_invoice_awaits_payment_instead_of_revenue() -> None:
    wallet_id, transaction_id = uuid4(), uuid4()
    top_up = fee(f"credit:{wallet_id}:{transaction_id}", 2_500, fee_type="credit", metric_code=None)
    invoice = finalized([top_up], invoice_type="credit")
    posting = journal.invoice_finalized(invoice, None)
    assert lines(posting) == [("1100", 2_500, 0), ("2350", 0, 2_500)]
    assert posting is not None
    assert {e.wallet_id for e in posting.entries} == {wallet_id}


def test_an_invoice_of_nothing_posts_nothing() -> None:
    assert journal.invoice_finalized(finalized([fee("charge:0", 0, "vat_fr")]), "FR") is None


def test_a_payment_posts_cash_for_what_was_due_and_a_reversal_takes_it_back() -> None:
    invoice = finalized([TOKENS_IN])
    invoice.set_payment_status("succeeded")
    paid = journal.payment_status_changed(invoice, "pending", date(2026, 4, 3))
    assert lines(paid) == [("1200", 12_000, 0), ("1100", 0, 12_000)]
    invoice.set_payment_status("failed")
    reversed_ = journal.payment_status_changed(invoice, "succeeded", date(2026, 4, 4))
    assert lines(reversed_) == [("1100", 12_000, 0), ("1200", 0, 12_000)]
    assert journal.payment_status_changed(invoice, "pending", date(2026, 4, 4)) is None


def issue(invoice: Invoice, items: dict[str, int], **split: int) -> CreditNote:
    note_id = uuid4()
    amounts = invoice.record_credit_note(
        note_id,
        items,
        credit_amount_cents=split.get("credit", 0),
        refund_amount_cents=split.get("refund", 0),
        offset_amount_cents=split.get("offset", 0),
    )
    assert invoice.number is not None
    return CreditNote.issue(
        note_id,
        organization_id=ORG_ID,
        invoice_id=invoice.id,
        invoice_number=invoice.number,
        customer_id=CUSTOMER_ID,
        external_customer_id="cus_1",
        currency="EUR",
        sequential_id=1,
        issuing_date=date(2026, 4, 10),
        reason="other",
        description=None,
        origin=None,
        amounts=amounts,
        credit_amount_cents=split.get("credit", 0),
        refund_amount_cents=split.get("refund", 0),
        offset_amount_cents=split.get("offset", 0),
    )


def test_a_credit_note_takes_back_revenue_and_vat_into_its_three_destinations() -> None:
    # Given an invoice of 100.00 + 20 % VAT, a note on 50.00 (60.00 with tax)
    invoice = finalized([TOKENS_IN])
    note = issue(invoice, {"charge:in": 5_000}, credit=3_000, offset=3_000)
    # When it posts
    posting = journal.credit_note_issued(note, invoice, "FR")
    # Then revenue and VAT are debited, credit and receivable credited
    assert lines(posting) == [
        ("4000", 5_000, 0),
        ("2200", 1_000, 0),
        ("2400", 0, 3_000),
        ("1100", 0, 3_000),
    ]
    assert posting is not None
    assert posting.entries[0].product_line == "tokens[direction=input,model=large]"
    assert posting.entries[1].base_cents == -5_000
    assert posting.posted_on == date(2026, 4, 10)


def test_a_consumed_voided_and_refunded_note_each_post() -> None:
    invoice = finalized([TOKENS_IN])
    invoice.set_payment_status("succeeded")
    note = issue(invoice, {"charge:in": 5_000}, credit=3_000, refund=3_000)
    consuming = uuid4()
    assert lines(journal.credit_note_consumed(note, consuming, 1_000, date(2026, 5, 1))) == [
        ("2400", 1_000, 0),
        ("1100", 0, 1_000),
    ]
    assert lines(journal.credit_note_voided(note, 2_000, date(2026, 5, 2))) == [
        ("2400", 2_000, 0),
        ("4900", 0, 2_000),
    ]
    note.set_refund_status("succeeded")
    assert lines(journal.refund_status_changed(note, "pending", date(2026, 5, 3))) == [
        ("2450", 3_000, 0),
        ("1200", 0, 3_000),
    ]


def test_a_void_reverses_only_what_credit_notes_left() -> None:
    # Given an invoice of 100.00 + 50.00 (VAT 20 %) credited 50.00 on tokens, then voided
    invoice = finalized([TOKENS_IN, BASE])
    issue(invoice, {"charge:in": 5_000}, offset=6_000)
    invoice.void(datetime(2026, 4, 20, 9, tzinfo=UTC))
    # When the void posts
    posting = journal.invoice_voided(invoice, "FR")
    # Then it reverses 50.00 of tokens, the base fee and the VAT left: 120.00 in all
    assert lines(posting) == [
        ("4000", 5_000, 0),
        ("4000", 5_000, 0),
        ("2200", 2_000, 0),
        ("1100", 0, 12_000),
    ]
    assert posting is not None
    assert posting.posted_on == date(2026, 4, 20)


def test_granted_credits_are_a_promotional_expense() -> None:
    w = wallet()
    transaction_id = uuid4()
    w.grant(transaction_id, 1_000, now=MARCH_1)
    assert lines(journal.credits_granted(w, transaction_id)) == [
        ("6100", 1_000, 0),
        ("2310", 0, 1_000),
    ]


def test_a_settled_top_up_becomes_deferred_revenue() -> None:
    w = wallet()
    transaction_id, invoice_id = uuid4(), uuid4()
    w.purchase(transaction_id, 2_000, invoice_id, now=MARCH_1)
    w.settle(transaction_id, datetime(2026, 3, 2, tzinfo=UTC))
    posting = journal.top_up_settled(w, transaction_id)
    assert lines(posting) == [("2350", 2_000, 0), ("2300", 0, 2_000)]
    assert posting is not None
    assert (posting.posted_on, posting.entries[1].invoice_id) == (date(2026, 3, 2), invoice_id)


def test_credits_pay_an_invoice_lot_by_lot_granted_first() -> None:
    # Given 10.00 granted and 20.00 paid
    w = wallet()
    purchase = uuid4()
    w.grant(uuid4(), 1_000, now=MARCH_1)
    w.purchase(purchase, 2_000, uuid4(), now=MARCH_1)
    w.settle(purchase, MARCH_1)
    # When they pay 25.00 of an invoice
    invoice_id = uuid4()
    w.pay_invoice(invoice_id, 2_500, "EUR", APRIL_1)
    debit = w.entries()[-1]
    posting = journal.credits_debited(w, debit.transaction_id, date(2026, 4, 1))
    # Then granted 10.00 and paid 15.00 pay the receivable
    assert lines(posting) == [
        ("2310", 1_000, 0),
        ("1100", 0, 1_000),
        ("2300", 1_500, 0),
        ("1100", 0, 1_500),
    ]
    assert posting is not None
    assert {e.invoice_id for e in posting.entries} == {invoice_id}
    assert posting.kind == "credits_consumed"


def test_forfeited_credits_go_to_other_income_and_granted_ones_reverse_the_expense() -> None:
    w = wallet()
    purchase = uuid4()
    w.grant(uuid4(), 1_000, now=MARCH_1)
    w.purchase(purchase, 2_000, uuid4(), now=MARCH_1)
    w.settle(purchase, MARCH_1)
    w.terminate(APRIL_1)
    forfeited = next(t for t in w.entries() if t.void_reason == "terminated")
    posting = journal.credits_debited(w, forfeited.transaction_id)
    assert lines(posting) == [
        ("2310", 1_000, 0),
        ("6100", 0, 1_000),
        ("2300", 2_000, 0),
        ("4900", 0, 2_000),
    ]
    assert posting is not None
    assert (posting.kind, posting.posted_on) == ("credits_forfeited", date(2026, 4, 1))


def test_a_manual_void_of_credits_posts_like_a_forfeiture() -> None:
    w = wallet()
    w.grant(uuid4(), 1_000, now=MARCH_1)
    voided = uuid4()
    w.void_credits(voided, 400, now=APRIL_1)
    posting = journal.credits_debited(w, voided)
    assert lines(posting) == [("2310", 400, 0), ("6100", 0, 400)]
    assert posting is not None
    assert posting.kind == "credits_voided"


def test_an_unbalanced_posting_is_refused() -> None:
    with pytest.raises(AssertionError):
        Posting(
            transaction_id="x:1",
            kind="invoice_finalized",
            organization_id=ORG_ID,
            customer_id=CUSTOMER_ID,
            external_customer_id="cus_1",
            currency="EUR",
            posted_on=date(2026, 4, 1),
            entries=(Entry("1100", 100, 0, "r"), Entry("4000", 0, 99, "r")),
        )


def test_an_entry_is_a_debit_or_a_credit_on_a_known_account() -> None:
    with pytest.raises(AssertionError):
        Entry("1100", 100, 100, "r")
    with pytest.raises(AssertionError):
        Entry("9999", 100, 0, "r")
    with pytest.raises(AssertionError):
        Entry("1100", -1, 0, "r")


def test_the_chart_names_every_account_the_rules_use() -> None:
    assert set(journal.CHART) == {
        "1100",
        "1200",
        "2200",
        "2300",
        "2310",
        "2350",
        "2400",
        "2450",
        "4000",
        "4900",
        "6100",
    }
    assert journal.CHART["6100"].normal_side == "debit"
    assert journal.CHART["2300"].normal_side == "credit"


def manual_payment(invoice: Invoice, amount_cents: int, paid_at: datetime) -> Payment:
    payment = Payment.manual(
        organization_id=ORG_ID,
        invoice_id=invoice.id,
        customer_id=CUSTOMER_ID,
        external_customer_id="cus_1",
        number=1,
        amount_cents=amount_cents,
        currency="EUR",
        reference="wire",
        paid_at=paid_at,
        now=datetime(2026, 4, 20, tzinfo=UTC),
    )
    payment.collect_events()
    return payment


def test_a_payment_posts_its_own_amount_on_the_day_it_was_paid() -> None:
    invoice = finalized([TOKENS_IN])
    payment = manual_payment(invoice, 5_000, datetime(2026, 4, 12, 23, 30, tzinfo=UTC))
    posting = journal.payment_received(payment, invoice)
    assert lines(posting) == [("1200", 5_000, 0), ("1100", 0, 5_000)]
    assert (posting.kind, posting.posted_on) == ("payment_received", date(2026, 4, 12))
    assert posting.transaction_id == f"{payment.id}:{payment.version}"
    assert {e.invoice_id for e in posting.entries} == {invoice.id}


def test_marking_paid_posts_only_what_the_payments_left_and_unmarking_only_that() -> None:
    invoice = finalized([TOKENS_IN])
    invoice.set_payment_status("succeeded")
    paid = journal.payment_status_changed(
        invoice, "pending", date(2026, 4, 13), payments_cents=5_000
    )
    assert lines(paid) == [("1200", 7_000, 0), ("1100", 0, 7_000)]
    covered = journal.payment_status_changed(
        invoice, "pending", date(2026, 4, 13), payments_cents=12_000
    )
    assert covered is None  # The payments' own postings hold all the cash.
    invoice.set_payment_status("failed")
    reversed_ = journal.payment_status_changed(
        invoice, "succeeded", date(2026, 4, 14), payments_cents=5_000, marked_cents=7_000
    )
    assert lines(reversed_) == [("1100", 7_000, 0), ("1200", 0, 7_000)]
    nothing_marked = journal.payment_status_changed(
        invoice, "succeeded", date(2026, 4, 14), payments_cents=12_000, marked_cents=0
    )
    assert nothing_marked is None
