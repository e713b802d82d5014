"""Through Lago's official client: an add-on, then a one-off invoice billing it, read back."""

import pytest
from lago_python_client.client import Client
from lago_python_client.models import AddOn, Customer, InvoiceFee, InvoiceFeesList, OneOffInvoice

from tests.conftest import Server


@pytest.fixture
def lago(server: Server) -> Client:
    return Client(api_key=server.api_key, api_url=server.url)


def test_an_add_on_is_billed_by_a_one_off_invoice(lago: Client) -> None:
    add_on = lago.add_ons.create(
        AddOn(name="Setup", code="setup", amount_cents=50_000, amount_currency="EUR")
    )
    assert (add_on.code, add_on.amount_cents) == ("setup", 50_000)
    lago.customers.create(Customer(external_id="acme", name="Acme", currency="EUR"))
    # 3 × €125.50 = €376.50, no tax.
    invoice = lago.invoices.create(
        OneOffInvoice(
            external_customer_id="acme",
            currency="EUR",
            fees=InvoiceFeesList(
                __root__=[InvoiceFee(add_on_code="setup", units=3, unit_amount_cents=12_550)]
            ),
        )
    )
    assert (invoice.invoice_type, invoice.status, invoice.total_amount_cents) == (
        "one_off",
        "finalized",
        37_650,
    )
    found = lago.invoices.find(invoice.lago_id)
    assert found.fees is not None
    [fee] = found.fees.__root__
    assert (fee.item.type, fee.item.code, fee.units, fee.amount_cents) == (
        "add_on",
        "setup",
        "3",
        37_650,
    )
    assert [a.code for a in lago.add_ons.find_all()["add_ons"]] == ["setup"]
