"""Fixtures shared by every kind of test: stores, ledgers, the API client, a real server."""

import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from uuid import UUID

import psycopg
import pytest
from litestar import Litestar
from litestar.testing import TestClient

from adapters.settings import Settings, memory_settings, parse_database_url
from adapters.stores import Ledger, open_ledger
from api.app import create_app

ROOT = Path(__file__).resolve().parent.parent


def postgres_url() -> str | None:
    return os.environ.get("TALLY_TEST_DATABASE_URL") or None


@pytest.fixture(params=["sqlite", "postgres"])
def store_settings(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Settings]:
    """A fresh store of each kind: a SQLite file, or a new PostgreSQL schema dropped afterwards."""
    if request.param == "sqlite":
        yield parse_database_url(f"sqlite:///{tmp_path / 'tally.db'}")
        return
    url = postgres_url()
    if url is None:
        if os.environ.get("CI"):
            pytest.fail("PostgreSQL not configured in CI: set TALLY_TEST_DATABASE_URL")
        pytest.skip("PostgreSQL not configured: set TALLY_TEST_DATABASE_URL")
    schema = f"test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(url, autocommit=True) as connection:
        connection.execute(f"CREATE SCHEMA {schema}")
    separator = "&" if "?" in url else "?"
    try:
        yield parse_database_url(f"{url}{separator}schema={schema}&pool_size=4&max_overflow=8")
    finally:
        with psycopg.connect(url, autocommit=True) as connection:
            connection.execute(f"DROP SCHEMA {schema} CASCADE")


@pytest.fixture
def store_ledger(store_settings: Settings) -> Iterator[Ledger]:
    ledger = open_ledger(store_settings)
    yield ledger
    ledger.close()


@pytest.fixture
def ledger() -> Iterator[Ledger]:
    """The in-memory ledger of unit and API tests."""
    ledger = open_ledger(memory_settings())
    yield ledger
    ledger.close()


@dataclass(frozen=True)
class Tenant:
    organization_id: UUID
    api_key: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"}


@pytest.fixture
def tenant(ledger: Ledger) -> Tenant:
    organization, api_key = ledger.billing.create_organization("acme")
    return Tenant(organization.id, api_key)


@pytest.fixture
def client(ledger: Ledger) -> Iterator[TestClient[Litestar]]:
    with TestClient(app=create_app(ledger)) as test_client:
        yield test_client


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass(frozen=True)
class Server:
    url: str
    api_key: str
    settings: Settings


@pytest.fixture
def server(store_settings: Settings, tmp_path: Path) -> Iterator[Server]:
    """`tally serve` as a real process on a free port, with a fresh organization."""
    env = {**os.environ, "TALLY_DATABASE_URL": store_settings.database_url}
    created = subprocess.run(
        [sys.executable, "-m", "api.cli", "org", "create", "e2e"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    api_key = created.stdout.strip().splitlines()[-1]
    port = free_port()
    log = (tmp_path / "server.log").open("w")
    process = subprocess.Popen(
        [sys.executable, "-m", "api.cli", "serve", "--port", str(port)],
        env=env,
        cwd=tmp_path,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        _wait_for_port(port, process, tmp_path / "server.log")
        yield Server(f"http://127.0.0.1:{port}/", api_key, store_settings)
    finally:
        process.terminate()
        process.wait(timeout=10)
        log.close()


def _wait_for_port(port: int, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"tally serve exited early:\n{log.read_text()}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"tally serve did not open port {port}:\n{log.read_text()}")
