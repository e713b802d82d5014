"""The minimum commitment's true-up (§4.11) counts every fee of its period: the base fee,
charges in arrears and pay-in-advance charges; a plan paid in advance gets it on the next
invoice."""

from datetime import UTC, datetime

import pytest

from adapters.stores import Ledger
from application.metering import EventInput
from domain.invoice import Invoice
from tests.conftest import Tenant

MARCH_1 = datetime(2026, 3, 1, tzinfo=UTC)
MARCH_5 = datetime(2026, 3, 5, tzinfo=UTC)
APRIL_1 = datetime(2026, 4, 1, tzinfo=UTC)


def at(ledger: Ledger, instant: datetime) -> None:
    ledger.billing.now = lambda: instant


def subscribe(ledger: Ledger, tenant: Tenant, *, pay_in_advance: bool) -> None:
    """€100 a month, €1 per token in arrears and €1 per seat in advance, committed to €500."""
    org = tenant.organization_id
    at(ledger, MARCH_1)
    charges = []
    for code, in_advance in (("tokens", False), ("seats", True)):
        metric = ledger.billing.create_billable_metric(
            org, code, {"name": code, "aggregation_type": "sum_agg", "field_name": code}
        )
        charges.append(
            {
                "billable_metric_id": str(metric.id),
                "charge_model": "standard",
                "pay_in_advance": in_advance,
                "properties": {"amount": "1"},
            }
        )
    ledger.billing.create_plan(
        org,
        "committed",
        {
            "name": "Committed",
            "interval": "monthly",
            "amount_cents": 10_000,
            "amount_currency": "EUR",
            "pay_in_advance": pay_in_advance,
            "minimum_commitment": {"amount_cents": 50_000},
            "charges": charges,
        },
    )
    ledger.billing.create_subscription(
        org, "sub_1", external_customer_id="acme", plan_code="committed", subscription_at=MARCH_1
    )


def use(ledger: Ledger, tenant: Tenant, transaction_id: str, code: str, units: int) -> None:
    at(ledger, MARCH_5)
    event = EventInput(transaction_id, "sub_1", code, int(MARCH_5.timestamp()), {code: units}, None)
    ledger.metering.ingest(tenant.organization_id, [event], batch=False)


def lines(invoice: Invoice) -> list[tuple[str, int]]:
    return [(fee.fee_type, fee.amount_cents) for fee in invoice.fees]


def bill(ledger: Ledger, now: datetime) -> list[Invoice]:
    at(ledger, now)
    return ledger.invoicing.run(now)


def test_the_worked_example_counts_pay_in_advance_charges(ledger: Ledger, tenant: Tenant) -> None:
    # §4.11: commitment €500; base €100 + charges €250 + in-advance €20 = 370 → true-up 130.00.
    subscribe(ledger, tenant, pay_in_advance=False)
    use(ledger, tenant, "t1", "tokens", 250)
    use(ledger, tenant, "s1", "seats", 20)
    [advance] = bill(ledger, MARCH_5)
    assert lines(advance) == [("charge", 2_000)]
    [periodic] = [i for i in bill(ledger, APRIL_1) if i.id != advance.id]
    assert lines(periodic) == [("charge", 25_000), ("subscription", 10_000), ("commitment", 13_000)]
    for invoice in (advance, periodic):
        assert ledger.invoicing.audit(tenant.organization_id, invoice.id).matches


@pytest.mark.parametrize("seats", [0, 20])
def test_a_plan_paid_in_advance_gets_its_true_up_on_the_next_invoice(
    ledger: Ledger, tenant: Tenant, seats: int
) -> None:
    # March's fees: its base fee (billed on March 1), 250 tokens and the seats' fees; the
    # April 1 invoice carries March's charges, April's base fee and March's true-up.
    subscribe(ledger, tenant, pay_in_advance=True)
    [opening] = bill(ledger, MARCH_1)
    assert lines(opening) == [("subscription", 10_000)]
    use(ledger, tenant, "t1", "tokens", 250)
    if seats:
        use(ledger, tenant, "s1", "seats", seats)
    known = {opening.id, *(i.id for i in bill(ledger, MARCH_5))}
    [periodic] = [i for i in bill(ledger, APRIL_1) if i.id not in known]
    true_up = 50_000 - (10_000 + 25_000 + seats * 100)
    assert lines(periodic) == [
        ("charge", 25_000),
        ("commitment", true_up),
        ("subscription", 10_000),
    ]
    assert ledger.invoicing.audit(tenant.organization_id, periodic.id).matches


def test_a_yearly_plan_billed_monthly_is_trued_up_over_the_year(
    ledger: Ledger, tenant: Tenant
) -> None:
    # §4.11: €1,200 a year in arrears, €1 per token billed monthly, committed to €2,000.
    # Tokens: 100 in January, 200 in June, 50 in December → fees 1,200 + 350 = 1,550 → 450.00,
    # on the invoice that closes the year (with December's charges and the base fee).
    org = tenant.organization_id
    january = datetime(2026, 1, 1, tzinfo=UTC)
    at(ledger, january)
    metric = ledger.billing.create_billable_metric(
        org, "tokens", {"name": "Tokens", "aggregation_type": "sum_agg", "field_name": "tokens"}
    )
    ledger.billing.create_plan(
        org,
        "yearly",
        {
            "name": "Yearly",
            "interval": "yearly",
            "amount_cents": 120_000,
            "amount_currency": "EUR",
            "pay_in_advance": False,
            "bill_charges_monthly": True,
            "minimum_commitment": {"amount_cents": 200_000},
            "charges": [
                {
                    "billable_metric_id": str(metric.id),
                    "charge_model": "standard",
                    "properties": {"amount": "1"},
                }
            ],
        },
    )
    ledger.billing.create_subscription(
        org, "sub_1", external_customer_id="acme", plan_code="yearly", subscription_at=january
    )
    for transaction_id, month, tokens in (("jan", 1, 100), ("jun", 6, 200), ("dec", 12, 50)):
        when = datetime(2026, month, 10, tzinfo=UTC)
        at(ledger, when)
        event = EventInput(
            transaction_id, "sub_1", "tokens", int(when.timestamp()), {"tokens": tokens}, None
        )
        ledger.metering.ingest(org, [event], batch=False)
    invoices = bill(ledger, datetime(2027, 1, 1, tzinfo=UTC))
    assert len(invoices) == 12  # One a month: charges monthly, the base fee with the last.
    closing = invoices[-1]
    assert lines(closing) == [("charge", 5_000), ("subscription", 120_000), ("commitment", 45_000)]
    assert lines(invoices[0]) == [("charge", 10_000)]  # January's charges, billed then.
    assert ledger.invoicing.audit(org, closing.id).matches
