"""The in-memory usage log keeps the UsageLog contract; dedupe_batch resolves repeated keys."""

from dataclasses import replace
from uuid import uuid4

import pytest
from hypothesis import given, settings

from adapters.stores import Ledger
from application.errors import TransactionIdConflictError
from application.usage_log import MemoryUsageLog, dedupe_batch, usage_key
from tests import usage_contract as contract


def test_events_are_appended_found_and_paged() -> None:
    contract.check_append_find_and_page(MemoryUsageLog())


def test_identical_resends_are_stored_once_and_answer_the_first_record() -> None:
    contract.check_identical_resends_are_stored_once(MemoryUsageLog())


def test_a_reused_key_with_another_payload_refuses_the_whole_batch() -> None:
    contract.check_a_reused_key_with_another_payload_refuses_the_whole_batch(MemoryUsageLog())


@settings(max_examples=25, deadline=None)
@given(history=contract.usage_histories())
def test_totals_equal_combine_of_the_events(history: contract.History) -> None:
    contract.check_totals_equal_combine_of_the_events(MemoryUsageLog(), history)


def test_events_are_ordered_and_bounded_by_sequence() -> None:
    contract.check_events_are_ordered_and_bounded_by_sequence(MemoryUsageLog())


def test_the_watermark_only_grows() -> None:
    contract.check_the_watermark_only_grows(MemoryUsageLog())


def test_rebuilt_rollups_equal_the_live_ones() -> None:
    contract.check_rebuilt_rollups_equal_the_live_ones(MemoryUsageLog())


def test_concurrent_overlapping_appends_store_each_event_once() -> None:
    contract.check_concurrent_overlapping_appends_store_each_event_once(MemoryUsageLog())


def test_voids_append_a_reversal_and_drop_from_totals() -> None:
    contract.check_voids_append_a_reversal_and_drop_from_totals(MemoryUsageLog())


def test_concurrent_voids_and_appends_keep_rollups_exact() -> None:
    contract.check_concurrent_voids_and_appends_keep_rollups_exact(MemoryUsageLog())


def test_the_memory_ledger_has_a_usage_log(ledger: Ledger) -> None:
    assert isinstance(ledger.usage, MemoryUsageLog)


# --- dedupe_batch ---------------------------------------------------------------------------


def test_dedupe_batch_keeps_each_key_once_and_points_repeats_at_the_first() -> None:
    org = uuid4()
    a, b = contract.usage(org, "a"), contract.usage(org, "b")
    other_subscription = contract.usage(org, "a", subscription="sub_2")
    assert dedupe_batch([a, b, a, other_subscription, b]) == ([0, 1, 3], {2: 0, 4: 1})
    assert dedupe_batch([]) == ([], {})


def test_dedupe_batch_names_the_first_input_that_disagrees() -> None:
    org = uuid4()
    a, changed = contract.usage(org, "a", value="1"), contract.usage(org, "a", value="2")
    new = contract.usage(org, "n")
    with pytest.raises(TransactionIdConflictError) as in_batch:
        dedupe_batch([new, a, new, changed])
    assert (in_batch.value.index, in_batch.value.transaction_id) == (3, "a")
    with pytest.raises(TransactionIdConflictError) as with_stored:
        dedupe_batch([new, changed, a], {usage_key(a): a.fingerprint})
    assert with_stored.value.index == 1
    # A stored identical key is a first input (its record comes from the store), repeats follow.
    assert dedupe_batch([new, a, a], {usage_key(a): a.fingerprint}) == ([0, 1], {2: 1})


def test_a_placed_record_is_the_record_with_its_sequence_and_position() -> None:
    record = contract.usage(uuid4(), "t-1")
    placed = record.placed(7, 9)
    assert placed == replace(record, sequence=7, position=9)
    assert (record.sequence, record.position) == (0, 0)  # The original is unchanged.
