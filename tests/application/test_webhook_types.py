"""The outbox's wallet, payment and scheduled subscription webhooks, and key rotation, on the
in-memory store with fake ports (ADR 0022)."""

import base64
import hashlib
import hmac
import json
import random
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any
from uuid import UUID

import jwt
import pytest

from adapters.outbox import MemoryOutbox, MemorySigningKeyStore
from adapters.settings import SettingsError, memory_settings
from adapters.stores import Ledger, open_ledger
from adapters.webhook_sender import RsaJwtSigner, key_id, webhook_settings_from_env
from api.webhook_payloads import WebhookPayloads
from application.billing import Billing
from application.metering import EventInput
from application.wallets import TopUpValues, WalletValues
from application.webhooks import Notice, WebhookMessage, Webhooks
from domain import ids
from domain.errors import InvalidValueError
from domain.wallet import RuleInput
from tests.application.test_payments import SECRETS, FakeProcessors
from tests.application.test_webhooks import SETTINGS, Clock, Receiver, Signer

MARCH_1 = datetime(2026, 3, 1, tzinfo=UTC)
MARCH_10 = datetime(2026, 3, 10, tzinfo=UTC)


def render(billing: Billing, notice: Notice) -> bytes:
    """A fake renderer: what the notice names, and the version it was rendered at."""
    return json.dumps(
        {
            "webhook_type": notice.webhook_type,
            "object_type": notice.object_type,
            "lago_id": str(notice.aggregate.id),
            "subject_id": str(notice.subject_id) if notice.subject_id else None,
            "version": notice.aggregate.version,
            "at": notice.at.isoformat(),
            "details": {k: str(v) for k, v in (notice.details or {}).items()},
        }
    ).encode()


class World:
    def __init__(self, ledger: Ledger, processors: FakeProcessors) -> None:
        self.ledger = ledger
        self.processors = processors
        self.receiver = Receiver()
        self.clock = Clock(datetime.now(UTC))
        self.webhooks = self.open_webhooks(MemoryOutbox())
        organization, _ = ledger.billing.create_organization("acme")
        self.org = organization.id
        self.webhooks.create_endpoint(
            self.org,
            webhook_url="https://hooks.example/a",
            signature_algo=None,
            name=None,
            event_types=None,
        )

    def open_webhooks(self, outbox: MemoryOutbox, signer: Any = None) -> Webhooks:
        return Webhooks(
            self.ledger.billing,
            outbox,
            render=render,
            transport=self.receiver,
            signer=signer or Signer(),
            settings=SETTINGS,
            rng=random.Random(7),
            clock=self.clock,
        )

    def messages(self) -> list[WebhookMessage]:
        """Every message, in the order of the log."""
        self.webhooks.catch_up()
        return self.webhooks.messages(self.org, [], 1, 1000)[0][::-1]

    def of(self, object_id: UUID) -> list[tuple[str, str]]:
        return [(m.webhook_type, m.status) for m in self.messages() if m.object_id == object_id]

    def wallet(self, **values: Any) -> UUID:
        return self.ledger.wallets.create_wallet(
            self.org,
            WalletValues(
                external_customer_id="acme", currency="EUR", rate_amount=Decimal(1), **values
            ),
        ).id


@pytest.fixture
def processors() -> FakeProcessors:
    return FakeProcessors()


@pytest.fixture
def world(processors: FakeProcessors) -> Iterator[World]:
    ledger = open_ledger(memory_settings(), payment_providers=processors)
    ledger.billing.now = lambda: MARCH_1
    yield World(ledger, processors)
    ledger.close()


def customer_on_stripe(world: World) -> None:
    world.ledger.payments.create_connection(
        world.org, "eu", "stripe", {"retry_schedule": "1d"}, SECRETS
    )
    world.ledger.billing.upsert_customer(
        world.org,
        "acme",
        {
            "currency": "EUR",
            "billing_configuration": {"payment_provider": "stripe", "payment_provider_code": "eu"},
        },
    )


# Wallets.


def test_a_wallets_life_is_announced_per_resource_in_the_order_of_its_events(
    world: World,
) -> None:
    world.ledger.billing.upsert_customer(world.org, "acme", {"currency": "EUR"})
    wallet_id = world.wallet(
        code="main", paid_credits=Decimal(20), granted_credits=Decimal(10), name="Main"
    )
    world.ledger.wallets.update_wallet(world.org, wallet_id, WalletValues(name="Renamed"))
    [voided] = world.ledger.wallets.top_up(
        world.org, wallet_id, TopUpValues(voided_credits=Decimal(4))
    )
    world.ledger.wallets.terminate_wallet(world.org, wallet_id)
    wallet = world.ledger.wallets.wallet(world.org, wallet_id)
    assert world.of(wallet_id) == [
        ("wallet.created", "pending"),
        ("wallet.updated", "pending"),
        ("wallet.terminated", "pending"),
    ]
    by_kind = {t.kind: t.transaction_id for t in wallet.entries()}
    assert set(by_kind) == {"purchased", "granted", "voided"}
    forfeited = wallet.entries()[-1]
    assert (forfeited.void_reason, forfeited.amount_cents) == ("terminated", 600)
    for transaction in wallet.entries():
        assert world.of(transaction.transaction_id) == [("wallet_transaction.created", "pending")]
    bodies = {
        json.loads(m.payload)["subject_id"]: json.loads(m.payload)
        for m in world.messages()
        if m.object_type == "wallet_transaction"
    }
    assert bodies[str(voided.transaction_id)]["lago_id"] == str(wallet_id)
    # Exactly once: catching up again enqueues nothing; a rebuild makes the same messages.
    count = len(world.messages())
    assert len(world.messages()) == count
    rebuilt = world.open_webhooks(MemoryOutbox())
    rebuilt.catch_up()
    again = rebuilt.messages(world.org, [], 1, 1000)[0][::-1]
    assert [(m.id, m.payload) for m in again] == [(m.id, m.payload) for m in world.messages()]


def test_a_failed_top_up_payment_is_announced_for_its_invoice_and_its_transaction(
    world: World,
) -> None:
    customer_on_stripe(world)
    wallet_id = world.wallet()
    world.processors.declines = 1
    [bought] = world.ledger.wallets.top_up(
        world.org, wallet_id, TopUpValues(paid_credits=Decimal(20))
    )
    [payment] = world.ledger.payments.collect(MARCH_1)
    assert payment.status == "failed"
    # The transaction's webhooks in the order of the log: created, the payment's failure (Lago's
    # DeliverErrorWebhookService), then its status (failed) once the invoice's status says so.
    assert world.of(bought.transaction_id) == [
        ("wallet_transaction.created", "pending"),
        ("wallet_transaction.payment_failure", "pending"),
        ("wallet_transaction.updated", "pending"),
    ]
    assert bought.invoice_id is not None
    assert world.of(bought.invoice_id) == [
        ("invoice.drafted", "canceled"),  # Finalized by the save that drafted it.
        ("invoice.created", "pending"),
        ("invoice.payment_failure", "pending"),
        ("invoice.payment_status_updated", "pending"),
    ]
    [failure] = [m for m in world.messages() if m.webhook_type == "invoice.payment_failure"]
    body = json.loads(failure.payload)
    assert (failure.object_type, body["lago_id"]) == (
        "payment_provider_invoice_payment_error",
        str(payment.id),
    )
    assert body["details"] == {"message": "None", "error_code": "card_declined"}


def test_a_settled_purchase_updates_its_transaction(world: World) -> None:
    customer_on_stripe(world)
    wallet_id = world.wallet()
    [bought] = world.ledger.wallets.top_up(
        world.org, wallet_id, TopUpValues(paid_credits=Decimal(20))
    )
    world.ledger.payments.collect(MARCH_1)
    assert world.of(bought.transaction_id) == [
        ("wallet_transaction.created", "pending"),
        ("wallet_transaction.updated", "pending"),
    ]
    assert not [m for m in world.messages() if m.webhook_type.endswith("payment_failure")]


def test_the_ongoing_balance_is_announced_once_per_crossing_of_zero(world: World) -> None:
    billing = world.ledger.billing
    metric = billing.create_billable_metric(
        world.org,
        "tokens",
        {"name": "Tokens", "aggregation_type": "sum_agg", "field_name": "tokens"},
    )
    billing.create_plan(
        world.org,
        "basic",
        {
            "name": "Basic",
            "interval": "monthly",
            "amount_cents": 0,
            "amount_currency": "EUR",
            "pay_in_advance": False,
            "charges": [
                {
                    "billable_metric_id": str(metric.id),
                    "charge_model": "standard",
                    "properties": {"amount": "0.01"},
                }
            ],
        },
    )
    billing.create_subscription(
        world.org, "sub_1", external_customer_id="acme", plan_code="basic", subscription_at=MARCH_1
    )
    wallet_id = world.wallet(granted_credits=Decimal(10))
    billing.now = lambda: MARCH_10

    def use(transaction_id: str, tokens: int) -> None:
        world.ledger.metering.ingest(
            world.org,
            [
                EventInput(
                    transaction_id,
                    "sub_1",
                    "tokens",
                    int(MARCH_10.timestamp()),
                    {"tokens": tokens},
                    None,
                )
            ],
            batch=False,
        )
        world.ledger.wallets.refresh(world.org, "acme")

    use("t1", 1500)  # 10.00 − 15.00: depleted.
    use("t2", 100)  # Still below zero: the same crossing.
    world.ledger.wallets.top_up(world.org, wallet_id, TopUpValues(granted_credits=Decimal(20)))
    world.ledger.wallets.refresh(world.org, "acme")  # 30.00 − 16.00: above again.
    use("t3", 1500)  # 30.00 − 31.00: the second crossing.
    depleted = [
        json.loads(m.payload)
        for m in world.messages()
        if m.webhook_type == "wallet.depleted_ongoing_balance"
    ]
    assert [d["details"]["ongoing_balance_cents"] for d in depleted] == ["-500", "-100"]


def test_a_rule_with_a_threshold_announces_its_top_up(world: World) -> None:
    world.ledger.billing.upsert_customer(world.org, "acme", {"currency": "EUR"})
    rule = RuleInput(trigger="threshold", threshold_credits=Decimal(5), granted_credits=Decimal(10))
    wallet_id = world.wallet(granted_credits=Decimal(2), rules=[rule])
    world.ledger.wallets.refresh(world.org, "acme")
    wallet = world.ledger.wallets.wallet(world.org, wallet_id)
    [automatic] = [t for t in wallet.entries() if t.source == "threshold"]
    assert world.of(automatic.transaction_id) == [("wallet_transaction.created", "pending")]


# Payments.


def test_an_overdue_invoice_is_announced_once(world: World) -> None:
    billing = world.ledger.billing
    billing.upsert_customer(world.org, "acme", {"currency": "EUR", "net_payment_term": 10})
    billing.create_plan(
        world.org,
        "advance",
        {
            "name": "Advance",
            "interval": "monthly",
            "amount_cents": 3000,
            "amount_currency": "EUR",
            "pay_in_advance": True,
        },
    )
    billing.create_subscription(
        world.org,
        "sub_1",
        external_customer_id="acme",
        plan_code="advance",
        subscription_at=MARCH_1,
    )
    [invoice] = world.ledger.invoicing.run(MARCH_1)
    world.ledger.payments.dunning(datetime(2026, 3, 20, tzinfo=UTC))
    world.ledger.payments.dunning(datetime(2026, 3, 21, tzinfo=UTC))
    overdue = [m for m in world.messages() if m.webhook_type == "invoice.payment_overdue"]
    assert [(m.object_id, m.object_type) for m in overdue] == [(invoice.id, "invoice")]
    assert json.loads(overdue[0].payload)["subject_id"] == str(invoice.id)


# Subscriptions that end by themselves.


def test_a_subscription_is_terminated_at_its_ending_at_without_a_call(world: World) -> None:
    billing = world.ledger.billing
    billing.create_plan(
        world.org,
        "basic",
        {
            "name": "Basic",
            "interval": "monthly",
            "amount_cents": 0,
            "amount_currency": "EUR",
            "pay_in_advance": False,
        },
    )
    now = datetime.now(UTC).replace(microsecond=0)
    billing.now = lambda: now
    ending = now + timedelta(days=30)
    billing.create_subscription(
        world.org, "sub_1", external_customer_id="acme", plan_code="basic", ending_at=ending
    )
    subscription_id = billing.subscription(world.org, "sub_1").id
    # 45 days before the end has passed: only the alert 15 days before is scheduled.
    assert world.of(subscription_id) == [
        ("subscription.started", "pending"),
        ("subscription.termination_alert", "pending"),
        ("subscription.terminated", "pending"),
    ]
    later = ending + timedelta(days=30)
    billing.update_subscription(world.org, "sub_1", ending_at=later)  # The end moves.
    scheduled = [
        (m.webhook_type, m.next_attempt_at)
        for m in world.messages()
        if m.object_id == subscription_id and m.status == "pending"
    ]
    assert scheduled == [
        ("subscription.started", scheduled[0][1]),
        ("subscription.termination_alert", later - timedelta(days=45)),
        ("subscription.termination_alert", later - timedelta(days=15)),
        ("subscription.terminated", later),
    ]
    [terminated] = [
        m
        for m in world.messages()
        if m.webhook_type == "subscription.terminated" and m.status == "pending"
    ]
    assert json.loads(terminated.payload)["at"] == later.isoformat()  # As it is then.

    def sent() -> list[str]:
        return [json.loads(body)["webhook_type"] for _, body, _ in world.receiver.requests]

    world.clock.instant = datetime.now(UTC)
    world.webhooks.run_once()
    assert sent() == ["customer.created", "subscription.started"]
    world.clock.instant = later - timedelta(days=15)
    world.webhooks.run_once()
    assert sent()[2:] == ["subscription.termination_alert"] * 2
    world.clock.instant = later
    world.webhooks.run_once()
    assert sent()[4:] == ["subscription.terminated"]
    assert [s for t, s in world.of(subscription_id) if t == "subscription.terminated"] == [
        "canceled",  # The end first planned, moved by the update.
        "succeeded",
    ]


def test_a_call_before_the_ending_at_terminates_now_and_cancels_the_scheduled_end(
    world: World,
) -> None:
    billing = world.ledger.billing
    billing.create_plan(
        world.org,
        "basic",
        {
            "name": "Basic",
            "interval": "monthly",
            "amount_cents": 0,
            "amount_currency": "EUR",
            "pay_in_advance": False,
        },
    )
    now = datetime.now(UTC).replace(microsecond=0)
    billing.now = lambda: now
    billing.create_subscription(
        world.org,
        "sub_1",
        external_customer_id="acme",
        plan_code="basic",
        ending_at=now + timedelta(days=30),
    )
    billing.create_subscription(
        world.org,
        "sub_2",
        external_customer_id="acme",
        plan_code="basic",
        subscription_at=now + timedelta(days=1),
        ending_at=now + timedelta(days=30),
    )
    billing.terminate_subscription(world.org, "sub_1")
    billing.terminate_subscription(world.org, "sub_2", status="pending")  # Canceled.
    first = billing.subscription(world.org, "sub_1", status="terminated").id
    second = billing.subscription(world.org, "sub_2", status="canceled").id
    assert world.of(first) == [
        ("subscription.started", "pending"),
        ("subscription.termination_alert", "canceled"),
        ("subscription.terminated", "canceled"),
        ("subscription.terminated", "pending"),
    ]
    assert world.of(second) == [
        ("subscription.started", "canceled"),
        ("subscription.termination_alert", "canceled"),
        ("subscription.terminated", "canceled"),
        ("subscription.canceled", "pending"),
    ]


# Key rotation.


def test_a_rotated_signing_key_signs_new_deliveries_and_the_old_one_stays_listed(
    world: World,
) -> None:
    store = MemorySigningKeyStore()
    signer = RsaJwtSigner(store, "https://tally.test")
    webhooks = world.open_webhooks(MemoryOutbox(), signer)
    before = signer.jwt(b'{"n":1}')
    old_pem = webhooks.public_key_pem()
    rotated = webhooks.rotate_signing_key()
    after = signer.jwt(b'{"n":2}')
    assert rotated.public_key_pem == webhooks.public_key_pem() != old_pem
    keys = webhooks.public_keys()
    assert [(k.public_key_pem, k.retired_at) for k in keys] == [
        (rotated.public_key_pem, None),
        (old_pem, world.clock.instant),
    ]
    by_kid = {k.kid: k.public_key_pem for k in keys}
    for token, body in ((before, '{"n":1}'), (after, '{"n":2}')):
        kid = jwt.get_unverified_header(token)["kid"]
        decoded = jwt.decode(token, by_kid[kid], algorithms=["RS256"], issuer="https://tally.test")
        assert decoded["data"] == body
    assert key_id(old_pem) == jwt.get_unverified_header(before)["kid"] != rotated.kid
    world.clock.advance(SETTINGS.key_grace_s + 1)  # After the grace period: only the current.
    assert [k.public_key_pem for k in webhooks.public_keys()] == [rotated.public_key_pem]


def test_a_rotated_hmac_key_signs_from_now_on_and_the_history_keeps_the_old_one(
    world: World,
) -> None:
    old = world.webhooks.hmac_key(world.org)
    new = world.webhooks.rotate_hmac_key(world.org)
    assert new != old and world.webhooks.hmac_key(world.org) == new
    body = b'{"webhook_type":"customer.created"}'
    expected = base64.b64encode(hmac.new(new.encode(), body, hashlib.sha256).digest()).decode()
    assert world.webhooks.signature("hmac", world.org, body) == expected
    assert [key for key, _ in world.webhooks.hmac_keys(world.org)] == [new, old]
    # Another process (the command line) rotates: this one signs with it once it reads again.
    other = world.open_webhooks(world.webhooks.outbox)  # type: ignore[arg-type]
    newest = other.rotate_hmac_key(world.org)
    world.webhooks._hmac_keys.clear()  # As after KEY_REFRESH_S.
    assert world.webhooks.hmac_key(world.org) == newest


def test_a_failed_refund_is_announced_for_its_credit_note(world: World) -> None:
    billing = world.ledger.billing
    billing.upsert_customer(world.org, "acme", {"currency": "EUR"})
    billing.create_plan(
        world.org,
        "advance",
        {
            "name": "Advance",
            "interval": "monthly",
            "amount_cents": 3000,
            "amount_currency": "EUR",
            "pay_in_advance": True,
        },
    )
    billing.create_subscription(
        world.org,
        "sub_1",
        external_customer_id="acme",
        plan_code="advance",
        subscription_at=MARCH_1,
    )
    [invoice] = world.ledger.invoicing.run(MARCH_1)
    world.ledger.invoicing.set_payment_status(world.org, invoice.id, "succeeded")
    note = world.ledger.credit_notes.create(
        world.org, invoice.id, [(invoice.fees[0].key, 1000)], refund_amount_cents=1000
    )
    world.ledger.credit_notes.set_refund_status(world.org, note.id, "failed")
    assert world.of(note.id) == [
        ("credit_note.created", "pending"),
        ("credit_note.refund_failure", "pending"),
    ]
    [failure] = [m for m in world.messages() if m.webhook_type == "credit_note.refund_failure"]
    assert failure.object_type == "credit_note_payment_provider_refund_error"
    assert json.loads(failure.payload)["details"] == {
        "message": "Payment refund failed",
        "error_code": "None",
    }


def test_the_grace_period_of_a_retired_key_is_a_setting() -> None:
    assert webhook_settings_from_env({}).key_grace_s == 7 * 86400
    assert webhook_settings_from_env({"TALLY_WEBHOOK_KEY_GRACE_S": "60"}).key_grace_s == 60
    with pytest.raises(SettingsError):
        webhook_settings_from_env({"TALLY_WEBHOOK_KEY_GRACE_S": "-1"})


def test_an_hmac_key_cannot_be_rotated_to_itself_or_to_a_short_one(world: World) -> None:
    organization = world.ledger.billing.organization(world.org)
    assert organization.hmac_key is not None
    for refused in (organization.hmac_key, "short"):
        with pytest.raises(InvalidValueError):
            organization.rotate_hmac_key(refused)
    assert organization.collect_events() == []


# Pay-in-advance fees.


def test_each_pay_in_advance_fee_is_announced_before_its_invoice(world: World) -> None:
    ledger, org = world.ledger, world.org
    metric = ledger.billing.create_billable_metric(
        org, "seats", {"name": "Seats", "aggregation_type": "sum_agg", "field_name": "seats"}
    )
    ledger.billing.create_plan(
        org,
        "advance",
        {
            "name": "Advance",
            "interval": "monthly",
            "amount_cents": 0,
            "amount_currency": "EUR",
            "pay_in_advance": False,
            "charges": [
                {
                    "billable_metric_id": str(metric.id),
                    "charge_model": "standard",
                    "pay_in_advance": True,
                    "properties": {"amount": "2"},
                }
            ],
        },
    )
    ledger.billing.create_subscription(
        org, "sub_1", external_customer_id="acme", plan_code="advance", subscription_at=MARCH_1
    )
    ledger.billing.now = lambda: MARCH_10
    events = [
        EventInput(f"t{n}", "sub_1", "seats", int(MARCH_10.timestamp()), {"seats": 3}, None)
        for n in range(2)
    ]
    ledger.metering.ingest(org, events, batch=True)
    [invoice] = [i for i in ledger.invoicing.run(MARCH_10) if i.fees]
    fees = [fee for fee in invoice.fees if fee.pay_in_advance]
    assert len(fees) == 2
    messages = [m for m in world.messages() if m.webhook_type in ("fee.created", "invoice.created")]
    assert [m.webhook_type for m in messages] == ["fee.created", "fee.created", "invoice.created"]
    assert {m.object_id for m in messages[:2]} == {ids.fee_id(invoice.id, f.key) for f in fees}

    # The API's renderer: the fee as GET /invoices/{id} shows it.
    fee_id = messages[0].object_id
    notice = Notice("fee.created", "fee", invoice, org, MARCH_10, subject_id=fee_id)
    body = json.loads(WebhookPayloads("http://127.0.0.1:8000")(ledger.billing, notice))
    assert body["webhook_type"] == "fee.created" and body["object_type"] == "fee"
    assert body["fee"]["lago_id"] == str(fee_id)
    assert body["fee"]["pay_in_advance"] is True
    assert body["fee"]["amount_cents"] == 600
