"""API keys on SQLite and PostgreSQL: a revocation in one process is refused at once by another,
and `tally keys create | list | revoke` rotate keys without downtime."""

from uuid import UUID

import pytest
from litestar.testing import TestClient

from adapters.settings import Settings
from adapters.stores import Ledger, open_ledger
from api.app import create_app
from api.cli import main


def test_a_revocation_in_one_process_is_refused_by_another_at_once(
    store_settings: Settings,
) -> None:
    admin, server = open_ledger(store_settings), open_ledger(store_settings)
    try:
        organization, api_key = admin.billing.create_organization("acme")
        headers = {"Authorization": f"Bearer {api_key}"}
        with TestClient(app=create_app(server)) as client:
            # The serving process has authenticated (and cached) the key.
            assert client.get("/api/v1/customers", headers=headers).status_code == 200
            assert server.billing.authenticate_api_key(api_key) is not None
            # Another process revokes it...
            admin.billing.revoke_api_key(admin.billing.api_keys(organization.id)[0].id)
            # ...and the very next request to the serving process is refused.
            assert client.get("/api/v1/customers", headers=headers).status_code == 401
            assert server.billing.authenticate_api_key(api_key) is None
    finally:
        admin.close()
        server.close()


def keys(
    settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    *args: str,
) -> tuple[int, str, str]:
    """`tally keys ...` in this process."""
    monkeypatch.setenv("TALLY_DATABASE_URL", settings.database_url)
    code = main(["keys", *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_keys_are_created_listed_and_revoked_from_the_command_line(
    store_settings: Settings,
    store_ledger: Ledger,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    organization, first_key = store_ledger.billing.create_organization("acme")
    first_id = store_ledger.billing.api_keys(organization.id)[0].id
    # Rotate: create a new key...
    code, out, _ = keys(
        store_settings,
        monkeypatch,
        capsys,
        "create",
        "acme",
        "--scope",
        "read_only",
        "--expires-at",
        "2099-01-01T01:00:00+01:00",
    )
    assert code == 0
    new_key = out.strip().splitlines()[-1]  # The key alone on the last line.
    assert new_key.startswith("tally_") and " " not in new_key
    grant = store_ledger.billing.authenticate_api_key(new_key)
    assert grant is not None and grant.scope == "read_only"
    # ...list (ids, scopes, expiry: never the keys)...
    code, out, _ = keys(store_settings, monkeypatch, capsys, "list", "acme")
    assert code == 0
    assert out.splitlines() == [
        f"{first_id} scope=full expires=never status=active",
        f"{grant.api_key_id} scope=read_only expires=2099-01-01T00:00:00Z status=active",
    ]
    assert first_key not in out and new_key not in out
    # ...then revoke the old one: refused from the next request on.
    code, out, _ = keys(store_settings, monkeypatch, capsys, "revoke", str(first_id))
    assert (code, out.strip()) == (0, f"Revoked API key {first_id}.")
    assert store_ledger.billing.authenticate_api_key(first_key) is None
    _, out, _ = keys(store_settings, monkeypatch, capsys, "list", "acme")
    assert out.splitlines()[0] == f"{first_id} scope=full expires=never status=revoked"
    # Mistakes are named, exit 1.
    unknown = UUID(int=7)
    assert keys(store_settings, monkeypatch, capsys, "revoke", str(unknown))[0::2] == (
        1,
        f"tally: no API key {unknown}\n",
    )
    assert keys(store_settings, monkeypatch, capsys, "list", "nobody")[0] == 1
    code, _, err = keys(
        store_settings,
        monkeypatch,
        capsys,
        "create",
        "acme",
        "--expires-at",
        "2000-01-01T00:00:00Z",
    )
    assert code == 1 and "expires_at" in err
