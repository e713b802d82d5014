"""Composition of the ledger on one store: the application, its views and side tables."""

from dataclasses import dataclass
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
from adapters.views_postgres import PostgresIndexView
from adapters.views_sqlite import SQLiteIndexView
from application.billing import Billing
from application.ports import IdempotencyStore
from application.projections import IndexView, MemoryIndexView


@dataclass
class Ledger:
    """Everything the API needs, built on the store the settings name."""

    billing: Billing
    idempotency: IdempotencyStore
    settings: Settings

    def close(self) -> None:
        self.billing.close()


def open_ledger(settings: Settings) -> Ledger:
    if settings.store == "sqlite":
        assert settings.sqlite_path is not None
        settings.sqlite_path.parent.mkdir(parents=True, exist_ok=True)
    billing = Billing(env=dict(settings.eventsourcing_env), index_view=_index_view)
    factory = billing.factory
    idempotency: IdempotencyStore
    if isinstance(factory, SQLiteFactory):
        idempotency = SQLiteIdempotencyStore(factory.datastore)
    elif isinstance(factory, PostgresFactory):
        idempotency = PostgresIdempotencyStore(factory.datastore)
    else:
        idempotency = MemoryIdempotencyStore()
    billing.catch_up()
    return Ledger(billing, idempotency, settings)


def _index_view(factory: InfrastructureFactory[Any]) -> IndexView:
    if isinstance(factory, SQLiteFactory):
        return factory.tracking_recorder(SQLiteIndexView)  # type: ignore[return-value]
    if isinstance(factory, PostgresFactory):
        return factory.tracking_recorder(PostgresIndexView)
    return MemoryIndexView()
