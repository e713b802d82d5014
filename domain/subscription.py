"""Subscription: a customer on a plan, identified by organization and external_id.

A plan change keeps the subscription (and its lago_id): the subscription records phases, each a
plan version from an instant on. An upgrade starts a phase now; a downgrade schedules one at the
next period boundary, which a later change replaces.
"""

from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from typing import Any, Final
from uuid import UUID

from eventsourcing.domain import AggregateCreated, AggregateEvent, BaseAggregate, event

from domain import ids
from domain.customer import check_key
from domain.errors import InvalidValueError, NotAllowedError
from domain.limits import TEXT_LENGTH_MAX
from domain.periods import (
    BillingSchedule,
    Period,
    check_billing_time,
    local_date,
    local_midnight_at,
    trial_end_at,
)

STATUSES: Final = ("pending", "active", "terminated", "canceled")
ON_TERMINATION_INVOICE: Final = ("generate", "skip")
# Lago's spec says credit, refund, skip; its source also accepts offset (billing-semantics D11).
ON_TERMINATION_CREDIT_NOTE: Final = ("credit", "refund", "offset", "skip")
# Lago compares yearly base amounts to tell an upgrade from a downgrade (billing-semantics §5.6).
PERIODS_PER_YEAR: Final = {
    "weekly": 52,
    "monthly": 12,
    "quarterly": 4,
    "semiannual": 2,
    "yearly": 1,
}


class SubscriptionNotActiveError(NotAllowedError):
    code = "no_active_subscription"


class SubscriptionTerminatedError(NotAllowedError):
    code = "subscription_terminated"


@dataclass(frozen=True)
class PlanRef:
    """The plan version a phase bills, with what the subscription needs to know of it."""

    plan_id: UUID
    plan_code: str
    plan_version: int
    interval: str
    amount_cents: int
    amount_currency: str
    pay_in_advance: bool
    trial_period: Decimal

    def as_event(self) -> dict[str, Any]:
        return {
            "plan_id": str(self.plan_id),
            "plan_code": self.plan_code,
            "plan_version": self.plan_version,
            "interval": self.interval,
            "amount_cents": self.amount_cents,
            "amount_currency": self.amount_currency,
            "pay_in_advance": self.pay_in_advance,
            "trial_period": str(self.trial_period),
        }

    @classmethod
    def from_event(cls, data: dict[str, Any]) -> "PlanRef":
        return cls(
            plan_id=UUID(data["plan_id"]),
            plan_code=data["plan_code"],
            plan_version=data["plan_version"],
            interval=data["interval"],
            amount_cents=data["amount_cents"],
            amount_currency=data["amount_currency"],
            pay_in_advance=data["pay_in_advance"],
            trial_period=Decimal(data["trial_period"]),
        )

    @property
    def yearly_amount_cents(self) -> int:
        return self.amount_cents * PERIODS_PER_YEAR[self.interval]


@dataclass(frozen=True)
class Phase:
    starts_at: datetime
    plan: PlanRef
    reason: str  # "created", "upgrade", "downgrade", "overrides"


class Subscription(BaseAggregate[UUID]):
    TOPIC = "tally.Subscription"

    class Event(AggregateEvent):
        pass

    class Created(AggregateCreated, Event):
        TOPIC = "tally.Subscription.Created"
        organization_id: UUID
        external_id: str
        external_customer_id: str
        customer_id: UUID
        name: str | None
        plan: dict[str, Any]
        billing_time: str
        subscription_at: datetime
        ending_at: datetime | None
        timezone: str
        status: str

    class Updated(Event):
        TOPIC = "tally.Subscription.Updated"
        changes: dict[str, Any]

    class PlanChanged(Event):
        """A phase from starts_at on; phases after it (a pending downgrade) are replaced."""

        TOPIC = "tally.Subscription.PlanChanged"
        starts_at: datetime
        plan: dict[str, Any]
        reason: str

    class Terminated(Event):
        TOPIC = "tally.Subscription.Terminated"
        terminated_at: datetime
        on_termination_invoice: str
        on_termination_credit_note: str | None
        status: str

    class Canceled(Event):
        TOPIC = "tally.Subscription.Canceled"
        canceled_at: datetime
        status: str

    @staticmethod
    def create_id(organization_id: UUID, external_id: str) -> UUID:
        return ids.subscription_id(organization_id, external_id)

    # Commands decide.

    @classmethod
    def create(
        cls,
        organization_id: UUID,
        external_id: str,
        external_customer_id: str,
        customer_id: UUID,
        plan: PlanRef,
        *,
        name: str | None,
        billing_time: str | None,
        subscription_at: datetime | None,
        ending_at: datetime | None,
        timezone: str,
        now: datetime,
    ) -> "Subscription":
        # Without a subscription_at it starts now, floored to the second: an event stamped in
        # Unix seconds right after the create must find its subscription active.
        starts_at = subscription_at or now.replace(microsecond=0)
        if ending_at is not None and ending_at <= starts_at:
            raise InvalidValueError("ending_at", "invalid_date", ending_at)
        if name is not None and len(name) > TEXT_LENGTH_MAX:
            raise InvalidValueError("name", "value_is_invalid", name)
        return cls(
            organization_id=organization_id,
            external_id=check_key(external_id, "external_id"),
            external_customer_id=external_customer_id,
            customer_id=customer_id,
            name=name,
            plan=plan.as_event(),
            billing_time=check_billing_time(billing_time or "calendar"),
            subscription_at=starts_at,
            ending_at=ending_at,
            timezone=timezone,
            status="pending" if starts_at > now else "active",
        )

    def update(
        self,
        *,
        name: str | None,
        ending_at: datetime | None,
        subscription_at: datetime | None,
        now: datetime,
    ) -> None:
        """Lago's PUT: a name, an ending_at, and for a pending subscription its start."""
        self._check_not_ended(now)
        changes: dict[str, Any] = {}
        if name is not None and name != self.name:
            if len(name) > TEXT_LENGTH_MAX:
                raise InvalidValueError("name", "value_is_invalid", name)
            changes["name"] = name
        if subscription_at is not None and subscription_at != self.subscription_at:
            if self.status_at(now) != "pending":
                raise InvalidValueError("subscription_at", "cannot_change_started", subscription_at)
            changes["subscription_at"] = subscription_at
        start = changes.get("subscription_at", self.subscription_at)
        if ending_at is not None and ending_at != self.ending_at:
            if ending_at <= max(start, now):
                raise InvalidValueError("ending_at", "invalid_date", ending_at)
            changes["ending_at"] = ending_at
        if changes:
            self._updated(changes=changes)

    def change_plan(self, plan: PlanRef, now: datetime) -> str:
        """Lago's plan change by POST with another plan_code; returns upgrade or downgrade."""
        self._check_not_ended(now)
        current = self.plan_at(now)
        if plan.amount_currency != current.amount_currency:
            raise InvalidValueError("plan_code", "currencies_does_not_match", plan.plan_code)
        if self.status_at(now) == "pending":
            # Not started yet: the new plan simply replaces the old one from the start.
            self._plan_changed(
                starts_at=self.subscription_at, plan=plan.as_event(), reason="created"
            )
            return "upgrade"
        if plan.yearly_amount_cents >= current.yearly_amount_cents:
            self._plan_changed(
                starts_at=self._switch_at(now), plan=plan.as_event(), reason="upgrade"
            )
            return "upgrade"
        boundary = self.schedule_at(now).period_at(now).end_at
        self._plan_changed(starts_at=boundary, plan=plan.as_event(), reason="downgrade")
        return "downgrade"

    def apply_plan_version(self, plan: PlanRef, now: datetime) -> None:
        """New negotiated overrides: the current phase's plan gets a new version from now."""
        self._check_not_ended(now)
        current = self.plan_at(now)
        if plan.plan_id != current.plan_id or plan.plan_version != current.plan_version:
            self._plan_changed(
                starts_at=self._switch_at(now), plan=plan.as_event(), reason="overrides"
            )

    def terminate(
        self,
        now: datetime,
        on_termination_invoice: str | None,
        on_termination_credit_note: str | None,
    ) -> None:
        """Lago's DELETE: a pending subscription is canceled, an active one terminated now."""
        invoice = on_termination_invoice or "generate"
        if invoice not in ON_TERMINATION_INVOICE:
            raise InvalidValueError("on_termination_invoice", "value_is_invalid", invoice)
        credit_note = on_termination_credit_note
        if credit_note is not None and credit_note not in ON_TERMINATION_CREDIT_NOTE:
            raise InvalidValueError("on_termination_credit_note", "value_is_invalid", credit_note)
        status = self.status_at(now)
        if status in ("terminated", "canceled"):
            raise SubscriptionTerminatedError(f"Subscription {self.external_id} already ended.")
        if status == "pending":
            self._canceled(canceled_at=now, status="canceled")
        else:
            if credit_note is None and self.plan_at(now).pay_in_advance:
                credit_note = "credit"  # Lago's default for plans paid in advance.
            self._terminated(
                terminated_at=now,
                on_termination_invoice=invoice,
                on_termination_credit_note=credit_note,
                status="terminated",
            )

    def _switch_at(self, now: datetime) -> datetime:
        """Where an immediate change starts: the switch day belongs to the new plan (Tally rule,
        billing-semantics §5.6), so the local midnight of today, or the start if that is later."""
        return max(
            local_midnight_at(local_date(now, self.timezone), self.timezone), self.subscription_at
        )

    def _check_not_ended(self, now: datetime) -> None:
        if self.status_at(now) in ("terminated", "canceled"):
            raise SubscriptionTerminatedError(f"Subscription {self.external_id} already ended.")

    # Evolvers apply.

    @event(Created)
    def __init__(
        self,
        organization_id: UUID,
        external_id: str,
        external_customer_id: str,
        customer_id: UUID,
        name: str | None,
        plan: dict[str, Any],
        billing_time: str,
        subscription_at: datetime,
        ending_at: datetime | None,
        timezone: str,
        status: str,
    ) -> None:
        self.organization_id = organization_id
        self.external_id = external_id
        self.external_customer_id = external_customer_id
        self.customer_id = customer_id
        self.name = name
        self.billing_time = billing_time
        self.subscription_at = subscription_at
        self.ending_at = ending_at
        self.timezone = timezone
        self.phases = [Phase(subscription_at, PlanRef.from_event(plan), "created")]
        self.terminated_at: datetime | None = None
        self.canceled_at: datetime | None = None
        self.on_termination_invoice: str | None = None
        self.on_termination_credit_note: str | None = None

    @event(Updated)
    def _updated(self, changes: dict[str, Any]) -> None:
        for field, value in changes.items():
            setattr(self, field, value)
        if "subscription_at" in changes:
            self.phases = [Phase(self.subscription_at, p.plan, p.reason) for p in self.phases[:1]]

    @event(PlanChanged)
    def _plan_changed(self, starts_at: datetime, plan: dict[str, Any], reason: str) -> None:
        kept = [p for p in self.phases if p.starts_at < starts_at]
        self.phases = [*kept, Phase(starts_at, PlanRef.from_event(plan), reason)]

    @event(Terminated)
    def _terminated(
        self,
        terminated_at: datetime,
        on_termination_invoice: str,
        on_termination_credit_note: str | None,
        status: str,
    ) -> None:
        self.terminated_at = terminated_at
        self.on_termination_invoice = on_termination_invoice
        self.on_termination_credit_note = on_termination_credit_note
        # A downgrade scheduled after the termination never starts.
        self.phases = [p for p in self.phases if p.starts_at <= terminated_at] or self.phases[:1]

    @event(Canceled)
    def _canceled(self, canceled_at: datetime, status: str) -> None:
        self.canceled_at = canceled_at

    # Queries: pure functions of the history and an instant.

    @property
    def started_at(self) -> datetime:
        return self.subscription_at

    @property
    def ended_at(self) -> datetime | None:
        """When billing stops: termination, else ending_at (an automatic termination)."""
        if self.canceled_at is not None:
            return self.canceled_at
        if self.terminated_at is not None:
            return self.terminated_at
        return self.ending_at

    def status_at(self, instant: datetime) -> str:
        if self.canceled_at is not None:
            return "canceled"
        ended_at = self.ended_at
        if ended_at is not None and instant >= ended_at:
            return "terminated"
        if instant < self.subscription_at:
            return "pending"
        return "active"

    def is_active_at(self, instant: datetime) -> bool:
        """Whether usage at this instant belongs to the subscription."""
        if self.canceled_at is not None or instant < self.subscription_at:
            return False
        ended_at = self.ended_at
        return ended_at is None or instant < ended_at

    def phase_at(self, instant: datetime) -> Phase:
        current = self.phases[0]
        for phase in self.phases[1:]:
            if phase.starts_at <= instant:
                current = phase
        return current

    def plan_at(self, instant: datetime) -> PlanRef:
        return self.phase_at(instant).plan

    def pending_phase(self, now: datetime) -> Phase | None:
        """A scheduled downgrade: a phase that starts after now."""
        later = [p for p in self.phases if p.starts_at > now and p.starts_at > self.subscription_at]
        return later[-1] if later else None

    def previous_plan_code(self, now: datetime) -> str | None:
        started = [p for p in self.phases if p.starts_at <= now]
        codes = [p.plan.plan_code for p in started]
        return codes[-2] if len(codes) >= 2 and codes[-2] != codes[-1] else None

    @property
    def subscription_date(self) -> date:
        """The local date the subscription started: the anniversary anchor."""
        return local_date(self.subscription_at, self.timezone)

    def schedule_at(self, instant: datetime) -> BillingSchedule:
        """The billing schedule of the phase in force at the instant.

        A phase keeps the subscription's anchor (Lago keeps the anniversary on a plan change);
        its own first period starts at the phase start.
        """
        phase = self.phase_at(instant)
        return BillingSchedule(
            subscription_date=self.subscription_date,
            started_at=phase.starts_at,
            billing_time=self.billing_time,
            interval=phase.plan.interval,
            timezone=self.timezone,
        )

    def current_period(self, now: datetime) -> Period | None:
        """The billing period open at now (cut at the phase start), None unless active."""
        if not self.is_active_at(now):
            return None
        return self.schedule_at(now).period_at(now)

    def trial_ended_at(self) -> datetime | None:
        trial = self.phases[0].plan.trial_period
        return trial_end_at(self.subscription_at, trial) if trial > 0 else None
