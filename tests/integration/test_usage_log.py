"""The usage log on SQLite and PostgreSQL: the UsageLog contract, rollups and a retry storm."""

from collections.abc import Iterator
from contextlib import contextmanager
from uuid import uuid4

import pytest
from hypothesis import HealthCheck, given, settings

from adapters.settings import Settings
from adapters.stores import Ledger, open_ledger
from adapters.usage_postgres import PostgresUsageLog
from adapters.usage_sqlite import SQLiteUsageLog
from api.cli import main
from application.usage_log import StoredUsage
from tests import usage_contract as contract


def test_events_are_appended_found_and_paged(store_ledger: Ledger) -> None:
    contract.check_append_find_and_page(store_ledger.usage)


def test_identical_resends_are_stored_once_and_answer_the_first_record(
    store_ledger: Ledger,
) -> None:
    contract.check_identical_resends_are_stored_once(store_ledger.usage)


def test_a_reused_key_with_another_payload_refuses_the_whole_batch(store_ledger: Ledger) -> None:
    contract.check_a_reused_key_with_another_payload_refuses_the_whole_batch(store_ledger.usage)


@settings(
    max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(history=contract.usage_histories())
def test_totals_equal_combine_of_the_events(
    store_ledger: Ledger, history: contract.History
) -> None:
    contract.check_totals_equal_combine_of_the_events(store_ledger.usage, history)


def test_events_are_ordered_and_bounded_by_sequence(store_ledger: Ledger) -> None:
    contract.check_events_are_ordered_and_bounded_by_sequence(store_ledger.usage)


def test_the_watermark_only_grows(store_ledger: Ledger) -> None:
    contract.check_the_watermark_only_grows(store_ledger.usage)


def test_rebuilt_rollups_equal_the_live_ones_row_for_row(store_ledger: Ledger) -> None:
    contract.check_rebuilt_rollups_equal_the_live_ones(
        store_ledger.usage, lambda: dump_rollups(store_ledger)
    )


def test_a_rebuild_repairs_damaged_rollups(store_ledger: Ledger) -> None:
    org = uuid4()
    at = contract.START
    store_ledger.usage.append(
        [contract.usage(org, f"tx_{n}", value=str(n), at=at) for n in range(1, 4)]
    )
    live = dump_rollups(store_ledger)
    execute(store_ledger, "UPDATE {rollups} SET count = count + 1, sum = '0'")
    assert dump_rollups(store_ledger) != live
    assert store_ledger.usage.rebuild_rollups() == len(live)
    assert dump_rollups(store_ledger) == live


def test_concurrent_overlapping_appends_store_each_event_once(store_ledger: Ledger) -> None:
    contract.check_concurrent_overlapping_appends_store_each_event_once(store_ledger.usage)


def test_voids_append_a_reversal_and_drop_from_totals(store_ledger: Ledger) -> None:
    contract.check_voids_append_a_reversal_and_drop_from_totals(store_ledger.usage)


def test_concurrent_voids_and_appends_keep_rollups_exact(store_ledger: Ledger) -> None:
    contract.check_concurrent_voids_and_appends_keep_rollups_exact(store_ledger.usage)


def test_rebuilt_rollups_equal_the_live_ones_after_voids(store_ledger: Ledger) -> None:
    org = uuid4()
    usage = store_ledger.usage
    usage.append([contract.usage(org, f"tx_{n}", value=str(n)) for n in range(1, 6)])
    for n in (2, 5):
        usage.void(org, f"tx_{n}", "sub_1", contract.RECEIVED_AT)
    live = dump_rollups(store_ledger)
    usage.rebuild_rollups()
    assert dump_rollups(store_ledger) == live


def test_a_transaction_that_commits_late_is_never_hidden_by_the_watermark(
    store_ledger: Ledger,
) -> None:
    usage = store_ledger.usage
    if not isinstance(usage, PostgresUsageLog):
        pytest.skip("SQLite has one writer: commits cannot overtake each other")

    usage.watermark_wait_s = 0  # This thread holds the transaction it would wait for.

    @contextmanager
    def held_append(batch: list[StoredUsage]) -> Iterator[None]:
        with usage.datastore.transaction(commit=True) as curs:
            usage._insert(curs, batch, batch)
            yield

    contract.check_out_of_order_commits(usage, held_append)


def test_the_log_and_its_rollups_survive_a_restart(store_settings: Settings) -> None:
    ledger = open_ledger(store_settings)
    org = uuid4()
    try:
        [stored] = ledger.usage.append([contract.usage(org, "tx_1", value="0.000000000000001")])
    finally:
        ledger.close()
    reopened = open_ledger(store_settings)
    try:
        assert reopened.usage.find(org, "tx_1", "sub_1") == stored
        [total] = reopened.usage.totals(
            org, "sub_1", "tokens", contract.START, contract.START + contract.BUCKET
        )
        assert str(total.rollup.sum) == "1E-15"  # Exact, never through float.
        assert reopened.usage.append([contract.usage(org, "tx_1", value="0.000000000000001")]) == [
            stored
        ]
    finally:
        reopened.close()


def test_the_cli_rebuilds_the_rollups(
    store_settings: Settings, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    ledger = open_ledger(store_settings)
    try:
        ledger.usage.append([contract.usage(uuid4(), "tx_1"), contract.usage(uuid4(), "tx_2")])
    finally:
        ledger.close()
    monkeypatch.setenv("TALLY_DATABASE_URL", store_settings.database_url)
    assert main(["usage", "rebuild-rollups"]) == 0
    assert capsys.readouterr().out == "Rebuilt 2 usage rollup rows.\n"


# --- Reaching into the tables -------------------------------------------------------------------


def execute(ledger: Ledger, statement: str) -> list[tuple[object, ...]]:
    usage = ledger.usage
    if isinstance(usage, PostgresUsageLog):
        with usage.datastore.transaction(commit=True) as curs:
            curs.execute(statement.format(rollups=usage.rollups_table.as_string(curs)))
            return [tuple(row.values()) for row in curs.fetchall()] if curs.description else []
    assert isinstance(usage, SQLiteUsageLog), usage
    with usage.datastore.transaction(commit=True) as c:
        c.execute(statement.format(rollups="usage_rollups"))
        return [tuple(row) for row in c.fetchall()]


def dump_rollups(ledger: Ledger) -> list[tuple[object, ...]]:
    """Every rollup row, in key order: a rebuild must reproduce it exactly."""
    return execute(
        ledger,
        "SELECT * FROM {rollups} ORDER BY organization_id, external_subscription_id, code, "
        "dimensions, bucket_start",
    )
