"""`tally serve` as a process the tests control: start, kill -9, restart on the same store, and a
small HTTP client for load with retries (the reliability tests of tests/integration)."""

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx

from adapters.settings import Settings
from tests.conftest import ROOT, free_port


def create_organization(settings: Settings, name: str) -> str:
    """A new organization on the store; returns its API key."""
    created = subprocess.run(
        [sys.executable, "-m", "api.cli", "org", "create", name],
        env={**os.environ, "TALLY_DATABASE_URL": settings.database_url},
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    return created.stdout.strip().splitlines()[-1]


@dataclass
class ServerProcess:
    """One `tally serve`, in its own process group (its workers die with it)."""

    settings: Settings
    directory: Path
    workers: int = 1
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        log = (self.directory / f"server-{self.port}.log").open("a")
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "api.cli",
                "serve",
                "--port",
                str(self.port),
                "--workers",
                str(self.workers),
            ],
            env={
                **os.environ,
                "TALLY_DATABASE_URL": self.settings.database_url,
                "TALLY_BILLING_INTERVAL_S": "0",
            },
            cwd=self.directory,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        self.wait_until_serving()

    def wait_until_serving(self, timeout: float = 60) -> None:
        assert self.process is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"tally serve exited:\n{self.log()}")
            try:
                if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"tally serve did not answer:\n{self.log()}")

    def kill(self) -> None:
        """kill -9 of the server and its workers: nothing is flushed or finished."""
        assert self.process is not None
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.kill()

    def log(self) -> str:
        return "".join(p.read_text() for p in sorted(self.directory.glob("server-*.log")))


@contextmanager
def serving(settings: Settings, directory: Path, workers: int = 1) -> Iterator[ServerProcess]:
    server = ServerProcess(settings, directory, workers)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def setup_catalog(url: str, api_key: str, subscriptions: list[str]) -> datetime:
    """A sum metric on `tokens` (filter `model`), a plan, and the subscriptions, through the API;
    returns the start of the current period (subscriptions start then)."""
    start = datetime.now(UTC).replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    with httpx.Client(
        base_url=f"{url}/api/v1", headers={"Authorization": f"Bearer {api_key}"}, timeout=30
    ) as http:
        metric = http.post(
            "/billable_metrics",
            json={
                "billable_metric": {
                    "name": "Tokens",
                    "code": "tokens",
                    "aggregation_type": "sum_agg",
                    "field_name": "tokens",
                    "filters": [{"key": "model", "values": ["large", "small"]}],
                }
            },
        )
        assert metric.status_code == 200, metric.text
        plan = http.post(
            "/plans",
            json={
                "plan": {
                    "name": "Tokens",
                    "code": "tokens",
                    "interval": "monthly",
                    "amount_cents": 0,
                    "amount_currency": "EUR",
                    "pay_in_advance": False,
                    "charges": [
                        {
                            "billable_metric_id": metric.json()["billable_metric"]["lago_id"],
                            "charge_model": "standard",
                            "properties": {"amount": "0.001"},
                        }
                    ],
                }
            },
        )
        assert plan.status_code == 200, plan.text
        for external_id in subscriptions:
            created = http.post(
                "/subscriptions",
                json={
                    "subscription": {
                        "external_customer_id": f"cus_{external_id}",
                        "plan_code": "tokens",
                        "external_id": external_id,
                        "subscription_at": start.isoformat(),
                        "billing_time": "calendar",
                    }
                },
            )
            assert created.status_code == 200, created.text
    return start


def usage_totals(url: str, api_key: str, external_id: str) -> tuple[int, Decimal]:
    """(events count, units) of the subscription's current usage."""
    response = httpx.get(
        f"{url}/api/v1/customers/cus_{external_id}/current_usage",
        params={"external_subscription_id": external_id},
        headers={"Authorization": f"Bearer {api_key}"},
        timeout=30,
    )
    assert response.status_code == 200, response.text
    charges: list[dict[str, Any]] = response.json()["customer_usage"]["charges_usage"]
    count = sum(int(charge["events_count"]) for charge in charges)
    units = sum((Decimal(charge["units"]) for charge in charges), Decimal(0))
    return count, units
