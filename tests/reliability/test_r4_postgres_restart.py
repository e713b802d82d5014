"""R4, PostgreSQL restarted mid-ingest: `pg_ctl restart -m immediate` of a private cluster (never
the shared one) while four clients load `tally serve --workers 2` and retry every failed batch
with the same keys. Every acknowledged event is stored after recovery, none twice, and usage
equals the oracle.

In the fast tier (about 20 s) and the deep one alike: it needs the PostgreSQL server binaries
and a `postgres` system user, and reuses tests/integration/test_postgres_crash.py's private
cluster. The store may absorb the restart by reconnecting, so the figures count what clients
saw (errors and the longest wait between acknowledgements), and the test checks that the load
spanned the restart.
"""

import itertools
import shutil
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest

from adapters.settings import parse_database_url
from adapters.stores import open_ledger
from tests.conftest import free_port
from tests.integration.test_ingest_reliability import (
    SUBSCRIPTIONS,
    make_events,
    oracle,
    run_threads,
)
from tests.integration.test_postgres_crash import PG_BIN, PrivateCluster
from tests.reliability.battery import report, seed
from tests.serving import ServerProcess, setup_catalog, usage_totals

pytestmark = pytest.mark.reliability

EVENTS = 8_000
BATCH = 50
CLIENTS = 4


def test_a_postgres_restart_mid_ingest_loses_no_acknowledged_event(tmp_path: Path) -> None:
    if not (PG_BIN / "pg_ctl").exists() or shutil.which("runuser") is None:
        pytest.skip("no PostgreSQL server binaries or runuser")
    base = seed()
    cluster = PrivateCluster(Path("/tmp") / f"tally-r4-{free_port()}")
    cluster.init()
    try:
        settings = parse_database_url(f"postgresql://postgres@127.0.0.1:{cluster.port}/tally")
        ledger = open_ledger(settings)
        api_key = ledger.billing.create_organization("r4")[1]
        ledger.close()
        events = make_events(EVENTS, seed=base)
        batches = [events[n : n + BATCH] for n in range(0, len(events), BATCH)]
        server = ServerProcess(settings, tmp_path, workers=2)
        server.start()
        lock = threading.Lock()
        pending = list(range(len(batches)))
        acked_at: list[tuple[float, int]] = []
        client_errors: Counter[str] = Counter()
        restart: dict[str, float] = {}
        try:
            setup_catalog(server.url, api_key, SUBSCRIPTIONS)
            headers = {"Authorization": f"Bearer {api_key}"}

            def client() -> None:
                with httpx.Client(headers=headers, timeout=30) as http:
                    while True:
                        with lock:
                            if not pending:
                                return
                            index = pending.pop(0)
                        while True:  # The same batch, the same keys, until acknowledged.
                            try:
                                response = http.post(
                                    f"{server.url}/api/v1/events/batch",
                                    json={"events": batches[index]},
                                )
                            except httpx.HTTPError as error:
                                with lock:
                                    client_errors[type(error).__name__] += 1
                                time.sleep(0.05)
                                continue
                            if response.status_code == 200:
                                with lock:
                                    acked_at.append((time.monotonic(), index))
                                break
                            assert response.status_code >= 500, response.text
                            with lock:
                                client_errors[str(response.status_code)] += 1
                            time.sleep(0.05)

            def crash() -> None:
                deadline = time.monotonic() + 60
                while len(acked_at) < 10 and time.monotonic() < deadline:
                    time.sleep(0.005)
                restart["began"] = time.monotonic()
                restart["pending"] = len(pending)
                cluster.restart_immediate()
                restart["ended"] = time.monotonic()

            run_threads([*([client] * CLIENTS), crash])
            usage = {s: usage_totals(server.url, api_key, s) for s in SUBSCRIPTIONS}
        finally:
            server.stop()

        ledger = open_ledger(settings)
        try:
            org = ledger.billing.organization_for_api_key(api_key)
            assert org is not None
            acknowledged = {index for _, index in acked_at}
            acked_lost = sum(
                1
                for index in acknowledged
                for event in batches[index]
                if ledger.usage.find(
                    org, event["transaction_id"], event["external_subscription_id"]
                )
                is None
            )
            stored_rows = ledger.usage.page(org, 1, 1)[1]
        finally:
            ledger.close()
    finally:
        cluster.stop()
        shutil.rmtree(cluster.directory, ignore_errors=True)

    times = sorted(t for t, _ in acked_at)
    expected = oracle(events)
    passed = report(
        "R4",
        "postgres_restart_mid_ingest",
        seed=base,
        runs=1,
        failures={
            "acked_lost": acked_lost,
            "duplicates": max(0, stored_rows - len(events)),
            "usage_mismatches": sum(1 for s in SUBSCRIPTIONS if usage[s] != expected[s]),
            "unacknowledged_batches": len(batches) - len(acknowledged),
        },
        events=len(events),
        client_errors=sum(client_errors.values()),
        restart_ms=round((restart["ended"] - restart["began"]) * 1000),
        unavailability_window_ms=round(max(b - a for a, b in itertools.pairwise(times)) * 1000),
    )
    assert passed, (base, client_errors)
    # The restart happened during the load: batches were waiting and were acknowledged after.
    assert restart["pending"] > 0 and times[-1] > restart["ended"], (restart, times[-1])
