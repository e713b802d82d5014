"""Subscriptions: customers on plans, with plan changes, overrides and termination."""

from collections.abc import Mapping
from datetime import datetime
from decimal import Decimal
from typing import Any, Protocol
from uuid import UUID

from eventsourcing.application import AggregateNotFoundError

from application.base import BillingBase
from application.errors import AlreadyExistsError, NotFoundError
from domain import ids
from domain.customer import Customer, check_key
from domain.errors import InvalidValueError
from domain.subscription import STATUSES, PlanRef, Subscription

DEFAULT_TIMEZONE = "UTC"


class PlanLike(Protocol):
    """What subscriptions need of a plan (application/plans.py owns the Plan use cases)."""

    id: UUID
    code: str

    @property
    def version_number(self) -> int: ...

    def definition(self, version: int | None = None) -> dict[str, Any]: ...


def plan_ref(plan: PlanLike, version: int | None = None) -> PlanRef:
    version = version or plan.version_number
    definition = plan.definition(version)
    return PlanRef(
        plan_id=plan.id,
        plan_code=plan.code,
        plan_version=version,
        interval=definition["interval"],
        amount_cents=definition["amount_cents"],
        amount_currency=definition["amount_currency"],
        pay_in_advance=definition["pay_in_advance"],
        trial_period=Decimal(definition.get("trial_period") or "0"),
    )


class SubscriptionCommands(BillingBase):
    def create_subscription(
        self,
        organization_id: UUID,
        external_id: str,
        *,
        external_customer_id: str,
        plan_code: str,
        name: str | None = None,
        billing_time: str | None = None,
        subscription_at: datetime | None = None,
        ending_at: datetime | None = None,
        plan_overrides: Mapping[str, Any] | None = None,
    ) -> Subscription:
        """Lago's POST /subscriptions: create; with another plan_code, change the plan.

        An unknown external_customer_id creates the customer (Lago does); a customer without a
        currency takes the plan's; another currency is refused.
        """
        check_key(external_id, "external_id")
        check_key(external_customer_id, "external_customer_id")
        now = self.now()

        def decide() -> list[Any]:
            plan = self._subscribed_plan(organization_id, plan_code, external_id, plan_overrides)
            ref = plan_ref(plan)
            try:
                subscription: Subscription = self.repository.get(
                    ids.subscription_id(organization_id, external_id)
                )
            except AggregateNotFoundError:
                pass
            else:
                if subscription.external_customer_id != external_customer_id:
                    raise AlreadyExistsError("external_id", external_id)
                if subscription.status_at(now) in ("terminated", "canceled"):
                    raise AlreadyExistsError("external_id", external_id)
                if subscription.plan_at(now).plan_id != ref.plan_id:
                    subscription.change_plan(ref, now)
                elif subscription.plan_at(now).plan_version != ref.plan_version:
                    subscription.apply_plan_version(ref, now)
                return [subscription]
            customer = self._customer_for(organization_id, external_customer_id, ref)
            subscription = Subscription.create(
                organization_id,
                external_id,
                external_customer_id,
                customer.id,
                ref,
                name=name,
                billing_time=billing_time,
                subscription_at=subscription_at,
                ending_at=ending_at,
                timezone=customer.timezone or DEFAULT_TIMEZONE,
                now=now,
            )
            return [subscription, customer]

        subscription: Subscription = self._command_many("subscription", external_id, decide)[0]
        return subscription

    def update_subscription(
        self,
        organization_id: UUID,
        external_id: str,
        *,
        status: str | None = None,
        name: str | None = None,
        ending_at: datetime | None = None,
        subscription_at: datetime | None = None,
        plan_overrides: Mapping[str, Any] | None = None,
    ) -> Subscription:
        now = self.now()

        def decide() -> list[Any]:
            subscription = self.subscription(organization_id, external_id, status or "active")
            subscription.update(
                name=name, ending_at=ending_at, subscription_at=subscription_at, now=now
            )
            if plan_overrides:
                current = subscription.plan_at(now)
                plan = self._subscribed_plan(
                    organization_id, current.plan_code, external_id, plan_overrides
                )
                subscription.apply_plan_version(plan_ref(plan), now)
            return [subscription]

        subscription: Subscription = self._command_many("subscription", external_id, decide)[0]
        return subscription

    def terminate_subscription(
        self,
        organization_id: UUID,
        external_id: str,
        *,
        status: str | None = None,
        on_termination_invoice: str | None = None,
        on_termination_credit_note: str | None = None,
    ) -> Subscription:
        """Lago's DELETE: terminate an active subscription, or cancel a pending one."""
        now = self.now()

        def decide() -> list[Any]:
            subscription = self.subscription(organization_id, external_id, status or "active")
            subscription.terminate(now, on_termination_invoice, on_termination_credit_note)
            return [subscription]

        subscription: Subscription = self._command_many("subscription", external_id, decide)[0]
        return subscription

    def subscription(
        self, organization_id: UUID, external_id: str, status: str | None = "active"
    ) -> Subscription:
        """A subscription by external_id; Lago answers 404 unless it has the asked status."""
        if status is not None and status not in STATUSES:
            raise InvalidValueError("status", "value_is_invalid", status)
        subscription = self._get(
            Subscription,
            ids.subscription_id(organization_id, external_id),
            organization_id,
            NotFoundError("subscription", external_id),
        )
        if status is not None and subscription.status_at(self.now()) != status:
            raise NotFoundError("subscription", external_id)
        return subscription

    def subscriptions(
        self,
        organization_id: UUID,
        page: int,
        per_page: int,
        *,
        external_customer_id: str | None = None,
        plan_code: str | None = None,
        statuses: tuple[str, ...] = ("active",),
    ) -> tuple[list[Subscription], int]:
        """Subscriptions newest first; status is computed at the request time, so filters apply
        after loading the customer's or organization's subscriptions."""
        for status in statuses:
            if status not in STATUSES:
                raise InvalidValueError("status", "value_is_invalid", status)
        now = self.now()
        candidates = self._all(Subscription, "subscription", organization_id, external_customer_id)
        matching = [
            s
            for s in candidates
            if s.status_at(now) in statuses
            and (plan_code is None or s.plan_at(now).plan_code == plan_code)
        ]
        start = (page - 1) * per_page
        return matching[start : start + per_page], len(matching)

    # Helpers.

    def _subscribed_plan(
        self,
        organization_id: UUID,
        plan_code: str,
        external_id: str,
        plan_overrides: Mapping[str, Any] | None,
    ) -> PlanLike:
        try:
            plan: PlanLike = self.plan(organization_id, plan_code)  # type: ignore[attr-defined]
        except NotFoundError:
            raise InvalidValueError("plan_code", "value_is_invalid", plan_code) from None
        if plan_overrides:
            override: PlanLike = self.create_plan_override(  # type: ignore[attr-defined]
                organization_id, plan_code, external_id, plan_overrides
            )
            return override
        return plan

    def _customer_for(
        self, organization_id: UUID, external_customer_id: str, plan: PlanRef
    ) -> Customer:
        try:
            customer: Customer = self.repository.get(
                ids.customer_id(organization_id, external_customer_id)
            )
        except AggregateNotFoundError:
            return Customer.create(
                organization_id, external_customer_id, {"currency": plan.amount_currency}
            )
        if customer.deleted or customer.currency is None:
            customer.upsert({"currency": plan.amount_currency})
        elif customer.currency != plan.amount_currency:
            raise InvalidValueError("plan_code", "currencies_does_not_match", plan.plan_code)
        return customer
