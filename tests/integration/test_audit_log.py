"""The audit trail on SQLite and PostgreSQL: recorded by the API, listed with filters, and a
hash chain that `tally audit verify-log` checks, naming the first entry edited in the database."""

import sqlite3
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from uuid import UUID, uuid4

import psycopg
import pytest
from litestar import Litestar
from litestar.testing import TestClient

from adapters.settings import Settings
from adapters.stores import Ledger, open_ledger
from api.app import create_app
from api.cli import main
from application.audit_log import GENESIS_HASH, AuditEntry, AuditFilter, verify
from tests.conftest import postgres_url

Client = TestClient[Litestar]
NOW = datetime(2026, 3, 16, 12, tzinfo=UTC)


@pytest.fixture
def api(store_ledger: Ledger) -> Iterator[tuple[Client, Ledger]]:
    store_ledger.billing.now = lambda: NOW
    with TestClient(app=create_app(store_ledger)) as client:
        yield client, store_ledger


def execute(settings: Settings, statement: str) -> None:
    """SQL run directly in the store's database, as someone with database access could."""
    if settings.store == "sqlite":
        assert settings.sqlite_path is not None
        with sqlite3.connect(settings.sqlite_path) as connection:
            connection.execute(statement)
        return
    url = postgres_url()
    assert url is not None and settings.postgres_schema is not None
    with psycopg.connect(url, autocommit=True) as connection:
        connection.execute(f"SET search_path TO {settings.postgres_schema}")
        connection.execute(statement.encode())


def verify_log(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> tuple[int, str]:
    """`tally audit verify-log`, in this process."""
    monkeypatch.setenv("TALLY_DATABASE_URL", settings.database_url)
    code = main(["audit", "verify-log"])
    return code, capsys.readouterr().out


def entry(organization_id: UUID, n: int) -> AuditEntry:
    return AuditEntry(
        id=uuid4(),
        organization_id=organization_id,
        api_key_id=None,
        method="POST",
        path=f"/api/v1/customers/cus_{n}",
        resource_type="customer",
        resource_key=f"cus_{n}",
        status_code=200,
        client_address="10.0.0.1",
        idempotency_key=None,
        occurred_at=NOW + timedelta(seconds=n),
    )


def test_every_mutating_request_is_recorded_with_who_what_when_and_where(
    api: tuple[Client, Ledger],
) -> None:
    client, ledger = api
    organization, api_key = ledger.billing.create_organization("acme")
    key_id = ledger.billing.api_keys(organization.id)[0].id
    headers = {"Authorization": f"Bearer {api_key}"}
    body = {"customer": {"external_id": "cus_1", "name": "Ada"}}
    created = client.post(
        "/api/v1/customers", json=body, headers={**headers, "Idempotency-Key": "idem-1"}
    )
    replayed = client.post(
        "/api/v1/customers", json=body, headers={**headers, "Idempotency-Key": "idem-1"}
    )
    assert replayed.headers.get("idempotent-replayed") == "true"
    client.get("/api/v1/customers/cus_1", headers=headers)  # A read: not audited.
    client.delete("/api/v1/customers/nobody", headers=headers)  # Audited with its 404.
    client.post("/api/v1/customers", json=body, headers={"Authorization": "Bearer wrong"})

    listed = client.get("/api/v1/audit_logs", headers=headers)
    assert listed.status_code == 200
    logs = listed.json()["audit_logs"]
    assert [(e["method"], e["path"], e["status"]) for e in logs] == [
        ("DELETE", "/api/v1/customers/nobody", 404),
        ("POST", "/api/v1/customers", 200),
        ("POST", "/api/v1/customers", 200),
    ]
    first = logs[-1]
    assert first == {
        "lago_id": first["lago_id"],
        "sequence": 1,
        "api_key_id": str(key_id),
        "method": "POST",
        "path": "/api/v1/customers",
        "resource_type": "customer",
        "resource_key": "cus_1",  # From the response: the path has none.
        "status": 200,
        "client_address": "testclient",
        "idempotency_key": "idem-1",
        "occurred_at": "2026-03-16T12:00:00.000000Z",
        "previous_hash": GENESIS_HASH,
        "hash": first["hash"],
    }
    assert created.json()["customer"]["lago_id"] not in str(logs)  # Keys are the client's keys.
    assert logs[0]["resource_key"] == "nobody"
    assert logs[1]["previous_hash"] == first["hash"]
    assert listed.json()["meta"] == {
        "current_page": 1,
        "next_page": None,
        "prev_page": None,
        "total_pages": 1,
        "total_count": 3,
    }


def test_audit_logs_filter_and_page_like_lago(api: tuple[Client, Ledger]) -> None:
    client, ledger = api
    acme, acme_key = ledger.billing.create_organization("acme")
    other, other_key = ledger.billing.create_organization("other")
    second, second_key = ledger.billing.create_api_key(acme.id)
    second_id = second.id
    for n, api_key in enumerate([acme_key, acme_key, second_key, other_key]):
        ledger.billing.now = lambda n=n: NOW + timedelta(minutes=n)  # type: ignore[misc]
        client.post(
            "/api/v1/customers",
            json={"customer": {"external_id": f"cus_{n}", "currency": "EUR" if n else "X"}},
            headers={"Authorization": f"Bearer {api_key}"},
        )
    headers = {"Authorization": f"Bearer {acme_key}"}

    def keys(query: str) -> list[str]:
        response = client.get(f"/api/v1/audit_logs?{query}", headers=headers)
        assert response.status_code == 200, response.text
        return [e["resource_key"] for e in response.json()["audit_logs"]]

    assert keys("") == ["cus_2", "cus_1", None]  # The 422 names no key; "other" is not listed.
    assert keys("status=422") == [None]
    assert keys(f"api_key_id={second_id}") == ["cus_2"]
    assert keys("method=post&to=2026-03-16T12:01:00Z") == ["cus_1", None]
    assert keys("from=2026-03-16T12:01:00Z&to=2026-03-16T12:01:59Z") == ["cus_1"]
    assert keys("method=DELETE") == []
    page = client.get("/api/v1/audit_logs?per_page=2&page=2", headers=headers).json()
    assert [e["sequence"] for e in page["audit_logs"]] == [1]
    assert page["meta"] == {
        "current_page": 2,
        "next_page": None,
        "prev_page": 1,
        "total_pages": 2,
        "total_count": 3,
    }
    for query, field in [("api_key_id=nope", "api_key_id"), ("method=GET", "method")]:
        refused = client.get(f"/api/v1/audit_logs?{query}", headers=headers)
        assert refused.status_code == 422
        assert refused.json()["error_details"] == {field: ["value_is_invalid"]}
    other_logs = client.get(
        "/api/v1/audit_logs", headers={"Authorization": f"Bearer {other_key}"}
    ).json()["audit_logs"]
    assert [e["resource_key"] for e in other_logs] == ["cus_3"]
    assert other.id != acme.id


def test_verify_log_names_the_first_edited_entry(
    store_settings: Settings,
    store_ledger: Ledger,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    organization, _ = store_ledger.billing.create_organization("acme")
    appended = [store_ledger.audit_log.append(entry(organization.id, n)) for n in range(1, 6)]
    code, out = verify_log(store_settings, monkeypatch, capsys)
    assert code == 0
    assert out.startswith(f"Audit log intact: 5 entries, head 5 {appended[-1].hash}.")
    # Someone with database access turns a 200 into a 201 in entry 3 (and entry 4 after it).
    execute(store_settings, "UPDATE audit_log SET status_code = 201 WHERE sequence IN (3, 4)")
    code, out = verify_log(store_settings, monkeypatch, capsys)
    assert code == 1
    assert out.strip() == (
        f"Audit log BROKEN at entry 3 ({appended[2].entry.id}): its content does not match "
        "its hash (edited). 2 entries before it are intact."
    )


def test_verify_log_names_a_removed_entry_and_a_cut_tail(
    store_settings: Settings,
    store_ledger: Ledger,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    organization, _ = store_ledger.billing.create_organization("acme")
    appended = [store_ledger.audit_log.append(entry(organization.id, n)) for n in range(1, 6)]
    execute(store_settings, "DELETE FROM audit_log WHERE sequence = 5")
    code, out = verify_log(store_settings, monkeypatch, capsys)
    assert code == 1
    assert "BROKEN at entry 5: the head records entry 5" in out
    execute(store_settings, "DELETE FROM audit_log WHERE sequence = 2")
    code, out = verify_log(store_settings, monkeypatch, capsys)
    assert code == 1
    assert f"BROKEN at entry 3 ({appended[2].entry.id}): entries 2 to 2 are missing" in out


def test_appenders_in_two_processes_keep_one_chain(store_settings: Settings) -> None:
    ledgers = [open_ledger(store_settings) for _ in range(2)]
    try:
        organization, _ = ledgers[0].billing.create_organization("acme")
        start = threading.Barrier(len(ledgers))
        errors: list[BaseException] = []

        def append(ledger: Ledger, offset: int) -> None:
            start.wait()
            try:
                for n in range(25):
                    ledger.audit_log.append(entry(organization.id, offset + n))
            except BaseException as error:  # Reported below.
                errors.append(error)

        threads = [
            threading.Thread(target=append, args=(ledger, 100 * i))
            for i, ledger in enumerate(ledgers)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert errors == []
        checked, broken = verify(ledgers[1].audit_log)
        assert (checked, broken) == (50, None)
        _, total = ledgers[0].audit_log.page(organization.id, AuditFilter(), 1, 10)
        assert total == 50
    finally:
        for ledger in ledgers:
            ledger.close()
