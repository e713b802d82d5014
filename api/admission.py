"""Admission control (ADR 0024): at most `max_in_flight` /api/v1 requests run at once in this
worker process; a request over the limit waits up to `wait_s` for a slot, then is answered 429
`server_overloaded` with `Retry-After`, `x-ratelimit-*` and Lago's error body, at once, instead
of queueing until the client times out. 429, not 503: Lago's official client retries a 429
(after `x-ratelimit-reset` seconds) and no other status. Overload then costs the clients a
retry, never an unbounded queue, memory or a timeout that leaves them unsure whether the write
happened.

It is the outermost middleware, so a refused request costs no key lookup and no store work;
/health and the OpenAPI document are never refused. Settings: TALLY_MAX_IN_FLIGHT (default 64,
0 turns admission control off) and TALLY_ADMISSION_WAIT_MS (default 100).
"""

import asyncio
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from litestar.middleware import ASGIMiddleware
from litestar.types import ASGIApp, Receive, Scope, Send

from adapters.settings import SettingsError
from api.problems import PROBLEM_JSON, problem_body

API_PREFIX: Final = "/api/v1/"
MAX_IN_FLIGHT_DEFAULT: Final = 64  # Above anyio's 40 threads: the DB is the bottleneck anyway.
WAIT_MS_DEFAULT: Final = 100
RETRY_AFTER_S: Final = 1


@dataclass(frozen=True)
class Admission:
    max_in_flight: int  # 0: off.
    wait_s: float


def admission_from_env(environ: Mapping[str, str] | None = None) -> Admission:
    environ = os.environ if environ is None else environ
    values = {}
    for name, default, maximum in (
        ("TALLY_MAX_IN_FLIGHT", MAX_IN_FLIGHT_DEFAULT, 100_000),
        ("TALLY_ADMISSION_WAIT_MS", WAIT_MS_DEFAULT, 60_000),
    ):
        text = environ.get(name, "").strip()
        if text and (not text.isdigit() or int(text) > maximum):
            raise SettingsError(f"{name}={text!r}: a whole number from 0 to {maximum}.")
        values[name] = int(text) if text else default
    return Admission(values["TALLY_MAX_IN_FLIGHT"], values["TALLY_ADMISSION_WAIT_MS"] / 1000)


class AdmissionMiddleware(ASGIMiddleware):
    """Counts the requests in flight on this process's event loop (one loop: no lock)."""

    def __init__(self, admission: Admission) -> None:
        self.admission = admission
        self.in_flight = 0
        self.refused = 0
        self._slot_freed: asyncio.Event | None = None

    async def handle(self, scope: Scope, receive: Receive, send: Send, next_app: ASGIApp) -> None:
        http: dict[str, Any] = scope  # type: ignore[assignment]
        limit = self.admission.max_in_flight
        if limit == 0 or http["type"] != "http" or not http["path"].startswith(API_PREFIX):
            await next_app(scope, receive, send)
            return
        if not await self._admit(limit):
            self.refused += 1
            await _send_overloaded(send, limit)
            return
        self.in_flight += 1
        try:
            await next_app(scope, receive, send)
        finally:
            self.in_flight -= 1
            if self._slot_freed is not None:
                self._slot_freed.set()

    async def _admit(self, limit: int) -> bool:
        if self.in_flight < limit:
            return True
        deadline = asyncio.get_running_loop().time() + self.admission.wait_s
        while self.in_flight >= limit:
            left_s = deadline - asyncio.get_running_loop().time()
            if left_s <= 0:
                return False
            if self._slot_freed is None or self._slot_freed.is_set():
                self._slot_freed = asyncio.Event()
            try:
                await asyncio.wait_for(self._slot_freed.wait(), left_s)
            except TimeoutError:
                return False
        return True


async def _send_overloaded(send: Send, limit: int) -> None:
    detail = f"The server is at its limit of requests in flight: retry in {RETRY_AFTER_S} s."
    body = json.dumps(
        problem_body(429, detail, "server_overloaded"), separators=(",", ":")
    ).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 429,
            "headers": [
                (b"content-type", PROBLEM_JSON.encode()),
                (b"content-length", str(len(body)).encode()),
                (b"retry-after", str(RETRY_AFTER_S).encode()),
                (b"x-ratelimit-limit", str(limit).encode()),
                (b"x-ratelimit-remaining", b"0"),
                (b"x-ratelimit-reset", str(RETRY_AFTER_S).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body, "more_body": False})


__all__ = ["Admission", "AdmissionMiddleware", "admission_from_env"]
