"""Ingest through HTTP against a real `tally serve --workers 2`, on SQLite and PostgreSQL: a
retry storm (performance-and-reliability §5 R1) and kill -9 during a load (R4)."""

import random
import threading
import time
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx

from adapters.settings import Settings
from adapters.stores import open_ledger
from tests.serving import ServerProcess, create_organization, serving, setup_catalog, usage_totals

SUBSCRIPTIONS = ["sub_a", "sub_b"]


def make_events(count: int, seed: int, prefix: str = "tx") -> list[dict[str, Any]]:
    """Events of the last hour (never before the period's start), integer token counts."""
    rng = random.Random(seed)
    now = datetime.now(UTC)
    start = max(
        now.replace(day=1, hour=0, minute=0, second=0, microsecond=0), now - timedelta(hours=1)
    )
    span = max(1, int((now - start).total_seconds()) - 5)
    return [
        {
            "transaction_id": f"{prefix}_{n}",
            "external_subscription_id": rng.choice(SUBSCRIPTIONS),
            "code": "tokens",
            "timestamp": int(start.timestamp()) + rng.randrange(span),
            "properties": {
                "tokens": str(rng.randrange(1, 10_000)),
                "model": rng.choice(["large", "small"]),
            },
        }
        for n in range(count)
    ]


def oracle(events: list[dict[str, Any]]) -> dict[str, tuple[int, Decimal]]:
    """(count, units) per subscription over unique events."""
    unique = {(e["external_subscription_id"], e["transaction_id"]): e for e in events}
    totals: dict[str, tuple[int, Decimal]] = {s: (0, Decimal(0)) for s in SUBSCRIPTIONS}
    for event in unique.values():
        count, units = totals[event["external_subscription_id"]]
        totals[event["external_subscription_id"]] = (
            count + 1,
            units + Decimal(event["properties"]["tokens"]),
        )
    return totals


def run_threads(targets: list[Callable[[], None]]) -> None:
    failures: list[BaseException] = []

    def guarded(target: Callable[[], None]) -> Callable[[], None]:
        def run() -> None:
            try:
                target()
            except BaseException as error:  # Re-raised in the test's thread.
                failures.append(error)

        return run

    threads = [threading.Thread(target=guarded(t)) for t in targets]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    if failures:
        raise failures[0]


def test_a_retry_storm_counts_each_event_once_and_refuses_changed_payloads(
    store_settings: Settings, tmp_path: Path
) -> None:
    api_key = create_organization(store_settings, "storm")
    events = make_events(400, seed=11)
    with serving(store_settings, tmp_path, workers=2) as server:
        setup_catalog(server.url, api_key, SUBSCRIPTIONS)
        headers = {"Authorization": f"Bearer {api_key}"}
        batch_url = f"{server.url}/api/v1/events/batch"
        first = httpx.post(batch_url, json={"events": events[:100]}, headers=headers, timeout=30)
        assert first.status_code == 200, first.text

        statuses: Counter[int] = Counter()
        conflicts: list[tuple[int, Any]] = []
        canaries: list[dict[str, Any]] = []
        lock = threading.Lock()

        def client(seed: int) -> None:
            rng = random.Random(seed)
            # Every event, each sent 1 to 3 times, in this client's own order and batching.
            sends = [e for e in events for _ in range(rng.randint(1, 3))]
            rng.shuffle(sends)
            batches = []
            while sends:
                size = rng.randint(1, 40)
                batches.append(sends[:size])
                sends = sends[size:]
            injected = []
            if seed % 2 == 0:  # Half the clients reuse a stored id with another payload.
                for k in range(3):
                    stored = events[rng.randrange(100)]
                    changed = {**stored, "properties": {**stored["properties"], "tokens": "999999"}}
                    fresh = make_events(3, seed=seed * 100 + k, prefix=f"canary_{seed}_{k}")
                    injected.append([fresh[0], fresh[1], changed, fresh[2]])
                    with lock:
                        canaries.extend(fresh)
            with httpx.Client(headers=headers, timeout=60) as http:
                for batch in batches:
                    response = http.post(batch_url, json={"events": batch})
                    with lock:
                        statuses[response.status_code] += 1
                    assert response.status_code == 200, response.text
                    if injected and rng.random() < 0.1:
                        refused = http.post(batch_url, json={"events": injected.pop()})
                        with lock:
                            conflicts.append((refused.status_code, refused.json()))
                for batch in injected:
                    refused = http.post(batch_url, json={"events": batch})
                    with lock:
                        conflicts.append((refused.status_code, refused.json()))

        run_threads([lambda s=seed: client(s) for seed in range(8)])

        assert set(statuses) == {200}
        assert len(conflicts) == 4 * 3  # Conflict answers equal the injected ones.
        for status, body in conflicts:
            assert status == 422, body
            assert body["error_details"] == {"2": {"transaction_id": ["value_already_exist"]}}
        with httpx.Client(base_url=f"{server.url}/api/v1", headers=headers, timeout=30) as http:
            for canary in canaries:  # No partial batch: nothing of a refused batch is stored.
                found = http.get(
                    f"/events/{canary['transaction_id']}",
                    params={"external_subscription_id": canary["external_subscription_id"]},
                )
                assert found.status_code == 404, found.text
            listed = http.get("/events", params={"per_page": 1}).json()
            assert listed["meta"]["total_count"] == len(events)
        expected = oracle(events)
        for subscription in SUBSCRIPTIONS:
            assert usage_totals(server.url, api_key, subscription) == expected[subscription]


def test_kill_9_during_a_load_loses_no_acknowledged_event_and_stores_none_twice(
    store_settings: Settings, tmp_path: Path
) -> None:
    api_key = create_organization(store_settings, "crash")
    events = make_events(3_000, seed=23)
    batches = [events[n : n + 50] for n in range(0, len(events), 50)]
    server = ServerProcess(store_settings, tmp_path, workers=2)
    server.start()
    try:
        setup_catalog(server.url, api_key, SUBSCRIPTIONS)
        headers = {"Authorization": f"Bearer {api_key}"}
        pending = list(range(len(batches)))
        acknowledged: list[int] = []
        failures: Counter[str] = Counter()
        lock = threading.Lock()

        def client() -> None:
            with httpx.Client(headers=headers, timeout=10) as http:
                while True:
                    with lock:
                        if not pending:
                            return
                        index = pending.pop(0)
                    while True:  # Retry the same batch (the same keys) until acknowledged.
                        try:
                            response = http.post(
                                f"{server.url}/api/v1/events/batch",
                                json={"events": batches[index]},
                            )
                        except httpx.HTTPError as error:
                            with lock:
                                failures[type(error).__name__] += 1
                            time.sleep(0.05)
                            continue
                        if response.status_code == 200:
                            with lock:
                                acknowledged.append(index)
                            break
                        assert response.status_code >= 500, response.text
                        with lock:
                            failures[str(response.status_code)] += 1
                        time.sleep(0.05)

        def crash() -> None:
            for threshold in (8, 30):  # Twice, at two points of the load.
                while len(acknowledged) < threshold:
                    time.sleep(0.005)
                server.kill()
                time.sleep(0.3)
                server.start()

        run_threads([client, client, client, client, crash])
        assert sorted(acknowledged) == list(range(len(batches)))
        assert sum(failures.values()) > 0, "the kills interrupted nothing"
    finally:
        server.stop()

    ledger = open_ledger(store_settings)
    try:
        org = ledger.billing.organization_for_api_key(api_key)
        assert org is not None
        for event in events:  # Every acknowledged event is stored...
            found = ledger.usage.find(
                org, event["transaction_id"], event["external_subscription_id"]
            )
            assert found is not None, event
        _, total = ledger.usage.page(org, 1, 1)
        assert total == len(events)  # ... and none twice.
    finally:
        ledger.close()
    with serving(store_settings, tmp_path) as again:
        expected = oracle(events)
        for subscription in SUBSCRIPTIONS:
            assert usage_totals(again.url, api_key, subscription) == expected[subscription]
