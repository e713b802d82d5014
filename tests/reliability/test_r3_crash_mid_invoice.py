"""R3, crash mid-invoice: the billing run dies at a seeded point, a restarted run finishes the job.

The crash is injected as `kill -9` would leave the store: before a save commits (nothing of it
exists), right after it commits (before the projections saw it), or inside a projection's
catch-up. Customers pay from wallets, so a finalization commits an invoice, its number and a
wallet debit together. The restarted run must give one invoice per subscription, period and
reason, gapless numbers, one debit per invoice, and exactly the invoices of a crash-free run.

Fast tier: seeds 0-19; deep tier: 0-199. TALLY_SEED=<n> replays one seed.
"""

import os
import random
import shutil
import time
from collections import Counter
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest

from adapters.settings import Settings, parse_database_url
from adapters.stores import Ledger, open_ledger
from application.invoicing import content_hash
from application.metering import EventInput
from application.wallets import WalletValues
from tests.reliability.battery import report, tier

pytestmark = pytest.mark.reliability

MARCH_1 = datetime(2026, 3, 1, tzinfo=UTC)
JULY_1 = datetime(2026, 7, 1, tzinfo=UTC)
SEEDS = [int(os.environ["TALLY_SEED"])] if os.environ.get("TALLY_SEED") else range(tier(20, 200))
MODES = ("before_commit", "after_commit", "in_projection")
# cus_0's wallet pays a part of its first invoice; cus_1's all of March and a part of April.
WALLETS = {"cus_0": Decimal(15), "cus_1": Decimal(25)}


class Crash(BaseException):
    """Not an Exception: nothing in the code under test may catch it, as with kill -9."""


def build(settings: Settings) -> tuple[Ledger, UUID]:
    ledger = open_ledger(settings)
    billing = ledger.billing
    billing.now = lambda: MARCH_1
    organization, _ = billing.create_organization("acme")
    org = organization.id
    metric = billing.create_billable_metric(
        org, "calls", {"name": "Calls", "aggregation_type": "count_agg"}
    )
    billing.create_plan(
        org,
        "basic",
        {
            "name": "Basic",
            "interval": "monthly",
            "amount_cents": 1000,
            "amount_currency": "EUR",
            "pay_in_advance": False,
            "charges": [
                {
                    "billable_metric_id": str(metric.id),
                    "charge_model": "standard",
                    "properties": {"amount": "0.25"},
                }
            ],
        },
    )
    for n in range(4):
        billing.create_subscription(
            org,
            f"sub_{n}",
            external_customer_id=f"cus_{n % 3}",
            plan_code="basic",
            subscription_at=MARCH_1,
        )
    for customer, credits in WALLETS.items():
        ledger.wallets.create_wallet(
            org,
            WalletValues(
                external_customer_id=customer,
                currency="EUR",
                rate_amount=Decimal(1),
                code="main",
                granted_credits=credits,
            ),
        )
    for n in range(40):
        when = datetime(2026, 3 + n % 4, 1 + n % 27, tzinfo=UTC)
        billing.now = lambda when=when: when
        ledger.metering.ingest(
            org,
            [EventInput(f"t{n}", f"sub_{n % 4}", "calls", int(when.timestamp()), {}, None)],
            batch=False,
        )
    return ledger, org


def outcome(ledger: Ledger, org: UUID) -> dict[str, Any]:
    """Everything the run decided: the invoices (with their content hash) and the wallets."""
    invoices, _ = ledger.invoicing.invoices(org, 1, 1000)
    wallets = {customer: ledger.wallets.wallets(org, customer, 1, 10)[0][0] for customer in WALLETS}
    return {
        "invoices": sorted(
            (
                str(i.id),
                i.sequential_id,
                i.status,
                i.totals.total_amount_cents,
                i.prepaid_credit_amount_cents,
                content_hash(i),
            )
            for i in invoices
        ),
        "balances": {customer: w.balance_cents for customer, w in wallets.items()},
        "objects": (invoices, list(wallets.values())),
    }


def figures_of(got: dict[str, Any], expected: dict[str, Any]) -> dict[str, int]:
    invoices, wallets = got["objects"]
    # One invoice per subscription, period and reason: no fee key is billed twice.
    billed = Counter(fee.key for invoice in invoices for fee in invoice.fees)
    numbers = sorted(i.sequential_id for i in invoices if i.sequential_id is not None)
    debits: Counter[UUID] = Counter()
    debited_cents: Counter[UUID] = Counter()
    for wallet in wallets:
        for entry in wallet.entries():
            if entry.kind == "invoiced" and entry.invoice_id is not None:
                debits[entry.invoice_id] += 1
                debited_cents[entry.invoice_id] += entry.amount_cents
    double_debits = sum(count - 1 for count in debits.values() if count > 1)
    double_debits += sum(
        1 for i in invoices if debited_cents[i.id] != i.prepaid_credit_amount_cents
    )
    double_debits += sum(1 for wallet in wallets if wallet.invariant_violations())
    return {
        "duplicate_invoices": sum(count - 1 for count in billed.values() if count > 1),
        "numbering_gaps": int(numbers != list(range(1, len(numbers) + 1))),
        "double_debits": double_debits,
        # No partially visible invoice: every one is finalized and numbered (no grace period).
        "partial_invoices": sum(1 for i in invoices if i.status != "finalized" or not i.number),
        "total_mismatches": int(
            got["invoices"] != expected["invoices"] or got["balances"] != expected["balances"]
        ),
    }


def counted_run(ledger: Ledger) -> dict[str, int]:
    """Run the billing, counting the points a crash can hit: saves and projected events."""
    counts = {"saves": 0, "projected": 0}
    index, save = ledger.billing.index, ledger.billing.save
    process_batch = index.process_batch

    def counting_projection(*args: Any, **kwargs: Any) -> None:
        counts["projected"] += 1
        process_batch(*args, **kwargs)

    def counting_save(*objs: Any, **kwargs: Any) -> Any:
        counts["saves"] += 1
        return save(*objs, **kwargs)

    index.process_batch = counting_projection  # type: ignore[method-assign]
    ledger.billing.save = counting_save  # type: ignore[method-assign]
    ledger.billing.now = lambda: JULY_1
    ledger.invoicing.run(JULY_1)
    return counts


def crash_once(settings: Settings, seed: int, points: dict[str, int]) -> tuple[str, int]:
    """Open the built ledger, then run the billing and die at the seed's point."""
    ledger = open_ledger(settings)
    rng = random.Random(seed)
    mode = MODES[seed % len(MODES)]
    crash_at = rng.randrange(1, points["projected" if mode == "in_projection" else "saves"] + 1)
    calls = 0
    if mode == "in_projection":
        index = ledger.billing.index
        process_batch = index.process_batch

        def dying_projection(*args: Any, **kwargs: Any) -> None:
            nonlocal calls
            calls += 1
            if calls == crash_at:
                raise Crash()
            process_batch(*args, **kwargs)

        index.process_batch = dying_projection  # type: ignore[method-assign]
    else:
        save = ledger.billing.save

        def dying_save(*objs: Any, **kwargs: Any) -> Any:
            nonlocal calls
            calls += 1
            if calls == crash_at and mode == "before_commit":
                raise Crash()
            recordings = save(*objs, **kwargs)
            if calls == crash_at:
                raise Crash()
            return recordings

        ledger.billing.save = dying_save  # type: ignore[method-assign]
    ledger.billing.now = lambda: JULY_1
    try:
        ledger.invoicing.run(JULY_1)
    except Crash:
        pass
    else:
        raise AssertionError(f"seed {seed}: the run ended before its crash point {crash_at}")
    finally:
        ledger.close()
    return mode, crash_at


def test_a_billing_run_killed_anywhere_then_rerun_bills_everything_once(tmp_path: Path) -> None:
    reference, org = build(parse_database_url(f"sqlite:///{tmp_path / 'reference.db'}"))
    points = counted_run(reference)
    expected = outcome(reference, org)
    reference.close()
    assert len(expected["invoices"]) == 12  # 3 customers x 4 months.
    invoices, _ = expected["objects"]
    prepaid = sorted(
        i.prepaid_credit_amount_cents for i in invoices if i.prepaid_credit_amount_cents
    )
    assert sum(prepaid) == 4000, prepaid  # The wallets paid all their credits, over invoices.
    assert any(i.totals.total_amount_cents == 0 for i in invoices)  # One entirely.

    built = tmp_path / "built.db"  # The state before the run, built once, copied per seed.
    build(parse_database_url(f"sqlite:///{built}"))[0].close()
    totals: Counter[str] = Counter()
    failing: list[str] = []
    recovery_ms: list[float] = []
    for seed in SEEDS:
        crashed = tmp_path / f"crashed-{seed}.db"
        shutil.copyfile(built, crashed)
        settings = parse_database_url(f"sqlite:///{crashed}")
        mode, crash_at = crash_once(settings, seed, points)
        began = time.perf_counter()
        restarted = open_ledger(settings)
        restarted.billing.now = lambda: JULY_1
        restarted.invoicing.run(JULY_1)
        recovery_ms.append((time.perf_counter() - began) * 1000)
        got = outcome(restarted, org)
        restarted.close()
        figures = figures_of(got, expected)
        totals.update(figures)
        if any(figures.values()):
            failing.append(f"seed={seed} mode={mode} crash_at={crash_at} {figures}")
    recovery_ms.sort()
    passed = report(
        "R3",
        "crash_mid_invoice",
        seed=f"{min(SEEDS)}..{max(SEEDS)}",
        runs=len(SEEDS),
        failures={
            key: totals[key]
            for key in (
                "duplicate_invoices",
                "numbering_gaps",
                "double_debits",
                "partial_invoices",
                "total_mismatches",
            )
        },
        invoices=len(expected["invoices"]),
        crash_points=points["saves"] + points["projected"],
        recovery_p99_ms=round(recovery_ms[int(0.99 * (len(recovery_ms) - 1))], 1),
    )
    assert passed, failing
