"""The webhook outbox and delivery on the in-memory store, with fake ports and a manual clock."""

import base64
import hashlib
import hmac
import json
import random
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

import pytest

from adapters.outbox import MemoryOutbox
from adapters.stores import Ledger
from application.billing import Billing
from application.errors import AlreadyExistsError, NotFoundError
from application.webhooks import (
    DeliveryResult,
    Notice,
    WebhookNotFailedError,
    Webhooks,
    WebhookSettings,
)
from domain.errors import InvalidValueError
from domain.organization import Organization
from tests.conftest import Tenant

MARCH_1 = datetime(2026, 3, 1, tzinfo=UTC)
APRIL_1 = datetime(2026, 4, 1, tzinfo=UTC)


def render(billing: Billing, notice: Notice) -> bytes:
    """A fake renderer: the type, the object and the version it was rendered at."""
    return json.dumps(
        {
            "webhook_type": notice.webhook_type,
            "object_type": notice.object_type,
            "lago_id": str(notice.aggregate.id),
            "version": notice.aggregate.version,
            "at": notice.at.isoformat(),
        }
    ).encode()


@dataclass
class Receiver:
    """A fake transport: answers from a script (default 200) and records every request."""

    answers: list[DeliveryResult] = field(default_factory=list)
    requests: list[tuple[str, bytes, dict[str, str]]] = field(default_factory=list)

    def post(
        self, url: str, body: bytes, headers: Mapping[str, str], timeout_s: float
    ) -> DeliveryResult:
        self.requests.append((url, body, dict(headers)))
        return self.answers.pop(0) if self.answers else DeliveryResult(200, "ok")

    def types(self) -> list[str]:
        return [json.loads(body)["webhook_type"] for _, body, _ in self.requests]


class Signer:
    def jwt(self, body: bytes) -> str:
        return "jwt:" + hashlib.sha256(body).hexdigest()

    def public_key_pem(self) -> bytes:
        return b"-----BEGIN PUBLIC KEY-----\n"


@dataclass
class Clock:
    instant: datetime = datetime(2030, 1, 1, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.instant

    def advance(self, seconds: float) -> None:
        self.instant += timedelta(seconds=seconds)


SETTINGS = WebhookSettings(attempts_max=3, backoff_base_s=10, backoff_cap_s=60, concurrency=1)


@dataclass
class World:
    ledger: Ledger
    tenant: Tenant
    receiver: Receiver
    clock: Clock
    webhooks: Webhooks

    @property
    def org(self) -> UUID:
        return self.tenant.organization_id

    def endpoint(self, url: str = "https://hooks.example/a", **fields: Any) -> UUID:
        values: dict[str, Any] = {"signature_algo": None, "name": None, "event_types": None}
        values.update(fields)
        return self.webhooks.create_endpoint(self.org, webhook_url=url, **values).id

    def deliver(self) -> int:
        return self.webhooks.run_once()


@pytest.fixture
def world(ledger: Ledger, tenant: Tenant) -> Iterator[World]:
    receiver, clock = Receiver(), Clock()
    webhooks = Webhooks(
        ledger.billing,
        MemoryOutbox(),
        render=render,
        transport=receiver,
        signer=Signer(),
        settings=SETTINGS,
        rng=random.Random(7),
        clock=clock,
    )
    yield World(ledger, tenant, receiver, clock, webhooks)


def make_webhooks(world: World, outbox: MemoryOutbox) -> Webhooks:
    return Webhooks(
        world.ledger.billing,
        outbox,
        render=render,
        transport=world.receiver,
        signer=Signer(),
        settings=SETTINGS,
        clock=world.clock,
    )


# Enqueue: which events become which webhooks, once.


def test_a_customer_created_then_updated_is_announced_in_that_order(world: World) -> None:
    world.endpoint()
    world.ledger.billing.upsert_customer(world.org, "cus_1", {"name": "Ada"})
    world.ledger.billing.upsert_customer(world.org, "cus_1", {"name": "Grace"})
    world.ledger.billing.upsert_customer(world.org, "cus_1", {"name": "Grace"})  # No change.
    assert world.deliver() == 2
    assert world.receiver.types() == ["customer.created", "customer.updated"]
    versions = [json.loads(body)["version"] for _, body, _ in world.receiver.requests]
    assert versions == [1, 2]  # Each rendered at its own event's version.


def test_each_matching_endpoint_gets_its_own_message_and_filters_apply(world: World) -> None:
    every = world.endpoint("https://hooks.example/all")
    invoices_only = world.endpoint("https://hooks.example/inv", event_types=["invoice.created"])
    world.ledger.billing.upsert_customer(world.org, "cus_1", {})
    world.webhooks.catch_up()
    messages, total = world.webhooks.messages(world.org, ["pending"], 1, 10)
    assert total == 1
    assert (messages[0].endpoint_id, messages[0].webhook_type) == (every, "customer.created")
    assert invoices_only != every


def test_an_endpoint_gets_only_what_happens_after_it_exists(world: World) -> None:
    world.ledger.billing.upsert_customer(world.org, "cus_before", {})
    world.endpoint()
    world.ledger.billing.upsert_customer(world.org, "cus_after", {})
    world.deliver()
    [(_, body, _)] = world.receiver.requests
    assert json.loads(body)["lago_id"] == str(
        world.ledger.billing.customer(world.org, "cus_after").id
    )


def test_another_organizations_events_are_not_sent(world: World) -> None:
    world.endpoint()
    other, _ = world.ledger.billing.create_organization("other")
    world.ledger.billing.upsert_customer(other.id, "cus_1", {})
    assert world.deliver() == 0


def test_replaying_the_log_makes_the_same_messages(world: World) -> None:
    world.endpoint()
    for n in range(3):
        world.ledger.billing.upsert_customer(world.org, f"cus_{n}", {"name": str(n)})
    world.webhooks.catch_up()
    rebuilt = make_webhooks(world, MemoryOutbox())
    rebuilt.catch_up()
    first = world.webhooks.messages(world.org, [], 1, 100)[0]
    second = rebuilt.messages(world.org, [], 1, 100)[0]
    assert [(m.id, m.payload) for m in first] == [(m.id, m.payload) for m in second]
    assert len(first) == 3


def test_racing_catch_ups_enqueue_each_message_once(world: World) -> None:
    world.endpoint("https://hooks.example/a")
    world.endpoint("https://hooks.example/b")
    for n in range(20):
        world.ledger.billing.upsert_customer(world.org, f"cus_{n}", {})
    outbox = MemoryOutbox()
    racers = [make_webhooks(world, outbox) for _ in range(4)]  # Four processes, one outbox.
    barrier = threading.Barrier(len(racers))

    def race(webhooks: Webhooks) -> None:
        barrier.wait()
        webhooks.catch_up()

    threads = [threading.Thread(target=race, args=(w,)) for w in racers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    messages, total = racers[0].messages(world.org, [], 1, 1000)
    assert total == 40 == len({m.id for m in messages})


def test_a_subscription_is_started_terminated_or_canceled(world: World) -> None:
    world.endpoint()
    billing = world.ledger.billing
    billing.create_plan(
        world.org,
        "basic",
        {
            "name": "Basic",
            "interval": "monthly",
            "amount_cents": 1000,
            "amount_currency": "EUR",
            "pay_in_advance": False,
        },
    )
    billing.now = lambda: MARCH_1
    billing.create_subscription(
        world.org, "sub_now", external_customer_id="cus_1", plan_code="basic"
    )
    billing.create_subscription(
        world.org,
        "sub_later",
        external_customer_id="cus_1",
        plan_code="basic",
        subscription_at=APRIL_1,
    )
    billing.terminate_subscription(world.org, "sub_now")
    billing.terminate_subscription(world.org, "sub_later", status="pending")
    world.webhooks.catch_up()
    messages = world.webhooks.messages(world.org, [], 1, 100)[0]
    by_type = sorted((m.webhook_type, m.status) for m in messages if m.object_type != "customer")
    assert by_type == [
        ("subscription.canceled", "pending"),
        ("subscription.started", "canceled"),  # sub_later's scheduled start, never sent.
        ("subscription.started", "pending"),
        ("subscription.terminated", "pending"),
    ]


def test_a_pending_subscriptions_start_waits_for_its_start_and_moves_with_it(
    world: World,
) -> None:
    world.endpoint()
    billing = world.ledger.billing
    billing.create_plan(
        world.org,
        "basic",
        {
            "name": "Basic",
            "interval": "monthly",
            "amount_cents": 0,
            "amount_currency": "EUR",
            "pay_in_advance": False,
        },
    )
    start = datetime.now(UTC).replace(microsecond=0) + timedelta(days=30)
    billing.create_subscription(
        world.org, "sub_1", external_customer_id="cus_1", plan_code="basic", subscription_at=start
    )
    moved = start + timedelta(days=1)
    billing.update_subscription(world.org, "sub_1", status="pending", subscription_at=moved)
    world.clock.instant = datetime.now(UTC)
    world.deliver()
    assert world.receiver.types() == ["customer.created"]
    [started] = world.webhooks.messages(world.org, ["pending"], 1, 10)[0]
    assert (started.webhook_type, started.next_attempt_at) == ("subscription.started", moved)
    assert json.loads(started.payload)["at"] == moved.isoformat()  # Rendered as at its start.
    world.clock.instant = moved
    world.deliver()
    assert world.receiver.types()[-1] == "subscription.started"


def test_invoices_are_announced_as_lago_does(world: World) -> None:
    world.endpoint()
    billing = world.ledger.billing
    billing.create_plan(
        world.org,
        "basic",
        {
            "name": "Basic",
            "interval": "monthly",
            "amount_cents": 1000,
            "amount_currency": "EUR",
            "pay_in_advance": False,
        },
    )
    billing.now = lambda: MARCH_1
    billing.create_subscription(world.org, "sub_1", external_customer_id="cus_1", plan_code="basic")
    billing.now = lambda: APRIL_1
    [invoice] = world.ledger.invoicing.run(APRIL_1)
    world.ledger.invoicing.set_payment_status(world.org, invoice.id, "failed")
    world.ledger.invoicing.void(world.org, invoice.id, APRIL_1)
    world.webhooks.catch_up()
    messages = world.webhooks.messages(world.org, [], 1, 100)[0]
    invoice_types = [
        (m.webhook_type, m.status) for m in reversed(messages) if m.object_type == "invoice"
    ]
    # Finalized by the save that drafted it: invoice.created only; the held draft is canceled.
    assert invoice_types == [
        ("invoice.drafted", "canceled"),
        ("invoice.created", "pending"),
        ("invoice.payment_status_updated", "pending"),
        ("invoice.voided", "pending"),
    ]


# Delivery: signatures, retries, order, failure and retry.


def test_each_request_carries_lagos_headers_and_signs_the_exact_body(world: World) -> None:
    world.endpoint("https://hooks.example/jwt")
    world.endpoint("https://hooks.example/hmac", signature_algo="hmac")
    world.ledger.billing.upsert_customer(world.org, "cus_1", {})
    world.deliver()
    key = world.ledger.billing.organization(world.org).hmac_key
    assert key is not None
    by_url = {url: (body, headers) for url, body, headers in world.receiver.requests}
    body, headers = by_url["https://hooks.example/hmac"]
    expected = base64.b64encode(hmac.new(key.encode(), body, hashlib.sha256).digest()).decode()
    assert headers["X-Lago-Signature"] == expected
    assert headers["X-Lago-Signature-Algorithm"] == "hmac"
    body, headers = by_url["https://hooks.example/jwt"]
    assert headers["X-Lago-Signature"] == "jwt:" + hashlib.sha256(body).hexdigest()
    assert headers["X-Lago-Signature-Algorithm"] == "jwt"
    messages = world.webhooks.messages(world.org, ["succeeded"], 1, 10)[0]
    keys = {headers["X-Lago-Unique-Key"] for _, _, headers in world.receiver.requests}
    assert keys == {str(m.id) for m in messages}


def test_a_failing_receiver_is_retried_after_a_jittered_back_off(world: World) -> None:
    world.endpoint()
    world.receiver.answers = [DeliveryResult(500, "down"), DeliveryResult(None, "", "timeout")]
    world.ledger.billing.upsert_customer(world.org, "cus_1", {})
    assert world.deliver() == 1
    [message] = world.webhooks.messages(world.org, [], 1, 10)[0]
    delay_s = (message.next_attempt_at - world.clock.instant).total_seconds()
    assert 0 <= delay_s <= 10  # Full jitter below the first ceiling, base · 2^0.
    assert (message.status, message.http_status, message.last_error) == (
        "pending",
        500,
        "HTTP 500",
    )
    assert world.deliver() == 0 or delay_s == 0  # Not due yet.
    world.clock.advance(10)
    world.deliver()  # The timeout, then (after the next back-off) success.
    world.clock.advance(20)
    world.deliver()
    [message] = world.webhooks.messages(world.org, [], 1, 10)[0]
    assert (message.status, message.attempts) == ("succeeded", 3)
    assert len({h["X-Lago-Unique-Key"] for _, _, h in world.receiver.requests}) == 1


def test_a_resource_waits_for_its_earlier_message_but_others_do_not(world: World) -> None:
    world.endpoint()
    world.receiver.answers = [DeliveryResult(503)]
    world.ledger.billing.upsert_customer(world.org, "cus_1", {"name": "a"})
    world.ledger.billing.upsert_customer(world.org, "cus_1", {"name": "b"})
    world.ledger.billing.upsert_customer(world.org, "cus_2", {})
    world.deliver()
    # cus_1's creation failed once: its update waits; cus_2 goes ahead.
    sent = [
        (json.loads(body)["lago_id"], json.loads(body)["webhook_type"])
        for _, body, _ in world.receiver.requests
    ]
    cus_1 = str(world.ledger.billing.customer(world.org, "cus_1").id)
    assert (cus_1, "customer.updated") not in sent
    world.clock.advance(60)
    world.deliver()
    cus_1_types = [
        json.loads(b)["webhook_type"]
        for _, b, _ in world.receiver.requests
        if json.loads(b)["lago_id"] == cus_1
    ]
    assert cus_1_types == ["customer.created", "customer.created", "customer.updated"]


def test_after_the_last_attempt_a_message_fails_and_a_retry_sends_it_again(world: World) -> None:
    world.endpoint()
    world.receiver.answers = [DeliveryResult(500)] * 3
    world.ledger.billing.upsert_customer(world.org, "cus_1", {})
    for _ in range(3):
        world.deliver()
        world.clock.advance(60)
    [failed] = world.webhooks.messages(world.org, ["failed"], 1, 10)[0]
    assert failed.attempts == 3
    with pytest.raises(NotFoundError):
        world.webhooks.retry(world.org, UUID(int=1))
    retried = world.webhooks.retry(world.org, failed.id)
    assert (retried.status, retried.attempts) == ("pending", 0)
    world.deliver()
    with pytest.raises(WebhookNotFailedError):
        world.webhooks.retry(world.org, failed.id)
    keys = [h["X-Lago-Unique-Key"] for _, _, h in world.receiver.requests]
    assert keys == [str(failed.id)] * 4
    assert world.webhooks.message(world.org, failed.id).status == "succeeded"


def test_a_deleted_endpoints_pending_messages_are_canceled(world: World) -> None:
    endpoint_id = world.endpoint()
    world.ledger.billing.upsert_customer(world.org, "cus_1", {})
    world.webhooks.delete_endpoint(world.org, endpoint_id)
    world.deliver()
    assert world.receiver.requests == []
    [message] = world.webhooks.messages(world.org, [], 1, 10)[0]
    assert (message.status, message.last_error) == ("canceled", "endpoint_deleted")


def test_an_organization_from_before_webhooks_gets_an_hmac_key_when_needed(world: World) -> None:
    old = Organization(name="old")  # As created before organizations had HMAC keys.
    world.ledger.billing.save(old)
    key = world.webhooks.hmac_key(old.id)
    assert key == world.ledger.billing.organization(old.id).hmac_key
    assert world.webhooks.hmac_key(old.id) == key


# Endpoints.


def test_endpoint_urls_are_unique_and_limited_to_ten(world: World) -> None:
    first = world.endpoint("https://hooks.example/0")
    with pytest.raises(AlreadyExistsError):
        world.endpoint("https://hooks.example/0")
    for n in range(1, 10):
        world.endpoint(f"https://hooks.example/{n}")
    with pytest.raises(InvalidValueError) as error:
        world.endpoint("https://hooks.example/10")
    assert (error.value.field, error.value.reason) == ("base", "exceeded_limit")
    endpoints, total = world.webhooks.endpoints(world.org, 1, 3)
    assert (total, endpoints[0].webhook_url) == (10, "https://hooks.example/9")
    world.webhooks.delete_endpoint(world.org, first)
    again = world.endpoint("https://hooks.example/0")  # A URL can be used again: a new id.
    assert again != first
    with pytest.raises(NotFoundError):
        world.webhooks.endpoint(world.org, first)


def test_an_endpoint_cannot_take_another_ones_url(world: World) -> None:
    world.endpoint("https://hooks.example/a")
    second = world.endpoint("https://hooks.example/b")
    with pytest.raises(AlreadyExistsError):
        world.webhooks.update_endpoint(
            world.org,
            second,
            webhook_url="https://hooks.example/a",
            signature_algo=None,
            name=None,
            event_types=None,
        )


def test_another_organizations_endpoint_looks_missing(world: World) -> None:
    endpoint_id = world.endpoint()
    other, _ = world.ledger.billing.create_organization("other")
    with pytest.raises(NotFoundError):
        world.webhooks.endpoint(other.id, endpoint_id)
    with pytest.raises(NotFoundError):
        world.webhooks.delete_endpoint(other.id, endpoint_id)


def test_the_back_off_ceiling_doubles_up_to_the_cap(world: World) -> None:
    ceilings: Callable[[int], float] = lambda n: max(  # noqa: E731
        world.webhooks.backoff_s(n) for _ in range(200)
    )
    assert 5 < ceilings(1) <= 10 and 10 < ceilings(2) <= 20 and 30 < ceilings(9) <= 60


def test_a_draft_held_by_a_grace_period_is_announced_then_created(world: World) -> None:
    world.endpoint()
    billing = world.ledger.billing
    billing.create_plan(
        world.org,
        "basic",
        {
            "name": "Basic",
            "interval": "monthly",
            "amount_cents": 1000,
            "amount_currency": "EUR",
            "pay_in_advance": False,
        },
    )
    billing.upsert_customer(
        world.org, "cus_1", {"billing_configuration": {"invoice_grace_period": 3}}
    )
    billing.now = lambda: MARCH_1
    billing.create_subscription(world.org, "sub_1", external_customer_id="cus_1", plan_code="basic")
    billing.now = lambda: APRIL_1
    [draft] = world.ledger.invoicing.run(APRIL_1)
    billing.upsert_customer(world.org, "cus_2", {})  # Days pass, other things happen.
    world.ledger.invoicing.finalize(world.org, draft.id, APRIL_1 + timedelta(days=3))
    world.webhooks.catch_up()
    messages = world.webhooks.messages(world.org, [], 1, 100)[0]
    invoice_types = [
        (m.webhook_type, m.status) for m in reversed(messages) if m.object_type == "invoice"
    ]
    assert invoice_types == [("invoice.drafted", "pending"), ("invoice.created", "pending")]
    world.clock.instant = datetime.now(UTC) + timedelta(seconds=3)  # After the draft's hold.
    world.deliver()
    assert [t for t in world.receiver.types() if t.startswith("invoice.")] == [
        "invoice.drafted",
        "invoice.created",
    ]
