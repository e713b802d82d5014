"""R14, clock and period boundaries: random subscriptions (time zones with daylight saving and
half-hour offsets, calendar and anniversary billing, every interval, anchors on the 29th to the
31st and leap days, pending starts, upgrades, downgrades, terminations, usage) are billed by
billing runs at random instants, one of them with the clock jumping backwards.

Invariants, from the invoices against tests/reliability/model.py:
- every closed period of every phase is billed once, with its window and prorated base fee,
  no zero-length, overlapping or missing period (`period_violations`, `amount_violations`);
- every local day from the start to the last billed instant is billed to exactly one base fee
  of the external_id (`day_attribution_violations`);
- every usage event is billed in exactly one period (`event_attribution_violations`);
- a run at an earlier instant than a previous one changes nothing.

Fast tier: 40 examples; deep tier: 600. TALLY_SEED=<n> replays.
"""

from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import seed as hypothesis_seed
from hypothesis import strategies as st

from domain.invoice import Invoice
from tests.reliability.battery import report, seed, tier
from tests.reliability.model import ModelSubscription, days_touched, local_date
from tests.reliability.scenario import LEVELS, Catalog, open_catalog, plan_code

pytestmark = pytest.mark.reliability

SEED = seed()
EXAMPLES = tier(40, 600)
TIMEZONES = (
    "UTC",
    "Europe/Paris",
    "America/New_York",
    "Asia/Kolkata",
    "Pacific/Auckland",
    "Australia/Adelaide",
)
INTERVALS = ("weekly", "monthly", "quarterly", "semiannual", "yearly")
ORIGIN = datetime(2025, 1, 1, tzinfo=UTC)
SPAN = timedelta(days=3 * 365)
# Instants the calendar makes interesting: month ends, a leap day, daylight-saving changes.
EDGES = [
    datetime(2025, 1, 31, 23, 30, tzinfo=UTC),
    datetime(2025, 3, 30, 1, 0, tzinfo=UTC),
    datetime(2025, 10, 26, 1, 0, tzinfo=UTC),
    datetime(2025, 12, 31, 12, tzinfo=UTC),
    datetime(2026, 1, 29, tzinfo=UTC),
    datetime(2026, 1, 30, 22, tzinfo=UTC),
    datetime(2026, 3, 8, 7, tzinfo=UTC),
    datetime(2027, 3, 31, 10, tzinfo=UTC),
    datetime(2028, 2, 29, 11, tzinfo=UTC),
    datetime(2028, 2, 28, 23, tzinfo=UTC),
]


@dataclass(frozen=True)
class SubscriptionSpec:
    timezone: str
    billing_time: str
    plan: str
    starts_at: datetime
    pending_for: timedelta  # Created this long before it starts (0: backdated or now).
    changes: tuple[tuple[timedelta, str], ...]  # (after the start, plan)
    terminate_after: timedelta | None
    events: tuple[tuple[timedelta, int], ...]  # (after the start, units)


plans = st.builds(plan_code, st.sampled_from(INTERVALS), st.sampled_from(LEVELS))
offsets = st.integers(0, 400 * 24 * 60).map(lambda minutes: timedelta(minutes=minutes))
instants = st.one_of(
    st.sampled_from(EDGES),
    st.integers(0, int(SPAN.total_seconds()) // 60).map(
        lambda minutes: ORIGIN + timedelta(minutes=minutes)
    ),
    st.integers(0, 36 * 31).map(lambda days: ORIGIN + timedelta(days=days)),  # Midnights.
)
subscriptions = st.builds(
    SubscriptionSpec,
    timezone=st.sampled_from(TIMEZONES),
    billing_time=st.sampled_from(["calendar", "anniversary"]),
    plan=plans,
    starts_at=instants,
    pending_for=st.sampled_from([timedelta(0), timedelta(0), timedelta(days=3)]),
    changes=st.lists(st.tuples(offsets, plans), max_size=3).map(tuple),
    terminate_after=st.none() | offsets,
    events=st.lists(st.tuples(offsets, st.integers(1, 1000)), max_size=6).map(tuple),
)
scenarios = st.tuples(
    st.lists(subscriptions, min_size=1, max_size=3),
    st.lists(offsets, min_size=1, max_size=4),  # Billing runs, after the first start.
    st.integers(1, 60 * 24 * 40).map(lambda minutes: timedelta(minutes=minutes)),  # Jump back.
)


def actions_of(
    specs: list[SubscriptionSpec], runs: list[timedelta], back: timedelta
) -> list[tuple[datetime, int, str, Any]]:
    """The scenario as timed actions, in the order they happen."""
    first = min(spec.starts_at for spec in specs)
    actions: list[tuple[datetime, int, str, Any]] = []
    for n, spec in enumerate(specs):
        actions.append((spec.starts_at - spec.pending_for, 0, "subscribe", n))
        for after, code in spec.changes:
            actions.append((spec.starts_at + after, 1, "change", (n, code)))
        if spec.terminate_after is not None:
            actions.append((spec.starts_at + spec.terminate_after, 2, "terminate", n))
        for k, (after, units) in enumerate(spec.events):
            actions.append((spec.starts_at + after, 3, "event", (n, k, units)))
    ordered = sorted(first + offset for offset in runs)
    for instant in ordered:
        actions.append((instant, 4, "run", None))
    # The clock jumps back once after the latest run, then the final run far ahead.
    actions.append((ordered[-1] + timedelta(microseconds=1), 5, "run_back", back))
    final = max(a[0] for a in actions) + timedelta(days=400)
    actions.append((final, 6, "run", None))
    actions.sort(key=lambda action: (action[0], action[1]))
    return actions


def snapshot(catalog: Catalog) -> list[tuple[str, Any, Any, Any]]:
    return sorted(
        (str(i.id), i.status, i.sequential_id, [f["key"] for f in i.fee_events])
        for i in catalog.invoices()
    )


def check(
    catalog: Catalog, models: dict[str, ModelSubscription], until: datetime, figures: Counter[str]
) -> None:
    """Compare the invoices with the model's windows closed at `until`."""
    invoices: list[Invoice] = catalog.invoices()
    for external_id, model in models.items():
        fees = sorted(
            (fee.from_at, fee.to_at, fee.amount_cents)
            for invoice in invoices
            for fee in invoice.fees
            if fee.external_subscription_id == external_id and fee.fee_type == "subscription"
        )
        charges = sorted(
            (
                datetime.fromisoformat(period["charges_from_datetime"]),
                datetime.fromisoformat(period["charges_to_datetime"]),
            )
            for invoice in invoices
            for period in invoice.billing_periods
            if period["external_subscription_id"] == external_id
        )
        windows = model.windows(until)
        expected_fees = sorted((w.start, w.end, w.base_fee_cents(model.timezone)) for w in windows)
        expected_periods = sorted((w.start, w.end) for w in windows)
        got_periods = {(start, end) for start, end, _ in fees}
        figures["period_violations"] += len(got_periods ^ set(expected_periods))
        figures["period_violations"] += len(charges) - len(set(charges))  # Twice billed.
        figures["period_violations"] += len(set(charges) ^ set(expected_periods))
        figures["period_violations"] += sum(1 for start, end, _ in fees if start >= end)
        figures["amount_violations"] += len(set(fees) ^ set(expected_fees)) - len(
            got_periods ^ set(expected_periods)
        )
        # Each local day, from the first to the last billed, in exactly one base fee.
        days: Counter[Any] = Counter()
        for start, end, _ in fees:
            first_day = local_date(start, model.timezone)
            for k in range(days_touched(start, end, model.timezone)):
                days[first_day + timedelta(days=k)] += 1
        if days:
            span = (max(days) - min(days)).days + 1
            figures["day_attribution_violations"] += sum(1 for c in days.values() if c != 1)
            figures["day_attribution_violations"] += span - len(days)  # Days never billed.
        # Each event in exactly one charge line of its period.
        billed_events = sum(
            fee.events_count
            for invoice in invoices
            for fee in invoice.fees
            if fee.external_subscription_id == external_id and fee.fee_type == "charge"
        )
        expected_events = sum(
            1 for at, _, _ in model.events if any(w.start <= at < w.end for w in windows)
        )
        figures["event_attribution_violations"] += abs(billed_events - expected_events)


def test_every_instant_of_a_subscription_is_billed_exactly_once() -> None:
    figures: Counter[str] = Counter()
    measured: Counter[str] = Counter()

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @hypothesis_seed(SEED)
    @given(scenario=scenarios)
    def scenario_bills_each_instant_once(
        scenario: tuple[list[SubscriptionSpec], list[timedelta], timedelta],
    ) -> None:
        specs, runs, back = scenario
        measured["examples"] += 1
        before = Counter(figures)
        actions = actions_of(specs, runs, back)
        catalog = open_catalog(actions[0][0])
        models: dict[str, ModelSubscription] = {}
        for instant, _, kind, payload in actions:
            catalog.at(instant)
            if kind == "subscribe":
                spec = specs[payload]
                external_id, customer = f"sub_{payload}", f"cus_{payload}"
                catalog.ledger.billing.upsert_customer(
                    catalog.org, customer, {"currency": "EUR", "timezone": spec.timezone}
                )
                catalog.ledger.billing.create_subscription(
                    catalog.org,
                    external_id,
                    external_customer_id=customer,
                    plan_code=spec.plan,
                    billing_time=spec.billing_time,
                    subscription_at=spec.starts_at,
                )
                models[external_id] = ModelSubscription(
                    external_id,
                    customer,
                    spec.starts_at,
                    spec.timezone,
                    spec.billing_time,
                    [catalog.phase(spec.plan, spec.starts_at)],
                )
                measured["subscriptions"] += 1
            elif kind in ("change", "terminate", "event"):
                n = payload if kind == "terminate" else payload[0]
                model = models[f"sub_{n}"]
                if model.ended_at is not None and instant >= model.ended_at:
                    continue  # Ended: nothing more happens to it.
                if kind == "change":
                    code = payload[1]
                    if model.phase_at(instant).plan_code == code:
                        continue
                    catalog.ledger.billing.create_subscription(
                        catalog.org,
                        model.external_id,
                        external_customer_id=model.external_customer_id,
                        plan_code=code,
                    )
                    measured[model.change_plan(catalog.phase(code, instant), instant) + "s"] += 1
                elif kind == "terminate":
                    if instant < model.subscription_at:
                        continue  # Pending: a cancel, which R14 does not cover.
                    catalog.ledger.billing.terminate_subscription(catalog.org, model.external_id)
                    model.terminate(instant)
                    measured["terminations"] += 1
                else:
                    _, k, units = payload
                    if instant < model.subscription_at:
                        continue
                    catalog.ingest(model.external_id, f"e{n}_{k}", instant, units)
                    model.events.append((instant, units, instant))  # type: ignore[arg-type]
            elif kind == "run":
                catalog.ledger.invoicing.run(instant)
                check(catalog, models, instant, figures)
                measured["billing_runs"] += 1
            else:  # run_back: an injected clock that jumps backwards changes nothing.
                before_back = snapshot(catalog)
                earlier = instant - payload
                catalog.at(earlier)
                catalog.ledger.invoicing.run(earlier)
                if snapshot(catalog) != before_back:
                    figures["clock_regression_violations"] += 1
                catalog.at(instant)
        measured["invoices"] += len(catalog.invoices())
        catalog.ledger.close()
        assert figures == before, {k: figures[k] - before[k] for k in figures}

    try:
        scenario_bills_each_instant_once()
    finally:
        report(
            "R14",
            "clock_and_period_boundaries",
            seed=SEED,
            runs=measured["examples"],
            failures={
                key: figures[key]
                for key in (
                    "period_violations",
                    "day_attribution_violations",
                    "amount_violations",
                    "event_attribution_violations",
                    "clock_regression_violations",
                )
            },
            **{key: measured[key] for key in sorted(measured) if key != "examples"},
        )
