"""A ledger in memory with a small catalog the battery's models mirror: one sum metric and
plans in arrears with a flat per-unit charge, for every interval and three price levels."""

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any
from uuid import UUID

from adapters.settings import Settings, memory_settings
from adapters.stores import Ledger, open_ledger
from application.metering import EventInput
from domain.invoice import Invoice
from tests.reliability.model import Phase

BASE_AMOUNT_CENTS = {
    "weekly": 700,
    "monthly": 3000,
    "quarterly": 9000,
    "semiannual": 18000,
    "yearly": 36000,
}
LEVELS = (1, 2, 3)
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def plan_code(interval: str, level: int) -> str:
    return f"{interval}_{level}"


@dataclass
class Catalog:
    """The ledger, its organization and the plans' current versions as model phases."""

    ledger: Ledger
    org: UUID
    metric_id: UUID
    clock: list[datetime]
    plans: dict[str, Phase] = field(default_factory=dict)
    webhooks: Any = None  # application.webhooks.Webhooks, when a test opens them.

    @property
    def now(self) -> datetime:
        return self.clock[0]

    def at(self, instant: datetime) -> None:
        self.clock[0] = instant

    def phase(self, code: str, starts_at: datetime) -> Phase:
        plan = self.plans[code]
        return Phase(
            starts_at,
            plan.interval,
            plan.amount_cents,
            plan.unit_price,
            plan.plan_code,
            plan.plan_version,
        )

    def plan_values(self, interval: str, amount_cents: int, unit_price: Decimal) -> dict[str, Any]:
        return {
            "name": f"{interval} plan",
            "interval": interval,
            "amount_cents": amount_cents,
            "amount_currency": "EUR",
            "pay_in_advance": False,
            "charges": [
                {
                    "billable_metric_id": str(self.metric_id),
                    "charge_model": "standard",
                    "properties": {"amount": str(unit_price)},
                }
            ],
        }

    def edit_plan(self, code: str, amount_cents: int, unit_price: Decimal) -> None:
        """A new version of the plan (existing subscriptions keep theirs)."""
        plan = self.plans[code]
        if (amount_cents, unit_price) == (plan.amount_cents, plan.unit_price):
            return
        values = self.plan_values(plan.interval, amount_cents, unit_price)
        updated = self.ledger.billing.update_plan(
            self.org, code, {k: values[k] for k in ("amount_cents", "charges")}
        )
        version = updated.version_number
        assert version == plan.plan_version + 1, (version, plan.plan_version)
        self.plans[code] = Phase(
            plan.starts_at, plan.interval, amount_cents, unit_price, code, version
        )

    def ingest(self, subscription: str, transaction_id: str, at: datetime, units: int) -> None:
        self.ledger.metering.ingest(
            self.org,
            [
                EventInput(
                    transaction_id,
                    subscription,
                    "calls",
                    _timestamp(at),
                    {"units": units},
                    None,
                )
            ],
            batch=False,
        )

    def invoices(self) -> list[Invoice]:
        found, _ = self.ledger.invoicing.invoices(self.org, 1, 10**6)
        return found


def _timestamp(at: datetime) -> Decimal:
    """Unix seconds with the microseconds, exactly (Lago's wire form)."""
    delta = at - EPOCH
    return Decimal(delta.days * 86_400 + delta.seconds) + Decimal(delta.microseconds).scaleb(-6)


def open_catalog(
    start: datetime,
    intervals: tuple[str, ...] = tuple(BASE_AMOUNT_CENTS),
    settings: Settings | None = None,
) -> Catalog:
    """The catalog on a new ledger: in memory, or on the store the settings name."""
    ledger = open_ledger(settings or memory_settings())
    clock = [start]
    now: Callable[[], datetime] = lambda: clock[0]  # noqa: E731
    ledger.billing.now = now
    billing = ledger.billing
    org = billing.create_organization("acme")[0].id
    metric = billing.create_billable_metric(
        org, "calls", {"name": "Calls", "aggregation_type": "sum_agg", "field_name": "units"}
    )
    catalog = Catalog(ledger, org, metric.id, clock)
    for interval in intervals:
        for level in LEVELS:
            code = plan_code(interval, level)
            amount, price = BASE_AMOUNT_CENTS[interval] * level, Decimal("0.01") * level
            billing.create_plan(org, code, {**catalog.plan_values(interval, amount, price)})
            catalog.plans[code] = Phase(start, interval, amount, price, code, 1)
    return catalog
