"""Properties of billing periods: tiling, indexes, day counts and proration, in every zone."""

import calendar
from datetime import UTC, date, datetime, timedelta
from itertools import pairwise

from hypothesis import assume, example, given, settings
from hypothesis import strategies as st

from domain.limits import AMOUNT_CENTS_MAX
from domain.money import allocate_cents
from domain.periods import (
    BILLING_TIMES,
    INTERVALS,
    MONTHS_PER_INTERVAL,
    BillingSchedule,
    Period,
    add_months,
    base_fee_period,
    billing_period,
    local_date,
    local_days,
    local_midnight_at,
    local_period,
    period_anchor,
    period_index_at,
    prorated_amount_cents,
    trial_end_at,
)

# Zones whose clocks are known to be awkward, drawn often; every other zone is drawn too.
AWKWARD_ZONES = [
    "UTC",
    "Europe/Paris",
    "America/New_York",
    "America/Santiago",  # Midnight skipped every September.
    "Asia/Beirut",  # Midnight skipped every March.
    "America/Havana",
    "Africa/Cairo",
    "Atlantic/Azores",
    "America/Asuncion",
    "Asia/Kathmandu",  # +05:45.
    "Pacific/Chatham",  # +12:45 / +13:45.
    "Australia/Lord_Howe",  # A 30-minute DST shift.
    "America/St_Johns",  # -03:30.
    "Pacific/Apia",  # Skipped 2011-12-30.
    "Pacific/Fakaofo",  # Skipped 2011-12-30.
    "Pacific/Kiritimati",  # +14.
]
timezones = st.one_of(st.sampled_from(AWKWARD_ZONES), st.timezone_keys(allow_prefix=False))


@st.composite
def anchors(draw: st.DrawFn) -> date:
    """Dates from 2000 to 2100, half of them on days 28 to 31."""
    year, month = draw(st.integers(2000, 2100)), draw(st.integers(1, 12))
    if draw(st.booleans()):
        return date(year, month, draw(st.integers(1, calendar.monthrange(year, month)[1])))
    return date(year, month, min(draw(st.integers(28, 31)), calendar.monthrange(year, month)[1]))


intervals = st.sampled_from(INTERVALS)
indexes = st.integers(0, 240)
fractions = st.floats(0, 1, exclude_max=True)


def instant_within(period: Period, fraction: float) -> datetime:
    """An instant `fraction` of the way through the period, to the microsecond."""
    microseconds = (period.end_at - period.start_at) // timedelta(microseconds=1)
    return period.start_at + timedelta(microseconds=int(microseconds * fraction))


def skipped(day: date, timezone: str) -> bool:
    """Whether the zone skipped the whole date (Pacific/Apia, 2011-12-30)."""
    return local_midnight_at(day, timezone) == local_midnight_at(day + timedelta(days=1), timezone)


@settings(max_examples=300)
@given(anchor=anchors(), interval=intervals, index=indexes, timezone=timezones)
@example(anchor=date(2011, 12, 30), interval="weekly", index=0, timezone="Pacific/Apia")
@example(anchor=date(2011, 11, 30), interval="monthly", index=0, timezone="Pacific/Apia")
@example(anchor=date(2026, 8, 6), interval="monthly", index=0, timezone="America/Santiago")
def test_consecutive_periods_tile_without_gap_or_overlap(
    anchor: date, interval: str, index: int, timezone: str
) -> None:
    period = billing_period(anchor, interval, index, timezone)
    following = billing_period(anchor, interval, index + 1, timezone)
    assert period.start_at < period.end_at == following.start_at
    assert period.start_at.tzinfo is period.end_at.tzinfo is following.end_at.tzinfo is UTC


@settings(max_examples=300)
@given(
    anchor=anchors(),
    interval=intervals,
    index=st.integers(-24, 240),
    fraction=fractions,
    timezone=timezones,
)
@example(
    anchor=date(2011, 12, 30), interval="weekly", index=0, fraction=0.0, timezone="Pacific/Apia"
)
@example(
    anchor=date(2011, 12, 26), interval="weekly", index=0, fraction=0.7, timezone="Pacific/Apia"
)
@example(
    anchor=date(2026, 8, 6), interval="monthly", index=1, fraction=0.0, timezone="America/Santiago"
)
def test_the_index_at_an_instant_inside_a_period_is_that_period(
    anchor: date, interval: str, index: int, fraction: float, timezone: str
) -> None:
    period = billing_period(anchor, interval, index, timezone)
    instant = instant_within(period, fraction)
    assert period_index_at(anchor, interval, instant, timezone) == index
    assert period_index_at(anchor, interval, period.start_at, timezone) == index
    last = period.end_at - timedelta(microseconds=1)
    assert period_index_at(anchor, interval, last, timezone) == index


@settings(max_examples=300)
@given(
    anchor=anchors(),
    interval=intervals,
    instant=st.datetimes(datetime(1990, 1, 1), datetime(2130, 1, 1), timezones=st.just(UTC)),
    timezone=timezones,
)
def test_every_instant_lies_in_exactly_one_period(
    anchor: date, interval: str, instant: datetime, timezone: str
) -> None:
    index = period_index_at(anchor, interval, instant, timezone)
    neighbours = [
        billing_period(anchor, interval, n, timezone) for n in (index - 1, index, index + 1)
    ]
    assert [period.contains(instant) for period in neighbours] == [False, True, False]


@settings(max_examples=200)
@given(anchor=anchors(), interval=intervals, index=indexes, timezone=timezones)
def test_a_period_runs_between_the_local_midnights_of_its_dates_and_counts_them(
    anchor: date, interval: str, index: int, timezone: str
) -> None:
    if interval == "weekly":
        start_date, end_date = anchor + timedelta(weeks=index), anchor + timedelta(weeks=index + 1)
    else:
        months = MONTHS_PER_INTERVAL[interval]
        start_date = add_months(anchor, index * months)
        end_date = add_months(anchor, (index + 1) * months)
        month_days = calendar.monthrange(start_date.year, start_date.month)[1]
        assert start_date.day == min(anchor.day, month_days)
        assert (start_date.year - anchor.year) * 12 + start_date.month - anchor.month == (
            index * months
        )
        low, high = {1: (28, 31), 3: (89, 92), 6: (181, 184), 12: (365, 366)}[months]
        assert low <= (end_date - start_date).days <= high
    period = billing_period(anchor, interval, index, timezone)
    assert period == local_period(start_date, end_date, timezone)
    # A boundary on a date the zone skipped starts at the next date (see domain/periods.py).
    assume(not skipped(start_date, timezone) and not skipped(end_date, timezone))
    assert local_date(period.start_at, timezone) == start_date
    assert local_date(period.end_at, timezone) == end_date
    assert local_days(period, timezone) == (end_date - start_date).days


@settings(max_examples=200)
@given(anchor=anchors(), interval=intervals, index=indexes, timezone=timezones)
@example(anchor=date(2011, 11, 30), interval="monthly", index=0, timezone="Pacific/Apia")
@example(anchor=date(2011, 12, 23), interval="weekly", index=0, timezone="Pacific/Apia")
def test_day_counts_add_up_over_consecutive_periods(
    anchor: date, interval: str, index: int, timezone: str
) -> None:
    first = billing_period(anchor, interval, index, timezone)
    second = billing_period(anchor, interval, index + 1, timezone)
    both = Period(first.start_at, second.end_at)
    assert local_days(first, timezone) + local_days(second, timezone) == local_days(both, timezone)


@settings(max_examples=200)
@given(
    anchor=anchors(),
    interval=st.sampled_from(["monthly", "quarterly", "yearly"]),
    index=indexes,
    timezone=timezones,
    amount_cents=st.integers(0, AMOUNT_CENTS_MAX),
    cuts=st.lists(st.integers(1, 365), max_size=6),
)
def test_a_period_split_at_midnights_allocates_its_whole_amount_by_days(
    anchor: date,
    interval: str,
    index: int,
    timezone: str,
    amount_cents: int,
    cuts: list[int],
) -> None:
    period = billing_period(anchor, interval, index, timezone)
    period_days = local_days(period, timezone)
    first_date = local_date(period.start_at, timezone)
    last_date = first_date + timedelta(days=period_days)
    # Cut the period at local midnights into consecutive parts of whole days.
    days = sorted({cut for cut in cuts if cut < period_days})
    boundaries = [first_date, *(first_date + timedelta(days=cut) for cut in days), last_date]
    midnights = [local_midnight_at(day, timezone) for day in boundaries]
    assert (midnights[0], midnights[-1]) == (period.start_at, period.end_at)
    assume(all(a < b for a, b in pairwise(midnights)))  # No part made only of a skipped date.
    parts = [Period(a, b) for a, b in pairwise(midnights)]
    day_counts = [local_days(part, timezone) for part in parts]
    assert sum(day_counts) == period_days
    amounts = allocate_cents(amount_cents, day_counts)
    assert sum(amounts) == amount_cents
    # Each part is within a cent of its own proration, rounded once.
    for part_cents, used_days in zip(amounts, day_counts, strict=True):
        assert abs(part_cents - prorated_amount_cents(amount_cents, used_days, period_days)) <= 1


@settings(max_examples=300)
@given(
    amount_cents=st.integers(0, AMOUNT_CENTS_MAX),
    period_days=st.integers(1, 366),
    data=st.data(),
)
def test_proration_grows_with_the_days_and_is_whole_for_the_whole_period(
    amount_cents: int, period_days: int, data: st.DataObject
) -> None:
    fewer = data.draw(st.integers(0, period_days))
    more = data.draw(st.integers(fewer, period_days))
    prorated = prorated_amount_cents(amount_cents, fewer, period_days)
    assert 0 <= prorated <= prorated_amount_cents(amount_cents, more, period_days)
    assert prorated_amount_cents(amount_cents, period_days, period_days) == amount_cents
    assert prorated_amount_cents(amount_cents, 0, period_days) == 0


@settings(max_examples=200)
@given(subscription_date=anchors(), interval=intervals)
def test_a_calendar_anchor_starts_the_interval_that_holds_the_date(
    subscription_date: date, interval: str
) -> None:
    anchor = period_anchor("calendar", subscription_date, interval)
    period = billing_period(anchor, interval, 0, "UTC")
    assert period.contains(datetime.combine(subscription_date, datetime.min.time(), UTC))
    if interval == "weekly":
        assert anchor.weekday() == 0
    else:
        assert anchor.day == 1
        assert (anchor.month - 1) % MONTHS_PER_INTERVAL[interval] == 0


@settings(max_examples=200)
@given(
    started_at=st.datetimes(datetime(2000, 1, 1), datetime(2100, 1, 1), timezones=st.just(UTC)),
    billing_time=st.sampled_from(BILLING_TIMES),
    interval=intervals,
    timezone=timezones,
    index=st.integers(0, 30),
    fraction=fractions,
)
def test_a_subscription_is_billed_from_its_start_in_periods_that_tile(
    started_at: datetime,
    billing_time: str,
    interval: str,
    timezone: str,
    index: int,
    fraction: float,
) -> None:
    schedule = BillingSchedule(
        local_date(started_at, timezone), started_at, billing_time, interval, timezone
    )
    # The first period starts at started_at and is never longer than a whole period
    assert schedule.first_index == 0
    assert schedule.period(0).start_at == started_at
    assert 1 <= schedule.billed_days(0) <= schedule.period_days(0)
    # Later periods are whole and tile
    assert schedule.period(index).end_at == schedule.period(index + 1).start_at
    if index > 0:
        assert schedule.period(index) == schedule.full_period(index)
    # The run closes a period at its end, and the next billing instant is the open period's end
    period = schedule.period(index)
    instant = instant_within(period, fraction)
    assert schedule.index_at(instant) == index
    assert schedule.period_at(instant) == period
    assert schedule.next_billing_at(instant) == period.end_at
    assert schedule.closed_index_at(instant) == (index - 1 if index > 0 else None)
    assert schedule.closed_index_at(period.end_at) == index


@settings(max_examples=100)
@given(
    started_at=st.datetimes(datetime(2000, 1, 1), datetime(2100, 1, 1), timezones=st.just(UTC)),
    billing_time=st.sampled_from(BILLING_TIMES),
    interval=st.sampled_from(["semiannual", "yearly"]),
    timezone=timezones,
    index=st.integers(0, 20),
)
def test_monthly_charge_periods_tile_each_base_period(
    started_at: datetime, billing_time: str, interval: str, timezone: str, index: int
) -> None:
    base = BillingSchedule(
        local_date(started_at, timezone), started_at, billing_time, interval, timezone
    )
    charges = base.charges_schedule(bill_charges_monthly=True)
    period = base.period(index)
    first = charges.index_at(period.start_at)
    months = [charges.period(n) for n in range(first, first + MONTHS_PER_INTERVAL[interval] + 1)]
    assert months[0].start_at == period.start_at
    assert all(a.end_at == b.start_at for a, b in pairwise(months))
    # The base period ends at a charge boundary, at most 6 or 12 months after it starts.
    assert period.end_at in [month.end_at for month in months]


@settings(max_examples=200)
@given(
    started_at=st.datetimes(datetime(2000, 1, 1), datetime(2100, 1, 1), timezones=st.just(UTC)),
    interval=intervals,
    timezone=timezones,
    trial_days=st.integers(0, 400),
    index=st.integers(0, 30),
)
def test_the_base_fee_is_free_until_the_trial_ends_then_billed_from_its_end(
    started_at: datetime, interval: str, timezone: str, trial_days: int, index: int
) -> None:
    schedule = BillingSchedule(
        local_date(started_at, timezone), started_at, "calendar", interval, timezone
    )
    ended_at = trial_end_at(started_at, trial_days)
    assert ended_at - started_at == timedelta(days=trial_days)
    period = schedule.period(index)
    billable = base_fee_period(period, ended_at)
    if period.end_at <= ended_at:
        assert billable is None
    else:
        assert billable is not None
        assert billable.end_at == period.end_at
        assert billable.start_at == max(period.start_at, ended_at)
        assert local_days(billable, timezone) <= schedule.billed_days(index)
