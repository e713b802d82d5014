"""Aggregates read on every usage request (subscriptions, metrics, plans, customers, taxes),
cached per process and kept exact.

Ingest validation and current usage read the same few aggregates thousands of times a second,
while they change rarely. Loading each from the event store costs a round trip per aggregate
(a batch of 100 events names up to 100 subscriptions). Here each use first reads the
notifications recorded since the last look, one query that is usually empty, and forgets the
aggregates they name; what is cached is then as fresh as a load would be. Notification ids are
issued in commit order (the library's recorders serialise their inserts), so none is missed.
Cached aggregates are shared: callers only read them, never change or save them.
"""

import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable, Hashable
from contextvars import ContextVar, Token
from typing import Any, Final, TypeVar
from uuid import UUID

from eventsourcing.application import Application

T = TypeVar("T")
NOTIFICATIONS_BATCH: Final = 1_000
CACHED_MAX: Final = 100_000

_instances: "weakref.WeakKeyDictionary[Application[UUID], FreshAggregates]" = (
    weakref.WeakKeyDictionary()
)
_instances_lock = threading.Lock()
# The first refresh to start after the current request arrived (FreshAggregates.arrive).
_ARRIVED: ContextVar[tuple["FreshAggregates", int] | None] = ContextVar(
    "tally_fresh_aggregates_arrived", default=None
)


class FreshAggregates:
    @staticmethod
    def of(app: Application[UUID]) -> "FreshAggregates":
        """The one cache of this application object (shared by its use cases)."""
        with _instances_lock:
            found = _instances.get(app)
            if found is None:
                found = _instances[app] = FreshAggregates(app)
            return found

    def __init__(self, app: Application[UUID], maxsize: int = CACHED_MAX) -> None:
        self.app = app
        self.maxsize = maxsize
        self._lock = threading.Lock()
        self._position: int | None = None  # The last notification id looked at.
        self._aggregates: OrderedDict[UUID, Any] = OrderedDict()
        self._memos: dict[Hashable, tuple[int, Any]] = {}
        # Single flight of refresh(): refreshes started and finished, one running at a time.
        self._flight = threading.Condition()
        self._started = 0
        self._finished = 0
        self._running = False

    def arrive(self) -> Token[tuple["FreshAggregates", int] | None]:
        """Mark a request's arrival in the current context (its worker threads inherit it), for
        refresh(since_arrival=True). Undo with FreshAggregates.leave(token)."""
        with self._flight:
            return _ARRIVED.set((self, self._started + 1))

    @staticmethod
    def leave(token: Token[tuple["FreshAggregates", int] | None]) -> None:
        _ARRIVED.reset(token)

    def refresh(self, *, since_arrival: bool = False) -> None:
        """Forget every aggregate changed since the last refresh (one query, usually empty).

        Concurrent callers share refreshes (single flight): a caller waits for one that
        started after it called (one that started before might miss a change committed just
        before), and the query runs without holding the cache's lock, so readers of cached
        aggregates never wait on the database. With since_arrival, a refresh that started after
        the request arrived (arrive()) is enough: authentication and usage validation, which
        read before they write, then share one refresh per request. A change the client made
        before sending the request is committed by then, so both still see it.
        """
        arrived = _ARRIVED.get() if since_arrival else None
        with self._flight:
            # The first refresh to start after the request arrived, or after this call.
            mine = arrived is not None and arrived[0] is self
            wanted = arrived[1] if arrived is not None and mine else self._started + 1
            while self._finished < wanted:
                if not self._running:
                    self._running = True
                    self._started += 1
                    number = self._started
                    break
                self._flight.wait()
            else:
                return
        refreshed = False
        try:
            self._refresh()
            refreshed = True
        finally:
            with self._flight:
                self._running = False
                if refreshed:  # A failed refresh counts for no one: a waiter starts another.
                    self._finished = number
                self._flight.notify_all()

    def _refresh(self) -> None:
        """One refresh; only one runs at a time, so only it moves the position."""
        if self._position is None:
            position = self.app.recorder.max_notification_id() or 0
            with self._lock:
                self._aggregates.clear()
                self._position = position
            return
        while True:
            notifications = self.app.recorder.select_notifications(
                self._position, NOTIFICATIONS_BATCH, inclusive_of_start=False
            )
            if notifications:
                with self._lock:
                    for notification in notifications:
                        originator_id = notification.originator_id
                        if not isinstance(originator_id, UUID):
                            originator_id = UUID(str(originator_id))
                        self._aggregates.pop(originator_id, None)
                    self._position = notifications[-1].id
            if len(notifications) < NOTIFICATIONS_BATCH:
                return

    def get(self, aggregate_id: UUID) -> Any:
        """The aggregate as of the last refresh or later; raises AggregateNotFoundError."""
        with self._lock:
            found = self._aggregates.get(aggregate_id)
            position = self._position
        if found is not None:
            return found
        loaded: Any = self.app.repository.get(aggregate_id)
        with self._lock:
            # Cache it only if no refresh ran meanwhile: one may have forgotten this aggregate
            # for a change the load did not see.
            if position is not None and self._position == position:
                self._aggregates[aggregate_id] = loaded
                while len(self._aggregates) > self.maxsize:
                    self._aggregates.popitem(last=False)
        return loaded

    def memo(self, key: Hashable, compute: Callable[[], T]) -> T:
        """A value derived from aggregates, computed again after any change is recorded."""
        with self._lock:
            position = self._position
            cached = self._memos.get(key)
        if position is not None and cached is not None and cached[0] == position:
            value: T = cached[1]
            return value
        value = compute()
        if position is not None:
            with self._lock:
                if self._position == position:
                    self._memos[key] = (position, value)
        return value
