"""The background billing run: every interval, bill every boundary that has passed.

Runs need no lock and no leader. An invoice's id derives from its customer, currency and
boundary, so two runs that race (two `tally serve` processes, a `tally worker` beside them, a
`tally bill` by hand) create the same invoice and the second save collides and reloads it; a
finalization that loses the race for the next number reloads and decides again. So the run may
happen in several processes at once and the result is the same: one invoice per boundary,
numbers without gaps.
"""

import logging
import threading
from collections.abc import Callable, Sequence
from datetime import datetime

from application.invoicing import Invoicing
from domain.invoice import Invoice

logger = logging.getLogger("tally.worker")

BILLING_INTERVAL_S_DEFAULT = 60.0


class BillingWorker:
    """Calls `invoicing.run(now)` at once, then every `interval_s` seconds, until stopped.

    A failed run is logged and retried at the next tick: the run is idempotent, so a retry
    completes what the failed one began.
    """

    def __init__(
        self,
        invoicing: Invoicing,
        interval_s: float = BILLING_INTERVAL_S_DEFAULT,
        *,
        clock: Callable[[], datetime] | None = None,
        before: Sequence[Callable[[datetime], object]] = (),
        after: Sequence[Callable[[datetime], object]] = (),
    ) -> None:
        """before: steps run ahead of each billing run (VAT-number checks), so a decision
        they unblock is used at once; after: steps run on its invoices (payment collection
        and dunning, application/payments.py)."""
        assert interval_s > 0, interval_s
        self.invoicing = invoicing
        self.before = tuple(before)
        self.after = tuple(after)
        self.interval_s = interval_s
        self.clock = clock or invoicing.billing.now
        self.runs = 0  # Completed runs, for tests and logs.
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def run_once(self) -> list[Invoice]:
        now = self.clock()
        for step in self.before:
            step(now)
        invoices = self.invoicing.run(now)
        for step in self.after:
            step(now)
        self.runs += 1
        return invoices

    def run_forever(self) -> None:
        """Run on this thread until stop() is called (from a signal handler or another thread)."""
        while not self._stop.is_set():
            try:
                invoices = self.run_once()
            except Exception:  # Logged and retried next tick: never let the loop die.
                logger.exception("Billing run failed; retrying in %s s", self.interval_s)
            else:
                logger.info("Billing run %d: %d invoices", self.runs, len(invoices))
            self._stop.wait(self.interval_s)

    def start(self) -> None:
        """Run in a daemon thread (beside the HTTP server)."""
        assert self._thread is None, "already started"
        self._thread = threading.Thread(target=self.run_forever, name="billing", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float | None = None) -> None:
        """Ask the loop to end and wait for a run in progress to finish."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
