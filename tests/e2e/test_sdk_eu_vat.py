"""EU VAT end to end: a German seller, German and French consumers, a French business.

Through Lago's official client against a real server, with VIES answered by a local fake: a
consumer pays their country's VAT (19 % in Germany, 20 % in France), a French business with a
VAT number VIES confirms pays none (reverse charge), and the invoices say so.
"""

import os
import subprocess
import sys
from collections.abc import Iterator

import pytest
from lago_python_client.client import Client
from lago_python_client.models import Customer, Plan, Subscription
from lago_python_client.models.billing_entity import BillingEntityUpdate
from lago_python_client.models.organization import Organization

from adapters.vies import FakeVies
from tests.conftest import ROOT, Server


@pytest.fixture
def vies(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeVies]:
    with FakeVies() as fake:
        fake.register("FR40303265045", name="Société Exemple")
        monkeypatch.setenv("TALLY_VIES_URL", fake.url)
        monkeypatch.setenv("TALLY_BILLING_INTERVAL_S", "0")  # `tally bill` below decides when.
        yield fake


@pytest.fixture
def lago(vies: FakeVies, server: Server) -> Client:
    return Client(api_key=server.api_key, api_url=server.url)


def test_vat_follows_the_customer_and_reverse_charge_needs_a_valid_number(
    lago: Client, server: Server, vies: FakeVies
) -> None:
    lago.organizations.update(
        Organization(
            default_currency="EUR",
            country="DE",
            legal_name="Acme GmbH",
            tax_identification_number="DE136695976",
        )
    )
    lago.billing_entities.update(
        BillingEntityUpdate(name="Acme", eu_tax_management=True), "default"
    )
    lago.plans.create(
        Plan(
            name="API",
            code="api",
            interval="monthly",
            amount_cents=10000,
            amount_currency="EUR",
            pay_in_advance=False,
        )
    )
    customers = {
        "de_consumer": {"country": "DE"},
        "fr_consumer": {"country": "FR"},
        "fr_business": {
            "country": "FR",
            "customer_type": "company",
            "tax_identification_number": "FR40303265045",
        },
    }
    for external_id, fields in customers.items():
        lago.customers.create(Customer(external_id=external_id, currency="EUR", **fields))
        lago.subscriptions.create(
            Subscription(
                external_customer_id=external_id,
                plan_code="api",
                external_id=f"sub_{external_id}",
                subscription_at="2026-03-01T00:00:00Z",
            )
        )
    env = {**os.environ, "TALLY_DATABASE_URL": server.settings.database_url}
    subprocess.run(
        [sys.executable, "-m", "api.cli", "bill", "--at", "2026-04-01T00:00:00+00:00"],
        env=env,
        cwd=ROOT,
        check=True,
        capture_output=True,
        text=True,
    )
    totals = {}
    for external_id in customers:
        [invoice] = lago.invoices.find_all({"external_customer_id": external_id})["invoices"]
        full = lago.invoices.find(invoice.lago_id)
        assert full.applied_taxes is not None
        codes = sorted((t.tax_code, t.tax_rate) for t in full.applied_taxes.__root__)
        totals[external_id] = (full.taxes_amount_cents, full.total_amount_cents, codes)
    assert totals == {
        "de_consumer": (1900, 11900, [("lago_eu_de_standard", 19.0)]),
        "fr_consumer": (2000, 12000, [("lago_eu_fr_standard", 20.0)]),
        "fr_business": (0, 10000, [("lago_eu_reverse_charge", 0.0)]),
    }
    assert any(r.get("countryCode") == "FR" or "FR" in str(r) for r in vies.requests)
