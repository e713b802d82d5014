"""Pay-in-advance charges (§4.9): each event billed when the billing worker sees it, once, and
never again on the periodic invoice."""

from collections.abc import Callable
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest

from adapters.stores import Ledger
from application.metering import EventInput
from domain.invoice import Invoice
from tests.conftest import Tenant

MARCH_1 = datetime(2026, 3, 1, tzinfo=UTC)
MARCH_5 = datetime(2026, 3, 5, tzinfo=UTC)
MARCH_6 = datetime(2026, 3, 6, tzinfo=UTC)
APRIL_1 = datetime(2026, 4, 1, tzinfo=UTC)
APRIL_2 = datetime(2026, 4, 2, tzinfo=UTC)


def at(ledger: Ledger, instant: datetime) -> None:
    ledger.billing.now = lambda: instant


@pytest.fixture
def subscribe(ledger: Ledger, tenant: Tenant) -> Callable[..., None]:
    """A €10 monthly plan in arrears with one pay-in-advance charge on `seats` (sum)."""
    org = tenant.organization_id
    at(ledger, MARCH_1)
    metric = ledger.billing.create_billable_metric(
        org, "seats", {"name": "Seats", "aggregation_type": "sum_agg", "field_name": "seats"}
    )

    def create(charge_model: str, properties: dict[str, Any], **charge: Any) -> None:
        ledger.billing.create_plan(
            org,
            "advance",
            {
                "name": "Advance",
                "interval": "monthly",
                "amount_cents": 1000,
                "amount_currency": "EUR",
                "pay_in_advance": False,
                "charges": [
                    {
                        "billable_metric_id": str(metric.id),
                        "charge_model": charge_model,
                        "pay_in_advance": True,
                        "properties": properties,
                        **charge,
                    }
                ],
            },
        )
        ledger.billing.create_subscription(
            org, "sub_1", external_customer_id="acme", plan_code="advance", subscription_at=MARCH_1
        )

    return create


def send(ledger: Ledger, tenant: Tenant, transaction_id: str, seats: int, when: datetime) -> None:
    ledger.metering.ingest(
        tenant.organization_id,
        [
            EventInput(
                transaction_id, "sub_1", "seats", int(when.timestamp()), {"seats": seats}, None
            )
        ],
        batch=False,
    )


def bill(ledger: Ledger, now: datetime) -> list[Invoice]:
    at(ledger, now)
    return ledger.invoicing.run(now)


def advance_fees(invoices: list[Invoice]) -> list[tuple[str | None, int]]:
    return [
        (fee.event_transaction_id, fee.amount_cents)
        for invoice in invoices
        for fee in invoice.fees
        if fee.pay_in_advance
    ]


def test_each_event_is_billed_at_the_next_run_and_never_on_the_periodic_invoice(
    ledger: Ledger, tenant: Tenant, subscribe: Callable[..., None]
) -> None:
    # §4.9, package: size 100 at €5; events of 60 and 60 → 5.00, then model(120) − 5 = 5.00.
    subscribe("package", {"amount": "5", "package_size": 100, "free_units": 0})
    at(ledger, MARCH_5)
    send(ledger, tenant, "e1", 60, MARCH_5)
    [first] = bill(ledger, MARCH_5)
    assert advance_fees([first]) == [("e1", 500)]
    assert first.billing_periods[0]["invoicing_reason"] == "in_advance_charge"
    assert (first.status, first.totals.total_amount_cents) == ("finalized", 500)
    assert bill(ledger, MARCH_5) == []  # Idempotent: nothing new, nothing billed again.
    at(ledger, MARCH_6)
    send(ledger, tenant, "e2", 60, MARCH_6)
    [second] = bill(ledger, MARCH_6)
    assert advance_fees([second]) == [("e2", 500)]
    # The periodic invoice bills the base fee only: the charge was paid in advance.
    [periodic] = [i for i in bill(ledger, APRIL_1) if i.id not in (first.id, second.id)]
    assert [(fee.fee_type, fee.amount_cents) for fee in periodic.fees] == [("subscription", 1000)]
    for invoice in (first, second, periodic):
        assert ledger.invoicing.audit(tenant.organization_id, invoice.id).matches


def test_graduated_first_event_pays_the_flat_amount_and_the_total_is_the_model(
    ledger: Ledger, tenant: Tenant, subscribe: Callable[..., None]
) -> None:
    # §4.9: ranges 0–100 @ 1.00 + flat 10, 101–∞ @ 0.50; events 60 and 60 in one run →
    # 70.00 then (110 + 20 × 0.50) − 70 = 50.00: Σ = 120.00 = model(120).
    subscribe(
        "graduated",
        {
            "graduated_ranges": [
                {"from_value": 0, "to_value": 100, "per_unit_amount": "1", "flat_amount": "10"},
                {"from_value": 101, "to_value": None, "per_unit_amount": "0.5", "flat_amount": "0"},
            ]
        },
    )
    at(ledger, MARCH_5)
    send(ledger, tenant, "e1", 60, MARCH_5)
    send(ledger, tenant, "e2", 60, MARCH_5)
    [invoice] = bill(ledger, MARCH_6)
    assert advance_fees([invoice]) == [("e1", 7000), ("e2", 5000)]
    assert ledger.invoicing.audit(tenant.organization_id, invoice.id).matches


def test_decreases_never_refund_and_a_late_event_is_billed_in_its_own_period(
    ledger: Ledger, tenant: Tenant, subscribe: Callable[..., None]
) -> None:
    # §4.9 high-water mark: +50, −20, +10 at €1 → billed units 50, 0, 0 (level 40, mark 50).
    subscribe("standard", {"amount": "1"})
    at(ledger, MARCH_5)
    send(ledger, tenant, "e1", 50, MARCH_5)
    send(ledger, tenant, "e2", -20, MARCH_5)
    send(ledger, tenant, "e3", 10, MARCH_5)
    invoices = bill(ledger, MARCH_6)
    assert advance_fees(invoices) == [("e1", 5000)]
    before = {invoice.id for invoice in bill(ledger, APRIL_1)}
    # A March event of 15 arriving in April: level 55, 5 above March's mark, billed at once.
    at(ledger, APRIL_2)
    send(ledger, tenant, "late", 15, MARCH_6)
    [late] = [invoice for invoice in bill(ledger, APRIL_2) if invoice.id not in before]
    [fee] = late.fees
    assert (fee.event_transaction_id, fee.amount_cents, fee.units) == ("late", 500, Decimal(5))
    assert (fee.from_at, fee.to_at) == (MARCH_1, APRIL_1)
    assert ledger.invoicing.audit(tenant.organization_id, late.id).matches
