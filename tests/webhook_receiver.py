"""A webhook receiver for tests: a tiny HTTP server thread on 127.0.0.1 that can be down."""

import base64
import hashlib
import hmac
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt


@dataclass(frozen=True)
class Received:
    path: str
    headers: dict[str, str]
    body: bytes

    @property
    def key(self) -> str:
        return self.headers["X-Lago-Unique-Key"]

    @property
    def payload(self) -> dict[str, Any]:
        decoded: dict[str, Any] = json.loads(self.body)
        return decoded


class Receiver:
    """Answers 500 to the first `failures` requests (down), then 200; records what it accepts."""

    def __init__(self, port: int = 0, failures: int = 0) -> None:
        self.failures = failures
        self.refused = 0
        self.accepted: list[Received] = []
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", port), self._handler())
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                with receiver._lock:
                    down = receiver.failures > 0
                    if down:
                        receiver.failures -= 1
                        receiver.refused += 1
                    else:
                        receiver.accepted.append(
                            Received(self.path, dict(self.headers.items()), body)
                        )
                self.send_response(500 if down else 200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        return Handler

    def snapshot(self) -> list[Received]:
        with self._lock:
            return list(self.accepted)


def verify(received: Received, public_key_pem: bytes, issuer: str, hmac_key: str) -> None:
    """Check X-Lago-Signature as a receiver does (lago-api.md §4), or raise."""
    signature = received.headers["X-Lago-Signature"]
    algorithm = received.headers["X-Lago-Signature-Algorithm"]
    if algorithm == "jwt":
        decoded = jwt.decode(signature, public_key_pem, algorithms=["RS256"], issuer=issuer)
        assert decoded["data"] == received.body.decode(), "the JWT signs another body"
    else:
        assert algorithm == "hmac", algorithm
        digest = hmac.new(hmac_key.encode(), received.body, hashlib.sha256).digest()
        assert hmac.compare_digest(base64.b64encode(digest).decode(), signature)


def wait_until(condition: Callable[[], bool], timeout_s: float = 10.0) -> None:
    """Poll with a deadline; never sleep blindly."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not true within {timeout_s} s: {condition}")
        time.sleep(0.01)


def verify_by_kid(
    received: Received, public_keys: dict[str, bytes], issuer: str, hmac_key: str
) -> None:
    """Verify with the key the JWT's kid names, as a receiver does across a key rotation
    (ADR 0022: keys listed by GET /api/v1/webhooks/public_keys)."""
    if received.headers["X-Lago-Signature-Algorithm"] == "jwt":
        kid = jwt.get_unverified_header(received.headers["X-Lago-Signature"])["kid"]
        verify(received, public_keys[kid], issuer, hmac_key)
    else:
        verify(received, b"", issuer, hmac_key)
