"""TALLY_DATABASE_URL chooses the store; anything else fails clearly, never falling back."""

from pathlib import Path

import pytest

from adapters.settings import SettingsError, parse_database_url


def test_unset_means_sqlite_in_the_working_directory() -> None:
    settings = parse_database_url("")
    assert (settings.store, settings.sqlite_path) == ("sqlite", Path(".tally/tally.db"))


def test_a_sqlite_url_names_the_file() -> None:
    settings = parse_database_url("sqlite:////var/lib/tally/ledger.db")
    assert settings.sqlite_path == Path("/var/lib/tally/ledger.db")
    assert settings.eventsourcing_env["PERSISTENCE_MODULE"] == "eventsourcing.sqlite"


def test_a_postgresql_url_configures_the_event_store() -> None:
    settings = parse_database_url("postgresql://tally:s%40cret@db.internal:6543/ledger?schema=s1")
    env = settings.eventsourcing_env
    assert settings.store == "postgres"
    assert (env["POSTGRES_HOST"], env["POSTGRES_PORT"], env["POSTGRES_DBNAME"]) == (
        "db.internal",
        "6543",
        "ledger",
    )
    assert (env["POSTGRES_USER"], env["POSTGRES_PASSWORD"], env["POSTGRES_SCHEMA"]) == (
        "tally",
        "s@cret",
        "s1",
    )


@pytest.mark.parametrize(
    "url",
    ["memory://", "mysql://localhost/tally", "sqlite:///", "sqlite:///:memory:", "postgresql://"],
)
def test_any_other_value_fails_with_a_message_naming_the_setting(url: str) -> None:
    with pytest.raises(SettingsError) as error:
        parse_database_url(url)
    assert "TALLY_DATABASE_URL" in str(error.value)
