"""VatNumberCheck: given its history, when VIES answers or fails, then the recorded events."""

from datetime import UTC, datetime, timedelta

from domain.vat import CHECK_INVALID, CHECK_PENDING, CHECK_UNVERIFIED, CHECK_VALID
from domain.vat_check import CHECK_ATTEMPTS_MAX, VatNumberCheck, retry_delay
from tests.builders import ORG_ID

NOW = datetime(2025, 3, 1, 9, 0, tzinfo=UTC)


def requested() -> VatNumberCheck:
    check = VatNumberCheck.request(ORG_ID, "FR40303265045", "DE136695976", NOW)
    check.collect_events()
    return check


def test_a_new_check_is_due_at_once() -> None:
    check = requested()
    assert (check.status, check.is_due(NOW), check.next_attempt_at) == (CHECK_PENDING, True, NOW)


def test_a_failed_attempt_is_retried_later_and_counts() -> None:
    # Given a pending check
    check = requested()
    # When VIES is unavailable
    assert check.record_failure("MS_UNAVAILABLE", NOW)
    # Then one failure is recorded, retried a minute later, and the check stays pending
    [failed] = check.collect_events()
    assert isinstance(failed, VatNumberCheck.AttemptFailed)
    assert (failed.error, failed.retry_at) == ("MS_UNAVAILABLE", NOW + timedelta(minutes=1))
    assert (check.status, check.is_due(NOW), check.failed_attempts) == (CHECK_PENDING, False, 1)


def test_retry_delays_double_up_to_six_hours() -> None:
    delays = [retry_delay(n) for n in range(1, CHECK_ATTEMPTS_MAX)]
    assert delays[:3] == [timedelta(minutes=1), timedelta(minutes=2), timedelta(minutes=4)]
    assert max(delays) == timedelta(hours=6)
    assert sum(delays, timedelta()) > timedelta(hours=18)


def test_the_last_failed_attempt_gives_up() -> None:
    check = requested()
    for _ in range(CHECK_ATTEMPTS_MAX - 1):
        check.record_failure("TIMEOUT", NOW)
    check.collect_events()
    assert check.record_failure("TIMEOUT", NOW)
    [gave_up] = check.collect_events()
    assert isinstance(gave_up, VatNumberCheck.GaveUp)
    assert (check.status, check.is_due(NOW + timedelta(days=1))) == (CHECK_UNVERIFIED, False)


def test_an_answer_keeps_the_consultation_number() -> None:
    check = requested()
    assert check.record_answer(
        valid=True,
        vies_country="FR",
        consultation_number="WAPIAAAAZ0000001",
        checked_at=NOW,
        name="ACME SAS",
        address="",
    )
    [answered] = check.collect_events()
    assert isinstance(answered, VatNumberCheck.Answered)
    assert (answered.consultation_number, answered.address) == ("WAPIAAAAZ0000001", None)
    assert (check.status, check.vies_country) == (CHECK_VALID, "FR")


def test_a_late_answer_or_failure_changes_nothing() -> None:
    check = requested()
    check.record_answer(
        valid=False,
        vies_country="FR",
        consultation_number=None,
        checked_at=NOW,
        name=None,
        address=None,
    )
    check.collect_events()
    assert not check.record_failure("TIMEOUT", NOW)
    assert not check.record_answer(
        valid=True,
        vies_country="FR",
        consultation_number=None,
        checked_at=NOW,
        name=None,
        address=None,
    )
    assert check.collect_events() == []
    assert check.status == CHECK_INVALID


def test_an_answered_check_can_be_requested_again_once() -> None:
    check = requested()
    assert not check.request_again(None, NOW)  # Still pending: nothing to do.
    check.record_answer(
        valid=True,
        vies_country="FR",
        consultation_number=None,
        checked_at=NOW,
        name=None,
        address=None,
    )
    later = NOW + timedelta(days=31)
    assert check.request_again("DE136695976", later)
    assert (check.status, check.requested_at, check.failed_attempts) == (CHECK_PENDING, later, 0)
