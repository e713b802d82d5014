"""Lago's credit notes endpoints: whole bodies, the 1.55.0 client's models, and error codes."""

from collections.abc import Iterator
from typing import Any
from uuid import UUID, uuid4

import pytest
from lago_python_client.models.credit_note import (
    CreditNoteEstimatedResponse,
    CreditNoteResponse,
)
from litestar import Litestar
from litestar.testing import TestClient

from adapters.stores import Ledger
from api.problems import PROBLEM_TYPE_BASE
from domain import ids
from domain.invoice import Invoice
from tests.application.test_credit_notes import APRIL_1, MAY_1, bill, setup_catalog, subscribe
from tests.conftest import Tenant

Client = TestClient[Litestar]


@pytest.fixture
def march(ledger: Ledger, tenant: Tenant) -> Iterator[Invoice]:
    """March's finalized invoice: €30 in arrears + 20 % VAT = €36.00, unpaid."""
    setup_catalog(ledger, tenant.organization_id)
    subscribe(ledger, tenant.organization_id, "arrears")
    [invoice] = bill(ledger, APRIL_1)
    yield invoice


def fee_id(invoice: Invoice) -> str:
    return str(ids.fee_id(invoice.id, invoice.fees[0].key))


def create(client: Client, tenant: Tenant, **fields: Any) -> Any:
    return client.post("/api/v1/credit_notes", json={"credit_note": fields}, headers=tenant.headers)


def full_credit(invoice: Invoice, **extra: Any) -> dict[str, Any]:
    return {
        "invoice_id": str(invoice.id),
        "items": [{"fee_id": fee_id(invoice), "amount_cents": 3000}],
        "credit_amount_cents": 3600,
        **extra,
    }


def assert_validation(response: Any, error_details: dict[str, list[str]]) -> None:
    assert response.status_code == 422, response.text
    body = response.json()
    assert (body["code"], body["error_details"]) == ("validation_errors", error_details)


def assert_problem(response: Any, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()
    assert (body["status"], body["code"], body["type"]) == (status, code, PROBLEM_TYPE_BASE + code)


def test_a_credit_note_is_created_in_lagos_shape(
    client: Client, tenant: Tenant, ledger: Ledger, march: Invoice
) -> None:
    response = create(
        client,
        tenant,
        invoice_id=str(march.id),
        reason="duplicated_charge",
        description="Billed twice",
        items=[{"fee_id": fee_id(march), "amount_cents": 1000}],
        credit_amount_cents=1200,
        refund_amount_cents=None,
    )
    assert response.status_code == 200, response.text
    body = response.json()["credit_note"]
    note = ledger.credit_notes.credit_notes(tenant.organization_id, 1, 1)[0][0]
    customer = body.pop("customer")
    assert (customer["external_id"], customer["lago_id"]) == ("acme", str(march.customer_id))
    created_at = note.created_on.strftime("%Y-%m-%dT%H:%M:%SZ")
    fee = march.fees[0]
    assert body == {
        "lago_id": str(note.id),
        "sequential_id": 1,
        "billing_entity_code": None,
        "number": f"{march.number}-CN001",
        "lago_invoice_id": str(march.id),
        "invoice_number": march.number,
        "issuing_date": "2026-04-01",
        "purchase_order_number": None,
        "credit_status": "available",
        "refund_status": None,
        "reason": "duplicated_charge",
        "description": "Billed twice",
        "currency": "EUR",
        "total_amount_cents": 1200,
        "credit_amount_cents": 1200,
        "balance_amount_cents": 1200,
        "refund_amount_cents": 0,
        "offset_amount_cents": 0,
        "taxes_amount_cents": 200,
        "taxes_rate": 20,
        "sub_total_excluding_taxes_amount_cents": 1000,
        "coupons_adjustment_amount_cents": 0,
        "file_url": None,
        "created_at": created_at,
        "updated_at": created_at,
        "voided_at": None,
        "items": [
            {
                "lago_id": str(ids.credit_note_item_id(note.id, fee.key)),
                "amount_cents": 1000,
                "amount_currency": "EUR",
                "fee": {
                    "lago_id": fee_id(march),
                    "lago_charge_id": None,
                    "lago_invoice_id": str(march.id),
                    "external_subscription_id": "sub_1",
                    "external_customer_id": "acme",
                    "amount_cents": 3000,
                    "amount_currency": "EUR",
                    "taxes_amount_cents": 600,
                    "taxes_rate": 20,
                    "total_amount_cents": 3600,
                    "units": "1",
                    "events_count": 0,
                    "from_date": "2026-03-01T00:00:00Z",
                    "to_date": "2026-04-01T00:00:00Z",
                    "item": {
                        "type": "subscription",
                        "code": None,
                        "name": "subscription",
                        "invoice_display_name": None,
                    },
                },
            }
        ],
        "applied_taxes": [
            {
                "lago_id": str(ids.credit_note_applied_tax_id(note.id, "vat")),
                "lago_credit_note_id": str(note.id),
                "lago_tax_id": str(ids.tax_id(tenant.organization_id, "vat")),
                "tax_name": "VAT",
                "tax_code": "vat",
                "tax_rate": 20,
                "tax_description": None,
                "amount_cents": 200,
                "amount_currency": "EUR",
                "base_amount_cents": 1000,
                "created_at": created_at,
            }
        ],
        "metadata": {},
    }
    parsed = CreditNoteResponse.parse_obj(response.json()["credit_note"])  # Lago's client model.
    assert (parsed.total_amount_cents, parsed.taxes_rate) == (1200, 20.0)


def test_the_estimate_computes_without_storing(
    client: Client, tenant: Tenant, ledger: Ledger, march: Invoice
) -> None:
    # The client sends the create's null fields too.
    payload = {
        "invoice_id": str(march.id),
        "items": [{"fee_id": fee_id(march), "amount_cents": 1001}],
        "reason": None,
        "credit_amount_cents": None,
        "metadata": None,
    }
    response = client.post(
        "/api/v1/credit_notes/estimate", json={"credit_note": payload}, headers=tenant.headers
    )
    assert response.status_code == 200, response.text
    assert response.json() == {
        "estimated_credit_note": {
            "lago_invoice_id": str(march.id),
            "invoice_number": march.number,
            "currency": "EUR",
            # 10.01 + 20 % = 10.01 + 2.002 → 2.00: 12.01; unpaid, so nothing to refund.
            "max_creditable_amount_cents": 1201,
            "max_refundable_amount_cents": 0,
            "max_offsettable_amount_cents": 1201,
            "taxes_amount_cents": 200,
            "taxes_rate": 20,
            "sub_total_excluding_taxes_amount_cents": 1001,
            "coupons_adjustment_amount_cents": 0,
            "items": [{"amount_cents": 1001, "lago_fee_id": fee_id(march)}],
            "applied_taxes": [
                {
                    "lago_tax_id": str(ids.tax_id(tenant.organization_id, "vat")),
                    "tax_name": "VAT",
                    "tax_code": "vat",
                    "tax_rate": 20,
                    "tax_description": None,
                    "amount_cents": 200,
                    "amount_currency": "EUR",
                    "base_amount_cents": 1001,
                }
            ],
        }
    }
    CreditNoteEstimatedResponse.parse_obj(response.json()["estimated_credit_note"])
    assert ledger.credit_notes.credit_notes(tenant.organization_id, 1, 10) == ([], 0)


def test_find_list_refund_status_and_void(
    client: Client, tenant: Tenant, ledger: Ledger, march: Invoice
) -> None:
    ledger.invoicing.set_payment_status(tenant.organization_id, march.id, "succeeded")
    created = create(
        client, tenant, **full_credit(march, credit_amount_cents=1600, refund_amount_cents=2000)
    ).json()["credit_note"]
    lago_id = created["lago_id"]
    path = f"/api/v1/credit_notes/{lago_id}"
    found = client.get(path, headers=tenant.headers)
    assert found.status_code == 200
    assert found.json()["credit_note"] == created
    listed = client.get(
        "/api/v1/credit_notes",
        params={"external_customer_id": "acme", "refund_status": "pending"},
        headers=tenant.headers,
    ).json()
    assert [n["lago_id"] for n in listed["credit_notes"]] == [lago_id]
    assert listed["meta"] == {
        "current_page": 1,
        "next_page": None,
        "prev_page": None,
        "total_pages": 1,
        "total_count": 1,
    }
    none = client.get(
        "/api/v1/credit_notes", params={"credit_status": "voided"}, headers=tenant.headers
    ).json()
    assert none == {
        "credit_notes": [],
        "meta": {
            "current_page": 0,
            "next_page": None,
            "prev_page": None,
            "total_pages": 0,
            "total_count": 0,
        },
    }
    updated = client.put(
        path, json={"credit_note": {"refund_status": "succeeded"}}, headers=tenant.headers
    )
    assert updated.json()["credit_note"]["refund_status"] == "succeeded"
    voided = client.put(f"{path}/void", headers=tenant.headers)
    assert voided.status_code == 200, voided.text
    assert (
        voided.json()["credit_note"]["credit_status"],
        voided.json()["credit_note"]["balance_amount_cents"],
    ) == (
        "voided",
        0,
    )
    assert_problem(client.put(f"{path}/void", headers=tenant.headers), 405, "no_voidable_amount")


def test_over_crediting_a_fee_is_refused(client: Client, tenant: Tenant, march: Invoice) -> None:
    assert create(client, tenant, **full_credit(march)).status_code == 200
    again = create(
        client,
        tenant,
        **full_credit(
            march, items=[{"fee_id": fee_id(march), "amount_cents": 1}], credit_amount_cents=1
        ),
    )
    assert_validation(again, {"amount_cents": ["higher_than_remaining_fee_amount"]})


@pytest.mark.parametrize(
    ("fields", "error_details"),
    [
        ({"credit_amount_cents": 3599}, {"base": ["does_not_match_item_amounts"]}),
        ({"credit_amount_cents": 3601}, {"base": ["does_not_match_item_amounts"]}),
        (
            {"credit_amount_cents": 0, "refund_amount_cents": 3600},
            {"refund_amount_cents": ["cannot_refund_unpaid_invoice"]},
        ),
        ({"reason": "whim"}, {"reason": ["value_is_invalid"]}),
        ({"items": None}, {"items": ["value_is_mandatory"]}),
        (
            {"items": [{"fee_id": None, "amount_cents": 1}]},
            {"items.0.fee_id": ["value_is_mandatory"]},
        ),
        ({"metadata": {"k": "v"}}, {"metadata": ["unsupported_field"]}),
        ({"coupon": 1}, {"coupon": ["unsupported_field"]}),
    ],
)
def test_invalid_credit_notes_name_the_field(
    client: Client,
    tenant: Tenant,
    march: Invoice,
    fields: dict[str, Any],
    error_details: dict[str, list[str]],
) -> None:
    assert_validation(create(client, tenant, **full_credit(march, **fields)), error_details)


def test_a_negative_item_is_refused(client: Client, tenant: Tenant, march: Invoice) -> None:
    items = [{"fee_id": fee_id(march), "amount_cents": -1}]
    response = create(client, tenant, **full_credit(march, items=items, credit_amount_cents=0))
    assert_validation(response, {"amount_cents": ["invalid_value"]})


def test_unknown_invoices_and_fees_are_not_found(
    client: Client, tenant: Tenant, march: Invoice
) -> None:
    assert_problem(
        create(client, tenant, **full_credit(march, invoice_id=str(uuid4()))),
        404,
        "invoice_not_found",
    )
    assert_problem(
        create(client, tenant, **full_credit(march, invoice_id="not-a-uuid")),
        404,
        "invoice_not_found",
    )
    items = [{"fee_id": str(uuid4()), "amount_cents": 1}]
    assert_problem(create(client, tenant, **full_credit(march, items=items)), 404, "fee_not_found")
    assert_problem(
        client.get(f"/api/v1/credit_notes/{uuid4()}", headers=tenant.headers),
        404,
        "credit_note_not_found",
    )


def test_another_organizations_credit_note_is_not_found(
    client: Client, tenant: Tenant, ledger: Ledger, march: Invoice
) -> None:
    lago_id = create(client, tenant, **full_credit(march)).json()["credit_note"]["lago_id"]
    _, other_key = ledger.billing.create_organization("other")
    other = {"Authorization": f"Bearer {other_key}"}
    assert_problem(
        client.get(f"/api/v1/credit_notes/{lago_id}", headers=other), 404, "credit_note_not_found"
    )
    assert_problem(
        client.post(
            "/api/v1/credit_notes", json={"credit_note": full_credit(march)}, headers=other
        ),
        404,
        "invoice_not_found",
    )


def test_a_draft_invoice_takes_no_credit_note(
    client: Client, tenant: Tenant, ledger: Ledger
) -> None:
    org = tenant.organization_id
    setup_catalog(ledger, org)
    ledger.billing.upsert_customer(
        org, "acme", {"currency": "EUR", "billing_configuration": {"invoice_grace_period": 3}}
    )
    subscribe(ledger, org, "arrears")
    [draft] = bill(ledger, APRIL_1)
    assert draft.status == "draft"
    assert_problem(create(client, tenant, **full_credit(draft)), 405, "invalid_type_or_status")


def test_a_missing_root_key_is_a_bad_request(client: Client, tenant: Tenant) -> None:
    response = client.post("/api/v1/credit_notes", json={"invoice_id": "x"}, headers=tenant.headers)
    assert response.status_code == 400
    assert (
        response.json()["error"]
        == "BadRequest: param is missing or the value is empty: credit_note"
    )


def test_credit_is_consumed_by_the_next_invoice_as_lago_reports_it(
    client: Client, tenant: Tenant, ledger: Ledger, march: Invoice
) -> None:
    lago_id = create(client, tenant, **full_credit(march)).json()["credit_note"]["lago_id"]
    april = bill(ledger, MAY_1)[-1]
    assert april.totals.credit_notes_amount_cents == 3600
    note = client.get(f"/api/v1/credit_notes/{lago_id}", headers=tenant.headers).json()
    assert (note["credit_note"]["balance_amount_cents"], note["credit_note"]["credit_status"]) == (
        0,
        "consumed",
    )
    assert UUID(lago_id) == ledger.credit_notes.credit_notes(tenant.organization_id, 1, 1)[0][0].id
