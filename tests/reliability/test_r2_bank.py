"""R2, the bank test: concurrent writers on two wallets of one customer (grants, paid top-ups
settled by PSP webhooks delivered twice and out of order, voids, invoices paid from the wallets),
on each store. No acknowledged write is lost, each balance is the sum of its entries, no balance
or lot goes negative, and money is conserved.

Fast tier: 16 writers x 12 operations; deep tier: 32 x 40. TALLY_SEED=<n> replays the writers'
choices (the interleaving is the scheduler's). The model-based half of R2 is
tests/properties/test_wallet_machine.py."""

import random
import threading
import time
from collections.abc import Callable
from datetime import UTC, date, datetime
from decimal import Decimal
from functools import partial
from typing import Any
from uuid import UUID

import pytest

from adapters.stores import Ledger
from application.errors import ConcurrencyConflictError
from application.wallets import TopUpValues, WalletValues
from domain import ids
from domain.errors import InvalidValueError
from domain.invoice import Invoice
from domain.invoicing import FeeLine
from domain.wallet import Wallet
from tests.reliability.battery import report, tier
from tests.reliability.battery import seed as battery_seed

pytestmark = pytest.mark.reliability

WRITERS = tier(16, 32)
OPERATIONS_PER_WRITER = tier(12, 40)
SEED = battery_seed()


def draft_invoice(ledger: Ledger, org: UUID, customer_id: UUID, key: str, cents: int) -> UUID:
    """A draft to finalize: one charge fee, no tax."""
    now = datetime.now(UTC)
    invoice_id = ids.invoice_id(org, "bank", key)
    fee = FeeLine(
        key=f"charge:{key}",
        fee_type="charge",
        external_subscription_id="sub_1",
        plan_id=str(invoice_id),
        plan_version=1,
        from_at=now,
        to_at=now,
        units=Decimal(1),
        events_count=1,
        unit_amount=Decimal(cents).scaleb(-2),
        precise_amount_cents=Decimal(cents),
        amount_cents=cents,
        metric_code="tokens",
    )
    invoice = Invoice.draft(
        invoice_id,
        organization_id=org,
        customer_id=customer_id,
        external_customer_id="acme",
        invoice_type="one_off",
        currency="EUR",
        issuing_date=date.today(),
        net_payment_term=0,
        billing_periods=[],
        fees=[fee],
        watermark=0,
        tax_rates={},
    )
    ledger.billing.save(invoice)
    return invoice_id


def test_concurrent_writers_conserve_money(store_ledger: Ledger) -> None:
    ledger = store_ledger
    org = ledger.billing.create_organization("bank")[0].id
    customer = ledger.billing.upsert_customer(org, "acme", {"currency": "EUR"})
    wallets = [
        ledger.wallets.create_wallet(
            org,
            WalletValues(
                external_customer_id="acme",
                currency="EUR",
                rate_amount=Decimal(1),
                code=code,
                priority=priority,
                granted_credits=Decimal(50),
            ),
        )
        for code, priority in (("first", 1), ("second", 2))
    ]
    lock = threading.Lock()
    acknowledged: dict[str, Any] = {"granted": {}, "voided": {}, "invoices": []}
    bought: list[UUID] = []  # Credit invoices the simulated PSP pays (or declines).
    figures = {"operations": 0, "conflicts": 0, "refused": 0}
    start = threading.Barrier(WRITERS)
    errors: list[BaseException] = []

    def retrying(action: Callable[[], Any]) -> Any:
        while True:
            try:
                return action()
            except ConcurrencyConflictError:
                with lock:
                    figures["conflicts"] += 1

    def writer(number: int) -> None:
        rng = random.Random(SEED * 100 + number)
        try:
            start.wait()
            for step in range(OPERATIONS_PER_WRITER):
                wallet = rng.choice(wallets)
                kind = rng.choice(["grant", "buy", "psp", "void", "invoice"])
                cents = rng.randint(1, 3000)
                credits = Decimal(cents).scaleb(-2)
                if kind == "grant":
                    [made] = retrying(
                        partial(
                            ledger.wallets.top_up,
                            org,
                            wallet.id,
                            TopUpValues(granted_credits=credits),
                        )
                    )
                    with lock:
                        acknowledged["granted"][made.transaction_id] = (wallet.id, cents)
                elif kind == "buy":
                    [made] = retrying(
                        partial(
                            ledger.wallets.top_up,
                            org,
                            wallet.id,
                            TopUpValues(paid_credits=credits),
                        )
                    )
                    with lock:
                        bought.append(made.invoice_id)
                elif kind == "psp":
                    with lock:
                        pending = list(bought)
                    if pending:
                        # Webhooks delivered twice, out of order, sometimes a decline first.
                        invoice_id = rng.choice(pending)
                        for status in rng.choice(
                            [["succeeded", "succeeded"], ["failed", "succeeded"], ["failed"]]
                        ):
                            retrying(
                                partial(
                                    ledger.invoicing.set_payment_status, org, invoice_id, status
                                )
                            )
                elif kind == "void":
                    try:
                        [made] = retrying(
                            partial(
                                ledger.wallets.top_up,
                                org,
                                wallet.id,
                                TopUpValues(voided_credits=credits),
                            )
                        )
                    except InvalidValueError:
                        with lock:
                            figures["refused"] += 1  # More than the balance: refused.
                    else:
                        with lock:
                            acknowledged["voided"][made.transaction_id] = (wallet.id, cents)
                else:
                    invoice_id = draft_invoice(ledger, org, customer.id, f"{number}:{step}", cents)
                    retrying(partial(ledger.invoicing.finalize, org, invoice_id, datetime.now(UTC)))
                    with lock:
                        acknowledged["invoices"].append((invoice_id, cents))
                with lock:
                    figures["operations"] += 1
        except BaseException as error:  # Reported below, with the seed.
            errors.append(error)

    began = time.monotonic()
    threads = [threading.Thread(target=writer, args=(n,)) for n in range(WRITERS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed_s = time.monotonic() - began
    assert errors == [], (SEED, errors)

    # Reconcile what a lost webhook would have left pending (the worker's sweep does this).
    ledger.wallets.run_due()
    final = [ledger.wallets.wallet(org, w.id) for w in wallets]
    by_id: dict[UUID, Wallet] = {w.id: w for w in final}
    violations = {"conservation_violations": 0, "negative_balance_violations": 0, "drift_cents": 0}
    for wallet in final:
        problems = wallet.invariant_violations()
        if "negative balance" in problems or "a lot below zero" in problems:
            violations["negative_balance_violations"] += 1
        if "balance differs from the settled entries" in problems:
            violations["conservation_violations"] += 1
    # No lost update: every acknowledged grant and void is an entry of its wallet.
    for kind in ("granted", "voided"):
        for transaction_id, (wallet_id, cents) in acknowledged[kind].items():
            entry = by_id[wallet_id].transactions.get(transaction_id)
            if entry is None or entry.amount_cents != cents:
                violations["conservation_violations"] += 1
    # Each invoice's prepaid credit is what the wallets' entries for it took, and no more than
    # it cost; money in = money out + what is left.
    for invoice_id, cents in acknowledged["invoices"]:
        invoice = ledger.invoicing.invoice(org, invoice_id)
        taken = sum(
            t.amount_cents
            for w in final
            for t in w.entries()
            if t.kind == "invoiced" and t.invoice_id == invoice_id
        )
        prepaid = invoice.totals.prepaid_credit_amount_cents
        if taken != prepaid or prepaid > cents or invoice.totals.total_amount_cents < 0:
            violations["conservation_violations"] += 1
    settled_in = sum(w.settled_inbound_cents for w in final)
    went_out = sum(w.outbound_cents for w in final)
    total = sum(w.balance_cents for w in final)
    violations["drift_cents"] = abs(settled_in - went_out - total)
    # Every paid purchase follows its invoice: settled exactly when it was paid at least once.
    for wallet in final:
        for entry in wallet.entries():
            if entry.kind == "purchased":
                assert entry.invoice_id is not None
                invoice = ledger.invoicing.invoice(org, entry.invoice_id)
                if invoice.payment_status == "succeeded" and entry.status != "settled":
                    violations["conservation_violations"] += 1
    debits = len(acknowledged["invoices"])
    passed = report(
        "R2",
        f"bank[{ledger.settings.store}]",
        seed=SEED,
        runs=1,
        failures=violations,
        writers=WRITERS,
        operations=figures["operations"],
        refused=figures["refused"],
        debits_per_s=round(debits / elapsed_s, 1),
        serialization_retry_rate=round(figures["conflicts"] / max(1, figures["operations"]), 3),
    )
    assert passed, SEED
    assert figures["operations"] == WRITERS * OPERATIONS_PER_WRITER
