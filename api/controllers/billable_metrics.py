"""Lago's billable_metrics resource."""

from typing import Any
from uuid import UUID

from api.http import Envelope, Input, Output, PaginationMeta, iso
from api.resources import crud_controller
from application.billing import Billing
from domain.billable_metric import FIELDS, BillableMetric
from domain.errors import InvalidValueError


class MetricFilterInput(Input):
    key: str
    values: list[str]


class BillableMetricInput(Input):
    name: str | None = None
    code: str | None = None
    description: str | None = None
    aggregation_type: str | None = None
    field_name: str | None = None
    recurring: bool | None = None
    weighted_interval: str | None = None
    rounding_function: str | None = None
    rounding_precision: int | None = None
    expression: str | None = None
    filters: list[MetricFilterInput] | None = None


class BillableMetricRequest(Envelope):
    billable_metric: BillableMetricInput


class MetricFilterObject(Output):
    key: str
    values: list[str]


class BillableMetricObject(Output):
    lago_id: UUID
    name: str
    code: str
    description: str | None
    aggregation_type: str
    weighted_interval: str | None
    recurring: bool
    rounding_function: str | None
    rounding_precision: int | None
    created_at: str
    field_name: str | None
    expression: str | None
    filters: list[MetricFilterObject]
    active_subscriptions_count: int
    draft_invoices_count: int
    plans_count: int


class BillableMetricResponse(Output):
    billable_metric: BillableMetricObject


class BillableMetricsResponse(Output):
    billable_metrics: list[BillableMetricObject]
    meta: PaginationMeta


def billable_metric_object(metric: BillableMetric) -> BillableMetricObject:
    definition = metric.definition
    return BillableMetricObject(
        lago_id=metric.id,
        name=definition["name"],
        code=metric.code,
        description=definition["description"],
        aggregation_type=definition["aggregation_type"],
        weighted_interval=definition["weighted_interval"],
        recurring=definition["recurring"],
        rounding_function=definition["rounding_function"],
        rounding_precision=definition["rounding_precision"],
        created_at=iso(metric.created_on) or "",
        field_name=definition["field_name"],
        expression=definition["expression"],
        filters=[
            MetricFilterObject(key=f["key"], values=f["values"]) for f in definition["filters"]
        ],
        active_subscriptions_count=0,
        draft_invoices_count=0,
        plans_count=0,
    )


def _values(body: BillableMetricInput) -> dict[str, Any]:
    values: dict[str, Any] = {field: getattr(body, field) for field in FIELDS}
    if body.filters is not None:
        values["filters"] = [{"key": f.key, "values": f.values} for f in body.filters]
    return values


def _create(billing: Billing, organization_id: UUID, body: BillableMetricInput) -> BillableMetric:
    if not body.code:
        raise InvalidValueError("code", "value_is_mandatory", body.code)
    return billing.create_billable_metric(organization_id, body.code, _values(body))


def _update(
    billing: Billing, organization_id: UUID, code: str, body: BillableMetricInput
) -> BillableMetric:
    if body.code not in (None, code):
        raise InvalidValueError("code", "value_is_immutable", body.code)
    return billing.update_billable_metric(organization_id, code, _values(body))


BillableMetricController = crud_controller(
    path="/billable_metrics",
    name="BillableMetric",
    plural_name="BillableMetrics",
    root="billable_metric",
    plural_root="billable_metrics",
    request=BillableMetricRequest,
    response=BillableMetricResponse,
    list_response=BillableMetricsResponse,
    to_object=billable_metric_object,
    create=_create,
    update=_update,
    find=Billing.billable_metric,
    find_all=Billing.billable_metrics,
    destroy=Billing.delete_billable_metric,
)
