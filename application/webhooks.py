"""Webhooks: an outbox policy that turns domain events into Lago's webhooks, and their delivery.

The outbox follows the notification log like the resource index. For each event it renders the
aggregate at that event's version once, and stores one message per matching endpoint together
with its tracking position in one transaction, so every message is enqueued exactly once, even
when several processes catch up. It also projects the endpoints themselves, so the endpoints an
event goes to are those that existed before it in the log: a replay enqueues the same messages.

Delivery claims due messages, only the oldest pending message of each (endpoint, resource), so a
resource's messages arrive in the order of its events; it signs them (an RS256 JWT or the
organization's HMAC), posts them, and retries any non-2xx answer, timeout or network error with
exponential back-off and full jitter, up to a maximum of attempts, after which a message is
failed (and can be retried through the API). Delivery is at least once: a receiver deduplicates
on X-Lago-Unique-Key, which is the message id.

What time alone brings about (a pending subscription's start, its ending_at and the alerts
before it) is enqueued when planned, due at that instant. The signing keys rotate (ADR 0022).
"""

import base64
import hashlib
import hmac
import json
import logging
import random
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any, Final, Protocol
from uuid import UUID, uuid4, uuid5

from eventsourcing.application import AggregateNotFoundError
from eventsourcing.domain import BaseAggregate
from eventsourcing.persistence import IntegrityError, Tracking, TrackingRecorder
from eventsourcing.projection import Projection
from eventsourcing.utils import get_topic

from application.billing import Billing
from application.errors import AlreadyExistsError, ConcurrencyConflictError, NotFoundError
from application.projections import CatchUp
from application.wallets import credit_invoice_transaction
from domain import ids
from domain.credit_note import CreditNote
from domain.customer import Customer
from domain.errors import InvalidValueError, NotAllowedError
from domain.ids import NAMESPACE
from domain.invoice import Invoice
from domain.limits import COMMAND_RETRIES_MAX
from domain.organization import Organization, new_hmac_key
from domain.payment import Collection, Payment
from domain.subscription import Subscription
from domain.wallet import Wallet
from domain.webhook_endpoint import (
    WEBHOOK_ENDPOINTS_MAX,
    WebhookEndpoint,
    webhook_endpoint_id,
)

logger = logging.getLogger("tally.webhooks")

MESSAGE_STATUSES: Final = ("pending", "succeeded", "failed", "canceled")
RESPONSE_CHARS_MAX: Final = 2000  # What we keep of a receiver's answer, for inspection.
GENERATIONS_MAX: Final = 10_000  # Endpoints created, deleted and created again with one URL.
# invoice.drafted waits this long, so that the Finalized of the same save (processed right after
# it) cancels it before a worker can send it.
DRAFT_HOLD: Final = timedelta(seconds=2)
# How long a process signs with a key it has read: a rotation made by another process (the
# command line) reaches every delivery worker within this time.
KEY_REFRESH_S: Final = 5.0
# subscription.termination_alert goes this many days before ending_at (Lago's default, its
# LAGO_SUBSCRIPTION_TERMINATION_ALERT_SENT_AT_DAYS).
TERMINATION_ALERT_DAYS: Final = (45, 15)


@dataclass(frozen=True)
class WebhookSettings:
    """Delivery settings (adapters/webhook_sender.py reads them from TALLY_WEBHOOK_*)."""

    api_url: str = "http://127.0.0.1:8000"  # The JWT's iss: the public origin of the API.
    attempts_max: int = 15  # With the back-off below: about two hours of outage, on average.
    backoff_base_s: float = 2.0  # The ceiling of the n-th retry's delay is base · 2^(n-1) ...
    backoff_cap_s: float = 3600.0  # ... up to this; the delay is uniform below it (full jitter).
    timeout_s: float = 30.0  # Lago's timeout.
    poll_s: float = 1.0  # How often the worker looks for new events and due messages.
    batch_max: int = 20  # Messages claimed at once.
    concurrency: int = 4  # Messages posted at once by one worker.
    # A retired JWT key stays listed (GET /webhooks/public_keys) this long after its rotation.
    key_grace_s: float = 7 * 86400.0

    @property
    def lease_s(self) -> float:
        """How long a claim lasts: a worker that died mid-delivery is retried after it."""
        return self.timeout_s + 30.0


# Ports.


@dataclass(frozen=True)
class DeliveryResult:
    """What one POST got: an HTTP status and body, or the error that prevented one."""

    status_code: int | None
    body: str = ""
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


class WebhookTransport(Protocol):
    def post(
        self, url: str, body: bytes, headers: Mapping[str, str], timeout_s: float
    ) -> DeliveryResult:
        """POST the body; never raises for a network error or timeout, it reports them."""


@dataclass(frozen=True)
class SigningKey:
    """The public half of a JWT signing key: the current one, or one retired by a rotation."""

    public_key_pem: bytes
    kid: str  # The JWT header's kid: which key signed a webhook.
    created_at: datetime
    retired_at: datetime | None = None  # None: the key that signs now.


class WebhookSigner(Protocol):
    def jwt(self, body: bytes) -> str:
        """RS256 JWT of {"data": body, "iss": the API URL}, with the instance's private key."""

    def public_key_pem(self) -> bytes:
        """The PEM SubjectPublicKeyInfo that verifies the JWTs."""

    def signing_keys(self) -> list[SigningKey]:
        """The current key, then the retired ones, newest first."""

    def rotate(self, now: datetime) -> SigningKey:
        """A new key pair signs from now on; the old public key is kept (ADR 0022)."""


@dataclass(frozen=True)
class Notice:
    """One webhook to render: Lago's type, the object's type, the object and the instant."""

    webhook_type: str
    object_type: str
    aggregate: BaseAggregate[UUID]
    organization_id: UUID
    at: datetime  # The event's instant: the payload is the object as it was then.
    # The part of the aggregate the webhook is about: a wallet's transaction, a payment's
    # invoice. None: the aggregate itself.
    subject_id: UUID | None = None
    # Facts of the event the object does not hold (a processor's error), recorded in the event.
    details: Mapping[str, Any] | None = None


class PayloadRenderer(Protocol):
    def __call__(self, billing: Billing, notice: Notice) -> bytes:
        """Lago's JSON body: {"webhook_type", "object_type", <object_type>: {...}}."""


# The outbox's records.


@dataclass(frozen=True)
class Route:
    """An endpoint as the outbox knows it at its position in the log."""

    endpoint_id: UUID
    organization_id: UUID
    webhook_url: str
    event_types: tuple[str, ...] | None
    created_at: datetime

    def accepts(self, webhook_type: str) -> bool:
        return self.event_types is None or webhook_type in self.event_types


@dataclass(frozen=True)
class WebhookMessage:
    id: UUID  # Also the X-Lago-Unique-Key.
    organization_id: UUID
    endpoint_id: UUID
    webhook_type: str
    object_type: str
    object_id: UUID  # The resource: messages of one (endpoint, resource) go in order.
    position: int  # The notification id of the event, then the ordinal within it.
    ordinal: int
    payload: str
    status: str
    attempts: int
    next_attempt_at: datetime
    created_at: datetime
    updated_at: datetime
    endpoint: str  # The URL of the last attempt (at first, the endpoint's at enqueue).
    http_status: int | None = None
    response: str | None = None
    last_error: str | None = None
    last_attempt_at: datetime | None = None
    delivered_at: datetime | None = None


@dataclass(frozen=True)
class Outcome:
    """The result of one attempt: pending again (a retry), succeeded, failed or canceled."""

    status: str
    at: datetime
    endpoint: str
    http_status: int | None = None
    response: str | None = None
    error: str | None = None
    next_attempt_at: datetime | None = None


class OutboxView(TrackingRecorder, ABC):
    """The outbox: the endpoints and the messages, each change written with its position."""

    @abstractmethod
    def put_route(self, route: Route, tracking: Tracking) -> None:
        """Add an endpoint, or replace the one with this id."""

    @abstractmethod
    def remove_route(self, endpoint_id: UUID, tracking: Tracking) -> None: ...

    @abstractmethod
    def routes(self, organization_id: UUID) -> list[Route]:
        """The organization's endpoints, oldest first."""

    @abstractmethod
    def route_page(self, organization_id: UUID, page: int, per_page: int) -> tuple[list[UUID], int]:
        """Endpoint ids of one page (1-based), newest first, and the total count."""

    @abstractmethod
    def enqueue(
        self,
        messages: Sequence[WebhookMessage],
        cancel: Sequence[tuple[UUID, str]],
        tracking: Tracking,
    ) -> None:
        """Cancel the pending messages of these (object id, type) pairs, then add messages."""

    @abstractmethod
    def claim(
        self, now: datetime, limit: int, lease_until: datetime, token: str
    ) -> list[WebhookMessage]:
        """Lease due messages, the oldest pending one of each (endpoint, resource) only, and
        count the attempt. A message leased by another worker is skipped until its lease ends."""

    @abstractmethod
    def finish(self, message_id: UUID, token: str, outcome: Outcome) -> bool:
        """Record an attempt's outcome, if the lease is still ours; returns whether it was."""

    @abstractmethod
    def message(self, organization_id: UUID, message_id: UUID) -> WebhookMessage | None: ...

    @abstractmethod
    def page(
        self, organization_id: UUID, statuses: Sequence[str], page: int, per_page: int
    ) -> tuple[list[WebhookMessage], int]:
        """Messages of one page, newest first, and the total count."""

    @abstractmethod
    def retry(self, organization_id: UUID, message_id: UUID, now: datetime) -> bool:
        """Make a failed message pending again with fresh attempts; False unless it failed."""


class WebhookNotFailedError(NotAllowedError):
    """Only a failed webhook can be retried (Lago's code for a retry in the wrong status)."""

    code = "invalid_status"


# The policy: which events become which webhooks.


def message_id(event_id: UUID, version: int, endpoint_id: UUID, webhook_type: str) -> UUID:
    """Deterministic, so a replay of the log makes the same messages with the same keys."""
    key = json.dumps(
        ["webhook", str(event_id), str(version), str(endpoint_id), webhook_type],
        separators=(",", ":"),
    )
    return uuid5(NAMESPACE, key)


ENDPOINT_EVENTS: Final = (WebhookEndpoint.Created, WebhookEndpoint.Updated, WebhookEndpoint.Deleted)
# A wallet event that records a transaction: wallet_transaction.created, or .updated.
WALLET_TRANSACTION_CREATED: Final = (
    Wallet.Granted,
    Wallet.Purchased,
    Wallet.Voided,
    Wallet.Invoiced,
    Wallet.Forfeited,
    Wallet.Recredited,
)
WALLET_TRANSACTION_UPDATED: Final = (Wallet.PurchaseSettled, Wallet.PurchaseFailed)
SOURCE_EVENTS: Final = (
    Customer.Created,
    Customer.Recreated,
    Customer.Updated,
    Subscription.Created,
    Subscription.Updated,
    Subscription.PlanChanged,
    Subscription.Canceled,
    Subscription.Terminated,
    Invoice.Created,
    Invoice.Finalized,
    Invoice.Voided,
    Invoice.PaymentStatusChanged,
    CreditNote.Created,
    CreditNote.RefundStatusChanged,
    Wallet.Created,
    Wallet.Updated,
    Wallet.Terminated,
    Wallet.OngoingBalanceDepleted,
    *WALLET_TRANSACTION_CREATED,
    *WALLET_TRANSACTION_UPDATED,
    Payment.Failed,
    Collection.MarkedOverdue,
)
WEBHOOK_TYPES: Final = (
    "customer.created",
    "customer.updated",
    "subscription.started",
    "subscription.canceled",
    "subscription.terminated",
    "subscription.termination_alert",
    "invoice.drafted",
    "invoice.created",
    "invoice.voided",
    "invoice.payment_status_updated",
    "invoice.payment_failure",
    "invoice.payment_overdue",
    "fee.created",
    "credit_note.created",
    "credit_note.refund_failure",
    "wallet.created",
    "wallet.updated",
    "wallet.terminated",
    "wallet.depleted_ongoing_balance",
    "wallet_transaction.created",
    "wallet_transaction.updated",
    "wallet_transaction.payment_failure",
)


def _fees_created(invoice: Any, at: datetime) -> list["_Planned"]:
    """Lago's fee.created, for each pay-in-advance fee (billed for its event, §4.9), before
    the invoice that carries it is announced. The fee is its own resource (its lago_id)."""
    assert isinstance(invoice, Invoice), invoice
    planned = []
    for fee in invoice.fees:
        if fee.pay_in_advance:
            fee_id = ids.fee_id(invoice.id, fee.key)
            planned.append(
                _Planned(
                    "fee.created",
                    "fee",
                    invoice,
                    at,
                    at,
                    object_id=fee_id,
                    subject_id=fee_id,
                    discriminator=fee.key,
                )
            )
    return planned


@dataclass(frozen=True)
class _Planned:
    """A webhook an event causes, before it is rendered and addressed."""

    webhook_type: str
    object_type: str
    aggregate: BaseAggregate[UUID]
    at: datetime  # The instant the payload describes.
    due_at: datetime  # A scheduled webhook (a start, an ending_at) waits until then.
    # The resource whose webhooks go in order (default: the aggregate): a wallet transaction,
    # the invoice a payment failed for.
    object_id: UUID | None = None
    subject_id: UUID | None = None  # Notice.subject_id.
    details: Mapping[str, Any] | None = None  # Notice.details.
    # Tells apart two webhooks of one type that one event causes (in their message ids).
    discriminator: str | None = None


class WebhookOutboxProjection(Projection[OutboxView]):
    name = "webhook_outbox"
    topics = tuple(get_topic(cls) for cls in (*ENDPOINT_EVENTS, *SOURCE_EVENTS))

    def __init__(self, view: OutboxView, billing: Billing, render: PayloadRenderer) -> None:
        super().__init__(view)
        self.billing = billing
        self.render = render

    def process_event(self, domain_event: Any, tracking: Tracking) -> None:
        if isinstance(domain_event, WebhookEndpoint.Created | WebhookEndpoint.Updated):
            endpoint = self._at_version(domain_event)
            assert isinstance(endpoint, WebhookEndpoint), endpoint
            self.view.put_route(
                Route(
                    endpoint.id,
                    endpoint.organization_id,
                    endpoint.webhook_url,
                    tuple(endpoint.event_types) if endpoint.event_types is not None else None,
                    endpoint.created_on,
                ),
                tracking,
            )
            return
        if isinstance(domain_event, WebhookEndpoint.Deleted):
            self.view.remove_route(domain_event.originator_id, tracking)
            return
        planned, cancel = self._plan(domain_event, tracking)
        if not planned and not cancel:
            self.view.insert_tracking(tracking)  # An event we ignore still advances the position.
            return
        organization_id = getattr(
            planned[0].aggregate if planned else None, "organization_id", None
        )
        routes = self.view.routes(organization_id) if organization_id else []
        messages: list[WebhookMessage] = []
        for ordinal, plan in enumerate(planned):
            matching = [r for r in routes if r.accepts(plan.webhook_type)]
            if not matching:
                continue
            assert organization_id is not None
            payload = self.render(
                self.billing,
                Notice(
                    plan.webhook_type,
                    plan.object_type,
                    plan.aggregate,
                    organization_id,
                    plan.at,
                    plan.subject_id,
                    plan.details,
                ),
            ).decode()
            for route in matching:
                messages.append(
                    WebhookMessage(
                        id=message_id(
                            domain_event.originator_id,
                            domain_event.originator_version,
                            route.endpoint_id,
                            plan.webhook_type
                            if plan.discriminator is None
                            else f"{plan.webhook_type}#{plan.discriminator}",
                        ),
                        organization_id=organization_id,
                        endpoint_id=route.endpoint_id,
                        webhook_type=plan.webhook_type,
                        object_type=plan.object_type,
                        object_id=plan.object_id or plan.aggregate.id,
                        position=tracking.notification_id,
                        ordinal=ordinal,
                        payload=payload,
                        status="pending",
                        attempts=0,
                        next_attempt_at=plan.due_at,
                        created_at=domain_event.timestamp,
                        updated_at=domain_event.timestamp,
                        endpoint=route.webhook_url,
                    )
                )
        self.view.enqueue(messages, cancel, tracking)

    def _plan(
        self, event: Any, tracking: Tracking
    ) -> tuple[list[_Planned], list[tuple[UUID, str]]]:
        """Lago's webhooks for one event, and the scheduled ones it cancels."""
        at: datetime = event.timestamp
        if isinstance(event, Customer.Created | Customer.Recreated):
            return [_Planned("customer.created", "customer", self._at_version(event), at, at)], []
        if isinstance(event, Customer.Updated):
            return [_Planned("customer.updated", "customer", self._at_version(event), at, at)], []
        if isinstance(event, Subscription.Event):
            return self._plan_subscription(event)
        if isinstance(event, Invoice.Created):
            # Held a moment: the Finalized of the same save cancels it (see below).
            draft = self._at_version(event)
            return [_Planned("invoice.drafted", "invoice", draft, at, at + DRAFT_HOLD)], []
        if isinstance(event, Invoice.Finalized) and self._drafted_in_same_save(event, tracking):
            # Lago announces a draft only when it stays one (a grace period); an invoice
            # finalized by the save that drafted it is announced by invoice.created alone.
            invoice = self._at_version(event)
            return [
                *_fees_created(invoice, at),
                _Planned("invoice.created", "invoice", invoice, at, at),
            ], [(invoice.id, "invoice.drafted")]
        webhook_type = {
            Invoice.Finalized: "invoice.created",  # Lago sends invoice.created when finalized.
            Invoice.Voided: "invoice.voided",
            Invoice.PaymentStatusChanged: "invoice.payment_status_updated",
        }.get(type(event))
        if webhook_type is not None:
            invoice = self._at_version(event)
            fees = _fees_created(invoice, at) if isinstance(event, Invoice.Finalized) else []
            return [*fees, _Planned(webhook_type, "invoice", invoice, at, at)], []
        if isinstance(event, CreditNote.Created):
            return [
                _Planned("credit_note.created", "credit_note", self._at_version(event), at, at)
            ], []
        if isinstance(event, CreditNote.RefundStatusChanged):
            if event.refund_status != "failed":
                return [], []
            # Lago's refund error: the processor's outcome is all the note records.
            details = {"message": "Payment refund failed", "error_code": None}
            note = self._at_version(event)
            return [
                _Planned(
                    "credit_note.refund_failure",
                    "credit_note_payment_provider_refund_error",
                    note,
                    at,
                    at,
                    details=details,
                )
            ], []
        if isinstance(event, Wallet.Event):
            return self._plan_wallet(event), []
        if isinstance(event, Payment.Failed):
            return self._plan_payment_failure(event), []
        if isinstance(event, Collection.MarkedOverdue):
            collection = self._at_version(event)
            assert isinstance(collection, Collection), collection
            return [
                _Planned(
                    "invoice.payment_overdue",
                    "invoice",
                    collection,
                    at,
                    at,
                    object_id=collection.invoice_id,
                    subject_id=collection.invoice_id,
                )
            ], []
        return [], []

    def _plan_wallet(self, event: Wallet.Event) -> list[_Planned]:
        """Lago's wallet and wallet_transaction webhooks; a transaction is its own resource,
        so its created and updated webhooks go in order."""
        at: datetime = event.timestamp
        wallet = self._at_version(event)
        assert isinstance(wallet, Wallet), wallet
        wallet_type = {
            Wallet.Created: "wallet.created",
            Wallet.Updated: "wallet.updated",
            Wallet.Terminated: "wallet.terminated",
            Wallet.OngoingBalanceDepleted: "wallet.depleted_ongoing_balance",
        }.get(type(event))
        if wallet_type is not None:
            if isinstance(event, Wallet.Created):
                wallet = self._with_initial_credits(event)
            details = None
            if isinstance(event, Wallet.OngoingBalanceDepleted):
                # The ongoing balance is computed from usage at read time; this one is recorded.
                details = {"ongoing_balance_cents": event.ongoing_balance_cents, "at": event.at}
            return [_Planned(wallet_type, "wallet", wallet, at, at, details=details)]
        if isinstance(event, WALLET_TRANSACTION_CREATED):
            transaction_type = "wallet_transaction.created"
        elif isinstance(event, WALLET_TRANSACTION_UPDATED):
            transaction_type = "wallet_transaction.updated"
        else:
            return []  # RuleRearmed, OngoingBalanceReplenished: nothing Lago announces.
        transaction_id: UUID = getattr(event, "transaction_id")  # noqa: B009
        return [
            _Planned(
                transaction_type,
                "wallet_transaction",
                wallet,
                at,
                at,
                object_id=transaction_id,
                subject_id=transaction_id,
            )
        ]

    def _with_initial_credits(self, event: Wallet.Created) -> Wallet:
        """The wallet as its creating save left it: with the paid and granted credits of Lago's
        create, which that save records right after Created with the same created_at (so the
        payload is what POST /wallets answered). Decided from the log alone."""
        version = event.originator_version
        for later in self.billing.events.get(event.originator_id, gt=version):
            if not isinstance(later, Wallet.Granted | Wallet.Purchased):
                break
            if later.created_at != event.created_at:
                break
            version = later.originator_version
        wallet: Wallet = self.billing.repository.get(event.originator_id, version=version)
        return wallet

    def _plan_payment_failure(self, event: Payment.Failed) -> list[_Planned]:
        """Lago's invoice.payment_failure for a failed processor attempt, and for a paid top-up's
        credit invoice also wallet_transaction.payment_failure (Lago's DeliverErrorWebhookService).
        Each is ordered with its resource: the invoice, the wallet transaction."""
        at: datetime = event.timestamp
        payment = self._at_version(event)
        assert isinstance(payment, Payment), payment
        details = {"message": event.message, "error_code": event.code}
        planned = [
            _Planned(
                "invoice.payment_failure",
                "payment_provider_invoice_payment_error",
                payment,
                at,
                at,
                object_id=payment.invoice_id,
                subject_id=payment.invoice_id,
                details=details,
            )
        ]
        try:
            invoice: Invoice = self.billing.repository.get(payment.invoice_id)
        except AggregateNotFoundError:
            return planned
        paid_for = credit_invoice_transaction(invoice)
        if paid_for is not None:
            _, transaction_id = paid_for
            planned.append(
                _Planned(
                    "wallet_transaction.payment_failure",
                    "payment_provider_wallet_transaction_payment_error",
                    payment,
                    at,
                    at,
                    object_id=transaction_id,
                    subject_id=transaction_id,
                    details=details,
                )
            )
        return planned

    def _plan_subscription(
        self, event: Subscription.Event
    ) -> tuple[list[_Planned], list[tuple[UUID, str]]]:
        """A subscription's start and end are scheduled when they lie ahead: the status is a
        function of time, so no event marks them. A change re-plans both, start first, so that
        they stay in order and show the subscription as last changed."""
        at: datetime = event.timestamp
        subscription = self._at_version(event)
        assert isinstance(subscription, Subscription), subscription
        started = (subscription.id, "subscription.started")
        ending = (subscription.id, "subscription.terminated")
        alerts = (subscription.id, "subscription.termination_alert")
        if isinstance(event, Subscription.Created):
            # A pending subscription's start is scheduled: due (and rendered) at its start.
            start = max(at, subscription.subscription_at)
            return [
                _Planned("subscription.started", "subscription", subscription, start, start),
                *self._ending(subscription, at),
            ], []
        if isinstance(event, Subscription.Updated | Subscription.PlanChanged):
            planned: list[_Planned] = []
            cancel: list[tuple[UUID, str]] = []
            if subscription.status_at(at) == "pending":
                # Still pending: its scheduled start moves, or shows the new plan.
                start = subscription.subscription_at
                planned.append(
                    _Planned("subscription.started", "subscription", subscription, start, start)
                )
                cancel.append(started)
            if subscription.ending_at is not None:
                planned += self._ending(subscription, at)
                cancel += [alerts, ending]
            return planned, cancel
        if isinstance(event, Subscription.Canceled):
            return [_Planned("subscription.canceled", "subscription", subscription, at, at)], [
                started,
                alerts,
                ending,
            ]
        if isinstance(event, Subscription.Terminated):
            # Terminated by a call before its ending_at: now, and the scheduled end is canceled.
            return [_Planned("subscription.terminated", "subscription", subscription, at, at)], [
                alerts,
                ending,
            ]
        return [], []

    @staticmethod
    def _ending(subscription: Subscription, at: datetime) -> list[_Planned]:
        """What its ending_at schedules: subscription.termination_alert 45 and 15 days before
        (those still ahead), then subscription.terminated at ending_at (Lago terminates it then,
        with a job); each due, and rendered, as of its instant."""
        if subscription.ending_at is None or subscription.ended_at != subscription.ending_at:
            return []
        planned = []
        for days in TERMINATION_ALERT_DAYS:
            alert_at = subscription.ending_at - timedelta(days=days)
            if alert_at > at:
                planned.append(
                    _Planned(
                        "subscription.termination_alert",
                        "subscription",
                        subscription,
                        alert_at,
                        alert_at,
                        discriminator=str(days),
                    )
                )
        end = max(at, subscription.ending_at)
        planned.append(_Planned("subscription.terminated", "subscription", subscription, end, end))
        return planned

    def _at_version(self, event: Any) -> BaseAggregate[UUID]:
        aggregate: BaseAggregate[UUID] = self.billing.repository.get(
            event.originator_id, version=event.originator_version
        )
        return aggregate

    def _drafted_in_same_save(self, event: Invoice.Finalized, tracking: Tracking) -> bool:
        """Whether the previous notification is this invoice's Created, recorded within a second:
        one save stores its events with consecutive notification ids. The answer depends on the
        log alone, so a replay decides the same."""
        previous = self.billing.recorder.select_notifications(tracking.notification_id - 1, 1)
        if not previous:
            return False
        notification = previous[0]
        if (
            notification.id != tracking.notification_id - 1
            or notification.originator_id != event.originator_id
            or notification.topic != get_topic(Invoice.Created)
        ):
            return False
        created_at: datetime = getattr(  # noqa: B009 (not in the Protocol)
            self.billing.mapper.to_domain_event(notification), "timestamp"
        )
        return event.timestamp - created_at < timedelta(seconds=1)


# The service: endpoints, keys, messages and delivery.


class Webhooks:
    """Lago's webhook endpoints, the outbox's catch-up, and delivery."""

    def __init__(
        self,
        billing: Billing,
        outbox: OutboxView,
        *,
        render: PayloadRenderer,
        transport: WebhookTransport,
        signer: WebhookSigner,
        settings: WebhookSettings,
        rng: random.Random | None = None,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        self.billing = billing
        self.outbox = outbox
        self.transport = transport
        self.signer = signer
        self.settings = settings
        self.rng = rng or random.SystemRandom()
        # Delivery runs on real time, whatever clock the billing tests set.
        self.now: Callable[[], datetime] = clock or (lambda: datetime.now(UTC))
        self.projection = WebhookOutboxProjection(outbox, billing, render)
        self.catch_up = CatchUp(billing, self.projection)
        self._hmac_keys: dict[UUID, tuple[str, float]] = {}  # The key, and when it was read.

    # Endpoints.

    def create_endpoint(
        self,
        organization_id: UUID,
        *,
        webhook_url: str,
        signature_algo: str | None,
        name: str | None,
        event_types: Sequence[str] | None,
    ) -> WebhookEndpoint:
        """Lago's POST /webhook_endpoints; the URL is unique in the organization."""

        def new(generation: int) -> WebhookEndpoint:
            return WebhookEndpoint.create(
                organization_id,
                generation,
                webhook_url=webhook_url,
                signature_algo=signature_algo,
                name=name,
                event_types=event_types,
            )

        new(0)  # Validates the fields before anything is read.
        self.catch_up()
        routes = self.outbox.routes(organization_id)
        if any(route.webhook_url == webhook_url for route in routes):
            raise AlreadyExistsError("webhook_url", webhook_url)
        if len(routes) >= WEBHOOK_ENDPOINTS_MAX:
            raise InvalidValueError("base", "exceeded_limit", len(routes))
        generation, conflicts = 0, 0
        while generation < GENERATIONS_MAX and conflicts < COMMAND_RETRIES_MAX:
            try:
                existing: WebhookEndpoint = self.billing.repository.get(
                    webhook_endpoint_id(organization_id, webhook_url, generation)
                )
            except AggregateNotFoundError:
                endpoint = new(generation)
                try:
                    self.billing.save(endpoint)
                except IntegrityError:
                    conflicts += 1  # A racing create took this id: look at it again.
                    continue
                self.catch_up()
                return endpoint
            if not existing.deleted and existing.webhook_url == webhook_url:
                raise AlreadyExistsError("webhook_url", webhook_url)
            generation += 1  # Deleted, or moved to another URL: the next id in the series.
        raise ConcurrencyConflictError("webhook_endpoint", webhook_url)

    def update_endpoint(
        self,
        organization_id: UUID,
        endpoint_id: UUID,
        *,
        webhook_url: str | None,
        signature_algo: str | None,
        name: str | None,
        event_types: Sequence[str] | None,
    ) -> WebhookEndpoint:
        """Lago's PUT /webhook_endpoints/{lago_id}."""
        if webhook_url is not None:
            self.catch_up()
            for route in self.outbox.routes(organization_id):
                if route.webhook_url == webhook_url and route.endpoint_id != endpoint_id:
                    raise AlreadyExistsError("webhook_url", webhook_url)
        for _ in range(COMMAND_RETRIES_MAX):
            endpoint = self.endpoint(organization_id, endpoint_id)
            endpoint.update(
                webhook_url=webhook_url,
                signature_algo=signature_algo,
                name=name,
                event_types=event_types,
            )
            try:
                self.billing.save(endpoint)
            except IntegrityError:
                continue
            self.catch_up()
            return endpoint
        raise ConcurrencyConflictError("webhook_endpoint", endpoint_id)

    def delete_endpoint(self, organization_id: UUID, endpoint_id: UUID) -> WebhookEndpoint:
        for _ in range(COMMAND_RETRIES_MAX):
            endpoint = self.endpoint(organization_id, endpoint_id)
            endpoint.delete()
            try:
                self.billing.save(endpoint)
            except IntegrityError:
                continue
            self.catch_up()
            return endpoint
        raise ConcurrencyConflictError("webhook_endpoint", endpoint_id)

    def endpoint(self, organization_id: UUID, endpoint_id: UUID) -> WebhookEndpoint:
        missing = NotFoundError("webhook_endpoint", endpoint_id)
        try:
            endpoint: BaseAggregate[UUID] = self.billing.repository.get(endpoint_id)
        except AggregateNotFoundError:
            raise missing from None
        if not isinstance(endpoint, WebhookEndpoint):
            raise missing
        if endpoint.organization_id != organization_id or endpoint.deleted:
            raise missing  # Another organization's endpoint looks exactly like a missing one.
        return endpoint

    def endpoints(
        self, organization_id: UUID, page: int, per_page: int
    ) -> tuple[list[WebhookEndpoint], int]:
        self.catch_up()  # Read your writes, also those made by another process.
        endpoint_ids, total = self.outbox.route_page(organization_id, page, per_page)
        loaded: list[WebhookEndpoint] = []
        for endpoint_id in endpoint_ids:
            endpoint: BaseAggregate[UUID] = self.billing.repository.get(endpoint_id)
            assert isinstance(endpoint, WebhookEndpoint), endpoint
            loaded.append(endpoint)
        return loaded, total

    # Keys.

    def public_key_pem(self) -> bytes:
        return self.signer.public_key_pem()

    def public_keys(self) -> list[SigningKey]:
        """The current JWT key, then those retired within the grace period, newest first."""
        since = self.now() - timedelta(seconds=self.settings.key_grace_s)
        return [
            key
            for key in self.signer.signing_keys()
            if key.retired_at is None or key.retired_at > since
        ]

    def rotate_signing_key(self) -> SigningKey:
        """A new RSA key pair signs every delivery from now on (every process within
        KEY_REFRESH_S); the old public key stays listed for the grace period."""
        return self.signer.rotate(self.now())

    def rotate_hmac_key(self, organization_id: UUID) -> str:
        """A new HMAC key for the organization, recorded in its history; returns it."""
        for _ in range(COMMAND_RETRIES_MAX):
            organization: Organization = self.billing.repository.get(organization_id)
            organization.rotate_hmac_key(new_hmac_key())
            try:
                self.billing.save(organization)
            except IntegrityError:
                continue
            assert organization.hmac_key is not None
            self._hmac_keys[organization_id] = (organization.hmac_key, time.monotonic())
            return organization.hmac_key
        raise ConcurrencyConflictError("organization", organization_id)

    def hmac_keys(self, organization_id: UUID) -> list[tuple[str, datetime]]:
        """Every HMAC key the organization had, with when it was issued, newest first."""
        issued = [
            (getattr(e, "hmac_key"), getattr(e, "timestamp"))  # noqa: B009
            for e in self.billing.events.get(organization_id)
            if isinstance(e, Organization.HmacKeyIssued)
        ]
        return issued[::-1]

    def hmac_key(self, organization_id: UUID) -> str:
        """The organization's HMAC key; one created before webhooks gets it now. Read again
        after KEY_REFRESH_S, so a rotation by another process is seen."""
        cached = self._hmac_keys.get(organization_id)
        if cached is not None and time.monotonic() - cached[1] < KEY_REFRESH_S:
            return cached[0]
        for _ in range(COMMAND_RETRIES_MAX):
            organization: Organization = self.billing.repository.get(organization_id)
            if organization.hmac_key is None:
                organization.issue_hmac_key(new_hmac_key())
                try:
                    self.billing.save(organization)
                except IntegrityError:
                    continue  # Changed concurrently (maybe given a key): reload.
            assert organization.hmac_key is not None
            self._hmac_keys[organization_id] = (organization.hmac_key, time.monotonic())
            return organization.hmac_key
        raise ConcurrencyConflictError("organization", organization_id)

    def signature(self, algorithm: str, organization_id: UUID, body: bytes) -> str:
        """X-Lago-Signature of exactly these bytes (lago-api app/models/webhook.rb)."""
        if algorithm == "hmac":
            key = self.hmac_key(organization_id).encode()
            return base64.b64encode(hmac.new(key, body, hashlib.sha256).digest()).decode()
        assert algorithm == "jwt", algorithm
        return self.signer.jwt(body)

    # Messages.

    def messages(
        self, organization_id: UUID, statuses: Sequence[str], page: int, per_page: int
    ) -> tuple[list[WebhookMessage], int]:
        for status in statuses:
            if status not in MESSAGE_STATUSES:
                raise InvalidValueError("status", "value_is_invalid", status)
        self.catch_up()
        return self.outbox.page(organization_id, statuses, page, per_page)

    def message(self, organization_id: UUID, message_id: UUID) -> WebhookMessage:
        found = self.outbox.message(organization_id, message_id)
        if found is None:
            raise NotFoundError("webhook", message_id)
        return found

    def retry(self, organization_id: UUID, message_id: UUID) -> WebhookMessage:
        """Deliver a failed message again, with a fresh series of attempts and the same key."""
        if not self.outbox.retry(organization_id, message_id, self.now()):
            found = self.message(organization_id, message_id)
            raise WebhookNotFailedError(f"Webhook {message_id} is {found.status}, not failed.")
        return self.message(organization_id, message_id)

    # Delivery.

    def run_once(self, deadline: float | None = None) -> int:
        """Catch up with the log, then deliver due messages until none is left or the deadline
        (time.monotonic()) passes; returns how many attempts were made."""
        self.catch_up()
        attempts = 0
        while deadline is None or time.monotonic() < deadline:
            made = self.deliver_due()
            attempts += made
            if made == 0:
                break
        return attempts

    def deliver_due(self) -> int:
        """One round: claim due messages, post them, record the outcomes."""
        now = self.now()
        token = uuid4().hex
        lease_until = now + timedelta(seconds=self.settings.lease_s)
        claimed = self.outbox.claim(now, self.settings.batch_max, lease_until, token)
        if len(claimed) > 1 and self.settings.concurrency > 1:
            with ThreadPoolExecutor(min(self.settings.concurrency, len(claimed))) as pool:
                list(pool.map(lambda m: self._deliver(m, token), claimed))
        else:
            for message in claimed:
                self._deliver(message, token)
        return len(claimed)

    def _deliver(self, message: WebhookMessage, token: str) -> None:
        try:
            outcome = self._attempt(message)
        except Exception as error:  # A bug or a store error: count it as a failed attempt.
            logger.exception("Webhook %s could not be attempted", message.id)
            outcome = self._after_failure(message, message.endpoint, None, "", repr(error))
        if not self.outbox.finish(message.id, token, outcome):
            logger.warning("Webhook %s: the lease ended before the attempt did", message.id)

    def _attempt(self, message: WebhookMessage) -> Outcome:
        try:
            endpoint = self.endpoint(message.organization_id, message.endpoint_id)
        except NotFoundError:
            # Lago deletes an endpoint's webhooks with it; we keep them, canceled.
            return Outcome("canceled", self.now(), message.endpoint, error="endpoint_deleted")
        body = message.payload.encode()
        headers = {
            "Content-Type": "application/json",
            "X-Lago-Signature": self.signature(
                endpoint.signature_algo, message.organization_id, body
            ),
            "X-Lago-Signature-Algorithm": endpoint.signature_algo,
            "X-Lago-Unique-Key": str(message.id),
        }
        result = self.transport.post(endpoint.webhook_url, body, headers, self.settings.timeout_s)
        response = result.body[:RESPONSE_CHARS_MAX]
        if result.ok:
            return Outcome(
                "succeeded", self.now(), endpoint.webhook_url, result.status_code, response
            )
        error = result.error or f"HTTP {result.status_code}"
        return self._after_failure(
            message, endpoint.webhook_url, result.status_code, response, error
        )

    def _after_failure(
        self,
        message: WebhookMessage,
        url: str,
        http_status: int | None,
        response: str,
        error: str,
    ) -> Outcome:
        now = self.now()
        if message.attempts >= self.settings.attempts_max:
            return Outcome("failed", now, url, http_status, response, error)
        delay_s = self.backoff_s(message.attempts)
        return Outcome(
            "pending", now, url, http_status, response, error, now + timedelta(seconds=delay_s)
        )

    def backoff_s(self, attempts: int) -> float:
        """Full jitter: uniform below min(cap, base · 2^(attempts - 1))."""
        ceiling = min(
            self.settings.backoff_cap_s, self.settings.backoff_base_s * 2 ** max(0, attempts - 1)
        )
        return self.rng.uniform(0, ceiling)


class DeliveryWorker:
    """A thread that catches up and delivers every poll_s until stopped (`tally serve`)."""

    def __init__(self, webhooks: Webhooks) -> None:
        self.webhooks = webhooks
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        assert self._thread is None, self._thread
        self._thread = threading.Thread(target=self._run, name="tally-webhooks", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
            self._thread = None

    def _run(self) -> None:
        poll_s = self.webhooks.settings.poll_s
        while not self._stop.is_set():
            try:
                # A deadline, so that a long backlog still lets the loop see the stop event.
                self.webhooks.run_once(deadline=time.monotonic() + max(poll_s, 1.0))
            except Exception:
                logger.exception("Webhook delivery round failed; trying again")
            self._stop.wait(poll_s)


def replace_status(message: WebhookMessage, outcome: Outcome) -> WebhookMessage:
    """The message after an outcome (the memory outbox and tests use it)."""
    return replace(
        message,
        status=outcome.status,
        updated_at=outcome.at,
        endpoint=outcome.endpoint,
        http_status=outcome.http_status,
        response=outcome.response,
        last_error=outcome.error,
        last_attempt_at=outcome.at,
        next_attempt_at=outcome.next_attempt_at or message.next_attempt_at,
        delivered_at=outcome.at if outcome.status == "succeeded" else message.delivered_at,
    )
