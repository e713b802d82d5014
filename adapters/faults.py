"""Seeded fault injection in the store adapter, for the reliability battery (R11, ADR 0024).

`inject(datastore, plan)` wraps one SQLite or PostgreSQL datastore's `transaction()` (and, on
PostgreSQL, `get_connection()`, which the event store's reads use) so that, at points drawn
from one seeded sequence, a transaction:

- `error`: fails before it begins, as a busy store does (SQLite `database is locked`, a
  PostgreSQL pool timeout);
- `drop`: loses its connection after its statements and before its commit: rolled back;
- `slow`: holds its locks for `slow_s` before committing;
- `lost_ack`: commits, then loses its connection before the caller hears so (the ambiguous
  commit: the work is done, the caller sees an error and retries).

Off unless TALLY_FAULTS names a plan (`seed=7,error=0.05,drop=0.05,slow=0.05,slow_s=0.02,
lost_ack=0.02`) or a test calls inject(). The draws follow one seeded sequence in the order
transactions begin, so a single-threaded run replays exactly; a concurrent one replays the same
sequence of faults, dealt to whichever transactions begin in that order.
"""

import random
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from typing import Any, Final

import psycopg
import psycopg_pool

from adapters.settings import SettingsError

KINDS: Final = ("error", "drop", "slow", "lost_ack")


@dataclass(frozen=True)
class FaultPlan:
    seed: int
    error: float = 0.0  # Probabilities per transaction (reads: `error` only).
    drop: float = 0.0
    slow: float = 0.0
    lost_ack: float = 0.0
    slow_s: float = 0.02


class FaultInjector:
    """Draws the faults from the plan's seed and counts what it injected."""

    def __init__(self, plan: FaultPlan) -> None:
        self.plan = plan
        self.armed = True
        self.injected: Counter[str] = Counter()
        self.transactions = 0
        self._rng = random.Random(plan.seed)
        self._lock = threading.Lock()

    def draw(self, write: bool) -> str | None:
        with self._lock:
            self.transactions += 1
            roll = self._rng.random()
            if not self.armed:
                return None
            plan, threshold = self.plan, 0.0
            for kind in KINDS if write else ("error",):
                threshold += getattr(plan, kind)
                if roll < threshold:
                    self.injected[kind] += 1
                    return kind
            return None


def fault_plan_from_env(environ: Mapping[str, str]) -> FaultPlan | None:
    """TALLY_FAULTS=`seed=7,error=0.05,...`; unset or empty: no faults."""
    text = environ.get("TALLY_FAULTS", "").strip()
    if not text:
        return None
    values: dict[str, Any] = {}
    try:
        for item in text.split(","):
            name, _, value = item.partition("=")
            name = name.strip()
            if name == "seed":
                values[name] = int(value)
            elif name in (*KINDS, "slow_s"):
                values[name] = float(value)
                if not 0 <= values[name] <= (60 if name == "slow_s" else 1):
                    raise ValueError(name)
            else:
                raise ValueError(name)
        plan = FaultPlan(**values)
    except (TypeError, ValueError):
        raise SettingsError(
            f"TALLY_FAULTS={text!r}: seed=<int> and any of error, drop, slow, lost_ack "
            "(probabilities from 0 to 1) and slow_s (seconds), comma-separated."
        ) from None
    if sum(getattr(plan, kind) for kind in KINDS) > 1:
        raise SettingsError(f"TALLY_FAULTS={text!r}: the probabilities add up to more than 1.")
    return plan


def inject(datastore: Any, injector: FaultInjector) -> None:
    """Wrap the datastore's transactions (and PostgreSQL's connections) with the injector;
    the in-memory store (no datastore) has none to wrap."""
    if datastore is None:
        return
    postgres = isinstance(getattr(datastore, "pool", None), psycopg_pool.ConnectionPool)
    refused: Callable[[], Exception] = (
        (lambda: psycopg_pool.PoolTimeout("injected: couldn't get a connection after 30.00 sec"))
        if postgres
        else (lambda: sqlite3.OperationalError("database is locked"))
    )
    dropped: Callable[[], Exception] = (
        (lambda: psycopg.OperationalError("injected: server closed the connection unexpectedly"))
        if postgres
        else (lambda: sqlite3.OperationalError("injected: disk I/O error"))
    )
    transaction = datastore.transaction

    @contextmanager
    def faulty_transaction(*, commit: bool = False) -> Iterator[Any]:
        fault = injector.draw(write=commit)
        if fault == "error":
            raise refused()
        with transaction(commit=commit) as cursor:
            yield cursor
            if fault == "drop":
                raise dropped()  # Inside the transaction: it rolls back.
            if fault == "slow":
                time.sleep(injector.plan.slow_s)
        if fault == "lost_ack":
            raise dropped()  # Committed: only the answer is lost.

    datastore.transaction = faulty_transaction
    if postgres:
        get_connection = datastore.get_connection

        def faulty_connection() -> AbstractContextManager[Any]:
            if injector.draw(write=False) == "error":
                raise refused()
            connection: AbstractContextManager[Any] = get_connection()
            return connection

        datastore.get_connection = faulty_connection
