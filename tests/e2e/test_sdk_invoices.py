"""Invoices end to end: a terminated subscription's invoice, handled with Lago's official client."""

import calendar
import time
from datetime import UTC, datetime
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

import httpx
import pytest
from lago_python_client.client import Client
from lago_python_client.exceptions import LagoApiError
from lago_python_client.models import (
    BillableMetric,
    Charge,
    Charges,
    Customer,
    CustomerBillingConfiguration,
    Event,
    Invoice,
    Plan,
    Subscription,
    Tax,
)

from adapters.stores import open_ledger
from domain import ids
from tests.api.test_invoices_api import pdf_text
from tests.conftest import Server
from tests.integration.test_billing_run import wait_for_usage


@pytest.fixture
def billing_often(monkeypatch: pytest.MonkeyPatch) -> None:
    """`tally serve` bills in the background every TALLY_BILLING_INTERVAL_S: make it 0.2 s."""
    monkeypatch.setenv("TALLY_BILLING_INTERVAL_S", "0.2")


@pytest.fixture
def lago(billing_often: None, server: Server) -> Client:
    return Client(api_key=server.api_key, api_url=server.url)


def invoices_of(lago: Client, external_customer_id: str) -> list[Any]:
    """The customer's invoices once the server's billing worker has made one."""
    deadline = time.monotonic() + 30
    while True:
        found = lago.invoices.find_all({"external_customer_id": external_customer_id})
        if found["invoices"]:
            return list(found["invoices"])
        assert time.monotonic() < deadline, f"no invoice for {external_customer_id}"
        time.sleep(0.1)


def half_up(value: Decimal) -> int:
    return int(value.to_integral_value(rounding=ROUND_HALF_UP))


def test_a_terminated_subscription_is_invoiced_and_handled_through_the_official_client(
    lago: Client, server: Server
) -> None:
    lago.taxes.create(Tax(name="VAT", code="vat", rate=20.0, applied_to_organization=True))
    metric = lago.billable_metrics.create(
        BillableMetric(
            name="Tokens", code="tokens", aggregation_type="sum_agg", field_name="tokens"
        )
    )
    lago.plans.create(
        Plan(
            name="Basic",
            code="basic",
            interval="monthly",
            amount_cents=3100,
            amount_currency="EUR",
            pay_in_advance=False,
            charges=Charges(
                __root__=[
                    Charge(
                        billable_metric_id=metric.lago_id,
                        charge_model="standard",
                        properties={"amount": "0.000003"},
                    )
                ]
            ),
        )
    )
    lago.customers.create(
        Customer(
            external_id="acme",
            name="Acme",
            currency="EUR",
            country="FR",
            tax_identification_number="FR40303265045",
        )
    )
    # A customer with a grace period: its invoice stays a draft for three days.
    lago.customers.create(
        Customer(
            external_id="grace",
            name="Grace",
            currency="EUR",
            billing_configuration=CustomerBillingConfiguration(invoice_grace_period=3),
        )
    )
    today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    for customer in ("acme", "grace"):
        lago.subscriptions.create(
            Subscription(
                external_customer_id=customer,
                plan_code="basic",
                external_id=f"sub_{customer}",
                subscription_at=today.isoformat(),
            )
        )
    lago.events.create(
        Event(
            transaction_id="t1",
            external_subscription_id="sub_acme",
            code="tokens",
            timestamp=int(time.time()),
            properties={"tokens": 1_500_000},
        )
    )
    ledger = open_ledger(server.settings)
    try:
        # The server bills in the background: the usage must be settled before the end.
        wait_for_usage(ledger, ids.organization_id("e2e"), [("t1", "sub_acme")])
    finally:
        ledger.close()
    terminated = lago.subscriptions.destroy("sub_acme")
    lago.subscriptions.destroy("sub_grace")

    # Hand-computed: the days used of the month, the day of termination included (§5.7).
    assert terminated.terminated_at is not None
    ended = datetime.fromisoformat(terminated.terminated_at.replace("Z", "+00:00"))
    days = (ended.date() - today.date()).days + 1
    month_days = calendar.monthrange(today.year, today.month)[1]
    base_cents = half_up(Decimal(3100) * days / month_days)
    fees_cents = base_cents + 450  # 1.5M tokens × 0.000003.
    taxes_cents = half_up(Decimal(fees_cents) * Decimal("0.2"))

    [summary] = invoices_of(lago, "acme")
    invoice = lago.invoices.find(summary.lago_id)
    assert (invoice.status, invoice.payment_status, invoice.invoice_type) == (
        "finalized",
        "pending",
        "subscription",
    )
    assert (
        invoice.fees_amount_cents,
        invoice.taxes_amount_cents,
        invoice.total_amount_cents,
    ) == (fees_cents, taxes_cents, fees_cents + taxes_cents)
    assert invoice.billing_periods is not None
    assert [p.invoicing_reason for p in invoice.billing_periods.__root__] == [
        "subscription_terminating"
    ]
    assert invoice.fees is not None
    assert sorted(f.amount_cents or 0 for f in invoice.fees.__root__) == sorted([base_cents, 450])

    downloaded = lago.invoices.download(invoice.lago_id)
    assert downloaded is not None and downloaded.file_url is not None
    pdf = httpx.get(downloaded.file_url, headers={"Authorization": f"Bearer {server.api_key}"})
    assert pdf.headers["content-type"] == "application/pdf"
    text = pdf_text(pdf.content)
    total = Decimal(fees_cents + taxes_cents).scaleb(-2)
    assert invoice.number in text and f"{total:,f} EUR" in text

    with pytest.raises(LagoApiError) as not_failed:
        lago.invoices.retry_payment(invoice.lago_id)
    assert not_failed.value.response["code"] == "invalid_status"
    voided = lago.invoices.void(invoice.lago_id)
    assert (voided.status, voided.voided_at is not None) == ("voided", True)

    [draft] = invoices_of(lago, "grace")
    assert draft.status == "draft"
    assert draft.number.endswith("-DRAFT")
    assert lago.invoices.refresh(draft.lago_id).status == "draft"
    with pytest.raises(LagoApiError) as on_draft:
        lago.invoices.update(Invoice(payment_status="succeeded"), draft.lago_id)
    assert on_draft.value.response["code"] == "payment_status_update_on_draft_invoice"
    finalized = lago.invoices.finalize(draft.lago_id)
    assert finalized.status == "finalized" and not finalized.number.endswith("-DRAFT")
    assert finalized.sequential_id == (invoice.sequential_id or 0) + 1  # No gap.
    paid = lago.invoices.update(Invoice(payment_status="succeeded"), draft.lago_id)
    assert (paid.payment_status, paid.total_due_amount_cents) == ("succeeded", 0)
    with pytest.raises(LagoApiError) as again:
        lago.invoices.finalize(draft.lago_id)
    assert again.value.response["code"] == "invoice_not_found"
