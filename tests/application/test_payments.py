"""Payments as use cases, on a fixed clock, with a fake processor behind the port: collection,
outages, dunning, webhooks through the inbox, manual payments, refunds, overdue invoices,
paid top-ups, bank transfers."""

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any
from uuid import UUID

import pytest

from adapters.bank_transfer import BankTransferProvider
from adapters.settings import memory_settings
from adapters.stores import Ledger, open_ledger
from application.payments import (
    BalanceTransaction,
    PaymentProvider,
    PaymentRequest,
    PaymentResult,
    Payout,
    ProviderCustomer,
    ProviderEvent,
    ProviderUnavailableError,
    RefundRequest,
    RefundResult,
    TransferReceived,
    WebhookSignatureError,
)
from application.wallets import TopUpValues, WalletValues
from domain.errors import InvalidValueError
from domain.invoice import Invoice
from domain.payment import Payment, PaymentInProgressError, PaymentRetryStatusError

MARCH_1 = datetime(2026, 3, 1, tzinfo=UTC)
SECRETS = {"secret_key": "sk_test_eu_0001", "webhook_secret": "whsec_eu_0001"}


@dataclass
class FakeProcessors:
    """The PaymentProviders port: a processor per secret key, with what each was asked."""

    requests: list[tuple[str, PaymentRequest]] = field(default_factory=list)
    refunds: list[tuple[str, RefundRequest]] = field(default_factory=list)
    charged: dict[str, PaymentResult] = field(default_factory=dict)  # By idempotency key.
    outages: int = 0  # The next calls raise ProviderUnavailableError (after charging: lost).
    declines: int = 0
    status: str = "succeeded"
    payment_method: str | None = "pm_card"
    defaults: dict[str, str] = field(default_factory=dict)
    broken_reads: int = 0
    balance: list[BalanceTransaction] = field(default_factory=list)  # The processor's history.
    payouts: list[Payout] = field(default_factory=list)

    def open(self, provider: str, secrets: Mapping[str, str]) -> PaymentProvider:
        if provider == "bank_transfer":
            return BankTransferProvider()
        return FakeProcessor(self, dict(secrets))


@dataclass
class FakeProcessor:
    world: FakeProcessors
    secrets: dict[str, str]
    requires_customer: bool = True

    def create_customer(self, customer: ProviderCustomer, idempotency_key: str) -> str:
        return f"cus_{customer.external_id}"

    def default_payment_method(self, provider_customer_id: str | None) -> str | None:
        return self.world.defaults.get(provider_customer_id or "", self.world.payment_method)

    def set_default_payment_method(self, provider_customer_id: str, payment_method_id: str) -> None:
        self.world.defaults[provider_customer_id] = payment_method_id

    def checkout_url(
        self, provider_customer_id: str, currency: str | None, success_url: str | None
    ) -> str:
        return f"https://pay.test/{provider_customer_id}"

    def create_payment(self, request: PaymentRequest) -> PaymentResult:
        world = self.world
        world.requests.append((self.secrets["secret_key"], request))
        key = request.idempotency_key
        if key not in world.charged:
            number = len(world.charged) + 1
            if world.declines > 0:
                world.declines -= 1
                world.charged[key] = PaymentResult("failed", f"pi_{number}", "card_declined")
            else:
                world.charged[key] = PaymentResult(world.status, f"pi_{number}")
        if world.outages > 0:
            world.outages -= 1
            raise ProviderUnavailableError("timed out")  # After charging: the answer is lost.
        return world.charged[key]

    def find_payment(self, provider_payment_id: str) -> UUID | None:
        return None

    def refund(self, request: RefundRequest) -> RefundResult:
        self.world.refunds.append((self.secrets["secret_key"], request))
        return RefundResult(f"re_{request.idempotency_key}", "succeeded")

    def parse_webhook(self, payload: bytes, signature: str | None) -> ProviderEvent:
        if signature != self.secrets["webhook_secret"]:
            raise WebhookSignatureError("bad signature")
        return self._event(payload)

    def balance_transactions(
        self, created_from: datetime, created_to: datetime
    ) -> list[BalanceTransaction]:
        if self.world.outages > 0:
            self.world.outages -= 1
            raise ProviderUnavailableError("timed out")
        return [t for t in self.world.balance if created_from <= t.created_at < created_to]

    def payouts(self, created_from: datetime, created_to: datetime) -> list[Payout]:
        return [p for p in self.world.payouts if created_from <= p.created_at < created_to]

    def read_event(self, payload: bytes) -> ProviderEvent:
        if self.world.broken_reads > 0:
            self.world.broken_reads -= 1
            raise RuntimeError("the store hiccuped")
        return self._event(payload)

    @staticmethod
    def _event(payload: bytes) -> ProviderEvent:
        data = json.loads(payload)
        return ProviderEvent(
            event_id=data["id"],
            event_type=data["type"],
            occurred_at=datetime.fromisoformat(data["at"]),
            payment_id=UUID(data["payment_id"]) if data.get("payment_id") else None,
            provider_payment_id=data.get("pi"),
            provider_customer_id=data.get("customer"),
            payment_method_id=data.get("payment_method"),
            failure_code=data.get("code"),
        )


@pytest.fixture
def processors() -> FakeProcessors:
    return FakeProcessors()


@pytest.fixture
def ledger(processors: FakeProcessors) -> Iterator[Ledger]:
    ledger = open_ledger(memory_settings(), payment_providers=processors)
    at(ledger, MARCH_1)
    yield ledger
    ledger.close()


@pytest.fixture
def org(ledger: Ledger) -> UUID:
    organization, _ = ledger.billing.create_organization("acme")
    ledger.billing.create_plan(
        organization.id,
        "advance",
        {
            "name": "Advance",
            "interval": "monthly",
            "amount_cents": 3000,
            "amount_currency": "EUR",
            "pay_in_advance": True,
            "charges": [],
        },
    )
    ledger.payments.create_connection(
        organization.id, "eu", "stripe", {"retry_schedule": "1d,3d"}, SECRETS
    )
    return organization.id


def at(ledger: Ledger, instant: datetime) -> None:
    ledger.billing.now = lambda: instant


def customer(ledger: Ledger, org: UUID, provider: str | None = "stripe", **fields: Any) -> None:
    configuration = {"payment_provider": provider, "payment_provider_code": "eu"}
    ledger.billing.upsert_customer(
        org,
        "acme",
        {"currency": "EUR", "billing_configuration": configuration if provider else {}, **fields},
    )


def invoice_of_march(ledger: Ledger, org: UUID) -> Invoice:
    """The in-advance fee of March: 30.00 EUR, finalized at once."""
    ledger.billing.create_subscription(
        org, "sub_1", external_customer_id="acme", plan_code="advance", subscription_at=MARCH_1
    )
    [invoice] = ledger.invoicing.run(MARCH_1)
    assert (invoice.status, invoice.totals.total_amount_cents) == ("finalized", 3000)
    return invoice


def reload(ledger: Ledger, invoice: Invoice) -> Invoice:
    return ledger.invoicing.invoice(invoice.organization_id, invoice.id)


def signed(processors: FakeProcessors, ledger: Ledger, **event: Any) -> None:
    payload = json.dumps({"at": MARCH_1.isoformat(), **event}).encode()
    ledger.payments.receive_webhook("stripe", "eu", payload, SECRETS["webhook_secret"])


def test_a_finalized_invoice_is_charged_once_on_the_customers_connection(
    ledger: Ledger, org: UUID, processors: FakeProcessors
) -> None:
    customer(ledger, org)
    invoice = invoice_of_march(ledger, org)
    [payment] = ledger.payments.collect(MARCH_1)
    [(account, request)] = processors.requests
    assert account == SECRETS["secret_key"]
    assert (request.amount_cents, request.currency, request.idempotency_key) == (
        3000,
        "EUR",
        f"tally-invoice-{invoice.id}-attempt-1",
    )
    assert (request.provider_customer_id, request.payment_method_id) == ("cus_acme", "pm_card")
    assert (payment.status, payment.provider_payment_id) == ("succeeded", "pi_1")
    assert reload(ledger, invoice).payment_status == "succeeded"
    recorded = ledger.billing.customer(org, "acme").fields["billing_configuration"]
    assert recorded["provider_customer_id"] == "cus_acme"
    assert ledger.payments.collect(MARCH_1 + timedelta(hours=1)) == []
    assert len(processors.requests) == 1


def test_an_outage_is_submitted_again_with_the_same_key_and_charges_once(
    ledger: Ledger, org: UUID, processors: FakeProcessors
) -> None:
    customer(ledger, org)
    invoice = invoice_of_march(ledger, org)
    processors.outages = 2  # Two answers lost; the processor charged at the first call.
    [pending] = ledger.payments.collect(MARCH_1)
    assert (pending.status, pending.is_submitted, pending.submission_errors) == (
        "pending",
        False,
        1,
    )
    assert reload(ledger, invoice).payment_status == "pending"
    ledger.payments.collect(MARCH_1 + timedelta(minutes=1))
    ledger.payments.collect(MARCH_1 + timedelta(minutes=2))
    keys = [request.idempotency_key for _, request in processors.requests]
    assert keys == [f"tally-invoice-{invoice.id}-attempt-1"] * 3
    assert len(processors.charged) == 1
    [payment] = ledger.payments.invoice_payments(org, invoice.id)
    assert (payment.status, payment.provider_payment_id) == ("succeeded", "pi_1")
    assert reload(ledger, invoice).payment_status == "succeeded"


def test_an_attempt_never_acknowledged_for_a_day_is_failed_not_sent_with_a_new_key(
    ledger: Ledger, org: UUID, processors: FakeProcessors
) -> None:
    customer(ledger, org)
    invoice = invoice_of_march(ledger, org)
    processors.outages = 1
    ledger.payments.collect(MARCH_1)
    ledger.payments.collect(MARCH_1 + timedelta(hours=24))
    [payment] = ledger.payments.invoice_payments(org, invoice.id)
    assert (payment.status, payment.failure_code) == ("failed", "submission_unconfirmed")
    assert len(processors.requests) == 1


def test_a_declined_payment_is_retried_on_the_schedule_until_dunning_ends(
    ledger: Ledger, org: UUID, processors: FakeProcessors
) -> None:
    customer(ledger, org)
    invoice = invoice_of_march(ledger, org)
    processors.declines = 10
    [first] = ledger.payments.collect(MARCH_1)
    assert (first.status, first.failure_code) == ("failed", "card_declined")
    assert reload(ledger, invoice).payment_status == "failed"
    assert ledger.payments.collect(MARCH_1 + timedelta(days=5)) == []  # Dunning's, not collect's.
    assert ledger.payments.dunning(MARCH_1 + timedelta(hours=23)) == []
    [second] = ledger.payments.dunning(MARCH_1 + timedelta(days=1))
    assert (second.number, second.idempotency_key) == (2, f"tally-invoice-{invoice.id}-attempt-2")
    assert ledger.payments.dunning(MARCH_1 + timedelta(days=3, hours=23)) == []
    [third] = ledger.payments.dunning(MARCH_1 + timedelta(days=4))
    assert third.number == 3 and third.status == "failed"
    assert ledger.payments.dunning(MARCH_1 + timedelta(days=60)) == []  # "1d,3d": over.
    assert len(processors.requests) == 3
    assert reload(ledger, invoice).payment_status == "failed"


def test_retry_payment_starts_an_attempt_now_and_is_refused_unless_the_payment_failed(
    ledger: Ledger, org: UUID, processors: FakeProcessors
) -> None:
    customer(ledger, org)
    invoice = invoice_of_march(ledger, org)
    with pytest.raises(PaymentRetryStatusError):
        ledger.payments.retry_payment(org, invoice.id)  # Pending, never attempted.
    processors.declines = 1
    ledger.payments.collect(MARCH_1)
    processors.status = "processing"
    retried = ledger.payments.retry_payment(org, invoice.id)
    assert retried is not None and (retried.number, retried.status) == (2, "pending")
    assert reload(ledger, invoice).payment_status == "pending"
    ledger.invoicing.set_payment_status(org, invoice.id, "failed")  # Lago's PUT, by hand.
    with pytest.raises(PaymentInProgressError):
        ledger.payments.retry_payment(org, invoice.id)


def test_webhooks_are_stored_once_and_late_or_repeated_news_change_nothing(
    ledger: Ledger, org: UUID, processors: FakeProcessors
) -> None:
    customer(ledger, org)
    invoice = invoice_of_march(ledger, org)
    processors.status = "processing"
    [payment] = ledger.payments.collect(MARCH_1)
    assert reload(ledger, invoice).payment_status == "pending"
    succeeded = {"type": "payment_intent.succeeded", "payment_id": str(payment.id), "pi": "pi_1"}
    signed(processors, ledger, id="evt_2", **succeeded)
    paid = ledger.payments.payment(org, payment.id)
    assert (paid.status, reload(ledger, invoice).payment_status) == ("succeeded", "succeeded")
    signed(processors, ledger, id="evt_2", **succeeded)  # Redelivered.
    signed(processors, ledger, id="evt_1", **{**succeeded, "type": "payment_intent.payment_failed"})
    assert ledger.payments.payment(org, payment.id).version == paid.version
    assert reload(ledger, invoice).payment_status == "succeeded"
    assert ledger.payment_store.unprocessed(10) == []
    stored = ledger.payment_store.inbox_item(org, "eu", "evt_2")
    assert stored is not None and stored.processed_at is not None
    with pytest.raises(WebhookSignatureError):
        ledger.payments.receive_webhook("stripe", "eu", b'{"id": "evt_3"}', "forged")
    assert ledger.payment_store.inbox_item(org, "eu", "evt_3") is None


def test_a_webhook_whose_processing_failed_is_processed_by_the_next_round(
    ledger: Ledger, org: UUID, processors: FakeProcessors
) -> None:
    customer(ledger, org)
    invoice = invoice_of_march(ledger, org)
    processors.status = "processing"
    [payment] = ledger.payments.collect(MARCH_1)
    processors.broken_reads = 1
    signed(processors, ledger, id="evt_1", type="payment_intent.succeeded",
           payment_id=str(payment.id), pi="pi_1")  # fmt: skip
    [kept] = ledger.payment_store.unprocessed(10)
    assert (kept.event_id, kept.attempts) == ("evt_1", 1)
    assert reload(ledger, invoice).payment_status == "pending"
    ledger.payments.collect(MARCH_1 + timedelta(minutes=1))
    assert ledger.payment_store.unprocessed(10) == []
    assert reload(ledger, invoice).payment_status == "succeeded"


def test_manual_payments_add_up_and_pay_the_invoice_when_they_reach_what_is_due(
    ledger: Ledger, org: UUID
) -> None:
    customer(ledger, org, provider=None)
    invoice = invoice_of_march(ledger, org)
    first = ledger.payments.create_manual_payment(org, invoice.id, 1000, "wire 1", None)
    assert (first.status, first.payment_type, first.paid_at) == ("succeeded", "manual", MARCH_1)
    assert reload(ledger, invoice).payment_status == "pending"
    with pytest.raises(InvalidValueError) as too_much:
        ledger.payments.create_manual_payment(org, invoice.id, 2001, "wire 2", None)
    assert too_much.value.reason == "invalid_amount"
    ledger.payments.create_manual_payment(org, invoice.id, 2000, "wire 2", None)
    assert reload(ledger, invoice).payment_status == "succeeded"
    with pytest.raises(InvalidValueError) as paid:
        ledger.payments.create_manual_payment(org, invoice.id, 1, "wire 3", None)
    assert paid.value.reason == "invalid_status"
    found, total = ledger.payments.payments(org, 1, 10, external_customer_id="acme")
    assert total == 2 and [p.reference for p in found] == ["wire 2", "wire 1"]


def test_a_partial_manual_payment_leaves_the_rest_to_the_processor(
    ledger: Ledger, org: UUID, processors: FakeProcessors
) -> None:
    customer(ledger, org)
    invoice = invoice_of_march(ledger, org)
    ledger.payments.create_manual_payment(org, invoice.id, 1000, "cash", None)
    [payment] = ledger.payments.collect(MARCH_1)
    assert payment.amount_cents == 2000
    assert reload(ledger, invoice).payment_status == "succeeded"


def test_a_credit_note_refund_goes_back_through_the_processor_once(
    ledger: Ledger, org: UUID, processors: FakeProcessors
) -> None:
    customer(ledger, org)
    invoice = invoice_of_march(ledger, org)
    [payment] = ledger.payments.collect(MARCH_1)
    fee_key = invoice.fees[0].key
    note = ledger.credit_notes.create(
        org, invoice.id, [(fee_key, 1000)], refund_amount_cents=1000, reason="other"
    )
    assert note.refund_status == "pending"
    ledger.payments.collect(MARCH_1 + timedelta(hours=1))
    ledger.payments.collect(MARCH_1 + timedelta(hours=2))
    [(account, refund)] = processors.refunds
    assert (account, refund.amount_cents, refund.provider_payment_id) == (
        SECRETS["secret_key"],
        1000,
        "pi_1",
    )
    assert refund.idempotency_key == f"tally-refund-{note.id}-{payment.id}"
    assert ledger.credit_notes.credit_note(org, note.id).refund_status == "succeeded"
    refunded = ledger.payments.payment(org, payment.id)
    assert (refunded.refunded_amount_cents, refunded.status) == (1000, "succeeded")


def test_an_unpaid_invoice_past_its_due_date_is_marked_overdue_once(
    ledger: Ledger, org: UUID
) -> None:
    customer(ledger, org, provider=None, net_payment_term=10, timezone="Europe/Paris")
    invoice = invoice_of_march(ledger, org)
    assert invoice.payment_due_date is not None and invoice.payment_due_date.day == 11
    ledger.payments.dunning(datetime(2026, 3, 11, 22, 59, tzinfo=UTC))  # 23:59 in Paris.
    assert not ledger.payments.payment_overdue(reload(ledger, invoice))
    ledger.payments.dunning(datetime(2026, 3, 11, 23, 0, tzinfo=UTC))  # March 12 in Paris.
    assert ledger.payments.payment_overdue(reload(ledger, invoice))
    collection = ledger.billing.repository.get(ledger_collection_id(invoice))
    version = collection.version
    ledger.payments.dunning(datetime(2026, 3, 20, tzinfo=UTC))
    assert ledger.billing.repository.get(ledger_collection_id(invoice)).version == version
    ledger.payments.create_manual_payment(org, invoice.id, 3000, "late", None)
    assert not ledger.payments.payment_overdue(reload(ledger, invoice))


def ledger_collection_id(invoice: Invoice) -> UUID:
    from domain import ids

    return ids.collection_id(invoice.id)


def test_a_paid_top_up_settles_its_credits_only_when_its_payment_succeeds(
    ledger: Ledger, org: UUID, processors: FakeProcessors
) -> None:
    customer(ledger, org)
    wallet = ledger.wallets.create_wallet(
        org, WalletValues(external_customer_id="acme", currency="EUR", rate_amount=Decimal(1))
    )
    processors.status = "processing"
    [bought] = ledger.wallets.top_up(org, wallet.id, TopUpValues(paid_credits=Decimal(20)))
    [payment] = ledger.payments.collect(MARCH_1)
    assert payment.amount_cents == 2000
    assert ledger.wallets.wallet(org, wallet.id).balance_cents == 0
    assert (
        ledger.wallets.wallet(org, wallet.id).transactions[bought.transaction_id].status
        == "pending"
    )
    signed(processors, ledger, id="evt_1", type="payment_intent.succeeded",
           payment_id=str(payment.id), pi="pi_1")  # fmt: skip
    settled = ledger.wallets.wallet(org, wallet.id)
    assert (settled.balance_cents, settled.transactions[bought.transaction_id].status) == (
        2000,
        "settled",
    )


def test_a_failed_top_up_payment_fails_its_transaction(
    ledger: Ledger, org: UUID, processors: FakeProcessors
) -> None:
    customer(ledger, org)
    wallet = ledger.wallets.create_wallet(
        org, WalletValues(external_customer_id="acme", currency="EUR", rate_amount=Decimal(1))
    )
    processors.declines = 1
    [bought] = ledger.wallets.top_up(org, wallet.id, TopUpValues(paid_credits=Decimal(20)))
    [payment] = ledger.payments.collect(MARCH_1)
    assert payment.status == "failed"
    failed = ledger.wallets.wallet(org, wallet.id)
    assert (failed.balance_cents, failed.transactions[bought.transaction_id].status) == (
        0,
        "failed",
    )


def test_bank_transfers_get_a_reference_and_a_matching_statement_line_pays_them(
    ledger: Ledger, org: UUID
) -> None:
    ledger.payments.create_connection(
        org, "bank", "bank_transfer", {"reference_prefix": "ACME"}, {}
    )
    ledger.billing.upsert_customer(
        org,
        "acme",
        {"currency": "EUR", "billing_configuration": {"payment_provider": "bank_transfer"}},
    )
    invoice = invoice_of_march(ledger, org)
    [payment] = ledger.payments.collect(MARCH_1)
    assert payment.reference is not None and payment.reference.startswith("ACME-")
    assert (payment.status, payment.provider_payment_id) == ("pending", payment.reference)
    received = datetime(2026, 3, 5, tzinfo=UTC)
    lines = [
        TransferReceived("NOPE-1", 3000, "EUR", received),
        TransferReceived(payment.reference.lower(), 2999, "EUR", received),
        TransferReceived(payment.reference, 3000, "EUR", received),
        TransferReceived(payment.reference, 3000, "EUR", received),
    ]
    results = ledger.payments.reconcile_transfers(org, lines)
    assert [r.result for r in results] == [
        "unknown_reference",
        "amount_mismatch",
        "matched",
        "already_matched",
    ]
    paid = ledger.payments.payment(org, payment.id)
    assert (paid.status, paid.paid_at) == ("succeeded", received)
    assert reload(ledger, invoice).payment_status == "succeeded"


def test_without_a_payment_method_the_attempt_fails_and_checkout_brings_a_retry(
    ledger: Ledger, org: UUID, processors: FakeProcessors
) -> None:
    customer(ledger, org)
    invoice = invoice_of_march(ledger, org)
    processors.payment_method = None
    [first] = ledger.payments.collect(MARCH_1)
    assert (first.status, first.failure_code) == ("failed", "payment_method_missing")
    assert processors.requests == []
    assert ledger.payments.checkout_url(org, "acme") == "https://pay.test/cus_acme"
    signed(processors, ledger, id="evt_1", type="setup_intent.succeeded", customer="cus_acme",
           payment_method="pm_new")  # fmt: skip
    [(_, request)] = processors.requests
    assert (request.payment_method_id, request.idempotency_key) == (
        "pm_new",
        f"tally-invoice-{invoice.id}-attempt-2",
    )
    assert reload(ledger, invoice).payment_status == "succeeded"


def test_a_connections_secrets_stay_out_of_its_events(ledger: Ledger, org: UUID) -> None:
    connection = ledger.payments.connection(org, "eu")
    recorded = repr([e.__dict__ for e in ledger.billing.events.get(connection.id)])
    assert SECRETS["secret_key"] not in recorded and SECRETS["webhook_secret"] not in recorded
    assert ledger.payments.secret_hints(org, "eu") == {
        "secret_key": "…0001",
        "webhook_secret": "…0001",
    }
    ledger.payments.delete_connection(org, "eu")
    assert ledger.payment_store.secrets(org, "eu") is None
    assert ledger.payments.connections(org) == []


def test_payments_are_numbered_per_invoice(ledger: Ledger, org: UUID) -> None:
    customer(ledger, org, provider=None)
    invoice = invoice_of_march(ledger, org)
    one = ledger.payments.create_manual_payment(org, invoice.id, 100, "a", None)
    two = ledger.payments.create_manual_payment(org, invoice.id, 100, "b", None)
    assert (one.number, two.number) == (1, 2)
    assert one.id == Payment.create_id(invoice.id, "manual", 1)


def charge(pi: str, cents: int, at: datetime, **more: Any) -> BalanceTransaction:
    fee = cents * 14 // 1000 + 25
    values: dict[str, Any] = {"provider_payment_id": pi, **more}
    return BalanceTransaction(f"txn_{pi}_{cents}", "charge", cents, fee, cents - fee, "EUR", at,
                              **values)  # fmt: skip


def test_processor_transactions_are_matched_to_recorded_payments(
    ledger: Ledger, org: UUID, processors: FakeProcessors
) -> None:
    customer(ledger, org)
    invoice = invoice_of_march(ledger, org)
    [payment] = ledger.payments.collect(MARCH_1)
    assert (payment.status, payment.provider_payment_id) == ("succeeded", "pi_1")
    day = datetime(2026, 3, 2, tzinfo=UTC)
    processors.balance = [
        charge("pi_0", 999, datetime(2026, 2, 20, tzinfo=UTC)),  # Before the period: unseen.
        charge("pi_1", 3000, MARCH_1 + timedelta(seconds=5)),
        charge("pi_9", 500, day),  # Nobody's.
        BalanceTransaction("txn_adj", "adjustment", -100, 0, -100, "EUR", day),
        BalanceTransaction("txn_po", "payout", -2_833, 0, -2_833, "EUR", day, payout_id="po_1"),
    ]
    processors.payouts = [Payout("po_1", 2_833, "EUR", "paid", day, day.date())]
    report = ledger.payments.reconcile_processors(org, date(2026, 3, 1), date(2026, 3, 31))
    items = report.items
    found = [(i.result, i.transaction_id, i.processor_cents, i.recorded_cents) for i in items]
    assert found == [
        ("matched", "txn_pi_1_3000", 3000, 3000),
        ("unknown_payment", "txn_pi_9_500", 500, None),
        ("other", "txn_adj", -100, None),
    ]  # fmt: skip
    assert report.items[0].invoice_id == invoice.id
    assert [i.result for i in report.differences] == ["unknown_payment", "other"]
    assert report.fees == (("eu", "EUR", 67 + 32),)
    assert [(code, p.payout_id) for code, p in report.payouts] == [("eu", "po_1")]
    # A charge of another amount is a difference; a payment with no charge at all too.
    processors.balance = [charge("pi_1", 2_999, MARCH_1)]
    [mismatch] = ledger.payments.reconcile_processors(
        org, date(2026, 3, 1), date(2026, 3, 31)
    ).items
    assert (mismatch.result, mismatch.processor_cents, mismatch.recorded_cents) == (
        "amount_mismatch", 2_999, 3_000,
    )  # fmt: skip
    again = BalanceTransaction("txn_again", "charge", 3000, 67, 2933, "EUR", day, "pi_1")
    processors.balance = [charge("pi_1", 3000, MARCH_1), again]
    report = ledger.payments.reconcile_processors(org, date(2026, 3, 1), date(2026, 3, 31))
    assert [(i.result, i.transaction_id) for i in report.items] == [
        ("matched", "txn_pi_1_3000"),
        ("duplicate", "txn_again"),  # The customer paid twice.
    ]
    processors.balance = []
    [missing] = ledger.payments.reconcile_processors(
        None, date(2026, 3, 1), date(2026, 3, 31)
    ).items
    assert (missing.result, missing.payment_id, missing.detail) == (
        "missing_at_processor", payment.id, "pi_1",
    )  # fmt: skip
    # The processor cannot be asked: said so, not taken for "nothing happened".
    processors.outages = 1
    [down] = ledger.payments.reconcile_processors(org, date(2026, 3, 1), date(2026, 3, 31)).items
    assert down.result == "processor_unavailable" and down.is_difference


def test_a_bank_statement_is_matched_like_processor_transactions(ledger: Ledger, org: UUID) -> None:
    ledger.payments.create_connection(org, "bank", "bank_transfer", {}, {})
    ledger.billing.upsert_customer(
        org,
        "acme",
        {"currency": "EUR", "billing_configuration": {"payment_provider": "bank_transfer"}},
    )
    invoice_of_march(ledger, org)
    [payment] = ledger.payments.collect(MARCH_1)
    assert payment.reference is not None
    received = datetime(2026, 3, 6, tzinfo=UTC)
    statement = {"bank": [TransferReceived(payment.reference.lower(), 3000, "EUR", received)]}
    march = (date(2026, 3, 1), date(2026, 3, 31))
    # Without a statement a bank has nothing to say.
    assert ledger.payments.reconcile_processors(org, *march).items == ()
    [unpaid] = ledger.payments.reconcile_processors(org, *march, statement).items
    assert (unpaid.result, unpaid.payment_id) == ("not_recorded_as_paid", payment.id)
    ledger.payments.reconcile_transfers(org, statement["bank"])
    [matched] = ledger.payments.reconcile_processors(org, *march, statement).items
    assert (matched.result, matched.fee_cents, matched.is_difference) == ("matched", 0, False)
