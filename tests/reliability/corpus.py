"""R13's corpora: SQLite stores written by a past version of Tally for a seeded workload
(workload.py), committed with the digest of everything they replay to.

A corpus is `corpus/<name>.sqlite` (the whole store: events, usage log, data keys, views) and
`corpus/<name>.json` (how it was made, and its digests). Writing one:

    .venv/bin/python -m tests.reliability.corpus v2

The digest is taken by replaying the written store with the code that wrote it: every
aggregate loaded from its events; the resource index rebuilt from scratch; every subscription
invoice audited (its content hash). tests/reliability/README.md says when to add one.
"""

import dataclasses
import hashlib
import json
import random
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, date, datetime
from decimal import Decimal
from enum import Enum
from pathlib import Path
from typing import Any
from uuid import UUID

from adapters.settings import parse_database_url
from adapters.stores import Ledger, open_ledger
from application.projections import INDEXED, CatchUp, MemoryIndexView, ResourceIndexProjection
from tests.reliability.scenario import open_catalog
from tests.reliability.workload import run_workload

DIRECTORY = Path(__file__).parent / "corpus"
START = datetime(2026, 1, 1, tzinfo=UTC)
SEED = 13
STEPS = 120
DIGESTS = ("aggregates", "index", "audits")
KINDS_SINCE_V1 = frozenset({"add_on"})  # Resource kinds the index gained after corpus v1.


def canonical(value: Any) -> Any:
    """A JSON-able form of any aggregate state, the same in every process."""
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, Decimal):
        return {"$decimal": str(value)}
    if isinstance(value, UUID):
        return str(value)
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, Enum):
        return canonical(value.value)
    if isinstance(value, bytes):
        return value.hex()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {
            "$type": type(value).__qualname__,
            **{f.name: canonical(getattr(value, f.name)) for f in dataclasses.fields(value)},
        }
    if isinstance(value, dict):
        return {"$dict": sorted([json.dumps(canonical(k)), canonical(v)] for k, v in value.items())}
    if isinstance(value, list | tuple):
        return [canonical(item) for item in value]
    if isinstance(value, set | frozenset):
        return sorted((canonical(item) for item in value), key=json.dumps)
    if hasattr(value, "__dict__"):
        return {"$type": type(value).__qualname__, **_object(vars(value))}
    raise TypeError(f"no canonical form for {type(value).__qualname__}")


def _object(state: dict[str, Any]) -> dict[str, Any]:
    return {name: canonical(item) for name, item in sorted(state.items())}


def sha256(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()


def aggregate_ids(ledger: Ledger) -> Iterator[UUID]:
    seen: set[UUID] = set()
    start = 1
    while True:
        notifications = ledger.billing.recorder.select_notifications(start, 1000)
        if not notifications:
            return
        for notification in notifications:
            if notification.originator_id not in seen:
                seen.add(notification.originator_id)
                yield notification.originator_id
        start = notifications[-1].id + 1


def digests(ledger: Ledger) -> dict[str, str]:
    """What a store replays to: the state of every aggregate, the resource index rebuilt from
    the log, and every subscription invoice's audit."""
    billing = ledger.billing
    states = {}
    for aggregate_id in aggregate_ids(ledger):
        aggregate = billing.repository.get(aggregate_id)
        states[str(aggregate_id)] = {
            "$type": type(aggregate).__qualname__,
            **_object({k: v for k, v in vars(aggregate).items() if k not in ("_pending_events",)}),
        }
    projection = ResourceIndexProjection(view=MemoryIndexView())
    CatchUp(billing, projection)()
    view: MemoryIndexView = projection.view  # type: ignore[assignment]
    kinds = sorted({kind for kind, *_ in INDEXED.values()})
    # A kind added since the corpora were written, while it has no resource, is left out: it
    # changes nothing in their index.
    index = {
        kind: found
        for kind in kinds
        if (found := sorted(str(i) for i in view.aggregate_ids_of_kind(kind)))
        or kind not in KINDS_SINCE_V1
    }
    audits = {}
    organizations = {
        state.get("organization_id") for state in states.values() if "organization_id" in state
    }
    for organization_id in sorted(o for o in organizations if o):
        org = UUID(organization_id)
        invoices, _ = ledger.invoicing.invoices(org, 1, 10**6)
        for invoice in invoices:
            if invoice.invoice_type == "subscription":
                audit = ledger.invoicing.audit(org, invoice.id)
                audits[str(invoice.id)] = [audit.matches, audit.content_hash]
    return {"aggregates": sha256(states), "index": sha256(index), "audits": sha256(audits)}


def counts(ledger: Ledger) -> dict[str, int]:
    return {"aggregates": sum(1 for _ in aggregate_ids(ledger))}


def replay(name: str, directory: Path) -> tuple[dict[str, str], dict[str, Any]]:
    """Open a copy of the corpus with this version of the code; its digests and its record."""
    record = json.loads((DIRECTORY / f"{name}.json").read_text())
    copy = directory / f"{name}.sqlite"
    shutil.copyfile(DIRECTORY / f"{name}.sqlite", copy)
    ledger = open_ledger(parse_database_url(f"sqlite:///{copy}"))
    try:
        return digests(ledger), record
    finally:
        ledger.close()


def write(name: str) -> None:
    """Run the seeded workload on a new SQLite store, then record the store and its digests."""
    DIRECTORY.mkdir(exist_ok=True)
    target = DIRECTORY / f"{name}.sqlite"
    work = DIRECTORY / f"{name}.tmp.sqlite"
    for path in (target, work):
        path.unlink(missing_ok=True)
    catalog = open_catalog(
        START,
        intervals=("weekly", "monthly"),
        settings=parse_database_url(f"sqlite:///{work}"),
    )
    moves = run_workload(catalog, random.Random(SEED), STEPS)
    catalog.ledger.close()
    with sqlite3.connect(work) as connection:  # One file, no WAL beside it.
        connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        connection.execute("PRAGMA journal_mode=DELETE")
    with sqlite3.connect(work) as connection:
        connection.execute("VACUUM")
    work.rename(target)
    found, sizes = replay_file(target)
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
    ).stdout.strip()
    record = {
        "name": name,
        "written_by_commit": commit,
        "written_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "workload": {"seed": SEED, "steps": STEPS, "start": START.isoformat()},
        "moves": dict(sorted(moves.items())),
        "aggregates": sizes["aggregates"],
        "digests": found,
    }
    (DIRECTORY / f"{name}.json").write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps(record, indent=2))


def replay_file(path: Path) -> tuple[dict[str, str], dict[str, int]]:
    scratch = path.with_suffix(".replay.sqlite")
    shutil.copyfile(path, scratch)
    ledger = open_ledger(parse_database_url(f"sqlite:///{scratch}"))
    try:
        return digests(ledger), counts(ledger)
    finally:
        ledger.close()
        for leftover in scratch.parent.glob(scratch.name + "*"):
            leftover.unlink()
        scratch.unlink(missing_ok=True)


if __name__ == "__main__":
    write(sys.argv[1] if len(sys.argv) > 1 else "v1")
