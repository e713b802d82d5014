"""Lago's plans resource (charges and filters embedded), and Tally's plan versions extension."""

from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any
from uuid import UUID

import msgspec
from litestar import get
from litestar.di import NamedDependency
from litestar.params import FromPath

from api.controllers.taxes import TaxObject, json_number, tax_object
from api.http import Envelope, Input, Output, PaginationMeta, iso
from api.resources import crud_controller
from application.billing import Billing
from domain.errors import InvalidValueError
from domain.plan import Plan
from domain.tax import Tax

# Requests: every field lago-python-client 1.55.0 may send (models/plan.py, charge.py,
# minimum_commitment.py, usage_threshold.py), so that only what Tally lacks is refused.


class ChargeFilterInput(Input):
    invoice_display_name: str | None = None
    properties: dict[str, Any] | None = None  # Numbers arrive as Decimal (api.http.decode_body).
    values: dict[str, list[str]] | None = None
    # Accepted and ignored: overrides are copies taken when a subscription is sold, and later
    # edits of the plan never reach them (the subscription moves to a new version instead).
    cascade_updates: bool | None = None


class AppliedPricingUnitInput(Input):
    code: str | None = None
    conversion_rate: Decimal | None = None


class ChargeInput(Input):
    id: str | None = None
    billable_metric_id: str | None = None
    code: str | None = None
    charge_model: str | None = None
    pay_in_advance: bool | None = None
    prorated: bool | None = None
    invoiceable: bool | None = None
    regroup_paid_fees: str | None = None
    invoice_display_name: str | None = None
    min_amount_cents: int | None = None
    properties: dict[str, Any] | None = None
    filters: list[ChargeFilterInput] | None = None
    tax_codes: list[str] | None = None
    applied_pricing_unit: AppliedPricingUnitInput | None = None  # Refused when not null.
    accepts_target_wallet: bool | None = None
    cascade_updates: bool | None = None  # Accepted and ignored, as on filters.


class MinimumCommitmentInput(Input):
    amount_cents: int | None = None
    invoice_display_name: str | None = None
    tax_codes: list[str] | None = None


class UsageThresholdInput(Input):
    id: str | None = None
    threshold_display_name: str | None = None
    amount_cents: int | None = None
    recurring: bool | None = None


class PlanInput(Input):
    name: str | None = None
    invoice_display_name: str | None = None
    code: str | None = None
    interval: str | None = None
    description: str | None = None
    amount_cents: int | None = None
    amount_currency: str | None = None
    # The client sends a JSON number (30.0); msgspec reads it from its text, never via a float.
    trial_period: Decimal | None = None
    pay_in_advance: bool | None = None
    bill_charges_monthly: bool | None = None
    bill_fixed_charges_monthly: bool | None = None
    charges: list[ChargeInput] | None = None
    fixed_charges: list[dict[str, Any]] | None = None  # Refused unless empty: none in Tally yet.
    minimum_commitment: MinimumCommitmentInput | None = None
    usage_thresholds: list[UsageThresholdInput] | None = None
    tax_codes: list[str] | None = None
    # Accepted and ignored: Lago propagates plan edits to per-subscription overrides; Tally's
    # overrides are copies of the version sold (see ChargeFilterInput.cascade_updates).
    cascade_updates: bool | None = None
    metadata: dict[str, str | None] | None = None


class PlanRequest(Envelope):
    plan: PlanInput


# Responses: Lago's PlanResponse and ChargeResponse, plus Tally's `version`.


class ChargeFilterObject(Output):
    lago_id: UUID
    invoice_display_name: str | None
    properties: dict[str, Any]
    values: dict[str, list[str]]
    created_at: str


class ChargeObject(Output):
    lago_id: UUID
    lago_billable_metric_id: UUID
    billable_metric_code: str
    code: str
    created_at: str
    charge_model: str
    pay_in_advance: bool
    prorated: bool
    invoiceable: bool
    regroup_paid_fees: str | None
    invoice_display_name: str | None
    min_amount_cents: int
    properties: dict[str, Any]
    filters: list[ChargeFilterObject]
    taxes: list[TaxObject]
    accepts_target_wallet: bool


class MinimumCommitmentObject(Output):
    lago_id: UUID
    plan_code: str
    amount_cents: int
    invoice_display_name: str | None
    interval: str
    created_at: str
    updated_at: str
    taxes: list[TaxObject]


class UsageThresholdObject(Output):
    lago_id: UUID
    threshold_display_name: str | None
    amount_cents: int
    recurring: bool
    created_at: str
    updated_at: str


class PlanObject(Output):
    lago_id: UUID
    name: str
    invoice_display_name: str | None
    created_at: str
    code: str
    interval: str
    description: str | None
    amount_cents: int
    amount_currency: str
    trial_period: msgspec.Raw | None  # A JSON number with the stored digits.
    pay_in_advance: bool
    bill_charges_monthly: bool | None
    bill_fixed_charges_monthly: bool | None
    charges: list[ChargeObject]
    fixed_charges: list[dict[str, Any]]
    minimum_commitment: MinimumCommitmentObject | None
    usage_thresholds: list[UsageThresholdObject]
    taxes: list[TaxObject]
    metadata: dict[str, str | None]
    version: int  # Tally: the version shown; GET /plans/{code}/versions/{version} reads any.


class PlanResponse(Output):
    plan: PlanObject


class PlansResponse(Output):
    plans: list[PlanObject]
    meta: PaginationMeta


@dataclass(frozen=True)
class PlanAt:
    """A plan at one version, with the taxes that version names: what a PlanObject shows."""

    plan: Plan
    version: int
    taxes: Mapping[str, Tax]


def _at(billing: Billing, organization_id: UUID, plan: Plan, version: int | None = None) -> PlanAt:
    version = plan.version_number if version is None else version
    return PlanAt(plan, version, billing.plan_taxes(organization_id, plan, version))


def plan_object(view: PlanAt) -> PlanObject:
    plan, version = view.plan, view.version
    definition = plan.definition(version)

    def created_at(lago_id: str) -> str:
        return iso(plan.first_seen_at(lago_id, version)) or ""

    def taxes(codes: list[str]) -> list[TaxObject]:
        return [tax_object(view.taxes[code]) for code in codes if code in view.taxes]

    commitment = definition["minimum_commitment"]
    trial_period = definition["trial_period"]
    return PlanObject(
        lago_id=plan.id,
        name=definition["name"],
        invoice_display_name=definition["invoice_display_name"],
        created_at=iso(plan.created_on) or "",
        code=plan.code,
        interval=definition["interval"],
        description=definition["description"],
        amount_cents=definition["amount_cents"],
        amount_currency=definition["amount_currency"],
        trial_period=None if trial_period is None else json_number(Decimal(trial_period)),
        pay_in_advance=definition["pay_in_advance"],
        bill_charges_monthly=definition["bill_charges_monthly"],
        bill_fixed_charges_monthly=definition["bill_fixed_charges_monthly"],
        charges=[
            ChargeObject(
                lago_id=UUID(charge["lago_id"]),
                lago_billable_metric_id=UUID(charge["billable_metric_id"]),
                billable_metric_code=charge["billable_metric_code"],
                code=charge["code"],
                created_at=created_at(charge["lago_id"]),
                charge_model=charge["charge_model"],
                pay_in_advance=charge["pay_in_advance"],
                prorated=charge["prorated"],
                invoiceable=charge["invoiceable"],
                regroup_paid_fees=charge["regroup_paid_fees"],
                invoice_display_name=charge["invoice_display_name"],
                min_amount_cents=charge["min_amount_cents"],
                properties=charge["properties"],
                filters=[
                    ChargeFilterObject(
                        lago_id=UUID(item["lago_id"]),
                        invoice_display_name=item["invoice_display_name"],
                        properties=item["properties"],
                        values=item["values"],
                        created_at=created_at(item["lago_id"]),
                    )
                    for item in charge["filters"]
                ],
                taxes=taxes(charge["tax_codes"]),
                accepts_target_wallet=charge["accepts_target_wallet"],
            )
            for charge in definition["charges"]
        ],
        fixed_charges=[],
        minimum_commitment=(
            None
            if commitment is None
            else MinimumCommitmentObject(
                lago_id=UUID(commitment["lago_id"]),
                plan_code=plan.code,
                amount_cents=commitment["amount_cents"],
                invoice_display_name=commitment["invoice_display_name"],
                interval=definition["interval"],
                created_at=created_at(commitment["lago_id"]),
                updated_at=iso(plan.version_created_at(version)) or "",
                taxes=taxes(commitment["tax_codes"]),
            )
        ),
        usage_thresholds=[
            UsageThresholdObject(
                lago_id=UUID(threshold["lago_id"]),
                threshold_display_name=threshold["threshold_display_name"],
                amount_cents=threshold["amount_cents"],
                recurring=threshold["recurring"],
                created_at=created_at(threshold["lago_id"]),
                updated_at=created_at(threshold["lago_id"]),
            )
            for threshold in definition["usage_thresholds"]
        ],
        taxes=taxes(definition["tax_codes"]),
        metadata=definition["metadata"],
        version=version,
    )


def _filter_values(item: ChargeFilterInput) -> dict[str, Any]:
    return {
        "invoice_display_name": item.invoice_display_name,
        "properties": item.properties,
        "values": item.values,
    }


def _charge_values(charge: ChargeInput) -> dict[str, Any]:
    pricing_unit = charge.applied_pricing_unit
    return {
        "id": charge.id,
        "billable_metric_id": charge.billable_metric_id,
        "code": charge.code,
        "charge_model": charge.charge_model,
        "pay_in_advance": charge.pay_in_advance,
        "prorated": charge.prorated,
        "invoiceable": charge.invoiceable,
        "regroup_paid_fees": charge.regroup_paid_fees,
        "invoice_display_name": charge.invoice_display_name,
        "min_amount_cents": charge.min_amount_cents,
        "properties": charge.properties,
        "filters": None if charge.filters is None else [_filter_values(f) for f in charge.filters],
        "tax_codes": charge.tax_codes,
        "applied_pricing_unit": (
            None
            if pricing_unit is None
            else {"code": pricing_unit.code, "conversion_rate": pricing_unit.conversion_rate}
        ),
        "accepts_target_wallet": charge.accepts_target_wallet,
    }


def _values(body: PlanInput) -> dict[str, Any]:
    commitment = body.minimum_commitment
    thresholds = body.usage_thresholds
    return {
        "name": body.name,
        "invoice_display_name": body.invoice_display_name,
        "description": body.description,
        "interval": body.interval,
        "amount_cents": body.amount_cents,
        "amount_currency": body.amount_currency,
        "pay_in_advance": body.pay_in_advance,
        "trial_period": body.trial_period,
        "bill_charges_monthly": body.bill_charges_monthly,
        "bill_fixed_charges_monthly": body.bill_fixed_charges_monthly,
        "tax_codes": body.tax_codes,
        "minimum_commitment": (
            None
            if commitment is None
            else {
                "amount_cents": commitment.amount_cents,
                "invoice_display_name": commitment.invoice_display_name,
                "tax_codes": commitment.tax_codes,
            }
        ),
        "usage_thresholds": (
            None
            if thresholds is None
            else [
                {
                    "amount_cents": t.amount_cents,
                    "threshold_display_name": t.threshold_display_name,
                    "recurring": t.recurring,
                }
                for t in thresholds
            ]
        ),
        "metadata": body.metadata,
        "charges": None if body.charges is None else [_charge_values(c) for c in body.charges],
        "fixed_charges": body.fixed_charges,
    }


def _create(billing: Billing, organization_id: UUID, body: PlanInput) -> PlanAt:
    if not body.code:
        raise InvalidValueError("code", "value_is_mandatory", body.code)
    return _at(
        billing, organization_id, billing.create_plan(organization_id, body.code, _values(body))
    )


def _update(billing: Billing, organization_id: UUID, code: str, body: PlanInput) -> PlanAt:
    if body.code not in (None, code):
        # Lago renames a plan without subscriptions; ids here derive from the code.
        raise InvalidValueError("code", "value_is_immutable", body.code)
    return _at(billing, organization_id, billing.update_plan(organization_id, code, _values(body)))


def _find(billing: Billing, organization_id: UUID, code: str) -> PlanAt:
    return _at(billing, organization_id, billing.plan(organization_id, code))


def _find_all(
    billing: Billing, organization_id: UUID, page: int, per_page: int
) -> tuple[list[PlanAt], int]:
    plans, total = billing.plans(organization_id, page, per_page)
    return [_at(billing, organization_id, plan) for plan in plans], total


def _destroy(billing: Billing, organization_id: UUID, code: str) -> PlanAt:
    return _at(billing, organization_id, billing.delete_plan(organization_id, code))


PlanController = crud_controller(
    path="/plans",
    name="Plan",
    plural_name="Plans",
    root="plan",
    plural_root="plans",
    request=PlanRequest,
    response=PlanResponse,
    list_response=PlansResponse,
    to_object=plan_object,
    create=_create,
    update=_update,
    find=_find,
    find_all=_find_all,
    destroy=_destroy,
)


@get(
    "/plans/{code:str}/versions/{version:int}", operation_id="findPlanVersion", sync_to_thread=True
)
def plan_version(
    code: FromPath[str],
    version: FromPath[int],
    billing: NamedDependency[Billing],
    organization_id: NamedDependency[UUID],
) -> PlanResponse:
    """Tally extension: the plan as it was at one version (1 is the plan as created)."""
    plan = billing.plan_version(organization_id, code, version)
    return PlanResponse(plan=plan_object(_at(billing, organization_id, plan, version)))
