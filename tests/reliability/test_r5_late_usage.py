"""R5, late, duplicate and out-of-order usage around billing runs.

Hypothesis draws usage events for two subscriptions of two customers (one with a grace period,
so its invoices stay drafts for two days), the order and the moment each arrives (some after
their period was invoiced), identical re-sends, an optional upgrade (so late usage may belong
to a phase that has ended), and billing runs at the period ends and at random instants.

Invariants:
- after each run, every closed period of each subscription has billed (original lines plus
  adjustment lines naming it) exactly the model's rating of the events that arrived by the
  last run that invoiced the subscription: late usage lands in the open draft, else on the
  next invoice (`late_policy_violations`); a timestamp beyond the 5-minute window is refused;
- a finalized invoice never changes afterwards (`silent_mutations`);
- in the end every period bills what the same events bill when they all arrive in order before
  one run (`order_sensitivity`) and what the model rates (`model_mismatches`).

Fast tier: 30 examples; deep tier: 400. TALLY_SEED=<n> replays.
"""

from collections import Counter, defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import seed as hypothesis_seed
from hypothesis import strategies as st

from application.invoicing import content_hash
from application.metering import EventRejectedError
from tests.reliability.battery import report, seed, tier
from tests.reliability.model import ModelSubscription
from tests.reliability.scenario import Catalog, open_catalog

pytestmark = pytest.mark.reliability

SEED = seed()
EXAMPLES = tier(30, 400)
JAN_1 = datetime(2026, 1, 1, tzinfo=UTC)
MAY_1 = datetime(2026, 5, 1, tzinfo=UTC)
JUN_15 = datetime(2026, 6, 15, tzinfo=UTC)
FINAL = datetime(2026, 7, 1, tzinfo=UTC)
BOUNDARIES = [datetime(2026, month, 1, tzinfo=UTC) for month in (2, 3, 4, 5, 6)]
SUBSCRIPTIONS = {"sub_a": ("cus_a", "monthly_1"), "sub_b": ("cus_b", "monthly_2")}
GRACE_DAYS = {"cus_a": 0, "cus_b": 2}
SECONDS = int((MAY_1 - JAN_1).total_seconds())


@dataclass(frozen=True)
class EventSpec:
    subscription: str
    at: datetime
    units: int
    delay: timedelta  # How long after its timestamp it arrives.
    resent_after: timedelta | None  # An identical re-send, this long after it arrived.
    too_far_ahead: bool  # Also try one stamped beyond the 5-minute window: refused.


events = st.builds(
    EventSpec,
    subscription=st.sampled_from(sorted(SUBSCRIPTIONS)),
    at=st.integers(0, SECONDS - 1).map(lambda s: JAN_1 + timedelta(seconds=s)),
    units=st.integers(1, 1000),
    delay=st.one_of(
        st.just(timedelta(0)),
        st.integers(0, 70 * 24 * 60).map(lambda m: timedelta(minutes=m)),
    ),
    resent_after=st.none() | st.integers(0, 40 * 24).map(lambda h: timedelta(hours=h)),
    too_far_ahead=st.booleans(),
)
scenarios = st.tuples(
    st.lists(events, min_size=1, max_size=30),
    st.lists(
        st.integers(0, int((JUN_15 - JAN_1).total_seconds()) // 60).map(
            lambda m: JAN_1 + timedelta(minutes=m)
        ),
        max_size=4,
    ),
    st.none() | st.integers(31 * 24, 119 * 24).map(lambda h: JAN_1 + timedelta(hours=h)),
)


def setup(start: datetime) -> tuple[Catalog, dict[str, ModelSubscription]]:
    catalog = open_catalog(start, intervals=("monthly",))
    models = {}
    for external_id, (customer, plan) in SUBSCRIPTIONS.items():
        catalog.ledger.billing.upsert_customer(
            catalog.org,
            customer,
            {
                "currency": "EUR",
                "billing_configuration": {"invoice_grace_period": GRACE_DAYS[customer]},
            },
        )
        catalog.ledger.billing.create_subscription(
            catalog.org,
            external_id,
            external_customer_id=customer,
            plan_code=plan,
            subscription_at=JAN_1,
        )
        models[external_id] = ModelSubscription(
            external_id, customer, JAN_1, "UTC", "calendar", [catalog.phase(plan, JAN_1)]
        )
    return catalog, models


def billed_by_window(catalog: Catalog) -> dict[tuple[str, str, Any, Any], int]:
    """Σ amounts per (subscription, kind, from, to): adjustments count for the period they name."""
    billed: dict[tuple[str, str, Any, Any], int] = defaultdict(int)
    for invoice in catalog.invoices():
        for fee in invoice.fees:
            kind = "subscription" if fee.fee_type == "subscription" else "charges"
            key = (fee.external_subscription_id, kind, fee.from_at, fee.to_at)
            billed[key] += fee.amount_cents
    return billed


def expected_by_window(
    models: dict[str, ModelSubscription], until: datetime, arrived_by: dict[str, datetime]
) -> dict[tuple[str, str, Any, Any], int]:
    expected: dict[tuple[str, str, Any, Any], int] = {}
    for external_id, model in models.items():
        for window in model.windows(until):
            fee = window.base_fee_cents(model.timezone)
            expected[(external_id, "subscription", window.start, window.end)] = fee
            units = model.units_in(window, arrived_by.get(external_id, JAN_1))
            expected[(external_id, "charges", window.start, window.end)] = window.charge_cents(
                units
            )
    return expected


def differences(got: dict[Any, int], expected: dict[Any, int]) -> int:
    return sum(1 for key in got.keys() | expected.keys() if got.get(key, 0) != expected.get(key))


def test_late_and_out_of_order_usage_is_billed_once_and_never_mutates_an_invoice() -> None:
    figures: Counter[str] = Counter()
    measured: Counter[str] = Counter()

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @hypothesis_seed(SEED)
    @given(scenario=scenarios)
    def usage_in_any_order_bills_the_same(
        scenario: tuple[list[EventSpec], list[datetime], datetime | None],
    ) -> None:
        specs, extra_runs, upgrade_at = scenario
        measured["examples"] += 1
        before = Counter(figures)
        catalog, models = setup(JAN_1)
        actions: list[tuple[datetime, int, str, Any]] = []
        if upgrade_at is not None:
            actions.append((upgrade_at, 0, "upgrade", None))
        for n, spec in enumerate(specs):
            arrival = min(spec.at + spec.delay, JUN_15)
            actions.append((arrival, 1, "ingest", (n, spec)))
            if spec.resent_after is not None:
                actions.append((min(arrival + spec.resent_after, JUN_15), 1, "ingest", (n, spec)))
        for instant in [*BOUNDARIES, *extra_runs, FINAL]:
            actions.append((instant, 2, "run", None))
        actions.sort(key=lambda action: (action[0], action[1]))

        arrived: dict[int, datetime] = {}
        issued_at: dict[str, datetime] = {}  # The last run that invoiced each subscription.
        finalized: dict[str, tuple[str, int]] = {}  # Invoice id → (content hash, version).
        previous_run = JAN_1 - timedelta(days=1)
        for instant, _, kind, payload in actions:
            catalog.at(instant)
            if kind == "upgrade":
                catalog.ledger.billing.create_subscription(
                    catalog.org, "sub_a", external_customer_id="cus_a", plan_code="monthly_3"
                )
                models["sub_a"].change_plan(catalog.phase("monthly_3", instant), instant)
                measured["upgrades"] += 1
            elif kind == "ingest":
                n, spec = payload
                catalog.ingest(spec.subscription, f"t{n}", spec.at, spec.units)
                if n in arrived:
                    measured["resends"] += 1
                else:
                    arrived[n] = instant
                    models[spec.subscription].events.append((spec.at, Decimal(spec.units), instant))
                    measured["late_events"] += int(any(spec.at < b <= instant for b in BOUNDARIES))
                if spec.too_far_ahead:
                    ahead = instant + timedelta(minutes=5, seconds=1)
                    with pytest.raises(EventRejectedError) as refused:
                        catalog.ingest(spec.subscription, f"future{n}", ahead, 1)
                    if refused.value.reason != "value_is_in_future":
                        figures["late_policy_violations"] += 1
            else:
                catalog.ledger.invoicing.run(instant)
                measured["billing_runs"] += 1
                for external_id, model in models.items():
                    grace = timedelta(days=GRACE_DAYS[model.external_customer_id])
                    # Invoiced now: a period closed since the last run, or a draft still open.
                    if any(w.end + grace > previous_run for w in model.windows(instant)):
                        issued_at[external_id] = instant
                got = billed_by_window(catalog)
                figures["late_policy_violations"] += differences(
                    got, expected_by_window(models, instant, issued_at)
                )
                for invoice in catalog.invoices():
                    key = str(invoice.id)
                    if key in finalized and finalized[key] != (
                        content_hash(invoice),
                        invoice.version,
                    ):
                        figures["silent_mutations"] += 1
                    if invoice.status == "finalized":
                        finalized[key] = (content_hash(invoice), invoice.version)
                previous_run = instant
        final = billed_by_window(catalog)
        everything = dict.fromkeys(models, FINAL)
        figures["model_mismatches"] += differences(
            final, expected_by_window(models, FINAL, everything)
        )
        measured["invoices"] += len(catalog.invoices())
        measured["adjustments"] += sum(
            1 for i in catalog.invoices() for f in i.fees if f.fee_type == "adjustment"
        )
        catalog.ledger.close()

        # The same events, in timestamp order, all before one run.
        reference, _ = setup(JAN_1)
        if upgrade_at is not None:
            reference.at(upgrade_at)
            reference.ledger.billing.create_subscription(
                reference.org, "sub_a", external_customer_id="cus_a", plan_code="monthly_3"
            )
        reference.at(JUN_15)
        for n, spec in sorted(enumerate(specs), key=lambda item: item[1].at):
            reference.ingest(spec.subscription, f"t{n}", spec.at, spec.units)
        reference.at(FINAL)
        reference.ledger.invoicing.run(FINAL)
        figures["order_sensitivity"] += differences(final, billed_by_window(reference))
        reference.ledger.close()
        assert figures == before, {k: figures[k] - before[k] for k in figures}

    try:
        usage_in_any_order_bills_the_same()
    finally:
        report(
            "R5",
            "late_and_out_of_order_usage",
            seed=SEED,
            runs=measured["examples"],
            failures={
                key: figures[key]
                for key in (
                    "order_sensitivity",
                    "silent_mutations",
                    "late_policy_violations",
                    "model_mismatches",
                )
            },
            **{key: measured[key] for key in sorted(measured) if key != "examples"},
        )


def late_charges_of(catalog: Catalog, external_id: str) -> int:
    return sum(
        fee.amount_cents
        for invoice in catalog.invoices()
        for fee in invoice.fees
        if fee.external_subscription_id == external_id and fee.fee_type != "subscription"
    )


def test_late_usage_of_a_terminated_subscription_is_billed_on_the_customers_next_invoice() -> None:
    catalog, _ = setup(JAN_1)
    catalog.at(datetime(2026, 1, 10, 12, tzinfo=UTC))
    catalog.ledger.billing.terminate_subscription(catalog.org, "sub_a")
    catalog.at(datetime(2026, 1, 11, tzinfo=UTC))
    [final] = catalog.ledger.invoicing.run(catalog.now)  # sub_a's final invoice.
    catalog.ingest("sub_a", "late", datetime(2026, 1, 6, tzinfo=UTC), 500)  # Arrives after it.
    catalog.ledger.billing.create_subscription(  # cus_a will have a next invoice.
        catalog.org, "sub_c", external_customer_id="cus_a", plan_code="monthly_1"
    )
    catalog.at(FINAL)
    catalog.ledger.invoicing.run(FINAL)
    assert late_charges_of(catalog, "sub_a") == 500  # 500 units at 0.01, billed once.
    [carrier] = [
        invoice
        for invoice in catalog.invoices()
        if invoice.id != final.id
        and any(fee.external_subscription_id == "sub_a" for fee in invoice.fees)
    ]
    # The customer's next invoice (sub_c's first), naming the original period.
    assert {p["external_subscription_id"] for p in carrier.billing_periods} == {"sub_a", "sub_c"}
    [adjustment] = [fee for fee in carrier.fees if fee.external_subscription_id == "sub_a"]
    assert (adjustment.fee_type, adjustment.amount_cents) == ("adjustment", 500)
    assert (adjustment.from_at, adjustment.to_at) == (JAN_1, datetime(2026, 1, 10, 12, tzinfo=UTC))
    assert catalog.ledger.invoicing.audit(catalog.org, carrier.id).matches
    catalog.ledger.invoicing.run(FINAL)  # A rerun bills nothing more.
    assert late_charges_of(catalog, "sub_a") == 500


def test_late_usage_of_a_terminated_subscription_gets_an_invoice_of_its_own_otherwise() -> None:
    catalog, _ = setup(JAN_1)
    catalog.at(datetime(2026, 1, 10, 12, tzinfo=UTC))
    catalog.ledger.billing.terminate_subscription(catalog.org, "sub_a")
    catalog.at(datetime(2026, 1, 11, tzinfo=UTC))
    [final] = catalog.ledger.invoicing.run(catalog.now)
    catalog.ingest("sub_a", "late", datetime(2026, 1, 6, tzinfo=UTC), 300)
    # cus_a has nothing else: the billing run bills it at the next boundary of sub_a's schedule.
    catalog.at(datetime(2026, 2, 1, 1, tzinfo=UTC))
    [own] = [
        invoice
        for invoice in catalog.ledger.invoicing.run(catalog.now)
        if invoice.external_customer_id == "cus_a" and invoice.id != final.id
    ]
    assert [(fee.fee_type, fee.amount_cents) for fee in own.fees] == [("adjustment", 300)]
    assert own.status == "finalized"
    assert own.billing_periods[0]["invoicing_reason"] == "subscription_terminating"
    assert catalog.ledger.invoicing.audit(catalog.org, own.id).matches
    catalog.at(FINAL)
    catalog.ledger.invoicing.run(FINAL)
    assert late_charges_of(catalog, "sub_a") == 300
