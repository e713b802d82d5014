"""The billing run: the worked invoices, idempotence, numbering, late usage and the audit."""

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
APRIL_1 = datetime(2026, 4, 1, tzinfo=UTC)
MAY_1 = datetime(2026, 5, 1, tzinfo=UTC)


def at(ledger: Ledger, instant: datetime) -> None:
    ledger.billing.now = lambda: instant


@pytest.fixture
def catalog(ledger: Ledger, tenant: Tenant) -> Callable[..., None]:
    billing = ledger.billing
    org = tenant.organization_id
    metric = billing.create_billable_metric(
        org,
        "tokens",
        {
            "name": "Tokens",
            "aggregation_type": "sum_agg",
            "field_name": "tokens",
            "filters": [{"key": "model", "values": ["small", "large"]}],
        },
    )

    def plan(code: str, amount_cents: int, *, pay_in_advance: bool = False, **extra: Any) -> None:
        billing.create_plan(
            org,
            code,
            {
                "name": code,
                "interval": "monthly",
                "amount_cents": amount_cents,
                "amount_currency": "EUR",
                "pay_in_advance": pay_in_advance,
                "charges": [
                    {
                        "billable_metric_id": str(metric.id),
                        "charge_model": "standard",
                        "properties": {"amount": "0.000003"},
                    }
                ],
                **extra,
            },
        )

    return plan


def subscribe(
    ledger: Ledger, tenant: Tenant, plan_code: str, start: datetime, external_id: str = "sub_1"
) -> None:
    at(ledger, start)
    ledger.billing.create_subscription(
        tenant.organization_id,
        external_id,
        external_customer_id="acme",
        plan_code=plan_code,
        subscription_at=start,
    )


def ingest(
    ledger: Ledger, tenant: Tenant, transaction_id: str, tokens: int, when: datetime
) -> None:
    at(ledger, when)
    ledger.metering.ingest(
        tenant.organization_id,
        [
            EventInput(
                transaction_id, "sub_1", "tokens", int(when.timestamp()), {"tokens": tokens}, None
            )
        ],
        batch=False,
    )


def bill(ledger: Ledger, now: datetime) -> list[Invoice]:
    at(ledger, now)
    return ledger.invoicing.run(now)


def amounts(invoice: Invoice) -> dict[str, int]:
    return {fee.fee_type + ":" + (fee.charge_code or ""): fee.amount_cents for fee in invoice.fees}


def test_a_partial_first_month_in_arrears_is_prorated_by_days(
    ledger: Ledger, tenant: Tenant, catalog: Callable[..., None]
) -> None:
    # §5.3: €30 monthly from March 10 → 22 of 31 days → €21.29.
    catalog("basic", 3000)
    subscribe(ledger, tenant, "basic", datetime(2026, 3, 10, tzinfo=UTC))
    ingest(ledger, tenant, "t1", 1_500_000, datetime(2026, 3, 20, tzinfo=UTC))
    [invoice] = bill(ledger, APRIL_1)
    assert amounts(invoice) == {"subscription:": 2129, "charge:tokens": 450}
    assert (invoice.status, invoice.totals.total_amount_cents) == ("finalized", 2579)
    assert invoice.number is not None and invoice.number.endswith("-202604-001")
    assert invoice.billing_periods[0]["invoicing_reason"] == "subscription_periodic"


def test_a_trial_makes_the_base_fee_start_when_it_ends(
    ledger: Ledger, tenant: Tenant, catalog: Callable[..., None]
) -> None:
    # §5.4: €30 plan from March 1 with a 14-day trial → March 15–31 = 17 days → €16.45.
    catalog("trial", 3000, trial_period="14")
    subscribe(ledger, tenant, "trial", MARCH_1)
    [invoice] = bill(ledger, APRIL_1)
    assert amounts(invoice)["subscription:"] == 1645


def test_termination_bills_the_days_used_including_the_last(
    ledger: Ledger, tenant: Tenant, catalog: Callable[..., None]
) -> None:
    # §5.7: €30 in arrears terminated March 16 → 16 days → €15.48.
    catalog("basic", 3000)
    subscribe(ledger, tenant, "basic", MARCH_1)
    at(ledger, datetime(2026, 3, 16, 12, tzinfo=UTC))
    ledger.billing.terminate_subscription(tenant.organization_id, "sub_1")
    [invoice] = bill(ledger, datetime(2026, 3, 16, 13, tzinfo=UTC))
    assert amounts(invoice)["subscription:"] == 1548
    assert invoice.billing_periods[0]["invoicing_reason"] == "subscription_terminating"
    assert bill(ledger, MAY_1) == [invoice]  # Nothing after the end; the same invoice again.


def test_in_advance_bills_the_next_period_at_each_boundary(
    ledger: Ledger, tenant: Tenant, catalog: Callable[..., None]
) -> None:
    catalog("advance", 3000, pay_in_advance=True)
    subscribe(ledger, tenant, "advance", MARCH_1)
    starting, periodic = bill(ledger, APRIL_1)
    assert starting.billing_periods[0]["invoicing_reason"] == "subscription_starting"
    assert amounts(starting)["subscription:"] == 3000
    # April 1 closes March's usage and bills April in advance.
    assert amounts(periodic) == {"subscription:": 3000, "charge:tokens": 0}


def test_running_twice_issues_each_invoice_once_with_gapless_numbers(
    ledger: Ledger, tenant: Tenant, catalog: Callable[..., None]
) -> None:
    catalog("basic", 3000)
    subscribe(ledger, tenant, "basic", MARCH_1)
    first = bill(ledger, MAY_1)
    again = bill(ledger, MAY_1)
    assert [i.id for i in first] == [i.id for i in again]
    assert [i.sequential_id for i in first] == [1, 2]


def test_late_usage_becomes_an_adjustment_on_the_next_invoice(
    ledger: Ledger, tenant: Tenant, catalog: Callable[..., None]
) -> None:
    # §8.5: usage stamped in March that arrives after March's invoice is billed in April's.
    catalog("usage", 0)
    subscribe(ledger, tenant, "usage", MARCH_1)
    ingest(ledger, tenant, "t1", 1_000_000, datetime(2026, 3, 10, tzinfo=UTC))
    [march] = bill(ledger, APRIL_1)
    assert march.totals.fees_amount_cents == 300
    at(ledger, datetime(2026, 4, 3, tzinfo=UTC))
    ingest(ledger, tenant, "late", 1_000_000, datetime(2026, 3, 28, tzinfo=UTC))
    april = bill(ledger, MAY_1)[-1]
    adjustments = [fee for fee in april.fees if fee.fee_type == "adjustment"]
    assert [(f.amount_cents, f.from_at, f.to_at) for f in adjustments] == [(300, MARCH_1, APRIL_1)]
    assert march.totals.fees_amount_cents == 300  # The finalized invoice never changes.
    assert ledger.invoicing.audit(tenant.organization_id, april.id).matches


def test_the_audit_matches_and_reports_a_tampered_price(
    ledger: Ledger, tenant: Tenant, catalog: Callable[..., None]
) -> None:
    catalog("basic", 3000)
    subscribe(ledger, tenant, "basic", MARCH_1)
    ingest(ledger, tenant, "t1", 1_500_000, datetime(2026, 3, 20, tzinfo=UTC))
    [invoice] = bill(ledger, APRIL_1)
    report = ledger.invoicing.audit(tenant.organization_id, invoice.id)
    assert report.matches and report.differences == []
    assert len(report.content_hash) == 64
    # Tampering with the usage log (a test-only rewrite) makes the recomputation differ.
    memory = ledger.usage
    records = memory._records  # type: ignore[attr-defined]
    event = records[0].event
    from dataclasses import replace

    records[0] = replace(records[0], event=replace(event, properties={"tokens": "9"}))
    assert not ledger.invoicing.audit(tenant.organization_id, invoice.id).matches


def test_taxes_follow_precedence_and_round_per_rate(
    ledger: Ledger, tenant: Tenant, catalog: Callable[..., None]
) -> None:
    org = tenant.organization_id
    ledger.billing.create_tax(
        org, "vat", {"name": "VAT", "rate": "20", "applied_to_organization": True}
    )
    catalog("basic", 3000)
    subscribe(ledger, tenant, "basic", MARCH_1)
    [invoice] = bill(ledger, APRIL_1)
    assert (invoice.totals.taxes_amount_cents, invoice.totals.total_amount_cents) == (600, 3600)
    assert invoice.tax_rates == {"vat": Decimal("20")}
