"""R6, replay determinism: after a seeded workload over the whole application (workload.py)
on each store, every projection rebuilt from the event log gives what the live one gives:

- the resource index, (a) rebuilt from scratch, (b) resumed from the checkpoint a crash left
  midway, (d) with other catch-up batch sizes; compared through every list it answers;
- the webhook outbox (messages, their ids, order and rendered payloads);
- the finance journal when present (ADR 0019): its rows, and every transaction balanced;
- the usage rollups against the raw usage log;
- every invoice's audit: recomputed from the plan versions and the log, it matches.

Each comparison is an ordered SHA-256 digest. Fast tier: 120 workload steps on SQLite; deep:
240 on SQLite and PostgreSQL. TALLY_SEED=<n> replays the workload.
"""

import hashlib
import json
import random
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any
from uuid import UUID

import pytest

import application.projections as projections
from adapters.outbox import MemoryOutbox
from adapters.settings import Settings
from api.webhook_payloads import WebhookPayloads
from application.projections import CatchUp, IndexView, MemoryIndexView, ResourceIndexProjection
from application.webhooks import OutboxView, WebhookOutboxProjection
from domain.usage import combine, rollup_of_value
from tests.reliability.battery import report, seed, tier
from tests.reliability.scenario import Catalog, open_catalog
from tests.reliability.workload import CUSTOMERS, run_workload

pytestmark = pytest.mark.reliability

STEPS = tier(120, 240)  # Runs re-read every boundary since the start: cost grows fast.
START = datetime(2026, 1, 1, tzinfo=UTC)
KINDS = sorted({kind for kind, *_ in projections.INDEXED.values()})
STATUSES = sorted(
    {"active", "deleted", "draft", "finalized", "voided", "available", "consumed", "terminated"}
)


class Crash(BaseException):
    """A projection runner killed midway (not an Exception: nothing may catch it)."""


def digest(rows: Any) -> str:
    encoded = json.dumps(rows, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(encoded.encode()).hexdigest()


def index_answers(view: IndexView, organization_id: UUID) -> list[Any]:
    """Everything the index answers the API: each kind's list, by status and by customer."""
    answers: list[Any] = [[str(i) for i in view.aggregate_ids_of_kind(k)] for k in KINDS]
    for kind in KINDS:
        answers.append(view.page(organization_id, kind, 1, 10**6))
        for status in STATUSES:
            answers.append(view.page(organization_id, kind, 1, 10**6, statuses=[status]))
        for customer in CUSTOMERS:
            answers.append(view.page(organization_id, kind, 1, 10**6, parent_key=customer))
    return answers


def outbox_answers(view: OutboxView, organization_id: UUID) -> list[Any]:
    messages, total = view.page(organization_id, [], 1, 10**6)
    return [
        [(r.endpoint_id, r.webhook_url, r.event_types) for r in view.routes(organization_id)],
        total,
        [
            (
                m.id,
                m.endpoint_id,
                m.webhook_type,
                m.object_type,
                m.object_id,
                m.position,
                m.ordinal,
                json.loads(m.payload),
                m.status,
                m.attempts,
                m.next_attempt_at.astimezone(UTC),
                m.created_at.astimezone(UTC),
            )
            for m in messages
        ],
    ]


def rebuilt_index(catalog: Catalog, crash_after: int | None, batch: int) -> MemoryIndexView:
    """A fresh index caught up from the log, in batches of `batch`; with crash_after, killed
    while applying the batch that holds that event (a batch is one transaction: none of it
    is applied), then resumed from the position it recorded."""
    projection = ResourceIndexProjection(view=MemoryIndexView())
    process_batch = projection.process_batch
    applied = 0

    def dying(domain_events: Any, tracking: Any) -> None:
        nonlocal applied
        before, applied = applied, applied + len(domain_events)
        if crash_after is not None and before < crash_after <= applied:
            raise Crash()
        process_batch(domain_events, tracking)

    projection.process_batch = dying  # type: ignore[method-assign]
    default_batch = projections.CATCH_UP_BATCH
    projections.CATCH_UP_BATCH = batch
    try:
        try:
            CatchUp(catalog.ledger.billing, projection)()
        except Crash:
            assert crash_after is not None
        CatchUp(catalog.ledger.billing, projection)()  # A new runner resumes.
    finally:
        projections.CATCH_UP_BATCH = default_batch
    return projection.view  # type: ignore[return-value]


def usage_mismatches(catalog: Catalog) -> int:
    """Rollup totals against the raw events, per subscription, over the whole year."""
    ledger, org = catalog.ledger, catalog.org
    start, end = START - timedelta(days=60), catalog.now + timedelta(days=1)
    start = start.replace(hour=0, minute=0, second=0)
    end = end.replace(hour=0, minute=0, second=0, microsecond=0)
    records, _ = ledger.usage.page(org, 1, 10**6)
    mismatches = 0
    for subscription in sorted({r.event.external_subscription_id for r in records}):
        from_rollups = ledger.usage.totals(org, subscription, "calls", start, end)
        events = ledger.usage.events(org, subscription, "calls", start, end)
        raw = combine(rollup_of_value(e.event.timestamp, e.value) for e in events)
        rolled = combine(t.rollup for t in from_rollups)
        mismatches += int((rolled.count, rolled.sum) != (raw.count, raw.sum))
    return mismatches


@pytest.fixture
def workload(store_settings: Settings) -> Any:
    base = seed()
    catalog = open_catalog(START, intervals=("weekly", "monthly"), settings=store_settings)
    render = WebhookPayloads("http://tally.test/")
    catalog.webhooks = catalog.ledger.open_webhooks(render)
    began = datetime.now(UTC)
    counts = run_workload(catalog, random.Random(base), STEPS, on_step=catalog.webhooks.catch_up)
    catalog.webhooks.catch_up()
    elapsed_s = (datetime.now(UTC) - began).total_seconds()
    yield catalog, render, base, counts, elapsed_s
    catalog.ledger.close()


@pytest.mark.parametrize(
    "store_settings", tier(["sqlite"], ["sqlite", "postgres"]), indirect=True
)  # On PostgreSQL the workload takes ~40 s: deep tier.
def test_every_projection_rebuilt_from_the_log_equals_the_live_one(workload: Any) -> None:
    catalog, render, base, counts, _ = workload
    billing, org = catalog.ledger.billing, catalog.org
    figures: Counter[str] = Counter()
    compared: list[str] = []

    def compare(name: str, live: Callable[[], Any], rebuilt: Any) -> None:
        compared.append(name)
        if digest(live()) != digest(rebuilt):
            figures["digest_mismatches"] += 1
            figures[f"mismatch:{name}"] += 1

    # The resource index: from scratch, from a crash's checkpoint, other batch sizes.
    billing.catch_up()
    live_index = index_answers(billing.index.view, org)
    notifications = billing.recorder.max_notification_id() or 0
    began = datetime.now(UTC)
    fresh = rebuilt_index(catalog, None, projections.CATCH_UP_BATCH)
    rebuild_s = (datetime.now(UTC) - began).total_seconds()
    compare("index", lambda: live_index, index_answers(fresh, org))
    rng = random.Random(base)
    for batch in (1, 7):
        resumed = rebuilt_index(catalog, rng.randrange(1, 200), batch)
        compare(f"index_checkpoint_batch_{batch}", lambda: live_index, index_answers(resumed, org))

    # The webhook outbox, rendered again from the log.
    outbox = MemoryOutbox()
    CatchUp(billing, WebhookOutboxProjection(outbox, billing, render))()
    compare(
        "outbox", lambda: outbox_answers(catalog.webhooks.outbox, org), outbox_answers(outbox, org)
    )

    # The journal, when this build has one.
    journal = getattr(catalog.ledger, "journal", None)
    if journal is not None:
        from application.journal import JournalProjection, MemoryJournalView, RowFilter

        live_rows = journal.rows(RowFilter())
        view = MemoryJournalView()
        CatchUp(billing, JournalProjection(view, billing))()
        compare("journal", lambda: live_rows, view.rows(RowFilter()))
        compare("journal_invoices", lambda: journal.view.invoices(None), view.invoices(None))
        journal.rebuild()  # The live tables themselves, cleared and posted again.
        compare("journal_rebuilt_in_place", lambda: live_rows, journal.rows(RowFilter()))
        balance: Counter[str] = Counter()
        for row in live_rows:
            balance[row.transaction_id] += row.debit_cents - row.credit_cents
        figures["unbalanced_transactions"] += sum(1 for cents in balance.values() if cents)

    # Usage rollups against the raw log, and every invoice's audit.
    figures["usage_mismatches"] += usage_mismatches(catalog)
    invoices = catalog.invoices()
    for invoice in invoices:
        if invoice.invoice_type == "subscription":
            figures["audit_mismatches"] += int(
                not catalog.ledger.invoicing.audit(org, invoice.id).matches
            )

    mismatched = sorted(k for k in figures if k.startswith("mismatch:"))
    passed = report(
        "R6",
        f"replay_determinism[{catalog.ledger.settings.store}]",
        seed=base,
        runs=len(compared),
        failures={
            "digest_mismatches": figures["digest_mismatches"],
            "audit_mismatches": figures["audit_mismatches"],
            "usage_mismatches": figures["usage_mismatches"],
            "unbalanced_transactions": figures["unbalanced_transactions"],
        },
        views=",".join(compared),
        events=notifications,
        invoices=len(invoices),
        usage_events=counts["events"],
        refused_commands=counts["refused"],
        rebuild_events_per_s=round(notifications / max(rebuild_s, 1e-6)),
    )
    assert passed, (base, mismatched)
    # The workload did what it is for.
    assert counts["bill"] and counts["credit_note"] and counts["ingest"], counts
    assert Decimal(len(invoices)) > 0
