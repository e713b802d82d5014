"""R8, a model-based stateful test of the whole application on the memory store.

Hypothesis runs random sequences of: customers, plan edits, subscriptions (create, backdated,
upgrade, downgrade, new plan version, terminate), usage (on time, late, identical re-sends,
conflicting re-sends), wallets (granted and paid top-ups, settlement webhooks delivered twice
or failed first), billing runs at an advancing clock, runs killed at a random save and rerun
(crash_restart), credit notes (credit, offset, refund; one cent too many is refused), voids
(wallets get their credits back), voids of paid invoices with credit notes (the payment refunded,
some credit), manual payments, credit-note voids, and a rebuild of the resource index from the
log (replay).

After every step it checks against an obviously correct model (tests/reliability/model.py,
flat per-unit prices, base fees prorated by local days) and simple bookkeeping:
- each subscription's every closed window billed its base fee and its usage (original lines
  plus late adjustments) exactly, for the usage that had arrived by the subscription's last
  invoice (`total_mismatches`);
- each invoice: total = fees + taxes - credit notes' credit - wallets' credit, the credit and
  the wallets applied at finalization what the model's balances allowed (`invoice_violations`);
- every audit matches (`audit_mismatches`); credit notes never exceed their invoice or fee
  (`credit_note_violations`); invoice numbers are 1..n without a gap and never change
  (`numbering_gaps`); each wallet's balance is the sum of its entries and the model's
  (`wallet_violations`); a finalized invoice's content never changes (`silent_mutations`).

Not modelled: taxes (none in this catalog), plans in advance, grace periods (R5), coupons.
Late usage of a subscription whose final invoice is issued goes on the customer's next invoice
(or one of its own at the next boundary of its schedule, §8.5): the machine counts such events
(`late_events_after_final_invoice`) and expects them billed by the run that issues that invoice.

Fast tier: 50 examples of up to 30 steps; deep tier: 2000 of up to 60. TALLY_SEED replays.
"""

from collections import Counter
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any
from uuid import UUID

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import seed as hypothesis_seed
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from application.errors import ApplicationError
from application.metering import EventRejectedError
from application.projections import CatchUp, MemoryIndexView, ResourceIndexProjection
from application.wallets import TopUpValues, WalletValues
from domain.errors import DomainError
from domain.invoice import Invoice
from tests.reliability.battery import report, seed, tier
from tests.reliability.model import ModelSubscription, local_date, midnight
from tests.reliability.scenario import LEVELS, Catalog, open_catalog, plan_code
from tests.reliability.test_r6_replay import digest, index_answers

pytestmark = pytest.mark.reliability

SEED = seed()
EXAMPLES = tier(50, 2000)
STEPS = tier(30, 60)
START = datetime(2026, 1, 1, tzinfo=UTC)
LOGICAL_EPOCH = datetime(1, 1, 1, tzinfo=UTC)
CUSTOMERS = ("cus_0", "cus_1", "cus_2")
TIMEZONES = ("UTC", "Europe/Paris")
INTERVALS = ("weekly", "monthly")
FIGURES: Counter[str] = Counter()
FAILURES = (
    "total_mismatches",
    "replay_mismatches",
    "invoice_violations",
    "audit_mismatches",
    "credit_note_violations",
    "numbering_gaps",
    "wallet_violations",
    "silent_mutations",
)
plans = st.builds(plan_code, st.sampled_from(INTERVALS), st.sampled_from(LEVELS))
picks = st.integers(0, 10**6)  # An index into whatever the step chooses from.


class Crash(BaseException):
    """A billing run killed mid-way (not an Exception: nothing may catch it)."""


class LedgerMachine(RuleBasedStateMachine):
    @initialize(
        timezones=st.lists(st.sampled_from(TIMEZONES), min_size=3, max_size=3),
        first_plans=st.lists(plans, min_size=2, max_size=2),
    )
    def open(self, timezones: list[str], first_plans: list[str]) -> None:
        """The catalog, three customers, and two subscriptions to begin with."""
        FIGURES["examples"] += 1
        self.catalog: Catalog = open_catalog(START, intervals=INTERVALS)
        self.ledger = self.catalog.ledger
        self.org: UUID = self.catalog.org
        self.customers: dict[str, str] = {}  # external id → time zone
        self.subs: dict[str, ModelSubscription] = {}
        self.billed_windows: dict[str, int] = {}  # Windows invoiced so far, per subscription.
        # Arrivals on a logical clock (a run and an event may share the wall-clock instant):
        # usage that arrived by a subscription's last invoicing run is on its invoices.
        self.arrived_by: dict[str, datetime] = {}
        self.carried: dict[str, int] = {}  # Invoices billing an ended subscription's late usage.
        self.ticks = 0
        self.sent: list[tuple[str, str, datetime, int]] = []  # (sub, tx, at, units)
        self.wallets: dict[str, UUID] = {}
        self.wallet_cents: dict[str, int] = {}
        self.purchases: dict[UUID, tuple[str, int]] = {}  # credit invoice → (customer, cents)
        self.settled: set[UUID] = set()
        self.credit_cents: Counter[str] = Counter()  # Customers' credit-note balances.
        self.stable: dict[UUID, str] = {}  # What finalization fixed, per invoice.
        self.audited: dict[UUID, int] = {}  # Invoice → version audited.
        self.applied: set[UUID] = set()  # Invoices whose credits the model has checked.
        self.problems: Counter[str] = Counter()
        for customer, timezone in zip(CUSTOMERS, timezones, strict=True):
            self.add_customer(customer, timezone)
        for n, plan in enumerate(first_plans):
            self.subscribe(n, plan, 0)

    # Helpers.

    def flag(self, figure: str, count: int = 1) -> None:
        """A violation: counted for the report, and failing this example at the invariant."""
        FIGURES[figure] += count
        self.problems[figure] += count

    def tick(self) -> datetime:
        """The next instant of the logical clock that orders arrivals and runs."""
        self.ticks += 1
        return LOGICAL_EPOCH + timedelta(microseconds=self.ticks)

    @property
    def now(self) -> datetime:
        return self.catalog.now

    def invoices(self) -> list[Invoice]:
        return sorted(self.catalog.invoices(), key=lambda i: (i.sequential_id or 0, str(i.id)))

    def active(self) -> list[ModelSubscription]:
        return [
            s
            for s in self.subs.values()
            if s.subscription_at <= self.now and (s.ended_at is None or self.now < s.ended_at)
        ]

    def carriers(self, external_id: str, ended_at: datetime) -> int:
        """Invoices that bill a subscription at a boundary after its end (its late usage)."""
        return sum(
            1
            for invoice in self.invoices()
            for period in invoice.billing_periods
            if period["external_subscription_id"] == external_id
            and datetime.fromisoformat(period["boundary"]) > ended_at
        )

    def refused(self, action: Any, *args: Any, **kwargs: Any) -> bool:
        """Run a command the ledger may refuse; True when it did."""
        try:
            action(*args, **kwargs)
        except (ApplicationError, DomainError):
            FIGURES["refused_commands"] += 1
            return True
        return False

    def after_run(self) -> None:
        """A billing run happened now: the model's view of what it invoiced."""
        for external_id, model in self.subs.items():
            closed = len(model.windows(self.now))
            if closed > self.billed_windows.get(external_id, 0):
                self.arrived_by[external_id] = self.tick()
                self.billed_windows[external_id] = closed
            elif model.ended_at is not None:
                # After its final invoice: a new invoice naming it bills all its late usage.
                carriers = self.carriers(external_id, model.ended_at)
                if carriers > self.carried.get(external_id, 0):
                    self.arrived_by[external_id] = self.tick()
                    self.carried[external_id] = carriers
        # New subscription invoices, in finalization order: credit notes' credit first, then
        # the wallet, each as much as the model's balance allows (§8.2, §6.3).
        for invoice in self.invoices():
            if invoice.id in self.applied or invoice.status == "draft":
                continue
            self.applied.add(invoice.id)
            if invoice.invoice_type != "subscription":
                continue
            customer = invoice.external_customer_id
            totals = invoice.totals
            due = totals.sub_total_including_taxes_amount_cents
            credit = min(self.credit_cents[customer], due)
            wallet = min(self.wallet_cents.get(customer, 0), due - credit)
            if (totals.taxes_amount_cents, totals.credit_notes_amount_cents) != (0, credit) or (
                totals.prepaid_credit_amount_cents != wallet
            ):
                self.flag("invoice_violations")
            self.credit_cents[customer] -= totals.credit_notes_amount_cents
            if customer in self.wallet_cents:
                self.wallet_cents[customer] -= totals.prepaid_credit_amount_cents

    # Rules.

    @rule(
        hours=st.integers(1, 20 * 24),
        usage=st.lists(
            st.tuples(picks, st.integers(1, 5000), st.sampled_from([0, 0, 1, 50, 400, 900])),
            max_size=4,
        ),
        then_bill=st.booleans(),
    )
    def advance(self, hours: int, usage: list[tuple[int, int, int]], then_bill: bool) -> None:
        """Time passes, usage arrives (on time or late), and perhaps the billing runs."""
        self.catalog.at(self.now + timedelta(hours=hours))
        for pick, units, late_hours in usage:
            self.ingest(pick, units, late_hours)
        if then_bill:
            self.bill()

    @rule(customer=st.sampled_from(CUSTOMERS), timezone=st.sampled_from(TIMEZONES))
    def add_customer(self, customer: str, timezone: str) -> None:
        values: dict[str, Any] = {"currency": "EUR", "name": f"Customer {customer}"}
        if customer not in self.customers:
            values["timezone"] = timezone
            self.customers[customer] = timezone
        self.ledger.billing.upsert_customer(self.org, customer, values)

    @precondition(lambda self: self.customers)
    @rule(customer=picks, plan=plans, backdated_hours=st.sampled_from([0, 0, 5, 30, 72]))
    def subscribe(self, customer: int, plan: str, backdated_hours: int) -> None:
        external_customer_id = sorted(self.customers)[customer % len(self.customers)]
        external_id = f"sub_{len(self.subs)}"
        starts_at = (self.now - timedelta(hours=backdated_hours)).replace(microsecond=0)
        self.ledger.billing.create_subscription(
            self.org,
            external_id,
            external_customer_id=external_customer_id,
            plan_code=plan,
            subscription_at=starts_at,
        )
        self.subs[external_id] = ModelSubscription(
            external_id,
            external_customer_id,
            starts_at,
            self.customers[external_customer_id],
            "calendar",
            [self.catalog.phase(plan, starts_at)],
        )

    @precondition(lambda self: self.active())
    @rule(pick=picks, plan=plans)
    def change_plan(self, pick: int, plan: str) -> None:
        """Another plan (an upgrade now or a downgrade at the period end), or the same plan's
        newer version (from today's midnight, as negotiated overrides)."""
        model = self.active()[pick % len(self.active())]
        current = model.phase_at(self.now)
        target = self.catalog.phase(plan, self.now)
        if (current.plan_code, current.plan_version) == (plan, target.plan_version):
            return
        self.ledger.billing.create_subscription(
            self.org,
            model.external_id,
            external_customer_id=model.external_customer_id,
            plan_code=plan,
        )
        if current.plan_code == plan:
            switch = max(
                midnight(local_date(self.now, model.timezone), model.timezone),
                model.subscription_at,
            )
            target.starts_at = switch
            model.phases = [p for p in model.phases if p.starts_at < switch] + [target]
            FIGURES["new_versions"] += 1
        else:
            FIGURES[model.change_plan(target, self.now) + "s"] += 1

    @precondition(lambda self: self.active())
    @rule(pick=picks)
    def terminate(self, pick: int) -> None:
        model = self.active()[pick % len(self.active())]
        self.ledger.billing.terminate_subscription(self.org, model.external_id)
        model.terminate(self.now)
        FIGURES["terminations"] += 1

    @precondition(lambda self: self.subs)
    @rule(
        pick=picks, units=st.integers(1, 5000), late_hours=st.sampled_from([0, 0, 1, 50, 400, 900])
    )
    def ingest(self, pick: int, units: int, late_hours: int) -> None:
        model = list(self.subs.values())[pick % len(self.subs)]
        at = max(self.now - timedelta(hours=late_hours), model.subscription_at)
        if model.ended_at is not None:
            at = min(at, model.ended_at - timedelta(seconds=1))
        if not (model.subscription_at <= at <= self.now):
            return
        transaction_id = f"t{len(self.sent)}"
        self.catalog.ingest(model.external_id, transaction_id, at, units)
        self.sent.append((model.external_id, transaction_id, at, units))
        model.events.append((at, Decimal(units), self.tick()))
        FIGURES["events"] += 1
        if model.ended_at is not None and self.billed_windows.get(model.external_id) == len(
            model.windows(model.ended_at)
        ):  # Its final invoice is out: a later invoice of the customer carries it.
            FIGURES["late_events_after_final_invoice"] += 1

    @precondition(lambda self: self.sent)
    @rule(pick=picks, changed=st.booleans())
    def ingest_again(self, pick: int, changed: bool) -> None:
        """An identical re-send is counted once; another payload with the id is refused."""
        subscription, transaction_id, at, units = self.sent[pick % len(self.sent)]
        model = self.subs[subscription]
        if model.ended_at is not None and at >= model.ended_at:
            return  # Stamped at its termination instant: re-sends are refused as inactive.
        if changed:
            with pytest.raises(EventRejectedError) as refused:
                self.catalog.ingest(subscription, transaction_id, at, units + 1)
            assert refused.value.reason == "value_already_exist"
        else:
            self.catalog.ingest(subscription, transaction_id, at, units)

    @rule(plan=plans, amount_delta=st.sampled_from([-500, 100, 700]), level=st.sampled_from(LEVELS))
    def edit_plan(self, plan: str, amount_delta: int, level: int) -> None:
        current = self.catalog.plans[plan]
        amount = max(100, current.amount_cents + amount_delta)
        self.catalog.edit_plan(plan, amount, Decimal("0.005") * level)
        FIGURES["plan_edits"] += 1

    @precondition(lambda self: self.customers)
    @rule(customer=picks, cents=st.integers(1, 20000), paid=st.booleans())
    def top_up(self, customer: int, cents: int, paid: bool) -> None:
        external_customer_id = sorted(self.customers)[customer % len(self.customers)]
        credits = Decimal(cents).scaleb(-2)
        if external_customer_id not in self.wallets:
            wallet = self.ledger.wallets.create_wallet(
                self.org,
                WalletValues(
                    external_customer_id=external_customer_id,
                    currency="EUR",
                    rate_amount=Decimal(1),
                    code="main",
                    granted_credits=credits,
                ),
            )
            self.wallets[external_customer_id] = wallet.id
            self.wallet_cents[external_customer_id] = cents
            return
        wallet_id = self.wallets[external_customer_id]
        if paid:
            [made] = self.ledger.wallets.top_up(
                self.org, wallet_id, TopUpValues(paid_credits=credits)
            )
            assert made.invoice_id is not None
            self.purchases[made.invoice_id] = (external_customer_id, cents)
            self.applied.add(made.invoice_id)
        else:
            self.ledger.wallets.top_up(self.org, wallet_id, TopUpValues(granted_credits=credits))
            self.wallet_cents[external_customer_id] += cents

    @precondition(lambda self: self.purchases)
    @rule(pick=picks, outcome=st.sampled_from(["twice", "failed_first", "failed", "manual"]))
    def settle(self, pick: int, outcome: str) -> None:
        """The PSP's webhooks for a paid top-up: twice, a failure first, a failure, or a
        manual payment of its invoice."""
        invoice_id = list(self.purchases)[pick % len(self.purchases)]  # Ids are random: keep order.
        customer, cents = self.purchases[invoice_id]
        statuses = {
            "twice": ["succeeded", "succeeded"],
            "failed_first": ["failed", "succeeded"],
            "failed": ["failed"],
            "manual": [],
        }[outcome]
        for status in statuses:
            self.ledger.invoicing.set_payment_status(self.org, invoice_id, status)
        if outcome == "manual":
            invoice = self.ledger.invoicing.invoice(self.org, invoice_id)
            if invoice.payment_status == "succeeded" or self.ledger.payments.invoice_payments(
                self.org, invoice_id
            ):
                return  # Paid already (a status set since is an override: not a payment).
            self.ledger.payments.create_manual_payment(
                self.org, invoice_id, invoice.total_due_amount_cents, "wire", None
            )
        paid = "succeeded" in statuses or outcome == "manual"
        if paid and invoice_id not in self.settled:
            self.settled.add(invoice_id)
            self.wallet_cents[customer] += cents

    @rule()
    def bill(self) -> None:
        self.ledger.invoicing.run(self.now)
        FIGURES["billing_runs"] += 1
        self.after_run()

    @rule(crash_at=st.integers(1, 6), after_commit=st.booleans())
    def crash_restart(self, crash_at: int, after_commit: bool) -> None:
        """A run killed at its n-th save, before or after the commit, then run again."""
        save = self.ledger.billing.save
        saves = 0

        def dying_save(*objs: Any, **kwargs: Any) -> Any:
            nonlocal saves
            saves += 1
            if saves == crash_at and not after_commit:
                raise Crash()
            recordings = save(*objs, **kwargs)
            if saves == crash_at:
                raise Crash()
            return recordings

        self.ledger.billing.save = dying_save  # type: ignore[method-assign]
        try:
            self.ledger.invoicing.run(self.now)
        except Crash:
            FIGURES["crashes"] += 1
        finally:
            self.ledger.billing.save = save  # type: ignore[method-assign]
        self.bill()

    @rule(
        pick=picks,
        cents=st.integers(1, 5000),
        one_too_many=st.booleans(),
        destination=st.sampled_from(["credit", "credit", "offset", "refund"]),
    )
    def credit_note(self, pick: int, cents: int, one_too_many: bool, destination: str) -> None:
        candidates = [
            i
            for i in self.invoices()
            if i.status == "finalized" and i.invoice_type == "subscription"
        ]
        if not candidates:
            return
        invoice = candidates[pick % len(candidates)]
        fees = [f for f in invoice.fees if f.amount_cents > 0]
        if not fees:
            return
        fee = fees[pick % len(fees)]
        left = fee.amount_cents - invoice.credited_fee_cents.get(fee.key, 0)
        amount = left + 1 if one_too_many else min(cents, left)
        if amount <= 0:
            return
        split = {"credit_amount_cents": 0, "offset_amount_cents": 0, "refund_amount_cents": 0}
        split[f"{destination}_amount_cents"] = amount
        refused = self.refused(
            self.ledger.credit_notes.create,
            self.org,
            invoice.id,
            [(fee.key, amount)],
            reason="other",
            **split,
        )
        allowed = {
            "credit": True,
            "offset": amount <= invoice.offsettable_amount_cents,
            "refund": amount <= invoice.refundable_amount_cents,
        }[destination]
        if refused != (one_too_many or not allowed):
            self.flag("credit_note_violations")
        if not refused:
            FIGURES["credit_notes"] += 1
            if destination == "credit":
                self.credit_cents[invoice.external_customer_id] += amount

    @rule(pick=picks)
    def void_credit_note(self, pick: int) -> None:
        notes, _ = self.ledger.credit_notes.credit_notes(self.org, 1, 10**6)
        available = [n for n in notes if n.credit_status == "available" and n.balance_amount_cents]
        if available:
            note = available[pick % len(available)]
            self.ledger.credit_notes.void(self.org, note.id)
            self.credit_cents[note.external_customer_id] -= note.balance_amount_cents

    @rule(pick=picks)
    def void(self, pick: int) -> None:
        candidates = [
            i
            for i in self.invoices()
            if i.status == "finalized" and i.invoice_type == "subscription"
        ]
        if candidates:
            invoice = candidates[pick % len(candidates)]
            refused = self.refused(self.ledger.invoicing.void, self.org, invoice.id, self.now)
            if refused != (invoice.payment_status == "succeeded"):
                self.flag("invoice_violations")
            customer = invoice.external_customer_id
            if not refused and customer in self.wallet_cents:
                # A void returns the credits the invoice took from the wallet.
                self.wallet_cents[customer] += invoice.prepaid_credit_amount_cents
            FIGURES["voids"] += int(not refused)

    @rule(pick=picks, credit=st.integers(0, 5000))
    def void_with_credit_note(self, pick: int, credit: int) -> None:
        """A paid invoice voided with generate_credit_note (§8.8): what was paid refunded, some
        credit asked on top within what the customer paid; the wallet gets its credits back."""
        candidates = [
            i
            for i in self.invoices()
            if i.status == "finalized"
            and i.invoice_type == "subscription"
            and i.payment_status == "succeeded"
        ]
        if not candidates:
            return
        invoice = candidates[pick % len(candidates)]
        returned = invoice.prepaid_credit_amount_cents
        allowed = max(0, invoice.creditable_amount_cents - returned)
        refund = min(invoice.refundable_amount_cents, allowed)
        credit = min(credit, allowed - refund)
        refused = self.refused(
            self.ledger.invoicing.void,
            self.org,
            invoice.id,
            self.now,
            generate_credit_note=True,
            credit_amount_cents=credit,
            refund_amount_cents=refund,
        )
        if refused:
            self.flag("invoice_violations")
            return
        customer = invoice.external_customer_id
        self.credit_cents[customer] += credit  # The rest's credit is voided at once.
        if customer in self.wallet_cents:
            self.wallet_cents[customer] += returned
        FIGURES["voids_with_credit_notes"] += 1

    @rule(pick=picks)
    def pay(self, pick: int) -> None:
        candidates = [
            i
            for i in self.invoices()
            if i.status == "finalized"
            and i.invoice_type == "subscription"
            and i.payment_status != "succeeded"
        ]
        if candidates:
            invoice = candidates[pick % len(candidates)]
            due = invoice.total_due_amount_cents
            if due <= 0:
                return
            pay = self.ledger.payments.create_manual_payment
            refused = self.refused(pay, self.org, invoice.id, due, "wire", None)
            paid = self.ledger.invoicing.invoice(self.org, invoice.id)
            if refused or paid.payment_status != "succeeded":
                self.flag("invoice_violations")
            FIGURES["payments"] += 1

    @rule()
    def replay(self) -> None:
        """The resource index rebuilt from the log answers as the live one."""
        billing = self.ledger.billing
        billing.catch_up()
        fresh = ResourceIndexProjection(view=MemoryIndexView())
        CatchUp(billing, fresh)()
        live = index_answers(billing.index.view, self.org)
        if digest(live) != digest(index_answers(fresh.view, self.org)):
            self.flag("replay_mismatches")
        FIGURES["replays"] += 1

    # Invariants, after every step.

    @invariant()
    def invoices_match_the_model(self) -> None:
        if not hasattr(self, "catalog"):
            return
        FIGURES["steps"] += 1
        invoices = self.invoices()
        billed: Counter[tuple[str, str, datetime, datetime]] = Counter()
        for invoice in invoices:
            if invoice.invoice_type != "subscription":
                continue  # A paid top-up's `credit` invoice.
            for fee in invoice.fees:
                kind = "subscription" if fee.fee_type == "subscription" else "charges"
                billed[(fee.external_subscription_id, kind, fee.from_at, fee.to_at)] += (
                    fee.amount_cents
                )
        expected: Counter[tuple[str, str, datetime, datetime]] = Counter()
        for external_id, model in self.subs.items():
            # What was invoiced: the windows closed by the last run (later ones: not yet).
            windows = model.windows(self.now)[: self.billed_windows.get(external_id, 0)]
            for window in windows:
                key = (external_id, window.start, window.end)
                expected[(key[0], "subscription", key[1], key[2])] = window.base_fee_cents(
                    model.timezone
                )
                units = model.units_in(window, self.arrived_by.get(external_id, LOGICAL_EPOCH))
                expected[(key[0], "charges", key[1], key[2])] = window.charge_cents(units)
        keys = billed.keys() | expected.keys()
        mismatched = [k for k in keys if billed.get(k, 0) != expected.get(k, 0)]
        if mismatched:
            self.flag("total_mismatches", len(mismatched))
        assert not mismatched, [(k, billed.get(k), expected.get(k)) for k in mismatched]

    @invariant()
    def documents_are_consistent(self) -> None:
        if not hasattr(self, "catalog"):
            return
        invoices = self.invoices()
        numbers = []
        for invoice in invoices:
            totals = invoice.totals
            if (
                totals.total_amount_cents
                != (
                    totals.fees_amount_cents
                    + totals.taxes_amount_cents
                    - totals.credit_notes_amount_cents
                    - totals.prepaid_credit_amount_cents
                )
                or totals.total_amount_cents < 0
            ):
                self.flag("invoice_violations")
            # Credit notes never exceed the invoice, nor any fee.
            credited = invoice.credit_notes_total_amount_cents
            fee_cents = {f.key: f.amount_cents for f in invoice.fees}
            if credited > totals.sub_total_including_taxes_amount_cents or any(
                cents > fee_cents[key] for key, cents in invoice.credited_fee_cents.items()
            ):
                self.flag("credit_note_violations")
            if invoice.status == "draft":
                continue
            numbers.append(invoice.sequential_id)
            if self.stable.setdefault(invoice.id, _stable(invoice)) != _stable(invoice):
                self.flag("silent_mutations")
            if self.audited.get(invoice.id) != invoice.version and (
                invoice.invoice_type == "subscription"
            ):
                if not self.ledger.invoicing.audit(self.org, invoice.id).matches:
                    self.flag("audit_mismatches")
                self.audited[invoice.id] = invoice.version
        if sorted(numbers) != list(range(1, len(numbers) + 1)):
            self.flag("numbering_gaps")
        notes, _ = self.ledger.credit_notes.credit_notes(self.org, 1, 10**6)
        balances: Counter[str] = Counter()
        for note in notes:
            balances[note.external_customer_id] += note.balance_amount_cents
        if {k: v for k, v in balances.items() if v} != {
            k: v for k, v in self.credit_cents.items() if v
        }:
            self.flag("credit_note_violations")
        for customer, wallet_id in self.wallets.items():
            wallet = self.ledger.wallets.wallet(self.org, wallet_id)
            if wallet.invariant_violations() or wallet.balance_cents != self.wallet_cents[customer]:
                self.flag("wallet_violations")
        assert not self.problems, self.problems

    def teardown(self) -> None:
        if hasattr(self, "catalog"):
            self.ledger.close()


def _stable(invoice: Invoice) -> str:
    """What finalization fixes for good: lines, periods, watermark, number, issuing date."""
    return digest(
        [
            invoice.fee_events,
            invoice.billing_periods,
            invoice.watermark,
            invoice.number,
            invoice.issuing_date,
            invoice.tax_rates,
        ]
    )


def test_the_whole_ledger_matches_its_model() -> None:
    FIGURES.clear()
    try:
        run_state_machine_as_test(
            hypothesis_seed(SEED)(LedgerMachine),
            settings=settings(
                max_examples=EXAMPLES,
                stateful_step_count=STEPS,
                deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
            ),
        )
    finally:
        report(
            "R8",
            "ledger_machine",
            seed=SEED,
            runs=FIGURES["examples"],
            failures={key: FIGURES[key] for key in FAILURES},
            max_steps=STEPS,
            **{
                key: FIGURES[key]
                for key in sorted(FIGURES)
                if key not in FAILURES and key != "examples"
            },
        )
