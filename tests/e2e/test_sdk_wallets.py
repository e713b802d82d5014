"""Prepaid wallets end to end through Lago's official client: granted and paid credits, a
threshold rule fired by usage, the termination invoice paid from credits, hand-computed."""

import time
from typing import Any

import pytest
from lago_python_client.client import Client
from lago_python_client.exceptions import LagoApiError
from lago_python_client.models import (
    BillableMetric,
    Charge,
    Charges,
    Customer,
    Event,
    Invoice,
    Plan,
    Subscription,
    Tax,
    Wallet,
    WalletTransaction,
)
from lago_python_client.models.wallet import (
    RecurringTransactionRule,
    RecurringTransactionRuleList,
)

from adapters.stores import open_ledger
from domain import ids
from tests.conftest import Server
from tests.integration.test_billing_run import wait_for_usage


@pytest.fixture
def billing_often(monkeypatch: pytest.MonkeyPatch) -> None:
    """`tally serve` bills in the background every TALLY_BILLING_INTERVAL_S: make it 0.2 s."""
    monkeypatch.setenv("TALLY_BILLING_INTERVAL_S", "0.2")


@pytest.fixture
def lago(billing_often: None, server: Server) -> Client:
    return Client(api_key=server.api_key, api_url=server.url)


def eventually(check: Any, what: str, timeout_s: float = 30.0) -> Any:
    """Poll with a deadline until check() returns something truthy."""
    deadline = time.monotonic() + timeout_s
    while True:
        found = check()
        if found:
            return found
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def transactions(lago: Client, wallet_id: str, **query: str) -> list[Any]:
    return list(lago.wallet_transactions.find_all(wallet_id, query)["wallet_transactions"])


def test_a_prepaid_customer_through_the_official_client(lago: Client, server: Server) -> None:
    lago.taxes.create(Tax(name="VAT", code="vat", rate=20.0, applied_to_organization=True))
    metric = lago.billable_metrics.create(
        BillableMetric(
            name="Tokens", code="tokens", aggregation_type="sum_agg", field_name="tokens"
        )
    )
    lago.plans.create(
        Plan(
            name="Prepaid",
            code="prepaid",
            interval="monthly",
            amount_cents=0,
            amount_currency="EUR",
            pay_in_advance=False,
            charges=Charges(
                __root__=[
                    Charge(
                        billable_metric_id=metric.lago_id,
                        charge_model="standard",
                        properties={"amount": "0.01"},
                    )
                ]
            ),
        )
    )
    lago.customers.create(Customer(external_id="acme", currency="EUR"))
    lago.subscriptions.create(
        Subscription(external_customer_id="acme", plan_code="prepaid", external_id="sub_acme")
    )

    # 10 granted and 20 paid credits at 1.00 EUR; a rule buys 10 when the ongoing balance is ≤ 5.
    created = lago.wallets.create(
        Wallet(
            external_customer_id="acme",
            currency="EUR",
            rate_amount="1",
            name="Prepaid credits",
            code="main",
            granted_credits="10",
            paid_credits="20",
            recurring_transaction_rules=RecurringTransactionRuleList(
                __root__=[
                    RecurringTransactionRule(
                        trigger="threshold", threshold_credits="5", paid_credits="10"
                    )
                ]
            ),
        )
    )
    assert created is not None
    wallet_id = created.lago_id
    assert (created.status, created.balance_cents, created.credits_balance) == (
        "active",
        1000,
        "10.0",
    )
    # The paid credits wait for their credit invoice; its payment settles them.
    [purchased] = transactions(lago, wallet_id, transaction_status="purchased")
    assert (purchased.status, purchased.amount, purchased.credit_amount) == (
        "pending",
        "20.00",
        "20.0",
    )
    assert purchased.lago_invoice_id is not None
    paid = lago.invoices.update(Invoice(payment_status="succeeded"), purchased.lago_invoice_id)
    assert paid is not None
    assert (paid.invoice_type, paid.total_amount_cents, paid.taxes_amount_cents) == (
        "credit",
        2000,
        0,
    )
    assert paid.fees is not None
    assert [(f.item.type, f.amount_cents) for f in paid.fees.__root__ if f.item] == [
        ("credit", 2000)
    ]
    organization_id = ids.organization_id("e2e")
    ledger = open_ledger(server.settings)
    try:
        found = lago.wallets.find(wallet_id)
        assert found is not None and found.balance_cents == 3000

        # A manual grant, voided again: one transaction per non-zero kind.
        made = lago.wallet_transactions.create(
            WalletTransaction(wallet_id=wallet_id, granted_credits="2", voided_credits="2")
        )
        assert [(t.transaction_status, t.amount) for t in made["wallet_transactions"]] == [
            ("granted", "2.00"),
            ("voided", "2.00"),
        ]

        # Usage: 2,100 tokens at 0.01 = 21.00 EUR + 20 % VAT = 25.20; ongoing 30 − 25.20 = 4.80.
        for number, tokens in enumerate((2000, 100)):
            lago.events.create(
                Event(
                    transaction_id=f"t{number}",
                    external_subscription_id="sub_acme",
                    code="tokens",
                    timestamp=int(time.time()),
                    properties={"tokens": tokens},
                )
            )
        wait_for_usage(ledger, organization_id, [("t0", "sub_acme"), ("t1", "sub_acme")])
    finally:
        ledger.close()
    found = lago.wallets.find(wallet_id)
    assert found is not None
    assert (found.ongoing_usage_balance_cents, found.ongoing_balance_cents) == (2520, 480)
    assert found.credits_ongoing_balance == "4.8"
    # 4.80 ≤ 5: the rule buys 10 credits, once (gap 0.20 < 10).
    [bought] = eventually(
        lambda: [t for t in transactions(lago, wallet_id) if t.source == "threshold"],
        "no threshold top-up",
    )
    assert (bought.transaction_status, bought.status, bought.amount) == (
        "purchased",
        "pending",
        "10.00",
    )

    # The termination invoice is paid from the credits, after tax: granted credits first.
    lago.subscriptions.destroy("sub_acme")
    [summary] = eventually(
        lambda: lago.invoices.find_all(
            {"external_customer_id": "acme", "invoice_type": "subscription"}
        )["invoices"],
        "no termination invoice",
    )
    invoice = lago.invoices.find(summary.lago_id)
    assert invoice is not None
    assert (
        invoice.fees_amount_cents,
        invoice.taxes_amount_cents,
        invoice.prepaid_credit_amount_cents,
        invoice.total_amount_cents,
    ) == (2100, 420, 2520, 0)
    assert invoice.payment_status == "succeeded"
    found = lago.wallets.find(wallet_id)
    assert found is not None
    assert (found.balance_cents, found.credits_balance, found.consumed_credits) == (
        480,
        "4.8",
        "25.2",
    )
    lots = {
        t.transaction_status: t.remaining_amount_cents
        for t in transactions(lago, wallet_id, status="settled", transaction_type="inbound")
        if t.source == "manual" and t.amount != "2.00"
    }
    assert lots == {"granted": 0, "purchased": 480}  # 10.00 granted, then 15.20 of 20.00 paid.

    listed = lago.wallets.find_all({"external_customer_id": "acme"})
    assert [w.lago_id for w in listed["wallets"]] == [wallet_id]
    terminated = lago.wallets.destroy(wallet_id)
    assert terminated is not None
    assert (terminated.status, terminated.balance_cents) == ("terminated", 0)
    with pytest.raises(LagoApiError) as missing:
        lago.wallets.find_all({})
    assert missing.value.response["code"] == "customer_not_found"
