"""Lago's customers resource, and Tally's customer history extension."""

from typing import Any
from uuid import UUID

from litestar import get
from litestar.di import NamedDependency
from litestar.params import FromPath

from api.http import Envelope, Input, Output, PaginationMeta, iso
from api.resources import crud_controller
from application.billing import Billing, HistoryEntry
from domain.customer import FIELDS, Customer


class CustomerInput(Input):
    external_id: str
    name: str | None = None  # None and absent mean the same: Lago's client sends both.
    firstname: str | None = None
    lastname: str | None = None
    customer_type: str | None = None
    account_type: str | None = None
    email: str | None = None
    phone: str | None = None
    url: str | None = None
    address_line1: str | None = None
    address_line2: str | None = None
    city: str | None = None
    state: str | None = None
    zipcode: str | None = None
    country: str | None = None
    currency: str | None = None
    timezone: str | None = None
    legal_name: str | None = None
    legal_number: str | None = None
    tax_identification_number: str | None = None
    net_payment_term: int | None = None
    finalize_zero_amount_invoice: str | None = None
    billing_configuration: dict[str, Any] | None = None
    shipping_address: dict[str, Any] | None = None
    metadata: list[dict[str, Any]] | None = None
    tax_codes: list[str] | None = None
    billing_entity_code: str | None = None
    # Accepted for compatibility and ignored: Tally has no integrations or custom sections yet.
    integration_customers: list[dict[str, Any]] | None = None
    invoice_custom_section_codes: list[str] | None = None
    skip_invoice_custom_sections: bool | None = None


class CustomerRequest(Envelope):
    customer: CustomerInput  # Lago's root key.


class CustomerObject(Output):
    lago_id: UUID
    external_id: str
    sequential_id: int | None
    slug: str | None
    created_at: str
    updated_at: str
    applicable_timezone: str
    name: str | None
    firstname: str | None
    lastname: str | None
    customer_type: str | None
    account_type: str
    email: str | None
    phone: str | None
    url: str | None
    logo_url: str | None
    address_line1: str | None
    address_line2: str | None
    city: str | None
    state: str | None
    zipcode: str | None
    country: str | None
    currency: str | None
    timezone: str | None
    legal_name: str | None
    legal_number: str | None
    tax_identification_number: str | None
    net_payment_term: int | None
    finalize_zero_amount_invoice: str
    billing_configuration: dict[str, Any]
    shipping_address: dict[str, Any]
    metadata: list[dict[str, Any]]
    taxes: list[dict[str, Any]]
    integration_customers: list[dict[str, Any]]
    applicable_invoice_custom_sections: list[dict[str, Any]]
    skip_invoice_custom_sections: bool
    billing_entity_code: str | None


class CustomerResponse(Output):
    customer: CustomerObject


class CustomersResponse(Output):
    customers: list[CustomerObject]
    meta: PaginationMeta


class HistoryEventObject(Output):
    version: int
    type: str
    recorded_at: str
    changes: dict[str, Any]


class CustomerHistoryResponse(Output):
    events: list[HistoryEventObject]


def customer_object(customer: Customer, organization_timezone: str = "UTC") -> CustomerObject:
    fields = customer.fields
    return CustomerObject(
        lago_id=customer.id,
        external_id=customer.external_id,
        sequential_id=None,
        slug=None,
        created_at=iso(customer.created_on) or "",
        updated_at=iso(customer.modified_on) or "",
        applicable_timezone=customer.timezone or organization_timezone,
        name=fields.get("name"),
        firstname=fields.get("firstname"),
        lastname=fields.get("lastname"),
        customer_type=fields.get("customer_type"),
        account_type=fields.get("account_type", "customer"),
        email=fields.get("email"),
        phone=fields.get("phone"),
        url=fields.get("url"),
        logo_url=None,
        address_line1=fields.get("address_line1"),
        address_line2=fields.get("address_line2"),
        city=fields.get("city"),
        state=fields.get("state"),
        zipcode=fields.get("zipcode"),
        country=fields.get("country"),
        currency=fields.get("currency"),
        timezone=fields.get("timezone"),
        legal_name=fields.get("legal_name"),
        legal_number=fields.get("legal_number"),
        tax_identification_number=fields.get("tax_identification_number"),
        net_payment_term=fields.get("net_payment_term"),
        finalize_zero_amount_invoice=fields.get("finalize_zero_amount_invoice", "inherit"),
        billing_configuration={
            "invoice_grace_period": None,
            "payment_provider": None,
            "payment_provider_code": None,
            "provider_customer_id": None,
            "sync": False,
            "sync_with_provider": False,
            "document_locale": None,
            **fields.get("billing_configuration", {}),
        },
        shipping_address={
            key: fields.get("shipping_address", {}).get(key)
            for key in ("address_line1", "address_line2", "city", "state", "zipcode", "country")
        },
        metadata=[
            {"lago_id": None, "created_at": iso(customer.created_on), **entry}
            for entry in fields.get("metadata", [])
        ],
        taxes=[],
        integration_customers=[],
        applicable_invoice_custom_sections=[],
        skip_invoice_custom_sections=False,
        billing_entity_code=fields.get("billing_entity_code"),
    )


def history_object(entry: HistoryEntry) -> HistoryEventObject:
    return HistoryEventObject(
        version=entry.version,
        type=entry.type,
        recorded_at=iso(entry.recorded_at) or "",
        changes={k: str(v) if isinstance(v, UUID) else v for k, v in entry.changes.items()},
    )


def _upsert(billing: Billing, organization_id: UUID, body: CustomerInput) -> Customer:
    values = {field: getattr(body, field) for field in FIELDS}
    return billing.upsert_customer(organization_id, body.external_id, values)


# Lago has no PUT for customers: POST creates or updates by external_id.
CustomerController = crud_controller(
    path="/customers",
    name="Customer",
    plural_name="Customers",
    root="customer",
    plural_root="customers",
    request=CustomerRequest,
    response=CustomerResponse,
    list_response=CustomersResponse,
    to_object=customer_object,
    create=_upsert,
    find=Billing.customer,
    find_all=Billing.customers,
    destroy=Billing.delete_customer,
)


@get(
    "/customers/{external_id:str}/history", operation_id="findCustomerHistory", sync_to_thread=True
)
def customer_history(
    external_id: FromPath[str],
    billing: NamedDependency[Billing],
    organization_id: NamedDependency[UUID],
) -> CustomerHistoryResponse:
    """Tally extension: every recorded event of the customer, oldest first."""
    entries = billing.customer_history(organization_id, external_id)
    return CustomerHistoryResponse(events=[history_object(e) for e in entries])
