"""EU VAT in the billing run: the rate of the supply date is recorded on the invoice, so a new
version of the rates table changes later invoices and never the audit of an earlier one."""

from datetime import UTC, date, datetime
from decimal import Decimal

import pytest

import domain.vat
from adapters.stores import Ledger
from tests.conftest import Tenant

APRIL_1 = datetime(2026, 4, 1, tzinfo=UTC)
MAY_1 = datetime(2026, 5, 1, tzinfo=UTC)


def test_a_new_rates_version_changes_later_invoices_and_no_earlier_audit(
    ledger: Ledger, tenant: Tenant, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a German seller managing EU VAT and a French consumer on a 100 EUR monthly plan
    org = tenant.organization_id
    billing = ledger.billing
    billing.now = lambda: datetime(2026, 3, 1, tzinfo=UTC)
    billing.update_organization_settings(org, {"country": "DE", "eu_tax_management": True})
    billing.create_plan(
        org,
        "api",
        {
            "name": "API",
            "interval": "monthly",
            "amount_cents": 10000,
            "amount_currency": "EUR",
            "pay_in_advance": False,
        },
    )
    billing.upsert_customer(org, "fr_consumer", {"country": "FR", "currency": "EUR"})
    billing.create_subscription(
        org,
        "sub_1",
        external_customer_id="fr_consumer",
        plan_code="api",
        subscription_at=datetime(2026, 3, 1, tzinfo=UTC),
    )
    # When March is billed, France's 20 % applies
    billing.now = lambda: APRIL_1
    [march] = ledger.invoicing.run(APRIL_1)
    assert (march.tax_rates, march.totals.taxes_amount_cents) == (
        {"lago_eu_fr_standard": Decimal("20")},
        2000,
    )
    # And when the rates table gains a version in which France charges 21 % from April 2026
    original = domain.vat.rate_at

    def new_version(country: str, supply_date: date) -> Decimal:
        if country == "FR" and supply_date >= date(2026, 4, 1):
            return Decimal("21")
        return original(country, supply_date)

    monkeypatch.setattr(domain.vat, "rate_at", new_version)
    billing.now = lambda: MAY_1
    april = next(i for i in ledger.invoicing.run(MAY_1) if i.id != march.id)
    # Then April's invoice uses the new rate, and March's still audits as it was issued
    assert (april.tax_rates, april.totals.taxes_amount_cents) == (
        {"lago_eu_fr_standard": Decimal("21")},
        2100,
    )
    refreshed = ledger.invoicing.invoice(org, march.id)
    assert refreshed.tax_rates == {"lago_eu_fr_standard": Decimal("20")}
    assert refreshed.totals.total_amount_cents == 12000
    assert ledger.invoicing.audit(org, march.id).matches
    assert ledger.invoicing.audit(org, april.id).matches
