"""Composition of the ledger on one store: the application, its views and side tables."""

import os
from dataclasses import dataclass, field
from typing import Any

from eventsourcing.persistence import InfrastructureFactory
from eventsourcing.postgres import PostgresAggregateRecorder, PostgresFactory
from eventsourcing.sqlite import SQLiteFactory

import adapters.sqlite_writes  # noqa: F401 (write transactions begin IMMEDIATE on SQLite)
from adapters.audit_log import MemoryAuditLog, PostgresAuditLog, SQLiteAuditLog
from adapters.data_keys import MemoryDataKeys, PostgresDataKeys, SQLiteDataKeys
from adapters.events_postgres import PostgresEventsReader, binary_event_inserts
from adapters.faults import FaultInjector, fault_plan_from_env, inject
from adapters.idempotency import (
    MemoryIdempotencyStore,
    PostgresIdempotencyStore,
    SQLiteIdempotencyStore,
)
from adapters.journal_postgres import PostgresJournalView
from adapters.journal_sqlite import SQLiteJournalView
from adapters.outbox import (
    MemoryOutbox,
    MemorySigningKeyStore,
    PostgresOutbox,
    PostgresSigningKeyStore,
    SQLiteOutbox,
    SQLiteSigningKeyStore,
)
from adapters.payment_processors import processors_from_env
from adapters.payment_store import MemoryPaymentStore, PostgresPaymentStore, SQLitePaymentStore
from adapters.secret_seal import sealer_from_env
from adapters.settings import Settings
from adapters.usage_postgres import PostgresUsageLog
from adapters.usage_sqlite import SQLiteUsageLog
from adapters.vies import vies_from_env
from adapters.views_postgres import PostgresIndexView
from adapters.views_sqlite import SQLiteIndexView
from adapters.webhook_sender import (
    HttpTransport,
    RsaJwtSigner,
    SigningKeyStore,
    webhook_settings_from_env,
)
from application.audit_log import AuditLog
from application.billing import Billing
from application.credit_notes import CreditNotes
from application.current_usage import UsageQueries
from application.invoicing import Invoicing
from application.journal import Journal, JournalView, MemoryJournalView
from application.metering import Metering
from application.payments import PaymentProviders, Payments, PaymentStore
from application.personal_data import PersonalDataKeys
from application.ports import IdempotencyStore
from application.projections import IndexView, MemoryIndexView
from application.rating import Rating
from application.top_ups import TopUpWorker
from application.usage_log import MemoryUsageLog, UsageLog
from application.vat import VatChecks, ViesPort
from application.wallets import Wallets
from application.webhooks import (
    OutboxView,
    PayloadRenderer,
    Webhooks,
    WebhookSettings,
    WebhookTransport,
)


@dataclass
class Ledger:
    """Everything the API needs, built on the store the settings name."""

    billing: Billing
    idempotency: IdempotencyStore
    settings: Settings
    usage: UsageLog
    outbox: OutboxView = field(default_factory=MemoryOutbox)
    signing_keys: SigningKeyStore = field(default_factory=MemorySigningKeyStore)
    webhook_settings: WebhookSettings = field(default_factory=webhook_settings_from_env)
    # VIES: TALLY_VIES_URL (default the EC's REST API); tests may pass a fake.
    vies: ViesPort = field(default_factory=vies_from_env)
    audit_log: AuditLog = field(default_factory=MemoryAuditLog)  # ADR 0016.
    metering: Metering = field(init=False)
    rating: Rating = field(init=False)
    usage_queries: UsageQueries = field(init=False)
    invoicing: Invoicing = field(init=False)
    vat: VatChecks = field(init=False)
    credit_notes: CreditNotes = field(init=False)
    wallets: Wallets = field(init=False)
    top_ups: TopUpWorker = field(init=False)  # Started by the API (api/app.py).
    # Payments (ADR 0018): processors from TALLY_STRIPE_*; tests may pass fakes.
    payment_providers: PaymentProviders = field(default_factory=processors_from_env)
    payment_store: PaymentStore = field(default_factory=MemoryPaymentStore)
    payments: Payments = field(init=False)
    journal_view: JournalView = field(default_factory=MemoryJournalView)  # ADR 0019.
    journal: Journal = field(init=False)  # Caught up lazily, before each report.

    def __post_init__(self) -> None:
        self.metering = Metering(self.billing, self.usage, batch_max=self.settings.events_batch_max)
        self.rating = Rating(self.billing, self.usage)
        self.usage_queries = UsageQueries(self.billing, self.rating)
        self.invoicing = Invoicing(self.billing, self.usage, self.rating)  # Taxes: below.
        self.vat = VatChecks(self.billing, self.vies)
        self.invoicing.tax_engine = self.vat  # EU VAT decides where it applies (§9.3).
        self.credit_notes = CreditNotes(self.billing, self.invoicing)
        self.wallets = Wallets(self.billing, self.invoicing, self.usage_queries)
        self.top_ups = TopUpWorker(self.wallets)
        self.metering.observers.append(self.top_ups.on_ingest)
        self.journal = Journal(self.billing, self.journal_view)
        self.payments = Payments(
            self.billing,
            self.invoicing,
            self.credit_notes,
            self.payment_providers,
            self.payment_store,
        )

    def open_webhooks(
        self, render: PayloadRenderer, transport: WebhookTransport | None = None
    ) -> Webhooks:
        """The webhook outbox and delivery; the API supplies Lago's payloads (render)."""
        return Webhooks(
            self.billing,
            self.outbox,
            render=render,
            transport=transport or HttpTransport(),
            signer=RsaJwtSigner(self.signing_keys, self.webhook_settings.api_url),
            settings=self.webhook_settings,
        )

    def close(self) -> None:
        self.billing.close()


def open_ledger(
    settings: Settings,
    vies: ViesPort | None = None,
    payment_providers: PaymentProviders | None = None,
) -> Ledger:
    if settings.store == "sqlite":
        assert settings.sqlite_path is not None
        settings.sqlite_path.parent.mkdir(parents=True, exist_ok=True)
    billing = Billing(
        env=dict(settings.eventsourcing_env), index_view=_index_view, personal_data=_data_keys
    )
    factory = billing.factory
    if isinstance(billing.recorder, PostgresAggregateRecorder):
        billing.events_reader = PostgresEventsReader(billing.recorder)
        binary_event_inserts(billing.recorder)
    audit_log: AuditLog
    idempotency: IdempotencyStore
    usage: UsageLog
    outbox: OutboxView
    signing_keys: SigningKeyStore
    if isinstance(factory, SQLiteFactory):
        idempotency = SQLiteIdempotencyStore(factory.datastore)
        usage = SQLiteUsageLog(factory.datastore)
        outbox = factory.tracking_recorder(SQLiteOutbox)  # type: ignore[assignment]
        signing_keys = SQLiteSigningKeyStore(factory.datastore)
        audit_log = SQLiteAuditLog(factory.datastore)
        journal_view: JournalView = factory.tracking_recorder(SQLiteJournalView)  # type: ignore[assignment]
        payment_store: PaymentStore = SQLitePaymentStore(
            factory.datastore, sealer_from_env(settings)
        )
    elif isinstance(factory, PostgresFactory):
        idempotency = PostgresIdempotencyStore(factory.datastore)
        usage = PostgresUsageLog(factory.datastore)
        outbox = factory.tracking_recorder(PostgresOutbox)
        signing_keys = PostgresSigningKeyStore(factory.datastore)
        audit_log = PostgresAuditLog(factory.datastore)
        journal_view = factory.tracking_recorder(PostgresJournalView)
        payment_store = PostgresPaymentStore(factory.datastore, sealer_from_env(settings))
    else:
        idempotency = MemoryIdempotencyStore()
        usage = MemoryUsageLog()
        outbox = MemoryOutbox()
        signing_keys = MemorySigningKeyStore()
        audit_log = MemoryAuditLog()
        journal_view = MemoryJournalView()
        payment_store = MemoryPaymentStore()
    billing.catch_up()
    if (plan := fault_plan_from_env(os.environ)) is not None:  # Tests only (ADR 0024).
        inject(getattr(factory, "datastore", None), FaultInjector(plan))
    return Ledger(
        billing,
        idempotency,
        settings,
        usage,
        outbox,
        signing_keys,
        vies=vies or vies_from_env(),
        audit_log=audit_log,
        payment_providers=payment_providers or processors_from_env(),
        payment_store=payment_store,
        journal_view=journal_view,
    )


def _data_keys(factory: InfrastructureFactory[Any]) -> PersonalDataKeys:
    """The customers' data keys, on the event store's database (ADR 0017)."""
    if isinstance(factory, SQLiteFactory):
        return SQLiteDataKeys(factory.datastore)
    if isinstance(factory, PostgresFactory):
        return PostgresDataKeys(factory.datastore)
    return MemoryDataKeys()


def _index_view(factory: InfrastructureFactory[Any]) -> IndexView:
    if isinstance(factory, SQLiteFactory):
        return factory.tracking_recorder(SQLiteIndexView)  # type: ignore[return-value]
    if isinstance(factory, PostgresFactory):
        return factory.tracking_recorder(PostgresIndexView)
    return MemoryIndexView()
