"""The per-process cache of hot aggregates: concurrent refreshes share queries, and none of
them hides a change recorded before its caller asked."""

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from adapters.settings import memory_settings
from adapters.stores import Ledger, open_ledger
from application.fresh_aggregates import FreshAggregates
from domain import ids


@pytest.fixture
def ledger() -> Iterator[Ledger]:
    ledger = open_ledger(memory_settings())
    yield ledger
    ledger.close()


class SlowNotifications:
    """Counts notification reads; each answers from its snapshot, then dawdles."""

    def __init__(self, ledger: Ledger, delay_s: float) -> None:
        self.recorder: Any = ledger.billing.recorder
        self.select = self.recorder.select_notifications
        self.delay_s = delay_s
        self.reads = 0
        self.reading = threading.Event()

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        found = self.select(*args, **kwargs)
        self.reads += 1
        self.reading.set()
        time.sleep(self.delay_s)
        return found


def test_a_change_recorded_during_a_refresh_is_seen_by_a_caller_who_asks_after_it(
    ledger: Ledger,
) -> None:
    billing = ledger.billing
    organization, _ = billing.create_organization("acme")
    billing.upsert_customer(organization.id, "c1", {"timezone": "Europe/Paris"})
    cache = FreshAggregates(billing)
    cache.refresh()
    customer_id = ids.customer_id(organization.id, "c1")
    assert cache.get(customer_id).fields["timezone"] == "Europe/Paris"
    slow = SlowNotifications(ledger, 0.2)
    billing.recorder.select_notifications = slow  # type: ignore[method-assign]
    early = threading.Thread(target=cache.refresh)
    early.start()
    slow.reading.wait(5)  # The early refresh has read: it cannot see what follows.
    billing.upsert_customer(organization.id, "c1", {"timezone": "Asia/Tokyo"})
    cache.refresh()  # Waits for a refresh that starts after this call.
    early.join()
    assert cache.get(customer_id).fields["timezone"] == "Asia/Tokyo"


def test_concurrent_callers_share_refreshes(ledger: Ledger) -> None:
    billing = ledger.billing
    cache = FreshAggregates(billing)
    cache.refresh()
    slow = SlowNotifications(ledger, 0.05)
    billing.recorder.select_notifications = slow  # type: ignore[method-assign]
    callers = [threading.Thread(target=cache.refresh) for _ in range(16)]
    for caller in callers:
        caller.start()
    for caller in callers:
        caller.join()
    assert 1 <= slow.reads <= 3, slow.reads  # Not one query per caller.


def test_a_request_shares_one_refresh_since_its_arrival(ledger: Ledger) -> None:
    billing = ledger.billing
    cache = FreshAggregates(billing)
    cache.refresh()
    slow = SlowNotifications(ledger, 0)
    billing.recorder.select_notifications = slow  # type: ignore[method-assign]
    arrival = cache.arrive()
    try:
        cache.refresh(since_arrival=True)  # Authentication.
        cache.refresh(since_arrival=True)  # Usage validation: fresh enough already.
        assert slow.reads == 1
        cache.refresh()  # Without since_arrival: a refresh of its own.
        assert slow.reads == 2
    finally:
        FreshAggregates.leave(arrival)
    cache.refresh(since_arrival=True)  # Outside a request: as fresh as the call.
    assert slow.reads == 3


def test_a_failed_refresh_counts_for_no_one(ledger: Ledger) -> None:
    billing = ledger.billing
    organization, _ = billing.create_organization("acme")
    billing.upsert_customer(organization.id, "c1", {"timezone": "Europe/Paris"})
    cache = FreshAggregates(billing)
    cache.refresh()
    customer_id = ids.customer_id(organization.id, "c1")
    assert cache.get(customer_id).fields["timezone"] == "Europe/Paris"
    billing.upsert_customer(organization.id, "c1", {"timezone": "Asia/Tokyo"})
    select = billing.recorder.select_notifications
    failing = threading.Event()

    def fail_once(*args: Any, **kwargs: Any) -> Any:
        if not failing.is_set():
            failing.set()
            time.sleep(0.1)  # The request below arrives and waits for this refresh.
            raise ConnectionError("the store went away")
        return select(*args, **kwargs)

    billing.recorder.select_notifications = fail_once  # type: ignore[method-assign]
    arrival = cache.arrive()
    try:
        errors: list[BaseException] = []

        def first() -> None:
            try:
                cache.refresh(since_arrival=True)
            except ConnectionError as error:
                errors.append(error)

        failed = threading.Thread(target=first)
        failed.start()
        failing.wait(5)
        cache.refresh(since_arrival=True)  # Not served by the failed one: a refresh of its own.
        failed.join()
    finally:
        FreshAggregates.leave(arrival)
    assert len(errors) == 1
    assert cache.get(customer_id).fields["timezone"] == "Asia/Tokyo"
