"""An obviously correct model of what a subscription bills, written from billing-semantics §5
without the production code: periods from the anchor (§5.2), proration by local dates (§5.3),
phases for plan changes (§5.6), termination (§5.7), flat per-unit charges rounded half-up once
per period (§1.4). The battery's oracles (R5, R8, R14) compare invoices with it.

Arrears plans only: in-advance fees and their credit notes are not modelled.
"""

import calendar
import itertools
import math
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from fractions import Fraction
from zoneinfo import ZoneInfo

MONTHS = {"monthly": 1, "quarterly": 3, "semiannual": 6, "yearly": 12}
PER_YEAR = {"weekly": 52, "monthly": 12, "quarterly": 4, "semiannual": 2, "yearly": 1}
MICROSECOND = timedelta(microseconds=1)


def half_up(value: Fraction | Decimal) -> int:
    """Round to the nearest integer, halves up (the amounts are never negative)."""
    exact = Fraction(value)
    assert exact >= 0, value
    return math.floor(exact + Fraction(1, 2))


def midnight(day: date, timezone: str) -> datetime:
    """The UTC instant a local date starts."""
    return datetime.combine(day, time(), ZoneInfo(timezone)).astimezone(UTC)


def local_date(instant: datetime, timezone: str) -> date:
    return instant.astimezone(ZoneInfo(timezone)).date()


def days_touched(start: datetime, end: datetime, timezone: str) -> int:
    """The local dates [start, end) touches, both ends inclusive (§5.3)."""
    return (local_date(end - MICROSECOND, timezone) - local_date(start, timezone)).days + 1


def add_months(day: date, months: int, anchor_day: int) -> date:
    """`day` moved by whole months, on the anchor's day clamped to the month's length."""
    month_index = day.year * 12 + day.month - 1 + months
    year, month = divmod(month_index, 12)
    return date(year, month + 1, min(anchor_day, calendar.monthrange(year, month + 1)[1]))


def period_start_dates(
    anchor: date, interval: str, billing_time: str, first: date, last: date
) -> list[date]:
    """Every period start (a local date) from the one holding `first` to the first after
    `last`, each derived from the anchor, never from the previous start (§5.2)."""
    if interval == "weekly":
        # Calendar weeks start on Monday; anniversary weeks on the anchor's weekday.
        origin = anchor - timedelta(days=anchor.weekday()) if billing_time == "calendar" else anchor
        k = (first - origin).days // 7
        starts = [origin + timedelta(days=7 * k)]
        while starts[-1] <= last:
            starts.append(starts[-1] + timedelta(days=7))
        return starts
    months = MONTHS[interval]
    # Calendar periods start on the 1st of January and every `months` after it.
    origin, anchor_day = (
        (date(2000, 1, 1), 1) if billing_time == "calendar" else (anchor, anchor.day)
    )

    def start(k: int) -> date:
        return add_months(origin, k * months, anchor_day)

    k = ((first.year - origin.year) * 12 + first.month - origin.month) // months
    while start(k) > first:
        k -= 1
    while start(k + 1) <= first:
        k += 1
    starts = [start(k)]
    while starts[-1] <= last:
        k += 1
        starts.append(start(k))
    return starts


@dataclass
class Phase:
    starts_at: datetime
    interval: str
    amount_cents: int
    unit_price: Decimal  # Per unit, in currency units (a standard charge).
    plan_code: str = ""
    plan_version: int = 1


@dataclass
class Window:
    """A part of one period billed at its end: a base fee and the charges of its usage."""

    start: datetime
    end: datetime
    full_start: datetime
    full_end: datetime
    phase: Phase

    def base_fee_cents(self, timezone: str) -> int:
        days = days_touched(self.start, self.end, timezone)
        full = days_touched(self.full_start, self.full_end, timezone)
        return half_up(Fraction(self.phase.amount_cents * days, full))

    def charge_cents(self, units: Decimal) -> int:
        return half_up(units * self.phase.unit_price * 100)


@dataclass
class ModelSubscription:
    external_id: str
    external_customer_id: str
    subscription_at: datetime
    timezone: str
    billing_time: str
    phases: list[Phase]
    ended_at: datetime | None = None
    events: list[tuple[datetime, Decimal, datetime]] = field(
        default_factory=list
    )  # at, units, arrival

    @property
    def anchor(self) -> date:
        return local_date(self.subscription_at, self.timezone)

    def phase_at(self, instant: datetime) -> Phase:
        current = self.phases[0]
        for phase in self.phases[1:]:
            if phase.starts_at <= instant:
                current = phase
        return current

    def period_at(self, instant: datetime, phase: Phase) -> tuple[datetime, datetime]:
        """The full period of the phase's interval holding the instant."""
        day = local_date(instant, self.timezone)
        starts = period_start_dates(
            self.anchor, phase.interval, self.billing_time, day, day + timedelta(days=1)
        )
        for start, end in itertools.pairwise(starts):
            start_at, end_at = midnight(start, self.timezone), midnight(end, self.timezone)
            if start_at <= instant < end_at:
                return start_at, end_at
        raise AssertionError((instant, starts))

    def change_plan(self, phase: Phase, now: datetime) -> str:
        """§5.6: an upgrade from today's local midnight, a downgrade at the period end."""
        current = self.phase_at(now)
        if now < self.subscription_at:
            self.phases = [Phase(self.subscription_at, *_plan(phase))]
            return "upgrade"
        if (
            phase.amount_cents * PER_YEAR[phase.interval]
            >= current.amount_cents * PER_YEAR[current.interval]
        ):
            starts_at = max(
                midnight(local_date(now, self.timezone), self.timezone), self.subscription_at
            )
            kind = "upgrade"
        else:
            starts_at = self.period_at(now, current)[1]
            kind = "downgrade"
        self.phases = [p for p in self.phases if p.starts_at < starts_at]
        self.phases.append(Phase(starts_at, *_plan(phase)))
        return kind

    def terminate(self, now: datetime) -> None:
        self.ended_at = now
        self.phases = [p for p in self.phases if p.starts_at <= now] or self.phases[:1]

    def windows(self, until: datetime) -> list[Window]:
        """Every window closed at or before `until`: periods cut at phase starts and ends and
        at the termination."""
        far = datetime.max.replace(tzinfo=UTC)
        result = []
        ends = [p.starts_at for p in self.phases[1:]] + [far]
        for phase, phase_end in zip(self.phases, ends, strict=True):
            end_of_phase = min(phase_end, self.ended_at or far)
            if phase.starts_at >= end_of_phase:
                continue
            instant = phase.starts_at
            while instant < end_of_phase:
                full_start, full_end = self.period_at(instant, phase)
                end = min(full_end, end_of_phase)
                if end > until:
                    break
                result.append(Window(instant, end, full_start, full_end, phase))
                instant = end
        return result

    def units_in(self, window: Window, arrived_by: datetime | None = None) -> Decimal:
        return sum(
            (
                units
                for at, units, arrival in self.events
                if window.start <= at < window.end and (arrived_by is None or arrival <= arrived_by)
            ),
            Decimal(0),
        )


def _plan(phase: Phase) -> tuple[str, int, Decimal, str, int]:
    return phase.interval, phase.amount_cents, phase.unit_price, phase.plan_code, phase.plan_version
