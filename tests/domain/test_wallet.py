"""The Wallet aggregate: lots, settlement, consumption, expiry (D15), D6 rounding, §6.5 rules."""

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any
from uuid import uuid4

import pytest

from domain.errors import InvalidValueError
from domain.wallet import (
    Rule,
    RuleInput,
    Wallet,
    WalletNotActiveError,
    cents_to_credits,
    credits_to_cents,
    interval_index_at,
    interval_occurrence_at,
    rule_top_up,
    threshold_reached,
)
from tests.builders import ORG_ID

NOW = datetime(2026, 3, 1, 12, tzinfo=UTC)
LATER = NOW + timedelta(days=1)


def new_wallet(*, rate: str = "1", rules: list[RuleInput] | None = None, **settings: Any) -> Wallet:
    values: dict[str, Any] = {
        "name": None,
        "code": "main",
        "priority": None,
        "expiration_at": None,
        "fee_types": (),
        "billable_metric_codes": (),
        "invoice_requires_successful_payment": False,
        "paid_top_up_min_amount_cents": None,
        "paid_top_up_max_amount_cents": None,
        "metadata": {},
        **settings,
    }
    wallet = Wallet.create(
        uuid4(),
        organization_id=ORG_ID,
        customer_id=uuid4(),
        external_customer_id="cus_1",
        currency="EUR",
        rate_amount=Decimal(rate),
        rules=rules or [],
        now=NOW,
        rule_ids=[uuid4() for _ in rules or []],
        **values,
    )
    wallet.collect_events()
    return wallet


def holding(granted_cents: int = 0, purchased_cents: int = 0, **settings: Any) -> Wallet:
    """A wallet with one settled granted lot and one settled purchased lot (in that order)."""
    wallet = new_wallet(**settings)
    if granted_cents:
        wallet.grant(uuid4(), granted_cents, now=NOW)
    if purchased_cents:
        transaction_id = uuid4()
        wallet.purchase(transaction_id, purchased_cents, uuid4(), now=NOW)
        wallet.settle(transaction_id, NOW)
    wallet.collect_events()
    return wallet


def replayed(events: list[Any]) -> Wallet:
    """The wallet rebuilt from its whole history, creation included."""
    rebuilt: Any = None
    for domain_event in events:
        rebuilt = domain_event.mutate(rebuilt)
    assert isinstance(rebuilt, Wallet)
    return rebuilt


def test_granted_credits_settle_at_once_as_a_lot() -> None:
    # Given an empty wallet
    wallet = new_wallet()
    transaction_id = uuid4()
    # When 10.00 EUR of credits are granted
    wallet.grant(transaction_id, 1000, now=NOW)
    # Then one settled inbound entry is recorded, and it is a lot
    [granted] = wallet.collect_events()
    assert isinstance(granted, Wallet.Granted)
    entry = wallet.transactions[transaction_id]
    assert (entry.kind, entry.status, entry.transaction_type) == ("granted", "settled", "inbound")
    assert (wallet.balance_cents, entry.remaining_cents) == (1000, 1000)


def test_paid_credits_stay_pending_until_their_invoice_is_paid() -> None:
    # Given a wallet that bought 20.00 EUR of credits
    wallet = new_wallet()
    transaction_id, invoice_id = uuid4(), uuid4()
    wallet.purchase(transaction_id, 2000, invoice_id, now=NOW)
    [purchased] = wallet.collect_events()
    assert isinstance(purchased, Wallet.Purchased)
    assert (wallet.balance_cents, wallet.pending_inbound_cents) == (0, 2000)
    # When the credit invoice is paid
    assert wallet.settle(transaction_id, LATER)
    # Then the credits reach the balance
    [settled] = wallet.collect_events()
    assert isinstance(settled, Wallet.PurchaseSettled)
    assert (wallet.balance_cents, wallet.pending_inbound_cents) == (2000, 0)
    assert wallet.transactions[transaction_id].settled_at == LATER


def test_a_payment_webhook_delivered_twice_or_late_changes_nothing_more() -> None:
    # Given a purchase already settled
    wallet = new_wallet()
    transaction_id = uuid4()
    wallet.purchase(transaction_id, 2000, uuid4(), now=NOW)
    wallet.settle(transaction_id, NOW)
    wallet.collect_events()
    # When the success arrives again, and an old failure after it
    assert not wallet.settle(transaction_id, LATER)
    assert not wallet.fail(transaction_id, LATER)
    # Then nothing is recorded
    assert wallet.collect_events() == []
    assert wallet.balance_cents == 2000


def test_a_failed_payment_fails_the_purchase_and_a_late_success_still_settles() -> None:
    # Given a pending purchase whose payment failed
    wallet = new_wallet()
    transaction_id = uuid4()
    wallet.purchase(transaction_id, 500, uuid4(), now=NOW)
    assert wallet.fail(transaction_id, NOW)
    assert (wallet.transactions[transaction_id].status, wallet.balance_cents) == ("failed", 0)
    # When a retried payment succeeds
    assert wallet.settle(transaction_id, LATER)
    # Then the credits settle: the money was received
    assert (wallet.transactions[transaction_id].status, wallet.balance_cents) == ("settled", 500)


def test_an_invoice_takes_granted_lots_before_purchased_ones_oldest_first() -> None:
    # Given purchased 10.00 (settled first), then granted 3.00 and granted 4.00
    wallet = new_wallet()
    bought, first_grant, second_grant = uuid4(), uuid4(), uuid4()
    wallet.purchase(bought, 1000, uuid4(), now=NOW)
    wallet.settle(bought, NOW)
    wallet.grant(first_grant, 300, now=NOW)
    wallet.grant(second_grant, 400, now=LATER)
    wallet.collect_events()
    # When an invoice of 9.00 is paid from it
    applied = wallet.pay_invoice(uuid4(), 900, "EUR", LATER)
    # Then the two granted lots go first, oldest first, then 2.00 of the purchased one
    [invoiced] = wallet.collect_events()
    assert isinstance(invoiced, Wallet.Invoiced)
    assert applied == 900
    assert [(lot["transaction_id"], lot["amount_cents"]) for lot in invoiced.lots] == [
        (first_grant, 300),
        (second_grant, 400),
        (bought, 200),
    ]
    assert [lot.remaining_cents for lot in wallet.lots] == [800]
    assert wallet.invariant_violations() == []


def test_an_invoice_larger_than_the_balance_takes_the_whole_balance() -> None:
    # Given a wallet holding 5.00 EUR
    wallet = holding(granted_cents=500)
    # When it pays an invoice of 8.00 EUR
    applied = wallet.pay_invoice(uuid4(), 800, "EUR", NOW)
    # Then it records one debit of 5.00 and is empty
    [invoiced] = wallet.collect_events()
    assert isinstance(invoiced, Wallet.Invoiced)
    assert (applied, invoiced.amount_cents, wallet.balance_cents) == (500, 500, 0)


def test_d6_a_credit_whose_money_is_not_a_whole_cent_is_rounded_half_up_once() -> None:
    # 14.28444999 credits at 1 EUR: 14.28 EUR, and the credits re-derived are 14.28
    # (Lago: transaction 14.28 but balance 85.71, lago-api#4641).
    assert credits_to_cents(Decimal("14.28444999"), Decimal(1), "EUR") == 1428
    assert cents_to_credits(1428, Decimal(1), "EUR") == Decimal("14.28000")
    # 1.333 credits at 1.5 EUR are 1.9995 EUR: half-up to 2.00, shown as 1.33333 credits.
    assert credits_to_cents(Decimal("1.333"), Decimal("1.5"), "EUR") == 200
    assert cents_to_credits(200, Decimal("1.5"), "EUR") == Decimal("1.33333")
    # Half-up, not half-even: 0.125 EUR is 0.13; in yen, 2.5 is 3.
    assert credits_to_cents(Decimal("0.125"), Decimal(1), "EUR") == 13
    assert credits_to_cents(Decimal("2.5"), Decimal(1), "JPY") == 3


def test_expiry_writes_an_explicit_entry_for_the_forfeited_balance() -> None:
    # Given a wallet expiring tomorrow, holding 7.00 granted and 3.00 purchased
    wallet = holding(granted_cents=700, purchased_cents=300, expiration_at=LATER)
    # When the expiry is processed after the expiration date
    assert wallet.expire(LATER + timedelta(hours=1))
    # Then the balance is forfeited by one outbound entry, at the expiration instant, and the
    # wallet is terminated
    forfeited, terminated = wallet.collect_events()
    assert isinstance(forfeited, Wallet.Forfeited) and isinstance(terminated, Wallet.Terminated)
    assert (forfeited.amount_cents, forfeited.reason, forfeited.created_at) == (
        1000,
        "expired",
        LATER,
    )
    entry = wallet.entries()[-1]
    assert (entry.kind, entry.transaction_status, entry.void_reason) == (
        "expired",
        "voided",
        "expired",
    )
    assert (wallet.status, wallet.balance_cents, wallet.terminated_at) == ("terminated", 0, LATER)
    assert wallet.invariant_violations() == []


def test_a_wallet_before_its_expiration_does_not_expire() -> None:
    wallet = holding(granted_cents=700, expiration_at=LATER)
    assert not wallet.expire(LATER - timedelta(seconds=1))
    assert wallet.collect_events() == []


def test_credits_settling_on_a_terminated_wallet_are_forfeited_at_once() -> None:
    # Given a pending purchase on a wallet that is then terminated
    wallet = new_wallet()
    transaction_id = uuid4()
    wallet.purchase(transaction_id, 2000, uuid4(), now=NOW)
    wallet.terminate(NOW)
    wallet.collect_events()
    # When the credit invoice is paid after all
    wallet.settle(transaction_id, LATER)
    # Then the credits settle and are forfeited by an explicit entry: the balance stays 0
    settled, forfeited = wallet.collect_events()
    assert isinstance(settled, Wallet.PurchaseSettled) and isinstance(forfeited, Wallet.Forfeited)
    assert (forfeited.amount_cents, forfeited.reason, wallet.balance_cents) == (
        2000,
        "terminated",
        0,
    )


def test_an_expired_wallet_pays_no_invoice() -> None:
    wallet = holding(granted_cents=700, expiration_at=LATER)
    assert wallet.pay_invoice(uuid4(), 500, "EUR", LATER) == 0
    assert wallet.collect_events() == []


def test_voiding_more_than_the_balance_is_refused() -> None:
    # Given 5.00 EUR
    wallet = holding(granted_cents=500)
    # When 6.00 are voided
    with pytest.raises(InvalidValueError) as error:
        wallet.void_credits(uuid4(), 600, now=NOW)
    # Then Lago's error, and nothing is recorded
    assert (error.value.field, error.value.reason) == ("voided_credits", "insufficient_credits")
    assert wallet.collect_events() == []


def test_a_void_takes_granted_lots_first() -> None:
    wallet = holding(granted_cents=500, purchased_cents=500)
    wallet.void_credits(uuid4(), 600, now=NOW)
    [voided] = wallet.collect_events()
    assert isinstance(voided, Wallet.Voided)
    assert [lot["amount_cents"] for lot in voided.lots] == [500, 100]
    assert wallet.balance_cents == 400


def test_a_paid_top_up_outside_the_limits_is_refused_unless_ignored() -> None:
    wallet = new_wallet(paid_top_up_min_amount_cents=1000, paid_top_up_max_amount_cents=5000)
    with pytest.raises(InvalidValueError) as below:
        wallet.purchase(uuid4(), 999, uuid4(), now=NOW)
    with pytest.raises(InvalidValueError) as above:
        wallet.purchase(uuid4(), 5001, uuid4(), now=NOW)
    assert (below.value.reason, above.value.reason) == (
        "amount_below_minimum",
        "amount_above_maximum",
    )
    assert wallet.collect_events() == []
    assert wallet.purchase(uuid4(), 999, uuid4(), now=NOW, ignore_paid_top_up_limits=True)


def test_a_terminated_wallet_takes_no_top_up() -> None:
    wallet = holding(granted_cents=500)
    wallet.terminate(NOW)
    wallet.collect_events()
    with pytest.raises(WalletNotActiveError):
        wallet.grant(uuid4(), 100, now=NOW)
    assert wallet.collect_events() == []
    assert not wallet.terminate(LATER)  # Terminating again records nothing.


def test_a_repeated_automatic_top_up_records_nothing() -> None:
    # Given a grant made by a rule's first crossing
    wallet = new_wallet()
    transaction_id, rule_id = uuid4(), uuid4()
    wallet.grant(transaction_id, 100, now=NOW, source="threshold", rule_id=rule_id, occurrence="1")
    wallet.collect_events()
    # When a racing worker decides the same top-up (same transaction id)
    assert not wallet.grant(
        transaction_id, 100, now=NOW, source="threshold", rule_id=rule_id, occurrence="1"
    )
    # Then nothing more is recorded, and the rule waits for the next crossing
    assert wallet.collect_events() == []
    assert (wallet.armed[rule_id], wallet.occurrences[rule_id]) == (False, ["1"])
    assert wallet.rearm(rule_id) and wallet.armed[rule_id]


def test_the_wallet_rebuilds_from_its_events() -> None:
    # Given a history with every kind of entry, creation included
    wallet = Wallet.create(
        uuid4(),
        organization_id=ORG_ID,
        customer_id=uuid4(),
        external_customer_id="cus_1",
        currency="EUR",
        rate_amount=Decimal("0.5"),
        name="Prepaid",
        code="main",
        priority=1,
        expiration_at=None,
        fee_types=["charge"],
        billable_metric_codes=[],
        rules=[
            RuleInput(trigger="threshold", threshold_credits=Decimal(10), paid_credits=Decimal(20))
        ],
        invoice_requires_successful_payment=False,
        paid_top_up_min_amount_cents=None,
        paid_top_up_max_amount_cents=None,
        metadata={"team": "ml"},
        now=NOW,
        rule_ids=[uuid4()],
    )
    bought = uuid4()
    wallet.purchase(bought, 1000, uuid4(), now=NOW)
    wallet.grant(uuid4(), 250, now=NOW)
    wallet.settle(bought, NOW)
    wallet.pay_invoice(uuid4(), 400, "EUR", NOW)
    wallet.void_credits(uuid4(), 100, now=NOW)
    # When it is rebuilt from its events
    rebuilt = replayed(wallet.collect_events())
    # Then it is the same wallet
    assert rebuilt.balance_cents == wallet.balance_cents == 750
    assert rebuilt.entries() == wallet.entries()
    assert rebuilt.rules == wallet.rules
    assert rebuilt.rules[0].threshold_cents == 500  # 10 credits at 0.50 EUR.


# §6.5 automatic top-ups, the worked numbers (1 credit = 1.00 EUR).


def rule(**fields: Any) -> Rule:
    values: dict[str, Any] = {
        "lago_id": uuid4(),
        "trigger": "threshold",
        "method": "fixed",
        "interval": None,
        "threshold_cents": None,
        "paid_cents": 0,
        "granted_cents": 0,
        "target_cents": None,
        "grants_target_top_up": False,
        "started_at": NOW,
        "expiration_at": None,
        "created_at": NOW,
        "transaction_metadata": (),
        "transaction_name": None,
        "ignore_paid_top_up_limits": False,
        "invoice_requires_successful_payment": False,
        **fields,
    }
    return Rule(**values)


def top_up(r: Rule, ongoing: int, pending: int = 0, **limits: int | None) -> tuple[int, int]:
    amounts = rule_top_up(
        r,
        ongoing,
        pending,
        paid_min_cents=limits.get("minimum"),
        paid_max_cents=limits.get("maximum"),
    )
    return amounts.paid_cents, amounts.granted_cents


def test_fixed_threshold_buys_the_smallest_multiple_that_lifts_above_the_threshold() -> None:
    threshold = rule(threshold_cents=1500, paid_cents=1000)
    # Threshold 15, paid 10: ongoing 2 → gap 13 → 10 × 2 = 20 (→ 22).
    assert threshold_reached(threshold, 200, 0)
    assert top_up(threshold, 200) == (2000, 0)
    # Ongoing 14 → gap 1 → 10 (→ 24).
    assert top_up(threshold, 1400) == (1000, 0)
    # The paid maximum caps it.
    assert top_up(threshold, 200, maximum=1500) == (1500, 0)


def test_a_granted_only_threshold_rule_grants_its_credits() -> None:
    # {threshold 15, paid 0, granted 10}: balance 25 − usage 12 = 13 → granted 10 → 23.
    granted = rule(threshold_cents=1500, granted_cents=1000)
    assert threshold_reached(granted, 1300, 0)
    assert top_up(granted, 1300) == (0, 1000)


def test_pending_credits_keep_a_threshold_rule_quiet() -> None:
    threshold = rule(threshold_cents=1500, paid_cents=1000)
    assert not threshold_reached(threshold, 1400, 2000)  # 14 + 20 pending > 15.
    assert not threshold_reached(threshold, 1600, 0)


def test_target_tops_up_to_the_target_with_the_minimum_and_without_the_maximum() -> None:
    target = rule(method="target", threshold_cents=5000, target_cents=10000)
    # Target 100, ongoing 30 → 70.
    assert top_up(target, 3000) == (7000, 0)
    assert top_up(target, 3000, maximum=1000) == (7000, 0)
    assert top_up(target, 9500, minimum=1000) == (1000, 0)
    assert top_up(target, 12000) == (0, 0)
    granted = rule(
        method="target", threshold_cents=5000, target_cents=10000, grants_target_top_up=True
    )
    assert top_up(granted, 3000) == (0, 7000)


def test_interval_anniversaries_never_drift() -> None:
    start = datetime(2026, 1, 31, 9, tzinfo=UTC)
    assert interval_occurrence_at(start, "monthly", 1) == datetime(2026, 2, 28, 9, tzinfo=UTC)
    assert interval_occurrence_at(start, "monthly", 2) == datetime(2026, 3, 31, 9, tzinfo=UTC)
    assert interval_index_at(start, "monthly", datetime(2026, 3, 31, 8, tzinfo=UTC)) == 1
    assert interval_index_at(start, "monthly", datetime(2026, 3, 31, 9, tzinfo=UTC)) == 2
    assert interval_index_at(start, "weekly", start + timedelta(days=13)) == 1
    assert interval_index_at(start, "yearly", start - timedelta(seconds=1)) == -1


def test_rules_are_validated_like_lagos() -> None:
    with pytest.raises(InvalidValueError) as error:
        new_wallet(rules=[RuleInput(trigger="interval", interval="daily")])
    assert (error.value.field, error.value.reason) == (
        "recurring_transaction_rules",
        "invalid_recurring_rule",
    )
    with pytest.raises(InvalidValueError) as error:
        new_wallet(rules=[RuleInput(trigger="threshold"), RuleInput(trigger="threshold")])
    assert error.value.reason == "invalid_number_of_recurring_rules"


def test_an_update_keeps_a_rule_named_by_its_lago_id() -> None:
    wallet = new_wallet(
        rules=[
            RuleInput(trigger="threshold", threshold_credits=Decimal(5), paid_credits=Decimal(10))
        ]
    )
    [existing] = wallet.rules
    changed = wallet.update(
        {"priority": 3},
        [RuleInput(trigger=None, lago_id=existing.lago_id, threshold_credits=Decimal(7))],
        NOW,
    )
    assert changed
    [updated] = wallet.rules
    assert (updated.lago_id, updated.threshold_cents, updated.paid_cents) == (
        existing.lago_id,
        700,
        1000,
    )
    assert wallet.priority == 3
    assert not wallet.update({"priority": 3}, None, NOW)  # Nothing changes: nothing recorded.


def test_limitations_match_a_metric_or_a_fee_type() -> None:
    by_metric = new_wallet(billable_metric_codes=["tokens"])
    by_type = new_wallet(fee_types=["subscription"])
    anything = new_wallet()
    assert by_metric.applies_to("charge", "tokens") and not by_metric.applies_to("charge", "calls")
    assert by_type.applies_to("subscription", None) and not by_type.applies_to("charge", "tokens")
    assert anything.applies_to("commitment", None)
