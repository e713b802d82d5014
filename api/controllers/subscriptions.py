"""Lago's subscriptions resource."""

from datetime import timedelta
from typing import Annotated, Any
from uuid import UUID

from litestar import Controller, delete, get, post, put
from litestar.di import NamedDependency
from litestar.params import FromPath, FromQuery, QueryParameter

from api.http import (
    Envelope,
    Input,
    Output,
    PaginationMeta,
    decode_body,
    iso,
    meta,
    pagination,
    parse_instant,
)
from api.problems import RequestBodyError
from application.billing import Billing
from domain.periods import local_date
from domain.subscription import Subscription


class SubscriptionInput(Input):
    external_customer_id: str | None = None
    plan_code: str | None = None
    external_id: str | None = None
    name: str | None = None
    subscription_at: str | None = None
    billing_time: str | None = None
    ending_at: str | None = None
    plan_overrides: dict[str, Any] | None = None
    consolidate_invoice: bool | None = None
    billing_entity_code: str | None = None
    purchase_order_number: str | None = None
    # Accepted as null only: Tally has no payment methods, custom sections or activation rules.
    payment_method: dict[str, Any] | None = None
    invoice_custom_section: dict[str, Any] | None = None
    activation_rules: list[dict[str, Any]] | None = None


class SubscriptionRequest(Envelope):
    subscription: SubscriptionInput


class SubscriptionObject(Output):
    lago_id: UUID
    lago_customer_id: UUID
    external_customer_id: str
    external_id: str
    name: str | None
    plan_code: str
    plan_amount_cents: int
    plan_amount_currency: str
    status: str
    billing_time: str
    subscription_at: str | None
    subscription_date: str
    started_at: str | None
    ending_at: str | None
    terminated_at: str | None
    canceled_at: str | None
    created_at: str | None
    trial_ended_at: str | None
    previous_plan_code: str | None
    next_plan_code: str | None
    downgrade_plan_date: str | None
    current_billing_period_started_at: str | None
    current_billing_period_ending_at: str | None
    on_termination_credit_note: str | None
    on_termination_invoice: str
    consolidate_invoice: bool
    billing_entity_code: str | None
    purchase_order_number: str | None
    cancellation_reason: str | None
    activated_at: str | None
    activation_rules: list[dict[str, Any]]
    plan_version: int


class SubscriptionResponse(Output):
    subscription: SubscriptionObject


class SubscriptionsResponse(Output):
    subscriptions: list[SubscriptionObject]
    meta: PaginationMeta


def subscription_object(subscription: Subscription, billing: Billing) -> SubscriptionObject:
    now = billing.now()
    status = subscription.status_at(now)
    plan = subscription.plan_at(now)
    pending = subscription.pending_phase(now)
    period = subscription.current_period(now)
    trial_ended_at = subscription.trial_ended_at()
    started = status in ("active", "terminated")
    return SubscriptionObject(
        lago_id=subscription.id,
        lago_customer_id=subscription.customer_id,
        external_customer_id=subscription.external_customer_id,
        external_id=subscription.external_id,
        name=subscription.name,
        plan_code=plan.plan_code,
        plan_amount_cents=plan.amount_cents,
        plan_amount_currency=plan.amount_currency,
        status=status,
        billing_time=subscription.billing_time,
        subscription_at=iso(subscription.subscription_at),
        subscription_date=subscription.subscription_date.isoformat(),
        started_at=iso(subscription.started_at) if started else None,
        ending_at=iso(subscription.ending_at),
        terminated_at=iso(subscription.ended_at) if status == "terminated" else None,
        canceled_at=iso(subscription.canceled_at),
        created_at=iso(subscription.created_on),
        trial_ended_at=iso(trial_ended_at) if trial_ended_at and trial_ended_at <= now else None,
        previous_plan_code=subscription.previous_plan_code(now),
        next_plan_code=pending.plan.plan_code if pending else None,
        downgrade_plan_date=(
            local_date(pending.starts_at, subscription.timezone).isoformat() if pending else None
        ),
        current_billing_period_started_at=iso(period.start_at) if period else None,
        # Lago renders the end inclusively: the last second of the period's last day.
        current_billing_period_ending_at=(
            iso(period.end_at - timedelta(seconds=1)) if period else None
        ),
        on_termination_credit_note=subscription.on_termination_credit_note,
        on_termination_invoice=subscription.on_termination_invoice or "generate",
        consolidate_invoice=True,
        billing_entity_code=None,
        purchase_order_number=None,
        cancellation_reason=None,
        activated_at=iso(subscription.started_at) if started else None,
        activation_rules=[],
        plan_version=plan.plan_version,
    )


def _check_unsupported(body: SubscriptionInput) -> None:
    for field in ("payment_method", "invoice_custom_section"):
        if getattr(body, field):
            raise RequestBodyError(field, "unsupported_field", f"{field} is not supported.")
    if body.activation_rules:
        raise RequestBodyError("activation_rules", "unsupported_field", "Not supported.")


def _statuses(status: list[str] | None) -> tuple[str, ...]:
    return tuple(status) if status else ("active",)  # Lago lists active ones by default.


class SubscriptionController(Controller):
    path = "/subscriptions"
    tags = ("Subscriptions",)

    @post(operation_id="createSubscription", status_code=200, sync_to_thread=True)
    def create(
        self,
        raw_body: NamedDependency[bytes],
        billing: NamedDependency[Billing],
        organization_id: NamedDependency[UUID],
    ) -> SubscriptionResponse:
        """Assign a plan to a customer; with another plan_code, upgrade or downgrade."""
        body = decode_body(raw_body, SubscriptionRequest, "subscription").subscription
        _check_unsupported(body)
        for field in ("external_customer_id", "plan_code", "external_id"):
            if not getattr(body, field):
                raise RequestBodyError(field, "value_is_mandatory", f"{field} is required.")
        subscription = billing.create_subscription(
            organization_id,
            body.external_id or "",
            external_customer_id=body.external_customer_id or "",
            plan_code=body.plan_code or "",
            name=body.name,
            billing_time=body.billing_time,
            subscription_at=parse_instant(body.subscription_at, "subscription_at"),
            ending_at=parse_instant(body.ending_at, "ending_at"),
            plan_overrides=body.plan_overrides,
        )
        return SubscriptionResponse(subscription=subscription_object(subscription, billing))

    @put("/{external_id:str}", operation_id="updateSubscription", sync_to_thread=True)
    def update(
        self,
        external_id: FromPath[str],
        raw_body: NamedDependency[bytes],
        billing: NamedDependency[Billing],
        organization_id: NamedDependency[UUID],
        status: FromQuery[str | None] = None,
    ) -> SubscriptionResponse:
        """Change a subscription's name, end date, start (pending only) or overrides."""
        body = decode_body(raw_body, SubscriptionRequest, "subscription").subscription
        _check_unsupported(body)
        subscription = billing.update_subscription(
            organization_id,
            external_id,
            status=status,
            name=body.name,
            ending_at=parse_instant(body.ending_at, "ending_at"),
            subscription_at=parse_instant(body.subscription_at, "subscription_at"),
            plan_overrides=body.plan_overrides,
        )
        return SubscriptionResponse(subscription=subscription_object(subscription, billing))

    @get("/{external_id:str}", operation_id="findSubscription", sync_to_thread=True)
    def find(
        self,
        external_id: FromPath[str],
        billing: NamedDependency[Billing],
        organization_id: NamedDependency[UUID],
        status: FromQuery[str | None] = None,
    ) -> SubscriptionResponse:
        """A subscription by external_id; only an active one unless `status` says otherwise."""
        subscription = billing.subscription(organization_id, external_id, status or "active")
        return SubscriptionResponse(subscription=subscription_object(subscription, billing))

    @get(operation_id="findAllSubscriptions", sync_to_thread=True)
    def find_all(
        self,
        billing: NamedDependency[Billing],
        organization_id: NamedDependency[UUID],
        page: FromQuery[int | None] = None,
        per_page: FromQuery[int | None] = None,
        external_customer_id: FromQuery[str | None] = None,
        plan_code: FromQuery[str | None] = None,
        status: FromQuery[list[str] | None] = None,
        status_list: Annotated[list[str] | None, QueryParameter(name="status[]")] = None,
    ) -> SubscriptionsResponse:
        """Subscriptions, newest first; by default only active ones, as Lago lists them."""
        page, per_page = pagination(page, per_page)
        subscriptions, total = billing.subscriptions(
            organization_id,
            page,
            per_page,
            external_customer_id=external_customer_id,
            plan_code=plan_code,
            statuses=_statuses(status or status_list),
        )
        return SubscriptionsResponse(
            subscriptions=[subscription_object(s, billing) for s in subscriptions],
            meta=meta(page, per_page, total),
        )

    @delete(
        "/{external_id:str}",
        operation_id="destroySubscription",
        status_code=200,
        sync_to_thread=True,
    )
    def destroy(
        self,
        external_id: FromPath[str],
        billing: NamedDependency[Billing],
        organization_id: NamedDependency[UUID],
        status: FromQuery[str | None] = None,
        on_termination_invoice: FromQuery[str | None] = None,
        on_termination_credit_note: FromQuery[str | None] = None,
    ) -> SubscriptionResponse:
        """Terminate a subscription (or cancel a pending one with status=pending)."""
        subscription = billing.terminate_subscription(
            organization_id,
            external_id,
            status=status,
            on_termination_invoice=on_termination_invoice,
            on_termination_credit_note=on_termination_credit_note,
        )
        return SubscriptionResponse(subscription=subscription_object(subscription, billing))
