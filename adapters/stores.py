"""Composition of the ledger on one store: the application, its views and side tables."""

from dataclasses import dataclass, field
from typing import Any

from eventsourcing.persistence import InfrastructureFactory
from eventsourcing.postgres import PostgresFactory
from eventsourcing.sqlite import SQLiteFactory

from adapters.idempotency import (
    MemoryIdempotencyStore,
    PostgresIdempotencyStore,
    SQLiteIdempotencyStore,
)
from adapters.settings import Settings
from adapters.usage_postgres import PostgresUsageLog
from adapters.usage_sqlite import SQLiteUsageLog
from adapters.views_postgres import PostgresIndexView
from adapters.views_sqlite import SQLiteIndexView
from application.billing import Billing
from application.current_usage import UsageQueries
from application.invoicing import Invoicing
from application.metering import Metering
from application.ports import IdempotencyStore
from application.projections import IndexView, MemoryIndexView
from application.rating import Rating
from application.usage_log import MemoryUsageLog, UsageLog


@dataclass
class Ledger:
    """Everything the API needs, built on the store the settings name."""

    billing: Billing
    idempotency: IdempotencyStore
    settings: Settings
    usage: UsageLog
    metering: Metering = field(init=False)
    rating: Rating = field(init=False)
    usage_queries: UsageQueries = field(init=False)
    invoicing: Invoicing = field(init=False)

    def __post_init__(self) -> None:
        self.metering = Metering(self.billing, self.usage, batch_max=self.settings.events_batch_max)
        self.rating = Rating(self.billing, self.usage)
        self.usage_queries = UsageQueries(self.billing, self.rating)
        self.invoicing = Invoicing(self.billing, self.usage, self.rating)

    def close(self) -> None:
        self.billing.close()


def open_ledger(settings: Settings) -> Ledger:
    if settings.store == "sqlite":
        assert settings.sqlite_path is not None
        settings.sqlite_path.parent.mkdir(parents=True, exist_ok=True)
    billing = Billing(env=dict(settings.eventsourcing_env), index_view=_index_view)
    factory = billing.factory
    idempotency: IdempotencyStore
    usage: UsageLog
    if isinstance(factory, SQLiteFactory):
        idempotency = SQLiteIdempotencyStore(factory.datastore)
        usage = SQLiteUsageLog(factory.datastore)
    elif isinstance(factory, PostgresFactory):
        idempotency = PostgresIdempotencyStore(factory.datastore)
        usage = PostgresUsageLog(factory.datastore)
    else:
        idempotency = MemoryIdempotencyStore()
        usage = MemoryUsageLog()
    billing.catch_up()
    return Ledger(billing, idempotency, settings, usage)


def _index_view(factory: InfrastructureFactory[Any]) -> IndexView:
    if isinstance(factory, SQLiteFactory):
        return factory.tracking_recorder(SQLiteIndexView)  # type: ignore[return-value]
    if isinstance(factory, PostgresFactory):
        return factory.tracking_recorder(PostgresIndexView)
    return MemoryIndexView()
