"""The per-key rate limit holds across processes: every API process on a store draws from one
bucket per key (ADR 0023), on SQLite and PostgreSQL."""

from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import replace
from pathlib import Path

import httpx
import pytest
from litestar import Litestar
from litestar.testing import TestClient

from adapters.settings import Settings
from adapters.stores import open_ledger
from api.app import create_app
from tests.serving import create_organization, serving

Client = TestClient[Litestar]
BURST = 5
SLOW_RATE_PER_S = 0.001  # One token every 1000 s: none comes back during a test.


@pytest.fixture
def two_apps(store_settings: Settings) -> Iterator[tuple[list[Client], str]]:
    """Two API instances on one store, as two processes would be."""
    settings = replace(store_settings, rate_limit_per_s=SLOW_RATE_PER_S, rate_limit_burst=BURST)
    with ExitStack() as stack:
        ledgers = [open_ledger(settings) for _ in range(2)]
        for ledger in ledgers:
            stack.callback(ledger.close)
        _, api_key = ledgers[0].billing.create_organization("acme")
        clients = [stack.enter_context(TestClient(app=create_app(ledger))) for ledger in ledgers]
        yield clients, api_key


def test_two_api_instances_on_one_store_share_each_keys_bucket(
    two_apps: tuple[list[Client], str],
) -> None:
    clients, api_key = two_apps
    headers = {"Authorization": f"Bearer {api_key}"}
    answers = [clients[i % 2].get("/api/v1/customers", headers=headers) for i in range(4 * BURST)]
    statuses = [a.status_code for a in answers]
    # Per process, each would have let BURST through: 2 × BURST in all.
    assert statuses.count(200) == BURST and set(statuses) == {200, 429}, statuses
    assert statuses[:BURST] == [200] * BURST
    remaining = [int(a.headers["x-ratelimit-remaining"]) for a in answers[:BURST]]
    assert remaining == list(range(BURST - 1, -1, -1))  # Counted down across both instances.
    for refused in answers[BURST:]:
        assert refused.headers["x-ratelimit-limit"] == str(BURST)
        assert refused.headers["x-ratelimit-remaining"] == "0"
        assert 990 <= int(refused.headers["retry-after"]) <= 1000
        assert refused.headers["retry-after"] == refused.headers["x-ratelimit-reset"]
        assert refused.json()["code"] == "too_many_requests"


def test_two_tally_serve_processes_share_each_keys_bucket(
    store_settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TALLY_RATE_LIMIT_PER_S", str(SLOW_RATE_PER_S))
    monkeypatch.setenv("TALLY_RATE_LIMIT_BURST", str(BURST))
    api_key = create_organization(store_settings, "limits")
    headers = {"Authorization": f"Bearer {api_key}"}
    # Two servers, one of them with two workers: three processes on one store.
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
    with (
        serving(store_settings, tmp_path / "a", workers=1) as first,
        serving(store_settings, tmp_path / "b", workers=2) as second,
    ):
        statuses = []
        for i in range(4 * BURST):
            url = (first if i % 2 == 0 else second).url
            # A connection per request: the kernel spreads them over the second's workers.
            response = httpx.get(f"{url}/api/v1/customers", headers=headers, timeout=30)
            statuses.append(response.status_code)
            if response.status_code == 429:
                assert int(response.headers["retry-after"]) >= 990
            assert api_key not in response.text and api_key not in str(response.headers)
        logs = first.log() + second.log()
    assert statuses.count(200) == BURST and set(statuses) == {200, 429}, statuses
    assert "Tally serves" in logs and api_key not in logs  # Keys never in logs.
