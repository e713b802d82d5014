"""P6, event → wallet freshness: the delay from the commit of the event that makes a wallet's
ongoing balance cross its threshold to the threshold top-up being visible through the API.

One command (`.venv/bin/python bench/wallet_freshness.py`, `--quick` for a short run): in a fresh
PostgreSQL database next to TALLY_BENCH_DATABASE_URL (default
postgresql://postgres@127.0.0.1:5432/test) it starts `tally serve`, creates a metric (tokens at
0.01 EUR), a plan and N customers, each with a subscription and a wallet of 20 credits whose
rule buys 10 credits when the ongoing balance is at or below 15. For each customer it posts
single events of 1.00 EUR until the event that crosses the threshold; that POST's 200 is the
commit. It then polls the wallet's transactions every millisecond until the threshold top-up
appears. Meanwhile a background thread keeps posting batches of 100 events for other
customers (P1-style load, without wallets), so the top-up worker has other work.

It prints p50, p99 and max of the delays and the load's events per second; it asserts nothing.
"""

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
import psycopg

ROOT = Path(__file__).resolve().parent.parent
ADMIN_URL = os.environ.get("TALLY_BENCH_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until_serving(client: httpx.Client, server: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"tally serve exited:\n{log.read_text()}")
        try:
            if client.get("/health").status_code < 500:
                return
        except httpx.TransportError:
            time.sleep(0.05)
    raise RuntimeError(f"tally serve did not start:\n{log.read_text()}")


def check(response: httpx.Response) -> Any:
    if response.status_code != 200:
        raise RuntimeError(f"{response.request.url}: {response.status_code} {response.text}")
    return response.json()


def catalog(client: httpx.Client, customers: int, load_customers: int) -> list[str]:
    """The metric, the plan, customers with wallets (returned) and load customers without."""
    metric = check(
        client.post(
            "/api/v1/billable_metrics",
            json={
                "billable_metric": {
                    "name": "Tokens",
                    "code": "tokens",
                    "aggregation_type": "sum_agg",
                    "field_name": "tokens",
                }
            },
        )
    )["billable_metric"]
    check(
        client.post(
            "/api/v1/plans",
            json={
                "plan": {
                    "name": "Prepaid",
                    "code": "prepaid",
                    "interval": "monthly",
                    "amount_cents": 0,
                    "amount_currency": "EUR",
                    "pay_in_advance": False,
                    "charges": [
                        {
                            "billable_metric_id": metric["lago_id"],
                            "charge_model": "standard",
                            "properties": {"amount": "0.01"},
                        }
                    ],
                }
            },
        )
    )
    started = (datetime.now(UTC) - timedelta(minutes=5)).strftime("%Y-%m-%dT%H:%M:%SZ")
    wallets = []
    for number in range(customers + load_customers):
        external_id = f"cus_{number}"
        check(
            client.post(
                "/api/v1/customers",
                json={"customer": {"external_id": external_id, "currency": "EUR"}},
            )
        )
        check(
            client.post(
                "/api/v1/subscriptions",
                json={
                    "subscription": {
                        "external_customer_id": external_id,
                        "plan_code": "prepaid",
                        "external_id": f"sub_{number}",
                        "subscription_at": started,
                    }
                },
            )
        )
        if number < customers:
            wallet = check(
                client.post(
                    "/api/v1/wallets",
                    json={
                        "wallet": {
                            "external_customer_id": external_id,
                            "currency": "EUR",
                            "rate_amount": "1",
                            "granted_credits": "20",
                            "recurring_transaction_rules": [
                                {
                                    "trigger": "threshold",
                                    "threshold_credits": "15",
                                    "paid_credits": "10",
                                }
                            ],
                        }
                    },
                )
            )["wallet"]
            wallets.append(wallet["lago_id"])
    return wallets


def event(subscription: str, tokens: int) -> dict[str, Any]:
    return {
        "transaction_id": uuid.uuid4().hex,
        "external_subscription_id": subscription,
        "code": "tokens",
        "timestamp": None,
        "properties": {"tokens": tokens},
    }


def load(
    base_url: str,
    headers: dict[str, str],
    subscriptions: list[str],
    stop: threading.Event,
    counter: list[int],
) -> None:
    with httpx.Client(base_url=base_url, headers=headers, timeout=30) as client:
        while not stop.is_set():
            batch = [event(subscriptions[i % len(subscriptions)], 1) for i in range(100)]
            if client.post("/api/v1/events/batch", json={"events": batch}).status_code == 200:
                counter[0] += len(batch)


def measure(client: httpx.Client, wallet_id: str, subscription: str) -> float:
    """Post 1.00 EUR events until the crossing one; seconds from its 200 to the top-up."""
    for _ in range(5):  # 20 → 15: the fifth event crosses (ongoing 15 ≤ 15).
        check(client.post("/api/v1/events", json={"event": event(subscription, 100)}))
    committed = time.perf_counter()
    path = f"/api/v1/wallets/{wallet_id}/wallet_transactions"
    while True:
        found = check(client.get(path, params={"transaction_type": "inbound"}))
        if any(t["source"] == "threshold" for t in found["wallet_transactions"]):
            return time.perf_counter() - committed
        if time.perf_counter() - committed > 30:
            raise RuntimeError(f"no top-up for wallet {wallet_id} after 30 s")
        time.sleep(0.001)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="20 wallets instead of 200")
    parser.add_argument("--wallets", type=int, default=None)
    parser.add_argument("--no-load", action="store_true", help="no background ingest")
    args = parser.parse_args()
    customers = args.wallets or (20 if args.quick else 200)
    load_customers = 0 if args.no_load else 20
    database = f"bench_wallets_{uuid.uuid4().hex[:10]}"
    url = urlunsplit(urlsplit(ADMIN_URL)._replace(path=f"/{database}", query=""))
    directory = tempfile.TemporaryDirectory(prefix="tally-bench-")
    server: subprocess.Popen[bytes] | None = None
    with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
        admin.execute(f"CREATE DATABASE {database}")
    try:
        env = {**os.environ, "TALLY_DATABASE_URL": url, "TALLY_BILLING_INTERVAL_S": "0"}
        created = subprocess.run(
            [sys.executable, "-m", "api.cli", "org", "create", "bench"],
            env=env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        )
        api_key = created.stdout.strip().splitlines()[-1]
        port = free_port()
        log = Path(directory.name) / "server.log"
        server = subprocess.Popen(
            [sys.executable, "-m", "api.cli", "serve", "--port", str(port)],
            env=env,
            cwd=ROOT,
            stdout=log.open("w"),
            stderr=subprocess.STDOUT,
        )
        base_url = f"http://127.0.0.1:{port}"
        headers = {"Authorization": f"Bearer {api_key}"}
        with httpx.Client(base_url=base_url, headers=headers, timeout=30) as client:
            wait_until_serving(client, server, log)
            wallets = catalog(client, customers, load_customers)
            stop = threading.Event()
            counter = [0]
            loader = None
            if load_customers:
                load_subscriptions = [f"sub_{customers + n}" for n in range(load_customers)]
                loader = threading.Thread(
                    target=load, args=(base_url, headers, load_subscriptions, stop, counter)
                )
                loader.start()
            began = time.perf_counter()
            delays = [
                measure(client, wallet_id, f"sub_{number}")
                for number, wallet_id in enumerate(wallets)
            ]
            elapsed = time.perf_counter() - began
            stop.set()
            if loader is not None:
                loader.join()
        delays.sort()
        result = {
            "test": "P6",
            "wallets": len(delays),
            "p50_ms": round(statistics.median(delays) * 1000, 1),
            "p99_ms": round(delays[min(len(delays) - 1, int(len(delays) * 0.99))] * 1000, 1),
            "max_ms": round(delays[-1] * 1000, 1),
            "background_events_per_s": round(counter[0] / elapsed, 1),
            "gate_p99_ms": 1000,
        }
        print("| wallets | p50 ms | p99 ms | max ms | background events/s |")
        print("|---|---|---|---|---|")
        print(
            f"| {result['wallets']} | {result['p50_ms']} | {result['p99_ms']} | "
            f"{result['max_ms']} | {result['background_events_per_s']} |"
        )
        print(json.dumps(result))
    finally:
        if server is not None:
            server.terminate()
            server.wait(timeout=10)
        with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
            admin.execute(f"DROP DATABASE IF EXISTS {database} WITH (FORCE)")
        directory.cleanup()


if __name__ == "__main__":
    main()
