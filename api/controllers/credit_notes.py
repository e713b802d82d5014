"""Lago's credit notes resource: create, estimate, get, list, refund status and void."""

from decimal import Decimal
from typing import Any
from uuid import UUID

import msgspec
from litestar import Controller, Request, get, post, put
from litestar.di import NamedDependency, Provide
from litestar.params import FromPath, FromQuery

from api.controllers.customers import CustomerObject, customer_object
from api.controllers.taxes import json_number
from api.http import (
    Envelope,
    Input,
    Output,
    PaginationMeta,
    decode_body,
    iso,
    iso_date,
    meta,
    pagination,
)
from api.problems import RequestBodyError
from application.billing import Billing
from application.credit_notes import CreditNoteEstimate, CreditNotes
from application.errors import NotFoundError
from domain import ids
from domain.credit_note import CreditNote
from domain.customer import Customer
from domain.invoice import Invoice
from domain.invoicing import FeeLine


class CreditNoteItemInput(Input):
    fee_id: str | None = None
    amount_cents: int | None = None


class CreditNoteInput(Input):
    # Every field Lago's client may send, null included (estimate sends the create's nulls).
    invoice_id: str | None = None
    reason: str | None = None
    description: str | None = None
    credit_amount_cents: int | None = None
    refund_amount_cents: int | None = None
    offset_amount_cents: int | None = None
    items: list[CreditNoteItemInput] | None = None
    metadata: dict[str, str | None] | None = None


class CreditNoteRequest(Envelope):
    credit_note: CreditNoteInput


class CreditNoteUpdateInput(Input):
    refund_status: str | None = None
    metadata: dict[str, str | None] | None = None


class CreditNoteUpdateRequest(Envelope):
    credit_note: CreditNoteUpdateInput


class FeeItemObject(Output):
    type: str
    code: str | None
    name: str
    invoice_display_name: str | None


class CreditedFeeObject(Output):
    lago_id: UUID
    lago_charge_id: str | None
    lago_invoice_id: UUID
    external_subscription_id: str
    external_customer_id: str
    amount_cents: int
    amount_currency: str
    taxes_amount_cents: int
    taxes_rate: msgspec.Raw
    total_amount_cents: int
    units: str
    events_count: int
    from_date: str | None
    to_date: str | None
    item: FeeItemObject


class CreditNoteItemObject(Output):
    lago_id: UUID
    amount_cents: int
    amount_currency: str
    fee: CreditedFeeObject


class CreditNoteAppliedTaxObject(Output):
    lago_id: UUID
    lago_credit_note_id: UUID
    lago_tax_id: UUID
    tax_name: str
    tax_code: str
    tax_rate: msgspec.Raw
    tax_description: str | None
    amount_cents: int
    amount_currency: str
    base_amount_cents: int
    created_at: str | None


class CreditNoteObject(Output):
    lago_id: UUID
    sequential_id: int
    billing_entity_code: str | None
    number: str
    lago_invoice_id: UUID
    invoice_number: str
    issuing_date: str | None
    purchase_order_number: str | None
    credit_status: str
    refund_status: str | None
    reason: str
    description: str | None
    currency: str
    total_amount_cents: int
    credit_amount_cents: int
    balance_amount_cents: int
    refund_amount_cents: int
    offset_amount_cents: int
    taxes_amount_cents: int
    taxes_rate: msgspec.Raw
    sub_total_excluding_taxes_amount_cents: int
    coupons_adjustment_amount_cents: int
    file_url: str | None
    created_at: str | None
    updated_at: str | None
    voided_at: str | None
    items: list[CreditNoteItemObject]
    applied_taxes: list[CreditNoteAppliedTaxObject]
    metadata: dict[str, str | None]
    customer: CustomerObject


class CreditNoteResponse(Output):
    credit_note: CreditNoteObject


class CreditNotesResponse(Output):
    credit_notes: list[CreditNoteObject]
    meta: PaginationMeta


class EstimatedItemObject(Output):
    amount_cents: int
    lago_fee_id: UUID


class EstimatedAppliedTaxObject(Output):
    lago_tax_id: UUID
    tax_name: str
    tax_code: str
    tax_rate: msgspec.Raw
    tax_description: str | None
    amount_cents: int
    amount_currency: str
    base_amount_cents: int


class EstimatedCreditNoteObject(Output):
    lago_invoice_id: UUID
    invoice_number: str
    currency: str
    max_creditable_amount_cents: int
    max_refundable_amount_cents: int
    max_offsettable_amount_cents: int
    taxes_amount_cents: int
    taxes_rate: msgspec.Raw
    sub_total_excluding_taxes_amount_cents: int
    coupons_adjustment_amount_cents: int
    items: list[EstimatedItemObject]
    applied_taxes: list[EstimatedAppliedTaxObject]


class EstimatedCreditNoteResponse(Output):
    estimated_credit_note: EstimatedCreditNoteObject


class _Taxes:
    """Tax names and descriptions by code, looked up once per response (deleted: the code)."""

    def __init__(self, billing: Billing, organization_id: UUID) -> None:
        self.billing = billing
        self.organization_id = organization_id
        self._found: dict[str, tuple[str, str | None]] = {}

    def describe(self, code: str) -> tuple[str, str | None]:
        if code not in self._found:
            try:
                tax = self.billing.tax(self.organization_id, code)
            except NotFoundError:
                self._found[code] = (code, None)
            else:
                self._found[code] = (tax.name, tax.description)
        return self._found[code]


def _fee_object(invoice: Invoice, position: int, fee: FeeLine) -> CreditedFeeObject:
    taxes = invoice.totals.taxes.lines[position]
    rate = sum((invoice.tax_rates[code] for code in fee.tax_codes), Decimal(0))
    return CreditedFeeObject(
        lago_id=ids.fee_id(invoice.id, fee.key),
        lago_charge_id=fee.charge_id,
        lago_invoice_id=invoice.id,
        external_subscription_id=fee.external_subscription_id,
        external_customer_id=invoice.external_customer_id,
        amount_cents=fee.amount_cents,
        amount_currency=invoice.currency,
        taxes_amount_cents=taxes.taxes_amount_cents,
        taxes_rate=json_number(rate),
        total_amount_cents=fee.amount_cents + taxes.taxes_amount_cents,
        units=format(fee.units, "f"),
        events_count=fee.events_count,
        from_date=iso(fee.from_at),
        to_date=iso(fee.to_at),
        item=FeeItemObject(
            type=fee.fee_type,
            code=fee.charge_code or fee.metric_code,
            name=fee.invoice_display_name or fee.charge_code or fee.fee_type,
            invoice_display_name=fee.invoice_display_name,
        ),
    )


def credit_note_object(
    note: CreditNote, invoice: Invoice, customer: Customer, taxes: _Taxes
) -> CreditNoteObject:
    positions = {fee.key: (i, fee) for i, fee in enumerate(invoice.fees)}
    items = []
    for item in note.items:
        position, fee = positions[item["fee_key"]]
        items.append(
            CreditNoteItemObject(
                lago_id=ids.credit_note_item_id(note.id, item["fee_key"]),
                amount_cents=item["amount_cents"],
                amount_currency=note.currency,
                fee=_fee_object(invoice, position, fee),
            )
        )
    applied_taxes = []
    for tax in note.applied_taxes:
        name, description = taxes.describe(tax["tax_code"])
        applied_taxes.append(
            CreditNoteAppliedTaxObject(
                lago_id=ids.credit_note_applied_tax_id(note.id, tax["tax_code"]),
                lago_credit_note_id=note.id,
                lago_tax_id=ids.tax_id(note.organization_id, tax["tax_code"]),
                tax_name=name,
                tax_code=tax["tax_code"],
                tax_rate=json_number(tax["rate"]),
                tax_description=description,
                amount_cents=tax["amount_cents"],
                amount_currency=note.currency,
                base_amount_cents=tax["base_amount_cents"],
                created_at=iso(note.created_on),
            )
        )
    return CreditNoteObject(
        lago_id=note.id,
        sequential_id=note.sequential_id,
        billing_entity_code=None,
        number=note.number,
        lago_invoice_id=note.invoice_id,
        invoice_number=note.invoice_number,
        issuing_date=iso_date(note.issuing_date),
        purchase_order_number=None,
        credit_status=note.credit_status,
        refund_status=note.refund_status,
        reason=note.reason,
        description=note.description,
        currency=note.currency,
        total_amount_cents=note.total_amount_cents,
        credit_amount_cents=note.credit_amount_cents,
        balance_amount_cents=note.balance_amount_cents,
        refund_amount_cents=note.refund_amount_cents,
        offset_amount_cents=note.offset_amount_cents,
        taxes_amount_cents=note.taxes_amount_cents,
        taxes_rate=json_number(note.taxes_rate),
        sub_total_excluding_taxes_amount_cents=note.sub_total_excluding_taxes_amount_cents,
        coupons_adjustment_amount_cents=note.coupons_adjustment_amount_cents,
        file_url=None,
        created_at=iso(note.created_on),
        updated_at=iso(note.modified_on),
        voided_at=iso(note.voided_at),
        items=items,
        applied_taxes=applied_taxes,
        metadata={},
        customer=customer_object(customer),
    )


def estimated_object(estimate: CreditNoteEstimate, taxes: _Taxes) -> EstimatedCreditNoteObject:
    invoice, amounts = estimate.invoice, estimate.amounts
    applied_taxes = []
    for tax in amounts.applied_taxes:
        name, description = taxes.describe(tax.tax_code)
        applied_taxes.append(
            EstimatedAppliedTaxObject(
                lago_tax_id=ids.tax_id(invoice.organization_id, tax.tax_code),
                tax_name=name,
                tax_code=tax.tax_code,
                tax_rate=json_number(tax.rate),
                tax_description=description,
                amount_cents=tax.tax_cents,
                amount_currency=invoice.currency,
                base_amount_cents=tax.taxable_base_cents,
            )
        )
    return EstimatedCreditNoteObject(
        lago_invoice_id=invoice.id,
        invoice_number=invoice.number or "",
        currency=invoice.currency,
        max_creditable_amount_cents=estimate.max_creditable_amount_cents,
        max_refundable_amount_cents=estimate.max_refundable_amount_cents,
        max_offsettable_amount_cents=estimate.max_offsettable_amount_cents,
        taxes_amount_cents=amounts.taxes_amount_cents,
        taxes_rate=json_number(amounts.taxes_rate),
        sub_total_excluding_taxes_amount_cents=amounts.sub_total_excluding_taxes_amount_cents,
        coupons_adjustment_amount_cents=amounts.coupons_adjustment_amount_cents,
        items=[
            EstimatedItemObject(amount_cents=cents, lago_fee_id=ids.fee_id(invoice.id, key))
            for key, cents in amounts.items
        ],
        applied_taxes=applied_taxes,
    )


class _Renderer:
    """Builds credit note objects, loading each invoice and customer once per response."""

    def __init__(self, credit_notes: CreditNotes, organization_id: UUID) -> None:
        self.credit_notes = credit_notes
        self.organization_id = organization_id
        self.taxes = _Taxes(credit_notes.billing, organization_id)
        self._invoices: dict[UUID, Invoice] = {}
        self._customers: dict[UUID, Customer] = {}

    def __call__(self, note: CreditNote) -> CreditNoteObject:
        if note.invoice_id not in self._invoices:
            self._invoices[note.invoice_id] = self.credit_notes.invoicing.invoice(
                self.organization_id, note.invoice_id
            )
        if note.customer_id not in self._customers:
            customer: Customer = self.credit_notes.billing.repository.get(note.customer_id)
            self._customers[note.customer_id] = customer
        return credit_note_object(
            note, self._invoices[note.invoice_id], self._customers[note.customer_id], self.taxes
        )


def _uuid(value: str, resource: str) -> UUID:
    """A lago_id from the wire; one that is not a UUID names nothing, as Lago answers."""
    try:
        return UUID(value.strip())
    except ValueError:
        raise NotFoundError(resource, value) from None


def _items(body: CreditNoteInput) -> list[tuple[str, int]]:
    if body.items is None:
        raise RequestBodyError("items", "value_is_mandatory", "items are required.")
    items = []
    for index, item in enumerate(body.items):
        if item.fee_id is None:
            raise RequestBodyError(f"items.{index}.fee_id", "value_is_mandatory", "Required.")
        if item.amount_cents is None:
            raise RequestBodyError(f"items.{index}.amount_cents", "value_is_mandatory", "Required.")
        items.append((item.fee_id, item.amount_cents))
    return items


def _invoice_id(body: CreditNoteInput) -> UUID:
    if not body.invoice_id:
        raise RequestBodyError("invoice_id", "value_is_mandatory", "invoice_id is required.")
    return _uuid(body.invoice_id, "invoice")


def _check_metadata(metadata: dict[str, str | None] | None) -> None:
    if metadata:
        raise RequestBodyError("metadata", "unsupported_field", "metadata is not supported.")


def provide_credit_notes(request: Request[Any, Any, Any]) -> CreditNotes:
    credit_notes: CreditNotes = request.app.state.ledger.credit_notes
    return credit_notes


_DEPENDENCIES = {"credit_notes": Provide(provide_credit_notes, sync_to_thread=False)}


class CreditNoteController(Controller):
    path = "/credit_notes"
    tags = ("Credit notes",)
    dependencies = _DEPENDENCIES

    @post(operation_id="createCreditNote", status_code=200, sync_to_thread=True)
    def create(
        self,
        raw_body: NamedDependency[bytes],
        credit_notes: NamedDependency[CreditNotes],
        organization_id: NamedDependency[UUID],
    ) -> CreditNoteResponse:
        """Credit fees of a finalized invoice: credit + refund + offset must equal the total."""
        body = decode_body(raw_body, CreditNoteRequest, "credit_note").credit_note
        _check_metadata(body.metadata)
        invoice_id = _invoice_id(body)
        note = credit_notes.create(
            organization_id,
            invoice_id,
            _items(body),
            reason=body.reason,
            description=body.description,
            credit_amount_cents=body.credit_amount_cents or 0,
            refund_amount_cents=body.refund_amount_cents or 0,
            offset_amount_cents=body.offset_amount_cents or 0,
        )
        return CreditNoteResponse(credit_note=_Renderer(credit_notes, organization_id)(note))

    @post("/estimate", operation_id="estimateCreditNote", status_code=200, sync_to_thread=True)
    def estimate(
        self,
        raw_body: NamedDependency[bytes],
        credit_notes: NamedDependency[CreditNotes],
        organization_id: NamedDependency[UUID],
    ) -> EstimatedCreditNoteResponse:
        """What a credit note on these items would come to, and the most each destination
        takes; nothing is stored."""
        body = decode_body(raw_body, CreditNoteRequest, "credit_note").credit_note
        estimate = credit_notes.estimate(organization_id, _invoice_id(body), _items(body))
        taxes = _Taxes(credit_notes.billing, organization_id)
        return EstimatedCreditNoteResponse(estimated_credit_note=estimated_object(estimate, taxes))

    @get("/{lago_id:str}", operation_id="findCreditNote", sync_to_thread=True)
    def find(
        self,
        lago_id: FromPath[str],
        credit_notes: NamedDependency[CreditNotes],
        organization_id: NamedDependency[UUID],
    ) -> CreditNoteResponse:
        note = credit_notes.credit_note(organization_id, _uuid(lago_id, "credit_note"))
        return CreditNoteResponse(credit_note=_Renderer(credit_notes, organization_id)(note))

    @get(operation_id="findAllCreditNotes", sync_to_thread=True)
    def find_all(
        self,
        credit_notes: NamedDependency[CreditNotes],
        organization_id: NamedDependency[UUID],
        page: FromQuery[int | None] = None,
        per_page: FromQuery[int | None] = None,
        external_customer_id: FromQuery[str | None] = None,
        credit_status: FromQuery[str | None] = None,
        refund_status: FromQuery[str | None] = None,
        reason: FromQuery[str | None] = None,
    ) -> CreditNotesResponse:
        """Credit notes, newest first."""
        page, per_page = pagination(page, per_page)
        notes, total = credit_notes.credit_notes(
            organization_id,
            page,
            per_page,
            external_customer_id=external_customer_id,
            credit_status=credit_status,
            refund_status=refund_status,
            reason=reason,
        )
        render = _Renderer(credit_notes, organization_id)
        return CreditNotesResponse(
            credit_notes=[render(note) for note in notes], meta=meta(page, per_page, total)
        )

    @put("/{lago_id:str}", operation_id="updateCreditNote", sync_to_thread=True)
    def update(
        self,
        lago_id: FromPath[str],
        raw_body: NamedDependency[bytes],
        credit_notes: NamedDependency[CreditNotes],
        organization_id: NamedDependency[UUID],
    ) -> CreditNoteResponse:
        """Record how the refund went (pending, succeeded, failed)."""
        body = decode_body(raw_body, CreditNoteUpdateRequest, "credit_note").credit_note
        _check_metadata(body.metadata)
        credit_note_id = _uuid(lago_id, "credit_note")
        if body.refund_status is None:
            note = credit_notes.credit_note(organization_id, credit_note_id)
        else:
            note = credit_notes.set_refund_status(
                organization_id, credit_note_id, body.refund_status
            )
        return CreditNoteResponse(credit_note=_Renderer(credit_notes, organization_id)(note))

    @put("/{lago_id:str}/void", operation_id="voidCreditNote", sync_to_thread=True)
    def void(
        self,
        lago_id: FromPath[str],
        credit_notes: NamedDependency[CreditNotes],
        organization_id: NamedDependency[UUID],
    ) -> CreditNoteResponse:
        """Void the remaining credit balance; 405 no_voidable_amount when nothing is left."""
        note = credit_notes.void(organization_id, _uuid(lago_id, "credit_note"))
        return CreditNoteResponse(credit_note=_Renderer(credit_notes, organization_id)(note))
