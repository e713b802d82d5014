"""Lago's add-ons: create, update, get, list and delete, in Lago's shapes."""

from litestar import Litestar
from litestar.testing import TestClient

from tests.conftest import Tenant

Client = TestClient[Litestar]


def test_an_add_on_is_created_updated_listed_and_deleted(client: Client, tenant: Tenant) -> None:
    headers = tenant.headers
    client.post(
        "/api/v1/taxes",
        json={"tax": {"code": "vat", "name": "VAT", "rate": "20"}},
        headers=headers,
    ).raise_for_status()
    body = {
        "add_on": {
            "name": "Setup",
            "code": "setup",
            "amount_cents": 50_000,
            "amount_currency": "EUR",
            "tax_codes": ["vat"],
        }
    }
    created = client.post("/api/v1/add_ons", json=body, headers=headers)
    assert created.status_code == 200, created.text
    add_on = created.json()["add_on"]
    assert (add_on["code"], add_on["amount_cents"], add_on["amount_currency"]) == (
        "setup",
        50_000,
        "EUR",
    )
    assert [tax["code"] for tax in add_on["taxes"]] == ["vat"]
    again = client.post("/api/v1/add_ons", json=body, headers=headers)
    assert (again.status_code, again.json()["error_details"]) == (
        422,
        {"code": ["value_already_exist"]},
    )
    updated = client.put(
        "/api/v1/add_ons/setup", json={"add_on": {"amount_cents": 60_000}}, headers=headers
    ).json()["add_on"]
    assert (updated["lago_id"], updated["amount_cents"]) == (add_on["lago_id"], 60_000)
    listed = client.get("/api/v1/add_ons", headers=headers).json()
    assert ([a["code"] for a in listed["add_ons"]], listed["meta"]["total_count"]) == (["setup"], 1)
    unknown_tax = client.post(
        "/api/v1/add_ons",
        json={"add_on": {**body["add_on"], "code": "other", "tax_codes": ["nope"]}},
        headers=headers,
    )
    assert unknown_tax.status_code == 404
    assert client.delete("/api/v1/add_ons/setup", headers=headers).status_code == 200
    assert client.get("/api/v1/add_ons/setup", headers=headers).status_code == 404
    refused = client.post(
        "/api/v1/add_ons", json={"add_on": {"code": "x", "name": "X"}}, headers=headers
    )
    assert (refused.status_code, refused.json()["error_details"]) == (
        422,
        {"amount_cents": ["value_is_mandatory"]},
    )
