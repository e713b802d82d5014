"""Usage ingest through HTTP: `tally serve` against raw psycopg, measured in the same run.

One command (`.venv/bin/python bench/ingest_http.py`, `--quick` for a short run): in a fresh
PostgreSQL database it creates and drops (next to TALLY_BENCH_DATABASE_URL, default
postgresql://postgres@127.0.0.1:5432/test), it starts `tally serve --workers N` on a free port,
creates an organization, a metric, a plan and subscriptions through the API, and measures
(performance-and-reliability.md §1, §4):

- P1 batch ingest: 16 keep-alive connections post batches of 100 events with random UUID
  transaction ids; acknowledged (2xx, after commit) events per second, against the raw
  deduplicating path on the same rows: binary COPY → staging table → INSERT … ON CONFLICT DO
  NOTHING, 10,000 rows per transaction, into a table shaped and indexed like usage_events.
  Candidate and baseline interleave (A/B, then B/A), each on empty tables; medians, min, max.
- P3 duplicates: the same events posted again (all already stored) against the fresh figure.
- P2 single-event POST latency: the closed-loop maximum rate of single-event POSTs, then an
  open loop at half that rate; latency counts from each request's scheduled time.
- P5 current usage: one subscription with 1,000,000 events in its current period (appended
  through the store, 1,000 per batch); GET current_usage p50/p99 against the raw SQL SUM of the
  same rows, and against the prepared SUM over the same rollup rows. Both must agree.

The load client is a separate process (asyncio, raw sockets, HTTP/1.1 keep-alive) pinned to
the last core; client, server and PostgreSQL share the machine. It prints a Markdown table and
writes bench/results/ingest_http-<time>.json; it asserts nothing but agreement of the sums.
"""

import argparse
import asyncio
import json
import os
import platform
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from multiprocessing import get_context
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
import msgspec
import psycopg

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from common import cpu_model, percentiles  # noqa: E402

from adapters.settings import parse_database_url  # noqa: E402
from adapters.usage_postgres import input_values  # noqa: E402
from application.usage_log import StoredUsage  # noqa: E402
from domain.usage import UsageEvent, dimension_key, payload_fingerprint  # noqa: E402

DEFAULT_URL = "postgresql://postgres@127.0.0.1:5432/test"
BATCH = 100
RAW_CHUNK = 10_000
MODELS = ("large", "small")
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


@dataclass(frozen=True)
class Config:
    events: int
    repetitions: int
    workers: int
    connections: int
    subscriptions: int
    hot_events: int
    latency_seconds: float
    usage_samples: int
    raw_samples: int
    seed: int
    quick: bool


@dataclass(frozen=True)
class Target:
    host: str
    port: int
    api_key: str


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a short run (about a minute)")
    parser.add_argument("--events", type=int, help="events per P1 run (100,000; quick 20,000)")
    parser.add_argument("--repetitions", type=int, help="interleaved P1/P3 runs (5; quick 2)")
    parser.add_argument("--workers", type=int, default=2, help="tally serve --workers (2)")
    parser.add_argument("--connections", type=int, default=16, help="client connections (16)")
    parser.add_argument("--subscriptions", type=int, default=200, help="subscriptions (200)")
    parser.add_argument(
        "--hot-events", type=int, help="events of the P5 subscription (1,000,000; quick 100,000)"
    )
    parser.add_argument("--latency-seconds", type=float, help="P2 open-loop seconds (10; quick 3)")
    parser.add_argument("--usage-samples", type=int, help="current_usage requests (500; quick 100)")
    parser.add_argument("--raw-samples", type=int, help="raw SUM queries (10; quick 3)")
    parser.add_argument("--seed", type=int, default=1, help="dataset seed (1)")
    args = parser.parse_args()
    quick = args.quick

    def pick(value: Any, default: Any, fast: Any) -> Any:
        return value if value is not None else (fast if quick else default)

    config = Config(
        events=pick(args.events, 100_000, 20_000),
        repetitions=pick(args.repetitions, 5, 2),
        workers=args.workers,
        connections=args.connections,
        subscriptions=args.subscriptions,
        hot_events=pick(args.hot_events, 1_000_000, 100_000),
        latency_seconds=pick(args.latency_seconds, 10.0, 3.0),
        usage_samples=pick(args.usage_samples, 500, 100),
        raw_samples=pick(args.raw_samples, 10, 3),
        seed=args.seed,
        quick=quick,
    )
    admin_url = os.environ.get("TALLY_BENCH_DATABASE_URL", DEFAULT_URL)
    started = time.perf_counter()
    results = Bench(admin_url, config).run()
    results["wall_seconds"] = round(time.perf_counter() - started, 1)
    report(results)


# --- The bench --------------------------------------------------------------------------------


class Bench:
    def __init__(self, admin_url: str, config: Config) -> None:
        self.admin_url = admin_url
        self.config = config
        self.database = f"bench_http_{uuid.uuid4().hex[:10]}"
        parts = urlsplit(admin_url)
        self.url = urlunsplit(parts._replace(path=f"/{self.database}", query=""))
        self.now = datetime.now(UTC).replace(microsecond=0)
        self.period_start = self.now.replace(day=1, hour=0, minute=0, second=0)
        # P1 events fall in the last two hours of the current period (never in the future).
        self.window = (
            max(self.period_start, self.now - timedelta(hours=2)),
            self.now - timedelta(seconds=30),
        )
        self.server: subprocess.Popen[bytes] | None = None
        self.directory = tempfile.TemporaryDirectory(prefix="tally-bench-")

    def run(self) -> dict[str, Any]:
        with psycopg.connect(self.admin_url, autocommit=True) as admin:
            admin.execute(f"CREATE DATABASE {self.database}")
        try:
            return self._run()
        finally:
            self._stop_server()
            with psycopg.connect(self.admin_url, autocommit=True) as admin:
                admin.execute(f"DROP DATABASE IF EXISTS {self.database} WITH (FORCE)")
            self.directory.cleanup()

    def _run(self) -> dict[str, Any]:
        config = self.config
        env = {**os.environ, "TALLY_DATABASE_URL": self.url}
        created = subprocess.run(
            [sys.executable, "-m", "api.cli", "org", "create", "bench"],
            env=env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=False,
        )
        if created.returncode != 0:
            raise RuntimeError(f"tally org create failed:\n{created.stdout}{created.stderr}")
        lines = created.stdout.strip().splitlines()
        api_key = lines[-1]
        # "Created organization 'bench' (<id>). API key:"
        organization_id = uuid.UUID(lines[-2].split("(", 1)[1].split(")", 1)[0])
        port = free_port()
        log = Path(self.directory.name) / "server.log"
        self.server = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "api.cli",
                "serve",
                "--port",
                str(port),
                "--workers",
                str(config.workers),
            ],
            env=env,
            cwd=self.directory.name,
            stdout=log.open("w"),
            stderr=subprocess.STDOUT,
            start_new_session=True,  # Its workers are stopped with it, as one process group.
        )
        wait_until_serving(port, api_key, self.server, log)
        self._catalog(port, api_key)
        target = Target("127.0.0.1", port, api_key)
        results: dict[str, Any] = {"environment": environment(self.url, config)}
        print(results["environment"]["summary"], flush=True)

        batches = event_dicts(config.seed, config.events, config.subscriptions, self.window)
        raw_rows = [copy_row(usage) for usage in stored_usage(organization_id, batches)]
        runs: dict[str, list[float]] = {"fresh": [], "duplicates": [], "baseline": []}
        batch_latency: list[dict[str, float]] = []
        duplicate_count = min(config.events, 100_000)
        context = get_context("spawn")
        with ProcessPoolExecutor(1, mp_context=context, initializer=pin_to_last_core) as client:
            # Warm-up: every worker answers, connections and plans are made, then forgotten.
            warm = event_dicts(config.seed + 1, 2_000, config.subscriptions, self.window)
            client.submit(post_batches, target, warm, config.connections).result()
            for repetition in range(config.repetitions):
                order = ["candidate", "baseline"]
                if repetition % 2:
                    order.reverse()
                for which in order:
                    if which == "candidate":
                        self._empty_tables()
                        fresh = client.submit(
                            post_batches, target, batches, config.connections
                        ).result()
                        again = client.submit(
                            post_batches, target, batches[:duplicate_count], config.connections
                        ).result()
                        check_all_acknowledged(fresh, again)
                        runs["fresh"].append(fresh["events_per_s"])
                        runs["duplicates"].append(again["events_per_s"])
                        batch_latency.append(fresh["latency_ms"])
                        self._check_stored(config.events)
                    else:
                        runs["baseline"].append(raw_copy(self.url, raw_rows))
                print(
                    f"  repetition {repetition + 1}/{config.repetitions}: "
                    f"fresh {runs['fresh'][-1]:,.0f}/s, duplicates {runs['duplicates'][-1]:,.0f}"
                    f"/s, raw {runs['baseline'][-1]:,.0f}/s",
                    flush=True,
                )
            results["p1"] = {
                "candidate_events_per_s": runs["fresh"],
                "baseline_events_per_s": runs["baseline"],
                "ratio": ratio(runs["fresh"], runs["baseline"]),
                "gate": 0.35,
                "request_latency_ms": {
                    "p50": statistics.median(x["p50"] for x in batch_latency),
                    "p99": statistics.median(x["p99"] for x in batch_latency),
                },
            }
            results["p3"] = {
                "events": duplicate_count,
                "duplicates_events_per_s": runs["duplicates"],
                "fresh_events_per_s": runs["fresh"],
                "ratio": ratio(runs["duplicates"], runs["fresh"]),
                "gate": 1.0,
            }
            # P2: the closed-loop maximum of single-event POSTs, then half of it, open loop.
            singles = event_dicts(config.seed + 2, 200_000, config.subscriptions, self.window)
            flat = [event for batch in singles for event in batch]
            closed = client.submit(
                post_singles_closed, target, flat[:100_000], 32, config.latency_seconds / 2
            ).result()
            rate = closed["requests_per_s"] / 2
            opened = client.submit(
                post_singles_open, target, flat[100_000:], 32, rate, config.latency_seconds
            ).result()
            results["p2"] = {
                "max_requests_per_s": closed["requests_per_s"],
                "max_latency_ms": closed["latency_ms"],
                "offered_requests_per_s": rate,
                "achieved_requests_per_s": opened["requests_per_s"],
                "latency_ms": opened["latency_ms"],
                "errors": closed["errors"] + opened["errors"],
            }
            print(
                f"  P2: max {closed['requests_per_s']:,.0f} single POSTs/s; at {rate:,.0f}/s "
                f"p50 {opened['latency_ms']['p50']:.2f} ms, p99 {opened['latency_ms']['p99']:.2f}"
                " ms",
                flush=True,
            )
            results["p5"] = self._current_usage(client, target, organization_id)
        return results

    # Setup through the API.

    def _catalog(self, port: int, api_key: str) -> None:
        base = f"http://127.0.0.1:{port}/api/v1"
        headers = {"Authorization": f"Bearer {api_key}"}
        with httpx.Client(base_url=base, headers=headers, timeout=30) as http:
            metric = http.post(
                "/billable_metrics",
                json={
                    "billable_metric": {
                        "name": "Tokens",
                        "code": "tokens",
                        "aggregation_type": "sum_agg",
                        "field_name": "tokens",
                        "filters": [{"key": "model", "values": list(MODELS)}],
                    }
                },
            )
            metric.raise_for_status()
            plan = http.post(
                "/plans",
                json={
                    "plan": {
                        "name": "Tokens",
                        "code": "tokens",
                        "interval": "monthly",
                        "amount_cents": 0,
                        "amount_currency": "USD",
                        "pay_in_advance": False,
                        "charges": [
                            {
                                "billable_metric_id": metric.json()["billable_metric"]["lago_id"],
                                "charge_model": "standard",
                                "properties": {"amount": "0.000003"},
                                "filters": [
                                    {
                                        "values": {"model": ["large"]},
                                        "properties": {"amount": "0.00001"},
                                    }
                                ],
                            }
                        ],
                    }
                },
            )
            plan.raise_for_status()
            names = [f"sub_{n}" for n in range(self.config.subscriptions)] + ["sub_hot"]
            for name in names:
                response = http.post(
                    "/subscriptions",
                    json={
                        "subscription": {
                            "external_customer_id": name.replace("sub_", "cus_"),
                            "plan_code": "tokens",
                            "external_id": name,
                            "subscription_at": self.period_start.isoformat(),
                            "billing_time": "calendar",
                        }
                    },
                )
                response.raise_for_status()

    # Tables.

    def _empty_tables(self) -> None:
        with psycopg.connect(self.url, autocommit=True) as connection:
            connection.execute("TRUNCATE usage_events, usage_rollups")
            connection.execute("VACUUM ANALYZE usage_events")

    def _check_stored(self, expected: int) -> None:
        with psycopg.connect(self.url) as connection:
            row = connection.execute("SELECT count(*) FROM usage_events").fetchone()
        assert row is not None and row[0] == expected, (row, expected)

    # P5.

    def _current_usage(
        self, client: ProcessPoolExecutor, target: Target, organization_id: uuid.UUID
    ) -> dict[str, Any]:
        config = self.config
        self._empty_tables()
        loaded = load_hot_subscription(
            self.url, organization_id, config, self.period_start, self.now
        )
        print(f"  P5: {config.hot_events:,} events appended through the store, {loaded:,.0f}/s")
        path = "/api/v1/customers/cus_hot/current_usage?external_subscription_id=sub_hot"
        raw_events = (
            "SELECT count(*), coalesce(sum(value), 0) FROM usage_events "
            "WHERE external_subscription_id = %s AND code = %s AND organization_id = %s "
            "AND timestamp >= %s AND timestamp < %s AND NOT reversal"
        )
        raw_rollups = (
            "SELECT coalesce(sum(count), 0), coalesce(sum(sum), 0) FROM usage_rollups "
            "WHERE organization_id = %s AND external_subscription_id = %s AND code = %s "
            "AND bucket_start >= %s AND bucket_start < %s"
        )
        end = self.period_start + timedelta(days=40)  # Past the period's end: every bucket.
        usage_ms: list[float] = []
        events_ms: list[float] = []
        rollups_ms: list[float] = []
        answers: list[tuple[int, Decimal]] = []
        rounds = 5
        with psycopg.connect(self.url) as connection:
            for _ in range(rounds):  # Interleaved blocks: candidate, raw events, raw rollups.
                result = client.submit(
                    get_many, target, path, config.usage_samples // rounds
                ).result()
                usage_ms.extend(result["latency_ms"])
                answers.append(units_of(result["last_body"]))
                for _ in range(max(1, config.raw_samples // rounds)):
                    began = time.perf_counter()
                    row = connection.execute(
                        raw_events,
                        ("sub_hot", "tokens", organization_id, self.period_start, end),
                        prepare=True,
                    ).fetchone()
                    events_ms.append((time.perf_counter() - began) * 1000)
                    assert row is not None
                    answers.append((int(row[0]), Decimal(row[1])))
                for _ in range(config.usage_samples // rounds):
                    began = time.perf_counter()
                    row = connection.execute(
                        raw_rollups,
                        (organization_id, "sub_hot", "tokens", self.period_start, end),
                        prepare=True,
                    ).fetchone()
                    rollups_ms.append((time.perf_counter() - began) * 1000)
                    assert row is not None
                    answers.append((int(row[0]), Decimal(row[1])))
        assert len(set(answers)) == 1, f"current_usage and the raw sums disagree: {set(answers)}"
        return {
            "events": config.hot_events,
            "append_events_per_s": loaded,
            "current_usage_ms": percentiles(usage_ms),
            "raw_events_sum_ms": percentiles(events_ms),
            "raw_rollups_sum_ms": percentiles(rollups_ms),
            "agreed": {"count": answers[0][0], "units": str(answers[0][1])},
        }

    def _stop_server(self) -> None:
        if self.server is None or self.server.poll() is not None:
            return
        os.killpg(self.server.pid, signal.SIGTERM)
        try:
            self.server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(self.server.pid, signal.SIGKILL)
            self.server.wait()


# --- Dataset ----------------------------------------------------------------------------------


def event_dicts(
    seed: int, count: int, subscriptions: int, window: tuple[datetime, datetime]
) -> list[list[dict[str, Any]]]:
    """Token events in batches of 100: random subscriptions, models and values, random UUID
    transaction ids, integer timestamps spread over the window."""
    rng = random.Random(seed)
    start, end = (int(instant.timestamp()) for instant in window)
    events = [
        {
            "transaction_id": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
            "external_subscription_id": f"sub_{rng.randrange(subscriptions)}",
            "code": "tokens",
            "timestamp": start + n * (end - start) // max(count, 1),
            "properties": {
                "tokens": str(Decimal(rng.randrange(1, 10**7)) / 1000),
                "model": rng.choice(MODELS),
            },
        }
        for n in range(count)
    ]
    return [events[n : n + BATCH] for n in range(0, len(events), BATCH)]


def stored_usage(
    organization_id: uuid.UUID, batches: Sequence[Sequence[dict[str, Any]]]
) -> list[StoredUsage]:
    """The same events as the ingest would store them (for the raw baseline's rows)."""
    received_at = datetime.now(UTC)
    records = []
    for batch in batches:
        for item in batch:
            properties = item["properties"]
            event = UsageEvent(
                organization_id=organization_id,
                external_subscription_id=item["external_subscription_id"],
                transaction_id=item["transaction_id"],
                code=item["code"],
                timestamp=datetime.fromtimestamp(item["timestamp"], UTC),
                properties=properties,
                precise_total_amount_cents=None,
            )
            records.append(
                StoredUsage(
                    event=event,
                    value=Decimal(properties["tokens"]),
                    dimensions=dimension_key(properties, ["model"]),
                    fingerprint=payload_fingerprint(event),
                    received_at=received_at,
                )
            )
    return records


def copy_row(usage: StoredUsage) -> tuple[object, ...]:
    return input_values(usage)  # What the store writes of it, in COPY_TYPES' order.


def raw_copy(url: str, rows: Sequence[tuple[object, ...]]) -> float:
    """The deduplicating raw path into a fresh table shaped and indexed like usage_events."""
    with psycopg.connect(url, autocommit=True) as connection:
        connection.execute("DROP TABLE IF EXISTS raw_events")
        connection.execute("CREATE TABLE raw_events (LIKE usage_events INCLUDING ALL)")
        started = time.perf_counter()
        for chunk in range(0, len(rows), RAW_CHUNK):
            with connection.transaction():
                connection.execute(
                    f"CREATE TEMP TABLE staging ON COMMIT DROP AS SELECT {COLUMNS} "
                    "FROM raw_events WITH NO DATA"
                )
                with connection.cursor().copy(
                    f"COPY staging ({COLUMNS}) FROM STDIN (FORMAT BINARY)"
                ) as copy:
                    copy.set_types(COPY_TYPES)
                    for row in rows[chunk : chunk + RAW_CHUNK]:
                        copy.write_row(row)
                connection.execute(
                    f"INSERT INTO raw_events ({COLUMNS}) SELECT {COLUMNS} FROM staging "
                    "ON CONFLICT DO NOTHING"
                )
        elapsed = time.perf_counter() - started
        connection.execute("DROP TABLE raw_events")
    return len(rows) / elapsed


def load_hot_subscription(
    url: str, organization_id: uuid.UUID, config: Config, start: datetime, now: datetime
) -> float:
    """Append the P5 subscription's events through the store (PostgresUsageLog), 1,000 a batch."""
    from eventsourcing.postgres import PostgresDatastore

    from adapters.usage_postgres import PostgresUsageLog

    env = parse_database_url(url).eventsourcing_env
    datastore = PostgresDatastore(
        env["POSTGRES_DBNAME"],
        env["POSTGRES_HOST"],
        env["POSTGRES_PORT"],
        env["POSTGRES_USER"],
        env["POSTGRES_PASSWORD"],
        pool_size=2,
    )
    rng = random.Random(config.seed + 3)
    span = (now - timedelta(seconds=30) - start).total_seconds()
    received_at = datetime.now(UTC)
    try:
        log = PostgresUsageLog(datastore)
        began = time.perf_counter()
        for first in range(0, config.hot_events, 1_000):
            batch = []
            for n in range(first, min(first + 1_000, config.hot_events)):
                model = MODELS[n % 2]
                tokens = str(rng.randrange(1, 10**6))
                event = UsageEvent(
                    organization_id=organization_id,
                    external_subscription_id="sub_hot",
                    transaction_id=f"hot-{n}",
                    code="tokens",
                    timestamp=start + timedelta(seconds=span * n / config.hot_events),
                    properties={"tokens": tokens, "model": model},
                    precise_total_amount_cents=None,
                )
                batch.append(
                    StoredUsage(
                        event=event,
                        value=Decimal(tokens),
                        dimensions=(("model", model),),
                        fingerprint=f"bench-{n}",  # Never re-sent: any unique text will do.
                        received_at=received_at,
                    )
                )
            log.append(batch)
        rate = config.hot_events / (time.perf_counter() - began)
    finally:
        datastore.close()
    with psycopg.connect(url, autocommit=True) as connection:
        connection.execute("VACUUM ANALYZE usage_events")
        connection.execute("VACUUM ANALYZE usage_rollups")
    return rate


def units_of(body: bytes) -> tuple[int, Decimal]:
    usage = json.loads(body)["customer_usage"]
    charges = usage["charges_usage"]
    return (
        sum(int(charge["events_count"]) for charge in charges),
        sum((Decimal(charge["units"]) for charge in charges), Decimal(0)),
    )


# --- The load client (runs in its own process) ------------------------------------------------


def pin_to_last_core() -> None:
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) > 1:
        os.sched_setaffinity(0, {cores[-1]})


class Connection:
    """A minimal HTTP/1.1 keep-alive client over asyncio streams: cheap enough that the load
    client takes little of the machine it shares with the server."""

    def __init__(self, target: Target) -> None:
        self.target = target
        self.prefix = (
            f"Host: {target.host}:{target.port}\r\nAuthorization: Bearer {target.api_key}\r\n"
        ).encode()
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def request(self, method: str, path: str, body: bytes = b"") -> tuple[int, bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(
                self.target.host, self.target.port
            )
        assert self.reader is not None
        head = f"{method} {path} HTTP/1.1\r\n".encode() + self.prefix
        if body:
            head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n".encode()
        self.writer.write(head + b"\r\n" + body)
        raw = await self.reader.readuntil(b"\r\n\r\n")
        lines = raw.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        headers = {}
        for line in lines[1:]:
            if ":" in line:
                name, value = line.split(":", 1)
                headers[name.strip().lower()] = value.strip()
        if "content-length" in headers:
            data = await self.reader.readexactly(int(headers["content-length"]))
        elif headers.get("transfer-encoding") == "chunked":
            data = b""
            while True:
                size = int((await self.reader.readuntil(b"\r\n")).strip(), 16)
                data += await self.reader.readexactly(size + 2)
                if size == 0:
                    break
        else:
            data = b""
        if headers.get("connection") == "close":
            self.writer.close()
            self.writer = None
        return status, data


def post_batches(
    target: Target, batches: Sequence[Sequence[dict[str, Any]]], connections: int
) -> dict[str, Any]:
    bodies = [msgspec.json.encode({"events": batch}) for batch in batches]
    counts = [len(batch) for batch in batches]
    return asyncio.run(_post_all(target, "/api/v1/events/batch", bodies, counts, connections))


async def _post_all(
    target: Target, path: str, bodies: list[bytes], counts: list[int], connections: int
) -> dict[str, Any]:
    latencies: list[float] = []
    acknowledged = 0
    errors: dict[int, int] = {}
    position = 0

    async def worker() -> None:
        nonlocal acknowledged, position
        connection = Connection(target)
        while position < len(bodies):
            index = position
            position += 1
            began = time.perf_counter()
            status, _ = await connection.request("POST", path, bodies[index])
            latencies.append((time.perf_counter() - began) * 1000)
            if 200 <= status < 300:
                acknowledged += counts[index]
            else:
                errors[status] = errors.get(status, 0) + 1

    began = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(connections)))
    elapsed = time.perf_counter() - began
    return {
        "events_per_s": acknowledged / elapsed,
        "acknowledged": acknowledged,
        "errors": errors,
        "latency_ms": percentiles(latencies),
    }


def post_singles_closed(
    target: Target, events: Sequence[dict[str, Any]], connections: int, seconds: float
) -> dict[str, Any]:
    bodies = [msgspec.json.encode({"event": event}) for event in events]

    async def run() -> dict[str, Any]:
        latencies: list[float] = []
        errors = 0
        position = 0
        deadline = time.perf_counter() + seconds

        async def worker() -> None:
            nonlocal errors, position
            connection = Connection(target)
            while position < len(bodies) and time.perf_counter() < deadline:
                index = position
                position += 1
                began = time.perf_counter()
                status, _ = await connection.request("POST", "/api/v1/events", bodies[index])
                latencies.append((time.perf_counter() - began) * 1000)
                errors += not 200 <= status < 300

        began = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(connections)))
        elapsed = time.perf_counter() - began
        return {
            "requests_per_s": len(latencies) / elapsed,
            "latency_ms": percentiles(latencies),
            "errors": errors,
        }

    return asyncio.run(run())


def post_singles_open(
    target: Target, events: Sequence[dict[str, Any]], connections: int, rate: float, seconds: float
) -> dict[str, Any]:
    """An open loop: request i is due at i / rate; its latency counts from then (no
    coordinated omission), waiting for a free connection included."""
    total = min(len(events), int(rate * seconds))
    bodies = [msgspec.json.encode({"event": event}) for event in events[:total]]

    async def run() -> dict[str, Any]:
        latencies: list[float] = []
        errors = 0
        position = 0
        start = time.perf_counter() + 0.1

        async def worker() -> None:
            nonlocal errors, position
            connection = Connection(target)
            while position < total:
                index = position
                position += 1
                due = start + index / rate
                delay = due - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                status, _ = await connection.request("POST", "/api/v1/events", bodies[index])
                latencies.append((time.perf_counter() - due) * 1000)
                errors += not 200 <= status < 300

        await asyncio.gather(*(worker() for _ in range(connections)))
        elapsed = time.perf_counter() - start
        return {
            "requests_per_s": total / elapsed,
            "latency_ms": percentiles(latencies),
            "errors": errors,
        }

    return asyncio.run(run())


def get_many(target: Target, path: str, count: int) -> dict[str, Any]:
    async def run() -> dict[str, Any]:
        connection = Connection(target)
        latencies = []
        body = b""
        for _ in range(count):
            began = time.perf_counter()
            status, body = await connection.request("GET", path)
            latencies.append((time.perf_counter() - began) * 1000)
            assert status == 200, body
        return {"latency_ms": latencies, "last_body": body}

    return asyncio.run(run())


# --- Helpers and the report -------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until_serving(
    port: int, api_key: str, process: subprocess.Popen[bytes], log: Path
) -> None:
    """Until a few authenticated requests in a row answer (every worker is up)."""
    deadline = time.monotonic() + 60
    answered = 0
    while time.monotonic() < deadline and answered < 10:
        if process.poll() is not None:
            raise RuntimeError(f"tally serve exited:\n{log.read_text()}")
        try:
            response = httpx.get(
                f"http://127.0.0.1:{port}/api/v1/customers",
                headers={"Authorization": f"Bearer {api_key}"},
                timeout=5,
            )
            answered = answered + 1 if response.status_code == 200 else 0
        except httpx.HTTPError:
            answered = 0
            time.sleep(0.1)
    if answered < 10:
        raise RuntimeError(f"tally serve did not answer on port {port}:\n{log.read_text()}")


def check_all_acknowledged(*runs: dict[str, Any]) -> None:
    for run in runs:
        assert not run["errors"], f"non-2xx answers: {run['errors']}"


def ratio(candidate: Sequence[float], baseline: Sequence[float]) -> float:
    return statistics.median(candidate) / statistics.median(baseline)


def environment(url: str, config: Config) -> dict[str, Any]:
    with psycopg.connect(url) as connection:
        settings = {
            name: connection.execute(f"SHOW {name}").fetchone()[0]  # type: ignore[index]
            for name in ("server_version", "fsync", "synchronous_commit", "shared_buffers")
        }
    sha = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"],
        capture_output=True,
        text=True,
        check=False,
        cwd=ROOT,
    ).stdout.strip()
    dirty = subprocess.run(
        ["git", "status", "--porcelain"], capture_output=True, text=True, check=False, cwd=ROOT
    ).stdout.strip()
    import litestar
    import uvicorn

    info = {
        "git": sha + (" (plus working tree)" if dirty else ""),
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "psycopg": psycopg.__version__,
        "litestar": litestar.__version__ if hasattr(litestar, "__version__") else "?",
        "uvicorn": uvicorn.__version__,
        "postgres": settings,
        "config": config.__dict__,
    }
    info["summary"] = (
        f"bench/ingest_http.py · git {info['git']} · {info['cpu']} · {info['cores']} cores · "
        f"Python {info['python']} · psycopg {info['psycopg']} · uvicorn {info['uvicorn']} · "
        f"PostgreSQL {settings['server_version'].split()[0]} fsync={settings['fsync']} "
        f"synchronous_commit={settings['synchronous_commit']} "
        f"shared_buffers={settings['shared_buffers']}\n"
        f"tally serve --workers {config.workers}; client: 1 process pinned to the last core, "
        f"asyncio raw sockets, {config.connections} connections; client, server and PostgreSQL "
        f"share the machine. Dataset seed {config.seed}: {config.events:,} events per run in "
        f"batches of {BATCH}, {config.subscriptions} subscriptions × 2 models, random UUID "
        f"transaction ids; {config.repetitions} interleaved repetitions."
    )
    return info


def spread(values: Sequence[float]) -> str:
    return f"{statistics.median(values):,.0f} [{min(values):,.0f}–{max(values):,.0f}]"


def report(results: dict[str, Any]) -> None:
    p1, p2, p3, p5 = results["p1"], results["p2"], results["p3"], results["p5"]
    cu, raw_events, raw_rollups = (
        p5["current_usage_ms"],
        p5["raw_events_sum_ms"],
        p5["raw_rollups_sum_ms"],
    )
    rows = [
        (
            "P1 batch ingest, events/s",
            f"POST /events/batch ×100, {results['environment']['config']['connections']} conns: "
            + spread(p1["candidate_events_per_s"]),
            "COPY → staging → INSERT ON CONFLICT, 10k/txn: " + spread(p1["baseline_events_per_s"]),
            f"{p1['ratio']:.2f}",
            "≥ 0.35",
            f"{statistics.median(p1['candidate_events_per_s']):,.0f}/s (Done-when ≥ 10,000); "
            f"request p50 {p1['request_latency_ms']['p50']:.1f} ms, "
            f"p99 {p1['request_latency_ms']['p99']:.1f} ms",
        ),
        (
            "P3 duplicates, events/s",
            f"the same {p3['events']:,} events again: " + spread(p3["duplicates_events_per_s"]),
            "fresh events: " + spread(p3["fresh_events_per_s"]),
            f"{p3['ratio']:.2f}",
            "≥ 1.0",
            "",
        ),
        (
            "P2 single-event POST latency",
            f"open loop at {p2['offered_requests_per_s']:,.0f}/s (achieved "
            f"{p2['achieved_requests_per_s']:,.0f}/s): p50 {p2['latency_ms']['p50']:.2f} ms, "
            f"p99 {p2['latency_ms']['p99']:.2f} ms",
            f"closed-loop max {p2['max_requests_per_s']:,.0f}/s (32 conns, p99 "
            f"{p2['max_latency_ms']['p99']:.1f} ms); no DB-less baseline run",
            "—",
            "p99 ≤ 10 ms",
            f"errors {p2['errors']}",
        ),
        (
            f"P5 current_usage, {p5['events']:,} events in the period",
            f"GET current_usage: p50 {cu['p50']:.2f} ms, p99 {cu['p99']:.2f} ms "
            f"({cu['samples']} samples)",
            f"raw SUM over the events: p50 {raw_events['p50']:.1f} ms, p99 "
            f"{raw_events['p99']:.1f} ms ({raw_events['samples']}); raw SUM over the rollups: "
            f"p50 {raw_rollups['p50']:.2f} ms, p99 {raw_rollups['p99']:.2f} ms",
            f"{cu['p99'] / raw_events['p99']:.3f} vs events; "
            f"{cu['p99'] / raw_rollups['p99']:.1f} vs rollups",
            "p99 ≤ 20 ms (stretch 5 ms); ≤ 5× rollup SUM",
            f"agree: {p5['agreed']['count']:,} events, {p5['agreed']['units']} units; "
            f"store append {p5['append_events_per_s']:,.0f}/s",
        ),
    ]
    lines = [
        "",
        results["environment"]["summary"],
        "",
        "| goal | candidate (median [min–max]) | baseline, same run | ratio | gate | absolute |",
        "|---|---|---|---|---|---|",
        *(f"| {' | '.join(row)} |" for row in rows),
        "",
        f"wall time {results['wall_seconds']} s",
    ]
    print("\n".join(lines))
    directory = ROOT / "bench" / "results"
    directory.mkdir(exist_ok=True)
    path = directory / f"ingest_http-{datetime.now(UTC).strftime('%Y%m%dT%H%M%SZ')}.json"
    path.write_text(json.dumps(results, indent=2, default=str))
    print(f"results: {path.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
