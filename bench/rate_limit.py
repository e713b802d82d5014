"""The shared rate limit's cost (ADR 0023): 2,000 requests with and without it, and the lease.

For each store (SQLite in a temporary file; PostgreSQL at TALLY_BENCH_DATABASE_URL, default
postgresql://postgres@127.0.0.1:5432/test, in a fresh schema dropped at the end):
- http: 2,000 POST /api/v1/events (one event each, one key) through the in-process ASGI client,
  with the limit off (TALLY_RATE_LIMIT_PER_S=0) and on (the default 10,000/s, burst 20,000),
  in blocks of 50 alternating between the two (and between the orders the two apps were
  opened in); totals, and the paired difference per block;
- take: 2,000 SharedRateLimiter.take() on one key, at the default rate (leases of 100 tokens)
  and at 50/s (burst 2,000, leases of 1 token: one round trip per request, the worst case).
It prints numbers and asserts nothing.
"""

import logging
import os
import statistics
import sys
import tempfile
import time
import uuid
from contextlib import ExitStack
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import anyio
import psycopg
from litestar.testing import TestClient

from adapters.rate_limits import rate_leases
from adapters.settings import Settings, parse_database_url
from adapters.stores import Ledger, open_ledger
from api.app import create_app
from api.security import RateLeases, SharedRateLimiter

DEFAULT_URL = "postgresql://postgres@127.0.0.1:5432/test"
REQUESTS = 2_000
BLOCK = 50


def _catalog(ledger: Ledger) -> str:
    billing = ledger.billing
    organization, api_key = billing.create_organization("bench")
    org = organization.id
    metric = billing.create_billable_metric(
        org, "tokens", {"name": "Tokens", "aggregation_type": "sum_agg", "field_name": "tokens"}
    )
    billing.create_plan(
        org,
        "basic",
        {
            "name": "Basic",
            "interval": "monthly",
            "amount_cents": 0,
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
    start = datetime.now(UTC).replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    billing.upsert_customer(org, "cus_1", {"currency": "EUR"})
    billing.create_subscription(
        org, "sub_1", external_customer_id="cus_1", plan_code="basic", subscription_at=start
    )
    return api_key


def _http_runs(settings: Settings, api_key: str) -> tuple[list[float], list[float]]:
    """Two apps on the store, the limit off and on; BLOCK requests to each in turn (the order
    swapped every round), so that the machine's changing load falls on both alike. The second
    app opened runs slower, whatever its limit (measured: +0.6 ms a request with both off), so
    half the blocks run with the apps opened in the other order. Returns the seconds of each
    block, off and on."""
    headers = {"Authorization": f"Bearer {api_key}"}
    off: list[float] = []
    on: list[float] = []
    for rates in ((0.0, 10_000.0), (10_000.0, 0.0)):
        with ExitStack() as stack:
            apps = []
            for rate in rates:
                ledger = open_ledger(replace(settings, rate_limit_per_s=rate))
                stack.callback(ledger.close)
                client = stack.enter_context(TestClient(app=create_app(ledger)))
                apps.append((client, on if rate else off))
            for round_ in range(REQUESTS // BLOCK // 2):
                for client, results in apps if round_ % 2 == 0 else apps[::-1]:
                    began = time.perf_counter()
                    for _ in range(BLOCK):
                        event = {
                            "transaction_id": uuid.uuid4().hex,
                            "external_subscription_id": "sub_1",
                            "code": "tokens",
                            "properties": {"tokens": "12"},
                        }
                        posted = client.post(
                            "/api/v1/events", json={"event": event}, headers=headers
                        )
                        assert posted.status_code == 200, posted.text
                    results.append(time.perf_counter() - began)
    return off, on


class Counted:
    def __init__(self, leases: RateLeases) -> None:
        self.leases = leases
        self.calls = 0

    def lease(
        self, key_id: uuid.UUID, want: int, rate_per_s: float, burst: int
    ) -> tuple[int, float]:
        self.calls += 1
        return self.leases.lease(key_id, want, rate_per_s, burst)


def _take_run(ledger: Ledger, rate_per_s: float, burst: int) -> tuple[float, int]:
    leases = Counted(rate_leases(ledger.billing.factory))
    limiter = SharedRateLimiter(leases, rate_per_s, burst)
    key = uuid.uuid4()

    async def run() -> float:
        began = time.perf_counter()
        for _ in range(REQUESTS):
            await limiter.take(key)
        return time.perf_counter() - began

    return anyio.run(run), leases.calls


def bench(label: str, settings: Settings) -> None:
    ledger = open_ledger(settings)
    try:
        api_key = _catalog(ledger)
        for rate, burst, name in ((10_000.0, 20_000, "default rate"), (50.0, 2_000, "lease of 1")):
            took, calls = _take_run(ledger, rate, burst)
            print(
                f"[{label}] take(), {name}: {took * 1000:.1f} ms for {REQUESTS} "
                f"({took / REQUESTS * 1e6:.1f} µs each, {calls} leases)"
            )
    finally:
        ledger.close()
    off, on = _http_runs(settings, api_key)
    for name, blocks in (("off", off), ("on ", on)):
        print(
            f"[{label}] POST /events, limit {name}: {sum(blocks):.2f} s for {REQUESTS} "
            f"({sum(blocks) / REQUESTS * 1e6:.0f} µs/request; median block of {BLOCK} "
            f"{statistics.median(blocks) * 1000:.0f} ms)"
        )
    paired = [(b - a) / BLOCK * 1e6 for a, b in zip(off, on, strict=True)]
    print(
        f"[{label}] on - off, paired blocks: median {statistics.median(paired):+.0f} µs/request "
        f"(quartiles {statistics.quantiles(paired, n=4)[0]:+.0f} to "
        f"{statistics.quantiles(paired, n=4)[2]:+.0f})"
    )


def main() -> None:
    logging.getLogger("httpx").setLevel(logging.WARNING)  # One line per request otherwise.
    with tempfile.TemporaryDirectory() as directory:
        bench("sqlite", parse_database_url(f"sqlite:///{Path(directory) / 'tally.db'}"))
    url = os.environ.get("TALLY_BENCH_DATABASE_URL", DEFAULT_URL)
    schema = f"bench_{uuid.uuid4().hex[:12]}"
    try:
        with psycopg.connect(url, autocommit=True) as connection:
            connection.execute(f"CREATE SCHEMA {schema}")
    except psycopg.OperationalError as error:
        print(f"[postgres] skipped: {error}", file=sys.stderr)
        return
    try:
        bench("postgres", parse_database_url(f"{url}?schema={schema}"))
    finally:
        with psycopg.connect(url, autocommit=True) as connection:
            connection.execute(f"DROP SCHEMA {schema} CASCADE")


if __name__ == "__main__":
    main()
