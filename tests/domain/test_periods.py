"""Billing periods: the worked examples of billing-semantics §5, and zones with odd clocks."""

from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from itertools import pairwise
from zoneinfo import ZoneInfo

import pytest

from domain.errors import InvalidValueError
from domain.periods import (
    BillingSchedule,
    Period,
    base_fee_period,
    billing_period,
    charges_interval,
    check_billing_time,
    check_interval,
    check_timezone,
    local_date,
    local_days,
    local_midnight_at,
    local_period,
    period_anchor,
    period_index_at,
    periodic_issuing_date,
    prorated_amount_cents,
    trial_end_at,
)


def utc(
    year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0
) -> datetime:
    return datetime(year, month, day, hour, minute, second, tzinfo=UTC)


def local(
    timezone: str, year: int, month: int, day: int, hour: int = 0, minute: int = 0
) -> datetime:
    """A wall-clock time in the zone, as the UTC instant it names."""
    return datetime(year, month, day, hour, minute, tzinfo=ZoneInfo(timezone)).astimezone(UTC)


def inclusive_dates(period: Period, timezone: str) -> tuple[date, date]:
    """The period's first and last local dates, as Lago shows them."""
    return (
        local_date(period.start_at, timezone),
        local_date(period.end_at, timezone) - timedelta(days=1),
    )


def hours(period: Period) -> float:
    return (period.end_at - period.start_at) / timedelta(hours=1)


# §5.2 Billing periods: anniversary anchors on days 29–31.


def test_a_month_end_anchor_clamps_every_month_from_the_anchor_without_drifting() -> None:
    # Given a monthly plan anchored on 2026-01-31
    anchor = date(2026, 1, 31)
    # When its first five periods are computed
    periods = [billing_period(anchor, "monthly", n, "UTC") for n in range(5)]
    # Then they start on Jan 31, Feb 28, Mar 31, Apr 30, May 31, never drifting to the 28th
    starts = [local_date(period.start_at, "UTC") for period in periods]
    assert [(d.month, d.day) for d in starts] == [(1, 31), (2, 28), (3, 31), (4, 30), (5, 31)]
    # And the first three are Jan 31–Feb 27, Feb 28–Mar 30, Mar 31–Apr 29, ends inclusive
    assert [inclusive_dates(period, "UTC") for period in periods[:3]] == [
        (date(2026, 1, 31), date(2026, 2, 27)),
        (date(2026, 2, 28), date(2026, 3, 30)),
        (date(2026, 3, 31), date(2026, 4, 29)),
    ]


def test_a_leap_day_anchor_falls_back_to_february_28_and_returns_in_leap_years() -> None:
    # Given a yearly plan anchored on 2024-02-29
    # When its first five periods are computed
    starts = [
        local_date(billing_period(date(2024, 2, 29), "yearly", n, "UTC").start_at, "UTC")
        for n in range(5)
    ]
    # Then they start on Feb 29 2024, Feb 28 2025, 2026, 2027 and Feb 29 2028
    assert starts == [
        date(2024, 2, 29),
        date(2025, 2, 28),
        date(2026, 2, 28),
        date(2027, 2, 28),
        date(2028, 2, 29),
    ]


def test_a_january_31_anchor_gets_february_28_in_2027_and_february_29_in_2028() -> None:
    # Given a monthly plan anchored on 2027-01-31 for a customer in Paris
    anchor, timezone = date(2027, 1, 31), "Europe/Paris"
    # When the periods of February 2027 and of January to March 2028 are computed
    february_2027 = billing_period(anchor, "monthly", 1, timezone)
    january_2028, february_2028, march_2028 = (
        billing_period(anchor, "monthly", n, timezone) for n in (12, 13, 14)
    )
    # Then February 2027 runs Feb 28–Mar 30 (28 + 2 = 31 dates)
    assert inclusive_dates(february_2027, timezone) == (date(2027, 2, 28), date(2027, 3, 30))
    assert local_days(february_2027, timezone) == 31
    # And in the leap year they run Jan 31–Feb 28, Feb 29–Mar 30, Mar 31–Apr 29
    assert [inclusive_dates(p, timezone) for p in (january_2028, february_2028, march_2028)] == [
        (date(2028, 1, 31), date(2028, 2, 28)),
        (date(2028, 2, 29), date(2028, 3, 30)),
        (date(2028, 3, 31), date(2028, 4, 29)),
    ]
    assert [local_days(p, timezone) for p in (january_2028, february_2028, march_2028)] == [
        29,
        31,
        30,
    ]
    # And Feb 29 2028 starts at local midnight, 23:00 UTC the day before
    assert february_2028.start_at == utc(2028, 2, 28, 23)


def test_calendar_march_in_new_york_is_31_days_but_743_hours() -> None:
    # Given a calendar monthly plan for a customer in America/New_York (DST starts Mar 8, 2026)
    # When March 2026 is computed
    march = billing_period(date(2026, 3, 1), "monthly", 0, "America/New_York")
    # Then it is [2026-03-01T05:00Z, 2026-04-01T04:00Z): 31 days, 743 hours
    assert march == Period(utc(2026, 3, 1, 5), utc(2026, 4, 1, 4))
    assert local_days(march, "America/New_York") == 31
    assert hours(march) == 743


# §5.2 Calendar billing: the anchor, and a partial first period.


@pytest.mark.parametrize(
    ("interval", "anchor"),
    [
        ("weekly", date(2026, 5, 18)),  # Wednesday May 20 → Monday May 18
        ("monthly", date(2026, 5, 1)),
        ("quarterly", date(2026, 4, 1)),
        ("semiannual", date(2026, 1, 1)),
        ("yearly", date(2026, 1, 1)),
    ],
)
def test_a_calendar_anchor_is_the_start_of_the_calendar_interval(
    interval: str, anchor: date
) -> None:
    assert period_anchor("calendar", date(2026, 5, 20), interval) == anchor


@pytest.mark.parametrize(
    ("subscription_date", "interval", "anchor"),
    [
        (date(2026, 11, 15), "quarterly", date(2026, 10, 1)),
        (date(2026, 11, 15), "semiannual", date(2026, 7, 1)),
        (date(2026, 12, 31), "yearly", date(2026, 1, 1)),
        (date(2026, 3, 16), "weekly", date(2026, 3, 16)),  # A Monday is its own week's start.
        (date(2026, 3, 22), "weekly", date(2026, 3, 16)),  # A Sunday belongs to the week before.
    ],
)
def test_calendar_anchors_at_the_edges_of_their_intervals(
    subscription_date: date, interval: str, anchor: date
) -> None:
    assert period_anchor("calendar", subscription_date, interval) == anchor


@pytest.mark.parametrize("interval", ["weekly", "monthly", "quarterly", "semiannual", "yearly"])
def test_an_anniversary_anchor_is_the_subscription_date(interval: str) -> None:
    assert period_anchor("anniversary", date(2026, 5, 31), interval) == date(2026, 5, 31)


@pytest.mark.parametrize(
    ("interval", "first_end_date", "period_days"),
    [
        ("weekly", date(2026, 5, 25), 7),
        ("monthly", date(2026, 6, 1), 31),
        ("quarterly", date(2026, 7, 1), 91),
        ("semiannual", date(2026, 7, 1), 181),
        ("yearly", date(2027, 1, 1), 365),
    ],
)
def test_a_calendar_subscription_first_period_runs_from_its_start_to_the_next_boundary(
    interval: str, first_end_date: date, period_days: int
) -> None:
    # Given a calendar subscription started on Wednesday 2026-05-20 at 09:30 in Paris
    started_at = local("Europe/Paris", 2026, 5, 20, 9, 30)
    schedule = BillingSchedule(date(2026, 5, 20), started_at, "calendar", interval, "Europe/Paris")
    # When its first period is computed
    first = schedule.period(0)
    # Then it runs from the start instant to the next calendar boundary
    assert first == Period(started_at, local_midnight_at(first_end_date, "Europe/Paris"))
    # And it is prorated over the whole calendar period's days
    assert schedule.period_days(0) == period_days
    assert schedule.billed_days(0) == (first_end_date - date(2026, 5, 20)).days
    # And the next period is whole and starts where the first ends
    assert schedule.period(1).start_at == first.end_at == schedule.full_period(1).start_at


# Other intervals, anniversary.


def test_weekly_anniversary_periods_start_on_the_same_weekday_through_a_dst_change() -> None:
    # Given a weekly plan anchored on Thursday 2026-03-05 in New York
    periods = [billing_period(date(2026, 3, 5), "weekly", n, "America/New_York") for n in (0, 1)]
    # Then the week holding the DST change (Mar 8) has 167 hours, the next 168, both 7 days
    assert [hours(p) for p in periods] == [167, 168]
    assert [local_days(p, "America/New_York") for p in periods] == [7, 7]
    assert local_date(periods[1].start_at, "America/New_York") == date(2026, 3, 12)


def test_quarterly_month_end_anchor_clamps_each_quarter_from_the_anchor() -> None:
    starts = [
        local_date(billing_period(date(2026, 11, 30), "quarterly", n, "UTC").start_at, "UTC")
        for n in range(5)
    ]
    assert starts == [
        date(2026, 11, 30),
        date(2027, 2, 28),
        date(2027, 5, 30),
        date(2027, 8, 30),
        date(2027, 11, 30),
    ]


def test_semiannual_month_end_anchor_reaches_february_29_in_a_leap_year() -> None:
    periods = [billing_period(date(2026, 8, 31), "semiannual", n, "UTC") for n in range(3)]
    assert [inclusive_dates(p, "UTC") for p in periods] == [
        (date(2026, 8, 31), date(2027, 2, 27)),
        (date(2027, 2, 28), date(2027, 8, 30)),
        (date(2027, 8, 31), date(2028, 2, 28)),
    ]
    assert [local_days(p, "UTC") for p in periods] == [181, 184, 182]


def test_a_yearly_period_in_a_leap_year_has_366_days() -> None:
    period = billing_period(date(2028, 1, 1), "yearly", 0, "Europe/Paris")
    assert period == Period(utc(2027, 12, 31, 23), utc(2028, 12, 31, 23))
    assert local_days(period, "Europe/Paris") == 366


# Zones with odd clocks.


def test_paris_spring_forward_month_has_743_hours_and_31_days() -> None:
    # Given calendar March 2026 in Paris (clocks jump from 02:00 to 03:00 on Mar 29)
    march = billing_period(date(2026, 3, 1), "monthly", 0, "Europe/Paris")
    # Then it starts at 23:00 UTC (CET) and ends at 22:00 UTC (CEST)
    assert march == Period(utc(2026, 2, 28, 23), utc(2026, 3, 31, 22))
    assert (hours(march), local_days(march, "Europe/Paris")) == (743, 31)


def test_paris_fall_back_month_has_745_hours_and_31_days() -> None:
    # Given calendar October 2026 in Paris (clocks go back from 03:00 to 02:00 on Oct 25)
    october = billing_period(date(2026, 10, 1), "monthly", 0, "Europe/Paris")
    assert october == Period(utc(2026, 9, 30, 22), utc(2026, 10, 31, 23))
    assert (hours(october), local_days(october, "Europe/Paris")) == (745, 31)
    # And the 25-hour day is one day
    day = local_period(date(2026, 10, 25), date(2026, 10, 26), "Europe/Paris")
    assert (hours(day), local_days(day, "Europe/Paris")) == (25, 1)


def test_kathmandu_periods_start_at_18_15_utc() -> None:
    # Given a monthly plan anchored on 2026-03-10 in Asia/Kathmandu (+05:45)
    period = billing_period(date(2026, 3, 10), "monthly", 0, "Asia/Kathmandu")
    # Then local midnights are at 18:15 UTC the day before
    assert period == Period(utc(2026, 3, 9, 18, 15), utc(2026, 4, 9, 18, 15))
    assert local_days(period, "Asia/Kathmandu") == 31
    # And the last microsecond before the boundary belongs to period 0, the boundary to period 1
    last = period.end_at - timedelta(microseconds=1)
    assert period_index_at(date(2026, 3, 10), "monthly", last, "Asia/Kathmandu") == 0
    assert period_index_at(date(2026, 3, 10), "monthly", period.end_at, "Asia/Kathmandu") == 1


def test_a_skipped_midnight_starts_the_day_when_the_clocks_jump() -> None:
    # Given Santiago, where 2026-09-06 00:00 does not exist (clocks jump from 24:00 to 01:00)
    timezone = "America/Santiago"
    # When a monthly period anchored on the 6th ends there
    august = billing_period(date(2026, 8, 6), "monthly", 0, timezone)
    september = billing_period(date(2026, 8, 6), "monthly", 1, timezone)
    # Then the boundary is the jump, 04:00 UTC, which Santiago shows as 01:00 on Sep 6
    assert august.end_at == september.start_at == utc(2026, 9, 6, 4)
    assert september.start_at.astimezone(ZoneInfo(timezone)).hour == 1
    assert local_date(september.start_at, timezone) == date(2026, 9, 6)
    # And the days are still calendar dates
    assert (local_days(august, timezone), local_days(september, timezone)) == (31, 30)


def test_a_date_the_zone_skipped_counts_in_the_period_before_the_skip() -> None:
    # Given Pacific/Apia, which went from 2011-12-29 23:59:59 (-10) to 2011-12-31 00:00 (+14)
    timezone = "Pacific/Apia"
    # When a calendar week runs Monday Dec 26 to Monday Jan 2
    week = billing_period(date(2011, 12, 26), "weekly", 0, timezone)
    # Then it lasted 6 × 24 hours but counts 7 calendar dates
    assert week == Period(utc(2011, 12, 26, 10), utc(2012, 1, 1, 10))
    assert (hours(week), local_days(week, timezone)) == (144, 7)
    # And Dec 30 and Dec 31 start at the same instant: the skipped date has no length
    assert local_midnight_at(date(2011, 12, 30), timezone) == utc(2011, 12, 30, 10)
    assert local_midnight_at(date(2011, 12, 31), timezone) == utc(2011, 12, 30, 10)
    # And split at Dec 31, the days still add up: Dec 26–30 (5) and Dec 31–Jan 1 (2)
    before = local_period(date(2011, 12, 26), date(2011, 12, 31), timezone)
    after = local_period(date(2011, 12, 31), date(2012, 1, 2), timezone)
    assert (local_days(before, timezone), local_days(after, timezone)) == (5, 2)
    # And a month anchored on the skipped date starts with Dec 31: 30 days, not 31
    month = billing_period(date(2011, 12, 30), "monthly", 0, timezone)
    assert inclusive_dates(month, timezone) == (date(2011, 12, 31), date(2012, 1, 29))
    assert local_days(month, timezone) == 30


# Indexes.


@pytest.mark.parametrize(
    ("instant", "index"),
    [
        (utc(2026, 1, 31), 0),
        (utc(2026, 2, 27, 23, 59, 59), 0),
        (utc(2026, 2, 28), 1),
        (utc(2026, 3, 30, 23, 59, 59), 1),
        (utc(2026, 3, 31), 2),
        (utc(2027, 1, 31), 12),
        (utc(2026, 1, 30, 23, 59, 59), -1),  # Before the anchor: period -1 (Dec 31–Jan 30).
    ],
)
def test_the_index_at_an_instant_is_the_period_that_holds_it(instant: datetime, index: int) -> None:
    assert period_index_at(date(2026, 1, 31), "monthly", instant, "UTC") == index
    assert billing_period(date(2026, 1, 31), "monthly", index, "UTC").contains(instant)


# §5.3 Proration by days.


def test_a_calendar_plan_started_on_march_10_bills_22_of_31_days() -> None:
    # Given a €30 monthly calendar plan in arrears, started on March 10 at 14:00 in Paris
    started_at = local("Europe/Paris", 2026, 3, 10, 14)
    schedule = BillingSchedule(date(2026, 3, 10), started_at, "calendar", "monthly", "Europe/Paris")
    # When the first period is prorated
    billed_days, period_days = schedule.billed_days(0), schedule.period_days(0)
    # Then it bills Mar 10–31, both ends inclusive: 30 × 22/31 = 21.2903 → €21.29
    assert (billed_days, period_days) == (22, 31)
    assert prorated_amount_cents(3000, billed_days, period_days) == 2129


def test_proration_rounds_the_exact_ratio_once_half_up() -> None:
    assert prorated_amount_cents(100, 1, 8) == 13  # 12.5 → 13, not the half-even 12.
    assert prorated_amount_cents(3000, 31, 31) == 3000
    assert prorated_amount_cents(3000, 0, 31) == 0


@pytest.mark.parametrize(("used_days", "period_days"), [(32, 31), (-1, 31), (0, 0)])
def test_proration_refuses_days_outside_the_period(used_days: int, period_days: int) -> None:
    with pytest.raises(AssertionError):
        prorated_amount_cents(3000, used_days, period_days)


# §5.4 Trials.


def test_a_14_day_trial_from_march_1_bills_march_15_to_31() -> None:
    # Given a €30 monthly calendar plan in New York, started on March 1 at midnight
    timezone = "America/New_York"
    started_at = local(timezone, 2026, 3, 1)
    schedule = BillingSchedule(date(2026, 3, 1), started_at, "calendar", "monthly", timezone)
    # When a 14-day trial ends (14 × 24 hours, across the DST change of Mar 8)
    ended_at = trial_end_at(started_at, Decimal(14))
    # Then it ends on March 15 (at 01:00 EDT)
    assert ended_at == utc(2026, 3, 15, 5)
    assert local_date(ended_at, timezone) == date(2026, 3, 15)
    # And the base fee covers Mar 15–31: 17 days → 30 × 17/31 = 16.4516 → €16.45
    billable = base_fee_period(schedule.period(0), ended_at)
    assert billable is not None
    billed_days = local_days(billable, timezone)
    assert billed_days == 17
    assert prorated_amount_cents(3000, billed_days, schedule.period_days(0)) == 1645


def test_a_trial_ending_in_the_next_month_makes_one_period_free_and_prorates_the_next() -> None:
    # Given a €30 monthly calendar plan started on March 20 in UTC with a 14-day trial
    started_at = utc(2026, 3, 20, 9)
    schedule = BillingSchedule(date(2026, 3, 20), started_at, "calendar", "monthly", "UTC")
    ended_at = trial_end_at(started_at, 14)
    # When March and April are billed
    march, april = (
        base_fee_period(schedule.period(0), ended_at),
        base_fee_period(schedule.period(1), ended_at),
    )
    # Then March, which ends before the trial does, has no base fee
    assert march is None
    # And April bills Apr 3–30: 28 of 30 days → €28.00
    assert april == Period(ended_at, utc(2026, 5, 1))
    assert prorated_amount_cents(3000, local_days(april, "UTC"), schedule.period_days(1)) == 2800
    # And May, after the trial, is whole
    assert base_fee_period(schedule.period(2), ended_at) == schedule.period(2)


def test_a_fractional_trial_ends_to_the_microsecond() -> None:
    assert trial_end_at(utc(2026, 3, 1), Decimal("14.5")) == utc(2026, 3, 15, 12)
    assert trial_end_at(utc(2026, 3, 1), Decimal("0.0000001")) == utc(2026, 3, 1) + timedelta(
        microseconds=8640
    )


def test_no_trial_leaves_the_whole_period_billable() -> None:
    period = billing_period(date(2026, 3, 1), "monthly", 0, "UTC")
    assert base_fee_period(period, None) == period


# §5.6 Upgrade and §5.7 Termination: day counts on the same periods.


def test_an_upgrade_on_march_16_credits_16_days_and_bills_the_new_plan_16_days() -> None:
    # Given a €30 monthly calendar plan in advance, started on January 1 in Paris
    timezone = "Europe/Paris"
    old = BillingSchedule(
        date(2026, 1, 1), local(timezone, 2026, 1, 1), "calendar", "monthly", timezone
    )
    # When it is upgraded to €60 on March 16: the switch day belongs to the new plan
    switch_at = local_midnight_at(date(2026, 3, 16), timezone)
    new = BillingSchedule(date(2026, 1, 1), switch_at, "calendar", "monthly", timezone)
    # Then the old plan's credit note covers Mar 16–31: 30 × 16/31 = 15.4839 → €15.48
    unused = old.period(old.index_at(switch_at)).clamp(start_at=switch_at)
    assert unused is not None
    assert prorated_amount_cents(3000, local_days(unused, timezone), old.period_days(2)) == 1548
    # And the new plan bills Mar 16–31 in advance: 60 × 16/31 = 30.9677 → €30.97
    assert (new.first_index, new.period(2).start_at) == (2, switch_at)
    assert prorated_amount_cents(6000, new.billed_days(2), new.period_days(2)) == 3097
    # And the old plan's last period ends where the new one starts
    assert old.period(2).clamp(end_at=switch_at) == Period(old.period(2).start_at, switch_at)


def test_a_termination_on_march_16_bills_16_days_in_arrears_or_credits_15_in_advance() -> None:
    # Given a €30 monthly calendar plan in Paris, terminated on March 16 at 15:00
    timezone = "Europe/Paris"
    schedule = BillingSchedule(
        date(2026, 1, 1), local(timezone, 2026, 1, 1), "calendar", "monthly", timezone
    )
    terminated_at = local(timezone, 2026, 3, 16, 15)
    march = schedule.period(schedule.index_at(terminated_at))
    # When the plan is in arrears, the days used include the termination day: 16 → €15.48
    used = march.clamp(end_at=terminated_at)
    assert used is not None
    assert local_days(used, timezone) == 16
    assert prorated_amount_cents(3000, 16, schedule.period_days(2)) == 1548
    # When the plan is in advance, the credit covers the days after it, Mar 17–31: 15 → €14.52
    day_after = local_midnight_at(local_date(terminated_at, timezone) + timedelta(days=1), timezone)
    unused = march.clamp(start_at=day_after)
    assert unused is not None
    assert local_days(unused, timezone) == 15
    assert prorated_amount_cents(3000, 15, schedule.period_days(2)) == 1452


# §5.8 Billing run and issuing date.


def test_the_billing_run_closes_a_period_at_the_customers_local_midnight() -> None:
    # Given a monthly calendar subscription started on March 10, 2026 in Paris
    timezone = "Europe/Paris"
    started_at = local(timezone, 2026, 3, 10, 14)
    schedule = BillingSchedule(date(2026, 3, 10), started_at, "calendar", "monthly", timezone)
    # When the run looks at it before and at April 1, 00:00 Paris (March 31, 22:00 UTC)
    # Then nothing is closed before, and the partial first period is closed at midnight
    assert schedule.closed_index_at(utc(2026, 3, 10)) is None  # Not started yet.
    assert schedule.closed_index_at(utc(2026, 3, 31, 21, 59, 59)) is None
    assert schedule.closed_index_at(utc(2026, 3, 31, 22)) == 0
    assert schedule.period(0) == Period(started_at, utc(2026, 3, 31, 22))
    # And April is closed from May 1, 00:00 Paris (April 30, 22:00 UTC)
    assert schedule.closed_index_at(utc(2026, 4, 30, 21, 59)) == 0
    assert schedule.closed_index_at(utc(2026, 4, 30, 22)) == 1
    # And the next billing instant is always the end of the period open now
    assert schedule.next_billing_at(utc(2026, 3, 1)) == utc(2026, 3, 31, 22)
    assert schedule.next_billing_at(utc(2026, 3, 20)) == utc(2026, 3, 31, 22)
    assert schedule.next_billing_at(utc(2026, 3, 31, 22)) == utc(2026, 4, 30, 22)


@pytest.mark.parametrize(
    ("anchor", "adjustment", "issuing_date"),
    [
        ("current_period_end", "keep_anchor", date(2024, 3, 31)),
        ("current_period_end", "align_with_finalization_date", date(2024, 4, 4)),
        ("next_period_start", "keep_anchor", date(2024, 4, 1)),
        ("next_period_start", "align_with_finalization_date", date(2024, 4, 4)),
    ],
)
def test_the_issuing_date_follows_lagos_anchor_and_adjustment(
    anchor: str, adjustment: str, issuing_date: date
) -> None:
    # Given March 2024 in arrears with a 3-day grace period (Lago's numbers:
    # getlago/lago-api:spec/services/invoices/preview_service_spec.rb, "with arrears")
    march = billing_period(date(2024, 3, 1), "monthly", 0, "UTC")
    # When the draft invoice's issuing date is set
    # Then it is the anchor date, or the day the grace period ends
    assert periodic_issuing_date(march, "UTC", anchor, adjustment, 3) == issuing_date


def test_finalizing_moves_an_aligned_issuing_date_but_not_a_kept_one() -> None:
    # Given March 2026 in Paris, with a 3-day grace period, finalized early on April 2 at 00:30
    march = billing_period(date(2026, 3, 1), "monthly", 0, "Europe/Paris")
    finalized_at = local("Europe/Paris", 2026, 4, 2, 0, 30)  # April 1, 22:30 UTC.
    # Then an aligned invoice is issued on the local finalization date
    aligned = periodic_issuing_date(
        march, "Europe/Paris", "next_period_start", "align_with_finalization_date", 3, finalized_at
    )
    kept = periodic_issuing_date(
        march, "Europe/Paris", "next_period_start", "keep_anchor", 3, finalized_at
    )
    assert (aligned, kept) == (date(2026, 4, 2), date(2026, 4, 1))
    # And by default (next_period_start, aligned, no grace) it is the next period's first day
    assert periodic_issuing_date(march, "Europe/Paris") == date(2026, 4, 1)


def test_a_yearly_calendar_plan_billed_monthly_has_monthly_charge_periods_inside_the_year() -> None:
    # Given a yearly calendar plan with bill_charges_monthly, started on May 10, 2026 in UTC
    started_at = utc(2026, 5, 10, 8)
    base = BillingSchedule(date(2026, 5, 10), started_at, "calendar", "yearly", "UTC")
    charges = base.charges_schedule(bill_charges_monthly=True)
    # When the charge periods of the first year are listed
    periods = [charges.period(n) for n in range(8)]
    # Then they are May 10–31, then June to December, ending with the base period
    assert periods[0] == Period(started_at, utc(2026, 6, 1))
    assert [p.start_at for p in periods[1:]] == [utc(2026, month, 1) for month in range(6, 13)]
    assert periods[-1].end_at == base.period(0).end_at == utc(2027, 1, 1)


def test_a_yearly_anniversary_plan_billed_monthly_has_twelve_charge_periods_per_year() -> None:
    # Given a yearly plan anchored on January 31, 2026, with bill_charges_monthly
    base = BillingSchedule(date(2026, 1, 31), utc(2026, 1, 31), "anniversary", "yearly", "UTC")
    charges = base.charges_schedule(bill_charges_monthly=True)
    # Then twelve monthly periods from the same anchor tile the year exactly
    months = [charges.period(n) for n in range(12)]
    assert months[0].start_at == base.period(0).start_at
    assert months[-1].end_at == base.period(0).end_at == utc(2027, 1, 31)
    assert all(a.end_at == b.start_at for a, b in pairwise(months))
    assert local_date(months[1].start_at, "UTC") == date(2026, 2, 28)


@pytest.mark.parametrize(
    ("interval", "bill_charges_monthly", "expected"),
    [
        ("yearly", True, "monthly"),
        ("semiannual", True, "monthly"),
        ("quarterly", True, "quarterly"),  # Lago stores the flag as null for quarterly plans.
        ("monthly", True, "monthly"),
        ("weekly", True, "weekly"),
        ("yearly", False, "yearly"),
    ],
)
def test_charges_are_billed_monthly_only_for_semiannual_and_yearly_plans(
    interval: str, bill_charges_monthly: bool, expected: str
) -> None:
    assert charges_interval(interval, bill_charges_monthly) == expected


# Periods, validation.


def test_a_period_is_half_open() -> None:
    period = Period(utc(2026, 3, 1), utc(2026, 4, 1))
    assert period.contains(utc(2026, 3, 1))
    assert period.contains(utc(2026, 4, 1) - timedelta(microseconds=1))
    assert not period.contains(utc(2026, 4, 1))
    # Any aware instant compares as UTC: 00:30 in Paris on March 1 is still February in UTC
    paris = ZoneInfo("Europe/Paris")
    assert not period.contains(datetime(2026, 3, 1, 0, 30, tzinfo=paris))
    assert period.contains(datetime(2026, 4, 1, 0, 30, tzinfo=paris))


def test_a_clamped_period_keeps_only_the_overlap() -> None:
    period = Period(utc(2026, 3, 1), utc(2026, 4, 1))
    assert period.clamp(start_at=utc(2026, 3, 10)) == Period(utc(2026, 3, 10), utc(2026, 4, 1))
    assert period.clamp(end_at=utc(2026, 5, 1)) == period
    assert period.clamp(start_at=utc(2026, 4, 1)) is None
    assert period.clamp(end_at=utc(2026, 3, 1)) is None


@pytest.mark.parametrize(
    ("start_at", "end_at"),
    [
        (datetime(2026, 3, 1), utc(2026, 4, 1)),  # Naive.
        (local("Europe/Paris", 2026, 3, 1).astimezone(ZoneInfo("Europe/Paris")), utc(2026, 4, 1)),
        (utc(2026, 4, 1), utc(2026, 4, 1)),  # Empty.
        (utc(2026, 4, 1), utc(2026, 3, 1)),  # Reversed.
    ],
)
def test_a_period_refuses_naive_local_empty_or_reversed_bounds(
    start_at: datetime, end_at: datetime
) -> None:
    with pytest.raises(AssertionError):
        Period(start_at, end_at)


@pytest.mark.parametrize(
    "timezone",
    ["UTC", "Europe/Paris", "Asia/Kathmandu", "Etc/GMT+5", "America/Argentina/Buenos_Aires"],
)
def test_an_iana_time_zone_is_accepted(timezone: str) -> None:
    assert check_timezone(timezone) == timezone


@pytest.mark.parametrize(
    "timezone",
    [
        "",
        "America",  # A directory.
        "localtime",
        "posixrules",
        "/etc/localtime",
        "../etc/passwd",
        "Europe/../Europe/Paris",
        "right/UTC",
        "posix/Europe/Paris",
        "Europe/Paris ",
        "Europe/Paris\x00",
        "zone.tab",
        "+VERSION",
        "Mars/Olympus_Mons",
        "A" * 300,
    ],
)
def test_what_is_not_an_iana_time_zone_is_refused(timezone: str) -> None:
    with pytest.raises(InvalidValueError) as error:
        check_timezone(timezone, "customer.timezone")
    assert (error.value.field, error.value.reason, error.value.value) == (
        "customer.timezone",
        "invalid_timezone",
        timezone,
    )


def test_intervals_and_billing_times_are_checked() -> None:
    assert check_interval("semiannual") == "semiannual"
    assert check_billing_time("calendar") == "calendar"
    with pytest.raises(InvalidValueError) as interval_error:
        check_interval("daily")
    with pytest.raises(InvalidValueError) as billing_time_error:
        check_billing_time("Calendar")
    assert (interval_error.value.field, billing_time_error.value.field) == (
        "interval",
        "billing_time",
    )
