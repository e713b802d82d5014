"""Wallets through the use cases: consumption at finalization (§6.3), the ongoing balance (§6.4),
automatic top-ups with the worked numbers (§6.5), credit invoices (§6.2), expiry (D15) and the
freshness of threshold top-ups after an ingest (P6); on a fixed clock, 1 credit = 1.00 EUR."""

import threading
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any
from uuid import UUID

import pytest

from adapters.stores import Ledger
from application.metering import EventInput
from application.wallets import TopUpValues, WalletValues, allocate_ongoing_usage
from domain.invoice import Invoice
from domain.wallet import RuleInput, Wallet, WalletTransaction
from tests.conftest import Tenant

MARCH_1 = datetime(2026, 3, 1, tzinfo=UTC)
MARCH_2 = datetime(2026, 3, 2, tzinfo=UTC)
MARCH_10 = datetime(2026, 3, 10, tzinfo=UTC)
APRIL_1 = datetime(2026, 4, 1, tzinfo=UTC)


def at(ledger: Ledger, instant: datetime) -> None:
    ledger.billing.now = lambda: instant


@pytest.fixture
def org(ledger: Ledger, tenant: Tenant) -> UUID:
    """A 20.00 EUR monthly plan in arrears with tokens at 0.01 EUR each, and customer acme
    subscribed from March 1."""
    billing = ledger.billing
    organization_id = tenant.organization_id
    at(ledger, MARCH_1)
    metric = billing.create_billable_metric(
        organization_id,
        "tokens",
        {"name": "Tokens", "aggregation_type": "sum_agg", "field_name": "tokens"},
    )
    billing.create_plan(
        organization_id,
        "basic",
        {
            "name": "Basic",
            "interval": "monthly",
            "amount_cents": 2000,
            "amount_currency": "EUR",
            "pay_in_advance": False,
            "charges": [
                {
                    "billable_metric_id": str(metric.id),
                    "charge_model": "standard",
                    "properties": {"amount": "0.01"},
                }
            ],
        },
    )
    billing.create_subscription(
        organization_id,
        "sub_1",
        external_customer_id="acme",
        plan_code="basic",
        subscription_at=MARCH_1,
    )
    return organization_id


def ingest(ledger: Ledger, org: UUID, transaction_id: str, tokens: int) -> None:
    ledger.metering.ingest(
        org,
        [
            EventInput(
                transaction_id,
                "sub_1",
                "tokens",
                int(ledger.billing.now().timestamp()),
                {"tokens": tokens},
                None,
            )
        ],
        batch=False,
    )


def create_wallet(ledger: Ledger, org: UUID, code: str, **values: Any) -> Wallet:
    return ledger.wallets.create_wallet(
        org,
        WalletValues(
            external_customer_id="acme", currency="EUR", rate_amount=Decimal(1), code=code, **values
        ),
    )


def threshold_rule(**fields: Any) -> RuleInput:
    return RuleInput(trigger="threshold", **fields)


def reload(ledger: Ledger, org: UUID, wallet: Wallet) -> Wallet:
    return ledger.wallets.wallet(org, wallet.id)


def ongoing_cents(ledger: Ledger, org: UUID, wallet: Wallet) -> int:
    return ledger.wallets.ongoing_balance(reload(ledger, org, wallet)).balance_cents


def automatic(wallet: Wallet) -> list[WalletTransaction]:
    return [t for t in wallet.entries() if t.source != "manual"]


def test_wallets_pay_an_invoice_in_priority_order_within_their_limitations(
    ledger: Ledger, org: UUID
) -> None:
    # §6.3: subscription 20.00 + charge 80.00, VAT 20 % → 120.00. W1 (priority 1, charges only,
    # 50.00) pays 50.00 of the charge bucket (96.00); W2 (priority 2, 200.00) pays the other 70.00.
    ledger.billing.create_tax(
        org, "vat", {"name": "VAT", "rate": "20", "applied_to_organization": True}
    )
    at(ledger, MARCH_2)
    w1 = create_wallet(
        ledger, org, "w1", priority=1, fee_types=["charge"], granted_credits=Decimal(50)
    )
    w2 = create_wallet(ledger, org, "w2", priority=2, granted_credits=Decimal(200))
    at(ledger, MARCH_10)
    ingest(ledger, org, "t1", 8000)
    at(ledger, APRIL_1)
    [invoice] = ledger.invoicing.run(APRIL_1)
    totals = invoice.totals
    assert (totals.fees_amount_cents, totals.taxes_amount_cents) == (10000, 2000)
    assert (totals.prepaid_credit_amount_cents, totals.total_amount_cents) == (12000, 0)
    assert (invoice.status, invoice.payment_status) == ("finalized", "succeeded")
    paid = {credit["wallet_id"]: credit["amount_cents"] for credit in invoice.prepaid_credits}
    assert paid == {w1.id: 5000, w2.id: 7000}
    w1, w2 = reload(ledger, org, w1), reload(ledger, org, w2)
    assert (w1.balance_cents, w2.balance_cents) == (0, 13000)
    [debit] = [t for t in w2.entries() if t.kind == "invoiced"]
    assert (debit.invoice_id, debit.amount_cents) == (invoice.id, 7000)
    assert invoice.prepaid_granted_credit_amount_cents == 12000
    # A rerun of the billing run debits nothing twice.
    ledger.invoicing.run(APRIL_1)
    assert reload(ledger, org, w2).balance_cents == 13000


def test_a_wallet_for_another_metric_pays_nothing(ledger: Ledger, org: UUID) -> None:
    at(ledger, MARCH_2)
    ledger.billing.create_billable_metric(
        org, "calls", {"name": "Calls", "aggregation_type": "count_agg"}
    )
    calls_only = create_wallet(
        ledger, org, "calls", billable_metric_codes=["calls"], granted_credits=Decimal(500)
    )
    at(ledger, MARCH_10)
    ingest(ledger, org, "t1", 1000)
    [invoice] = ledger.invoicing.run(APRIL_1)
    assert (invoice.totals.prepaid_credit_amount_cents, invoice.totals.total_amount_cents) == (
        0,
        3000,
    )
    assert reload(ledger, org, calls_only).balance_cents == 50000


def test_the_ongoing_balance_is_the_balance_minus_current_usage(ledger: Ledger, org: UUID) -> None:
    at(ledger, MARCH_2)
    wallet = create_wallet(ledger, org, "main", granted_credits=Decimal(25))
    at(ledger, MARCH_10)
    ingest(ledger, org, "t1", 1200)
    ongoing = ledger.wallets.ongoing_balance(reload(ledger, org, wallet))
    assert (ongoing.wallet.balance_cents, ongoing.usage_cents, ongoing.balance_cents) == (
        2500,
        1200,
        1300,
    )


def test_a_fixed_threshold_rule_tops_up_with_the_worked_numbers(ledger: Ledger, org: UUID) -> None:
    # §6.5: threshold 15, paid 10. Ongoing 2 → 20; later ongoing 14 → 10.
    at(ledger, MARCH_2)
    rule = threshold_rule(threshold_credits=Decimal(15), paid_credits=Decimal(10))
    wallet = create_wallet(ledger, org, "main", granted_credits=Decimal(25), rules=[rule])
    at(ledger, MARCH_10)
    ingest(ledger, org, "t1", 2300)
    assert ongoing_cents(ledger, org, wallet) == 200
    [bought] = ledger.wallets.refresh(org, "acme")
    assert (bought.kind, bought.status, bought.source, bought.amount_cents) == (
        "purchased",
        "pending",
        "threshold",
        2000,
    )
    # Its credit invoice: one `credit` fee, no tax, finalized and numbered.
    assert bought.invoice_id is not None
    invoice = ledger.invoicing.invoice(org, bought.invoice_id)
    assert (invoice.invoice_type, invoice.status, invoice.payment_status) == (
        "credit",
        "finalized",
        "pending",
    )
    assert [(fee.fee_type, fee.amount_cents, fee.tax_codes) for fee in invoice.fees] == [
        ("credit", 2000, ())
    ]
    assert invoice.totals.total_amount_cents == 2000 and invoice.number is not None
    # Pending credits keep the rule quiet: no second top-up for the same crossing.
    assert ledger.wallets.refresh(org, "acme") == []
    # The invoice is paid: the credits settle, the ongoing balance is 2 + 20 = 22.
    ledger.invoicing.set_payment_status(org, invoice.id, "succeeded")
    wallet = reload(ledger, org, wallet)
    assert (wallet.transactions[bought.transaction_id].status, wallet.balance_cents) == (
        "settled",
        4500,
    )
    assert ongoing_cents(ledger, org, wallet) == 2200
    # Usage brings it to 14: gap 1 → 10.
    ingest(ledger, org, "t2", 800)
    [second] = ledger.wallets.refresh(org, "acme")
    assert (second.kind, second.amount_cents) == ("purchased", 1000)
    assert [t.amount_cents for t in automatic(reload(ledger, org, wallet))] == [2000, 1000]


def test_a_granted_threshold_rule_grants_at_once(ledger: Ledger, org: UUID) -> None:
    # §6.5: {threshold 15, paid 0, granted 10}: 25 − 12 = 13 → granted 10 → 23.
    at(ledger, MARCH_2)
    rule = threshold_rule(threshold_credits=Decimal(15), granted_credits=Decimal(10))
    wallet = create_wallet(ledger, org, "main", granted_credits=Decimal(25), rules=[rule])
    at(ledger, MARCH_10)
    ingest(ledger, org, "t1", 1200)
    [granted] = ledger.wallets.refresh(org, "acme")
    assert (granted.kind, granted.status, granted.amount_cents) == ("granted", "settled", 1000)
    assert ongoing_cents(ledger, org, wallet) == 2300
    # One top-up per crossing: still below 15 after a small grant would not loop either.
    assert ledger.wallets.refresh(org, "acme") == []


def test_a_target_rule_tops_up_to_the_target(ledger: Ledger, org: UUID) -> None:
    # §6.5: target 100, ongoing 30 → 70.
    at(ledger, MARCH_2)
    rule = threshold_rule(
        method="target", threshold_credits=Decimal(50), target_ongoing_balance=Decimal(100)
    )
    wallet = create_wallet(ledger, org, "main", granted_credits=Decimal(100), rules=[rule])
    at(ledger, MARCH_10)
    ingest(ledger, org, "t1", 7000)
    [bought] = ledger.wallets.refresh(org, "acme")
    assert (bought.kind, bought.amount_cents) == ("purchased", 7000)
    assert reload(ledger, org, wallet).pending_inbound_cents == 7000


def test_a_declined_top_up_fails_and_backs_off_for_an_hour(ledger: Ledger, org: UUID) -> None:
    at(ledger, MARCH_2)
    rule = threshold_rule(threshold_credits=Decimal(15), paid_credits=Decimal(10))
    wallet = create_wallet(ledger, org, "main", granted_credits=Decimal(20), rules=[rule])
    at(ledger, MARCH_10)
    ingest(ledger, org, "t1", 1000)
    [bought] = ledger.wallets.refresh(org, "acme")
    assert bought.invoice_id is not None
    ledger.invoicing.set_payment_status(org, bought.invoice_id, "failed")
    wallet = reload(ledger, org, wallet)
    assert wallet.transactions[bought.transaction_id].status == "failed"
    assert wallet.balance_cents == 2000
    # Within the hour: no new paid top-up; after it, the crossing is served again.
    at(ledger, MARCH_10 + timedelta(minutes=30))
    assert ledger.wallets.refresh(org, "acme") == []
    at(ledger, MARCH_10 + timedelta(hours=1, minutes=1))
    [again] = ledger.wallets.refresh(org, "acme")
    assert (again.kind, again.amount_cents) == ("purchased", 1000)
    assert again.transaction_id != bought.transaction_id


def test_racing_workers_make_exactly_one_top_up_per_crossing(ledger: Ledger, org: UUID) -> None:
    at(ledger, MARCH_2)
    rule = threshold_rule(threshold_credits=Decimal(15), paid_credits=Decimal(10))
    wallet = create_wallet(ledger, org, "main", granted_credits=Decimal(20), rules=[rule])
    at(ledger, MARCH_10)
    ingest(ledger, org, "t1", 1000)
    start = threading.Barrier(8)
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            start.wait()
            ledger.wallets.refresh(org, "acme")
        except BaseException as error:  # Reported below.
            errors.append(error)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    made = automatic(reload(ledger, org, wallet))
    assert [(t.kind, t.amount_cents) for t in made] == [("purchased", 1000)]
    credit_invoices = [
        i
        for i in ledger.invoicing.invoices(org, 1, 100)[0]
        if isinstance(i, Invoice) and i.invoice_type == "credit"
    ]
    assert len(credit_invoices) == 1


def test_manual_top_ups_buy_grant_and_void(ledger: Ledger, org: UUID) -> None:
    at(ledger, MARCH_2)
    wallet = create_wallet(ledger, org, "main", granted_credits=Decimal(10))
    made = ledger.wallets.top_up(
        org,
        wallet.id,
        TopUpValues(
            paid_credits=Decimal(5), granted_credits=Decimal("2.5"), voided_credits=Decimal(4)
        ),
    )
    assert [(t.kind, t.status, t.amount_cents) for t in made] == [
        ("purchased", "pending", 500),
        ("granted", "settled", 250),
        ("voided", "settled", 400),
    ]
    wallet = reload(ledger, org, wallet)
    assert (wallet.balance_cents, wallet.pending_inbound_cents) == (850, 500)
    assert wallet.invariant_violations() == []


def test_an_interval_rule_tops_up_once_per_anniversary(ledger: Ledger, org: UUID) -> None:
    at(ledger, MARCH_2)
    rule = RuleInput(
        trigger="interval", interval="monthly", granted_credits=Decimal(5), started_at=MARCH_2
    )
    wallet = create_wallet(ledger, org, "main", rules=[rule])
    at(ledger, MARCH_10)
    assert ledger.wallets.run_due() == []
    at(ledger, APRIL_1 + timedelta(days=1))
    [first] = ledger.wallets.run_due()
    assert (first.kind, first.source, first.amount_cents) == ("granted", "interval", 500)
    assert ledger.wallets.run_due() == []  # The same anniversary: nothing more.
    at(ledger, datetime(2026, 5, 2, tzinfo=UTC))
    [second] = ledger.wallets.run_due()
    assert second.transaction_id != first.transaction_id
    assert reload(ledger, org, wallet).balance_cents == 1000


def test_a_wallet_expires_with_an_explicit_entry(ledger: Ledger, org: UUID) -> None:
    at(ledger, MARCH_2)
    wallet = create_wallet(ledger, org, "main", granted_credits=Decimal(30), expiration_at=MARCH_10)
    at(ledger, MARCH_10 + timedelta(minutes=1))
    ledger.wallets.run_due()
    wallet = reload(ledger, org, wallet)
    assert (wallet.status, wallet.balance_cents, wallet.terminated_at) == (
        "terminated",
        0,
        MARCH_10,
    )
    expired = wallet.entries()[-1]
    assert (expired.kind, expired.amount_cents) == ("expired", 3000)


def test_ongoing_usage_is_allocated_in_priority_order(ledger: Ledger, org: UUID) -> None:
    at(ledger, MARCH_2)
    small = create_wallet(ledger, org, "small", priority=1, granted_credits=Decimal(10))
    large = create_wallet(ledger, org, "large", priority=2, granted_credits=Decimal(100))
    usage: dict[tuple[str, str | None], int] = {("charge", "tokens"): 3000}
    wallets = [reload(ledger, org, small), reload(ledger, org, large)]
    assert allocate_ongoing_usage(wallets, usage, MARCH_2) == {small.id: 1000, large.id: 2000}
    # A wallet with a threshold rule absorbs all that reaches it, so its rule can fire.
    ledger.wallets.update_wallet(
        org,
        small.id,
        WalletValues(rules=[threshold_rule(threshold_credits=Decimal(1), paid_credits=Decimal(5))]),
    )
    wallets = [reload(ledger, org, small), reload(ledger, org, large)]
    assert allocate_ongoing_usage(wallets, usage, MARCH_2) == {small.id: 3000, large.id: 0}


def test_after_an_ingest_commit_a_threshold_top_up_is_made_within_a_second(
    ledger: Ledger, org: UUID
) -> None:
    # P6: the worker refreshes the customer right after the commit, not every few minutes.
    at(ledger, MARCH_2)
    rule = threshold_rule(threshold_credits=Decimal(15), paid_credits=Decimal(10))
    wallet = create_wallet(ledger, org, "main", granted_credits=Decimal(20), rules=[rule])
    at(ledger, MARCH_10)
    ledger.top_ups.start()
    try:
        ingest(ledger, org, "t1", 1000)
        committed = time.monotonic()
        # The ongoing balance is computed at read time: fresh at once.
        assert ongoing_cents(ledger, org, wallet) == 1000
        deadline = committed + 1.0
        made: list[WalletTransaction] = []
        while not made and time.monotonic() < deadline:
            made = automatic(reload(ledger, org, wallet))
            if not made:
                time.sleep(0.005)  # Polling with a deadline, not a blind wait.
        delay_s = time.monotonic() - committed
    finally:
        ledger.top_ups.stop()
    print(f"wallet_freshness delay_ms={delay_s * 1000:.1f}")
    assert [(t.kind, t.amount_cents) for t in made] == [("purchased", 1000)]
    assert delay_s < 1.0


def test_a_top_up_invoice_is_audited_from_its_purchase(ledger: Ledger, org: UUID) -> None:
    # An audit range holds top-up invoices too (§6.2): their one fee is recomputed from the
    # wallet's purchase (it once failed on an invoice without billing periods).
    at(ledger, MARCH_2)
    wallet = create_wallet(ledger, org, "main")
    ledger.wallets.top_up(org, wallet.id, TopUpValues(paid_credits=Decimal(5)))
    invoices, _ = ledger.invoicing.invoices(org, 1, 100)
    [invoice] = [i for i in invoices if i.invoice_type == "credit"]
    report = ledger.invoicing.audit(org, invoice.id)
    assert (report.matches, [fee.amount_cents for fee in report.recomputed]) == (True, [500])
