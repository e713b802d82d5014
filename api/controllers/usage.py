"""Lago's current usage of a customer's subscription."""

from collections import defaultdict
from datetime import timedelta
from decimal import Decimal
from typing import Any
from uuid import UUID

from litestar import Request, get
from litestar.di import NamedDependency, Provide
from litestar.params import FromPath, FromQuery

from api.http import Output, decimal_string, iso, parse_bool
from application.current_usage import CustomerUsage, UsageQueries
from application.rating import RatedCharge
from domain.rating import ChargeFee


class FilterUsageObject(Output):
    units: str
    total_aggregated_units: str
    amount_cents: int
    events_count: int
    values: dict[str, list[str]] | None
    invoice_display_name: str | None


class GroupedUsageObject(Output):
    amount_cents: int
    events_count: int
    units: str
    total_aggregated_units: str
    grouped_by: dict[str, str | None]
    filters: list[FilterUsageObject]


class ChargeRefObject(Output):
    lago_id: str
    charge_model: str
    invoice_display_name: str | None


class MetricRefObject(Output):
    lago_id: UUID
    name: str
    code: str
    aggregation_type: str


class ChargeUsageObject(Output):
    units: str
    total_aggregated_units: str
    events_count: int
    amount_cents: int
    amount_currency: str
    charge: ChargeRefObject
    billable_metric: MetricRefObject
    filters: list[FilterUsageObject]
    grouped_usage: list[GroupedUsageObject]


class CustomerUsageObject(Output):
    from_datetime: str
    to_datetime: str
    issuing_date: str
    currency: str
    amount_cents: int
    taxes_amount_cents: int
    total_amount_cents: int
    lago_invoice_id: None
    charges_usage: list[ChargeUsageObject]


class CustomerUsageResponse(Output):
    customer_usage: CustomerUsageObject


def _units(fees: list[ChargeFee]) -> str:
    return decimal_string(sum((fee.units for fee in fees), Decimal(0))) or "0"


def _filters(fees: list[ChargeFee]) -> list[FilterUsageObject]:
    """One entry per filter bucket, the default one (values null) included."""
    by_filter: dict[int, list[ChargeFee]] = defaultdict(list)
    for fee in fees:
        by_filter[fee.bucket.filter_index].append(fee)
    return [
        FilterUsageObject(
            units=_units(bucket),
            total_aggregated_units=_units(bucket),
            amount_cents=sum(f.amount_cents for f in bucket),
            events_count=sum(f.events_count for f in bucket),
            values=_values(bucket[0]),
            invoice_display_name=bucket[0].invoice_display_name,
        )
        for _, bucket in sorted(by_filter.items())
    ]


def _values(fee: ChargeFee) -> dict[str, list[str]] | None:
    if fee.filter_values is None:
        return None
    return {key: list(values) for key, values in fee.filter_values.items()}


def charge_usage_object(rated: RatedCharge, currency: str) -> ChargeUsageObject:
    fees = rated.fees
    has_filters = bool(rated.charge.get("filters"))
    groups: dict[tuple[tuple[str, str | None], ...], list[ChargeFee]] = defaultdict(list)
    for fee in fees:
        if fee.bucket.grouped_by:
            groups[fee.bucket.grouped_by].append(fee)
    return ChargeUsageObject(
        units=_units(fees),
        total_aggregated_units=_units(fees),
        events_count=sum(f.events_count for f in fees),
        amount_cents=rated.amount_cents,
        amount_currency=currency,
        charge=ChargeRefObject(
            lago_id=rated.charge["lago_id"],
            charge_model=rated.charge["charge_model"],
            invoice_display_name=rated.charge.get("invoice_display_name"),
        ),
        billable_metric=MetricRefObject(
            lago_id=rated.metric_id,
            name=rated.metric_name,
            code=rated.metric.code,
            aggregation_type=rated.metric.aggregation_type,
        ),
        filters=_filters(fees) if has_filters else [],
        grouped_usage=[
            GroupedUsageObject(
                amount_cents=sum(f.amount_cents for f in group),
                events_count=sum(f.events_count for f in group),
                units=_units(group),
                total_aggregated_units=_units(group),
                grouped_by=dict(key),
                filters=_filters(group) if has_filters else [],
            )
            for key, group in sorted(groups.items(), key=lambda item: repr(item[0]))
        ],
    )


def customer_usage_object(usage: CustomerUsage) -> CustomerUsageObject:
    return CustomerUsageObject(
        from_datetime=iso(usage.period.start_at) or "",
        # Lago renders the end inclusively: the last second of the period.
        to_datetime=iso(usage.period.end_at - timedelta(seconds=1)) or "",
        issuing_date=usage.issuing_date.isoformat(),
        currency=usage.currency,
        amount_cents=usage.amount_cents,
        taxes_amount_cents=usage.taxes_amount_cents,
        total_amount_cents=usage.total_amount_cents,
        lago_invoice_id=None,
        charges_usage=[charge_usage_object(c, usage.currency) for c in usage.charges],
    )


def provide_usage_queries(request: Request[Any, Any, Any]) -> UsageQueries:
    queries: UsageQueries = request.app.state.ledger.usage_queries
    return queries


@get(
    "/customers/{external_id:str}/current_usage",
    operation_id="findCustomerCurrentUsage",
    sync_to_thread=True,
    dependencies={"usage_queries": Provide(provide_usage_queries, sync_to_thread=False)},
)
def current_usage(
    external_id: FromPath[str],
    usage_queries: NamedDependency[UsageQueries],
    organization_id: NamedDependency[UUID],
    external_subscription_id: FromQuery[str],
    apply_taxes: FromQuery[str | None] = None,
) -> CustomerUsageResponse:
    """The open period's usage and its price so far, computed at request time."""
    usage = usage_queries.current_usage(
        organization_id,
        external_id,
        external_subscription_id,
        apply_taxes=parse_bool(apply_taxes, "apply_taxes", default=True),
        since_arrival=True,  # A read-only request: authentication's refresh serves it.
    )
    return CustomerUsageResponse(customer_usage=customer_usage_object(usage))
