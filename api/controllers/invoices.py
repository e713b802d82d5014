"""Lago's invoices resource, and Tally's audit, history and PDF extensions."""

from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Annotated, Any, Final
from uuid import UUID

import msgspec
from eventsourcing.application import AggregateNotFoundError
from litestar import Controller, Request, Response, get, post, put
from litestar.di import NamedDependency, Provide
from litestar.params import FromPath, FromQuery, QueryParameter

from api.controllers.customers import CustomerObject, customer_object
from api.controllers.subscriptions import SubscriptionObject, subscription_object
from api.controllers.taxes import json_number
from api.controllers.usage import (
    ChargeRefObject,
    ChargeUsageObject,
    FilterUsageObject,
    GroupedUsageObject,
    MetricRefObject,
)
from api.http import (
    Envelope,
    Input,
    Output,
    PaginationMeta,
    decimal_string,
    decode_body,
    iso,
    meta,
    pagination,
    parse_instant,
)
from api.pdf import invoice_pdf
from api.problems import BadQueryError, RequestBodyError
from application.billing import Billing
from application.errors import NotFoundError
from application.invoicing import AuditReport, Invoicing, OneOffFee, content_hash
from application.payments import invoice_payments_of
from domain import ids
from domain.customer import Customer
from domain.errors import InvalidValueError
from domain.invoice import PAYMENT_STATUSES, Invoice, document_prefix
from domain.invoicing import FeeLine
from domain.money import CURRENCY_EXPONENTS, EXACT, to_decimal
from domain.organization import Organization
from domain.payment import InvoicePaymentState
from domain.plan import Plan
from domain.subscription import Subscription
from domain.tax import Tax
from domain.taxes import LineTaxes

# Lago's visible invoice statuses (failed and pending exist for tax providers: none here yet).
STATUSES: Final = ("draft", "finalized", "voided", "failed", "pending")
VERSION_NUMBER: Final = 4  # Lago's current invoice template version; the client requires it.


class InvoiceUpdateInput(Input):
    payment_status: str | None = None
    metadata: list[dict[str, Any]] | None = None


class InvoiceUpdateRequest(Envelope):
    invoice: InvoiceUpdateInput


class VoidInput(Input):
    """Lago's optional void options, sent unwrapped by the client's void_invoice."""

    generate_credit_note: bool | None = None
    refund_amount: int | None = None
    credit_amount: int | None = None


class RetryPaymentInput(Input):
    payment_method: dict[str, Any] | None = None


class InvoiceItemObject(Output):
    type: str
    code: str
    name: str
    invoice_display_name: str | None
    filter_invoice_display_name: str | None
    filters: dict[str, list[str]] | None
    lago_item_id: str | None
    item_type: str
    grouped_by: dict[str, str]


class FeeAppliedTaxObject(Output):
    lago_id: UUID
    lago_fee_id: UUID
    lago_tax_id: UUID
    tax_name: str
    tax_code: str
    tax_rate: msgspec.Raw  # A JSON number with the recorded digits.
    tax_description: str | None
    amount_cents: int
    amount_currency: str
    created_at: str


class OneOffFeeInput(Input):
    add_on_code: str | None = None
    # Any: a JSON integer stays an int, a fraction a Decimal from its text (never a float).
    units: Any = None
    unit_amount_cents: Any = None
    description: str | None = None
    invoice_display_name: str | None = None
    from_datetime: str | None = None
    to_datetime: str | None = None
    tax_codes: list[str] | None = None


class OneOffInvoiceInput(Input):
    external_customer_id: str | None = None
    currency: str | None = None
    fees: list[OneOffFeeInput] | None = None
    # Accepted as Lago's client sends them; not used.
    error_details: Any = None
    billing_entity_code: str | None = None
    payment_method: Any = None
    invoice_custom_section: Any = None
    purchase_order_number: str | None = None


class OneOffInvoiceRequest(Envelope):
    invoice: OneOffInvoiceInput


def _exact(value: Any, field: str) -> Decimal | int | None:
    """A JSON number or a numeric string as an exact number; None when absent."""
    if value is None or (isinstance(value, int) and not isinstance(value, bool)):
        return value
    if isinstance(value, Decimal):
        return value
    if isinstance(value, str):
        return to_decimal(value, field)
    raise InvalidValueError(field, "value_is_invalid", value)


class FeeObject(Output):
    lago_id: UUID | None  # None: an estimate (POST /events/estimate_fees), never stored.
    lago_charge_id: str | None
    lago_charge_filter_id: str | None
    lago_fixed_charge_id: None
    lago_invoice_id: UUID | None
    lago_true_up_fee_id: None
    lago_true_up_parent_fee_id: None
    lago_original_fee_id: None
    lago_subscription_id: UUID
    external_subscription_id: str
    lago_customer_id: UUID
    external_customer_id: str
    amount_cents: int
    amount_currency: str
    precise_amount: str
    precise_total_amount: str
    taxes_amount_cents: int
    taxes_precise_amount: str
    taxes_rate: msgspec.Raw
    total_amount_cents: int
    total_amount_currency: str
    precise_unit_amount: str
    precise_coupons_amount_cents: str
    sub_total_excluding_taxes_amount_cents: int
    sub_total_excluding_taxes_precise_amount_cents: str
    units: str
    total_aggregated_units: str
    events_count: int
    payment_status: str
    pay_in_advance: bool
    invoiceable: bool
    self_billed: bool
    event_transaction_id: str | None  # The event a pay-in-advance fee bills (§4.9).
    from_date: str
    to_date: str
    created_at: str
    succeeded_at: None
    failed_at: None
    refunded_at: None
    description: str | None
    amount_details: dict[str, Any]
    item: InvoiceItemObject
    applied_taxes: list[FeeAppliedTaxObject]


class BillingPeriodObject(Output):
    lago_subscription_id: str
    external_subscription_id: str
    lago_plan_id: str
    subscription_from_datetime: str
    subscription_to_datetime: str
    charges_from_datetime: str
    charges_to_datetime: str
    invoicing_reason: str


class InvoiceAppliedTaxObject(Output):
    lago_id: UUID
    lago_invoice_id: UUID
    lago_tax_id: UUID
    tax_name: str
    tax_code: str
    tax_rate: msgspec.Raw
    tax_description: str | None
    amount_cents: int
    amount_currency: str
    fees_amount_cents: int
    created_at: str


class InvoiceObject(Output):
    lago_id: UUID
    sequential_id: int | None
    number: str
    purchase_order_number: None
    issuing_date: str
    payment_due_date: str
    payment_dispute_lost_at: str | None
    payment_overdue: bool
    net_payment_term: int
    invoice_type: str
    version_number: int
    status: str
    payment_status: str
    currency: str
    fees_amount_cents: int
    coupons_amount_cents: int
    taxes_amount_cents: int
    credit_notes_amount_cents: int
    progressive_billing_credit_amount_cents: int
    sub_total_excluding_taxes_amount_cents: int
    sub_total_including_taxes_amount_cents: int
    total_amount_cents: int
    total_due_amount_cents: int
    total_paid_amount_cents: int
    total_offsetted_credit_note_amount_cents: int
    prepaid_credit_amount_cents: int
    prepaid_granted_credit_amount_cents: int
    prepaid_purchased_credit_amount_cents: int
    self_billed: bool
    voided_at: str | None
    file_url: str | None
    xml_url: None
    web_url: None
    created_at: str
    updated_at: str
    customer: CustomerObject
    billing_periods: list[BillingPeriodObject]
    # Lago's list leaves out the details; a single invoice has them.
    subscriptions: list[SubscriptionObject] | None
    fees: list[FeeObject] | None
    credits: list[dict[str, Any]]
    metadata: list[dict[str, Any]]
    applied_taxes: list[InvoiceAppliedTaxObject]
    applied_invoice_custom_sections: list[dict[str, Any]]
    applied_usage_thresholds: list[dict[str, Any]]
    error_details: list[dict[str, Any]]
    billing_entity_code: None


class InvoiceResponse(Output):
    invoice: InvoiceObject


class InvoicesResponse(Output):
    invoices: list[InvoiceObject]
    meta: PaginationMeta


class InvoiceVersionObject(Output):
    version: int
    recorded_at: str
    invoice: InvoiceObject


class InvoiceHistoryResponse(Output):
    invoice_versions: list[InvoiceVersionObject]
    meta: PaginationMeta


class AuditPlanVersionObject(Output):
    external_subscription_id: str
    lago_plan_id: str
    plan_version: int


class AuditDifferenceObject(Output):
    key: str
    lago_fee_id: UUID
    # Each field that differs, with its stored and recomputed values.
    changes: dict[str, dict[str, Any]]
    stored: dict[str, Any] | None
    recomputed: dict[str, Any] | None


class InvoiceAuditObject(Output):
    lago_invoice_id: UUID
    number: str
    status: str
    result: str  # "match" or "mismatch"
    content_hash: str
    watermark: int
    plan_versions: list[AuditPlanVersionObject]
    fees_amount_cents: int
    recomputed_fees_amount_cents: int
    differences: list[AuditDifferenceObject]
    recomputed_fees: list[dict[str, Any]]


class InvoiceAuditResponse(Output):
    invoice_audit: InvoiceAuditObject


class _Lookup:
    """The catalog names an invoice shows, each loaded once per request."""

    def __init__(self, billing: Billing, organization_id: UUID) -> None:
        self.billing = billing
        self.organization_id = organization_id
        self._cache: dict[UUID, Any] = {}

    def _load(self, aggregate_id: UUID) -> Any:
        if aggregate_id not in self._cache:
            try:
                self._cache[aggregate_id] = self.billing.repository.get(aggregate_id)
            except AggregateNotFoundError:
                self._cache[aggregate_id] = None
        return self._cache[aggregate_id]

    @property
    def organization(self) -> Organization:
        organization: Organization = self._load(self.organization_id)
        return organization

    def customer(self, customer_id: UUID) -> Customer:
        customer: Customer = self._load(customer_id)
        return customer

    def subscription(self, subscription_id: UUID) -> Subscription:
        subscription: Subscription = self._load(subscription_id)
        return subscription

    def plan(self, plan_id: str) -> Plan:
        plan: Plan = self._load(UUID(plan_id))
        return plan

    def metric_name(self, code: str) -> tuple[str | None, str]:
        """The metric's lago_id and name (a deleted metric keeps both)."""
        metric = self._load(ids.billable_metric_id(self.organization_id, code))
        if metric is None:
            return None, code
        return str(metric.id), str(metric.definition["name"])

    def tax(self, code: str) -> Tax | None:
        tax: Tax | None = self._load(ids.tax_id(self.organization_id, code))
        return tax

    def payments(self, invoice: Invoice) -> InvoicePaymentState:
        """Paid and due amounts (partial payments included) and the overdue mark (ADR 0021)."""
        return invoice_payments_of(self.billing, invoice)


def provide_invoicing(request: Request[Any, Any, Any]) -> Invoicing:
    invoicing: Invoicing = request.app.state.ledger.invoicing
    return invoicing


def invoice_id_from(value: str) -> UUID:
    """A lago_id from the path; anything else names no invoice (Lago's 404, not a 422)."""
    try:
        return UUID(value)
    except ValueError:
        raise NotFoundError("invoice", value) from None


def major(cents: Decimal | int, currency: str) -> str:
    """Cents (exact or rounded) as a decimal string in major units."""
    return format(Decimal(cents).scaleb(-CURRENCY_EXPONENTS[currency], EXACT), "f")


def inclusive_end(instant: datetime) -> str:
    """Lago renders period ends inclusively: the last second of the last day."""
    return iso(instant - timedelta(seconds=1)) or ""


def draft_number(organization: Organization) -> str:
    """Lago numbers drafts <prefix>-DRAFT; the real number comes at finalization."""
    return f"{document_prefix(organization.name, organization.id)}-DRAFT"


def pdf_url(base_url: str, invoice: Invoice) -> str | None:
    if invoice.status == "draft":
        return None
    return f"{base_url.rstrip('/')}/api/v1/invoices/{invoice.id}/pdf"


def invoice_object(
    invoice: Invoice, lookup: _Lookup, *, base_url: str, details: bool = True
) -> InvoiceObject:
    totals = invoice.totals
    currency = invoice.currency
    customer = lookup.customer(invoice.customer_id)
    payments = lookup.payments(invoice)
    due_date = invoice.payment_due_date or invoice.issuing_date + timedelta(
        days=invoice.net_payment_term
    )
    fees = invoice.fees
    return InvoiceObject(
        lago_id=invoice.id,
        sequential_id=invoice.sequential_id,
        number=invoice.number or draft_number(lookup.organization),
        purchase_order_number=None,
        issuing_date=invoice.issuing_date.isoformat(),
        payment_due_date=due_date.isoformat(),
        payment_dispute_lost_at=iso(payments.payment_dispute_lost_at),
        payment_overdue=payments.payment_overdue,
        net_payment_term=invoice.net_payment_term,
        invoice_type=invoice.invoice_type,
        version_number=VERSION_NUMBER,
        status=invoice.status,
        payment_status=invoice.payment_status,
        currency=currency,
        fees_amount_cents=totals.fees_amount_cents,
        coupons_amount_cents=0,
        taxes_amount_cents=totals.taxes_amount_cents,
        credit_notes_amount_cents=totals.credit_notes_amount_cents,
        progressive_billing_credit_amount_cents=0,
        sub_total_excluding_taxes_amount_cents=totals.sub_total_excluding_taxes_amount_cents,
        sub_total_including_taxes_amount_cents=totals.sub_total_including_taxes_amount_cents,
        total_amount_cents=totals.total_amount_cents,
        total_due_amount_cents=payments.total_due_amount_cents,
        total_paid_amount_cents=payments.total_paid_amount_cents,
        total_offsetted_credit_note_amount_cents=invoice.total_offsetted_credit_note_amount_cents,
        prepaid_credit_amount_cents=totals.prepaid_credit_amount_cents,
        prepaid_granted_credit_amount_cents=0,
        prepaid_purchased_credit_amount_cents=0,
        self_billed=False,
        voided_at=iso(invoice.voided_at),
        file_url=pdf_url(base_url, invoice),
        xml_url=None,
        web_url=None,
        created_at=iso(invoice.created_on) or "",
        updated_at=iso(invoice.modified_on) or "",
        customer=customer_object(customer),
        billing_periods=[_billing_period(period, fees) for period in invoice.billing_periods],
        subscriptions=(
            [
                subscription_object(lookup.subscription(UUID(id_)), lookup.billing)
                for id_ in dict.fromkeys(p["lago_subscription_id"] for p in invoice.billing_periods)
            ]
            if details
            else None
        ),
        fees=(
            [
                _fee_object(invoice, fee, line_taxes, lookup)
                for fee, line_taxes in zip(fees, totals.taxes.lines, strict=True)
            ]
            if details
            else None
        ),
        credits=[],
        metadata=[],
        applied_taxes=[
            InvoiceAppliedTaxObject(
                lago_id=ids.applied_tax_id(invoice.id, tax.tax_code, str(tax.rate)),
                lago_invoice_id=invoice.id,
                lago_tax_id=ids.tax_id(invoice.organization_id, tax.tax_code),
                tax_name=_tax_name(lookup, tax.tax_code),
                tax_code=tax.tax_code,
                tax_rate=json_number(tax.rate),
                tax_description=_tax_description(lookup, tax.tax_code),
                amount_cents=tax.tax_cents,
                amount_currency=currency,
                fees_amount_cents=tax.taxable_base_cents,
                created_at=iso(invoice.modified_on) or "",
            )
            for tax in totals.taxes.applied_taxes
        ],
        applied_invoice_custom_sections=[],
        applied_usage_thresholds=[],
        error_details=[],
        billing_entity_code=None,
    )


def _billing_period(period: dict[str, Any], fees: list[FeeLine]) -> BillingPeriodObject:
    """Lago's billing period: the subscription fee's period (the charges' when there is none)."""
    charges_from = datetime.fromisoformat(period["charges_from_datetime"])
    charges_to = datetime.fromisoformat(period["charges_to_datetime"])
    base = [
        fee
        for fee in fees
        if fee.fee_type == "subscription"
        and fee.external_subscription_id == period["external_subscription_id"]
    ]
    subscription_from = min((fee.from_at for fee in base), default=charges_from)
    subscription_to = max((fee.to_at for fee in base), default=charges_to)
    return BillingPeriodObject(
        lago_subscription_id=period["lago_subscription_id"],
        external_subscription_id=period["external_subscription_id"],
        lago_plan_id=period["lago_plan_id"],
        subscription_from_datetime=iso(subscription_from) or "",
        subscription_to_datetime=inclusive_end(subscription_to),
        charges_from_datetime=iso(charges_from) or "",
        charges_to_datetime=inclusive_end(charges_to),
        invoicing_reason=period["invoicing_reason"],
    )


def _tax_name(lookup: _Lookup, code: str) -> str:
    tax = lookup.tax(code)
    return tax.name if tax is not None else code


def _tax_description(lookup: _Lookup, code: str) -> str | None:
    tax = lookup.tax(code)
    return tax.description if tax is not None else None


def estimated_fee_objects(invoice: Invoice, billing: Billing) -> list[FeeObject]:
    """The fees of an estimate (an invoice never saved), as Lago shows them: without ids."""
    lookup = _Lookup(billing, invoice.organization_id)
    lines = zip(invoice.fees, invoice.totals.taxes.lines, strict=True)
    return [
        msgspec.structs.replace(
            _fee_object(invoice, fee, line_taxes, lookup), lago_id=None, lago_invoice_id=None
        )
        for fee, line_taxes in lines
    ]


def _fee_object(
    invoice: Invoice, fee: FeeLine, line_taxes: LineTaxes, lookup: _Lookup
) -> FeeObject:
    currency = invoice.currency
    fee_id = ids.fee_id(invoice.id, fee.key)
    item, charge_filter_id, pay_in_advance = _item(fee, invoice.organization_id, lookup)
    taxes_rate = sum((tax.rate for tax in line_taxes.applied_taxes), Decimal(0))
    total_cents = fee.amount_cents + line_taxes.taxes_amount_cents
    precise_total_cents = fee.precise_amount_cents + line_taxes.taxes_amount_cents
    return FeeObject(
        lago_id=fee_id,
        lago_charge_id=fee.charge_id,
        lago_charge_filter_id=charge_filter_id,
        lago_fixed_charge_id=None,
        lago_invoice_id=invoice.id,
        lago_true_up_fee_id=None,
        lago_true_up_parent_fee_id=None,
        lago_original_fee_id=None,
        lago_subscription_id=ids.subscription_id(
            invoice.organization_id, fee.external_subscription_id
        ),
        external_subscription_id=fee.external_subscription_id,
        lago_customer_id=invoice.customer_id,
        external_customer_id=invoice.external_customer_id,
        amount_cents=fee.amount_cents,
        amount_currency=currency,
        precise_amount=major(fee.precise_amount_cents, currency),
        precise_total_amount=major(precise_total_cents, currency),
        taxes_amount_cents=line_taxes.taxes_amount_cents,
        taxes_precise_amount=major(line_taxes.taxes_amount_cents, currency),
        taxes_rate=json_number(taxes_rate),
        total_amount_cents=total_cents,
        total_amount_currency=currency,
        precise_unit_amount=decimal_string(fee.unit_amount) or "0",
        precise_coupons_amount_cents="0",
        sub_total_excluding_taxes_amount_cents=fee.amount_cents,
        sub_total_excluding_taxes_precise_amount_cents=format(fee.precise_amount_cents, "f"),
        units=decimal_string(fee.units) or "0",
        total_aggregated_units=decimal_string(fee.units) or "0",
        events_count=fee.events_count,
        payment_status=invoice.payment_status,
        pay_in_advance=pay_in_advance,
        invoiceable=True,
        self_billed=False,
        event_transaction_id=fee.event_transaction_id,
        from_date=iso(fee.from_at) or "",
        to_date=inclusive_end(fee.to_at),
        created_at=iso(invoice.created_on) or "",
        succeeded_at=None,
        failed_at=None,
        refunded_at=None,
        description=fee_description(fee, item),
        amount_details={},
        item=item,
        applied_taxes=[
            FeeAppliedTaxObject(
                lago_id=ids.applied_tax_id(fee_id, tax.tax_code, str(tax.rate)),
                lago_fee_id=fee_id,
                lago_tax_id=ids.tax_id(invoice.organization_id, tax.tax_code),
                tax_name=_tax_name(lookup, tax.tax_code),
                tax_code=tax.tax_code,
                tax_rate=json_number(tax.rate),
                tax_description=_tax_description(lookup, tax.tax_code),
                amount_cents=tax.tax_cents,
                amount_currency=currency,
                created_at=iso(invoice.created_on) or "",
            )
            for tax in line_taxes.applied_taxes
        ],
    )


def _item(
    fee: FeeLine, organization_id: UUID, lookup: _Lookup
) -> tuple[InvoiceItemObject, str | None, bool]:
    """Lago's fee item, the charge filter's lago_id and whether the fee is paid in advance."""
    if fee.fee_type == "credit":  # A wallet top-up's fee (application/wallets.py): no plan.
        item = InvoiceItemObject(
            type="credit",
            code="credit",
            name="credit",
            invoice_display_name=fee.invoice_display_name or "Prepaid credits",
            filter_invoice_display_name=None,
            filters=None,
            lago_item_id=fee.key.rsplit(":", 1)[-1],
            item_type="WalletTransaction",
            grouped_by={},
        )
        return item, None, False
    if fee.fee_type == "add_on":  # A one-off invoice's line: the add-on it bills.
        name = fee.invoice_display_name or fee.charge_code or "add_on"
        item = InvoiceItemObject(
            type="add_on",
            code=fee.charge_code or "",
            name=name,
            invoice_display_name=name,
            filter_invoice_display_name=None,
            filters=None,
            lago_item_id=fee.charge_id,
            item_type="AddOn",
            grouped_by={},
        )
        return item, None, False
    plan = lookup.plan(fee.plan_id)
    definition = plan.definition(fee.plan_version)
    if fee.fee_type == "subscription":
        name = definition["name"]
        item = InvoiceItemObject(
            type="subscription",
            code=plan.code,
            name=name,
            invoice_display_name=definition.get("invoice_display_name") or name,
            filter_invoice_display_name=None,
            filters=None,
            lago_item_id=str(ids.subscription_id(organization_id, fee.external_subscription_id)),
            item_type="Subscription",
            grouped_by={},
        )
        return item, None, bool(definition["pay_in_advance"])
    if fee.fee_type == "commitment":
        commitment = definition.get("minimum_commitment") or {}
        item = InvoiceItemObject(
            type="commitment",
            code="minimum_commitment",
            name="Minimum commitment",
            invoice_display_name=fee.invoice_display_name,
            filter_invoice_display_name=None,
            filters=None,
            lago_item_id=commitment.get("lago_id"),
            item_type="Commitment",
            grouped_by={},
        )
        return item, None, False
    # A charge, a charge minimum's true-up, or an adjustment for late usage (Lago has no such
    # type: it is a charge fee of the period it adjusts).
    charge = next((c for c in definition["charges"] if c["lago_id"] == fee.charge_id), None)
    metric_code = fee.metric_code or (charge["billable_metric_code"] if charge else "")
    metric_id, metric_name = lookup.metric_name(metric_code)
    charge_filter = next(
        (
            f
            for f in (charge or {}).get("filters", [])
            if fee.filter_values is not None
            and {k: list(v) for k, v in f["values"].items()}
            == {k: list(v) for k, v in fee.filter_values.items()}
        ),
        None,
    )
    item = InvoiceItemObject(
        type="charge",
        code=metric_code,
        name=metric_name,
        invoice_display_name=(charge or {}).get("invoice_display_name") or metric_name,
        filter_invoice_display_name=(charge_filter or {}).get("invoice_display_name"),
        filters=(
            None
            if fee.filter_values is None
            else {key: list(values) for key, values in fee.filter_values.items()}
        ),
        lago_item_id=metric_id,
        item_type="BillableMetric",
        # The client types group values as strings: an event without the key has none.
        grouped_by={k: v for k, v in fee.grouped_by.items() if v is not None},
    )
    return item, (charge_filter or {}).get("lago_id"), fee.pay_in_advance


def fee_description(fee: FeeLine, item: InvoiceItemObject) -> str:
    """What a line bills, in words: the PDF's description column."""
    if fee.fee_type == "subscription":
        return f"{item.invoice_display_name} - subscription fee"
    if fee.fee_type == "commitment":
        return item.invoice_display_name or item.name
    parts = [item.invoice_display_name or item.name]
    if fee.metric_code is None and fee.invoice_display_name:
        parts.insert(0, fee.invoice_display_name)  # A charge minimum's true-up names itself.
    if item.filter_invoice_display_name:
        parts.append(item.filter_invoice_display_name)
    elif item.filters:
        parts.append(", ".join(f"{k}: {'/'.join(v)}" for k, v in item.filters.items()))
    if item.grouped_by:
        parts.append(", ".join(f"{k}: {v}" for k, v in item.grouped_by.items()))
    description = " - ".join(str(part) for part in parts)
    if fee.fee_type == "adjustment":
        return f"Late usage adjustment: {description}"
    return description


def audit_object(report: AuditReport, invoice: Invoice, lookup: _Lookup) -> InvoiceAuditObject:
    return InvoiceAuditObject(
        lago_invoice_id=report.invoice_id,
        number=invoice.number or draft_number(lookup.organization),
        status=invoice.status,
        result="match" if report.matches else "mismatch",
        content_hash=report.content_hash,
        watermark=report.watermark,
        plan_versions=[
            AuditPlanVersionObject(
                external_subscription_id=p["external_subscription_id"],
                lago_plan_id=p["lago_plan_id"],
                plan_version=p["plan_version"],
            )
            for p in report.plan_versions
        ],
        fees_amount_cents=sum(fee.amount_cents for fee in report.stored),
        recomputed_fees_amount_cents=sum(fee.amount_cents for fee in report.recomputed),
        differences=[
            AuditDifferenceObject(
                key=difference["key"],
                lago_fee_id=ids.fee_id(invoice.id, difference["key"]),
                changes=field_changes(difference["stored"], difference["recomputed"]),
                stored=difference["stored"],
                recomputed=difference["recomputed"],
            )
            for difference in report.differences
        ],
        recomputed_fees=[
            {"lago_id": str(ids.fee_id(invoice.id, fee.key)), **fee.as_event()}
            for fee in report.recomputed
        ],
    )


def field_changes(
    stored: dict[str, Any] | None, recomputed: dict[str, Any] | None
) -> dict[str, dict[str, Any]]:
    """The fields of one line that differ (a line missing on one side differs in all)."""
    before, after = stored or {}, recomputed or {}
    return {
        key: {"stored": before.get(key), "recomputed": after.get(key)}
        for key in sorted(before.keys() | after.keys())
        if before.get(key) != after.get(key)
    }


def _list_filter(values: list[str] | None, allowed: tuple[str, ...], field: str) -> tuple[str, ...]:
    for value in values or []:
        if value not in allowed:
            raise BadQueryError(field)
    return tuple(values or ())


def _date(value: str | None, field: str) -> date | None:
    if value is None:
        return None
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise BadQueryError(field, "invalid_date") from None


class InvoiceController(Controller):
    path = "/invoices"
    tags = ("Invoices",)
    # Litestar reads this class attribute once, when it registers the controller.
    dependencies = {"invoicing": Provide(provide_invoicing, sync_to_thread=False)}  # noqa: RUF012

    @get(operation_id="findAllInvoices", sync_to_thread=True)
    def find_all(
        self,
        request: Request[Any, Any, Any],
        invoicing: NamedDependency[Invoicing],
        organization_id: NamedDependency[UUID],
        page: FromQuery[int | None] = None,
        per_page: FromQuery[int | None] = None,
        external_customer_id: FromQuery[str | None] = None,
        status: FromQuery[list[str] | None] = None,
        statuses: Annotated[list[str] | None, QueryParameter(name="statuses[]")] = None,
        status_list: Annotated[list[str] | None, QueryParameter(name="status[]")] = None,
        payment_status: FromQuery[list[str] | None] = None,
        payment_statuses: Annotated[
            list[str] | None, QueryParameter(name="payment_statuses[]")
        ] = None,
        payment_status_list: Annotated[
            list[str] | None, QueryParameter(name="payment_status[]")
        ] = None,
        issuing_date_from: FromQuery[str | None] = None,
        issuing_date_to: FromQuery[str | None] = None,
        currency: FromQuery[str | None] = None,
        invoice_type: FromQuery[str | None] = None,
    ) -> InvoicesResponse:
        """An organization's invoices, newest first; Lago's filters, without the fees."""
        page, per_page = pagination(page, per_page)
        wanted = _list_filter(
            [*(status or []), *(statuses or []), *(status_list or [])], STATUSES, "status"
        )
        wanted_payment = _list_filter(
            [*(payment_status or []), *(payment_statuses or []), *(payment_status_list or [])],
            PAYMENT_STATUSES,
            "payment_status",
        )
        date_from = _date(issuing_date_from, "issuing_date_from")
        date_to = _date(issuing_date_to, "issuing_date_to")
        matching, _ = invoicing.invoices(
            organization_id,
            1,
            10**9,
            external_customer_id=external_customer_id,
            statuses=wanted,
            payment_statuses=wanted_payment,
        )
        matching = [
            invoice
            for invoice in matching
            if (date_from is None or invoice.issuing_date >= date_from)
            and (date_to is None or invoice.issuing_date <= date_to)
            and (currency is None or invoice.currency == currency)
            and (invoice_type is None or invoice.invoice_type == invoice_type)
        ]
        start = (page - 1) * per_page
        lookup = _Lookup(invoicing.billing, organization_id)
        return InvoicesResponse(
            invoices=[
                invoice_object(i, lookup, base_url=str(request.base_url), details=False)
                for i in matching[start : start + per_page]
            ],
            meta=meta(page, per_page, len(matching)),
        )

    @get("/{lago_id:str}", operation_id="findInvoice", sync_to_thread=True)
    def find(
        self,
        request: Request[Any, Any, Any],
        lago_id: FromPath[str],
        invoicing: NamedDependency[Invoicing],
        organization_id: NamedDependency[UUID],
    ) -> InvoiceResponse:
        """One invoice with its fees, billing periods and applied taxes."""
        invoice = invoicing.invoice(organization_id, invoice_id_from(lago_id))
        return _response(request, invoicing, organization_id, invoice)

    @put("/{lago_id:str}", operation_id="updateInvoice", sync_to_thread=True)
    def update(
        self,
        request: Request[Any, Any, Any],
        lago_id: FromPath[str],
        raw_body: NamedDependency[bytes],
        invoicing: NamedDependency[Invoicing],
        organization_id: NamedDependency[UUID],
    ) -> InvoiceResponse:
        """Lago's manual payment: set the payment status of a finalized invoice."""
        body = decode_body(raw_body, InvoiceUpdateRequest, "invoice").invoice
        invoice_id = invoice_id_from(lago_id)
        if body.metadata:
            # The Invoice aggregate records no metadata yet: refuse rather than drop it.
            raise RequestBodyError("metadata", "unsupported_field", "Invoice metadata.")
        if body.payment_status is None:
            invoice = invoicing.invoice(organization_id, invoice_id)
        else:
            invoice = invoicing.set_payment_status(organization_id, invoice_id, body.payment_status)
        return _response(request, invoicing, organization_id, invoice)

    @put("/{lago_id:str}/refresh", operation_id="refreshInvoice", sync_to_thread=True)
    def refresh(
        self,
        request: Request[Any, Any, Any],
        lago_id: FromPath[str],
        invoicing: NamedDependency[Invoicing],
        organization_id: NamedDependency[UUID],
    ) -> InvoiceResponse:
        """Recompute a draft with the usage received since; other invoices are unchanged."""
        now = invoicing.billing.now()
        invoice = invoicing.refresh(organization_id, invoice_id_from(lago_id), now)
        return _response(request, invoicing, organization_id, invoice)

    @post(operation_id="createInvoice", status_code=200, sync_to_thread=True)
    def create(
        self,
        request: Request[Any, Any, Any],
        raw_body: NamedDependency[bytes],
        invoicing: NamedDependency[Invoicing],
        organization_id: NamedDependency[UUID],
    ) -> InvoiceResponse:
        """A one-off invoice for add-ons, finalized and numbered at once."""
        body = decode_body(raw_body, OneOffInvoiceRequest, "invoice").invoice
        fees = [
            OneOffFee(
                add_on_code=fee.add_on_code,
                units=_exact(fee.units, f"fees[{index}].units"),
                unit_amount_cents=_exact(fee.unit_amount_cents, f"fees[{index}].unit_amount_cents"),
                invoice_display_name=fee.invoice_display_name,
                from_datetime=parse_instant(fee.from_datetime, f"fees[{index}].from_datetime"),
                to_datetime=parse_instant(fee.to_datetime, f"fees[{index}].to_datetime"),
                tax_codes=None if fee.tax_codes is None else tuple(fee.tax_codes),
            )
            for index, fee in enumerate(body.fees or [])
        ]
        now = invoicing.billing.now()
        invoice = invoicing.create_one_off(
            organization_id, body.external_customer_id, body.currency, fees, now
        )
        return _response(request, invoicing, organization_id, invoice)

    @put("/{lago_id:str}/finalize", operation_id="finalizeInvoice", sync_to_thread=True)
    def finalize(
        self,
        request: Request[Any, Any, Any],
        lago_id: FromPath[str],
        invoicing: NamedDependency[Invoicing],
        organization_id: NamedDependency[UUID],
    ) -> InvoiceResponse:
        """Finalize a draft now: it takes the next number. Lago finds only drafts here (404)."""
        now = invoicing.billing.now()
        invoice = invoicing.finalize(organization_id, invoice_id_from(lago_id), now)
        return _response(request, invoicing, organization_id, invoice)

    @post("/{lago_id:str}/void", operation_id="voidInvoice", status_code=200, sync_to_thread=True)
    def void(
        self,
        request: Request[Any, Any, Any],
        lago_id: FromPath[str],
        raw_body: NamedDependency[bytes],
        invoicing: NamedDependency[Invoicing],
        organization_id: NamedDependency[UUID],
    ) -> InvoiceResponse:
        """Void a finalized invoice whose payment has not succeeded; the credits wallets paid
        go back to them. With generate_credit_note a paid invoice is voided too, with a credit
        note crediting credit_amount and refunding refund_amount (cents, tax included), and a
        credit note for the rest whose credit is voided at once (Lago's Invoices::VoidService).
        A refund above what was paid, or credit + refund above what the customer paid for the
        invoice, is refused: 422 credit_refund_amount total_amount_exceeds_invoice_amount."""
        options = decode_body(raw_body, VoidInput)
        now = invoicing.billing.now()
        invoice = invoicing.void(
            organization_id,
            invoice_id_from(lago_id),
            now,
            generate_credit_note=bool(options.generate_credit_note),
            credit_amount_cents=options.credit_amount or 0,
            refund_amount_cents=options.refund_amount or 0,
        )
        return _response(request, invoicing, organization_id, invoice)

    @post(
        "/{lago_id:str}/download",
        operation_id="downloadInvoice",
        status_code=200,
        sync_to_thread=True,
    )
    def download(
        self,
        request: Request[Any, Any, Any],
        lago_id: FromPath[str],
        invoicing: NamedDependency[Invoicing],
        organization_id: NamedDependency[UUID],
    ) -> InvoiceResponse:
        """The invoice with its file_url (GET .../pdf renders it on demand); finalized only."""
        invoice = invoicing.invoice(organization_id, invoice_id_from(lago_id))
        if invoice.status != "finalized":
            raise NotFoundError("invoice", lago_id)  # Lago: invoices.finalized.find_by(id).
        return _response(request, invoicing, organization_id, invoice)

    @post(
        "/{lago_id:str}/retry_payment",
        operation_id="retryInvoicePayment",
        status_code=200,
        sync_to_thread=True,
    )
    def retry_payment(
        self,
        request: Request[Any, Any, Any],
        lago_id: FromPath[str],
        raw_body: NamedDependency[bytes],
        organization_id: NamedDependency[UUID],
    ) -> Response[bytes]:
        """Retry collecting a failed payment now, through the customer's payment provider:
        an empty 200, as Lago's `head :ok` (application/payments.py)."""
        decode_body(raw_body, RetryPaymentInput)
        request.app.state.ledger.payments.retry_payment(organization_id, invoice_id_from(lago_id))
        return Response(content=b"", status_code=200)

    @get("/{lago_id:str}/pdf", operation_id="findInvoicePdf", sync_to_thread=True)
    def pdf(
        self,
        lago_id: FromPath[str],
        invoicing: NamedDependency[Invoicing],
        organization_id: NamedDependency[UUID],
    ) -> Response[bytes]:
        """Tally extension: the PDF of a finalized or voided invoice, rendered on demand."""
        invoice = invoicing.invoice(organization_id, invoice_id_from(lago_id))
        if invoice.status == "draft":
            raise NotFoundError("invoice", lago_id)  # A draft has no number yet.
        return Response(
            content=render_pdf(invoicing.billing, organization_id, invoice),
            media_type="application/pdf",
            headers={"Content-Disposition": f'inline; filename="{invoice.number}.pdf"'},
        )

    @get("/{lago_id:str}/audit", operation_id="findInvoiceAudit", sync_to_thread=True)
    def audit(
        self,
        lago_id: FromPath[str],
        invoicing: NamedDependency[Invoicing],
        organization_id: NamedDependency[UUID],
    ) -> InvoiceAuditResponse:
        """Tally extension: recompute the invoice from the plan versions it recorded and the
        raw usage log up to its watermark, and compare every line."""
        invoice_id = invoice_id_from(lago_id)
        report = invoicing.audit(organization_id, invoice_id)
        invoice = invoicing.invoice(organization_id, invoice_id)
        lookup = _Lookup(invoicing.billing, organization_id)
        return InvoiceAuditResponse(invoice_audit=audit_object(report, invoice, lookup))

    @get("/{lago_id:str}/history", operation_id="findInvoiceHistory", sync_to_thread=True)
    def history(
        self,
        request: Request[Any, Any, Any],
        lago_id: FromPath[str],
        invoicing: NamedDependency[Invoicing],
        organization_id: NamedDependency[UUID],
        page: FromQuery[int | None] = None,
        per_page: FromQuery[int | None] = None,
    ) -> InvoiceHistoryResponse:
        """Tally extension: the invoice as it was after each of its recorded events."""
        page, per_page = pagination(page, per_page)
        versions = invoicing.invoice_history(organization_id, invoice_id_from(lago_id))
        lookup = _Lookup(invoicing.billing, organization_id)
        start = (page - 1) * per_page
        return InvoiceHistoryResponse(
            invoice_versions=[
                InvoiceVersionObject(
                    version=version.version,
                    recorded_at=iso(version.modified_on) or "",
                    invoice=invoice_object(version, lookup, base_url=str(request.base_url)),
                )
                for version in versions[start : start + per_page]
            ],
            meta=meta(page, per_page, len(versions)),
        )


def _response(
    request: Request[Any, Any, Any], invoicing: Invoicing, organization_id: UUID, invoice: Invoice
) -> InvoiceResponse:
    lookup = _Lookup(invoicing.billing, organization_id)
    return InvoiceResponse(invoice=invoice_object(invoice, lookup, base_url=str(request.base_url)))


def render_pdf(billing: Billing, organization_id: UUID, invoice: Invoice) -> bytes:
    """The invoice's PDF, with the same line descriptions as the API's fees."""
    lookup = _Lookup(billing, organization_id)
    fees = invoice.fees
    descriptions = [fee_description(fee, _item(fee, organization_id, lookup)[0]) for fee in fees]
    codes = {code for fee in fees for code in fee.tax_codes}
    return invoice_pdf(
        invoice,
        seller=lookup.organization,
        buyer=lookup.customer(invoice.customer_id),
        descriptions=descriptions,
        tax_names={code: _tax_name(lookup, code) for code in codes},
        content_hash=content_hash(invoice),
    )


# Lago's past usage (GET /customers/{external_customer_id}/past_usage): invoiced periods.


class PastUsageObject(Output):
    """Lago's CustomerUsage of an invoiced period: its charge fees as billed."""

    from_datetime: str
    to_datetime: str
    issuing_date: str
    currency: str
    amount_cents: int
    taxes_amount_cents: int
    total_amount_cents: int
    lago_invoice_id: UUID
    charges_usage: list[ChargeUsageObject]


class PastUsageResponse(Output):
    usage_periods: list[PastUsageObject]
    meta: PaginationMeta


def _fee_units(fees: list[FeeLine]) -> str:
    return decimal_string(sum((fee.units for fee in fees), Decimal(0))) or "0"


def _filter_usage(fees: list[FeeLine]) -> list[FilterUsageObject]:
    """One entry per filter bucket billed, the default one (values null) included."""
    by_filter: dict[str, list[FeeLine]] = {}
    for fee in fees:
        key = repr(sorted((fee.filter_values or {}).items()))
        by_filter.setdefault(key, []).append(fee)
    return [
        FilterUsageObject(
            units=_fee_units(bucket),
            total_aggregated_units=_fee_units(bucket),
            amount_cents=sum(f.amount_cents for f in bucket),
            events_count=sum(f.events_count for f in bucket),
            values=(
                None
                if bucket[0].filter_values is None
                else {k: list(v) for k, v in bucket[0].filter_values.items()}
            ),
            invoice_display_name=bucket[0].invoice_display_name,
        )
        for _, bucket in sorted(by_filter.items())
    ]


def _charge_usage(
    fees: list[FeeLine], currency: str, organization_id: UUID, lookup: "_Lookup"
) -> ChargeUsageObject:
    first = fees[0]
    plan = lookup.plan(first.plan_id)
    definition = plan.definition(first.plan_version)
    charge: dict[str, Any] = next(
        (c for c in definition["charges"] if c["lago_id"] == first.charge_id), {}
    )
    metric_code = first.metric_code or ""
    metric = lookup._load(ids.billable_metric_id(organization_id, metric_code))
    groups: dict[str, list[FeeLine]] = {}
    for fee in fees:
        if fee.grouped_by:
            groups.setdefault(repr(sorted(fee.grouped_by.items())), []).append(fee)
    has_filters = bool(charge.get("filters"))
    return ChargeUsageObject(
        units=_fee_units(fees),
        total_aggregated_units=_fee_units(fees),
        events_count=sum(f.events_count for f in fees),
        amount_cents=sum(f.amount_cents for f in fees),
        amount_currency=currency,
        charge=ChargeRefObject(
            lago_id=str(first.charge_id),
            charge_model=first.charge_model or charge.get("charge_model", ""),
            invoice_display_name=charge.get("invoice_display_name"),
        ),
        billable_metric=MetricRefObject(
            lago_id=metric.id,
            name=str(metric.definition["name"]),
            code=metric_code,
            aggregation_type=str(metric.definition["aggregation_type"]),
        ),
        filters=_filter_usage(fees) if has_filters else [],
        grouped_usage=[
            GroupedUsageObject(
                amount_cents=sum(f.amount_cents for f in group),
                events_count=sum(f.events_count for f in group),
                units=_fee_units(group),
                total_aggregated_units=_fee_units(group),
                grouped_by=dict(group[0].grouped_by),
                filters=_filter_usage(group) if has_filters else [],
            )
            for _, group in sorted(groups.items())
        ],
    )


@get(
    "/customers/{external_customer_id:str}/past_usage",
    operation_id="findAllCustomerPastUsage",
    sync_to_thread=True,
    dependencies={"invoicing": Provide(provide_invoicing, sync_to_thread=False)},
)
def past_usage(
    external_customer_id: FromPath[str],
    invoicing: NamedDependency[Invoicing],
    organization_id: NamedDependency[UUID],
    external_subscription_id: FromQuery[str | None] = None,
    billable_metric_code: FromQuery[str | None] = None,
    periods_count: FromQuery[int | None] = None,
    page: FromQuery[int | None] = None,
    per_page: FromQuery[int | None] = None,
) -> PastUsageResponse:
    """The usage of the subscription's invoiced periods, newest first, from the invoices' charge
    fees (pay-in-advance fees of the period included), in Lago's CustomerUsage shape."""
    page_number, page_size = pagination(page, per_page)
    periods = invoicing.past_usage(
        organization_id,
        external_customer_id,
        external_subscription_id,
        billable_metric_code=billable_metric_code,
        periods_count=periods_count,
    )
    lookup = _Lookup(invoicing.billing, organization_id)
    shown = periods[(page_number - 1) * page_size : page_number * page_size]
    usage_periods = []
    for usage in shown:
        currency = usage.invoice.currency
        by_charge: dict[str, list[FeeLine]] = {}
        for fee, _ in usage.fees:
            by_charge.setdefault(str(fee.charge_id), []).append(fee)
        usage_periods.append(
            PastUsageObject(
                from_datetime=iso(usage.from_at) or "",
                to_datetime=inclusive_end(usage.to_at),
                issuing_date=usage.invoice.issuing_date.isoformat(),
                currency=currency,
                amount_cents=usage.amount_cents,
                taxes_amount_cents=usage.taxes_amount_cents,
                total_amount_cents=usage.amount_cents + usage.taxes_amount_cents,
                lago_invoice_id=usage.invoice.id,
                charges_usage=[
                    _charge_usage(fees, currency, organization_id, lookup)
                    for fees in by_charge.values()
                ],
            )
        )
    return PastUsageResponse(
        usage_periods=usage_periods, meta=meta(page_number, page_size, len(periods))
    )
