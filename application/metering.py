"""Metering: validate usage events synchronously and append them to the usage log.

Unlike Lago, nothing invalid is accepted silently (billing-semantics §2.3, D7): an unknown code,
a subscription that does not cover the timestamp, a missing or non-numeric aggregation field or
an undeclared filter value is a 422 naming the event and the field. A batch is all or nothing.
"""

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, Final, Protocol, cast
from uuid import UUID

from eventsourcing.application import AggregateNotFoundError

from application.base import BillingBase
from application.errors import ApplicationError, NotFoundError, TransactionIdConflictError
from application.fresh_aggregates import FreshAggregates
from application.usage_log import StoredUsage, UsageLog
from domain import ids
from domain.billable_metric import BillableMetric
from domain.charges import pricing_group_keys
from domain.errors import InvalidValueError
from domain.limits import EVENTS_BATCH_MAX, KEY_LENGTH_MAX
from domain.subscription import Subscription
from domain.usage import (
    UsageEvent,
    check_filter_values,
    check_not_in_future,
    dimension_key,
    metric_value,
    normalise_properties,
    parse_precise_total_amount_cents,
    parse_timestamp,
    payload_fingerprint,
)

# Subscriptions (or metrics) an organization's validation context keeps at most.
CONTEXT_ENTRIES_MAX: Final = 100_000
_UNKNOWN: Final = object()  # Not looked up yet (None: looked up, not found).


class EventFields(Protocol):
    """One event as the API decoded it (its body struct) or a caller built it (EventInput);
    nothing is validated yet."""

    @property
    def transaction_id(self) -> str | None: ...
    @property
    def external_subscription_id(self) -> str | None: ...
    @property
    def code(self) -> str | None: ...
    @property
    def timestamp(self) -> str | int | Decimal | None: ...
    @property
    def properties(self) -> Mapping[str, Any] | None: ...
    @property
    def precise_total_amount_cents(self) -> str | int | Decimal | None: ...


@dataclass(frozen=True)
class EventInput:
    """EventFields built in Python."""

    transaction_id: str | None
    external_subscription_id: str | None
    code: str | None
    timestamp: str | int | Decimal | None
    properties: Mapping[str, Any] | None
    precise_total_amount_cents: str | int | Decimal | None


class EventRejectedError(ApplicationError):
    """An event failed validation; `index` is its position in a batch (None for a single one)."""

    def __init__(self, index: int | None, field: str, reason: str, detail: str) -> None:
        where = "The event" if index is None else f"Event {index}"
        super().__init__(f"{where}: {detail}")
        self.index = index
        self.field = field
        self.reason = reason


class BatchSizeError(ApplicationError):
    def __init__(self, reason: str, size: int, maximum: int) -> None:
        super().__init__(f"A batch holds 1 to {maximum} events, not {size}.")
        self.reason = reason


class Metering:
    def __init__(
        self,
        billing: BillingBase,
        usage: UsageLog,
        *,
        batch_max: int = EVENTS_BATCH_MAX,
    ) -> None:
        self.billing = billing
        self.usage = usage
        self.batch_max = batch_max
        self.aggregates = FreshAggregates.of(billing)
        # Called after each commit of usage (the top-up worker): they must only enqueue.
        self.observers: list[Callable[[UUID, list[StoredUsage]], None]] = []

    def ingest(
        self, organization_id: UUID, events: Sequence[EventFields], *, batch: bool
    ) -> list[StoredUsage]:
        """Validate every event, then append them all in one transaction (or none).

        Returns the stored records in input order; an identical re-send returns the record
        stored first, counted once.
        """
        if batch and not events:
            raise BatchSizeError("no_events", 0, self.batch_max)
        if batch and len(events) > self.batch_max:
            raise BatchSizeError("too_many_events", len(events), self.batch_max)
        received_at = self.billing.now().astimezone(UTC)
        self.aggregates.refresh(since_arrival=True)
        context = self._context(organization_id)
        records = []
        for position, event in enumerate(events):
            index = position if batch else None
            try:
                records.append(context.record(event, received_at))
            except InvalidValueError as error:
                raise EventRejectedError(index, error.field, error.reason, str(error)) from None
        try:
            stored = self.usage.append(records)
        except TransactionIdConflictError as error:
            raise EventRejectedError(
                error.index if batch else None,
                "transaction_id",
                "value_already_exist",
                str(error),
            ) from None
        for observer in self.observers:
            observer(organization_id, stored)
        return stored

    def validate(self, organization_id: UUID, event: EventFields) -> StoredUsage:
        """The event as ingest would record it, checked the same way (422 naming the field);
        nothing is stored: Lago's estimate_fees."""
        received_at = self.billing.now().astimezone(UTC)
        self.aggregates.refresh(since_arrival=True)
        try:
            return self._context(organization_id).record(event, received_at)
        except InvalidValueError as error:
            raise EventRejectedError(None, error.field, error.reason, str(error)) from None

    def _context(self, organization_id: UUID) -> "_Context":
        """What validation loads, shared by the organization's requests until the next change
        recorded in the store (FreshAggregates.memo: after the refresh each ingest starts with,
        a change committed before the request arrived is seen)."""
        return self.aggregates.memo(
            ("ingest", organization_id), lambda: _Context(self.aggregates, organization_id)
        )

    def void(
        self, organization_id: UUID, transaction_id: str, external_subscription_id: str | None
    ) -> StoredUsage:
        """Void a stored event (Tally extension): its reversal goes into the log, its usage out
        of current usage, and invoices at a later watermark; nothing is deleted. Voiding it
        again answers the same (the first void's time)."""
        subscription = _required(external_subscription_id, "external_subscription_id")
        voided = self.usage.void(
            organization_id,
            transaction_id,
            subscription,
            self.billing.now().astimezone(UTC),
        )
        if voided is None:
            raise NotFoundError("event", transaction_id)
        return voided

    def event(
        self, organization_id: UUID, transaction_id: str, external_subscription_id: str | None
    ) -> StoredUsage:
        found = self.usage.find(organization_id, transaction_id, external_subscription_id)
        if found is None:
            raise NotFoundError("event", transaction_id)
        return found


class _Context:
    """What validating events needs, loaded once per subscription and metric (requests in
    several threads share it: each entry is set whole, and two threads may load one twice)."""

    def __init__(self, aggregates: FreshAggregates, organization_id: UUID) -> None:
        self.aggregates = aggregates
        self.organization_id = organization_id
        self.subscriptions: dict[str, object] = {}  # A Subscription, or None: not found.
        self.metrics: dict[str, object] = {}  # A BillableMetric, or None: none live.
        self.filters: dict[str, dict[str, Any]] = {}
        # By plan code and version (they name one plan version in the organization), and code.
        self.dimension_keys: dict[tuple[str, int, str], tuple[str, ...]] = {}

    def record(self, event: EventFields, received_at: datetime) -> StoredUsage:
        transaction_id = _required(event.transaction_id, "transaction_id")
        external_subscription_id = _required(
            event.external_subscription_id, "external_subscription_id"
        )
        code = _required(event.code, "code")
        timestamp = parse_timestamp(event.timestamp, received_at)
        check_not_in_future(timestamp, received_at)
        properties = normalise_properties(event.properties)
        precise = parse_precise_total_amount_cents(event.precise_total_amount_cents)
        metric = self._metric(code)
        subscription = self._subscription(external_subscription_id)
        if not subscription.is_active_at(timestamp):
            raise InvalidValueError("timestamp", "subscription_not_active", timestamp.isoformat())
        value = metric_value(properties, metric.aggregation_type, metric.field_name)
        check_filter_values(properties, self._filters(code, metric))
        keys = self._dimension_keys(subscription, timestamp, code, metric)
        usage_event = UsageEvent.normalised(
            self.organization_id,
            external_subscription_id,
            transaction_id,
            code,
            timestamp,
            properties,
            precise,
            event.timestamp is not None,
        )
        return StoredUsage(
            event=usage_event,
            value=value if isinstance(value, Decimal) else None,
            dimensions=dimension_key(properties, keys),
            fingerprint=payload_fingerprint(usage_event),
            received_at=received_at,
        )

    def _metric(self, code: str) -> BillableMetric:
        found = self.metrics.get(code, _UNKNOWN)
        if found is _UNKNOWN:
            metric = self._load(ids.billable_metric_id(self.organization_id, code))
            found = None if metric is None or metric.deleted else metric
            _remember(self.metrics, code, found)
        if found is None:
            raise InvalidValueError("code", "metric_not_found", code)
        return cast(BillableMetric, found)

    def _subscription(self, external_id: str) -> Subscription:
        found = self.subscriptions.get(external_id, _UNKNOWN)
        if found is _UNKNOWN:
            found = self._load(ids.subscription_id(self.organization_id, external_id))
            _remember(self.subscriptions, external_id, found)
        if found is None:
            raise InvalidValueError(
                "external_subscription_id", "subscription_not_found", external_id
            )
        return cast(Subscription, found)

    def _load(self, aggregate_id: UUID) -> Any:
        try:
            return self.aggregates.get(aggregate_id)
        except AggregateNotFoundError:
            return None

    def _filters(self, code: str, metric: BillableMetric) -> dict[str, Any]:
        """The metric's filter values by key (once per request and metric)."""
        if code not in self.filters:
            self.filters[code] = {f["key"]: f["values"] for f in metric.definition["filters"]}
        return self.filters[code]

    def _dimension_keys(
        self, subscription: Subscription, at: datetime, code: str, metric: BillableMetric
    ) -> tuple[str, ...]:
        """The metric's filter keys and the pricing group keys of the charges on this metric in
        the plan version in force, sorted (kept with the context: reading a plan's definition
        copies it)."""
        plan = subscription.plan_at(at)
        key = (plan.plan_code, plan.plan_version, code)
        found = self.dimension_keys.get(key)
        if found is None:
            group_keys = _group_keys(self.aggregates, plan.plan_id, plan.plan_version, code)
            found = self.dimension_keys[key] = tuple(sorted({*metric.filter_keys, *group_keys}))
        return found


def _remember(cache: dict[str, object], key: str, value: object) -> None:
    if len(cache) >= CONTEXT_ENTRIES_MAX:
        cache.clear()  # Bounded: what is asked again is loaded again.
    cache[key] = value


def _group_keys(aggregates: FreshAggregates, plan_id: UUID, version: int, code: str) -> list[str]:
    plan: Any = aggregates.get(plan_id)  # domain.plan.Plan
    keys: list[str] = []
    for charge in plan.definition(version).get("charges", []):
        if charge["billable_metric_code"] == code:
            keys.extend(pricing_group_keys(charge["properties"]))
            for charge_filter in charge.get("filters", []):
                keys.extend(pricing_group_keys(charge_filter["properties"]))
    return keys


def _required(value: str | None, field: str) -> str:
    if type(value) is str and 0 < len(value) <= KEY_LENGTH_MAX and "\x00" not in value:
        return value  # The common case, first.
    if value is None or value == "":
        raise InvalidValueError(field, "value_is_mandatory", value)
    # PostgreSQL's text holds no NUL: refused on every store alike.
    if not isinstance(value, str) or len(value) > KEY_LENGTH_MAX or "\x00" in value:
        raise InvalidValueError(field, "value_is_invalid", value)
    return value
