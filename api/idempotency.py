"""Idempotency-Key on every mutating request: the same key and body replay the first response."""

import hashlib
import logging
from collections.abc import Callable
from typing import Any

import anyio
from anyio import to_thread
from litestar.datastructures import Headers
from litestar.middleware import ASGIMiddleware
from litestar.types import ASGIApp, Message, Receive, Scope, Send

from api.auth import GRANT_SCOPE_KEY, authenticate
from application.errors import IdempotencyKeyInProgressError, IdempotencyKeyReusedError
from application.keys import ApiKeyGrant
from application.ports import StoredResponse

MUTATING = frozenset({"POST", "PUT", "PATCH", "DELETE"})
SETTLE_ATTEMPTS = 5
SETTLE_BACKOFF_S = 0.05
logger = logging.getLogger("tally.api")


class IdempotencyMiddleware(ASGIMiddleware):
    async def handle(self, scope: Scope, receive: Receive, send: Send, next_app: ASGIApp) -> None:
        headers = Headers.from_scope(scope)
        key = headers.get("idempotency-key")
        http: dict[str, Any] = dict(scope)
        if http["type"] != "http" or http["method"] not in MUTATING or not key:
            await next_app(scope, receive, send)
            return
        ledger: Any = scope["app"].state.ledger
        if GRANT_SCOPE_KEY in http:  # Authenticated by api/security.py around this one.
            grant: ApiKeyGrant | None = http[GRANT_SCOPE_KEY]
            organization_id = None if grant is None else grant.organization_id
        else:
            organization_id = await to_thread.run_sync(
                authenticate, ledger.billing, headers.get("authorization")
            )
        if organization_id is None:
            await next_app(scope, receive, send)  # The route answers 401.
            return
        body, replay_receive = await _read_body(receive)
        request_hash = hashlib.sha256(
            b"\n".join([http["method"].encode(), http["path"].encode(), http["query_string"], body])
        ).hexdigest()
        store = ledger.idempotency
        # Raises for another body or a first request still running; the app maps both.
        try:
            stored = await to_thread.run_sync(store.reserve, organization_id, key, request_hash)
        except (IdempotencyKeyInProgressError, IdempotencyKeyReusedError):
            raise
        except Exception:
            # The store failed (a 503): the claim may have committed all the same (a lost
            # answer), and would hold the key "in progress" for ever. Release it, so the
            # client's retry runs (ADR 0024); only a concurrent request with the same key, a
            # client's bug, could then run twice.
            await _settle(store.release, organization_id, key)
            raise
        if stored is not None:
            await _send_stored(send, stored)
            return
        status: list[int] = []
        chunks: list[bytes] = []

        async def capture(message: Message) -> None:
            if message["type"] == "http.response.start":
                status.append(message["status"])
            elif message["type"] == "http.response.body":
                chunks.append(message.get("body", b""))
            await send(message)

        try:
            await next_app(scope, replay_receive, capture)
        finally:
            if status and 200 <= status[0] < 300:
                response = StoredResponse(status[0], b"".join(chunks))
                await _settle(store.complete, organization_id, key, response)
            else:  # A failed request may be retried with the same key and run again.
                await _settle(store.release, organization_id, key)


async def _settle(action: Callable[..., None], *args: Any) -> None:
    """Store or release the key after the response: the store may be busy (a 503's cause), so
    try a few times; never raise once the response has started (ADR 0024)."""
    for attempt in range(SETTLE_ATTEMPTS):
        try:
            await to_thread.run_sync(action, *args)
            return
        except Exception:
            if attempt == SETTLE_ATTEMPTS - 1:
                logger.exception("Could not %s an idempotency key", action.__name__)
                return
            await anyio.sleep(SETTLE_BACKOFF_S * (attempt + 1))


async def _read_body(receive: Receive) -> tuple[bytes, Receive]:
    chunks = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            break
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            break
    body = b"".join(chunks)
    sent = False

    async def replay() -> Any:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return body, replay


async def _send_stored(send: Send, stored: StoredResponse) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": stored.status_code,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(stored.body)).encode()),
                (b"idempotent-replayed", b"true"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": stored.body, "more_body": False})
