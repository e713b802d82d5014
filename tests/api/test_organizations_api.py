"""The organization and its billing entities through the HTTP API."""

from typing import Any
from uuid import uuid4

from litestar import Litestar
from litestar.testing import TestClient

from api.problems import PROBLEM_TYPE_BASE
from domain.invoice import document_prefix
from tests.conftest import Tenant

Client = TestClient[Litestar]

SETTINGS = {
    "country": "de",
    "default_currency": "EUR",
    "timezone": "Europe/Berlin",
    "legal_name": "Acme GmbH",
    "legal_number": "HRB 12345",
    "tax_identification_number": "DE136695976",
    "address_line1": "Unter den Linden 1",
    "address_line2": None,
    "city": "Berlin",
    "state": None,
    "zipcode": "10117",
    "email": "billing@acme.example",
    "net_payment_term": 30,
    "document_numbering": "per_organization",
    "document_number_prefix": "acme",
    "finalize_zero_amount_invoice": False,
    "email_settings": ["invoice.finalized"],
    "eu_tax_management": True,
    "webhook_url": "https://acme.example/hooks",
    "billing_configuration": {
        "invoice_grace_period": 3,
        "invoice_footer": "Thank you",
        "document_locale": "de",
    },
}


def put_organization(client: Client, tenant: Tenant, body: dict[str, Any]) -> Any:
    return client.put("/api/v1/organizations", json={"organization": body}, headers=tenant.headers)


def test_an_organization_update_answers_the_whole_organization(
    client: Client, tenant: Tenant
) -> None:
    response = put_organization(client, tenant, SETTINGS)
    assert response.status_code == 200
    body = response.json()["organization"]
    assert body.pop("created_at").endswith("Z")
    assert body == {
        "lago_id": str(tenant.organization_id),
        "name": "acme",
        "default_currency": "EUR",
        "webhook_url": "https://acme.example/hooks",
        "webhook_urls": ["https://acme.example/hooks"],
        "country": "DE",
        "address_line1": "Unter den Linden 1",
        "address_line2": None,
        "state": None,
        "zipcode": "10117",
        "email": "billing@acme.example",
        "city": "Berlin",
        "legal_name": "Acme GmbH",
        "legal_number": "HRB 12345",
        "timezone": "Europe/Berlin",
        "net_payment_term": 30,
        "email_settings": ["invoice.finalized"],
        "document_numbering": "per_organization",
        "document_number_prefix": "ACME",
        "tax_identification_number": "DE136695976",
        "finalize_zero_amount_invoice": False,
        "eu_tax_management": True,
        "billing_configuration": {
            "invoice_footer": "Thank you",
            "invoice_grace_period": 3,
            "document_locale": "de",
        },
        "taxes": [],
    }
    found = client.get("/api/v1/organizations", headers=tenant.headers).json()["organization"]
    found.pop("created_at")
    assert found == body


def test_an_unset_organization_answers_lagos_defaults(client: Client, tenant: Tenant) -> None:
    body = client.get("/api/v1/organizations", headers=tenant.headers).json()["organization"]
    assert {
        key: body[key]
        for key in (
            "default_currency",
            "timezone",
            "net_payment_term",
            "document_numbering",
            "document_number_prefix",
            "eu_tax_management",
            "billing_configuration",
        )
    } == {
        "default_currency": "USD",
        "timezone": "UTC",
        "net_payment_term": 0,
        "document_numbering": "per_customer",
        "document_number_prefix": document_prefix("acme", tenant.organization_id),
        "eu_tax_management": False,
        "billing_configuration": {
            "invoice_footer": None,
            "invoice_grace_period": 0,
            "document_locale": "en",
        },
    }


def test_an_update_changes_only_what_it_sends(client: Client, tenant: Tenant) -> None:
    put_organization(client, tenant, SETTINGS)
    body = put_organization(
        client,
        tenant,
        {"city": "Munich", "email": None, "billing_configuration": {"invoice_grace_period": 5}},
    ).json()["organization"]
    assert (body["city"], body["email"], body["legal_name"]) == (
        "Munich",
        "billing@acme.example",
        "Acme GmbH",
    )
    assert body["billing_configuration"] == {
        "invoice_footer": "Thank you",
        "invoice_grace_period": 5,
        "document_locale": "de",
    }


def test_the_organizations_default_taxes_come_with_it(client: Client, tenant: Tenant) -> None:
    client.post(
        "/api/v1/taxes",
        json={"tax": {"code": "vat", "name": "VAT", "rate": "19", "applied_to_organization": True}},
        headers=tenant.headers,
    )
    body = client.get("/api/v1/organizations", headers=tenant.headers).json()["organization"]
    assert [(t["code"], t["rate"]) for t in body["taxes"]] == [("vat", 19)]


def _error(response: Any) -> tuple[int, Any]:
    return response.status_code, response.json().get("error_details")


def test_invalid_organization_settings_are_refused(client: Client, tenant: Tenant) -> None:
    cases = [
        ({"country": "XX"}, {"country": ["country_code_invalid"]}),
        ({"default_currency": "ABC"}, {"default_currency": ["value_is_invalid"]}),
        ({"timezone": "Mars/Olympus"}, {"timezone": ["invalid_timezone"]}),
        ({"net_payment_term": -1}, {"net_payment_term": ["value_is_invalid"]}),
        ({"net_payment_term": "30"}, {"net_payment_term": ["value_is_invalid"]}),
        ({"document_numbering": "per_year"}, {"document_numbering": ["value_is_invalid"]}),
        (
            {"document_number_prefix": "ELEVENCHARS"},
            {"document_number_prefix": ["value_is_invalid"]},
        ),
        ({"email": "not-an-email"}, {"email": ["invalid_email_format"]}),
        ({"email_settings": ["invoice.paid"]}, {"email_settings": ["value_is_invalid"]}),
        ({"webhook_url": "ftp://acme"}, {"webhook_url": ["url_is_invalid"]}),
        (
            {"billing_configuration": {"invoice_grace_period": 366}},
            {"billing_configuration.invoice_grace_period": ["value_is_invalid"]},
        ),
        (
            {"billing_configuration": {"document_locale": "german"}},
            {"billing_configuration.document_locale": ["value_is_invalid"]},
        ),
        ({"name": "Other"}, {"name": ["unsupported_field"]}),
        (
            {"country": "US", "eu_tax_management": True},
            {"eu_tax_management": ["org_must_be_in_eu"]},
        ),
        ({"eu_tax_management": True}, {"eu_tax_management": ["org_must_be_in_eu"]}),
    ]
    for body, details in cases:
        assert _error(put_organization(client, tenant, body)) == (422, details), body
    # Nothing was stored by the refused requests.
    found = client.get("/api/v1/organizations", headers=tenant.headers).json()["organization"]
    assert (found["country"], found["eu_tax_management"]) == (None, False)


def test_a_missing_root_key_is_lagos_400(client: Client, tenant: Tenant) -> None:
    response = client.put("/api/v1/organizations", json={"country": "FR"}, headers=tenant.headers)
    assert response.status_code == 400
    assert (
        response.json()["error"]
        == "BadRequest: param is missing or the value is empty: organization"
    )


def test_an_organization_needs_an_api_key(client: Client) -> None:
    assert client.get("/api/v1/organizations").status_code == 401
    assert put_organization(client, Tenant(uuid4(), "nope"), {}).status_code == 401


# Billing entities.


def test_the_default_billing_entity_is_the_organization(client: Client, tenant: Tenant) -> None:
    put_organization(client, tenant, SETTINGS)
    listed = client.get("/api/v1/billing_entities", headers=tenant.headers).json()
    assert listed["meta"]["total_count"] == 1
    [entity] = listed["billing_entities"]
    assert entity.pop("lago_id")
    assert entity.pop("created_at").endswith("Z") and entity.pop("updated_at").endswith("Z")
    assert entity == {
        "code": "default",
        "name": "acme",
        "is_default": True,
        "address_line1": "Unter den Linden 1",
        "address_line2": None,
        "city": "Berlin",
        "state": None,
        "zipcode": "10117",
        "country": "DE",
        "email": "billing@acme.example",
        "phone": None,
        "default_currency": "EUR",
        "timezone": "Europe/Berlin",
        "document_numbering": "per_organization",
        "document_number_prefix": "ACME",
        "finalize_zero_amount_invoice": False,
        "net_payment_term": 30,
        "eu_tax_management": True,
        "einvoicing": False,
        "logo_url": None,
        "legal_name": "Acme GmbH",
        "legal_number": "HRB 12345",
        "tax_identification_number": "DE136695976",
        "email_settings": ["invoice.finalized"],
        "invoice_footer": "Thank you",
        "invoice_grace_period": 3,
        "document_locale": "de",
        "subscription_invoice_issuing_date_anchor": None,
        "subscription_invoice_issuing_date_adjustment": None,
        "taxes": [],
    }
    # Updating the default entity updates the organization.
    client.put(
        "/api/v1/billing_entities/default",
        json={"billing_entity": {"name": "Acme", "country": "FR"}},
        headers=tenant.headers,
    )
    organization = client.get("/api/v1/organizations", headers=tenant.headers).json()
    assert organization["organization"]["country"] == "FR"
    default = client.get("/api/v1/billing_entities/default", headers=tenant.headers).json()
    assert default["billing_entity"]["name"] == "Acme"


def test_billing_entities_are_created_found_updated_and_listed(
    client: Client, tenant: Tenant
) -> None:
    client.post(
        "/api/v1/taxes",
        json={"tax": {"code": "tva", "name": "TVA", "rate": 20}},
        headers=tenant.headers,
    )
    created = client.post(
        "/api/v1/billing_entities",
        json={
            "billing_entity": {
                "code": "acme_fr",
                "name": "Acme France",
                "country": "FR",
                "eu_tax_management": True,
                "tax_identification_number": "FR40303265045",
                "billing_configuration": {
                    "subscription_invoice_issuing_date_anchor": "current_period_end"
                },
            }
        },
        headers=tenant.headers,
    )
    assert created.status_code == 200
    entity = created.json()["billing_entity"]
    assert (entity["code"], entity["is_default"], entity["country"]) == ("acme_fr", False, "FR")
    assert entity["subscription_invoice_issuing_date_anchor"] == "current_period_end"

    updated = client.put(
        "/api/v1/billing_entities/acme_fr",
        json={"billing_entity": {"name": "Acme SAS", "tax_codes": ["tva"], "city": "Paris"}},
        headers=tenant.headers,
    ).json()["billing_entity"]
    assert (updated["lago_id"], updated["name"], updated["city"]) == (
        entity["lago_id"],
        "Acme SAS",
        "Paris",
    )
    assert [(t["code"], t["rate"]) for t in updated["taxes"]] == [("tva", 20)]
    assert updated["eu_tax_management"] is True  # Kept.

    found = client.get("/api/v1/billing_entities/acme_fr", headers=tenant.headers).json()
    assert found["billing_entity"] == updated
    listed = client.get("/api/v1/billing_entities", headers=tenant.headers).json()
    assert [e["code"] for e in listed["billing_entities"]] == ["default", "acme_fr"]


def test_billing_entity_errors_are_lagos(client: Client, tenant: Tenant) -> None:
    def post(body: dict[str, Any]) -> Any:
        return client.post(
            "/api/v1/billing_entities", json={"billing_entity": body}, headers=tenant.headers
        )

    post({"code": "eu", "name": "EU"})
    assert _error(post({"code": "eu", "name": "EU again"})) == (
        422,
        {"code": ["value_already_exist"]},
    )
    assert _error(post({"code": "default", "name": "D"})) == (
        422,
        {"code": ["value_already_exist"]},
    )
    assert _error(post({"name": "No code"})) == (422, {"code": ["value_is_mandatory"]})
    assert _error(post({"code": "x"})) == (422, {"name": ["value_is_mandatory"]})
    assert _error(
        post({"code": "us", "name": "US", "country": "US", "eu_tax_management": True})
    ) == (
        422,
        {"eu_tax_management": ["billing_entity_must_be_in_eu"]},
    )
    assert _error(post({"code": "y", "name": "Y", "color": "red"})) == (
        422,
        {"color": ["unsupported_field"]},
    )
    missing = client.get("/api/v1/billing_entities/nowhere", headers=tenant.headers)
    assert (missing.status_code, missing.json()["code"]) == (404, "billing_entity_not_found")
    assert missing.json()["type"] == PROBLEM_TYPE_BASE + "billing_entity_not_found"
    update_missing = client.put(
        "/api/v1/billing_entities/nowhere",
        json={"billing_entity": {"name": "N"}},
        headers=tenant.headers,
    )
    assert update_missing.status_code == 404
    unknown_tax = client.put(
        "/api/v1/billing_entities/eu",
        json={"billing_entity": {"tax_codes": ["nope"]}},
        headers=tenant.headers,
    )
    assert (unknown_tax.status_code, unknown_tax.json()["code"]) == (404, "tax_not_found")
    renamed = client.put(
        "/api/v1/billing_entities/eu",
        json={"billing_entity": {"code": "other"}},
        headers=tenant.headers,
    )
    assert _error(renamed) == (422, {"code": ["value_is_immutable"]})
