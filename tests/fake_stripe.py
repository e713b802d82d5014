"""A local fake of Stripe's HTTP API, for the official SDK pointed at it (its base address).

It speaks the endpoints Tally calls: customers (create, retrieve, update), payment_intents
(create, retrieve), checkout/sessions and setup_intents, refunds, and the lists of
balance_transactions (each charge, refund and payout moves the balance, less a fee of
1.4 % + 0.25 on charges; `expand[]=data.source` expands the charge, refund or payout) and
payouts (`pay_out` sends the available balance), with Stripe's form encoding,
error bodies and Idempotency-Key semantics: the same key with the same parameters returns the
first answer again (never a second charge); with other parameters, a 400 idempotency_error.
Accounts are told apart by the Authorization bearer key, and every request is recorded so tests
assert which account was asked for what. Failure modes: the next requests answer 500, or hang
past the client's timeout after doing the work (the answer is lost, the charge is not), or the
next payments are declined. `send_event` posts a webhook signed with Stripe's own scheme.
"""

import itertools
import json
import re
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import httpx
import stripe


@dataclass(frozen=True)
class Recorded:
    account: str
    method: str
    path: str
    params: dict[str, Any]
    idempotency_key: str | None
    status: int


@dataclass
class Failure:
    mode: str  # "500", "timeout" or "decline"
    path: str  # A path prefix, e.g. /v1/payment_intents
    remaining: int


@dataclass
class Account:
    objects: dict[str, dict[str, Any]] = field(default_factory=dict)
    # (idempotency key) → (parameters, status, body)
    idempotent: dict[str, tuple[dict[str, Any], int, bytes]] = field(default_factory=dict)
    paid_out: dict[str, str] = field(default_factory=dict)  # balance transaction → payout


class FakeStripe:
    def __init__(self, *, hang_s: float = 1.5) -> None:
        self.hang_s = hang_s  # How long a "timeout" answer is held back.
        self.accounts: dict[str, Account] = {}
        self.requests: list[Recorded] = []
        self.failures: list[Failure] = []
        self.intent_status = "succeeded"  # Or "processing": then a webhook tells the outcome.
        self.auto_payment_method = True  # New customers get a default card.
        self.now: int | None = None  # Unix time stamped on new objects; None: the clock.
        self.fee_per_mille = 14  # Stripe's fee on a charge: 1.4 % + 25 units.
        self.fee_fixed = 25
        self._ids = itertools.count(1)
        self._lock = threading.RLock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    # Configuration.

    def add_account(self, secret_key: str) -> None:
        with self._lock:
            self.accounts.setdefault(secret_key, Account())

    def fail_next(self, mode: str, path: str = "/v1/payment_intents", times: int = 1) -> None:
        assert mode in ("500", "timeout", "decline"), mode
        with self._lock:
            self.failures.append(Failure(mode, path, times))

    # Inspection.

    def objects(self, secret_key: str, kind: str) -> list[dict[str, Any]]:
        with self._lock:
            account = self.accounts[secret_key]
            return [o for o in account.objects.values() if o["object"] == kind]

    def payment_intents(self, secret_key: str) -> list[dict[str, Any]]:
        return self.objects(secret_key, "payment_intent")

    def charges(self, secret_key: str) -> list[dict[str, Any]]:
        """Money actually taken: one charge per PaymentIntent that succeeded or is processing."""
        return [
            intent
            for intent in self.payment_intents(secret_key)
            if intent["status"] in ("succeeded", "processing")
        ]

    def recorded(self, path: str = "", account: str | None = None) -> list[Recorded]:
        with self._lock:
            return [
                r
                for r in self.requests
                if r.path.startswith(path) and (account is None or r.account == account)
            ]

    def balance_transactions(self, secret_key: str) -> list[dict[str, Any]]:
        return self.objects(secret_key, "balance_transaction")

    def add_balance_transaction(
        self, secret_key: str, kind: str, amount: int, currency: str = "eur", **more: Any
    ) -> dict[str, Any]:
        """A movement Tally did not cause (an adjustment, a charge made by hand)."""
        with self._lock:
            return self._balance(self.accounts[secret_key], kind, amount, currency, None, **more)

    def pay_out(self, secret_key: str, currency: str = "eur") -> dict[str, Any]:
        """Send the balance not yet paid out to the bank: a payout and its balance entry."""
        with self._lock:
            account = self.accounts[secret_key]
            pending = [
                t
                for t in account.objects.values()
                if t["object"] == "balance_transaction"
                and t["currency"] == currency
                and t["type"] != "payout"
                and t["id"] not in account.paid_out
            ]
            total = sum(t["net"] for t in pending)
            created = self._now()
            payout = self._new(
                account,
                "po",
                {
                    "object": "payout",
                    "amount": total,
                    "currency": currency,
                    "status": "paid",
                    "created": created,
                    "arrival_date": created + 2 * 86_400,
                },
            )
            account.paid_out.update((t["id"], payout["id"]) for t in pending)
            payout["balance_transaction"] = self._balance(
                account, "payout", -total, currency, payout["id"], fee=0
            )["id"]
            return dict(payout)

    def complete_intent(self, secret_key: str, intent_id: str, status: str) -> dict[str, Any]:
        """What Stripe does later to a processing PaymentIntent (then sends its webhook)."""
        with self._lock:
            account = self.accounts[secret_key]
            intent = account.objects[intent_id]
            intent["status"] = status
            if status == "succeeded":
                self._charge(account, intent)
            if status == "requires_payment_method":
                intent["last_payment_error"] = {
                    "code": "card_declined",
                    "decline_code": "insufficient_funds",
                    "message": "Your card has insufficient funds.",
                }
            return dict(intent)

    # Webhooks.

    def event(
        self, kind: str, obj: dict[str, Any], *, event_id: str | None = None
    ) -> dict[str, Any]:
        return {
            "id": event_id or f"evt_{next(self._ids):06d}",
            "object": "event",
            "api_version": stripe.api_version,
            "created": int(time.time()),
            "livemode": False,
            "type": kind,
            "data": {"object": obj},
        }

    @staticmethod
    def send_event(
        url: str, secret: str, event: dict[str, Any], *, signature: str | None = None
    ) -> httpx.Response:
        """POST a webhook as Stripe does: the raw JSON, signed t=…,v1=… with the secret."""
        payload = json.dumps(event)
        header = signature or stripe.WebhookSignature.generate_signature_header(payload, secret)
        return httpx.post(
            url,
            content=payload.encode(),
            headers={"Content-Type": "application/json", "Stripe-Signature": header},
            timeout=10,
        )

    # The server.

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                return

            def do_GET(self) -> None:
                fake._serve(self, "GET")

            def do_POST(self) -> None:
                fake._serve(self, "POST")

        return Handler

    def _serve(self, request: BaseHTTPRequestHandler, method: str) -> None:
        length = int(request.headers.get("Content-Length") or 0)
        body = request.rfile.read(length).decode() if length else ""
        path = urlsplit(request.path).path
        params = _parse_form(urlsplit(request.path).query if method == "GET" else body)
        key = (request.headers.get("Authorization") or "").removeprefix("Bearer ").strip()
        idempotency_key = request.headers.get("Idempotency-Key")
        failure = self._take_failure(method, path)
        if failure == "500":
            self._record(key, method, path, params, idempotency_key, 500)
            _error(request, 500, "api_error", "Something went wrong on Stripe's end.")
            return
        status, answer = self._answer(key, method, path, params, idempotency_key, failure)
        self._record(key, method, path, params, idempotency_key, status)
        if failure == "timeout":
            time.sleep(self.hang_s)  # The work is done; the answer comes too late.
        _respond(request, status, answer)

    def _take_failure(self, method: str, path: str) -> str | None:
        if method != "POST":
            return None
        with self._lock:
            for failure in self.failures:
                if failure.remaining > 0 and path.startswith(failure.path):
                    failure.remaining -= 1
                    return failure.mode
        return None

    def _record(
        self,
        key: str,
        method: str,
        path: str,
        params: dict[str, Any],
        idempotency_key: str | None,
        status: int,
    ) -> None:
        with self._lock:
            self.requests.append(Recorded(key, method, path, params, idempotency_key, status))

    def _answer(
        self,
        key: str,
        method: str,
        path: str,
        params: dict[str, Any],
        idempotency_key: str | None,
        failure: str | None,
    ) -> tuple[int, bytes]:
        with self._lock:
            account = self.accounts.get(key)
            if account is None:
                return 401, _error_body("invalid_request_error", "Invalid API Key provided.")
            if method == "POST" and idempotency_key:
                stored = account.idempotent.get(idempotency_key)
                if stored is not None:
                    if stored[0] != params:
                        return 400, _error_body(
                            "idempotency_error",
                            "Keys for idempotent requests can only be used with the same "
                            "parameters they were first used with.",
                        )
                    return stored[1], stored[2]
            status, obj = self._route(account, method, path, params, failure)
            answer = json.dumps(obj).encode()
            if method == "POST" and idempotency_key:
                account.idempotent[idempotency_key] = (params, status, answer)
            return status, answer

    def _route(
        self,
        account: Account,
        method: str,
        path: str,
        params: dict[str, Any],
        failure: str | None,
    ) -> tuple[int, dict[str, Any]]:
        parts = path.strip("/").split("/")  # v1, resource[, id]
        if parts[1:2] == ["checkout"]:
            parts = [parts[0], "/".join(parts[1:3]), *parts[3:]]
        resource = parts[1]
        object_id = parts[2] if len(parts) > 2 else ""
        if method == "GET" and not object_id and resource in ("balance_transactions", "payouts"):
            return 200, self._list(account, resource, params)
        if method == "GET" or (object_id and resource == "customers"):
            found = account.objects.get(object_id)
            if found is None:
                return 404, _error_dict("invalid_request_error", f"No such object: {object_id}")
            if method == "POST":
                _merge(found, params)
            return 200, found
        maker = {
            "customers": self._customer,
            "payment_intents": self._payment_intent,
            "setup_intents": self._setup_intent,
            "checkout/sessions": self._checkout_session,
            "refunds": self._refund,
        }.get(resource)
        if maker is None:
            return 404, _error_dict("invalid_request_error", f"Unrecognized request URL {path}")
        return maker(account, params, failure)

    def _new(self, account: Account, prefix: str, obj: dict[str, Any]) -> dict[str, Any]:
        obj = {"id": f"{prefix}_{next(self._ids):06d}", **obj, "livemode": False}
        account.objects[obj["id"]] = obj
        return obj

    def _now(self) -> int:
        return self.now if self.now is not None else int(time.time())

    def _balance(
        self,
        account: Account,
        kind: str,
        amount: int,
        currency: str,
        source: str | None,
        fee: int | None = None,
        **more: Any,
    ) -> dict[str, Any]:
        if fee is None:
            fee = amount * self.fee_per_mille // 1000 + self.fee_fixed if kind == "charge" else 0
        return self._new(
            account,
            "txn",
            {
                "object": "balance_transaction",
                "type": kind,
                "amount": amount,
                "fee": fee,
                "net": amount - fee,
                "currency": currency,
                "created": self._now(),
                "available_on": self._now() + 2 * 86_400,
                "source": source,
                "status": "pending",
                "description": None,
                **more,
            },
        )

    def _charge(self, account: Account, intent: dict[str, Any]) -> None:
        """A PaymentIntent succeeded: its charge, and the charge's balance transaction."""
        if intent.get("latest_charge"):
            return
        charge = self._new(
            account,
            "ch",
            {
                "object": "charge",
                "amount": intent["amount"],
                "currency": intent["currency"],
                "payment_intent": intent["id"],
                "metadata": dict(intent.get("metadata") or {}),
                "status": "succeeded",
                "created": self._now(),
            },
        )
        charge["balance_transaction"] = self._balance(
            account, "charge", intent["amount"], intent["currency"], charge["id"]
        )["id"]
        intent["latest_charge"] = charge["id"]

    def _list(self, account: Account, resource: str, params: dict[str, Any]) -> dict[str, Any]:
        """Stripe's list: newest first, filtered by created[gte|gt|lte|lt], type and payout,
        paged by limit and starting_after; expand[]=data.source expands the sources."""
        kind = {"balance_transactions": "balance_transaction", "payouts": "payout"}[resource]
        found = [o for o in account.objects.values() if o["object"] == kind]
        created = params.get("created") or {}
        for bound, keep in (
            ("gte", lambda c, b: c >= b),
            ("gt", lambda c, b: c > b),
            ("lte", lambda c, b: c <= b),
            ("lt", lambda c, b: c < b),
        ):
            if bound in created:
                found = [o for o in found if keep(o["created"], int(created[bound]))]
        if "type" in params:
            found = [o for o in found if o.get("type") == params["type"]]
        if "payout" in params:
            found = [o for o in found if account.paid_out.get(o["id"]) == params["payout"]]
        found.sort(key=lambda o: (o["created"], o["id"]), reverse=True)
        if "starting_after" in params:
            ids = [o["id"] for o in found]
            found = found[ids.index(params["starting_after"]) + 1 :]
        limit = int(params.get("limit", 10))
        page = [dict(o) for o in found[:limit]]
        if "data.source" in (params.get("expand") or {}).values():
            for obj in page:
                if obj.get("source"):
                    obj["source"] = dict(account.objects[obj["source"]])
        return {
            "object": "list",
            "data": page,
            "has_more": len(found) > limit,
            "url": f"/v1/{resource}",
        }

    def _customer(
        self, account: Account, params: dict[str, Any], failure: str | None
    ) -> tuple[int, dict[str, Any]]:
        default = f"pm_card_{next(self._ids):06d}" if self.auto_payment_method else None
        return 200, self._new(
            account,
            "cus",
            {
                "object": "customer",
                "name": params.get("name"),
                "email": params.get("email"),
                "description": params.get("description"),
                "metadata": params.get("metadata", {}),
                "invoice_settings": {"default_payment_method": default},
            },
        )

    def _payment_intent(
        self, account: Account, params: dict[str, Any], failure: str | None
    ) -> tuple[int, dict[str, Any]]:
        if not params.get("payment_method"):
            return 400, _error_dict("invalid_request_error", "Missing payment_method.")
        declined = failure == "decline"
        intent = self._new(
            account,
            "pi",
            {
                "object": "payment_intent",
                "amount": int(params["amount"]),
                "currency": params["currency"],
                "customer": params.get("customer"),
                "payment_method": params.get("payment_method"),
                "description": params.get("description"),
                "metadata": params.get("metadata", {}),
                "status": "requires_payment_method" if declined else self.intent_status,
                "last_payment_error": None,
                "created": self._now(),
            },
        )
        if intent["status"] == "succeeded":
            self._charge(account, intent)
        if declined:
            intent["last_payment_error"] = {
                "code": "card_declined",
                "decline_code": "insufficient_funds",
                "message": "Your card has insufficient funds.",
            }
            error = _error_dict("card_error", "Your card has insufficient funds.")
            error["error"].update(
                code="card_declined", decline_code="insufficient_funds", payment_intent=intent
            )
            return 402, error
        return 200, intent

    def _setup_intent(
        self, account: Account, params: dict[str, Any], failure: str | None
    ) -> tuple[int, dict[str, Any]]:
        return 200, self._new(
            account,
            "seti",
            {"object": "setup_intent", "customer": params.get("customer"), "status": "pending"},
        )

    def _checkout_session(
        self, account: Account, params: dict[str, Any], failure: str | None
    ) -> tuple[int, dict[str, Any]]:
        _, setup = self._setup_intent(account, params, failure)
        session = self._new(
            account,
            "cs_test",
            {
                "object": "checkout.session",
                "mode": params.get("mode"),
                "customer": params.get("customer"),
                "success_url": params.get("success_url"),
                "setup_intent": setup["id"],
            },
        )
        session["url"] = f"https://checkout.stripe.test/c/pay/{session['id']}"
        return 200, session

    def _refund(
        self, account: Account, params: dict[str, Any], failure: str | None
    ) -> tuple[int, dict[str, Any]]:
        intent = account.objects.get(params.get("payment_intent", ""))
        if intent is None or intent["status"] != "succeeded":
            return 400, _error_dict("invalid_request_error", "This PaymentIntent has no charge.")
        refunded = intent.setdefault("amount_refunded", 0)
        amount = int(params.get("amount", intent["amount"] - refunded))
        if amount > intent["amount"] - refunded:
            return 400, _error_dict("invalid_request_error", "Refund exceeds the charge.")
        intent["amount_refunded"] = refunded + amount
        refund = self._new(
            account,
            "re",
            {
                "object": "refund",
                "amount": amount,
                "currency": intent["currency"],
                "payment_intent": intent["id"],
                "charge": intent.get("latest_charge"),
                "metadata": params.get("metadata", {}),
                "status": "succeeded",
            },
        )
        refund["balance_transaction"] = self._balance(
            account, "refund", -amount, intent["currency"], refund["id"]
        )["id"]
        return 200, refund


def _parse_form(body: str) -> dict[str, Any]:
    """Stripe's form encoding: a[b]=1&c[0]=x → {"a": {"b": "1"}, "c": {"0": "x"}}."""
    parsed: dict[str, Any] = {}
    for name, value in parse_qsl(body, keep_blank_values=True):
        keys = re.findall(r"[^\[\]]+", name)
        target = parsed
        for key in keys[:-1]:
            target = target.setdefault(key, {})
        target[keys[-1]] = value
    return parsed


def _merge(target: dict[str, Any], changes: dict[str, Any]) -> None:
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(target.get(key), dict):
            _merge(target[key], value)
        else:
            target[key] = value


def _error_dict(kind: str, message: str) -> dict[str, Any]:
    return {"error": {"type": kind, "message": message}}


def _error_body(kind: str, message: str) -> bytes:
    return json.dumps(_error_dict(kind, message)).encode()


def _error(request: BaseHTTPRequestHandler, status: int, kind: str, message: str) -> None:
    _respond(request, status, _error_body(kind, message))


def _respond(request: BaseHTTPRequestHandler, status: int, body: bytes) -> None:
    try:
        request.send_response(status)
        request.send_header("Content-Type", "application/json")
        request.send_header("Content-Length", str(len(body)))
        request.send_header("Request-Id", f"req_{time.monotonic_ns()}")
        request.end_headers()
        request.wfile.write(body)
    except (BrokenPipeError, ConnectionResetError):
        pass  # The client gave up (a timeout): Stripe's work is done all the same.


@contextmanager
def fake_stripe(*accounts: str, hang_s: float = 1.5) -> Iterator[FakeStripe]:
    fake = FakeStripe(hang_s=hang_s)
    for account in accounts:
        fake.add_account(account)
    try:
        yield fake
    finally:
        fake.close()
