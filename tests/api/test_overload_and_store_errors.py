"""Admission control and store failures (ADR 0024): a request over the in-flight limit gets a
429 that Lago's client retries, a store that is busy or unreachable a 503; both with
Retry-After and Lago's error body."""

import asyncio
import sqlite3
from typing import Any

import psycopg
import psycopg_pool
import pytest
from eventsourcing.persistence import OperationalError

from adapters.faults import FaultInjector, FaultPlan, fault_plan_from_env
from adapters.settings import SettingsError
from api.admission import Admission, AdmissionMiddleware, admission_from_env
from api.problems import PROBLEMS


def answer(exc: Exception) -> Any:
    handler = next(PROBLEMS[cls] for cls in type(exc).__mro__ if cls in PROBLEMS)
    return handler(exc)


@pytest.mark.parametrize(
    "error",
    [
        sqlite3.OperationalError("database is locked"),
        psycopg.OperationalError("server closed the connection unexpectedly"),
        psycopg_pool.PoolTimeout("couldn't get a connection after 30.00 sec"),
        OperationalError("database is locked"),
    ],
    ids=["sqlite_locked", "psycopg_dropped", "pool_timeout", "wrapped"],
)
def test_a_busy_or_unreachable_store_answers_503_with_retry_after(error: Exception) -> None:
    response = answer(error)
    assert response.status_code == 503
    assert response.headers["Retry-After"] == "1"
    assert response.content["code"] == "store_unavailable"
    assert response.content["error"] == "Service Unavailable"


def test_a_programming_error_sqlite_calls_operational_stays_a_500() -> None:
    assert answer(sqlite3.OperationalError("no such table: usage_events")).status_code == 500


Answer = tuple[int, dict[str, str]]


def run_concurrently(middleware: AdmissionMiddleware, count: int) -> list[Answer]:
    """`count` requests at once through the middleware around an app that takes 50 ms."""

    async def slow_app(scope: Any, receive: Any, send: Any) -> None:
        await asyncio.sleep(0.05)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})

    async def one() -> Answer:
        sent: list[dict[str, Any]] = []

        async def send(message: Any) -> None:
            sent.append(message)

        scope = {"type": "http", "path": "/api/v1/events", "method": "POST"}
        await middleware.handle(scope, None, send, slow_app)  # type: ignore[arg-type]
        headers = {k.decode(): v.decode() for k, v in sent[0].get("headers", [])}
        return sent[0]["status"], headers

    async def many() -> list[Answer]:
        return list(await asyncio.gather(*(one() for _ in range(count))))

    return asyncio.run(many())


def test_requests_over_the_in_flight_limit_are_refused_at_once_with_retry_after() -> None:
    middleware = AdmissionMiddleware(Admission(max_in_flight=2, wait_s=0))
    answers = run_concurrently(middleware, 5)
    assert sorted(status for status, _ in answers) == [200, 200, 429, 429, 429]
    refused = [headers for status, headers in answers if status == 429]
    assert all(h["retry-after"] == "1" and h["x-ratelimit-reset"] == "1" for h in refused)
    assert middleware.in_flight == 0


def test_a_request_over_the_limit_waits_for_a_slot_up_to_the_admission_wait() -> None:
    middleware = AdmissionMiddleware(Admission(max_in_flight=1, wait_s=1.0))
    assert [status for status, _ in run_concurrently(middleware, 3)] == [200, 200, 200]


def test_admission_and_fault_settings_are_checked() -> None:
    assert admission_from_env({}) == Admission(64, 0.1)
    assert admission_from_env({"TALLY_MAX_IN_FLIGHT": "0"}).max_in_flight == 0
    with pytest.raises(SettingsError):
        admission_from_env({"TALLY_MAX_IN_FLIGHT": "-1"})
    assert fault_plan_from_env({}) is None
    assert fault_plan_from_env({"TALLY_FAULTS": "seed=3,error=0.5"}) == FaultPlan(3, error=0.5)
    for wrong in ("seed=3,error=2", "seed=x", "seed=1,error=0.6,drop=0.6", "seed=1,boom=1"):
        with pytest.raises(SettingsError):
            fault_plan_from_env({"TALLY_FAULTS": wrong})


def test_the_same_seed_draws_the_same_faults() -> None:
    plan = FaultPlan(seed=5, error=0.2, drop=0.2, slow=0.1, lost_ack=0.1)
    first, second = FaultInjector(plan), FaultInjector(plan)
    drawn = [first.draw(write=True) for _ in range(200)]
    assert drawn == [second.draw(write=True) for _ in range(200)]
    assert set(drawn) == {None, "error", "drop", "slow", "lost_ack"}
