"""The top-up worker: ongoing balances and threshold top-ups, right after usage is committed.

Metering calls `on_ingest` after each commit of usage; it only enqueues the subscriptions (the
request never waits). One background thread drains the queue, maps subscriptions to customers,
and refreshes each customer once per round (Wallets.refresh: depletion, threshold rules), so an
ingest is reflected in well under a second (§6.4, P6). A second thread runs the periodic sweep
(Wallets.run_due: expiry, interval rules, threshold top-ups held back, pending purchases).

Several processes may run a worker each: every automatic top-up is keyed on (rule, occurrence),
so two workers deciding the same one make the same transaction and one of them loses the save.
"""

import logging
import queue
import threading
from collections.abc import Sequence
from uuid import UUID

from eventsourcing.application import AggregateNotFoundError

from application.fresh_aggregates import FreshAggregates
from application.usage_log import StoredUsage
from application.wallets import Wallets
from domain import ids
from domain.subscription import Subscription

logger = logging.getLogger("tally.top_ups")

SWEEP_S_DEFAULT = 30.0  # Interval rules are due at most this late (Lago checks hourly).
STOP_TIMEOUT_S = 10.0
QUEUE_WAIT_S = 0.5  # How often an idle refresh loop looks at the stop flag.


class TopUpWorker:
    def __init__(self, wallets: Wallets, *, sweep_s: float = SWEEP_S_DEFAULT) -> None:
        assert sweep_s > 0, sweep_s
        self.wallets = wallets
        self.sweep_s = sweep_s
        self.refreshes = 0  # Customers refreshed, for tests and logs.
        self.sweeps = 0
        # Each item: the (organization, subscription) keys of one ingest that were not queued.
        self._queue: queue.Queue[list[tuple[UUID, str]] | None] = queue.Queue()
        self._queued: set[tuple[UUID, str]] = set()
        self._lock = threading.Lock()
        self._customers: dict[tuple[UUID, str], str | None] = {}
        self._aggregates = FreshAggregates.of(wallets.billing)
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def on_ingest(self, organization_id: UUID, stored: Sequence[StoredUsage]) -> None:
        """Metering's observer: enqueue the subscriptions whose usage just changed (one queue
        item per ingest: a batch names many)."""
        subscriptions = {record.event.external_subscription_id for record in stored}
        with self._lock:
            # A key already waiting is left: its refresh will see this usage too.
            keys = [
                key
                for subscription in subscriptions
                if (key := (organization_id, subscription)) not in self._queued
            ]
            self._queued.update(keys)
        if keys:
            self._queue.put(keys)

    def run_once(self, timeout_s: float = 0.0) -> int:
        """Wait up to timeout_s for work, then refresh every customer queued; returns how many."""
        try:
            first = (
                self._queue.get(timeout=timeout_s) if timeout_s > 0 else self._queue.get_nowait()
            )
        except queue.Empty:
            return 0
        items = [first]
        while True:
            try:
                items.append(self._queue.get_nowait())
            except queue.Empty:
                break
        keys = [key for item in items if item is not None for key in item]  # None: stop().
        with self._lock:
            self._queued.difference_update(keys)  # From here on a new ingest queues them again.
        customers: set[tuple[UUID, str]] = set()
        # No refresh of its own: each ingest refreshed the shared cache after its request
        # arrived, so the wallet holders read below include every wallet recorded before the
        # usage was sent (a wallet recorded later counts from the next ingest, or the sweep).
        for key in keys:
            holders = self._wallet_holders(key[0])
            if not holders:
                continue  # No customer of the organization holds a wallet.
            customer = self._customer_of(*key)
            if customer is not None and customer in holders:
                customers.add((key[0], customer))
        for organization_id, external_customer_id in sorted(customers):
            try:
                self.wallets.refresh(organization_id, external_customer_id)
            except Exception:  # Logged; the next ingest or the sweep tries again.
                logger.exception("Wallet refresh of %s failed", external_customer_id)
            self.refreshes += 1
        return len(customers)

    def sweep(self) -> None:
        try:
            self.wallets.run_due()
        except Exception:  # Logged and retried at the next sweep: never let the loop die.
            logger.exception("Wallet sweep failed; retrying in %s s", self.sweep_s)
        self.sweeps += 1

    def run_forever(self) -> None:
        """Refresh customers as their usage arrives, until stopped."""
        while not self._stop.is_set():
            self.run_once(timeout_s=QUEUE_WAIT_S)

    def sweep_forever(self) -> None:
        """The periodic sweep, on its own thread so that it never delays a refresh."""
        while not self._stop.is_set():
            self.sweep()
            self._stop.wait(self.sweep_s)

    def start(self) -> None:
        """Run in two daemon threads (beside the HTTP server); a running worker keeps running."""
        if self._threads and any(thread.is_alive() for thread in self._threads):
            return
        self._stop.clear()
        self._threads = [
            threading.Thread(target=self.run_forever, name="top-ups", daemon=True),
            threading.Thread(target=self.sweep_forever, name="top-up-sweep", daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        """Ask the loops to end and wait for rounds in progress (a lifespan hook: no arguments)."""
        self._stop.set()
        self._queue.put(None)
        for thread in self._threads:
            thread.join(STOP_TIMEOUT_S)

    def _wallet_holders(self, organization_id: UUID) -> frozenset[str]:
        """The organization's customers that have a wallet: the others have nothing to refresh.

        Kept until the next change recorded in the event store (a new wallet is one), so usage
        alone costs no query here.
        """

        def holders() -> frozenset[str]:
            billing = self.wallets.billing
            billing.catch_up()  # The index holds every wallet recorded so far.
            found, _ = billing.index.view.page(organization_id, "wallet", 1, 10**9)
            return frozenset(
                self._aggregates.get(wallet_id).external_customer_id for wallet_id in found
            )

        return self._aggregates.memo(("wallet_holders", organization_id), holders)

    def _customer_of(self, organization_id: UUID, external_subscription_id: str) -> str | None:
        """A subscription's customer (it never changes, so it is cached)."""
        key = (organization_id, external_subscription_id)
        if key not in self._customers:
            try:
                subscription: Subscription = self.wallets.billing.repository.get(
                    ids.subscription_id(organization_id, external_subscription_id)
                )
            except AggregateNotFoundError:
                return None
            self._customers[key] = subscription.external_customer_id
        return self._customers[key]
