"""Through Lago's official client: a pay-in-advance charge estimated, then billed per event by
the server's billing worker, that invoice voided with a refund note, and past usage read back."""

import time
from typing import Any

import pytest
from lago_python_client.client import Client
from lago_python_client.exceptions import LagoApiError
from lago_python_client.models import (
    BillableMetric,
    Charge,
    Charges,
    Customer,
    Event,
    Invoice,
    Plan,
    Subscription,
)

from tests.conftest import Server
from tests.e2e.test_sdk_invoices import billing_often, invoices_of

__all__ = ["billing_often"]


@pytest.fixture
def lago(billing_often: None, server: Server) -> Client:
    return Client(api_key=server.api_key, api_url=server.url)


def test_a_seat_paid_in_advance_is_invoiced_then_voided_with_a_refund(lago: Client) -> None:
    metric = lago.billable_metrics.create(
        BillableMetric(name="Seats", code="seats", aggregation_type="count_agg")
    )
    lago.plans.create(
        Plan(
            name="Seats",
            code="seats",
            interval="monthly",
            amount_cents=0,
            amount_currency="EUR",
            pay_in_advance=False,
            charges=Charges(
                __root__=[
                    Charge(
                        billable_metric_id=metric.lago_id,
                        charge_model="standard",
                        pay_in_advance=True,
                        properties={"amount": "12.5"},
                    )
                ]
            ),
        )
    )
    lago.customers.create(Customer(external_id="acme", name="Acme", currency="EUR"))
    lago.subscriptions.create(
        Subscription(external_customer_id="acme", plan_code="seats", external_id="sub_acme")
    )
    # What the seat would bill if sent now; nothing is stored.
    estimate: Any = lago.events.estimate_fees(
        Event(
            transaction_id="seat_estimate",
            external_subscription_id="sub_acme",
            code="seats",
            timestamp=int(time.time()),
            properties={},
        )
    )
    [estimated] = estimate["fees"]
    assert (estimated.lago_id, estimated.amount_cents, estimated.pay_in_advance) == (
        None,
        1250,
        True,
    )
    lago.events.create(
        Event(
            transaction_id="seat_1",
            external_subscription_id="sub_acme",
            code="seats",
            timestamp=int(time.time()),
            properties={},
        )
    )
    [listed] = invoices_of(lago, "acme")  # Billed by the worker, within its interval.
    invoice = lago.invoices.find(listed.lago_id)
    assert invoice.fees is not None
    [fee] = invoice.fees.__root__
    assert (fee.pay_in_advance, fee.amount_cents, invoice.total_amount_cents) == (True, 1250, 1250)
    lago.invoices.update(Invoice(payment_status="succeeded"), invoice.lago_id)
    with pytest.raises(LagoApiError) as refused:
        lago.invoices.void_invoice(
            invoice.lago_id, {"generate_credit_note": True, "refund_amount": 1251}
        )
    assert refused.value.response["error_details"] == {
        "credit_refund_amount": ["total_amount_exceeds_invoice_amount"]
    }
    voided = lago.invoices.void_invoice(
        invoice.lago_id, {"generate_credit_note": True, "refund_amount": 1250}
    )
    assert voided.status == "voided"
    notes: Any = lago.credit_notes.find_all({"external_customer_id": "acme"})
    [note] = notes["credit_notes"]
    assert (note.refund_amount_cents, note.total_amount_cents) == (1250, 1250)
    # Nothing invoiced for a whole period yet: no past usage.
    past: Any = lago.customers.past_usage("acme", "sub_acme")
    assert past["usage_periods"] == []
