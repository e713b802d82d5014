"""The billing run and the audit at scale: Tally against a raw SQL GROUP BY, in the same run.

One command (`.venv/bin/python bench/invoice_run.py`, `--quick` for a short run): in a fresh
PostgreSQL schema it creates and drops (TALLY_BENCH_DATABASE_URL, default
postgresql://postgres@127.0.0.1:5432/test), it sets up one organization with a 20 % VAT applied
to the organization, three metrics (input and output tokens, summed, with a `model` filter of
three values; requests, counted), one monthly plan in arrears (€20 plus a charge per metric,
priced per model through charge filters) and 10,000 customers with a subscription each from
June 1 (made as `create_subscription` makes them, saved 250 at a time); then it loads about
1,000,000 events stamped in June through the store (PostgresUsageLog.append, 5,000 a batch:
setup, not measured). It measures
(performance-and-reliability.md §1, §4 P7):

- P7 invoice run: the billing run for the period end as `tally bill --at 2026-07-01T00:00Z` runs
  it (VAT checks, then Invoicing.run: an invoice per customer, finalized and numbered as the
  organization's settings say), on a freshly opened ledger, against the raw SQL
  `GROUP BY subscription, metric, dimensions` of the same month fetched into Python. The run
  issues its invoices once, so it is measured once, interleaved with the baseline (B A B A' B…),
  A' being the idempotent re-run (it finds every invoice issued and changes nothing).
- Correctness: every invoice's total equals the raw GROUP BY priced by hand in this script
  (plain Decimal arithmetic, each fee rounded half-up, VAT on the sum).
- Audit: `Invoicing.audit` of every invoice (the recomputation from the raw log up to the
  watermark and the recorded plan version), p50/p99 per invoice, against the raw per-subscription
  GROUP BY of the same rows; every audit must match.

It prints a Markdown table and writes bench/results/invoice_run-<time>.json; it asserts nothing
but prints the cross-check.
"""

import argparse
import cProfile
import json
import os
import platform
import pstats
import random
import statistics
import subprocess
import sys
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any

import psycopg

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from common import cpu_model, percentiles  # noqa: E402

from adapters.settings import parse_database_url  # noqa: E402
from adapters.stores import Ledger, open_ledger  # noqa: E402
from application.subscriptions import DEFAULT_TIMEZONE, plan_ref  # noqa: E402
from application.usage_log import StoredUsage  # noqa: E402
from domain.customer import Customer  # noqa: E402
from domain.subscription import Subscription  # noqa: E402
from domain.usage import UsageEvent, dimension_key, payload_fingerprint  # noqa: E402

DEFAULT_URL = "postgresql://postgres@127.0.0.1:5432/test"
PERIOD_START = datetime(2026, 6, 1, tzinfo=UTC)
PERIOD_END = datetime(2026, 7, 1, tzinfo=UTC)
LOAD_BATCH = 5_000
SETUP_BATCH = 250
MODELS = ("large", "medium", "small")
BASE_FEE_CENTS = 2_000
VAT_PERCENT = Decimal("20")
# Unit prices in EUR, per metric and model (None: the metric has no filter).
PRICES: dict[str, dict[str | None, Decimal]] = {
    "input_tokens": {
        "large": Decimal("0.000003"),
        "medium": Decimal("0.000001"),
        "small": Decimal("0.00000015"),
    },
    "output_tokens": {
        "large": Decimal("0.000015"),
        "medium": Decimal("0.000004"),
        "small": Decimal("0.0000006"),
    },
    "requests": {None: Decimal("0.0001")},
}


@dataclass(frozen=True)
class Config:
    subscriptions: int
    events: int
    repetitions: int
    seed: int
    quick: bool
    profile: str | None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1,000 subscriptions, 100k events")
    parser.add_argument("--subscriptions", type=int, help="subscriptions (10,000; quick 1,000)")
    parser.add_argument("--events", type=int, help="events (1,000,000; quick 100,000)")
    parser.add_argument("--repetitions", type=int, default=5, help="baseline runs (5)")
    parser.add_argument("--seed", type=int, default=1, help="dataset seed (1)")
    parser.add_argument(
        "--profile", metavar="FILE", help="cProfile the first billing run into FILE"
    )
    args = parser.parse_args()
    config = Config(
        subscriptions=args.subscriptions or (1_000 if args.quick else 10_000),
        events=args.events or (100_000 if args.quick else 1_000_000),
        repetitions=max(3, args.repetitions),
        seed=args.seed,
        quick=args.quick,
        profile=args.profile,
    )
    url = os.environ.get("TALLY_BENCH_DATABASE_URL", DEFAULT_URL)
    started = time.perf_counter()
    results = Bench(url, config).run()
    results["wall_seconds"] = round(time.perf_counter() - started, 1)
    report(results)


class Bench:
    def __init__(self, url: str, config: Config) -> None:
        self.url = url
        self.config = config
        self.schema = f"bench_inv_{uuid.uuid4().hex[:10]}"
        separator = "&" if "?" in url else "?"
        self.settings = parse_database_url(
            f"{url}{separator}schema={self.schema}&pool_size=4&max_overflow=4"
        )

    def run(self) -> dict[str, Any]:
        with psycopg.connect(self.url, autocommit=True) as admin:
            admin.execute(f"CREATE SCHEMA {self.schema}")
        try:
            return self._run()
        finally:
            with psycopg.connect(self.url, autocommit=True) as admin:
                admin.execute(f"DROP SCHEMA {self.schema} CASCADE")

    def _run(self) -> dict[str, Any]:
        config = self.config
        results: dict[str, Any] = {"environment": environment(self.url, config)}
        print(results["environment"]["summary"], flush=True)
        ledger = open_ledger(self.settings)
        try:
            began = time.perf_counter()
            organization_id, subscriptions = self._catalog(ledger)
            results["setup_catalog_s"] = round(time.perf_counter() - began, 1)
            print(
                f"catalog: {len(subscriptions):,} customers and subscriptions in "
                f"{results['setup_catalog_s']} s",
                flush=True,
            )
            began = time.perf_counter()
            loaded = self._load(ledger, organization_id, subscriptions)
            results["setup_load_s"] = round(time.perf_counter() - began, 1)
            results["events"] = loaded
            print(
                f"load: {loaded:,} events through PostgresUsageLog.append in "
                f"{results['setup_load_s']} s",
                flush=True,
            )
        finally:
            ledger.close()
        self._vacuum()

        # P7: the billing run against the raw GROUP BY, interleaved.
        raw_s: list[float] = []
        raw_rows: list[tuple[Any, ...]] = []
        run_s: dict[str, float] = {}
        issued: list[Any] = []
        plan = ["B", "A", "B", "A'"] + ["B"] * (config.repetitions - 2)
        for step in plan:
            if step == "B":
                seconds, raw_rows = self._raw_group_by(organization_id)
                raw_s.append(seconds)
                print(f"  raw GROUP BY: {seconds:.3f} s ({len(raw_rows):,} rows)", flush=True)
            else:
                seconds, invoices = self._billing_run(first=step == "A")
                run_s["first" if step == "A" else "again"] = seconds
                if step == "A":
                    issued = invoices
                print(
                    f"  billing run{' (again)' if step != 'A' else ''}: {seconds:.2f} s, "
                    f"{len(invoices):,} invoices",
                    flush=True,
                )
        results["p7"] = {
            "candidate_s": run_s["first"],
            "rerun_s": run_s["again"],
            "baseline_s": raw_s,
            "invoices": len(issued),
            "ratio": run_s["first"] / statistics.median(raw_s),
            "rerun_ratio": run_s["again"] / statistics.median(raw_s),
        }
        results["cross_check"] = cross_check(raw_rows, issued, subscriptions)
        print(
            f"cross-check: {results['cross_check']['summary']}",
            flush=True,
        )
        results["audit"] = self._audit(organization_id, issued)
        return results

    # --- Setup ----------------------------------------------------------------------------

    def _catalog(self, ledger: Ledger) -> tuple[uuid.UUID, list[str]]:
        billing = ledger.billing
        billing.now = lambda: PERIOD_START
        organization, _ = billing.create_organization("bench")
        org = organization.id
        billing.create_tax(
            org, "vat", {"name": "VAT", "rate": str(VAT_PERCENT), "applied_to_organization": True}
        )
        charges = []
        for code, prices in PRICES.items():
            filtered = None not in prices
            metric = billing.create_billable_metric(
                org,
                code,
                {
                    "name": code.replace("_", " ").capitalize(),
                    "aggregation_type": "sum_agg" if filtered else "count_agg",
                    "field_name": "tokens" if filtered else None,
                    "filters": [{"key": "model", "values": list(MODELS)}] if filtered else [],
                },
            )
            charge: dict[str, Any] = {
                "billable_metric_id": str(metric.id),
                "charge_model": "standard",
                "properties": {"amount": "0" if filtered else str(prices[None])},
            }
            if filtered:
                charge["filters"] = [
                    {"values": {"model": [model]}, "properties": {"amount": str(price)}}
                    for model, price in prices.items()
                ]
            charges.append(charge)
        billing.create_plan(
            org,
            "api",
            {
                "name": "API",
                "interval": "monthly",
                "amount_cents": BASE_FEE_CENTS,
                "amount_currency": "EUR",
                "pay_in_advance": False,
                "charges": charges,
            },
        )
        subscriptions = [f"sub_{n:05d}" for n in range(self.config.subscriptions)]
        # The first through the command; the others as it makes them (a customer in the plan's
        # currency, then the subscription), saved SETUP_BATCH at a time: setup, not measured.
        billing.create_subscription(
            org,
            subscriptions[0],
            external_customer_id="cus_00000",
            plan_code="api",
            subscription_at=PERIOD_START,
        )
        ref = plan_ref(billing._subscribed_plan(org, "api", subscriptions[1], None))
        for first in range(1, len(subscriptions), SETUP_BATCH):
            aggregates: list[Any] = []
            for n in range(first, min(first + SETUP_BATCH, len(subscriptions))):
                customer = Customer.create(org, f"cus_{n:05d}", {"currency": "EUR"})
                subscription = Subscription.create(
                    org,
                    subscriptions[n],
                    customer.external_id,
                    customer.id,
                    ref,
                    name=None,
                    billing_time=None,
                    subscription_at=PERIOD_START,
                    ending_at=None,
                    timezone=customer.timezone or DEFAULT_TIMEZONE,
                    now=PERIOD_START,
                )
                aggregates.extend([subscription, customer])
            billing.save(*aggregates)
        billing.catch_up()
        return org, subscriptions

    def _load(self, ledger: Ledger, organization_id: uuid.UUID, subscriptions: list[str]) -> int:
        """Seeded events over June: a random subscription, metric and model each, random UUID
        transaction ids, timestamps spread over the month."""
        rng = random.Random(self.config.seed)
        received_at = PERIOD_END + timedelta(hours=1)
        span_us = int((PERIOD_END - PERIOD_START).total_seconds() * 1_000_000)
        count = self.config.events
        codes = list(PRICES)
        batch: list[StoredUsage] = []
        for n in range(count):
            code = codes[n % 3]
            if code == "requests":
                properties = {"model": rng.choice(MODELS)}
                value = None
                dimensions: tuple[tuple[str, str | None], ...] = ()
            else:
                properties = {"tokens": str(rng.randrange(1, 20_000)), "model": rng.choice(MODELS)}
                value = Decimal(properties["tokens"])
                dimensions = dimension_key(properties, ["model"])
            event = UsageEvent(
                organization_id=organization_id,
                external_subscription_id=rng.choice(subscriptions),
                transaction_id=str(uuid.UUID(int=rng.getrandbits(128), version=4)),
                code=code,
                timestamp=PERIOD_START + timedelta(microseconds=rng.randrange(span_us)),
                properties=properties,
                precise_total_amount_cents=None,
            )
            batch.append(
                StoredUsage(
                    event=event,
                    value=value,
                    dimensions=dimensions,
                    fingerprint=payload_fingerprint(event),
                    received_at=received_at,
                )
            )
            if len(batch) == LOAD_BATCH or n == count - 1:
                ledger.usage.append(batch)
                batch = []
        # The billing run bills what is below the watermark: wait until it passes every event
        # (any transaction still open in the cluster holds it back).
        with psycopg.connect(self.url) as connection:
            row = connection.execute(
                f"SELECT max(position) FROM {self.schema}.usage_events"
            ).fetchone()
        assert row is not None
        deadline = time.monotonic() + 300
        while ledger.usage.watermark() < row[0]:
            assert time.monotonic() < deadline, "the usage watermark did not pass the events"
            time.sleep(0.05)
        return count

    def _vacuum(self) -> None:
        with psycopg.connect(self.url, autocommit=True) as connection:
            for table in ("usage_events", "usage_rollups", "tally_events"):
                connection.execute(f"VACUUM ANALYZE {self.schema}.{table}")

    # --- Measured -------------------------------------------------------------------------

    def _raw_group_by(self, organization_id: uuid.UUID) -> tuple[float, list[tuple[Any, ...]]]:
        """The same month's usage per subscription, metric and model, into Python."""
        with psycopg.connect(self.url) as connection:
            started = time.perf_counter()
            rows = connection.execute(
                "SELECT external_subscription_id, code, dimensions, count(*), sum(value) "
                f"FROM {self.schema}.usage_events WHERE organization_id = %s AND NOT reversal "
                "AND timestamp >= %s AND timestamp < %s GROUP BY 1, 2, 3",
                (organization_id, PERIOD_START, PERIOD_END),
            ).fetchall()
            seconds = time.perf_counter() - started
        return seconds, rows

    def _billing_run(self, first: bool) -> tuple[float, list[Any]]:
        """`tally bill --at PERIOD_END`, on a freshly opened ledger (cold caches, as the CLI)."""
        ledger = open_ledger(self.settings)
        profiler = cProfile.Profile() if first and self.config.profile else None
        try:
            ledger.billing.now = lambda: PERIOD_END
            started = time.perf_counter()
            if profiler is not None:
                profiler.enable()
            ledger.vat.run(PERIOD_END)
            invoices = ledger.invoicing.run(PERIOD_END)
            if profiler is not None:
                profiler.disable()
            seconds = time.perf_counter() - started
        finally:
            ledger.close()
        if profiler is not None and self.config.profile:
            profiler.dump_stats(self.config.profile)
            pstats.Stats(profiler).sort_stats("cumulative").print_stats(40)
        return seconds, invoices

    def _audit(self, organization_id: uuid.UUID, invoices: list[Any]) -> dict[str, Any]:
        """Audit every invoice (a fresh ledger, as `tally audit invoice`), and the raw
        per-subscription GROUP BY of the same rows, alternating."""
        ledger = open_ledger(self.settings)
        audit_ms: list[float] = []
        raw_ms: list[float] = []
        mismatches = []
        query = (
            "SELECT code, dimensions, count(*), sum(value) "
            f"FROM {self.schema}.usage_events WHERE organization_id = %s "
            "AND external_subscription_id = %s AND code = ANY(%s) AND NOT reversal "
            "AND timestamp >= %s AND timestamp < %s GROUP BY 1, 2"
        )
        began = time.perf_counter()
        try:
            with psycopg.connect(self.url) as connection:
                for invoice in invoices:
                    started = time.perf_counter()
                    report = ledger.invoicing.audit(organization_id, invoice.id)
                    audit_ms.append((time.perf_counter() - started) * 1000)
                    if not report.matches:
                        mismatches.append(str(invoice.id))
                    external_id = invoice.billing_periods[0]["external_subscription_id"]
                    started = time.perf_counter()
                    connection.execute(
                        query,
                        (organization_id, external_id, list(PRICES), PERIOD_START, PERIOD_END),
                        prepare=True,
                    ).fetchall()
                    raw_ms.append((time.perf_counter() - started) * 1000)
        finally:
            ledger.close()
        total_s = time.perf_counter() - began
        audit = {
            "invoices": len(audit_ms),
            "audit_ms": percentiles(audit_ms),
            "raw_ms": percentiles(raw_ms),
            "mismatches": mismatches,
            "total_s": round(total_s, 1),
        }
        print(
            f"audit: {len(audit_ms):,} invoices, p50 {audit['audit_ms']['p50']:.1f} ms, "
            f"p99 {audit['audit_ms']['p99']:.1f} ms, {len(mismatches)} mismatches",
            flush=True,
        )
        return audit


# --- Pricing by hand ------------------------------------------------------------------------


def cents(amount: Decimal) -> int:
    return int(amount.quantize(Decimal(1), rounding=ROUND_HALF_UP))


def hand_priced(raw_rows: list[tuple[Any, ...]], subscriptions: list[str]) -> dict[str, int]:
    """Per subscription, the invoice total: the base fee, each (metric, model) fee rounded
    half-up to cents, and the VAT on their sum, rounded half-up."""
    fees: dict[str, int] = {external_id: BASE_FEE_CENTS for external_id in subscriptions}
    for external_id, code, dimensions, count, total in raw_rows:
        model = dict(json.loads(dimensions)).get("model") if code != "requests" else None
        units = Decimal(count) if code == "requests" else total
        fees[external_id] += cents(units * PRICES[code][model] * 100)
    return {
        external_id: fee + cents(Decimal(fee) * VAT_PERCENT / 100)
        for external_id, fee in fees.items()
    }


def cross_check(
    raw_rows: list[tuple[Any, ...]], invoices: list[Any], subscriptions: list[str]
) -> dict[str, Any]:
    expected = hand_priced(raw_rows, subscriptions)
    found: dict[str, int] = {}
    statuses: dict[str, int] = defaultdict(int)
    for invoice in invoices:
        [period] = invoice.billing_periods
        found[period["external_subscription_id"]] = invoice.totals.total_amount_cents
        statuses[invoice.status] += 1
    differing = sorted(k for k in expected.keys() | found.keys() if expected.get(k) != found.get(k))
    total = sum(found.values())
    summary = (
        f"{len(found):,} invoices ({', '.join(f'{n:,} {s}' for s, n in sorted(statuses.items()))})"
        f", Σ total €{Decimal(total) / 100:,.2f}; "
        + (
            "every total equals the raw GROUP BY priced by hand"
            if not differing
            else f"{len(differing)} totals DIFFER from the hand-priced GROUP BY, e.g. "
            + ", ".join(f"{k}: {found.get(k)} ≠ {expected.get(k)}" for k in differing[:5])
        )
    )
    return {
        "invoices": len(found),
        "statuses": dict(statuses),
        "total_cents": total,
        "expected_total_cents": sum(expected.values()),
        "differing": differing,
        "agree": not differing,
        "summary": summary,
    }


# --- Report -----------------------------------------------------------------------------------


def environment(url: str, config: Config) -> dict[str, Any]:
    with psycopg.connect(url) as connection:
        settings = {
            name: connection.execute(f"SHOW {name}").fetchone()[0]  # type: ignore[index]
            for name in ("server_version", "fsync", "synchronous_commit", "shared_buffers")
        }
    sha = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"],
        capture_output=True,
        text=True,
        check=False,
        cwd=ROOT,
    ).stdout.strip()
    dirty = subprocess.run(
        ["git", "status", "--porcelain"], capture_output=True, text=True, check=False, cwd=ROOT
    ).stdout.strip()
    info: dict[str, Any] = {
        "git": sha + (" (plus working tree)" if dirty else ""),
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "psycopg": f"{psycopg.__version__} ({psycopg.pq.__impl__})",
        "postgres": settings,
        "config": config.__dict__,
    }
    info["summary"] = (
        f"bench/invoice_run.py · git {info['git']} · {info['cpu']} · {info['cores']} cores · "
        f"Python {info['python']} · psycopg {info['psycopg']} · PostgreSQL "
        f"{settings['server_version'].split()[0]} fsync={settings['fsync']} "
        f"synchronous_commit={settings['synchronous_commit']} "
        f"shared_buffers={settings['shared_buffers']}; client and server share the machine.\n"
        f"Dataset seed {config.seed}: {config.subscriptions:,} customers × 1 subscription, "
        f"plan with 3 metrics (input/output tokens × 3 models by charge filters, requests), "
        f"{config.events:,} events in June 2026, random UUID transaction ids; billed at "
        f"{PERIOD_END.isoformat()}; {config.repetitions} baseline runs interleaved with the run "
        "and its re-run."
    )
    return info


def spread(values: list[float]) -> str:
    return f"{statistics.median(values):.3f} s [{min(values):.3f}–{max(values):.3f}]"


def report(results: dict[str, Any]) -> None:
    p7, audit, check = results["p7"], results["audit"], results["cross_check"]
    baseline = statistics.median(p7["baseline_s"])
    rows = [
        (
            f"P7 invoice run, {p7['invoices']:,} invoices",
            f"`tally bill --at` (Invoicing.run): {p7['candidate_s']:.2f} s",
            "raw `GROUP BY subscription, metric, dimensions`: " + spread(p7["baseline_s"]),
            f"{p7['ratio']:.1f}×",
            "≤ 20× (stretch 5×)",
            f"{p7['invoices'] / p7['candidate_s']:,.0f} invoices/s; "
            f"{p7['candidate_s'] / max(p7['invoices'], 1) * 1000:.2f} ms per invoice",
        ),
        (
            "P7 idempotent re-run",
            f"the same run again: {p7['rerun_s']:.2f} s",
            f"same baseline: {baseline:.3f} s",
            f"{p7['rerun_ratio']:.1f}×",
            "—",
            "no invoice changes",
        ),
        (
            f"audit, {audit['invoices']:,} invoices",
            f"Invoicing.audit: p50 {audit['audit_ms']['p50']:.1f} ms, "
            f"p99 {audit['audit_ms']['p99']:.1f} ms (max {audit['audit_ms']['max']:.1f})",
            f"raw per-subscription GROUP BY: p50 {audit['raw_ms']['p50']:.2f} ms, "
            f"p99 {audit['raw_ms']['p99']:.2f} ms",
            f"{audit['audit_ms']['p99'] / audit['raw_ms']['p99']:.1f}× (p99)",
            "p99 ≤ 100 ms",
            f"{len(audit['mismatches'])} mismatches; all audited in {audit['total_s']} s",
        ),
    ]
    lines = [
        "",
        results["environment"]["summary"],
        f"Setup (not measured): catalog {results['setup_catalog_s']} s, "
        f"{results['events']:,} events loaded in {results['setup_load_s']} s.",
        "",
        "| goal | candidate | baseline, same run (median [min–max]) | ratio | gate | absolute |",
        "|---|---|---|---|---|---|",
        *(f"| {' | '.join(row)} |" for row in rows),
        "",
        f"cross-check: {check['summary']}",
        f"wall time {results['wall_seconds']} s",
    ]
    print("\n".join(lines))
    directory = ROOT / "bench" / "results"
    directory.mkdir(exist_ok=True)
    path = directory / f"invoice_run-{datetime.now(UTC).strftime('%Y%m%dT%H%M%SZ')}.json"
    path.write_text(json.dumps(results, indent=2, default=str))
    print(f"results: {path.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
