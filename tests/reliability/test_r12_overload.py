"""R12, overload: `tally serve` on a slowed store (every write commit held 20 ms by
adapters/faults.py), its capacity measured first with closed-loop clients, then driven open-loop
at twice that capacity. Admission control (api/admission.py, ADR 0024) answers what it cannot
take at once with 429 (which Lago's client retries), Retry-After and x-ratelimit-reset, so no
client times out, every acknowledged event is stored, and the server's memory stays bounded.

Figures: `acked_lost`, `timeouts`, `server_errors` (a 5xx other than a 503 with Retry-After),
`missing_retry_after` (a 429 or 503 without it), `memory_unbounded` (RSS growth over 64 MB),
all 0; capacity, offered and acknowledged rates, p99 latency, RSS. Fast tier: 3 s to measure,
6 s at twice the capacity; deep: 10 s and 60 s. TALLY_SEED=<n> names the events.
"""

import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from adapters.settings import parse_database_url
from adapters.stores import open_ledger
from tests.integration.test_ingest_reliability import SUBSCRIPTIONS
from tests.reliability.battery import report, seed, tier
from tests.serving import ServerProcess, setup_catalog

pytestmark = pytest.mark.reliability

MEASURE_S = tier(3.0, 10.0)
OVERLOAD_S = tier(6.0, 60.0)
BATCH = 10
MAX_IN_FLIGHT = 8
RSS_GROWTH_MAX_MB = 64
CLIENT_TIMEOUT_S = 10.0


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def test_twice_the_capacity_is_shed_with_retry_after_and_loses_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    base = seed()
    settings = parse_database_url(f"sqlite:///{tmp_path / 'tally.db'}")
    ledger = open_ledger(settings)
    api_key = ledger.billing.create_organization("overload")[1]
    ledger.close()
    monkeypatch.setenv("TALLY_FAULTS", f"seed={base},slow=1,slow_s=0.02")
    monkeypatch.setenv("TALLY_MAX_IN_FLIGHT", str(MAX_IN_FLIGHT))
    monkeypatch.setenv("TALLY_ADMISSION_WAIT_MS", "50")
    monkeypatch.setenv("TALLY_RATE_LIMIT_PER_S", "0")  # Admission control alone, here.
    server = ServerProcess(settings, tmp_path)
    server.start()
    lock = threading.Lock()
    counter = iter(range(10**9))
    acked: list[dict[str, Any]] = []
    outcomes: Counter[str] = Counter()
    latencies_ms: list[float] = []
    samples: list[str] = []

    def batch() -> list[dict[str, Any]]:
        with lock:
            numbers = [next(counter) for _ in range(BATCH)]
        return [
            {
                "transaction_id": f"r12_{base}_{n}",
                "external_subscription_id": SUBSCRIPTIONS[n % len(SUBSCRIPTIONS)],
                "code": "tokens",
                "properties": {"tokens": "1", "model": "small"},
            }
            for n in numbers
        ]

    def send(http: httpx.Client, record: bool) -> int:
        events = batch()
        began = time.monotonic()
        try:
            response = http.post("/api/v1/events/batch", json={"events": events})
        except httpx.TimeoutException:
            with lock:
                outcomes["timeouts"] += 1
            return 0
        status = response.status_code
        with lock:
            if record:
                latencies_ms.append((time.monotonic() - began) * 1000)
                outcomes[str(status)] += 1
                if status in (429, 503) and "retry-after" not in response.headers:
                    outcomes["missing_retry_after"] += 1
                if status >= 500 and status != 503:
                    outcomes["server_errors"] += 1
                    samples.append(response.text[:300])
            if status == 200:
                acked.extend(events)
        return status

    try:
        setup_catalog(server.url, api_key, SUBSCRIPTIONS)
        assert server.process is not None
        pid = server.process.pid
        http = httpx.Client(
            base_url=server.url,
            headers={"Authorization": f"Bearer {api_key}"},
            timeout=CLIENT_TIMEOUT_S,
            limits=httpx.Limits(max_connections=128, max_keepalive_connections=128),
        )
        # Capacity: four closed-loop clients, acknowledged requests per second.
        measured: Counter[int] = Counter()
        stop = time.monotonic() + MEASURE_S

        def closed_loop() -> None:
            while time.monotonic() < stop:
                status = send(http, record=False)
                with lock:
                    measured[status] += 1

        threads = [threading.Thread(target=closed_loop) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        capacity_rps = measured[200] / MEASURE_S
        assert capacity_rps > 0, measured

        # Twice the capacity, open loop: requests leave on schedule whatever the answers.
        offered_rps = 2 * capacity_rps
        rss_start = rss_mb(pid)
        rss_peak = rss_start
        sent = 0
        began = time.monotonic()
        with ThreadPoolExecutor(max_workers=96) as pool:
            while (elapsed := time.monotonic() - began) < OVERLOAD_S:
                due = int(elapsed * offered_rps)
                while sent < due:
                    pool.submit(send, http, True)
                    sent += 1
                rss_peak = max(rss_peak, rss_mb(pid))
                time.sleep(0.002)
        overload_s = time.monotonic() - began
        rss_end = rss_mb(pid)
        http.close()
    finally:
        server.stop()
        monkeypatch.delenv("TALLY_FAULTS")

    ledger = open_ledger(settings)
    try:
        org = ledger.billing.organization_for_api_key(api_key)
        assert org is not None
        acked_lost = sum(
            1
            for event in acked
            if ledger.usage.find(org, event["transaction_id"], event["external_subscription_id"])
            is None
        )
    finally:
        ledger.close()

    latencies_ms.sort()
    shed = outcomes["503"] + outcomes["429"]
    passed = report(
        "R12",
        "overload",
        seed=base,
        runs=sent,
        failures={
            "acked_lost": acked_lost,
            "timeouts": outcomes["timeouts"],
            "server_errors": outcomes["server_errors"],
            "missing_retry_after": outcomes["missing_retry_after"],
            "memory_unbounded": int(rss_peak - rss_start > RSS_GROWTH_MAX_MB),
        },
        capacity_rps=round(capacity_rps, 1),
        offered_rps=round(sent / overload_s, 1),
        acked_rps=round(outcomes["200"] / overload_s, 1),
        shed=shed,
        p99_ms=round(latencies_ms[int(len(latencies_ms) * 0.99) - 1]) if latencies_ms else None,
        rss_start_mb=round(rss_start),
        rss_peak_mb=round(rss_peak),
        rss_end_mb=round(rss_end),
    )
    assert passed, (base, samples[:3], outcomes)
    assert shed > 0, outcomes  # Twice the capacity was more than the server took.
