"""Webhook delivery over real HTTP on SQLite and PostgreSQL: outages, order, exactly-once."""

import threading
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import replace
from uuid import UUID

import pytest

from adapters.settings import Settings
from adapters.stores import Ledger, open_ledger
from api.webhook_payloads import WebhookPayloads
from application.webhooks import DeliveryWorker, Webhooks
from tests.conftest import free_port
from tests.webhook_receiver import Received, Receiver, verify, wait_until

API_URL = "http://tally.test"


def fast(ledger: Ledger) -> Webhooks:
    """Webhooks with millisecond back-off, so that an outage passes in a test's time."""
    ledger.webhook_settings = replace(
        ledger.webhook_settings,
        api_url=API_URL,
        attempts_max=100,
        backoff_base_s=0.005,
        backoff_cap_s=0.05,
        timeout_s=2.0,
        poll_s=0.01,
    )
    return ledger.open_webhooks(WebhookPayloads(API_URL))


@pytest.fixture
def webhooks(store_ledger: Ledger) -> Webhooks:
    return fast(store_ledger)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    receiver = Receiver()
    yield receiver
    receiver.close()


def make_history(ledger: Ledger, organization_id: UUID, customers: int = 3) -> int:
    """Each customer created, then renamed twice: returns the number of events announced."""
    for version in range(3):
        for n in range(customers):
            ledger.billing.upsert_customer(organization_id, f"cus_{n}", {"name": f"v{version}"})
    return 3 * customers


def check_deliveries(
    received: list[Received], webhooks: Webhooks, organization_id: UUID
) -> dict[str, list[str]]:
    """Every signature verifies; a repeat has the same key and body; returns the names each
    (endpoint, customer) saw, in the order they first arrived."""
    public_key = webhooks.public_key_pem()
    hmac_key = webhooks.hmac_key(organization_id)
    bodies: dict[str, bytes] = {}
    seen: dict[str, list[str]] = defaultdict(list)
    for item in received:
        verify(item, public_key, API_URL, hmac_key)
        if item.key in bodies:
            assert bodies[item.key] == item.body  # A repeat is the same webhook.
            continue
        bodies[item.key] = item.body
        customer = item.payload["customer"]
        seen[f"{item.path} {customer['external_id']}"].append(customer["name"])
    return seen


def test_a_receiver_down_for_a_while_gets_everything_in_order(
    store_ledger: Ledger, webhooks: Webhooks, receiver: Receiver
) -> None:
    organization, _ = store_ledger.billing.create_organization("acme")
    org = organization.id
    for path, algo in (("/jwt", "jwt"), ("/hmac", "hmac")):
        webhooks.create_endpoint(
            org, webhook_url=receiver.url(path), signature_algo=algo, name=None, event_types=None
        )
    receiver.failures = 10  # Down: the first 10 requests get a 500.
    expected = 2 * make_history(store_ledger, org)
    worker = DeliveryWorker(webhooks)
    worker.start()
    try:
        wait_until(lambda: len({r.key for r in receiver.snapshot()}) == expected)
    finally:
        worker.stop()
    assert receiver.refused == 10
    seen = check_deliveries(receiver.snapshot(), webhooks, org)
    assert len(seen) == 6
    assert all(names == ["v0", "v1", "v2"] for names in seen.values()), seen
    succeeded, total = webhooks.messages(org, ["succeeded"], 1, 100)
    assert total == expected
    assert {str(m.id) for m in succeeded} == {r.key for r in receiver.snapshot()}


def test_a_receiver_not_listening_yet_gets_everything_once_it_listens(
    store_ledger: Ledger, webhooks: Webhooks
) -> None:
    organization, _ = store_ledger.billing.create_organization("acme")
    port = free_port()  # Nothing listens there yet: connections are refused.
    webhooks.create_endpoint(
        organization.id,
        webhook_url=f"http://127.0.0.1:{port}/hooks",
        signature_algo="hmac",
        name=None,
        event_types=None,
    )
    expected = make_history(store_ledger, organization.id, customers=2)
    worker = DeliveryWorker(webhooks)
    worker.start()
    try:

        def retried() -> bool:
            messages, _ = webhooks.messages(organization.id, ["pending"], 1, 100)
            return any(m.attempts >= 3 and m.last_error for m in messages)

        wait_until(retried)
        receiver = Receiver(port=port)
        try:
            wait_until(lambda: len({r.key for r in receiver.snapshot()}) == expected)
            seen = check_deliveries(receiver.snapshot(), webhooks, organization.id)
        finally:
            receiver.close()
    finally:
        worker.stop()
    assert all(names == ["v0", "v1", "v2"] for names in seen.values()), seen


def test_racing_catch_ups_in_two_processes_enqueue_each_message_once(
    store_settings: Settings, store_ledger: Ledger
) -> None:
    organization, _ = store_ledger.billing.create_organization("acme")
    first = fast(store_ledger)
    for n in range(3):
        first.create_endpoint(
            organization.id,
            webhook_url=f"https://hooks.example/{n}",
            signature_algo=None,
            name=None,
            event_types=None,
        )
    expected = 3 * make_history(store_ledger, organization.id, customers=4)
    others = [open_ledger(store_settings) for _ in range(2)]
    try:
        racers = [first, *(fast(ledger) for ledger in others)]
        barrier = threading.Barrier(len(racers))
        errors: list[BaseException] = []

        def race(webhooks: Webhooks) -> None:
            barrier.wait()
            try:
                webhooks.catch_up()
            except BaseException as error:
                errors.append(error)

        threads = [threading.Thread(target=race, args=(w,)) for w in racers]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert errors == []
        messages, total = first.messages(organization.id, [], 1, 1000)
        assert total == expected == len({m.id for m in messages})
    finally:
        for ledger in others:
            ledger.close()


def test_two_workers_never_deliver_one_message_twice_when_all_goes_well(
    store_settings: Settings, store_ledger: Ledger, receiver: Receiver
) -> None:
    organization, _ = store_ledger.billing.create_organization("acme")
    webhooks = fast(store_ledger)
    webhooks.create_endpoint(
        organization.id,
        webhook_url=receiver.url("/a"),
        signature_algo=None,
        name=None,
        event_types=None,
    )
    expected = make_history(store_ledger, organization.id, customers=5)
    other = open_ledger(store_settings)
    workers = [DeliveryWorker(webhooks), DeliveryWorker(fast(other))]
    for worker in workers:
        worker.start()
    try:
        wait_until(lambda: len(receiver.snapshot()) >= expected)
    finally:
        for worker in workers:
            worker.stop()
        other.close()
    keys = [r.key for r in receiver.snapshot()]
    assert len(keys) == len(set(keys)) == expected  # Claims exclude each other.
    seen = check_deliveries(receiver.snapshot(), webhooks, organization.id)
    assert all(names == ["v0", "v1", "v2"] for names in seen.values()), seen


def test_the_signing_key_survives_a_restart(store_settings: Settings) -> None:
    first = open_ledger(store_settings)
    try:
        key = fast(first).public_key_pem()
    finally:
        first.close()
    second = open_ledger(store_settings)
    try:
        assert fast(second).public_key_pem() == key
    finally:
        second.close()


def test_a_rotated_signing_key_is_stored_and_the_old_one_listed_after_a_restart(
    store_settings: Settings,
) -> None:
    first = open_ledger(store_settings)
    try:
        webhooks = fast(first)
        old = webhooks.public_key_pem()
        rotated = webhooks.rotate_signing_key()
        assert webhooks.public_key_pem() == rotated.public_key_pem != old
    finally:
        first.close()
    second = open_ledger(store_settings)  # Another process: it signs with the new key.
    try:
        webhooks = fast(second)
        assert webhooks.public_key_pem() == rotated.public_key_pem
        keys = webhooks.public_keys()
        assert [(k.public_key_pem, k.retired_at is None) for k in keys] == [
            (rotated.public_key_pem, True),
            (old, False),
        ]
        assert keys[1].retired_at is not None and keys[1].created_at <= keys[1].retired_at
        again = webhooks.rotate_signing_key()
        assert [k.public_key_pem for k in webhooks.public_keys()] == [
            again.public_key_pem,
            rotated.public_key_pem,
            old,
        ]
    finally:
        second.close()
