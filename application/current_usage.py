"""Current usage: what a subscription's open period costs so far, computed at request time."""

from dataclasses import dataclass
from datetime import date
from decimal import Decimal
from typing import Any, TypeVar
from uuid import UUID

from eventsourcing.application import AggregateNotFoundError

from application.billing import Billing
from application.errors import NotFoundError
from application.fresh_aggregates import FreshAggregates
from application.rating import RatedCharge, Rating
from domain import ids
from domain.customer import Customer
from domain.errors import NotAllowedError
from domain.periods import Period, local_date
from domain.subscription import Subscription
from domain.taxes import InvoiceTaxes, applicable_tax_codes, invoice_taxes

A = TypeVar("A", Customer, Subscription)


class NoActiveSubscriptionError(NotAllowedError):
    code = "no_active_subscription"


@dataclass(frozen=True)
class CustomerUsage:
    subscription: Subscription
    period: Period
    issuing_date: date
    currency: str
    charges: list[RatedCharge]
    taxes: InvoiceTaxes

    @property
    def amount_cents(self) -> int:
        return sum(charge.amount_cents for charge in self.charges)

    @property
    def taxes_amount_cents(self) -> int:
        return self.taxes.taxes_amount_cents

    @property
    def total_amount_cents(self) -> int:
        return self.amount_cents + self.taxes_amount_cents


class UsageQueries:
    def __init__(self, billing: Billing, rating: Rating) -> None:
        self.billing = billing
        self.rating = rating

    def current_usage(
        self,
        organization_id: UUID,
        external_customer_id: str,
        external_subscription_id: str,
        *,
        apply_taxes: bool = True,
        since_arrival: bool = False,
    ) -> CustomerUsage:
        """Lago's current_usage: the open charges period, from its start to now. One refresh
        of the hot aggregates in all; a read-only request may take its arrival's
        (FreshAggregates.refresh)."""
        with self.rating.snapshot(since_arrival=since_arrival):
            return self._current_usage(
                organization_id, external_customer_id, external_subscription_id, apply_taxes
            )

    def _current_usage(
        self,
        organization_id: UUID,
        external_customer_id: str,
        external_subscription_id: str,
        apply_taxes: bool,
    ) -> CustomerUsage:
        billing = self.billing
        aggregates = self.rating.aggregates
        customer = _owned(
            aggregates,
            Customer,
            ids.customer_id(organization_id, external_customer_id),
            organization_id,
            NotFoundError("customer", external_customer_id),
        )
        if customer.deleted:
            raise NotFoundError("customer", external_customer_id)
        subscription = _owned(
            aggregates,
            Subscription,
            ids.subscription_id(organization_id, external_subscription_id),
            organization_id,
            NotFoundError("subscription", external_subscription_id),
        )
        if subscription.external_customer_id != external_customer_id:
            raise NotFoundError("subscription", external_subscription_id)
        now = billing.now()
        if not subscription.is_active_at(now):
            raise NoActiveSubscriptionError(
                f"Subscription {external_subscription_id} is not active."
            )
        ref = subscription.plan_at(now)
        plan: Any = aggregates.get(ref.plan_id)  # domain.plan.Plan
        definition = plan.definition(ref.plan_version)
        schedule = subscription.schedule_at(now).charges_schedule(
            bool(definition.get("bill_charges_monthly"))
        )
        period = schedule.period_at(now)
        charges = self.rating.rate_charges(
            organization_id,
            external_subscription_id,
            definition,
            period,
            subscription.timezone,
        )
        lines: list[tuple[int, list[tuple[str, Decimal]]]] = []
        if apply_taxes:
            rates = aggregates.memo(
                ("tax_rates", organization_id), lambda: _tax_rates(billing, organization_id)
            )
            default_codes = [code for code, (_, default) in rates.items() if default]
            for charge in charges:
                codes = applicable_tax_codes(
                    charge.charge.get("tax_codes") or [],
                    definition.get("tax_codes") or [],
                    customer.fields.get("tax_codes") or [],
                    default_codes,
                )
                applied = [(code, rates[code][0]) for code in codes if code in rates]
                lines.extend((fee.amount_cents, applied) for fee in charge.fees)
        return CustomerUsage(
            subscription=subscription,
            period=period,
            issuing_date=local_date(period.end_at, subscription.timezone),
            currency=definition["amount_currency"],
            charges=charges,
            taxes=invoice_taxes(lines),
        )


def _owned(
    aggregates: FreshAggregates,
    cls: type[A],
    aggregate_id: UUID,
    organization_id: UUID,
    missing: NotFoundError,
) -> A:
    """As Billing._get, from the cache: another organization's looks like a missing one."""
    try:
        aggregate = aggregates.get(aggregate_id)
    except AggregateNotFoundError:
        raise missing from None
    if not isinstance(aggregate, cls) or aggregate.organization_id != organization_id:
        raise missing
    return aggregate


def _tax_rates(billing: Billing, organization_id: UUID) -> dict[str, tuple[Decimal, bool]]:
    """Every tax of the organization: its rate and whether it applies to the organization."""
    taxes, _ = billing.taxes(organization_id, 1, 10_000)
    return {tax.code: (tax.rate, tax.applied_to_organization) for tax in taxes}
