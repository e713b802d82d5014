"""R1, an idempotent retry storm on `POST /events/batch` against `tally serve --workers 2`.

Clients send every event 1 to 3 times (5 in the deep tier), in their own order and batching,
concurrently, so duplicates are in flight together; some batches are first sent with a client
timeout too short to wait for the answer, then sent again. A quarter of the events are stored
before the storm, so batches mix new and stored events. Half the clients also send batches
that reuse a stored transaction_id with another payload, between fresh events ("canaries").

Invariants: an acknowledged event is stored; nothing is stored or counted twice; usage equals
the oracle over unique events; a reused id with another payload is refused with 422
`value_already_exist`, and its batch stores nothing.

Builds on tests/integration/test_ingest_reliability.py (its storm asserts the same without
figures); fast tier: 8 clients, 400 events; deep tier: 16 clients, 4,000 events.
"""

import random
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest

from adapters.settings import Settings
from adapters.stores import open_ledger
from tests.integration.test_ingest_reliability import (
    SUBSCRIPTIONS,
    make_events,
    oracle,
    run_threads,
)
from tests.reliability.battery import report, seed, tier
from tests.serving import serving, setup_catalog, usage_totals

pytestmark = pytest.mark.reliability

CLIENTS = tier(8, 16)
EVENTS = tier(400, 4_000)
SENDS_MAX = tier(3, 5)
CONFLICTS_PER_CLIENT = 3


@pytest.mark.parametrize(
    "store_settings", tier(["sqlite"], ["sqlite", "postgres"]), indirect=True
)  # Both stores run the storm of tests/integration in the fast tier already.
def test_a_retry_storm_bills_each_event_once(store_settings: Settings, tmp_path: Path) -> None:
    base = seed()
    ledger = open_ledger(store_settings)  # In process: `tally org create` takes seconds.
    api_key = ledger.billing.create_organization("storm")[1]
    ledger.close()
    events = make_events(EVENTS, seed=base)
    stored_first = events[: EVENTS // 4]
    lock = threading.Lock()
    acknowledged: set[tuple[str, str]] = set()
    unexpected: list[tuple[int, str]] = []
    conflicts: list[tuple[int, Any]] = []
    canaries: list[dict[str, Any]] = []
    counts = {"requests": 0, "timeouts": 0, "sent_events": 0}

    def client(number: int, url: str, headers: dict[str, str]) -> None:
        rng = random.Random(base * 1000 + number)
        sends = [e for e in events for _ in range(rng.randint(1, SENDS_MAX))]
        rng.shuffle(sends)
        batches = []
        while sends:
            size = rng.randint(1, 40)
            batches.append(sends[:size])
            sends = sends[size:]
        injected = []
        if number % 2 == 0:
            for k in range(CONFLICTS_PER_CLIENT):
                reused = rng.choice(stored_first)
                changed = {**reused, "properties": {**reused["properties"], "tokens": "999999"}}
                fresh = make_events(3, seed=base + number * 100 + k, prefix=f"canary_{number}_{k}")
                injected.append([fresh[0], fresh[1], changed, fresh[2]])
                with lock:
                    canaries.extend(fresh)
        with httpx.Client(headers=headers, timeout=60) as http:

            def send(batch: list[dict[str, Any]], timeout: float | None = None) -> httpx.Response:
                with lock:
                    counts["requests"] += 1
                    counts["sent_events"] += len(batch)
                if timeout is None:
                    return http.post(url, json={"events": batch})
                return http.post(url, json={"events": batch}, timeout=timeout)

            for batch in batches:
                if rng.random() < 0.05:  # A client that gives up waiting, then sends again.
                    try:
                        response = send(batch, timeout=0.002)
                    except httpx.TimeoutException:
                        with lock:
                            counts["timeouts"] += 1
                        response = send(batch)
                else:
                    response = send(batch)
                with lock:
                    if response.status_code == 200:
                        acknowledged.update(
                            (e["external_subscription_id"], e["transaction_id"]) for e in batch
                        )
                    else:
                        unexpected.append((response.status_code, response.text))
                if injected and rng.random() < 0.1:
                    refused = send(injected.pop())
                    with lock:
                        conflicts.append((refused.status_code, refused.json()))
            for batch in injected:
                refused = send(batch)
                with lock:
                    conflicts.append((refused.status_code, refused.json()))

    with serving(store_settings, tmp_path, workers=2) as server:
        setup_catalog(server.url, api_key, SUBSCRIPTIONS)
        headers = {"Authorization": f"Bearer {api_key}"}
        url = f"{server.url}/api/v1/events/batch"
        for start in range(0, len(stored_first), 100):
            first = httpx.post(
                url, json={"events": stored_first[start : start + 100]}, headers=headers, timeout=30
            )
            assert first.status_code == 200, first.text
        began = time.monotonic()
        run_threads([lambda n=n: client(n, url, headers) for n in range(CLIENTS)])
        elapsed_s = time.monotonic() - began
        usage = {s: usage_totals(server.url, api_key, s) for s in SUBSCRIPTIONS}

    ledger = open_ledger(store_settings)
    try:
        org = ledger.billing.organization_for_api_key(api_key)
        assert org is not None
        acked_not_stored = sum(
            1 for sub, tx in acknowledged if ledger.usage.find(org, tx, sub) is None
        )
        partial_batches = sum(
            1
            for canary in canaries
            if ledger.usage.find(org, canary["transaction_id"], canary["external_subscription_id"])
            is not None
        )
        stored_rows = ledger.usage.page(org, 1, 1)[1]
    finally:
        ledger.close()

    expected = oracle(events)
    # Stored rows or counted events beyond one per unique event; usage short of the oracle.
    duplicates_billed = max(0, stored_rows - len(events)) + sum(
        max(0, usage[s][0] - expected[s][0]) for s in SUBSCRIPTIONS
    )
    usage_mismatches = sum(1 for s in SUBSCRIPTIONS if usage[s] != expected[s])
    injected = CONFLICTS_PER_CLIENT * len(range(0, CLIENTS, 2))
    refused_right = Counter(
        status == 422
        and body.get("error_details") == {"2": {"transaction_id": ["value_already_exist"]}}
        for status, body in conflicts
    )
    passed = report(
        "R1",
        f"retry_storm[{store_settings.store}]",
        seed=base,
        runs=1,
        failures={
            "duplicates_billed": duplicates_billed,
            "acked_not_stored": acked_not_stored,
            "partial_batches": partial_batches,
            "usage_mismatches": usage_mismatches,
            "conflict_violations": abs(injected - refused_right[True]) + refused_right[False],
            "unexpected_responses": len(unexpected),
        },
        conflict_responses=refused_right[True],
        injected_conflicts=injected,
        clients=CLIENTS,
        events=len(events),
        requests=counts["requests"],
        client_timeouts=counts["timeouts"],
        events_per_s=round(counts["sent_events"] / elapsed_s),
    )
    assert passed, (base, unexpected[:3], conflicts[:3])
    assert len(acknowledged) == len(events)  # Every event was acknowledged at least once.
