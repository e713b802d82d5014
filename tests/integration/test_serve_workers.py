"""`tally serve --workers 2` starts, serves the API from both workers, and answers keep-alive
requests without Nagle's delay."""

import statistics
import time
from pathlib import Path

import httpx

from adapters.settings import Settings
from tests.serving import create_organization, serving, setup_catalog, usage_totals


def test_tally_serve_with_two_workers_starts_and_serves(
    store_settings: Settings, tmp_path: Path
) -> None:
    api_key = create_organization(store_settings, "workers")
    with serving(store_settings, tmp_path, workers=2) as server:
        setup_catalog(server.url, api_key, ["sub_1"])
        headers = {"Authorization": f"Bearer {api_key}"}
        event = {
            "transaction_id": "t1",
            "external_subscription_id": "sub_1",
            "code": "tokens",
            "properties": {"tokens": "12", "model": "large"},
        }
        # A connection per request: the kernel spreads them over both workers.
        for _ in range(10):
            posted = httpx.post(
                f"{server.url}/api/v1/events", json={"event": event}, headers=headers, timeout=30
            )
            assert posted.status_code == 200, posted.text
        assert usage_totals(server.url, api_key, "sub_1")[0] == 1

        # Keep-alive: each response comes at once (uvicorn's own socket for several workers
        # leaves Nagle's algorithm on, and every response then waits ~40 ms for an ACK).
        with httpx.Client(base_url=server.url, timeout=10) as http:
            durations = []
            for _ in range(15):
                began = time.perf_counter()
                assert http.get("/health").status_code == 200
                durations.append(time.perf_counter() - began)
        assert statistics.median(durations) < 0.025, durations
