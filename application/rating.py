"""Rating a subscription's usage over a period, from the rollups or from the raw log.

Three sources of the same totals. Without a watermark (current usage), the rollups serve what
they can. At a watermark (invoices), the billing run reads the raw log up to it aggregated by the
store, one read per subscription and period (UsageLog.totals_at: per code and dimension values,
from the stored values), or one read for many within `prefetched()` (ADR 0027); the audit,
within `from_events()`, reads every event and aggregates them here from their properties, the
reference that proves the run (ADR 0025). What neither totals path can answer (unique counts,
weighted sums, percentages, proration, a charge keyed on a property the stored dimensions lack)
is always aggregated from the events. All classify into the same buckets (domain/rating.py), so
they agree exactly.
"""

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

from application.base import BillingBase
from application.fresh_aggregates import FreshAggregates
from application.usage_log import Span, UsageLog, UsageTotal
from domain import ids
from domain.billable_metric import BillableMetric
from domain.charges import pricing_group_keys
from domain.periods import Period
from domain.rating import (
    ChargeFee,
    MetricRule,
    aggregate_events,
    aggregate_totals,
    charge_filters,
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


_FROM_EVENTS: ContextVar[bool] = ContextVar("tally_rating_from_events", default=False)
_SNAPSHOT: ContextVar[bool] = ContextVar("tally_rating_snapshot", default=False)


@dataclass(frozen=True)
class Prefetched:
    """totals_at() of many spans of one organization, read at once (Rating.prefetch)."""

    organization_id: UUID
    codes: frozenset[str]
    up_to_position: int
    totals: dict[Span, dict[str, list[UsageTotal]]]


_PREFETCHED: ContextVar[Prefetched | None] = ContextVar("tally_rating_prefetched", default=None)


@contextmanager
def from_events() -> Iterator[None]:
    """Within this block (this thread or task only), rating at a watermark reads every event
    and aggregates it from its properties: the audit's reference path."""
    token = _FROM_EVENTS.set(True)
    try:
        yield
    finally:
        _FROM_EVENTS.reset(token)


class Rating:
    def __init__(self, billing: BillingBase, usage: UsageLog) -> None:
        self.billing = billing
        self.usage = usage
        self.aggregates = FreshAggregates.of(billing)

    @contextmanager
    def snapshot(self, *, since_arrival: bool = False) -> Iterator[None]:
        """Within this block (this thread or task only), metric definitions are those of its
        start: one refresh for a whole billing run instead of one per subscription. A request
        that only reads may take the refresh its authentication made (since_arrival)."""
        self.aggregates.refresh(since_arrival=since_arrival)
        token = _SNAPSHOT.set(True)
        try:
            yield
        finally:
            _SNAPSHOT.reset(token)

    def prefetch(
        self,
        organization_id: UUID,
        spans: Sequence[Span],
        codes: Sequence[str],
        up_to_position: int,
    ) -> Prefetched:
        """The totals of these codes over these (subscription, start, end) spans at
        up_to_position, in one read, for `prefetched()`."""
        totals = self.usage.totals_at_many(organization_id, spans, codes, up_to_position)
        return Prefetched(organization_id, frozenset(codes), up_to_position, totals)

    @contextmanager
    def prefetched(self, found: Prefetched) -> Iterator[None]:
        """Within this block (this thread or task only), rating the spans read by `prefetch()`
        at its watermark takes their totals from it; anything else reads as usual."""
        token = _PREFETCHED.set(found)
        try:
            yield
        finally:
            _PREFETCHED.reset(token)

    def _totals_at(
        self,
        organization_id: UUID,
        external_subscription_id: str,
        codes: Sequence[str],
        start_at: datetime,
        end_at: datetime,
        up_to_position: int,
    ) -> dict[str, list[UsageTotal]]:
        found = _PREFETCHED.get()
        if (
            found is not None
            and found.organization_id == organization_id
            and found.up_to_position == up_to_position
            and found.codes.issuperset(codes)
        ):
            totals = found.totals.get((external_subscription_id, start_at, end_at))
            if totals is not None:
                return {code: totals[code] for code in codes if code in totals}
        return self.usage.totals_at(
            organization_id, external_subscription_id, codes, start_at, end_at, up_to_position
        )

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
        audit's path), aggregated by the store unless within `from_events()`; without, rollups
        serve what they can.
        """
        currency = plan_definition["amount_currency"]
        if not _SNAPSHOT.get():
            self.aggregates.refresh()  # Metric definitions as they are now.
        charges = [
            # A deleted metric still rates the plan versions that used it.
            (charge, *self.metric(organization_id, charge["billable_metric_code"]))
            for charge in plan_definition.get("charges", [])
        ]
        at_watermark: tuple[dict[str, list[UsageTotal]], dict[str, list[UsageTotal]]] | None
        at_watermark = None
        if up_to_position is not None and not _FROM_EVENTS.get():
            # One read for every charge of the period (and one for the recurring metrics'
            # history), instead of the events of each charge.
            codes = [rule.code for charge, _, rule in charges if not needs_events(charge, rule)]
            recurring = [
                rule.code
                for charge, _, rule in charges
                if not needs_events(charge, rule) and rule.recurring
            ]
            if codes:
                at_watermark = (
                    self._totals_at(
                        organization_id,
                        external_subscription_id,
                        codes,
                        period.start_at,
                        period.end_at,
                        up_to_position,
                    ),
                    self._totals_at(
                        organization_id,
                        external_subscription_id,
                        recurring,
                        EPOCH,
                        period.start_at,
                        up_to_position,
                    )
                    if recurring
                    else {},
                )
        rated = []
        for charge, metric, rule in charges:
            from_totals = (
                None
                if at_watermark is None or needs_events(charge, rule)
                else _covered(
                    charge,
                    at_watermark[0].get(rule.code, []),
                    at_watermark[1].get(rule.code, []) if rule.recurring else [],
                )
            )
            use_events = from_totals is None and (
                up_to_position is not None
                or needs_events(charge, rule)
                or not _aligned(period.start_at)
                or not _aligned(period.end_at)
            )
            if from_totals is not None:
                totals, history = from_totals
                aggregates = aggregate_totals(
                    charge,
                    rule,
                    [(t.dimensions, t.rollup, t.precise_total_amount_cents) for t in totals],
                    [(t.dimensions, t.rollup, t.precise_total_amount_cents) for t in history],
                )
            elif use_events:
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


def _covered(
    charge: Mapping[str, Any], totals: Sequence[UsageTotal], history: Sequence[UsageTotal]
) -> tuple[Sequence[UsageTotal], Sequence[UsageTotal]] | None:
    """The totals, if their dimensions name every property the charge classifies by (its
    filters' keys and its pricing group keys); else None, and the events must be read. The
    dimensions hold the keys known when each event was ingested, so a filter or group key added
    since is missing from the older events' totals."""
    keys = {key for values in charge_filters(charge) for key in values}
    keys.update(pricing_group_keys(charge.get("properties")))
    for charge_filter in charge.get("filters", []):
        keys.update(pricing_group_keys(charge_filter.get("properties")))
    for total in (*totals, *history):
        if not keys <= {key for key, _ in total.dimensions}:
            return None
    return totals, history


def _aligned(instant: datetime) -> bool:
    return (instant - EPOCH).total_seconds() % BUCKET_SECONDS == 0
