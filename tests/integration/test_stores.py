"""Store-touching behaviour on SQLite and PostgreSQL: races, restarts, projections, idempotency."""

import threading
from concurrent.futures import ThreadPoolExecutor
from uuid import UUID, uuid4

import pytest

from adapters.settings import Settings
from adapters.stores import Ledger, open_ledger
from application.errors import IdempotencyKeyReusedError
from application.ports import StoredResponse
from domain.customer import Customer


def test_concurrent_creates_of_one_external_id_make_one_customer(
    store_ledger: Ledger,
) -> None:
    organization, _ = store_ledger.billing.create_organization("acme")
    barrier = threading.Barrier(6)

    def create(n: int) -> None:
        barrier.wait()
        store_ledger.billing.upsert_customer(organization.id, "cus_race", {"name": f"n{n}"})

    with ThreadPoolExecutor(6) as pool:
        list(pool.map(create, range(6)))
    customers, total = store_ledger.billing.customers(organization.id, 1, 10)
    assert total == 1
    events = list(store_ledger.billing.events.get(customers[0].id))
    assert sum(isinstance(e, Customer.Created) for e in events) == 1


def test_two_processes_worth_of_ledgers_share_one_store(store_settings: Settings) -> None:
    first, second = open_ledger(store_settings), open_ledger(store_settings)
    try:
        organization, api_key = first.billing.create_organization("acme")
        first.billing.upsert_customer(organization.id, "cus_1", {"name": "Ada"})
        # The second ledger (another process) authenticates and lists what the first wrote.
        assert second.billing.organization_for_api_key(api_key) == organization.id
        customers, total = second.billing.customers(organization.id, 1, 10)
        assert ([c.external_id for c in customers], total) == (["cus_1"], 1)
    finally:
        first.close()
        second.close()


def test_everything_survives_a_restart(store_settings: Settings) -> None:
    ledger = open_ledger(store_settings)
    organization, api_key = ledger.billing.create_organization("acme")
    ledger.billing.upsert_customer(organization.id, "cus_1", {"name": "Ada", "country": "FR"})
    ledger.billing.delete_customer(organization.id, "cus_1")
    ledger.billing.upsert_customer(organization.id, "cus_2", {"name": "Grace"})
    ledger.close()

    reopened = open_ledger(store_settings)
    try:
        assert reopened.billing.organization_for_api_key(api_key) == organization.id
        customers, total = reopened.billing.customers(organization.id, 1, 10)
        assert ([c.external_id for c in customers], total) == (["cus_2"], 1)
        assert reopened.billing.customer(organization.id, "cus_2").fields["name"] == "Grace"
    finally:
        reopened.close()


def test_events_are_stored_and_loaded_alike_one_by_one_and_many_at_once(
    store_settings: Settings,
) -> None:
    """On PostgreSQL a save sends its events in binary and a run loads many aggregates in one
    read (ADR 0027): what comes back equals what one-by-one loads give, bytes in state
    included (a customer's name with characters text escaping would change)."""
    ledger = open_ledger(store_settings)
    try:
        if store_settings.store == "postgres":
            statement = ledger.billing.recorder.insert_events_statement  # type: ignore[attr-defined]
            assert "unnest(%b::" in statement.as_string()
        organization, _ = ledger.billing.create_organization("acme")
        names = ['Ada "the first" \\ Lovelace', "Grace {Hopper}, 1906", "Zoë\tO'Brien\n"]
        ids = [
            ledger.billing.upsert_customer(organization.id, f"cus_{n}", {"name": name}).id
            for n, name in enumerate(names)
        ]
        loaded = ledger.billing.load_many([*ids, uuid4()])
        assert set(loaded) == set(ids)  # The unknown id is absent.
        for customer_id, name in zip(ids, names, strict=True):
            one = ledger.billing.repository.get(customer_id)
            assert loaded[customer_id].fields["name"] == one.fields["name"] == name
            assert loaded[customer_id].version == one.version
    finally:
        ledger.close()


def test_the_index_rebuilt_from_scratch_equals_the_live_one(store_settings: Settings) -> None:
    ledger = open_ledger(store_settings)
    try:
        organization, _ = ledger.billing.create_organization("acme")
        for n in range(7):
            ledger.billing.upsert_customer(organization.id, f"cus_{n}", {})
        ledger.billing.delete_customer(organization.id, "cus_3")
        live = ledger.billing.customers(organization.id, 1, 100)
        # Replaying the notification log into an empty index gives the same answer.
        from application.projections import CatchUp, MemoryIndexView, ResourceIndexProjection

        fresh = ResourceIndexProjection(view=MemoryIndexView())
        CatchUp(ledger.billing, fresh)()
        ids, total = fresh.view.page(organization.id, "customer", 1, 100, statuses=["active"])
        assert (ids, total) == ([c.id for c in live[0]], live[1])
    finally:
        ledger.close()


def test_idempotency_keys_are_scoped_and_remembered(store_ledger: Ledger) -> None:
    org_a, _ = store_ledger.billing.create_organization("a")
    org_b, _ = store_ledger.billing.create_organization("b")
    store = store_ledger.idempotency
    assert store.reserve(org_a.id, "k", "hash-1") is None
    assert store.reserve(org_b.id, "k", "hash-2") is None  # Another organization's key.
    store.complete(org_a.id, "k", StoredResponse(200, b'{"ok":true}'))
    assert store.reserve(org_a.id, "k", "hash-1") == StoredResponse(200, b'{"ok":true}')
    with pytest.raises(IdempotencyKeyReusedError):
        store.reserve(org_a.id, "k", "hash-other")
    store.release(org_b.id, "k")
    assert store.reserve(org_b.id, "k", "hash-3") is None


def test_the_index_takes_what_was_just_saved_unless_something_came_in_between(
    store_ledger: Ledger,
) -> None:
    """A billing run hands the index the invoices it has just saved (ADR 0027): applied at
    once if nothing the index follows was recorded since its position, else left to the next
    catch-up, which reads everything in order."""
    billing = store_ledger.billing
    organization, _ = billing.create_organization("acme")

    def listed() -> set[UUID]:
        found, _ = billing.index.view.page(organization.id, "customer", 1, 100)
        return set(found)

    first = Customer.create(organization.id, "cus_1", {})
    billing.save(first)  # Not caught up: the index does not know it yet.
    second = Customer.create(organization.id, "cus_2", {})
    billing.catch_up.recorded(billing.save(second))
    assert listed() == set()  # cus_1 came in between: nothing is applied out of order.
    billing.catch_up()
    assert listed() == {first.id, second.id}
    third = Customer.create(organization.id, "cus_3", {})
    recordings = billing.save(third)
    billing.catch_up.recorded(recordings)
    assert listed() == {first.id, second.id, third.id}
    position = billing.index.view.max_tracking_id(billing.catch_up.tracking_name)
    assert position == recordings[-1].notification.id
    billing.catch_up.recorded(recordings)  # Again: applied already, nothing changes.
    assert listed() == {first.id, second.id, third.id}
