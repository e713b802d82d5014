"""Rating a subscription's usage over a period, from the rollups or from the raw log.

The rollups are the fast path (current usage, the billing run); the raw log up to a watermark is
the reference (audit replay, and the aggregations rollups cannot answer). Both classify events
into the same buckets (domain/rating.py), so they agree exactly.
"""

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

from application.base import BillingBase
from application.fresh_aggregates import FreshAggregates
from application.usage_log import UsageLog
from domain import ids
from domain.billable_metric import BillableMetric
from domain.periods import Period
from domain.rating import (
    ChargeFee,
    MetricRule,
    aggregate_events,
    aggregate_totals,
    needs_events,
    rate_charge,
)
from domain.usage import BUCKET_SECONDS, EPOCH


@dataclass(frozen=True)
class RatedCharge:
    charge: Mapping[str, Any]
    metric: MetricRule
    metric_id: UUID
    metric_name: str
    fees: list[ChargeFee]

    @property
    def amount_cents(self) -> int:
        return sum(fee.amount_cents for fee in self.fees)


class Rating:
    def __init__(self, billing: BillingBase, usage: UsageLog) -> None:
        self.billing = billing
        self.usage = usage
        self.aggregates = FreshAggregates.of(billing)

    def metric(self, organization_id: UUID, code: str) -> tuple[BillableMetric, MetricRule]:
        metric: BillableMetric = self.aggregates.get(ids.billable_metric_id(organization_id, code))
        return metric, MetricRule.from_definition(code, metric.definition)

    def rate_charges(
        self,
        organization_id: UUID,
        external_subscription_id: str,
        plan_definition: Mapping[str, Any],
        period: Period,
        timezone: str,
        *,
        up_to_position: int | None = None,
    ) -> list[RatedCharge]:
        """Every charge of the plan version over the period (events with timestamps in it).

        With up_to_position (a watermark), only the raw log as it stood at that watermark is
        read: events at or below it, less those voided at or below it (the invoices' and the
        audit's path); without, rollups serve what they can.
        """
        currency = plan_definition["amount_currency"]
        self.aggregates.refresh()  # Metric definitions as they are now.
        rated = []
        for charge in plan_definition.get("charges", []):
            # A deleted metric still rates the plan versions that used it.
            metric, rule = self.metric(organization_id, charge["billable_metric_code"])
            use_events = (
                up_to_position is not None
                or needs_events(charge, rule)
                or not _aligned(period.start_at)
                or not _aligned(period.end_at)
            )
            if use_events:
                start = EPOCH if rule.recurring else period.start_at
                stored = self.usage.events(
                    organization_id,
                    external_subscription_id,
                    rule.code,
                    start,
                    period.end_at,
                    up_to_position,
                )
                aggregates = aggregate_events(
                    charge,
                    rule,
                    [s.event for s in stored],
                    period.start_at,
                    period.end_at,
                    timezone,
                )
            else:
                totals = self.usage.totals(
                    organization_id,
                    external_subscription_id,
                    rule.code,
                    period.start_at,
                    period.end_at,
                )
                history = (
                    self.usage.totals(
                        organization_id,
                        external_subscription_id,
                        rule.code,
                        EPOCH,
                        period.start_at,
                    )
                    if rule.recurring
                    else []
                )
                aggregates = aggregate_totals(
                    charge,
                    rule,
                    [(t.dimensions, t.rollup, t.precise_total_amount_cents) for t in totals],
                    [(t.dimensions, t.rollup, t.precise_total_amount_cents) for t in history],
                )
            rated.append(
                RatedCharge(
                    charge=charge,
                    metric=rule,
                    metric_id=metric.id,
                    metric_name=metric.definition["name"],
                    fees=rate_charge(charge, rule, aggregates, currency),
                )
            )
        return rated


def _aligned(instant: datetime) -> bool:
    return (instant - EPOCH).total_seconds() % BUCKET_SECONDS == 0
