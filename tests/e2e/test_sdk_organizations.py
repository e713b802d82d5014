"""The organization and billing entities end to end, through Lago's official Python client."""

import pytest
from lago_python_client.client import Client
from lago_python_client.exceptions import LagoApiError
from lago_python_client.models.billing_entity import (
    BillingEntity,
    BillingEntityBillingConfiguration,
    BillingEntityUpdate,
)
from lago_python_client.models.organization import (
    Organization,
    OrganizationBillingConfiguration,
)

from tests.conftest import Server


@pytest.fixture
def lago(server: Server) -> Client:
    return Client(api_key=server.api_key, api_url=server.url)


def test_the_organization_and_its_billing_entities_through_the_official_client(
    lago: Client,
) -> None:
    organization = lago.organizations.update(
        Organization(
            default_currency="EUR",
            country="DE",
            legal_name="Acme GmbH",
            tax_identification_number="DE136695976",
            timezone="Europe/Berlin",
            billing_configuration=OrganizationBillingConfiguration(
                invoice_grace_period=2, document_locale="de"
            ),
        )
    )
    assert (organization.name, organization.country, organization.timezone) == (
        "e2e",
        "DE",
        "Europe/Berlin",
    )
    assert organization.billing_configuration is not None
    assert organization.billing_configuration.invoice_grace_period == 2

    default = lago.billing_entities.update(
        BillingEntityUpdate(name="Acme", eu_tax_management=True), "default"
    )
    assert (default.code, default.is_default, default.eu_tax_management) == (
        "default",
        True,
        True,
    )

    created = lago.billing_entities.create(
        BillingEntity(
            code="acme_fr",
            name="Acme France",
            country="FR",
            eu_tax_management=True,
            billing_configuration=BillingEntityBillingConfiguration(invoice_grace_period=1),
        )
    )
    assert (created.code, created.is_default, created.invoice_grace_period) == (
        "acme_fr",
        False,
        1,
    )
    found = lago.billing_entities.find("acme_fr")
    assert found.lago_id == created.lago_id
    listed = lago.billing_entities.find_all()
    assert [e.code for e in listed["billing_entities"]] == ["default", "acme_fr"]

    with pytest.raises(LagoApiError) as missing:
        lago.billing_entities.find("nowhere")
    assert missing.value.response["code"] == "billing_entity_not_found"
    with pytest.raises(LagoApiError) as outside:
        lago.billing_entities.update(BillingEntityUpdate(name="Acme US", country="US"), "acme_fr")
    assert outside.value.response["error_details"] == {
        "eu_tax_management": ["billing_entity_must_be_in_eu"]
    }
