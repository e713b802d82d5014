"""Subscription: statuses, plan changes by Lago's rule, termination; given, when, then."""

from datetime import UTC, datetime
from decimal import Decimal
from uuid import UUID, uuid4

import pytest

from domain.errors import InvalidValueError
from domain.subscription import PlanRef, Subscription, SubscriptionTerminatedError
from tests.builders import ORG_ID

MARCH_1 = datetime(2026, 3, 1, tzinfo=UTC)
MARCH_16 = datetime(2026, 3, 16, 10, tzinfo=UTC)


def plan(code: str, amount_cents: int, interval: str = "monthly", **kw: object) -> PlanRef:
    values: dict[str, object] = {
        "plan_id": uuid4(),
        "plan_code": code,
        "plan_version": 1,
        "interval": interval,
        "amount_cents": amount_cents,
        "amount_currency": "EUR",
        "pay_in_advance": False,
        "trial_period": Decimal(0),
        **kw,
    }
    return PlanRef(**values)  # type: ignore[arg-type]


def subscribed(on: PlanRef, at: datetime = MARCH_1, now: datetime = MARCH_1) -> Subscription:
    subscription = Subscription.create(
        ORG_ID,
        "sub_1",
        "cus_1",
        UUID(int=1),
        on,
        name=None,
        billing_time="calendar",
        subscription_at=at,
        ending_at=None,
        timezone="Europe/Paris",
        now=now,
    )
    subscription.collect_events()
    return subscription


def test_a_subscription_starting_later_is_pending_until_then() -> None:
    subscription = subscribed(plan("basic", 3000), at=MARCH_16, now=MARCH_1)
    assert subscription.status_at(MARCH_1) == "pending"
    assert subscription.status_at(MARCH_16) == "active"
    assert not subscription.is_active_at(MARCH_1)


def test_the_current_calendar_period_starts_at_local_midnight() -> None:
    subscription = subscribed(plan("basic", 3000))
    period = subscription.current_period(MARCH_16)
    assert period is not None
    # March in Paris: from Feb 28 23:00 UTC to Mar 31 22:00 UTC (DST starts Mar 29).
    assert (period.start_at, period.end_at) == (
        datetime(2026, 3, 1, tzinfo=UTC),
        datetime(2026, 3, 31, 22, tzinfo=UTC),
    )


def test_a_dearer_plan_is_an_upgrade_from_now() -> None:
    # Given a subscription on a 30 EUR monthly plan
    subscription = subscribed(plan("basic", 3000))
    # When it moves to a 60 EUR plan on March 16
    kind = subscription.change_plan(plan("pro", 6000), MARCH_16)
    # Then the new plan applies from the start of that day in Paris: the day is the new plan's
    [changed] = subscription.collect_events()
    assert isinstance(changed, Subscription.PlanChanged)
    paris_midnight = datetime(2026, 3, 15, 23, tzinfo=UTC)
    assert (kind, changed.starts_at, changed.reason) == ("upgrade", paris_midnight, "upgrade")
    assert subscription.plan_at(MARCH_16).plan_code == "pro"
    assert subscription.previous_plan_code(MARCH_16) == "basic"


def test_a_cheaper_yearly_equivalent_is_a_downgrade_at_the_period_end() -> None:
    # 300 EUR yearly (25/month) is cheaper than 30 EUR monthly: a downgrade.
    subscription = subscribed(plan("basic", 3000))
    kind = subscription.change_plan(plan("yearly", 30000, "yearly"), MARCH_16)
    assert kind == "downgrade"
    pending = subscription.pending_phase(MARCH_16)
    assert pending is not None
    assert pending.starts_at == datetime(2026, 3, 31, 22, tzinfo=UTC)  # April 1 in Paris.
    assert subscription.plan_at(MARCH_16).plan_code == "basic"


def test_a_new_plan_change_replaces_a_pending_downgrade() -> None:
    subscription = subscribed(plan("basic", 3000))
    subscription.change_plan(plan("small", 1000), MARCH_16)
    subscription.change_plan(plan("tiny", 500), MARCH_16)
    pending = subscription.pending_phase(MARCH_16)
    assert pending is not None and pending.plan.plan_code == "tiny"
    assert [p.plan.plan_code for p in subscription.phases] == ["basic", "tiny"]


def test_another_currency_is_refused() -> None:
    subscription = subscribed(plan("basic", 3000))
    with pytest.raises(InvalidValueError) as error:
        subscription.change_plan(plan("usd", 6000, amount_currency="USD"), MARCH_16)
    assert error.value.reason == "currencies_does_not_match"
    assert subscription.collect_events() == []


def test_terminating_an_active_subscription_ends_it_now() -> None:
    subscription = subscribed(plan("basic", 3000, pay_in_advance=True))
    subscription.terminate(MARCH_16, None, None)
    [terminated] = subscription.collect_events()
    assert isinstance(terminated, Subscription.Terminated)
    assert (terminated.on_termination_invoice, terminated.on_termination_credit_note) == (
        "generate",
        "credit",
    )
    assert subscription.status_at(MARCH_16) == "terminated"
    assert subscription.current_period(MARCH_16) is None
    with pytest.raises(SubscriptionTerminatedError):
        subscription.terminate(MARCH_16, None, None)


def test_terminating_a_pending_subscription_cancels_it() -> None:
    subscription = subscribed(plan("basic", 3000), at=MARCH_16, now=MARCH_1)
    subscription.terminate(MARCH_1, None, None)
    assert subscription.status_at(MARCH_16) == "canceled"


def test_ending_at_terminates_automatically() -> None:
    subscription = subscribed(plan("basic", 3000))
    subscription.update(name=None, ending_at=MARCH_16, subscription_at=None, now=MARCH_1)
    assert subscription.status_at(MARCH_16) == "terminated"
    assert subscription.is_active_at(datetime(2026, 3, 16, 9, 59, tzinfo=UTC))


def test_an_ending_before_the_start_is_refused() -> None:
    with pytest.raises(InvalidValueError) as error:
        Subscription.create(
            ORG_ID,
            "sub_1",
            "cus_1",
            UUID(int=1),
            plan("basic", 3000),
            name=None,
            billing_time=None,
            subscription_at=MARCH_16,
            ending_at=MARCH_1,
            timezone="UTC",
            now=MARCH_1,
        )
    assert error.value.field == "ending_at"
