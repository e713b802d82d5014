"""The billing run on SQLite and PostgreSQL: racing runs, the worker, `tally bill` and `audit`."""

import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import psycopg
import pytest
from eventsourcing.persistence import IntegrityError
from psycopg import sql

from adapters.settings import Settings, SettingsError
from adapters.stores import Ledger, open_ledger
from api.cli import billing_interval_s, main
from application.metering import EventInput
from application.worker import BillingWorker
from domain.invoice import Invoice, document_prefix
from tests.conftest import ROOT, postgres_url

MARCH_10 = datetime(2026, 3, 10, tzinfo=UTC)
MARCH_20 = datetime(2026, 3, 20, tzinfo=UTC)
APRIL_1 = datetime(2026, 4, 1, tzinfo=UTC)
MAY_1 = datetime(2026, 5, 1, tzinfo=UTC)


def at(ledger: Ledger, instant: datetime) -> None:
    ledger.billing.now = lambda: instant


def catalog(ledger: Ledger, customers: int) -> UUID:
    """€30 a month in arrears plus €3 per million tokens, from March 10, for `customers`
    customers; the first used 1.5M tokens on March 20."""
    billing = ledger.billing
    organization, _ = billing.create_organization("acme")
    org = organization.id
    at(ledger, MARCH_10)
    metric = billing.create_billable_metric(
        org, "tokens", {"name": "Tokens", "aggregation_type": "sum_agg", "field_name": "tokens"}
    )
    billing.create_plan(
        org,
        "basic",
        {
            "name": "Basic",
            "interval": "monthly",
            "amount_cents": 3000,
            "amount_currency": "EUR",
            "pay_in_advance": False,
            "charges": [
                {
                    "billable_metric_id": str(metric.id),
                    "charge_model": "standard",
                    "properties": {"amount": "0.000003"},
                }
            ],
        },
    )
    for n in range(customers):
        billing.create_subscription(
            org,
            f"sub_{n}",
            external_customer_id=f"cus_{n}",
            plan_code="basic",
            subscription_at=MARCH_10,
        )
    at(ledger, MARCH_20)
    ledger.metering.ingest(
        org,
        [
            EventInput(
                "t1", "sub_0", "tokens", int(MARCH_20.timestamp()), {"tokens": 1_500_000}, None
            )
        ],
        batch=False,
    )
    wait_for_usage(ledger, org, [("t1", "sub_0")])
    return org


def wait_for_usage(ledger: Ledger, org: UUID, events: list[tuple[str, str]]) -> None:
    """Until the usage watermark covers these events: a run bills only what is below it, and
    on PostgreSQL any transaction still open in the cluster (another test run) holds it back."""
    positions = []
    for transaction_id, external_subscription_id in events:
        stored = ledger.usage.find(org, transaction_id, external_subscription_id)
        assert stored is not None, transaction_id
        positions.append(stored.position)
    deadline = time.monotonic() + 30
    while ledger.usage.watermark() < max(positions):
        assert time.monotonic() < deadline, "the usage watermark did not pass the events"
        time.sleep(0.02)


def invoices(ledger: Ledger, org: UUID) -> list[Invoice]:
    found, _ = ledger.invoicing.invoices(org, 1, 1000)
    return found


def test_concurrent_billing_runs_issue_each_invoice_once_with_gapless_numbers(
    store_settings: Settings, store_ledger: Ledger
) -> None:
    org = catalog(store_ledger, customers=3)
    # Two runners, each with its own connections, as two processes would be.
    runners = [open_ledger(store_settings) for _ in range(2)]
    start = threading.Barrier(len(runners))
    results: list[list[UUID]] = []
    errors: list[BaseException] = []

    def run(ledger: Ledger) -> None:
        at(ledger, MAY_1)
        start.wait()
        try:
            results.append(sorted(invoice.id for invoice in ledger.invoicing.run(MAY_1)))
        except BaseException as error:  # Reported below, with the thread's traceback lost.
            errors.append(error)

    threads = [threading.Thread(target=run, args=(ledger,)) for ledger in runners]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
    finally:
        for ledger in runners:
            ledger.close()
    assert errors == []
    # Three customers, two boundaries (April 1 and May 1): six invoices, whoever made them.
    issued = invoices(store_ledger, org)
    assert len(issued) == 6
    assert results[0] == results[1] == sorted(invoice.id for invoice in issued)
    assert Counter(i.external_customer_id for i in issued) == {"cus_0": 2, "cus_1": 2, "cus_2": 2}
    assert sorted(i.sequential_id or 0 for i in issued) == [1, 2, 3, 4, 5, 6]
    assert len({i.number for i in issued}) == 6
    assert {i.status for i in issued} == {"finalized"}


def test_a_run_whose_saved_batch_collides_decides_each_invoice_again(
    store_settings: Settings, store_ledger: Ledger
) -> None:
    """A run saves its invoices in batches (ADR 0027). When another run made them first, the
    batch's save collides; each invoice is then read and decided again, alone: none twice, no
    number lost."""
    org = catalog(store_ledger, customers=3)
    at(store_ledger, MAY_1)
    first, other = open_ledger(store_settings), open_ledger(store_settings)
    flush = first.invoicing._flush
    calls = []

    def flush_after_the_other_run() -> None:
        if not calls:
            calls.append(other.invoicing.run(MAY_1))  # Between this run's decisions and save.
        flush()

    save = first.billing.save
    collided: list[int] = []

    def save_counting_collisions(*aggregates: Any) -> Any:
        try:
            return save(*aggregates)
        except IntegrityError:
            collided.append(len(aggregates))
            raise

    first.invoicing._flush = flush_after_the_other_run  # type: ignore[method-assign]
    first.billing.save = save_counting_collisions  # type: ignore[method-assign]
    try:
        at(first, MAY_1)
        at(other, MAY_1)
        ran = first.invoicing.run(MAY_1)
    finally:
        first.close()
        other.close()
    assert collided[0] == 7  # The six invoices and their number sequence, in one save.
    issued = invoices(store_ledger, org)
    assert len(issued) == 6
    assert (
        sorted(i.id for i in ran) == sorted(i.id for i in calls[0]) == sorted(i.id for i in issued)
    )
    assert [i.number for i in ran] == [
        next(j.number for j in issued if j.id == i.id) for i in ran
    ]  # What the run answers is what is stored.
    assert sorted(i.sequential_id or 0 for i in issued) == [1, 2, 3, 4, 5, 6]


def test_the_worker_bills_in_the_background_until_stopped(store_ledger: Ledger) -> None:
    org = catalog(store_ledger, customers=1)
    worker = BillingWorker(store_ledger.invoicing, interval_s=0.05, clock=lambda: APRIL_1)
    worker.start()
    try:
        deadline = time.monotonic() + 10
        while worker.runs < 2:  # Two runs: the second found the first's invoice.
            assert time.monotonic() < deadline, "the worker did not run twice"
            time.sleep(0.01)
    finally:
        worker.stop(10)
    runs = worker.runs
    [invoice] = invoices(store_ledger, org)
    assert (invoice.status, invoice.totals.total_amount_cents) == ("finalized", 2129 + 450)
    time.sleep(0.1)
    assert worker.runs == runs  # Stopped: no more runs.


def tally(settings: Settings, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "api.cli", *args],
        env={**os.environ, "TALLY_DATABASE_URL": settings.database_url, **env},
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )


def tamper(settings: Settings, transaction_id: str, properties: dict[str, Any]) -> None:
    """A test-only rewrite of a stored usage event (the log's rows are never updated)."""
    payload = json.dumps(properties)
    if settings.store == "sqlite":
        assert settings.sqlite_path is not None
        with sqlite3.connect(settings.sqlite_path) as connection:
            cursor = connection.execute(
                "UPDATE usage_events SET properties = ? WHERE transaction_id = ?",
                (payload, transaction_id),
            )
            assert cursor.rowcount == 1
        return
    url = postgres_url()
    assert url is not None and settings.postgres_schema is not None
    statement = sql.SQL(
        "UPDATE {}.usage_events SET properties = %s::jsonb WHERE transaction_id = %s"
    ).format(sql.Identifier(settings.postgres_schema))
    with psycopg.connect(url, autocommit=True) as connection:
        assert connection.execute(statement, (payload, transaction_id)).rowcount == 1


def test_tally_bill_and_tally_audit_on_the_store(
    store_settings: Settings,
    store_ledger: Ledger,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    org = catalog(store_ledger, customers=1)
    billed = tally(store_settings, "bill", "--at", "2026-04-01T00:00:00Z")
    assert billed.returncode == 0, billed.stderr
    [invoice] = invoices(store_ledger, org)
    prefix = document_prefix("acme", org)
    # 30.00 × 22/31 = 21.29, plus 1.5M × 0.000003 = 4.50: 25.79, no tax.
    assert billed.stdout == f"{invoice.id} {prefix}-202604-001 finalized 25.79 EUR\n"

    audited = audit(monkeypatch, capsys, store_settings, "invoice", str(invoice.id))
    assert audited[0] == 0, audited
    assert f"{invoice.id} {prefix}-202604-001 finalized: match" in audited[1]

    tamper(store_settings, "t1", {"tokens": "2000000"})
    mismatch = audit(monkeypatch, capsys, store_settings, "invoice", str(invoice.id))
    assert mismatch[0] == 1, mismatch
    assert "MISMATCH" in mismatch[1]
    assert "amount_cents: stored 450, recomputed 600" in mismatch[1]

    ranged = audit(
        monkeypatch,
        capsys,
        store_settings,
        "invoices",
        "--from",
        "2026-04-01",
        "--to",
        "2026-04-30",
    )
    assert ranged[0] == 1, ranged
    assert ranged[1].endswith("Audited 1 invoices: 0 match, 1 mismatch.\n")
    empty = audit(
        monkeypatch,
        capsys,
        store_settings,
        "invoices",
        "--from",
        "2026-05-01",
        "--to",
        "2026-05-31",
    )
    assert empty == (0, "Audited 0 invoices: 0 match, 0 mismatch.\n")
    unknown = audit(
        monkeypatch, capsys, store_settings, "invoice", "00000000-0000-4000-8000-000000000000"
    )
    assert unknown[0] == 2


def audit(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    settings: Settings,
    *args: str,
) -> tuple[int, str]:
    """`tally audit ...` in this process (the same code as the command; faster than a process)."""
    monkeypatch.setenv("TALLY_DATABASE_URL", settings.database_url)
    code = main(["audit", *args])
    return code, capsys.readouterr().out


def test_tally_worker_bills_until_it_is_told_to_stop(
    store_settings: Settings, store_ledger: Ledger
) -> None:
    org = catalog(store_ledger, customers=1)
    process = subprocess.Popen(
        [sys.executable, "-m", "api.cli", "worker"],
        env={
            **os.environ,
            "TALLY_DATABASE_URL": store_settings.database_url,
            "TALLY_BILLING_INTERVAL_S": "0.1",
        },
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        while not invoices(store_ledger, org):  # The real clock: every month since March.
            assert process.poll() is None, process.communicate()
            assert time.monotonic() < deadline, "tally worker billed nothing"
            time.sleep(0.05)
    finally:
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=30)
    assert process.returncode == 0, err
    assert out.startswith("Tally bills every 0.1 s")
    assert invoices(store_ledger, org)[-1].sequential_id == 1


def test_the_billing_interval_is_a_number_of_seconds() -> None:
    assert billing_interval_s({}) == 60
    assert billing_interval_s({"TALLY_BILLING_INTERVAL_S": "0"}) == 0  # serve does not bill.
    assert billing_interval_s({"TALLY_BILLING_INTERVAL_S": " 2.5 "}) == 2.5
    for bad in ("soon", "-1", "86401", "nan"):
        with pytest.raises(SettingsError, match="TALLY_BILLING_INTERVAL_S"):
            billing_interval_s({"TALLY_BILLING_INTERVAL_S": bad})
