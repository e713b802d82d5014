"""Lago's POST /invoices: a one-off invoice for add-ons, priced and taxed as §9.1 says,
finalized and numbered at once, and audited from the units and prices it recorded."""

from litestar import Litestar
from litestar.testing import TestClient

from tests.conftest import Tenant

Client = TestClient[Litestar]


def test_a_one_off_invoice_bills_add_ons_with_their_taxes(client: Client, tenant: Tenant) -> None:
    headers = tenant.headers
    for code, rate, applied in (("vat", "20", True), ("reduced", "10", False)):
        client.post(
            "/api/v1/taxes",
            json={
                "tax": {
                    "code": code,
                    "name": code,
                    "rate": rate,
                    "applied_to_organization": applied,
                }
            },
            headers=headers,
        ).raise_for_status()
    for code, cents, taxes in (("setup", 50_000, []), ("training", 12_000, ["reduced"])):
        client.post(
            "/api/v1/add_ons",
            json={
                "add_on": {
                    "name": code.title(),
                    "code": code,
                    "amount_cents": cents,
                    "amount_currency": "EUR",
                    "tax_codes": taxes,
                }
            },
            headers=headers,
        ).raise_for_status()
    client.post(
        "/api/v1/customers",
        json={"customer": {"external_id": "acme", "name": "Acme", "currency": "EUR"}},
        headers=headers,
    ).raise_for_status()
    # setup: 1 × €500.00, the organization's 20 % → €100.00; training: 2.5 × €100.00 (its own
    # price) = €250.00, the add-on's 10 % → €25.00. Total €875.00.
    created = client.post(
        "/api/v1/invoices",
        json={
            "invoice": {
                "external_customer_id": "acme",
                "currency": "EUR",
                "fees": [
                    {"add_on_code": "setup"},
                    {"add_on_code": "training", "units": 2.5, "unit_amount_cents": 10_000},
                ],
            }
        },
        headers=headers,
    )
    assert created.status_code == 200, created.text
    invoice = created.json()["invoice"]
    assert (invoice["invoice_type"], invoice["status"], invoice["sequential_id"]) == (
        "one_off",
        "finalized",
        1,
    )
    assert (
        invoice["fees_amount_cents"],
        invoice["taxes_amount_cents"],
        invoice["total_amount_cents"],
    ) == (75_000, 12_500, 87_500)
    fees = [
        (f["item"]["code"], f["units"], f["amount_cents"], f["taxes_amount_cents"])
        for f in invoice["fees"]
    ]
    assert fees == [("setup", "1", 50_000, 10_000), ("training", "2.5", 25_000, 2_500)]
    assert {f["item"]["type"] for f in invoice["fees"]} == {"add_on"}
    audit = client.get(f"/api/v1/invoices/{invoice['lago_id']}/audit", headers=headers)
    assert audit.json()["invoice_audit"]["result"] == "match", audit.text
    pdf = client.get(f"/api/v1/invoices/{invoice['lago_id']}/pdf", headers=headers)
    assert (pdf.status_code, pdf.content[:5]) == (200, b"%PDF-")
    balance = client.get("/api/v1/journal/trial_balance", headers=headers)
    assert balance.status_code == 200, balance.text


def test_a_one_off_invoice_names_what_is_wrong(client: Client, tenant: Tenant) -> None:
    headers = tenant.headers
    client.post(
        "/api/v1/customers",
        json={"customer": {"external_id": "acme", "name": "Acme"}},
        headers=headers,
    ).raise_for_status()
    unknown = client.post(
        "/api/v1/invoices",
        json={"invoice": {"external_customer_id": "acme", "fees": [{"add_on_code": "nope"}]}},
        headers=headers,
    )
    assert unknown.status_code == 404
    empty = client.post(
        "/api/v1/invoices", json={"invoice": {"external_customer_id": "acme"}}, headers=headers
    )
    assert (empty.status_code, empty.json()["error_details"]) == (
        422,
        {"fees": ["value_is_mandatory"]},
    )
