"""Billing periods: local calendar dates in the customer's zone, as half-open UTC intervals.

Every period comes from billing_period(), computed from the subscription's anchor date and never
from the previous period, so consecutive periods tile exactly (billing-semantics §5.2).

Midnights the zone skips. A period starts at `datetime.combine(day, time(), zone)` (fold=0),
converted to UTC. When daylight saving skips midnight, fold=0 reads the missing time with the
offset in force before the gap, which lands on the instant the clocks jump. In tzdata 2026f every
gap holding a midnight from 2000 to 2100 starts exactly at midnight (America/Santiago, Asia/Beirut,
America/Havana, Africa/Cairo, Atlantic/Azores, ...), so that instant is the first instant of the
local date. A date skipped whole (Pacific/Apia and Pacific/Fakaofo on 2011-12-30) starts at the
same instant as the next date: a day of no length, which never empties a period, since the shortest
interval is a week. Before 2000 a few gaps straddle midnight (America/Toronto, 1919-03-31, 23:30 to
00:30): there the date starts at 01:00 local, half an hour after the jump. Periods tile either way,
because a period ends with the very expression that starts the next one.

Days. Proration counts local calendar dates (§5.3), so a 23- or 25-hour day is one day and March
always has 31. local_days() counts the dates a period touches; a date the zone skipped still counts,
in the period before the skip, so that day counts add up when a period is split at midnights.
"""

import calendar
import re
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from fractions import Fraction
from functools import cached_property, lru_cache
from types import MappingProxyType
from typing import Final
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from domain.errors import InvalidValueError
from domain.limits import KEY_LENGTH_MAX
from domain.money import prorate_cents, round_half_up

INTERVALS: Final = ("weekly", "monthly", "quarterly", "semiannual", "yearly")
MONTHS_PER_INTERVAL: Final = MappingProxyType(
    {"monthly": 1, "quarterly": 3, "semiannual": 6, "yearly": 12}
)
BILLING_TIMES: Final = ("anniversary", "calendar")
# Lago stores bill_charges_monthly as null for other intervals (getlago/lago-api:
# app/services/plans/create_service.rb, charges_billable_monthly?).
CHARGES_MONTHLY_INTERVALS: Final = ("semiannual", "yearly")
# Lago's billing-entity and customer settings (getlago/lago-api:app/models/billing_entity.rb).
ISSUING_DATE_ANCHORS: Final = ("next_period_start", "current_period_end")
ISSUING_DATE_ADJUSTMENTS: Final = ("align_with_finalization_date", "keep_anchor")

# An IANA name: letters first, then letters, digits, "_", "-", "+", in "/"-separated parts
# ("America/Argentina/Buenos_Aires", "Etc/GMT+5"). No dots, so no "..", "zone.tab" or "tzdata.zi".
_ZONE_NAME: Final = re.compile(r"[A-Za-z][A-Za-z0-9_+\-]*(?:/[A-Za-z0-9_+\-]+)*")
# Files in a zoneinfo directory that are not zones: the host's own zone, a compiler input, and
# the "posix/" and "right/" copies of the tree ("right/" counts leap seconds, so its midnights
# are not midnights).
_NOT_ZONES: Final = frozenset({"localtime", "posixrules"})
_NOT_ZONE_PREFIXES: Final = ("posix/", "right/")
_MICROSECONDS_PER_DAY: Final = 86_400_000_000


@dataclass(frozen=True)
class Period:
    """A half-open interval of time [start_at, end_at), both ends aware UTC datetimes."""

    start_at: datetime
    end_at: datetime

    def __post_init__(self) -> None:
        assert self.start_at.tzinfo is UTC, self.start_at
        assert self.end_at.tzinfo is UTC, self.end_at
        assert self.start_at < self.end_at, (self.start_at, self.end_at)

    def contains(self, instant: datetime) -> bool:
        """Whether the instant (any aware datetime) falls in the period; end_at is excluded."""
        assert instant.utcoffset() is not None, instant
        return self.start_at <= instant < self.end_at

    def clamp(
        self, start_at: datetime | None = None, end_at: datetime | None = None
    ) -> "Period | None":
        """The part of the period from start_at and before end_at, or None if nothing is left.

        Cuts a period at a subscription start, a trial end or a termination instant.
        """
        start = self.start_at if start_at is None else max(self.start_at, start_at.astimezone(UTC))
        end = self.end_at if end_at is None else min(self.end_at, end_at.astimezone(UTC))
        return Period(start, end) if start < end else None


def check_timezone(timezone: str, field: str = "timezone") -> str:
    """Return an IANA time zone name that ZoneInfo loads, or raise Lago's invalid_timezone."""
    if (
        not isinstance(timezone, str)
        or len(timezone) > KEY_LENGTH_MAX
        or not _ZONE_NAME.fullmatch(timezone)
        or timezone in _NOT_ZONES
        or timezone.startswith(_NOT_ZONE_PREFIXES)
    ):
        raise InvalidValueError(field, "invalid_timezone", timezone)
    try:
        ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError, OSError):  # OSError: a directory, like "America".
        raise InvalidValueError(field, "invalid_timezone", timezone) from None
    return timezone


def check_interval(interval: str, field: str = "interval") -> str:
    if interval not in INTERVALS:
        raise InvalidValueError(field, "value_is_invalid", interval)
    return interval


def check_billing_time(billing_time: str, field: str = "billing_time") -> str:
    if billing_time not in BILLING_TIMES:
        raise InvalidValueError(field, "value_is_invalid", billing_time)
    return billing_time


def local_midnight_at(day: date, timezone: str) -> datetime:
    """The UTC instant a local date starts: its midnight, or the jump when the zone skips it."""
    return datetime.combine(day, time(), ZoneInfo(timezone)).astimezone(UTC)


def local_date(instant: datetime, timezone: str) -> date:
    """The local date whose day (from its local_midnight_at to the next) holds the instant.

    The date a wall clock shows, except in the half hour of a gap that straddles midnight, and for
    the instant that ends a skipped date, which belongs to the date after it.
    """
    assert instant.utcoffset() is not None, instant
    day = instant.astimezone(ZoneInfo(timezone)).date()
    while local_midnight_at(day, timezone) > instant:
        day -= timedelta(days=1)
    while local_midnight_at(day + timedelta(days=1), timezone) <= instant:
        day += timedelta(days=1)
    return day


def local_period(start_date: date, end_date: date, timezone: str) -> Period:
    """The local dates from start_date up to, not including, end_date, as a UTC period."""
    return Period(local_midnight_at(start_date, timezone), local_midnight_at(end_date, timezone))


def local_days(period: Period, timezone: str) -> int:
    """The local calendar dates the period touches (§5.3: both ends inclusive, DST-proof).

    From local midnight to local midnight this is the number of whole days, a DST day counting
    once. A period that starts or ends within a day counts that day: [Mar 10 14:00, Apr 1) is 22.
    Days add up over a period split at local midnights, not over one split within a day.
    """
    first = local_date(period.start_at, timezone)
    last = local_date(period.end_at, timezone)
    if local_midnight_at(last, timezone) < period.end_at:
        last += timedelta(days=1)  # The period ends within this date: it was touched.
    return (last - first).days


def add_months(day: date, months: int) -> date:
    """The same day `months` later (or earlier), clamped to the length of the month reached."""
    year, month0 = divmod(day.month - 1 + months, 12)
    year += day.year
    return date(year, month0 + 1, min(day.day, calendar.monthrange(year, month0 + 1)[1]))


def _period_dates(anchor: date, interval: str, index: int) -> tuple[date, date]:
    assert interval in INTERVALS, interval
    if interval == "weekly":
        return anchor + timedelta(weeks=index), anchor + timedelta(weeks=index + 1)
    months = MONTHS_PER_INTERVAL[interval]
    return add_months(anchor, index * months), add_months(anchor, (index + 1) * months)


@lru_cache(maxsize=65_536)  # Pure, and asked for again and again by every billing run.
def billing_period(anchor: date, interval: str, index: int, timezone: str) -> Period:
    """The index-th period. Never derived from the previous one, so Jan 31 → Feb 28 → Mar 31.

    Period n runs from the local midnight of anchor + n intervals (day clamped to the month's
    length) to the local midnight of anchor + n + 1 intervals. A negative index gives the periods
    before the anchor; they tile with the others.
    """
    start, end = _period_dates(anchor, interval, index)
    zone = ZoneInfo(timezone)
    return Period(  # A frozen dataclass: start_at included, end_at excluded, both UTC.
        datetime.combine(start, time(), zone).astimezone(UTC),
        datetime.combine(end, time(), zone).astimezone(UTC),
    )


def period_anchor(billing_time: str, subscription_date: date, interval: str) -> date:
    """The date period 0 starts from: the subscription's local date ("anniversary"), or the start
    of the calendar week (Monday), month, quarter, half-year or year that holds it ("calendar").

    A calendar subscription's first period is therefore partial: it is period 0 cut at the
    subscription's start (BillingSchedule.period), prorated over the whole period's days.
    """
    assert billing_time in BILLING_TIMES, billing_time
    assert interval in INTERVALS, interval
    if billing_time == "anniversary":
        return subscription_date
    if interval == "weekly":
        return subscription_date - timedelta(days=subscription_date.weekday())
    months = MONTHS_PER_INTERVAL[interval]
    month = (subscription_date.month - 1) // months * months + 1
    return date(subscription_date.year, month, 1)


def period_index_at(anchor: date, interval: str, instant: datetime, timezone: str) -> int:
    """The n for which billing_period(anchor, interval, n, timezone) contains the instant.

    Estimated from the instant's local date, then corrected by at most a step or two (a clamped
    month end, a DST offset); negative for instants before the anchor's period 0.
    """
    assert interval in INTERVALS, interval
    assert instant.utcoffset() is not None, instant
    day = instant.astimezone(ZoneInfo(timezone)).date()
    if interval == "weekly":
        index = (day - anchor).days // 7
    else:
        months = (day.year - anchor.year) * 12 + day.month - anchor.month
        index = months // MONTHS_PER_INTERVAL[interval]
    while billing_period(anchor, interval, index, timezone).start_at > instant:
        index -= 1
    while billing_period(anchor, interval, index, timezone).end_at <= instant:
        index += 1
    return index


def prorated_amount_cents(amount_cents: int, used_days: int, period_days: int) -> int:
    """amount × used_days / period_days as one exact expression, rounded once half-up (§5.3)."""
    assert amount_cents >= 0, amount_cents
    assert 0 <= used_days <= period_days, (used_days, period_days)
    return prorate_cents(amount_cents, used_days, period_days)


def trial_end_at(started_at: datetime, trial_period_days: Decimal | int) -> datetime:
    """When a trial of trial_period_days (a decimal, like Lago's) ends: started_at plus that many
    24-hour days, to the microsecond, as Lago's `initial_started_at + trial_period.days` in UTC.

    Pass the start of the first subscription of the external_id: an upgrade does not restart it.
    """
    assert started_at.tzinfo is UTC, started_at
    assert trial_period_days >= 0, trial_period_days
    microseconds = round_half_up(Fraction(trial_period_days) * _MICROSECONDS_PER_DAY)
    return started_at + timedelta(microseconds=microseconds)


def base_fee_period(period: Period, trial_ended_at: datetime | None) -> Period | None:
    """The part of a period whose base fee is due (§5.4): all of it without a trial, None when the
    trial covers it, and from the trial's end when that falls inside. Charges ignore trials."""
    if trial_ended_at is None:
        return period
    return period.clamp(start_at=trial_ended_at)


def charges_interval(interval: str, bill_charges_monthly: bool) -> str:
    """The interval usage charges are billed on: monthly for a semiannual or yearly plan with
    bill_charges_monthly (Lago ignores the flag for other intervals), else the plan's interval."""
    assert interval in INTERVALS, interval
    return "monthly" if bill_charges_monthly and interval in CHARGES_MONTHLY_INTERVALS else interval


@dataclass(frozen=True)
class BillingSchedule:
    """One subscription's billing periods (§5.2), by index from its anchor.

    subscription_date is the local date of Lago's subscription_at, fixed when the subscription is
    created (the anniversary; an upgrade keeps its predecessor's). started_at is when this
    subscription starts billing: its start, or an upgrade's switch (the local midnight of the switch
    day, which belongs to the new plan). The first period is the one holding started_at, cut there.
    """

    subscription_date: date
    started_at: datetime
    billing_time: str
    interval: str
    timezone: str

    def __post_init__(self) -> None:
        assert self.billing_time in BILLING_TIMES, self.billing_time
        assert self.interval in INTERVALS, self.interval
        assert self.started_at.tzinfo is UTC, self.started_at
        midnight_at = local_midnight_at(self.subscription_date, self.timezone)
        assert self.started_at >= midnight_at, (self.subscription_date, self.started_at)

    @cached_property
    def anchor(self) -> date:
        return period_anchor(self.billing_time, self.subscription_date, self.interval)

    @cached_property
    def first_index(self) -> int:
        """The index of the period holding started_at: 0, unless an upgrade moved the start."""
        return period_index_at(self.anchor, self.interval, self.started_at, self.timezone)

    def full_period(self, index: int) -> Period:
        """The whole index-th period, uncut: its days are the proration denominator (§5.3)."""
        return billing_period(self.anchor, self.interval, index, self.timezone)

    def period(self, index: int) -> Period:
        """The index-th period the subscription is billed for; the first is cut at started_at."""
        assert index >= self.first_index, (index, self.first_index)
        period = self.full_period(index)
        if index > self.first_index:
            return period
        first = period.clamp(start_at=self.started_at)
        assert first is not None, (period, self.started_at)
        return first

    def period_days(self, index: int) -> int:
        """The local days of the whole period, measured from its real start."""
        return local_days(self.full_period(index), self.timezone)

    def billed_days(self, index: int) -> int:
        """The local days the subscription is billed for in the period, its start day included."""
        return local_days(self.period(index), self.timezone)

    def index_at(self, instant: datetime) -> int:
        """The index of the period holding the instant, which must not precede started_at."""
        assert instant >= self.started_at, (instant, self.started_at)
        return period_index_at(self.anchor, self.interval, instant, self.timezone)

    def period_at(self, instant: datetime) -> Period:
        """The subscription's current period at the instant (not before started_at)."""
        return self.period(self.index_at(instant))

    def closed_index_at(self, now: datetime) -> int | None:
        """The latest period that has ended by now, which the billing run at `now` closes (§5.8),
        or None while the first period is still open. Earlier periods closed at earlier runs; the
        unique guard per (subscription, period, invoicing_reason) makes a repeated run harmless."""
        if now < self.started_at:
            return None
        index = self.index_at(now) - 1
        return index if index >= self.first_index else None

    def next_billing_at(self, now: datetime) -> datetime:
        """The first period end after now: when the billing run next has a period to close."""
        return self.period(self.index_at(max(now, self.started_at))).end_at

    def charges_schedule(self, bill_charges_monthly: bool) -> "BillingSchedule":
        """The schedule usage charges follow: monthly periods from the same anchor for a semiannual
        or yearly plan billed monthly, so each base period is exactly 6 or 12 charge periods."""
        return replace(self, interval=charges_interval(self.interval, bill_charges_monthly))


def periodic_issuing_date(
    period: Period,
    timezone: str,
    anchor: str = "next_period_start",
    adjustment: str = "align_with_finalization_date",
    grace_period_days: int = 0,
    finalized_at: datetime | None = None,
) -> date:
    """The issuing date of the invoice that closes a period (§5.8), as Lago sets it.

    The anchor is the local date the next period starts, or the period's last local date. With
    keep_anchor that date stays. With align_with_finalization_date the draft carries the day the
    grace period ends (a day later for current_period_end, so both anchors give the same date), and
    finalizing moves it to the local date of finalized_at. Lago: Invoices::IssuingDateService
    (getlago/lago-api:app/services/invoices/issuing_date_service.rb) and issuing_date_keep_anchor?
    in its finalization services.
    """
    assert anchor in ISSUING_DATE_ANCHORS, anchor
    assert adjustment in ISSUING_DATE_ADJUSTMENTS, adjustment
    assert grace_period_days >= 0, grace_period_days
    next_start_date = local_date(period.end_at, timezone)
    if adjustment == "keep_anchor":
        if anchor == "current_period_end":
            return next_start_date - timedelta(days=1)
        return next_start_date
    if finalized_at is not None:
        return local_date(finalized_at, timezone)
    return next_start_date + timedelta(days=grace_period_days)
