"""Payment-provider secrets sealed at rest (ADR 0021), on SQLite and PostgreSQL: no stored byte
holds a secret in clear, the key from TALLY_SECRET_KEY opens them after a restart, a retired key
still opens them through TALLY_SECRET_KEY_PREVIOUS (and they are sealed again under the new
one), another key does not, and rows written in clear by an older version are sealed on open."""

import json
from pathlib import Path
from uuid import UUID

import psycopg
import pytest
from cryptography.exceptions import InvalidTag
from litestar.testing import TestClient
from psycopg import sql

from adapters.secret_seal import (
    PREFIX,
    SealedWithUnknownKeyError,
    key_id,
    parse_key,
    sealer_from_env,
)
from adapters.settings import Settings, SettingsError, parse_database_url
from adapters.stores import Ledger, open_ledger
from api.app import create_app
from tests.conftest import postgres_url

KEY = "11" * 32
OTHER_KEY = "22" * 32
SECRET_KEY = "sk_live_very_secret_0123456789"
WEBHOOK_SECRET = "whsec_signing_secret_9876543210"


def opened(settings: Settings, monkeypatch: pytest.MonkeyPatch, key: str, *old: str) -> Ledger:
    monkeypatch.setenv("TALLY_SECRET_KEY", key)
    monkeypatch.setenv("TALLY_SECRET_KEY_PREVIOUS", ",".join(old))
    return open_ledger(settings)


def connect(ledger: Ledger) -> UUID:
    organization, _ = ledger.billing.create_organization("acme")
    ledger.payments.create_connection(
        organization.id,
        "eu",
        "stripe",
        {"name": "EU account"},
        {"secret_key": SECRET_KEY, "webhook_secret": WEBHOOK_SECRET},
    )
    return organization.id


def stored_bytes(settings: Settings) -> bytes:
    """Everything the store holds: the SQLite files (WAL included), or every PostgreSQL table
    of the schema as text (bytea as hex)."""
    if settings.sqlite_path is not None:
        directory = settings.sqlite_path.parent
        return b"".join(
            path.read_bytes()
            for path in sorted(directory.iterdir())
            if path.name.startswith(settings.sqlite_path.name)
        )
    schema = settings.postgres_schema
    url = postgres_url()
    assert schema is not None and url is not None
    dumped = []
    with psycopg.connect(url, autocommit=True) as connection:
        tables = connection.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = %s",
            (schema,),
        ).fetchall()
        assert len(tables) > 5, tables
        for (table,) in tables:
            query = sql.SQL("SELECT t::text FROM {}.{} t").format(
                sql.Identifier(schema), sql.Identifier(table)
            )
            dumped += [row[0] for row in connection.execute(query).fetchall()]
    return "\n".join(dumped).encode()


def assert_no_secret_in(data: bytes) -> None:
    for secret in (SECRET_KEY, WEBHOOK_SECRET, WEBHOOK_SECRET[::-1]):
        assert secret.encode() not in data
        assert secret.encode().hex().encode() not in data  # bytea as text is hex.


def test_no_stored_byte_holds_a_secret_in_clear(
    store_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    ledger = opened(store_settings, monkeypatch, KEY)
    org = connect(ledger)
    assert ledger.payments.secret_hints(org, "eu") == {
        "secret_key": "…6789",
        "webhook_secret": "…3210",
    }
    # Through the API too, with an Idempotency-Key (its store keeps the response) and the
    # audit trail on, then a rotation of the webhook secret.
    _, api_key = ledger.billing.create_organization("beta")
    headers = {"Authorization": f"Bearer {api_key}", "Idempotency-Key": "create-us"}
    body = {
        "code": "us",
        "provider": "stripe",
        "secret_key": SECRET_KEY,
        "webhook_secret": WEBHOOK_SECRET,
    }
    with TestClient(app=create_app(ledger)) as client:
        created = client.post(
            "/api/v1/payment_providers", json={"payment_provider": body}, headers=headers
        )
        assert created.status_code == 200, created.text
        assert SECRET_KEY not in created.text
        rotated = client.put(
            "/api/v1/payment_providers/us",
            json={"payment_provider": {"webhook_secret": WEBHOOK_SECRET[::-1]}},
            headers={"Authorization": f"Bearer {api_key}"},
        )
        assert rotated.status_code == 200, rotated.text
    ledger.close()
    assert_no_secret_in(stored_bytes(store_settings))
    # The same key opens them after a restart.
    again = opened(store_settings, monkeypatch, KEY)
    assert again.payment_store.secrets(org, "eu") == {
        "secret_key": SECRET_KEY,
        "webhook_secret": WEBHOOK_SECRET,
    }
    again.close()


def test_a_rotated_key_opens_them_only_when_listed_as_previous(
    store_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    ledger = opened(store_settings, monkeypatch, KEY)
    org = connect(ledger)
    ledger.close()
    with pytest.raises(SealedWithUnknownKeyError):
        opened(store_settings, monkeypatch, OTHER_KEY)  # Resealing on open needs the old key.
    rotated = opened(store_settings, monkeypatch, OTHER_KEY, KEY)
    assert rotated.payment_store.secrets(org, "eu") == {
        "secret_key": SECRET_KEY,
        "webhook_secret": WEBHOOK_SECRET,
    }
    rotated.close()
    # Sealed again under the new key on open: the old one is no longer needed.
    assert f"{PREFIX}{key_id(parse_key(OTHER_KEY))}:".encode() in stored_bytes(store_settings)
    only_new = opened(store_settings, monkeypatch, OTHER_KEY)
    assert only_new.payment_store.secrets(org, "eu") is not None
    only_new.close()
    assert_no_secret_in(stored_bytes(store_settings))


def test_secrets_written_in_clear_by_an_older_version_are_sealed_on_open(
    store_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    ledger = opened(store_settings, monkeypatch, KEY)
    org = connect(ledger)
    clear = json.dumps({"secret_key": SECRET_KEY, "webhook_secret": WEBHOOK_SECRET})
    _write_row(ledger, org, clear)
    assert SECRET_KEY.encode() in stored_bytes(store_settings)
    ledger.close()
    reopened = opened(store_settings, monkeypatch, KEY)
    assert reopened.payment_store.secrets(org, "eu") == json.loads(clear)
    reopened.close()
    if store_settings.sqlite_path is None:  # SQLite's free pages may keep the old row's bytes.
        assert_no_secret_in(stored_bytes(store_settings))


def test_a_sealed_row_moved_to_another_connection_does_not_open(
    store_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    ledger = opened(store_settings, monkeypatch, KEY)
    org = connect(ledger)
    us_secrets = {"secret_key": "sk_us_000000000", "webhook_secret": "whsec_us_0000"}
    ledger.payments.create_connection(org, "us", "stripe", {}, us_secrets)
    _copy_row(ledger, org, "eu", "us")
    with pytest.raises(InvalidTag):
        ledger.payment_store.secrets(org, "us")
    ledger.close()


def _write_row(ledger: Ledger, org: UUID, value: str) -> None:
    store = ledger.payment_store
    datastore = store.datastore  # type: ignore[attr-defined]
    with datastore.transaction(commit=True) as cursor:
        if hasattr(store, "secrets_table"):
            cursor.execute(
                sql.SQL("UPDATE {0} SET secrets = %s WHERE organization_id = %s").format(
                    store.secrets_table
                ),
                (value, org),
            )
        else:
            cursor.execute(
                "UPDATE payment_connection_secrets SET secrets = ? WHERE organization_id = ?",
                (value, str(org)),
            )


def _copy_row(ledger: Ledger, org: UUID, source: str, target: str) -> None:
    store = ledger.payment_store
    datastore = store.datastore  # type: ignore[attr-defined]
    with datastore.transaction(commit=True) as cursor:
        if hasattr(store, "secrets_table"):
            cursor.execute(
                sql.SQL(
                    "UPDATE {0} SET secrets = (SELECT secrets FROM {0} WHERE organization_id = %s "
                    "AND code = %s) WHERE organization_id = %s AND code = %s"
                ).format(store.secrets_table),
                (org, source, org, target),
            )
        else:
            cursor.execute(
                "UPDATE payment_connection_secrets SET secrets = (SELECT secrets FROM "
                "payment_connection_secrets WHERE organization_id = ? AND code = ?) "
                "WHERE organization_id = ? AND code = ?",
                (str(org), source, str(org), target),
            )


def test_without_the_setting_the_embedded_store_makes_a_key_file_beside_the_database(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("TALLY_SECRET_KEY", raising=False)
    monkeypatch.delenv("TALLY_SECRET_KEY_PREVIOUS", raising=False)
    settings = parse_database_url(f"sqlite:///{tmp_path / 'db' / 'tally.db'}")
    ledger = open_ledger(settings)
    org = connect(ledger)
    ledger.close()
    key_file = tmp_path / "db" / "secret.key"
    assert key_file.stat().st_mode & 0o777 == 0o600
    assert_no_secret_in(stored_bytes(settings))
    again = open_ledger(settings)
    assert again.payment_store.secrets(org, "eu") is not None
    again.close()


def test_the_key_setting_is_checked_and_postgres_keeps_its_key_file_out_of_the_working_dir(
    tmp_path: Path,
) -> None:
    postgres = parse_database_url("postgresql://postgres@127.0.0.1:5432/tally")
    for bad in ("short", "zz" * 32, "11" * 31):
        with pytest.raises(SettingsError, match="TALLY_SECRET_KEY"):
            sealer_from_env(postgres, {"TALLY_SECRET_KEY": bad})
    base64_key = "ERERERERERERERERERERERERERERERERERERERERERE="  # 32 bytes of 0x11, as base64
    assert parse_key(base64_key) == parse_key(KEY)
    sealer = sealer_from_env(postgres, {"XDG_CONFIG_HOME": str(tmp_path / "config")})
    context = b"org:code"
    sealed = sealer.seal(b"s3cret", context)
    assert (tmp_path / "config" / "tally" / "secret.key").exists()
    assert sealer.unseal(sealed, context) == b"s3cret"
    named = sealer_from_env(postgres, {"TALLY_SECRET_KEY_FILE": str(tmp_path / "k")})
    assert named.seal(b"x", context).startswith(PREFIX) and (tmp_path / "k").exists()
    with pytest.raises(SealedWithUnknownKeyError):
        named.unseal(sealed, context)
