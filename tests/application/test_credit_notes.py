"""Credit notes through the billing run: termination and upgrade notes, credit consumed by later
invoices, and racing notes on one invoice; on a fixed clock."""

import threading
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import pytest

from adapters.stores import Ledger
from domain.credit_note import CreditNote
from domain.errors import InvalidValueError
from domain.invoice import Invoice
from tests.conftest import Tenant

MARCH_1 = datetime(2026, 3, 1, tzinfo=UTC)
MARCH_16_NOON = datetime(2026, 3, 16, 12, tzinfo=UTC)
APRIL_1 = datetime(2026, 4, 1, tzinfo=UTC)
MAY_1 = datetime(2026, 5, 1, tzinfo=UTC)
BASE_FEE = f"subscription:sub_1:{MARCH_1.isoformat()}/{APRIL_1.isoformat()}"


def at(ledger: Ledger, instant: datetime) -> None:
    ledger.billing.now = lambda: instant


def bill(ledger: Ledger, now: datetime) -> list[Invoice]:
    at(ledger, now)
    return ledger.invoicing.run(now)


def setup_catalog(ledger: Ledger, organization_id: UUID) -> None:
    """VAT 20 % for the whole organization, and monthly plans without charges."""
    billing = ledger.billing
    billing.create_tax(
        organization_id, "vat", {"name": "VAT", "rate": "20", "applied_to_organization": True}
    )
    for code, cents, advance in (
        ("advance", 3000, True),
        ("premium", 6000, True),
        ("arrears", 3000, False),
    ):
        billing.create_plan(
            organization_id,
            code,
            {
                "name": code,
                "interval": "monthly",
                "amount_cents": cents,
                "amount_currency": "EUR",
                "pay_in_advance": advance,
                "charges": [],
            },
        )


@pytest.fixture
def org(ledger: Ledger, tenant: Tenant) -> UUID:
    setup_catalog(ledger, tenant.organization_id)
    return tenant.organization_id


def subscribe(ledger: Ledger, org: UUID, plan_code: str, when: datetime = MARCH_1) -> None:
    at(ledger, when)
    ledger.billing.create_subscription(
        org, "sub_1", external_customer_id="acme", plan_code=plan_code, subscription_at=MARCH_1
    )


def terminate(ledger: Ledger, org: UUID, when: datetime, credit_note: str | None = None) -> None:
    at(ledger, when)
    ledger.billing.terminate_subscription(org, "sub_1", on_termination_credit_note=credit_note)


def notes(ledger: Ledger, org: UUID, **filters: Any) -> list[CreditNote]:
    found, total = ledger.credit_notes.credit_notes(org, 1, 100, **filters)
    assert len(found) == total
    return found


def credit(ledger: Ledger, org: UUID, invoice: Invoice, cents: int) -> CreditNote:
    """A manual note crediting `cents` of the invoice's first fee, all of it as credit."""
    key = invoice.fees[0].key
    total = invoice.credit_note_amounts({key: cents}).total_amount_cents
    return ledger.credit_notes.create(
        org, invoice.id, [(key, cents)], reason="other", credit_amount_cents=total
    )


def test_a_termination_credits_the_unused_days_of_a_base_fee_paid_in_advance(
    ledger: Ledger, org: UUID
) -> None:
    # §5.7: €30 in advance, terminated March 16 → March 17–31 = 15 days → €14.52 before tax.
    subscribe(ledger, org, "advance")
    [march] = bill(ledger, MARCH_1)
    assert march.totals.total_amount_cents == 3600
    terminate(ledger, org, MARCH_16_NOON)
    bill(ledger, datetime(2026, 3, 16, 13, tzinfo=UTC))
    [note] = notes(ledger, org)
    assert note.items == [{"fee_key": BASE_FEE, "amount_cents": 1452}]
    # Tax at the original invoice's rate: 14.52 × 20 % = 2.904 → 2.90.
    assert (note.taxes_amount_cents, note.total_amount_cents) == (290, 1742)
    assert (note.credit_amount_cents, note.balance_amount_cents, note.credit_status) == (
        1742,
        1742,
        "available",
    )
    assert (note.reason, note.invoice_id, note.number) == (
        "order_cancellation",
        march.id,
        f"{march.number}-CN001",
    )
    # The billing run is idempotent: a rerun issues nothing more.
    bill(ledger, MAY_1)
    assert [n.id for n in notes(ledger, org)] == [note.id]
    invoice = ledger.invoicing.invoice(org, march.id)
    assert invoice.credited_fee_cents == {BASE_FEE: 1452}


def test_a_termination_with_skip_issues_no_credit_note(ledger: Ledger, org: UUID) -> None:
    subscribe(ledger, org, "advance")
    bill(ledger, MARCH_1)
    terminate(ledger, org, MARCH_16_NOON, "skip")
    bill(ledger, MAY_1)
    assert notes(ledger, org) == []


def test_a_refund_termination_refunds_what_was_paid(ledger: Ledger, org: UUID) -> None:
    subscribe(ledger, org, "advance")
    [march] = bill(ledger, MARCH_1)
    ledger.invoicing.set_payment_status(org, march.id, "succeeded")
    terminate(ledger, org, MARCH_16_NOON, "refund")
    bill(ledger, MAY_1)
    [note] = notes(ledger, org)
    assert (note.refund_amount_cents, note.credit_amount_cents, note.refund_status) == (
        1742,
        0,
        "pending",
    )


def test_a_refund_termination_of_an_unpaid_invoice_credits_instead(
    ledger: Ledger, org: UUID
) -> None:
    subscribe(ledger, org, "advance")
    bill(ledger, MARCH_1)
    terminate(ledger, org, MARCH_16_NOON, "refund")
    bill(ledger, MAY_1)
    [note] = notes(ledger, org)
    assert (note.refund_amount_cents, note.credit_amount_cents) == (0, 1742)


def test_an_offset_termination_lowers_the_amount_still_due(ledger: Ledger, org: UUID) -> None:
    subscribe(ledger, org, "advance")
    [march] = bill(ledger, MARCH_1)
    terminate(ledger, org, MARCH_16_NOON, "offset")
    bill(ledger, MAY_1)
    [note] = notes(ledger, org)
    assert (note.offset_amount_cents, note.credit_amount_cents) == (1742, 0)
    invoice = ledger.invoicing.invoice(org, march.id)
    assert invoice.total_due_amount_cents == 3600 - 1742


def test_an_upgrade_credits_the_old_plan_and_the_new_invoice_consumes_it(
    ledger: Ledger, org: UUID
) -> None:
    # §5.6: €30 → €60 in advance, switch March 16 → credit 30 × 16/31 = €15.48 (+ tax),
    # new fee 60 × 16/31 = €30.97 (+ tax).
    subscribe(ledger, org, "advance")
    [march] = bill(ledger, MARCH_1)
    subscribe(ledger, org, "premium", datetime(2026, 3, 16, 10, tzinfo=UTC))
    [_, switch] = bill(ledger, datetime(2026, 3, 16, 11, tzinfo=UTC))
    [note] = notes(ledger, org)
    assert (note.reason, note.invoice_id) == ("order_change", march.id)
    assert (note.sub_total_excluding_taxes_amount_cents, note.total_amount_cents) == (1548, 1858)
    assert [f.amount_cents for f in switch.fees] == [3097]
    totals = switch.totals
    assert (totals.sub_total_including_taxes_amount_cents, totals.credit_notes_amount_cents) == (
        3716,
        1858,
    )
    assert totals.total_amount_cents == 3716 - 1858
    consumed = ledger.credit_notes.credit_note(org, note.id)
    assert (consumed.balance_amount_cents, consumed.credit_status) == (0, "consumed")


def test_credit_is_consumed_by_the_next_invoices_oldest_note_first(
    ledger: Ledger, org: UUID
) -> None:
    # Given March's invoice (€30 + 20 %) credited by two notes: €12.00, then €24.00
    subscribe(ledger, org, "arrears")
    [march] = bill(ledger, APRIL_1)
    first = credit(ledger, org, march, 1000)
    second = credit(ledger, org, ledger.invoicing.invoice(org, march.id), 2000)
    assert ledger.credit_notes.credit_balance_cents(org, "acme", "EUR") == 3600
    # When April's invoice bills 15 days: €15.00 + 20 % = €18.00
    terminate(ledger, org, datetime(2026, 4, 15, 12, tzinfo=UTC))
    [_, april] = bill(ledger, datetime(2026, 4, 15, 13, tzinfo=UTC))
    # Then it consumes the first note whole and €6.00 of the second
    totals = april.totals
    assert totals.sub_total_including_taxes_amount_cents == 1800
    assert (totals.credit_notes_amount_cents, totals.total_amount_cents) == (1800, 0)
    assert april.applied_credits == [(first.id, 1200), (second.id, 600)]
    assert april.payment_status == "succeeded"
    first, second = (ledger.credit_notes.credit_note(org, n.id) for n in (first, second))
    assert (first.balance_amount_cents, first.credit_status) == (0, "consumed")
    assert (second.balance_amount_cents, second.credit_status) == (1800, "available")
    assert ledger.credit_notes.credit_balance_cents(org, "acme", "EUR") == 1800
    assert [n.id for n in notes(ledger, org, credit_status="available")] == [second.id]


def test_a_voided_note_is_not_consumed(ledger: Ledger, org: UUID) -> None:
    subscribe(ledger, org, "arrears")
    [march] = bill(ledger, APRIL_1)
    note = credit(ledger, org, march, 1000)
    voided = ledger.credit_notes.void(org, note.id)
    assert (voided.credit_status, voided.balance_amount_cents) == ("voided", 0)
    april = bill(ledger, MAY_1)[-1]
    assert april.totals.credit_notes_amount_cents == 0
    assert [n.id for n in notes(ledger, org, credit_status="voided")] == [note.id]


def test_an_estimate_stores_nothing(ledger: Ledger, org: UUID) -> None:
    subscribe(ledger, org, "arrears")
    [march] = bill(ledger, APRIL_1)
    key = march.fees[0].key
    estimate = ledger.credit_notes.estimate(org, march.id, [(key, 1000)])
    assert (estimate.max_creditable_amount_cents, estimate.max_refundable_amount_cents) == (1200, 0)
    assert estimate.max_offsettable_amount_cents == 1200
    assert notes(ledger, org) == []
    assert ledger.invoicing.invoice(org, march.id).version == march.version


def test_a_list_filters_by_reason_and_refund_status(ledger: Ledger, org: UUID) -> None:
    subscribe(ledger, org, "arrears")
    [march] = bill(ledger, APRIL_1)
    ledger.invoicing.set_payment_status(org, march.id, "succeeded")
    key = march.fees[0].key
    refund = ledger.credit_notes.create(
        org, march.id, [(key, 1000)], reason="duplicated_charge", refund_amount_cents=1200
    )
    other = credit(ledger, org, ledger.invoicing.invoice(org, march.id), 500)
    assert [n.id for n in notes(ledger, org, refund_status="pending")] == [refund.id]
    assert [n.id for n in notes(ledger, org, reason="other")] == [other.id]
    assert [n.id for n in notes(ledger, org, external_customer_id="acme")] == [other.id, refund.id]
    assert notes(ledger, org, external_customer_id="nobody") == []


def race(ledger: Ledger, invoice_id: UUID, attempt: Callable[[], object]) -> list[object]:
    """Run `attempt` in two threads that both load the invoice before either saves."""
    repository = ledger.billing.repository
    original = repository.get
    barrier = threading.Barrier(2)
    local = threading.local()

    def get(aggregate_id: UUID, *args: Any, **kwargs: Any) -> Any:
        loaded = original(aggregate_id, *args, **kwargs)
        if aggregate_id == invoice_id and not getattr(local, "waited", False):
            local.waited = True
            barrier.wait(timeout=10)
        return loaded

    results: list[object] = []

    def run() -> None:
        try:
            results.append(attempt())
        except Exception as error:  # Collected and inspected by the test.
            results.append(error)

    repository.get = get  # type: ignore[method-assign]
    try:
        threads = [threading.Thread(target=run) for _ in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=30)
    finally:
        repository.get = original  # type: ignore[method-assign]
    return results


def assert_one_full_credit_note_wins(ledger: Ledger, org: UUID, march: Invoice) -> None:
    key = march.fees[0].key

    def full_credit() -> CreditNote:
        return ledger.credit_notes.create(org, march.id, [(key, 3000)], credit_amount_cents=3600)

    results = race(ledger, march.id, full_credit)
    won = [r for r in results if isinstance(r, CreditNote)]
    lost = [r for r in results if isinstance(r, InvalidValueError)]
    assert (len(won), len(lost)) == (1, 1), results
    assert lost[0].reason == "higher_than_remaining_fee_amount"
    invoice = ledger.invoicing.invoice(org, march.id)
    assert invoice.credited_fee_cents == {key: 3000}
    assert [n.id for n in notes(ledger, org)] == [won[0].id]
    assert won[0].number == f"{march.number}-CN001"


def test_two_racing_full_credit_notes_on_one_invoice_one_succeeds(
    ledger: Ledger, org: UUID
) -> None:
    subscribe(ledger, org, "arrears")
    [march] = bill(ledger, APRIL_1)
    assert_one_full_credit_note_wins(ledger, org, march)


def test_two_racing_full_credit_notes_one_succeeds_on_every_store(store_ledger: Ledger) -> None:
    organization, _ = store_ledger.billing.create_organization("acme")
    setup_catalog(store_ledger, organization.id)
    subscribe(store_ledger, organization.id, "arrears")
    [march] = bill(store_ledger, APRIL_1)
    assert_one_full_credit_note_wins(store_ledger, organization.id, march)
    # The next invoice consumes the winner's credit, in its finalization's transaction.
    april = bill(store_ledger, MAY_1)[-1]
    assert april.totals.total_amount_cents == 0
    [note] = notes(store_ledger, organization.id)
    assert (note.balance_amount_cents, note.credit_status) == (0, "consumed")
