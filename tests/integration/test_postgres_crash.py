"""PostgreSQL itself crashes during an ingest load (§5 R4): `pg_ctl restart -m immediate` of a
private cluster made for the test (never the shared one). Clients retry with the same keys;
every acknowledged event is stored after recovery, none twice.

Slow and needs the PostgreSQL server binaries and a `postgres` system user: it runs with
`make reliability` (TALLY_RELIABILITY=deep), not in the default run.
"""

import os
import shutil
import subprocess
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
from tests.serving import ServerProcess, create_organization, setup_catalog, usage_totals

PG_BIN = Path(os.environ.get("TALLY_PG_BIN", "/usr/lib/postgresql/15/bin"))

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        os.environ.get("TALLY_RELIABILITY") != "deep", reason="make reliability runs it"
    ),
]


class PrivateCluster:
    """A throwaway PostgreSQL cluster owned by the `postgres` user, on its own port."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.data = directory / "data"
        self.log = directory / "postgres.log"
        self.port = free_port()
        directory.mkdir(parents=True, exist_ok=True)
        shutil.chown(directory, "postgres")

    def run(self, *args: str) -> None:
        # No pipes: the postmaster that pg_ctl starts would hold them open forever.
        subprocess.run(
            ["runuser", "-u", "postgres", "--", *args],
            check=True,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            cwd=self.directory,
            timeout=120,
        )

    def init(self) -> None:
        self.run(str(PG_BIN / "initdb"), "-D", str(self.data), "-A", "trust", "-U", "postgres")
        self.start()
        self.run(str(PG_BIN / "createdb"), "-h", "127.0.0.1", "-p", str(self.port), "tally")

    def start(self) -> None:
        options = f"-p {self.port} -k {self.directory} -c listen_addresses=127.0.0.1"
        self.run(
            str(PG_BIN / "pg_ctl"),
            "-D",
            str(self.data),
            "-l",
            str(self.log),
            "-w",
            "-o",
            options,
            "start",
        )

    def restart_immediate(self) -> None:
        options = f"-p {self.port} -k {self.directory} -c listen_addresses=127.0.0.1"
        self.run(
            str(PG_BIN / "pg_ctl"),
            "-D",
            str(self.data),
            "-w",
            "-m",
            "immediate",
            "-o",
            options,
            "restart",
        )

    def stop(self) -> None:
        self.run(str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "stop")


def test_a_postgres_crash_during_a_load_loses_no_acknowledged_event(tmp_path: Path) -> None:
    if not (PG_BIN / "pg_ctl").exists() or shutil.which("runuser") is None:
        pytest.skip("no PostgreSQL server binaries or runuser")
    cluster = PrivateCluster(Path("/tmp") / f"tally-pg-{free_port()}")
    cluster.init()
    try:
        settings = parse_database_url(f"postgresql://postgres@127.0.0.1:{cluster.port}/tally")
        api_key = create_organization(settings, "pgcrash")
        events = make_events(3_000, seed=31)
        batches = [events[n : n + 50] for n in range(0, len(events), 50)]
        server = ServerProcess(settings, tmp_path, workers=2)
        server.start()
        try:
            setup_catalog(server.url, api_key, SUBSCRIPTIONS)
            headers = {"Authorization": f"Bearer {api_key}"}
            pending = list(range(len(batches)))
            acknowledged: list[int] = []
            failures: Counter[int | str] = Counter()
            lock = threading.Lock()

            def client() -> None:
                with httpx.Client(headers=headers, timeout=15) as http:
                    while True:
                        with lock:
                            if not pending:
                                return
                            index = pending.pop(0)
                        while True:
                            try:
                                response = http.post(
                                    f"{server.url}/api/v1/events/batch",
                                    json={"events": batches[index]},
                                )
                            except httpx.HTTPError as error:
                                with lock:
                                    failures[type(error).__name__] += 1
                                time.sleep(0.1)
                                continue
                            if response.status_code == 200:
                                with lock:
                                    acknowledged.append(index)
                                break
                            assert response.status_code >= 500, response.text
                            with lock:
                                failures[response.status_code] += 1
                            time.sleep(0.1)

            def crash() -> None:
                deadline = time.monotonic() + 60
                while len(acknowledged) < 10 and time.monotonic() < deadline:
                    time.sleep(0.005)
                cluster.restart_immediate()

            run_threads([client, client, client, client, crash])
            assert sorted(acknowledged) == list(range(len(batches)))
            assert sum(failures.values()) > 0, "the crash interrupted nothing"
            expected = oracle(events)
            for subscription in SUBSCRIPTIONS:
                assert usage_totals(server.url, api_key, subscription) == expected[subscription]
        finally:
            server.stop()
        ledger = open_ledger(settings)
        try:
            org = ledger.billing.organization_for_api_key(api_key)
            assert org is not None
            for event in events:
                assert ledger.usage.find(
                    org, event["transaction_id"], event["external_subscription_id"]
                ), event
            assert ledger.usage.page(org, 1, 1)[1] == len(events)
        finally:
            ledger.close()
    finally:
        cluster.stop()
        shutil.rmtree(cluster.directory, ignore_errors=True)
