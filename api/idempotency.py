"""Idempotency-Key on every mutating request: the same key and body replay the first response."""

import hashlib
from typing import Any

from anyio import to_thread
from litestar.datastructures import Headers
from litestar.middleware import ASGIMiddleware
from litestar.types import ASGIApp, Message, Receive, Scope, Send

from api.auth import authenticate
from application.ports import StoredResponse

MUTATING = frozenset({"POST", "PUT", "PATCH", "DELETE"})


class IdempotencyMiddleware(ASGIMiddleware):
    async def handle(self, scope: Scope, receive: Receive, send: Send, next_app: ASGIApp) -> None:
        headers = Headers.from_scope(scope)
        key = headers.get("idempotency-key")
        http: dict[str, Any] = dict(scope)
        if http["type"] != "http" or http["method"] not in MUTATING or not key:
            await next_app(scope, receive, send)
            return
        ledger: Any = scope["app"].state.ledger
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
        stored = await to_thread.run_sync(store.reserve, organization_id, key, request_hash)
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
                await to_thread.run_sync(store.complete, organization_id, key, response)
            else:  # A failed request may be retried with the same key and run again.
                await to_thread.run_sync(store.release, organization_id, key)


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
