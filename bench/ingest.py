"""Usage ingest at the store: Tally's usage log against a raw deduplicating insert, same run.

PostgreSQL (TALLY_BENCH_DATABASE_URL, default postgresql://postgres@127.0.0.1:5432/test), in a
fresh schema dropped at the end:
- candidate: PostgresUsageLog.append, 100-event batches of random-UUID transaction ids, one
  connection (and, for information, 4 connections sharing the log);
- baseline: psycopg binary COPY → temp table → INSERT … ON CONFLICT DO NOTHING, 10,000 rows per
  transaction, into a table of the same shape without rollups (performance-and-reliability.md
  §4, P1);
- P3: the same batches appended again, all duplicates, against the fresh figure.
SQLite: SQLiteUsageLog.append against a raw executemany insert of the same rows.

Runs are interleaved (A/B, then B/A), each on empty tables; medians with min and max. It prints
numbers and asserts nothing.
"""

import argparse
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import psycopg
from common import cpu_model
from eventsourcing.postgres import PostgresDatastore
from eventsourcing.sqlite import SQLiteDatastore

from adapters.settings import parse_database_url
from adapters.usage_postgres import PostgresUsageLog, input_values
from adapters.usage_sqlite import SQLiteUsageLog
from application.usage_log import StoredUsage, dimensions_text
from domain.usage import UsageEvent, dimension_key, payload_fingerprint

DEFAULT_URL = "postgresql://postgres@127.0.0.1:5432/test"
START = datetime(2026, 6, 1, tzinfo=UTC)
BATCH = 100  # Lago's largest batch.
RAW_CHUNK = 10_000
COLUMNS = (
    "organization_id, external_subscription_id, transaction_id, code, timestamp, "
    "timestamp_given, properties, precise_total_amount_cents, value, dimensions, fingerprint, "
    "received_at"
)
COPY_TYPES = [
    "uuid",
    "text",
    "text",
    "text",
    "timestamptz",
    "bool",
    "jsonb",
    "numeric",
    "numeric",
    "text",
    "text",
    "timestamptz",
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=50_000, help="events per run (50,000)")
    parser.add_argument("--sqlite-events", type=int, default=20_000, help="SQLite (20,000)")
    parser.add_argument("--repetitions", type=int, default=5, help="interleaved runs (5)")
    parser.add_argument("--subscriptions", type=int, default=200, help="subscriptions (200)")
    parser.add_argument("--seed", type=int, default=1, help="dataset seed (1)")
    args = parser.parse_args()
    url = os.environ.get("TALLY_BENCH_DATABASE_URL", DEFAULT_URL)

    events = dataset(args.events, args.subscriptions, args.seed)
    header(url, args)
    postgres(url, events, args.repetitions)
    sqlite(events[: args.sqlite_events], args.repetitions)


def dataset(count: int, subscriptions: int, seed: int) -> list[StoredUsage]:
    """Token events of one organization: random subscriptions, models and values, random UUID
    transaction ids, timestamps advancing through one hour (4 rollup buckets), as live traffic."""
    rng = random.Random(seed)
    organization_id = uuid.UUID(int=rng.getrandbits(128), version=4)
    received_at = START + timedelta(hours=1)
    events = []
    for n in range(count):
        properties = {
            "tokens": str(Decimal(rng.randrange(1, 10**7)) / 1000),
            "model": rng.choice(["large", "small"]),
        }
        event = UsageEvent(
            organization_id=organization_id,
            external_subscription_id=f"sub_{rng.randrange(subscriptions)}",
            transaction_id=str(uuid.UUID(int=rng.getrandbits(128), version=4)),
            code="tokens",
            timestamp=START + timedelta(microseconds=n * 3_600_000_000 // count),
            properties=properties,
            precise_total_amount_cents=None,
        )
        events.append(
            StoredUsage(
                event=event,
                value=Decimal(properties["tokens"]),
                dimensions=dimension_key(properties, ["model"]),
                fingerprint=payload_fingerprint(event),
                received_at=received_at,
            )
        )
    return events


def batches(events: Sequence[StoredUsage], size: int) -> list[Sequence[StoredUsage]]:
    return [events[n : n + size] for n in range(0, len(events), size)]


def rate(count: int, action: Callable[..., None], *args: object) -> float:
    started = time.perf_counter()
    action(*args)
    return count / (time.perf_counter() - started)


# --- PostgreSQL -------------------------------------------------------------------------------


def postgres(url: str, events: list[StoredUsage], repetitions: int) -> None:
    schema = f"bench_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(url, autocommit=True) as admin:
        admin.execute(f"CREATE SCHEMA {schema}")
    env = parse_database_url(url).eventsourcing_env
    datastore = PostgresDatastore(
        env["POSTGRES_DBNAME"],
        env["POSTGRES_HOST"],
        env["POSTGRES_PORT"],
        env["POSTGRES_USER"],
        env["POSTGRES_PASSWORD"],
        pool_size=4,
        schema=schema,
    )
    try:
        log = PostgresUsageLog(datastore)
        runs: dict[str, list[float]] = {
            "candidate": [],
            "duplicates": [],
            "candidate_4": [],
            "baseline": [],
        }
        for repetition in range(repetitions):
            order = ["candidate", "baseline"] if repetition % 2 == 0 else ["baseline", "candidate"]
            for which in order:
                if which == "candidate":
                    truncate(url, schema)
                    runs["candidate"].append(rate(len(events), append_all, log, events))
                    runs["duplicates"].append(rate(len(events), append_all, log, events))
                    truncate(url, schema)
                    runs["candidate_4"].append(rate(len(events), append_threads, log, events, 4))
                else:
                    runs["baseline"].append(raw_copy(url, schema, events))
        print("\nPostgreSQL, events/s (median [min–max]):")
        show("candidate: PostgresUsageLog.append, 100/batch, 1 connection", runs["candidate"])
        show("baseline: binary COPY → temp → INSERT ON CONFLICT, 10k/txn", runs["baseline"])
        show("P3 duplicates: the same batches appended again", runs["duplicates"])
        show("candidate with 4 connections (no lock: xid positions)", runs["candidate_4"])
        ratio("P1 (store level) candidate / baseline", runs["candidate"], runs["baseline"], 0.35)
        ratio("P3 duplicates / fresh", runs["duplicates"], runs["candidate"], 1.0)
        ratio("4 connections / 1 connection", runs["candidate_4"], runs["candidate"], None)
    finally:
        datastore.close()
        with psycopg.connect(url, autocommit=True) as admin:
            admin.execute(f"DROP SCHEMA {schema} CASCADE")


def append_all(log: PostgresUsageLog | SQLiteUsageLog, events: Sequence[StoredUsage]) -> None:
    for batch in batches(events, BATCH):
        log.append(batch)


def append_threads(log: PostgresUsageLog, events: Sequence[StoredUsage], threads: int) -> None:
    shares = batches(batches(events, BATCH), -(-len(events) // BATCH // threads))
    workers = [
        threading.Thread(target=lambda share=share: [log.append(b) for b in share])
        for share in shares
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()


def truncate(url: str, schema: str) -> None:
    with psycopg.connect(url, autocommit=True) as connection:
        connection.execute(
            f"TRUNCATE {schema}.usage_events, {schema}.usage_rollups RESTART IDENTITY"
        )
        connection.execute(f"VACUUM ANALYZE {schema}.usage_events")


def raw_copy(url: str, schema: str, events: Sequence[StoredUsage]) -> float:
    """The deduplicating raw path into a fresh table shaped like usage_events."""
    table = f"{schema}.raw_events"
    with psycopg.connect(url, autocommit=True) as connection:
        connection.execute(f"DROP TABLE IF EXISTS {table}")
        connection.execute(
            f"CREATE TABLE {table} (LIKE {schema}.usage_events INCLUDING ALL)"
        )  # Same columns, identity, key and index.
        rows = [copy_row(usage) for usage in events]
        started = time.perf_counter()
        for chunk in range(0, len(rows), RAW_CHUNK):
            with connection.transaction():
                connection.execute(
                    f"CREATE TEMP TABLE staging ON COMMIT DROP AS SELECT {COLUMNS} FROM {table} "
                    "WITH NO DATA"
                )
                with connection.cursor().copy(
                    f"COPY staging ({COLUMNS}) FROM STDIN (FORMAT BINARY)"
                ) as copy:
                    copy.set_types(COPY_TYPES)
                    for row in rows[chunk : chunk + RAW_CHUNK]:
                        copy.write_row(row)
                connection.execute(
                    f"INSERT INTO {table} ({COLUMNS}) SELECT {COLUMNS} FROM staging "
                    "ON CONFLICT DO NOTHING"
                )
        elapsed = time.perf_counter() - started
    return len(rows) / elapsed


def copy_row(usage: StoredUsage) -> tuple[object, ...]:
    return input_values(usage)  # What the store writes of it, in COPY_TYPES' order.


# --- SQLite -----------------------------------------------------------------------------------


def sqlite(events: list[StoredUsage], repetitions: int) -> None:
    runs: dict[str, list[float]] = {"candidate": [], "duplicates": [], "baseline": []}
    with tempfile.TemporaryDirectory() as directory:
        for repetition in range(repetitions):
            order = ["candidate", "baseline"] if repetition % 2 == 0 else ["baseline", "candidate"]
            for which in order:
                path = Path(directory) / f"{which}_{repetition}.db"
                datastore = SQLiteDatastore(str(path), lock_timeout=10)
                try:
                    log = SQLiteUsageLog(datastore)
                    if which == "candidate":
                        runs["candidate"].append(rate(len(events), append_all, log, events))
                        runs["duplicates"].append(rate(len(events), append_all, log, events))
                    else:
                        runs["baseline"].append(raw_sqlite(datastore, events))
                finally:
                    datastore.close()
    print(f"\nSQLite (WAL, file in {tempfile.gettempdir()}), events/s (median [min–max]):")
    show("candidate: SQLiteUsageLog.append, 100/batch", runs["candidate"])
    show("baseline: executemany INSERT ON CONFLICT DO NOTHING, 10k/txn", runs["baseline"])
    show("duplicates: the same batches appended again", runs["duplicates"])
    ratio("candidate / baseline", runs["candidate"], runs["baseline"], None)
    ratio("duplicates / fresh", runs["duplicates"], runs["candidate"], None)


def raw_sqlite(datastore: SQLiteDatastore, events: Sequence[StoredUsage]) -> float:
    """Plain rows into a table shaped like usage_events (created by SQLiteUsageLog)."""
    rows = [
        (
            str(usage.event.organization_id),
            usage.event.external_subscription_id,
            usage.event.transaction_id,
            usage.event.code,
            usage.event.timestamp.isoformat(),
            usage.event.timestamp_given,
            json.dumps(dict(usage.event.properties)),
            None,
            str(usage.value),
            dimensions_text(usage.dimensions),
            usage.fingerprint,
            usage.received_at.isoformat(),
        )
        for usage in events
    ]
    started = time.perf_counter()
    for chunk in range(0, len(rows), RAW_CHUNK):
        with datastore.transaction(commit=True) as c:
            c.executemany(
                f"INSERT INTO usage_events ({COLUMNS}) VALUES "
                "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                rows[chunk : chunk + RAW_CHUNK],
            )
    return len(rows) / (time.perf_counter() - started)


# --- Report -----------------------------------------------------------------------------------


def header(url: str, args: argparse.Namespace) -> None:
    with psycopg.connect(url) as connection:
        settings = {
            name: connection.execute(f"SHOW {name}").fetchone()[0]
            for name in ("server_version", "fsync", "synchronous_commit", "shared_buffers")
        }
    sha = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
    ).stdout.strip()
    print(
        f"bench/ingest.py · git {sha or '?'} (plus working tree) · {cpu_model()} · "
        f"{os.cpu_count()} cores · Python {platform.python_version()} · "
        f"psycopg {psycopg.__version__} ({psycopg.pq.__impl__})"
    )
    print(
        "PostgreSQL "
        + ", ".join(f"{name}={value}" for name, value in settings.items())
        + " · client and server share the machine"
    )
    print(
        f"dataset: {args.events} events (SQLite {args.sqlite_events}), seed {args.seed}, "
        f"{args.subscriptions} subscriptions × 2 models, 4 buckets, random UUID transaction ids; "
        f"{args.repetitions} interleaved repetitions"
    )


def show(label: str, values: list[float]) -> None:
    print(
        f"  {label:<66} {statistics.median(values):>9,.0f}  [{min(values):,.0f}–{max(values):,.0f}]"
    )


def ratio(label: str, candidate: list[float], baseline: list[float], goal: float | None) -> None:
    value = statistics.median(candidate) / statistics.median(baseline)
    target = "" if goal is None else f"  (goal ≥ {goal:.2f})"
    print(f"  ratio {label}: {value:.2f}{target}")


if __name__ == "__main__":
    main()
    sys.exit(0)
