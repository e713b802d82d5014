"""R2 against a model: random top-ups (granted, paid, settled, failed, webhooks twice and out of
order), voids, invoice debits and expiry on one Wallet, checked after every step against an
obviously correct model: balance = Σ settled entries, no lot below zero, money conserved, and
the wallet rebuilt from its events is the same wallet."""

import os
import random
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any
from uuid import UUID, uuid4

import pytest
from hypothesis import HealthCheck, seed, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    initialize,
    invariant,
    rule,
    run_state_machine_as_test,
)

from domain.errors import InvalidValueError
from domain.wallet import Wallet, WalletNotActiveError
from tests.builders import ORG_ID
from tests.reliability.battery import report, tier

pytestmark = pytest.mark.reliability

SEED = int(os.environ.get("TALLY_SEED") or random.SystemRandom().randrange(2**32))
START = datetime(2026, 3, 1, tzinfo=UTC)
EXPIRATION = START + timedelta(days=30)
CENTS = st.integers(1, 10**7)
FIGURES = {
    "runs": 0,
    "steps": 0,
    "conservation_violations": 0,
    "negative_balance_violations": 0,
    "drift_cents": 0,
}


class WalletMachine(RuleBasedStateMachine):
    purchases = Bundle("purchases")

    @initialize()
    def create(self) -> None:
        FIGURES["runs"] += 1
        self.now = START
        self.wallet = Wallet.create(
            uuid4(),
            organization_id=ORG_ID,
            customer_id=uuid4(),
            external_customer_id="cus_1",
            currency="EUR",
            rate_amount=Decimal("0.5"),
            name=None,
            code="w",
            priority=None,
            expiration_at=EXPIRATION,
            fee_types=[],
            billable_metric_codes=[],
            rules=[],
            invoice_requires_successful_payment=False,
            paid_top_up_min_amount_cents=None,
            paid_top_up_max_amount_cents=None,
            metadata={},
            now=START,
            rule_ids=[],
        )
        self.history: list[Any] = self.wallet.collect_events()
        # The model: what settled in and went out, and each lot's remainder by kind.
        self.settled_in = 0
        self.went_out = 0
        self.lots: list[tuple[str, int]] = []  # (kind, cents) in settlement order
        self.pending: dict[UUID, int] = {}
        self.failed: dict[UUID, int] = {}
        self.terminated = False

    def _step(self) -> None:
        FIGURES["steps"] += 1
        self.now += timedelta(minutes=1)
        self.history += self.wallet.collect_events()

    @property
    def model_balance(self) -> int:
        return sum(cents for _, cents in self.lots)

    def _take(self, cents: int) -> None:
        """The model's consumption: granted lots first, then purchased, oldest first."""
        ordered = sorted(range(len(self.lots)), key=lambda i: (self.lots[i][0] != "granted", i))
        for index in ordered:
            kind, left = self.lots[index]
            taken = min(left, cents)
            self.lots[index] = (kind, left - taken)
            cents -= taken
        assert cents == 0, cents

    @rule(cents=CENTS)
    def grant(self, cents: int) -> None:
        if self.terminated:
            with pytest.raises(WalletNotActiveError):
                self.wallet.grant(uuid4(), cents, now=self.now)
        else:
            self.wallet.grant(uuid4(), cents, now=self.now)
            self.settled_in += cents
            self.lots.append(("granted", cents))
        self._step()

    @rule(target=purchases, cents=CENTS)
    def purchase(self, cents: int) -> UUID:
        transaction_id = uuid4()
        if self.terminated:
            with pytest.raises(WalletNotActiveError):
                self.wallet.purchase(transaction_id, cents, uuid4(), now=self.now)
        else:
            self.wallet.purchase(transaction_id, cents, uuid4(), now=self.now)
            self.pending[transaction_id] = cents
        self._step()
        return transaction_id

    @rule(transaction_id=purchases, times=st.integers(1, 2))
    def payment_succeeded(self, transaction_id: UUID, times: int) -> None:
        """A PSP webhook, possibly delivered twice, possibly after a failure."""
        cents = self.pending.pop(transaction_id, None) or self.failed.pop(transaction_id, None)
        for _ in range(times):
            if transaction_id in self.wallet.transactions:
                self.wallet.settle(transaction_id, self.now)
        if cents is not None:
            self.settled_in += cents
            if self.terminated:
                self.went_out += cents  # Forfeited at once (D15).
            else:
                self.lots.append(("purchased", cents))
        self._step()

    @rule(transaction_id=purchases)
    def payment_failed(self, transaction_id: UUID) -> None:
        """A failure, possibly arriving after the success (then ignored)."""
        if transaction_id in self.wallet.transactions:
            changed = self.wallet.fail(transaction_id, self.now)
            assert changed == (transaction_id in self.pending)
        if transaction_id in self.pending:
            self.failed[transaction_id] = self.pending.pop(transaction_id)
        self._step()

    @rule(cents=CENTS)
    def void(self, cents: int) -> None:
        if self.terminated:
            with pytest.raises(WalletNotActiveError):
                self.wallet.void_credits(uuid4(), cents, now=self.now)
        elif cents > self.model_balance:
            with pytest.raises(InvalidValueError):
                self.wallet.void_credits(uuid4(), cents, now=self.now)
            assert self.wallet.collect_events() == []
        else:
            self.wallet.void_credits(uuid4(), cents, now=self.now)
            self.went_out += cents
            self._take(cents)
        self._step()

    @rule(due=st.integers(0, 2 * 10**7))
    def invoice(self, due: int) -> None:
        applied = self.wallet.pay_invoice(uuid4(), due, "EUR", self.now)
        expected = 0 if self.terminated else min(due, self.model_balance)
        assert applied == expected, (applied, expected)
        self.went_out += applied
        if applied:
            self._take(applied)
        self._step()

    @rule()
    def expire(self) -> None:
        self.now = max(self.now, EXPIRATION)
        expired = self.wallet.expire(self.now)
        assert expired != self.terminated
        if expired:
            self.went_out += self.model_balance
            self.lots = [(kind, 0) for kind, _ in self.lots]
            self.terminated = True
        self._step()

    @invariant()
    def balance_equals_the_model_and_the_settled_entries(self) -> None:
        wallet = self.wallet
        drift = abs(wallet.balance_cents - self.model_balance)
        FIGURES["drift_cents"] += drift
        conserved = wallet.balance_cents == self.settled_in - self.went_out
        conserved = conserved and wallet.settled_inbound_cents == self.settled_in
        conserved = conserved and wallet.outbound_cents == self.went_out
        if not conserved:
            FIGURES["conservation_violations"] += 1
        problems = wallet.invariant_violations()
        if wallet.balance_cents < 0 or "a lot below zero" in problems:
            FIGURES["negative_balance_violations"] += 1
        assert drift == 0, (wallet.balance_cents, self.model_balance)
        assert conserved, (wallet.balance_cents, self.settled_in, self.went_out)
        assert problems == [], problems
        assert [lot.remaining_cents for lot in wallet.lots] == [
            cents for kind, cents in sorted(self.lots, key=lambda lot: lot[0] != "granted") if cents
        ]
        assert wallet.pending_inbound_cents == sum(self.pending.values())

    @invariant()
    def the_wallet_rebuilds_from_its_events(self) -> None:
        if FIGURES["steps"] % 7:
            return  # Every few steps: replaying is the slow part.
        rebuilt: Any = None
        for domain_event in self.history:
            rebuilt = domain_event.mutate(rebuilt)
        assert rebuilt.entries() == self.wallet.entries()
        assert rebuilt.balance_cents == self.wallet.balance_cents


def test_the_wallet_matches_the_model_and_conserves_money() -> None:
    run_state_machine_as_test(
        seed(SEED)(WalletMachine),
        settings=settings(
            max_examples=tier(200, 2000),
            stateful_step_count=50,
            deadline=None,
            database=None,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )
    passed = report(
        "R2",
        "wallet_machine",
        seed=SEED,
        runs=FIGURES["runs"],
        failures={
            "conservation_violations": FIGURES["conservation_violations"],
            "negative_balance_violations": FIGURES["negative_balance_violations"],
            "drift_cents": FIGURES["drift_cents"],
        },
        steps=FIGURES["steps"],
    )
    assert passed, SEED
