"""A customer with personal data, a subscription, usage and an invoice: what erasure respects."""

import time
from datetime import UTC, datetime
from typing import Any, Final
from uuid import UUID

from adapters.stores import Ledger
from application.metering import EventInput
from domain.invoice import Invoice

MARCH_1: Final = datetime(2026, 3, 1, tzinfo=UTC)
MARCH_20: Final = datetime(2026, 3, 20, tzinfo=UTC)
APRIL_1: Final = datetime(2026, 4, 1, 1, tzinfo=UTC)
APRIL_2: Final = datetime(2026, 4, 2, tzinfo=UTC)
NAME: Final = "Zebulon Quixote-Marchetti"
EMAIL: Final = "zebulon.quixote@example.org"
PERSONAL: Final[dict[str, Any]] = {
    "name": NAME,
    "email": EMAIL,
    "firstname": "Zebulon",
    "lastname": "Quixote-Marchetti",
    "phone": "+33 6 12 34 56 78",
    "address_line1": "12 rue des Zèbres",
    "city": "Montpellier",
    "zipcode": "34000",
    "legal_name": "Quixote-Marchetti Conseil",
    "tax_identification_number": "FR40303265045",
    "shipping_address": {"address_line1": "1 impasse Quixote", "city": "Sète", "country": "FR"},
    "metadata": [{"key": "nickname", "value": "Zeb the unerasable", "display_in_invoice": False}],
}


def at(ledger: Ledger, instant: datetime) -> None:
    ledger.billing.now = lambda: instant


def billed_customer(ledger: Ledger) -> tuple[UUID, str, Invoice]:
    """The organization's id and key, and the customer's first invoice (finalized, unpaid):
    €30 a month in arrears plus €3 per million tokens, 1.5M tokens in March."""
    billing = ledger.billing
    organization, api_key = billing.create_organization("acme")
    org = organization.id
    at(ledger, MARCH_1)
    billing.upsert_customer(org, "cus_1", {**PERSONAL, "currency": "EUR", "country": "FR"})
    metric = billing.create_billable_metric(
        org, "tokens", {"name": "Tokens", "aggregation_type": "sum_agg", "field_name": "tokens"}
    )
    billing.create_plan(
        org,
        "basic",
        {
            "name": "Basic",
            "interval": "monthly",
            "amount_cents": 3000,
            "amount_currency": "EUR",
            "pay_in_advance": False,
            "charges": [
                {
                    "billable_metric_id": str(metric.id),
                    "charge_model": "standard",
                    "properties": {"amount": "0.000003"},
                }
            ],
        },
    )
    billing.create_subscription(
        org, "sub_1", external_customer_id="cus_1", plan_code="basic", subscription_at=MARCH_1
    )
    at(ledger, MARCH_20)
    event = EventInput(
        "t1", "sub_1", "tokens", int(MARCH_20.timestamp()), {"tokens": 1_500_000}, None
    )
    ledger.metering.ingest(org, [event], batch=False)
    stored = ledger.usage.find(org, "t1", "sub_1")
    assert stored is not None
    deadline = time.monotonic() + 30
    while ledger.usage.watermark() < stored.position:  # Other transactions may hold it back.
        assert time.monotonic() < deadline, "the usage watermark did not pass the event"
        time.sleep(0.02)
    at(ledger, APRIL_1)
    [invoice] = ledger.invoicing.run(APRIL_1, org)
    assert invoice.status == "finalized" and invoice.payment_status == "pending", invoice
    return org, api_key, invoice


def settle(ledger: Ledger, org: UUID) -> None:
    """Terminate the subscription, bill its last days and pay every invoice."""
    at(ledger, APRIL_2)
    ledger.billing.terminate_subscription(org, "sub_1")
    ledger.invoicing.run(APRIL_2, org)
    invoices, _ = ledger.invoicing.invoices(org, 1, 100, external_customer_id="cus_1")
    for invoice in invoices:
        if invoice.status == "draft":
            ledger.invoicing.finalize(org, invoice.id, APRIL_2)
        if invoice.payment_status != "succeeded":
            ledger.invoicing.set_payment_status(org, invoice.id, "succeeded")
