"""Crash mid-billing-run (R3): the run dies at a seeded point, a restarted run finishes the job.

The crash is injected around the store's commit, before or after it, as `kill -9` would leave
it: whatever committed stays, nothing else exists. The restarted run must produce one invoice
per boundary, gapless numbers, and the totals of a crash-free run.
"""

import random
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from adapters.settings import Settings, parse_database_url
from adapters.stores import Ledger, open_ledger
from application.metering import EventInput

MARCH_1 = datetime(2026, 3, 1, tzinfo=UTC)
JULY_1 = datetime(2026, 7, 1, tzinfo=UTC)
SEEDS = range(20)


class Crash(BaseException):
    """Not an Exception: nothing in the code under test may catch it, as with kill -9."""


def build(settings: Settings) -> tuple[Ledger, Any]:
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
    for n in range(40):
        when = datetime(2026, 3 + n % 4, 1 + n % 27, tzinfo=UTC)
        billing.now = lambda when=when: when
        ledger.metering.ingest(
            org,
            [EventInput(f"t{n}", f"sub_{n % 4}", "calls", int(when.timestamp()), {}, None)],
            batch=False,
        )
    return ledger, org


def summary(ledger: Ledger, org: Any) -> list[tuple[Any, ...]]:
    invoices, _ = ledger.invoicing.invoices(org, 1, 1000)
    return sorted(
        (str(i.id), i.sequential_id, i.status, i.totals.total_amount_cents) for i in invoices
    )


@pytest.mark.parametrize("seed", SEEDS)
def test_a_billing_run_killed_anywhere_then_rerun_bills_everything_once(
    seed: int, tmp_path: Path
) -> None:
    reference, org = build(parse_database_url(f"sqlite:///{tmp_path / 'reference.db'}"))
    reference.billing.now = lambda: JULY_1
    reference.invoicing.run(JULY_1)
    expected = summary(reference, org)
    reference.close()

    settings = parse_database_url(f"sqlite:///{tmp_path / 'crashed.db'}")
    ledger, org = build(settings)
    rng = random.Random(seed)
    crash_at = rng.randrange(1, len(expected) + 1)
    after_commit = rng.random() < 0.5
    saves = 0
    original_save = ledger.billing.save

    def dying_save(*objs: Any, **kwargs: Any) -> Any:
        nonlocal saves
        saves += 1
        if saves == crash_at and not after_commit:
            raise Crash()
        recordings = original_save(*objs, **kwargs)
        if saves == crash_at:
            raise Crash()
        return recordings

    ledger.billing.save = dying_save  # type: ignore[method-assign]
    ledger.billing.now = lambda: JULY_1
    with pytest.raises(Crash):
        ledger.invoicing.run(JULY_1)
    ledger.close()

    restarted = open_ledger(settings)
    restarted.billing.now = lambda: JULY_1
    restarted.invoicing.run(JULY_1)
    got = summary(restarted, org)
    numbers = sorted(n for _, n, _, _ in got)
    print(
        f"R3 seed={seed} crash_at={crash_at} after_commit={after_commit} "
        f"invoices={len(got)} duplicate_invoices={len(got) - len(set(got))} "
        f"numbering_gaps={int(numbers != list(range(1, len(numbers) + 1)))}"
    )
    assert got == expected
    assert numbers == list(range(1, len(numbers) + 1))
    restarted.close()
