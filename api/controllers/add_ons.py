"""Lago's add-ons resource: one-off charges of the catalog, billed by one-off invoices."""

from uuid import UUID

from api.controllers.taxes import TaxObject, tax_object
from api.http import Envelope, Input, Output, PaginationMeta, iso
from api.resources import crud_controller
from application.billing import Billing
from domain.add_on import AddOn
from domain.errors import InvalidValueError


class AddOnInput(Input):
    name: str | None = None
    code: str | None = None
    amount_cents: int | None = None
    amount_currency: str | None = None
    invoice_display_name: str | None = None
    description: str | None = None
    tax_codes: list[str] | None = None


class AddOnRequest(Envelope):
    add_on: AddOnInput


class AddOnObject(Output):
    lago_id: UUID
    name: str
    code: str
    amount_cents: int
    amount_currency: str
    invoice_display_name: str | None
    description: str | None
    created_at: str
    taxes: list[TaxObject]


class AddOnResponse(Output):
    add_on: AddOnObject


class AddOnsResponse(Output):
    add_ons: list[AddOnObject]
    meta: PaginationMeta


def add_on_object(add_on: AddOn, billing: Billing) -> AddOnObject:
    return AddOnObject(
        lago_id=add_on.id,
        name=add_on.name,
        code=add_on.code,
        amount_cents=add_on.amount_cents,
        amount_currency=add_on.amount_currency,
        invoice_display_name=add_on.invoice_display_name,
        description=add_on.description,
        created_at=iso(add_on.created_on) or "",
        taxes=[tax_object(billing.tax(add_on.organization_id, code)) for code in add_on.tax_codes],
    )


def _values(body: AddOnInput) -> dict[str, object]:
    return {
        "name": body.name,
        "amount_cents": body.amount_cents,
        "amount_currency": body.amount_currency,
        "invoice_display_name": body.invoice_display_name,
        "description": body.description,
        "tax_codes": body.tax_codes,
    }


def _create(billing: Billing, organization_id: UUID, body: AddOnInput) -> AddOn:
    return billing.create_add_on(organization_id, body.code or "", _values(body))


def _update(billing: Billing, organization_id: UUID, code: str, body: AddOnInput) -> AddOn:
    if body.code not in (None, code):
        # Ids derive from the code: a new code is a new add-on (as for taxes).
        raise InvalidValueError("code", "value_is_immutable", body.code)
    return billing.update_add_on(organization_id, code, _values(body))


AddOnController = crud_controller(
    path="/add_ons",
    name="AddOn",
    plural_name="AddOns",
    root="add_on",
    plural_root="add_ons",
    request=AddOnRequest,
    response=AddOnResponse,
    list_response=AddOnsResponse,
    to_object_reading=add_on_object,
    create=_create,
    update=_update,
    find=Billing.add_on,
    find_all=Billing.add_ons,
    destroy=Billing.delete_add_on,
)
