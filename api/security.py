"""The API's guard, one ASGI middleware around every /api/v1 route: it authenticates the key,
applies the per-key rate limit, the key's scope and the body-size limit, and, after the response,
appends every mutating request of a known key to the hash-chained audit log.

Keys never leave this module but as their ids: not in logs, responses or the audit log.
"""

import asyncio
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final, Protocol
from uuid import UUID, uuid4

from anyio import to_thread
from litestar.datastructures import Headers
from litestar.middleware import ASGIMiddleware
from litestar.types import ASGIApp, Message, Receive, Scope, Send

from api.auth import GRANT_SCOPE_KEY, grant_for
from api.problems import PROBLEM_JSON, problem_body
from application.audit_log import AuditEntry, AuditWriter
from application.fresh_aggregates import FreshAggregates
from application.keys import ApiKeyGrant

API_PREFIX: Final = "/api/v1/"
MUTATING: Final = frozenset({"POST", "PUT", "PATCH", "DELETE"})
READING: Final = frozenset({"GET", "HEAD", "OPTIONS"})
# Lago's resource names (its permission codes say write_action_not_allowed_for_<resource>).
IRREGULAR_RESOURCES: Final = {"taxes": "tax", "billing_entities": "billing_entity"}
# Second path segments that name an action, not a resource's key.
ACTIONS: Final = frozenset({"batch", "estimate_fees", "estimate", "preview"})
RESPONSE_CAPTURED_MAX: Final = 64 * 1024  # Enough of a response to read the resource's key.
KEY_FIELDS: Final = ("external_id", "code", "transaction_id", "lago_id")


# Scopes.


def resource_of(path: str) -> str:
    """The Lago resource a path addresses: /api/v1/billable_metrics/x → billable_metric."""
    segment = path.removeprefix(API_PREFIX).split("/", 1)[0]
    return IRREGULAR_RESOURCES.get(segment) or segment.removesuffix("s")


def refusal(scope: str, method: str, path: str) -> str | None:
    """Lago's 403 code when the key's scope does not allow the request, else None."""
    mode = "read" if method in READING else "write"
    if scope == "full":
        return None
    if scope == "read_only" and mode == "read":
        return None
    if scope == "ingest_only":
        rest = path.removeprefix(API_PREFIX).rstrip("/")
        if method == "POST" and rest in ("events", "events/batch"):
            return None
        if mode == "read" and (rest == "events" or rest.startswith("events/")):
            return None
    return f"{mode}_action_not_allowed_for_{resource_of(path)}"


# Rate limits.


@dataclass(frozen=True)
class RateDecision:
    allowed: bool
    limit: int
    remaining: int
    reset_s: int  # Refused: seconds until a request is allowed; allowed: until the bucket is full.

    def headers(self) -> list[tuple[bytes, bytes]]:
        headers = [
            (b"x-ratelimit-limit", str(self.limit).encode()),
            (b"x-ratelimit-remaining", str(self.remaining).encode()),
            (b"x-ratelimit-reset", str(self.reset_s).encode()),
        ]
        if not self.allowed:
            headers.append((b"retry-after", str(self.reset_s).encode()))
        return headers


class RateLimiter:
    """A token bucket per key, in one process: `burst` requests at once, refilled at
    `rate_per_s` (ADR 0015). The API now uses SharedRateLimiter, which holds across processes;
    this is the reference it must agree with in a single process."""

    def __init__(
        self, rate_per_s: float, burst: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        assert rate_per_s > 0 and burst >= 1, (rate_per_s, burst)
        self.rate_per_s = rate_per_s
        self.burst = burst
        self.clock = clock
        self._buckets: dict[UUID, tuple[float, float]] = {}  # Key id → (tokens, as of).

    def take(self, key_id: UUID) -> RateDecision:
        now = self.clock()
        tokens, as_of = self._buckets.get(key_id, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - as_of) * self.rate_per_s)
        if tokens < 1:
            self._buckets[key_id] = (tokens, now)
            wait_s = max(1, math.ceil((1 - tokens) / self.rate_per_s))
            return RateDecision(False, self.burst, 0, wait_s)
        tokens -= 1
        self._buckets[key_id] = (tokens, now)
        full_in_s = math.ceil((self.burst - tokens) / self.rate_per_s)
        return RateDecision(True, self.burst, int(tokens), full_in_s)


class RateLeases(Protocol):
    """The store's shared buckets (adapters/rate_limits.py)."""

    def lease(self, key_id: UUID, want: int, rate_per_s: float, burst: int) -> tuple[int, float]:
        """Refill the key's bucket and take up to `want` tokens: (granted, tokens left)."""


# A lease lasts this long: tokens a process leased and did not spend by then are dropped, so a
# process never spends old tokens together with a full bucket (at most one lease above burst).
LEASE_S: Final = 1.0
# A lease takes this many seconds' worth of the rate (10 ms: 100 tokens at the default 10 000
# a second), so a key at full speed costs each process at most ~100 leases a second.
LEASE_RATE_S: Final = 0.01


@dataclass
class _Lease:
    tokens: int  # Leased, not spent yet.
    left: float  # The shared bucket's tokens after the lease (what `remaining` shows).
    until: float  # Spend by then (clock).


class SharedRateLimiter:
    """The per-key token bucket of ADR 0015, shared by every process on the store (ADR 0023).

    Each process leases tokens in batches from the key's row (one round trip per lease) and
    spends them locally, so most requests cost no I/O; a refusal is remembered until a token
    is due, so a client hammering a limited key does not reach the database either. Leased
    tokens are counted as spent by every process, so the processes together never exceed the
    rate; a process holds at most one batch that others cannot use, for at most LEASE_S.
    """

    def __init__(
        self,
        leases: RateLeases,
        rate_per_s: float,
        burst: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        assert rate_per_s > 0 and burst >= 1, (rate_per_s, burst)
        self.leases = leases
        self.rate_per_s = rate_per_s
        self.burst = burst
        self.clock = clock
        self.batch = max(1, min(burst, math.ceil(rate_per_s * LEASE_RATE_S)))
        self._held: dict[UUID, _Lease] = {}
        self._refused_until: dict[UUID, float] = {}
        self._locks: dict[UUID, asyncio.Lock] = {}
        self._loop: asyncio.AbstractEventLoop | None = None

    async def take(self, key_id: UUID) -> RateDecision:
        decision = self._spend(key_id)
        if decision is not None:
            return decision  # The common case: no I/O, no await.
        loop = asyncio.get_running_loop()
        if loop is not self._loop:  # Locks belong to one event loop (a test may start several).
            self._loop, self._locks = loop, {}
        async with self._locks.setdefault(key_id, asyncio.Lock()):  # One lease at a time.
            decision = self._spend(key_id)  # Another request may have leased meanwhile.
            if decision is not None:
                return decision
            granted, left = await to_thread.run_sync(
                self.leases.lease, key_id, self.batch, self.rate_per_s, self.burst
            )
            now = self.clock()
            if granted < 1:
                wait_s = (1 - left) / self.rate_per_s
                self._refused_until[key_id] = now + wait_s
                return RateDecision(False, self.burst, 0, max(1, math.ceil(wait_s)))
            self._refused_until.pop(key_id, None)
            self._held[key_id] = _Lease(granted, left, now + LEASE_S)
            decision = self._spend(key_id)
            assert decision is not None
            return decision

    def _spend(self, key_id: UUID) -> RateDecision | None:
        """Spend a leased token, or refuse while a refusal holds; None: a lease is needed."""
        now = self.clock()
        refused_until = self._refused_until.get(key_id)
        if refused_until is not None and now < refused_until:
            return RateDecision(False, self.burst, 0, max(1, math.ceil(refused_until - now)))
        held = self._held.get(key_id)
        if held is None or held.tokens < 1 or held.until <= now:
            return None
        held.tokens -= 1
        remaining = min(self.burst, int(held.left) + held.tokens)
        full_in_s = math.ceil((self.burst - remaining) / self.rate_per_s)
        return RateDecision(True, self.burst, remaining, full_in_s)


@dataclass(frozen=True)
class Limits:
    """What create_app configures (adapters/settings.py reads the environment)."""

    body_max_bytes: int
    rate_limiter: SharedRateLimiter | None  # None: no rate limit.


# The middleware.


class SecurityMiddleware(ASGIMiddleware):
    def __init__(self, limits: Limits) -> None:
        self.limits = limits

    async def handle(self, scope: Scope, receive: Receive, send: Send, next_app: ASGIApp) -> None:
        http: dict[str, Any] = scope  # type: ignore[assignment]
        if http["type"] != "http" or not http["path"].startswith(API_PREFIX):
            await next_app(scope, receive, send)
            return
        ledger: Any = scope["app"].state.ledger
        received_at = ledger.billing.now()
        # Authentication and usage validation share one refresh of the hot aggregates.
        arrival = FreshAggregates.of(ledger.billing).arrive()
        try:
            await self._handle(http, ledger, received_at, receive, send, next_app)
        finally:
            FreshAggregates.leave(arrival)

    async def _handle(
        self,
        http: dict[str, Any],
        ledger: Any,
        received_at: datetime,
        receive: Receive,
        send: Send,
        next_app: ASGIApp,
    ) -> None:
        method, path = http["method"], http["path"]
        headers = Headers.from_scope(http)  # type: ignore[arg-type]
        grant: ApiKeyGrant | None = await to_thread.run_sync(
            grant_for, ledger.billing, headers.get("authorization")
        )
        http[GRANT_SCOPE_KEY] = grant  # The routes' organization_id reads it (api/auth.py).
        status: list[int] = []
        captured = bytearray()

        async def respond(message: Message) -> None:
            if message["type"] == "http.response.start":
                status.append(message["status"])
            elif message["type"] == "http.response.body" and len(captured) < RESPONSE_CAPTURED_MAX:
                captured.extend(message.get("body", b"")[: RESPONSE_CAPTURED_MAX - len(captured)])
            await send(message)

        try:
            await self._guarded(http, grant, method, path, headers, receive, respond, next_app)
        finally:
            if grant is not None and method in MUTATING and status:
                resource_key = _resource_key(path, bytes(captured))
                entry = AuditEntry(
                    id=uuid4(),
                    organization_id=grant.organization_id,
                    api_key_id=grant.api_key_id,
                    method=method,
                    path=path,
                    resource_type=resource_of(path),
                    resource_key=resource_key,
                    status_code=status[0],
                    client_address=(http.get("client") or (None,))[0],
                    idempotency_key=headers.get("idempotency-key"),
                    occurred_at=received_at,
                )
                # Queued: the writer commits it off this connection (application/audit_log.py).
                writer: AuditWriter = http["app"].state.audit_writer
                writer.submit(entry)

    async def _guarded(
        self,
        scope: dict[str, Any],
        grant: ApiKeyGrant | None,
        method: str,
        path: str,
        headers: Headers,
        receive: Receive,
        send: Send,
        next_app: ASGIApp,
    ) -> None:
        limiter = self.limits.rate_limiter
        if grant is not None and limiter is not None:
            decision = await limiter.take(grant.api_key_id)
            if not decision.allowed:
                detail = f"Too many requests for this API key: retry in {decision.reset_s} s."
                await _send_problem(send, 429, detail, "too_many_requests", decision.headers())
                return
            # Lago's client reports these on successful responses (on_rate_limit_info).
            send = _with_headers(send, decision.headers())
        if grant is not None and (code := refusal(grant.scope, method, path)) is not None:
            detail = f"This API key's scope ({grant.scope}) does not allow {method} {path}."
            await _send_problem(send, 403, detail, code)
            return
        if method in MUTATING:
            body = await _read_body(headers, receive, self.limits.body_max_bytes)
            if body is None:
                detail = f"The request body is larger than {self.limits.body_max_bytes} bytes."
                await _send_problem(send, 413, detail, "request_body_too_large")
                return
            receive = _replay(body, receive)
        await next_app(scope, receive, send)  # type: ignore[arg-type]


def _with_headers(send: Send, headers: list[tuple[bytes, bytes]]) -> Send:
    async def sending(message: Message) -> None:
        if message["type"] == "http.response.start":
            message = {**message, "headers": [*message.get("headers", []), *headers]}
        await send(message)

    return sending


async def _read_body(headers: Headers, receive: Receive, limit: int) -> bytes | None:
    """The whole body, or None as soon as it is known to exceed the limit."""
    declared = headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        return None  # Refused unread.
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            break
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


def _replay(body: bytes, receive: Receive) -> Receive:
    sent = False

    async def replay() -> Any:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


async def _send_problem(
    send: Send,
    status: int,
    detail: str,
    code: str,
    headers: list[tuple[bytes, bytes]] | None = None,
) -> None:
    body = json.dumps(problem_body(status, detail, code), separators=(",", ":")).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", PROBLEM_JSON.encode()),
                (b"content-length", str(len(body)).encode()),
                *(headers or []),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body, "more_body": False})


def _resource_key(path: str, response: bytes) -> str | None:
    """The key in the path (/customers/cus_1/erase → cus_1), else the one the response names
    ({"customer": {"external_id": ...}})."""
    parts = path.removeprefix(API_PREFIX).strip("/").split("/")
    if len(parts) > 1 and parts[1] not in ACTIONS:
        return parts[1]
    if parts[-1] == "batch":
        return None  # Many resources: not worth decoding a large answer on the hot path.
    try:
        body = json.loads(response)
    except ValueError:
        return None
    if isinstance(body, dict) and len(body) == 1:
        (resource,) = body.values()
        if isinstance(resource, dict):
            for field in KEY_FIELDS:
                if isinstance(resource.get(field), str):
                    return str(resource[field])
    return None


__all__ = [
    "Limits",
    "RateDecision",
    "RateLeases",
    "RateLimiter",
    "SecurityMiddleware",
    "SharedRateLimiter",
    "refusal",
    "resource_of",
]
