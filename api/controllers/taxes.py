"""Lago's taxes resource."""

from decimal import Decimal
from uuid import UUID

import msgspec

from api.http import Envelope, Input, Output, PaginationMeta, iso
from api.resources import crud_controller
from application.billing import Billing
from domain.errors import InvalidValueError
from domain.tax import Tax


class TaxInput(Input):
    name: str | None = None
    code: str | None = None
    # The client sends a JSON number (20.0); msgspec reads it from its text, never via a float.
    rate: Decimal | None = None
    description: str | None = None
    applied_to_organization: bool | None = None


class TaxRequest(Envelope):
    tax: TaxInput


class TaxObject(Output):
    lago_id: UUID
    name: str
    code: str
    rate: msgspec.Raw  # A JSON number with the stored digits: 25.5, never 25.499999.
    description: str | None
    applied_to_organization: bool
    add_ons_count: int
    customers_count: int
    plans_count: int
    charges_count: int
    created_at: str


class TaxResponse(Output):
    tax: TaxObject


class TaxesResponse(Output):
    taxes: list[TaxObject]
    meta: PaginationMeta


def json_number(value: Decimal) -> msgspec.Raw:
    return msgspec.Raw(format(value, "f").encode())


def tax_object(tax: Tax) -> TaxObject:
    return TaxObject(
        lago_id=tax.id,
        name=tax.name,
        code=tax.code,
        rate=json_number(tax.rate),
        description=tax.description,
        applied_to_organization=tax.applied_to_organization,
        add_ons_count=0,
        customers_count=0,
        plans_count=0,
        charges_count=0,
        created_at=iso(tax.created_on) or "",
    )


def _values(body: TaxInput) -> dict[str, object]:
    return {
        "name": body.name,
        "rate": body.rate,
        "description": body.description,
        "applied_to_organization": body.applied_to_organization,
    }


def _create(billing: Billing, organization_id: UUID, body: TaxInput) -> Tax:
    return billing.create_tax(organization_id, body.code or "", _values(body))


def _update(billing: Billing, organization_id: UUID, code: str, body: TaxInput) -> Tax:
    if body.code not in (None, code):
        # Lago renames a tax; ids here derive from the code, so a new code is a new tax.
        raise InvalidValueError("code", "value_is_immutable", body.code)
    return billing.update_tax(organization_id, code, _values(body))


TaxController = crud_controller(
    path="/taxes",
    name="Tax",
    plural_name="Taxes",
    root="tax",
    plural_root="taxes",
    request=TaxRequest,
    response=TaxResponse,
    list_response=TaxesResponse,
    to_object=tax_object,
    create=_create,
    update=_update,
    find=Billing.tax,
    find_all=Billing.taxes,
    destroy=Billing.delete_tax,
)
