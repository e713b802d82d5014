"""Lago's organization (PUT and GET /organizations) and billing entities resources.

The default billing entity, code "default", is the organization's own settings: updating one
updates the other. Unset settings answer Lago's defaults (getlago/lago-api:db/schema.rb).
"""

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final
from uuid import UUID

from litestar import Controller, get, put
from litestar.di import NamedDependency

from api.controllers.taxes import TaxObject, tax_object
from api.http import Envelope, Input, Output, PaginationMeta, decode_body, iso
from api.resources import crud_controller
from application.billing import Billing
from application.errors import NotFoundError
from domain.errors import InvalidValueError
from domain.invoice import document_prefix
from domain.organization import BillingEntity, Organization
from domain.tax import Tax

DEFAULTS: Final = {
    "default_currency": "USD",
    "timezone": "UTC",
    "net_payment_term": 0,
    "document_numbering": "per_customer",
    "finalize_zero_amount_invoice": True,
    "eu_tax_management": False,
    "einvoicing": False,
}
BILLING_CONFIGURATION_DEFAULTS: Final = {"invoice_grace_period": 0, "document_locale": "en"}


class BillingConfigurationInput(Input):
    invoice_footer: str | None = None
    invoice_grace_period: int | None = None
    document_locale: str | None = None


class BillingEntityConfigurationInput(BillingConfigurationInput):
    subscription_invoice_issuing_date_anchor: str | None = None
    subscription_invoice_issuing_date_adjustment: str | None = None


class SettingsInput(Input):
    """What an organization and a billing entity share; null means "not provided"."""

    country: str | None = None
    default_currency: str | None = None
    address_line1: str | None = None
    address_line2: str | None = None
    city: str | None = None
    state: str | None = None
    zipcode: str | None = None
    email: str | None = None
    legal_name: str | None = None
    legal_number: str | None = None
    tax_identification_number: str | None = None
    timezone: str | None = None
    net_payment_term: int | None = None
    document_numbering: str | None = None
    document_number_prefix: str | None = None
    finalize_zero_amount_invoice: bool | None = None
    email_settings: list[str] | None = None
    eu_tax_management: bool | None = None


class OrganizationInput(SettingsInput):
    webhook_url: str | None = None
    webhook_urls: list[str] | None = None
    billing_configuration: BillingConfigurationInput | None = None


class OrganizationRequest(Envelope):
    organization: OrganizationInput


class BillingConfigurationObject(Output):
    invoice_footer: str | None
    invoice_grace_period: int
    document_locale: str


class OrganizationObject(Output):
    lago_id: UUID
    name: str
    created_at: str
    default_currency: str
    webhook_url: str | None
    webhook_urls: list[str]
    country: str | None
    address_line1: str | None
    address_line2: str | None
    state: str | None
    zipcode: str | None
    email: str | None
    city: str | None
    legal_name: str | None
    legal_number: str | None
    timezone: str
    net_payment_term: int
    email_settings: list[str]
    document_numbering: str
    document_number_prefix: str
    tax_identification_number: str | None
    finalize_zero_amount_invoice: bool
    eu_tax_management: bool
    billing_configuration: BillingConfigurationObject
    taxes: list[TaxObject]


class OrganizationResponse(Output):
    organization: OrganizationObject


class BillingEntityInput(SettingsInput):
    code: str | None = None
    name: str | None = None
    phone: str | None = None
    einvoicing: bool | None = None
    logo_url: str | None = None
    # Lago takes an uploaded logo as a base64 data URL; Tally stores no files and ignores it.
    logo: str | None = None
    billing_configuration: BillingEntityConfigurationInput | None = None
    tax_codes: list[str] | None = None
    invoice_custom_section_codes: list[str] | None = None


class BillingEntityRequest(Envelope):
    billing_entity: BillingEntityInput


class BillingEntityObject(Output):
    lago_id: UUID
    code: str
    name: str
    is_default: bool
    created_at: str
    updated_at: str
    address_line1: str | None
    address_line2: str | None
    city: str | None
    state: str | None
    zipcode: str | None
    country: str | None
    email: str | None
    phone: str | None
    default_currency: str
    timezone: str
    document_numbering: str
    document_number_prefix: str
    finalize_zero_amount_invoice: bool
    net_payment_term: int
    eu_tax_management: bool
    einvoicing: bool
    logo_url: str | None
    legal_name: str | None
    legal_number: str | None
    tax_identification_number: str | None
    email_settings: list[str]
    # Lago's serializer flattens the billing configuration (V1::BillingEntitySerializer).
    invoice_footer: str | None
    invoice_grace_period: int
    document_locale: str
    subscription_invoice_issuing_date_anchor: str | None
    subscription_invoice_issuing_date_adjustment: str | None
    taxes: list[TaxObject]


class BillingEntityResponse(Output):
    billing_entity: BillingEntityObject


class BillingEntitiesResponse(Output):
    billing_entities: list[BillingEntityObject]
    meta: PaginationMeta


def _setting(settings: Mapping[str, Any], field: str) -> Any:
    value = settings.get(field)
    return DEFAULTS.get(field) if value is None else value


def _configuration(settings: Mapping[str, Any], key: str) -> Any:
    value = (settings.get("billing_configuration") or {}).get(key)
    return BILLING_CONFIGURATION_DEFAULTS.get(key) if value is None else value


def _values(body: SettingsInput, *skip: str) -> dict[str, Any]:
    """The body's fields by name, nested configuration as a dict; null stays "not provided"."""
    values: dict[str, Any] = {}
    for field in body.__struct_fields__:
        if field in skip:
            continue
        value = getattr(body, field)
        if isinstance(value, Input):
            value = {key: getattr(value, key) for key in value.__struct_fields__}
        values[field] = value
    return values


def organization_object(organization: Organization, taxes: list[Tax]) -> OrganizationObject:
    settings = organization.settings
    webhook_urls = list(settings.get("webhook_urls") or [])
    webhook_url = settings.get("webhook_url") or (webhook_urls[0] if webhook_urls else None)
    if webhook_url and webhook_url not in webhook_urls:
        webhook_urls.insert(0, webhook_url)
    return OrganizationObject(
        lago_id=organization.id,
        name=organization.name,
        created_at=iso(organization.created_on) or "",
        default_currency=_setting(settings, "default_currency"),
        webhook_url=webhook_url,
        webhook_urls=webhook_urls,
        country=settings.get("country"),
        address_line1=settings.get("address_line1"),
        address_line2=settings.get("address_line2"),
        state=settings.get("state"),
        zipcode=settings.get("zipcode"),
        email=settings.get("email"),
        city=settings.get("city"),
        legal_name=settings.get("legal_name"),
        legal_number=settings.get("legal_number"),
        timezone=_setting(settings, "timezone"),
        net_payment_term=_setting(settings, "net_payment_term"),
        email_settings=list(settings.get("email_settings") or []),
        document_numbering=_setting(settings, "document_numbering"),
        document_number_prefix=settings.get("document_number_prefix")
        or document_prefix(organization.name, organization.id),
        tax_identification_number=settings.get("tax_identification_number"),
        finalize_zero_amount_invoice=_setting(settings, "finalize_zero_amount_invoice"),
        eu_tax_management=_setting(settings, "eu_tax_management"),
        billing_configuration=BillingConfigurationObject(
            invoice_footer=_configuration(settings, "invoice_footer"),
            invoice_grace_period=_configuration(settings, "invoice_grace_period"),
            document_locale=_configuration(settings, "document_locale"),
        ),
        taxes=[tax_object(tax) for tax in taxes],
    )


def billing_entity_object(entity: BillingEntity, taxes: list[Tax]) -> BillingEntityObject:
    settings = entity.settings
    return BillingEntityObject(
        lago_id=entity.id,
        code=entity.code,
        name=entity.name,
        is_default=entity.is_default,
        created_at=iso(entity.created_at) or "",
        updated_at=iso(entity.updated_at) or "",
        address_line1=settings.get("address_line1"),
        address_line2=settings.get("address_line2"),
        city=settings.get("city"),
        state=settings.get("state"),
        zipcode=settings.get("zipcode"),
        country=settings.get("country"),
        email=settings.get("email"),
        phone=settings.get("phone"),
        default_currency=_setting(settings, "default_currency"),
        timezone=_setting(settings, "timezone"),
        document_numbering=_setting(settings, "document_numbering"),
        document_number_prefix=settings.get("document_number_prefix") or _default_prefix(entity),
        finalize_zero_amount_invoice=_setting(settings, "finalize_zero_amount_invoice"),
        net_payment_term=_setting(settings, "net_payment_term"),
        eu_tax_management=_setting(settings, "eu_tax_management"),
        einvoicing=_setting(settings, "einvoicing"),
        logo_url=settings.get("logo_url"),
        legal_name=settings.get("legal_name"),
        legal_number=settings.get("legal_number"),
        tax_identification_number=settings.get("tax_identification_number"),
        email_settings=list(settings.get("email_settings") or []),
        invoice_footer=_configuration(settings, "invoice_footer"),
        invoice_grace_period=_configuration(settings, "invoice_grace_period"),
        document_locale=_configuration(settings, "document_locale"),
        subscription_invoice_issuing_date_anchor=_configuration(
            settings, "subscription_invoice_issuing_date_anchor"
        ),
        subscription_invoice_issuing_date_adjustment=_configuration(
            settings, "subscription_invoice_issuing_date_adjustment"
        ),
        taxes=[tax_object(tax) for tax in taxes],
    )


def _default_prefix(entity: BillingEntity) -> str:
    """Lago's default prefix; the default entity's is the organization's, as invoices use it."""
    if entity.is_default:
        return document_prefix(entity.name, entity.organization_id)
    return document_prefix(entity.name, entity.id)


def _organization_taxes(billing: Billing, organization_id: UUID) -> list[Tax]:
    """Lago lists the organization's default taxes (applied_to_organization) with it."""
    taxes, _ = billing.taxes(organization_id, 1, 10_000)
    return [tax for tax in taxes if tax.applied_to_organization]


def _entity_taxes(billing: Billing, organization_id: UUID, entity: BillingEntity) -> list[Tax]:
    taxes: list[Tax] = []
    for code in entity.settings.get("tax_codes") or []:
        try:
            taxes.append(billing.tax(organization_id, code))
        except NotFoundError:
            continue  # Deleted since: Lago detaches a deleted tax.
    return taxes


class OrganizationController(Controller):
    path = "/organizations"
    tags = ("Organizations",)

    @put(operation_id="updateOrganization", sync_to_thread=True)
    def update(
        self,
        raw_body: NamedDependency[bytes],
        billing: NamedDependency[Billing],
        organization_id: NamedDependency[UUID],
    ) -> OrganizationResponse:
        """Change the organization's settings: those given, the others kept."""
        body = decode_body(raw_body, OrganizationRequest, "organization").organization
        organization = billing.update_organization_settings(organization_id, _values(body))
        taxes = _organization_taxes(billing, organization_id)
        return OrganizationResponse(organization=organization_object(organization, taxes))

    @get(operation_id="findOrganization", sync_to_thread=True)
    def find(
        self, billing: NamedDependency[Billing], organization_id: NamedDependency[UUID]
    ) -> OrganizationResponse:
        """The organization of the API key, as PUT answers it."""
        organization = billing.organization(organization_id)
        taxes = _organization_taxes(billing, organization_id)
        return OrganizationResponse(organization=organization_object(organization, taxes))


@dataclass(frozen=True)
class _Answer:
    """A billing entity with its taxes, for the shared CRUD builder's to_object."""

    entity: BillingEntity
    taxes: list[Tax]


def _entity_response(billing: Billing, organization_id: UUID, entity: BillingEntity) -> _Answer:
    return _Answer(entity, _entity_taxes(billing, organization_id, entity))


def _create(billing: Billing, organization_id: UUID, body: BillingEntityInput) -> _Answer:
    values = _values(body, "code", "logo")
    entity = billing.create_billing_entity(organization_id, body.code, values)
    return _entity_response(billing, organization_id, entity)


def _update(
    billing: Billing, organization_id: UUID, code: str, body: BillingEntityInput
) -> _Answer:
    if body.code not in (None, code):
        raise InvalidValueError("code", "value_is_immutable", body.code)
    values = _values(body, "code", "logo")
    entity = billing.update_billing_entity(organization_id, code, values)
    return _entity_response(billing, organization_id, entity)


def _find(billing: Billing, organization_id: UUID, code: str) -> _Answer:
    entity = billing.billing_entity(organization_id, code)
    return _entity_response(billing, organization_id, entity)


def _find_all(
    billing: Billing, organization_id: UUID, page: int, per_page: int
) -> tuple[list[_Answer], int]:
    entities, total = billing.billing_entities(organization_id, page, per_page)
    return [_entity_response(billing, organization_id, entity) for entity in entities], total


def _object(answer: _Answer) -> BillingEntityObject:
    return billing_entity_object(answer.entity, answer.taxes)


BillingEntityController = crud_controller(
    path="/billing_entities",
    name="BillingEntity",
    plural_name="BillingEntities",
    root="billing_entity",
    plural_root="billing_entities",
    request=BillingEntityRequest,
    response=BillingEntityResponse,
    list_response=BillingEntitiesResponse,
    to_object=_object,
    create=_create,
    update=_update,
    find=_find,
    find_all=_find_all,
)

__all__ = ["BillingEntityController", "OrganizationController"]
