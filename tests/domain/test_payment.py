"""Payment, Collection and PaymentConnection: given a history, when one command, then events."""

from datetime import UTC, datetime, timedelta
from uuid import UUID

import pytest

from domain.errors import InvalidValueError
from domain.payment import (
    Collection,
    Payment,
    PaymentConnection,
    PaymentNotRefundableError,
    bank_reference,
    invoice_payment_state,
    parse_retry_schedule,
)
from tests.builders import ORG_ID
from tests.domain.test_journal import TOKENS_IN, finalized

NOW = datetime(2026, 3, 1, tzinfo=UTC)
INVOICE_ID = UUID("00000000-0000-4000-8000-0000000000a1")
CUSTOMER_ID = UUID("00000000-0000-4000-8000-0000000000c1")
CREDIT_NOTE_ID = UUID("00000000-0000-4000-8000-0000000000e1")


def attempt(number: int = 1, amount_cents: int = 3000, provider: str = "stripe") -> Payment:
    payment = Payment.attempt(
        organization_id=ORG_ID,
        invoice_id=INVOICE_ID,
        customer_id=CUSTOMER_ID,
        external_customer_id="acme",
        number=number,
        amount_cents=amount_cents,
        currency="EUR",
        provider=provider,
        connection_code="eu",
        provider_customer_id="cus_1",
        payment_method_id="pm_1",
        reference_prefix="TLY",
        now=NOW,
    )
    payment.collect_events()
    return payment


def paid(amount_cents: int = 3000) -> Payment:
    payment = attempt(amount_cents=amount_cents)
    payment.succeed("pi_1", NOW)
    payment.collect_events()
    return payment


def test_an_attempts_idempotency_key_derives_from_its_invoice_and_number() -> None:
    # When the second attempt at an invoice is made
    payment = Payment.attempt(
        organization_id=ORG_ID, invoice_id=INVOICE_ID, customer_id=CUSTOMER_ID,
        external_customer_id="acme", number=2, amount_cents=3000, currency="EUR",
        provider="stripe", connection_code="eu", provider_customer_id="cus_1",
        payment_method_id="pm_1", reference_prefix="TLY", now=NOW,
    )  # fmt: skip
    # Then its id and key are those of (invoice, 2), every time
    [created] = payment.collect_events()
    assert isinstance(created, Payment.Created)
    assert created.idempotency_key == f"tally-invoice-{INVOICE_ID}-attempt-2"
    assert payment.id == Payment.create_id(INVOICE_ID, "provider", 2) == attempt(2).id
    assert (payment.status, payment.reference) == ("pending", None)


def test_a_bank_transfer_attempt_carries_a_reference_from_its_id() -> None:
    payment = attempt(provider="bank_transfer")
    assert payment.reference == bank_reference(payment.id, "TLY")
    assert payment.reference is not None and payment.reference.startswith("TLY-")


def test_a_manual_payment_is_succeeded_at_once() -> None:
    payment = Payment.manual(
        organization_id=ORG_ID, invoice_id=INVOICE_ID, customer_id=CUSTOMER_ID,
        external_customer_id="acme", number=1, amount_cents=500, currency="EUR",
        reference="wire 42", paid_at=NOW - timedelta(days=1), now=NOW,
    )  # fmt: skip
    created, succeeded = payment.collect_events()
    assert isinstance(created, Payment.Created) and isinstance(succeeded, Payment.Succeeded)
    assert (payment.status, payment.paid_at, payment.idempotency_key) == (
        "succeeded",
        NOW - timedelta(days=1),
        None,
    )


@pytest.mark.parametrize("amount_cents", [0, -1, 10**14 + 1])
def test_an_amount_out_of_range_is_refused(amount_cents: int) -> None:
    with pytest.raises(InvalidValueError) as refused:
        attempt(amount_cents=amount_cents)
    assert refused.value.field == "amount_cents"


def test_a_failure_after_the_success_records_nothing() -> None:
    # Given a payment that succeeded
    payment = paid()
    # When the processor's older failure arrives late, and the success again
    assert not payment.fail("card_declined", None, NOW)
    assert not payment.cancel("canceled", NOW)
    assert not payment.succeed("pi_1", NOW)
    # Then nothing is recorded
    assert payment.collect_events() == []
    assert payment.status == "succeeded"


def test_a_success_after_a_failure_is_recorded() -> None:
    # Given a failed attempt
    payment = attempt()
    payment.fail("card_declined", "Declined.", NOW)
    payment.collect_events()
    # When the customer completes it after all
    assert payment.succeed("pi_1", NOW + timedelta(hours=1))
    [succeeded] = payment.collect_events()
    assert isinstance(succeeded, Payment.Succeeded)
    assert (payment.status, payment.provider_payment_id) == ("succeeded", "pi_1")


def test_an_outage_is_recorded_only_while_the_processor_has_not_answered() -> None:
    payment = attempt()
    assert payment.record_submission_failure("timed out", NOW)
    assert payment.record_submission("pi_1", NOW)
    assert not payment.record_submission("pi_1", NOW)  # The same answer again.
    assert not payment.record_submission_failure("timed out", NOW)
    submission_failed, submitted = payment.collect_events()
    assert isinstance(submission_failed, Payment.SubmissionFailed)
    assert isinstance(submitted, Payment.Submitted)
    assert (payment.submission_errors, payment.is_submitted) == (1, True)


def test_refunds_are_requested_once_per_credit_note_within_what_was_paid() -> None:
    payment = paid(3000)
    assert payment.request_refund(CREDIT_NOTE_ID, 1000, NOW)
    assert not payment.request_refund(CREDIT_NOTE_ID, 1000, NOW)
    with pytest.raises(InvalidValueError):
        payment.request_refund(UUID(int=9), 2001, NOW)
    [requested] = payment.collect_events()
    assert isinstance(requested, Payment.RefundRequested)
    assert requested.idempotency_key == f"tally-refund-{CREDIT_NOTE_ID}-{payment.id}"
    assert payment.refundable_amount_cents == 2000


def test_a_payment_refunded_in_full_is_refunded() -> None:
    payment = paid(3000)
    payment.request_refund(CREDIT_NOTE_ID, 3000, NOW)
    assert payment.update_refund(CREDIT_NOTE_ID, "re_1", "succeeded", NOW)
    assert not payment.update_refund(CREDIT_NOTE_ID, None, "pending", NOW)  # Late news.
    assert (payment.status, payment.refunded_amount_cents) == ("refunded", 3000)


def test_an_unpaid_payment_cannot_be_refunded() -> None:
    with pytest.raises(PaymentNotRefundableError):
        attempt().request_refund(CREDIT_NOTE_ID, 100, NOW)


def test_a_lost_dispute_is_recorded_once() -> None:
    payment = paid()
    assert payment.close_dispute("lost", NOW)
    assert not payment.close_dispute("lost", NOW)
    assert len(payment.collect_events()) == 1


def test_a_collection_numbers_payments_by_type() -> None:
    collection = Collection.start(ORG_ID, INVOICE_ID)
    collection.add(attempt(1))
    assert (collection.next_number("provider"), collection.next_number("manual")) == (2, 1)
    with pytest.raises(AssertionError):
        collection.add(attempt(3))  # Numbers have no gaps.
    assert collection.mark_overdue(NOW)
    assert not collection.mark_overdue(NOW + timedelta(days=1))
    events = collection.collect_events()
    assert [type(e) for e in events] == [
        Collection.Created,
        Collection.PaymentAdded,
        Collection.MarkedOverdue,
    ]


@pytest.mark.parametrize(
    ("text", "delays"),
    [
        ("1d,3d,7d", (timedelta(days=1), timedelta(days=3), timedelta(days=7))),
        (" 30m , 12h ", (timedelta(minutes=30), timedelta(hours=12))),
        ("", ()),
    ],
)
def test_a_retry_schedule_reads_as_delays(text: str, delays: tuple[timedelta, ...]) -> None:
    assert parse_retry_schedule(text) == delays


@pytest.mark.parametrize("text", ["1w", "0d", "91d", "1d;3d", ",".join(["1d"] * 11)])
def test_a_retry_schedule_out_of_bounds_is_refused(text: str) -> None:
    with pytest.raises(InvalidValueError):
        parse_retry_schedule(text)


def test_a_connection_records_settings_but_no_secrets() -> None:
    connection = PaymentConnection.create(
        ORG_ID, "eu", "stripe", {"name": "EU account", "retry_schedule": "1d, 3d"}
    )
    [created] = connection.collect_events()
    assert isinstance(created, PaymentConnection.Created)
    assert created.settings == {"name": "EU account", "retry_schedule": "1d,3d"}
    with pytest.raises(InvalidValueError) as secret:
        PaymentConnection.create(ORG_ID, "us", "stripe", {"secret_key": "sk_live_x"})
    assert secret.value.reason == "unsupported_field"
    with pytest.raises(InvalidValueError):
        PaymentConnection.create(ORG_ID, "us", "paypal", {})


def test_an_invoices_payment_state_counts_partial_payments_and_the_overdue_mark() -> None:
    invoice = finalized([TOKENS_IN])  # 120.00 EUR with VAT.
    collection = Collection.start(ORG_ID, invoice.id)
    partial = Payment.manual(
        organization_id=ORG_ID,
        invoice_id=invoice.id,
        customer_id=invoice.customer_id,
        external_customer_id="cus_1",
        number=1,
        amount_cents=2_000,
        currency="EUR",
        reference="wire",
        paid_at=NOW,
        now=NOW,
    )
    failed = attempt()
    failed.fail("card_declined", None, NOW)
    state = invoice_payment_state(invoice, collection, [partial, failed])
    assert (state.total_paid_amount_cents, state.total_due_amount_cents) == (2_000, 10_000)
    assert state.payment_overdue is False
    collection.mark_overdue(NOW)
    assert invoice_payment_state(invoice, collection, [partial]).payment_overdue is True
    invoice.set_payment_status("succeeded")
    state = invoice_payment_state(invoice, collection, [partial])
    assert (state.total_paid_amount_cents, state.total_due_amount_cents) == (12_000, 0)
    assert state.payment_overdue is False


def test_a_lost_dispute_shows_on_the_invoice_when_it_was_lost() -> None:
    invoice = finalized([TOKENS_IN])
    payment = paid(12_000)
    assert invoice_payment_state(invoice, None, [payment]).payment_dispute_lost_at is None
    lost_at = NOW + timedelta(days=20)
    payment.close_dispute("lost", lost_at)
    state = invoice_payment_state(invoice, None, [payment])
    assert (state.payment_dispute_lost_at, state.total_paid_amount_cents) == (lost_at, 12_000)
