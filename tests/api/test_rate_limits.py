"""Request limits: the body size (413) and the per-key token bucket (429 with Lago's headers),
shared by the processes on a store (ADR 0023)."""

from collections.abc import Callable, Iterator
from dataclasses import replace
from uuid import UUID, uuid4

import anyio
import pytest
from litestar import Litestar
from litestar.testing import TestClient

from adapters.rate_limits import MemoryRateLeases
from adapters.settings import (
    BODY_MAX_BYTES_DEFAULT,
    RATE_LIMIT_BURST_DEFAULT,
    RATE_LIMIT_PER_S_DEFAULT,
    Settings,
    SettingsError,
    memory_settings,
    settings_from_env,
)
from adapters.stores import Ledger, open_ledger
from api.app import create_app
from api.problems import PROBLEM_TYPE_BASE
from api.security import RateLimiter, SharedRateLimiter

Client = TestClient[Litestar]
BODY_MAX = 2048


def limited(settings: Settings) -> Iterator[tuple[Client, Ledger, str]]:
    ledger = open_ledger(settings)
    _, api_key = ledger.billing.create_organization("acme")
    with TestClient(app=create_app(ledger)) as client:
        yield client, ledger, api_key


@pytest.fixture
def slow() -> Iterator[tuple[Client, Ledger, str]]:
    """Three requests per key at once, then one every 1000 s; bodies up to 2 KiB."""
    settings = replace(
        memory_settings(), rate_limit_per_s=0.001, rate_limit_burst=3, body_max_bytes=BODY_MAX
    )
    yield from limited(settings)


def test_a_key_over_its_rate_gets_429_with_lagos_headers(
    slow: tuple[Client, Ledger, str],
) -> None:
    client, ledger, api_key = slow
    headers = {"Authorization": f"Bearer {api_key}"}
    answers = [client.get("/api/v1/customers", headers=headers) for _ in range(4)]
    assert [a.status_code for a in answers] == [200, 200, 200, 429]
    # Successful answers carry the headers too (Lago's client reports them).
    assert [a.headers["x-ratelimit-remaining"] for a in answers] == ["2", "1", "0", "0"]
    assert {a.headers["x-ratelimit-limit"] for a in answers} == {"3"}
    refused = answers[-1]
    wait_s = int(refused.headers["x-ratelimit-reset"])  # Seconds to wait, as Lago's client reads.
    assert 990 <= wait_s <= 1000
    assert refused.headers["retry-after"] == refused.headers["x-ratelimit-reset"]
    assert refused.headers["content-type"] == "application/problem+json"
    assert refused.json() == {
        "type": PROBLEM_TYPE_BASE + "too_many_requests",
        "title": "Too Many Requests",
        "status": 429,
        "detail": f"Too many requests for this API key: retry in {wait_s} s.",
        "error": "Too Many Requests",
        "code": "too_many_requests",
    }
    # The bucket is per key: another key of the organization is not held back.
    organization_id = ledger.billing.organization_for_api_key(api_key)
    assert organization_id is not None
    other = ledger.billing.issue_api_key(organization_id)
    assert client.get("/api/v1/customers", headers={"Authorization": f"Bearer {other}"}).is_success
    # A refused request is not run, and the audit trail shows the refusal.
    posted = client.post(
        "/api/v1/customers", json={"customer": {"external_id": "c"}}, headers=headers
    )
    assert posted.status_code == 429
    other_headers = {"Authorization": f"Bearer {other}"}
    assert client.get("/api/v1/customers/c", headers=other_headers).status_code == 404
    logs = client.get("/api/v1/audit_logs", headers=other_headers).json()["audit_logs"]
    assert [(e["method"], e["status"]) for e in logs] == [("POST", 429)]


def test_the_bucket_refills_at_its_rate() -> None:
    now = [0.0]
    limiter = RateLimiter(rate_per_s=2, burst=2, clock=lambda: now[0])
    key = uuid4()
    assert [limiter.take(key).allowed for _ in range(3)] == [True, True, False]
    refused = limiter.take(key)
    assert (refused.remaining, refused.reset_s) == (0, 1)
    now[0] = 0.5  # One token back.
    assert limiter.take(key).allowed and not limiter.take(key).allowed
    now[0] = 10.0  # Full again, never above the burst.
    decisions = [limiter.take(key) for _ in range(3)]
    assert [d.allowed for d in decisions] == [True, True, False]
    assert decisions[0].remaining == 1 and decisions[0].reset_s == 1


def test_a_body_over_the_limit_gets_413_unread(slow: tuple[Client, Ledger, str]) -> None:
    client, _, api_key = slow
    headers = {"Authorization": f"Bearer {api_key}", "Content-Type": "application/json"}
    name = "x" * BODY_MAX
    body = f'{{"customer": {{"external_id": "big", "name": "{name}"}}}}'.encode()
    declared = client.post("/api/v1/customers", content=body, headers=headers)
    assert declared.status_code == 413
    assert declared.json() == {
        "type": PROBLEM_TYPE_BASE + "request_body_too_large",
        "title": "Payload Too Large",
        "status": 413,
        "detail": f"The request body is larger than {BODY_MAX} bytes.",
        "error": "Payload Too Large",
        "code": "request_body_too_large",
    }
    # Without a Content-Length (chunked), it is counted as it arrives.
    chunked = client.post(
        "/api/v1/customers", content=iter([body[:1000], body[1000:]]), headers=headers
    )
    assert chunked.status_code == 413
    fitting = b'{"customer": {"external_id": "small", "name": "%s", "city": "%s"}}' % (
        b"x" * 990,
        b"y" * 990,
    )
    assert BODY_MAX - 100 < len(fitting) <= BODY_MAX
    assert client.post("/api/v1/customers", content=fitting, headers=headers).status_code == 200


def test_request_limits_come_from_the_environment() -> None:
    default = settings_from_env({})
    assert (default.body_max_bytes, default.rate_limit_per_s, default.rate_limit_burst) == (
        BODY_MAX_BYTES_DEFAULT,
        RATE_LIMIT_PER_S_DEFAULT,
        RATE_LIMIT_BURST_DEFAULT,
    )
    assert BODY_MAX_BYTES_DEFAULT == 1024 * 1024
    chosen = settings_from_env(
        {
            "TALLY_BODY_MAX_BYTES": "4096",
            "TALLY_RATE_LIMIT_PER_S": "0",
            "TALLY_RATE_LIMIT_BURST": "10",
        }
    )
    assert (chosen.body_max_bytes, chosen.rate_limit_per_s, chosen.rate_limit_burst) == (
        4096,
        0.0,
        10,
    )
    for name, value in [
        ("TALLY_BODY_MAX_BYTES", "10"),
        ("TALLY_BODY_MAX_BYTES", "1MB"),
        ("TALLY_RATE_LIMIT_PER_S", "-1"),
        ("TALLY_RATE_LIMIT_PER_S", "fast"),
        ("TALLY_RATE_LIMIT_BURST", "0"),
    ]:
        with pytest.raises(SettingsError, match=name):
            settings_from_env({name: value})


def test_a_zero_rate_turns_the_limit_off() -> None:
    settings = replace(memory_settings(), rate_limit_per_s=0, rate_limit_burst=1)
    for client, _, api_key in limited(settings):
        headers = {"Authorization": f"Bearer {api_key}"}
        answers = [client.get("/api/v1/customers", headers=headers) for _ in range(5)]
        assert {a.status_code for a in answers} == {200}
        assert "x-ratelimit-limit" not in answers[0].headers


class CountingLeases:
    """The shared buckets of one store, counting the round trips a limiter makes."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self.buckets = MemoryRateLeases(clock)
        self.calls = 0

    def lease(self, key_id: UUID, want: int, rate_per_s: float, burst: int) -> tuple[int, float]:
        self.calls += 1
        return self.buckets.lease(key_id, want, rate_per_s, burst)


def test_processes_lease_tokens_in_batches_from_one_shared_bucket() -> None:
    now = [0.0]
    leases = CountingLeases(lambda: now[0])
    # 1000 a second: a lease takes 10 ms of it, 10 tokens; the burst is 100.
    first, second = (SharedRateLimiter(leases, 1000, 100, clock=lambda: now[0]) for _ in range(2))
    key = uuid4()

    async def take_all() -> list[bool]:
        return [(await limiter.take(key)).allowed for _ in range(60) for limiter in (first, second)]

    allowed = anyio.run(take_all)
    # Two processes, one bucket: 100 requests pass, not 200, in 10 leases, not 100 round trips.
    assert allowed.count(True) == 100 and allowed[:100] == [True] * 100
    assert leases.calls == 10 + 2  # Then one refusal each, remembered: no more round trips.
    refused = anyio.run(first.take, key)
    assert (refused.allowed, refused.remaining, refused.reset_s) == (False, 0, 1)
    assert leases.calls == 12
    now[0] = 0.05  # 50 ms: 50 tokens back in the shared bucket.
    decision = anyio.run(second.take, key)
    assert decision.allowed and decision.remaining == 49
    assert decision.reset_s == 1  # Full again in 51 ms.
    now[0] = 5.0  # A lease not spent within LEASE_S is dropped, never added to a full bucket.
    assert anyio.run(second.take, key).remaining == 99
