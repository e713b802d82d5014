"""Settings from the environment: the store (TALLY_DATABASE_URL) and its eventsourcing env."""

import os
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from urllib.parse import unquote, urlsplit

from domain.limits import EVENTS_BATCH_MAX, EVENTS_BATCH_MAX_LIMIT

DEFAULT_SQLITE_PATH = Path(".tally/tally.db")
# Request limits (ADR 0015): 1 MiB holds a batch of EVENTS_BATCH_MAX events many times over.
BODY_MAX_BYTES_DEFAULT = 1024 * 1024
BODY_MAX_BYTES_LIMIT = 256 * 1024 * 1024
# Per API key and per process: Stripe's meter-event stream allows 10,000 requests a second; a
# runaway client is held there, a busy one never notices. 0 turns the rate limit off.
RATE_LIMIT_PER_S_DEFAULT = 10_000.0
RATE_LIMIT_BURST_DEFAULT = 20_000


class SettingsError(Exception):
    """A setting has a value Tally cannot use; the message says which and why."""


@dataclass(frozen=True)
class Settings:
    database_url: str
    store: str  # "sqlite", "postgres" or "memory" (tests only, never from the environment).
    eventsourcing_env: Mapping[str, str]
    sqlite_path: Path | None = None
    postgres_schema: str | None = None
    events_batch_max: int = EVENTS_BATCH_MAX
    body_max_bytes: int = BODY_MAX_BYTES_DEFAULT
    rate_limit_per_s: float = RATE_LIMIT_PER_S_DEFAULT  # 0: no rate limit.
    rate_limit_burst: int = RATE_LIMIT_BURST_DEFAULT


def settings_from_env(environ: Mapping[str, str] | None = None) -> Settings:
    environ = os.environ if environ is None else environ
    settings = parse_database_url(environ.get("TALLY_DATABASE_URL", ""))
    batch_max = environ.get("TALLY_EVENTS_BATCH_MAX", "").strip()
    if batch_max:
        if not batch_max.isdigit() or not 1 <= int(batch_max) <= EVENTS_BATCH_MAX_LIMIT:
            raise SettingsError(
                f"TALLY_EVENTS_BATCH_MAX={batch_max!r}: a whole number from 1 to "
                f"{EVENTS_BATCH_MAX_LIMIT}."
            )
        settings = replace(settings, events_batch_max=int(batch_max))
    return _request_limits(settings, environ)


def _request_limits(settings: Settings, environ: Mapping[str, str]) -> Settings:
    """TALLY_BODY_MAX_BYTES, TALLY_RATE_LIMIT_PER_S (0: off) and TALLY_RATE_LIMIT_BURST."""
    body_max = environ.get("TALLY_BODY_MAX_BYTES", "").strip()
    if body_max:
        if not body_max.isdigit() or not 1024 <= int(body_max) <= BODY_MAX_BYTES_LIMIT:
            raise SettingsError(
                f"TALLY_BODY_MAX_BYTES={body_max!r}: a whole number of bytes from 1024 to "
                f"{BODY_MAX_BYTES_LIMIT}."
            )
        settings = replace(settings, body_max_bytes=int(body_max))
    rate = environ.get("TALLY_RATE_LIMIT_PER_S", "").strip()
    if rate:
        try:
            rate_per_s = float(rate)
        except ValueError:
            rate_per_s = -1.0
        if not 0 <= rate_per_s <= 1_000_000:
            raise SettingsError(
                f"TALLY_RATE_LIMIT_PER_S={rate!r}: requests per second and per key, from 0 "
                "(no limit) to 1000000."
            )
        settings = replace(settings, rate_limit_per_s=rate_per_s)
    burst = environ.get("TALLY_RATE_LIMIT_BURST", "").strip()
    if burst:
        if not burst.isdigit() or not 1 <= int(burst) <= 1_000_000:
            raise SettingsError(
                f"TALLY_RATE_LIMIT_BURST={burst!r}: a whole number of requests from 1 to 1000000."
            )
        settings = replace(settings, rate_limit_burst=int(burst))
    return settings


def parse_database_url(url: str) -> Settings:
    """Unset: SQLite at ./.tally/tally.db; sqlite:///PATH; postgresql://...; else an error."""
    url = url.strip()
    if not url:
        return _sqlite(DEFAULT_SQLITE_PATH, url)
    if url.startswith("sqlite:///"):
        path = url.removeprefix("sqlite:///")
        if not path or path == ":memory:":
            raise SettingsError(
                f"TALLY_DATABASE_URL={url!r}: name a file, e.g. sqlite:///var/tally.db "
                "(Tally never keeps a ledger in memory)."
            )
        return _sqlite(Path(path), url)
    parts = urlsplit(url)
    if parts.scheme in ("postgresql", "postgres", "postgresql+psycopg"):
        dbname = unquote(parts.path.lstrip("/"))
        if not dbname or not parts.hostname:
            raise SettingsError(
                f"TALLY_DATABASE_URL: a PostgreSQL URL needs a host and a database name, "
                f"e.g. postgresql://user:password@127.0.0.1:5432/tally (got {parts.netloc!r}, "
                f"{dbname!r})."
            )
        query = dict(item.split("=", 1) for item in parts.query.split("&") if "=" in item)
        schema = query.get("schema", "")
        env = {
            "PERSISTENCE_MODULE": "eventsourcing.postgres",
            "POSTGRES_DBNAME": dbname,
            "POSTGRES_HOST": parts.hostname,
            "POSTGRES_PORT": str(parts.port or 5432),
            "POSTGRES_USER": unquote(parts.username or "postgres"),
            "POSTGRES_PASSWORD": unquote(parts.password or ""),
            "POSTGRES_POOL_SIZE": query.get("pool_size", "10"),
            "POSTGRES_MAX_OVERFLOW": query.get("max_overflow", "10"),
            "POSTGRES_CONNECT_TIMEOUT": query.get("connect_timeout", "10"),
        }
        if schema:
            env["POSTGRES_SCHEMA"] = schema
        return Settings(url, "postgres", env, postgres_schema=schema or None)
    raise SettingsError(
        f"TALLY_DATABASE_URL={url!r} is not supported: leave it unset for SQLite at "
        f"{DEFAULT_SQLITE_PATH}, or use sqlite:///PATH or postgresql://USER@HOST:PORT/DBNAME."
    )


def memory_settings() -> Settings:
    """The library's in-memory store, for unit and API tests only."""
    return Settings("memory:", "memory", {"PERSISTENCE_MODULE": "eventsourcing.popo"})


def _sqlite(path: Path, url: str) -> Settings:
    env = {
        "PERSISTENCE_MODULE": "eventsourcing.sqlite",
        "SQLITE_DBNAME": str(path),
        "SQLITE_LOCK_TIMEOUT": "10",
    }
    return Settings(url or f"sqlite:///{path}", "sqlite", env, sqlite_path=path)
