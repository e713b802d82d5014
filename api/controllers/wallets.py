"""Lago's wallets and wallet transactions resources (prepaid credits, §6)."""

from datetime import datetime
from decimal import Decimal
from typing import Any
from uuid import UUID

from litestar import Controller, Request, delete, get, post, put
from litestar.di import NamedDependency, Provide
from litestar.params import FromPath, FromQuery

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
from application.errors import NotFoundError
from application.wallets import OngoingBalance, TopUpValues, Wallets, WalletValues
from domain.errors import InvalidValueError
from domain.money import CURRENCY_EXPONENTS, EXACT, to_decimal
from domain.wallet import Rule, RuleInput, Wallet, WalletTransaction


class PaymentMethodInput(Input):
    payment_method_type: str | None = None
    payment_method_id: str | None = None


class InvoiceCustomSectionInput(Input):
    skip_invoice_custom_sections: bool | None = None
    invoice_custom_section_codes: list[str] | None = None


class AppliesToInput(Input):
    fee_types: list[str] | None = None
    billable_metric_codes: list[str] | None = None


class RecurringTransactionRuleInput(Input):
    lago_id: str | None = None
    trigger: str | None = None
    method: str | None = None
    interval: str | None = None
    threshold_credits: Decimal | None = None
    paid_credits: Decimal | None = None
    granted_credits: Decimal | None = None
    target_ongoing_balance: Decimal | None = None
    grants_target_top_up: bool | None = None
    started_at: str | None = None
    expiration_at: str | None = None
    transaction_metadata: list[dict[str, str]] | None = None
    transaction_name: str | None = None
    ignore_paid_top_up_limits: bool | None = None
    invoice_requires_successful_payment: bool | None = None
    # Accepted as null only: Tally has no payment methods or invoice custom sections.
    payment_method: PaymentMethodInput | None = None
    invoice_custom_section: InvoiceCustomSectionInput | None = None
    purchase_order_number: str | None = None


class WalletInput(Input):
    external_customer_id: str | None = None
    rate_amount: Decimal | None = None
    currency: str | None = None
    name: str | None = None
    code: str | None = None
    priority: int | None = None
    paid_credits: Decimal | None = None
    granted_credits: Decimal | None = None
    expiration_at: str | None = None
    recurring_transaction_rules: list[RecurringTransactionRuleInput] | None = None
    transaction_metadata: list[dict[str, str]] | None = None
    transaction_name: str | None = None
    applies_to: AppliesToInput | None = None
    invoice_requires_successful_payment: bool | None = None
    paid_top_up_max_amount_cents: int | None = None
    paid_top_up_min_amount_cents: int | None = None
    ignore_paid_top_up_limits_on_creation: bool | None = None
    metadata: dict[str, str | None] | None = None
    # Accepted as null only: Tally has no payment methods or invoice custom sections.
    payment_method: PaymentMethodInput | None = None
    invoice_custom_section: InvoiceCustomSectionInput | None = None
    # Accepted and not stored (Tally has one billing entity; no purchase orders yet).
    billing_entity_code: str | None = None
    purchase_order_number: str | None = None


class WalletRequest(Envelope):
    wallet: WalletInput


class WalletTransactionInput(Input):
    wallet_id: str | None = None
    paid_credits: Decimal | None = None
    granted_credits: Decimal | None = None
    voided_credits: Decimal | None = None
    invoice_requires_successful_payment: bool | None = None
    metadata: list[dict[str, str]] | None = None
    name: str | None = None
    ignore_paid_top_up_limits: bool | None = None
    # Accepted as null only: Tally has no payment methods or invoice custom sections.
    payment_method: PaymentMethodInput | None = None
    invoice_custom_section: InvoiceCustomSectionInput | None = None
    purchase_order_number: str | None = None


class WalletTransactionRequest(Envelope):
    wallet_transaction: WalletTransactionInput


class AppliesToObject(Output):
    fee_types: list[str]
    billable_metric_codes: list[str]


class RecurringTransactionRuleObject(Output):
    lago_id: UUID
    trigger: str
    method: str
    interval: str | None
    threshold_credits: str | None
    paid_credits: str
    granted_credits: str
    target_ongoing_balance: str | None
    grants_target_top_up: bool
    started_at: str | None
    expiration_at: str | None
    status: str
    created_at: str | None
    transaction_metadata: list[dict[str, str]]
    transaction_name: str | None
    ignore_paid_top_up_limits: bool
    invoice_requires_successful_payment: bool
    purchase_order_number: None
    payment_method: None
    applied_invoice_custom_sections: list[dict[str, Any]]


class WalletObject(Output):
    lago_id: UUID
    lago_customer_id: UUID
    external_customer_id: str
    status: str
    currency: str
    name: str | None
    code: str | None
    priority: int
    rate_amount: str
    credits_balance: str
    balance_cents: int
    consumed_credits: str
    consumed_amount_cents: int
    created_at: str
    expiration_at: str | None
    last_balance_sync_at: str | None
    last_consumed_credit_at: str | None
    terminated_at: str | None
    recurring_transaction_rules: list[RecurringTransactionRuleObject]
    ongoing_balance_cents: int
    ongoing_usage_balance_cents: int
    credits_ongoing_balance: str
    credits_ongoing_usage_balance: str
    applies_to: AppliesToObject
    invoice_requires_successful_payment: bool
    paid_top_up_max_amount_cents: int | None
    paid_top_up_min_amount_cents: int | None
    metadata: dict[str, str | None]
    payment_method: None
    applied_invoice_custom_sections: list[dict[str, Any]]
    billing_entity_code: None
    purchase_order_number: None


class WalletResponse(Output):
    wallet: WalletObject


class WalletsResponse(Output):
    wallets: list[WalletObject]
    meta: PaginationMeta


class WalletTransactionObject(Output):
    lago_id: UUID
    lago_wallet_id: UUID
    lago_invoice_id: UUID | None
    lago_credit_note_id: None
    lago_voided_invoice_id: UUID | None
    status: str
    source: str
    transaction_status: str
    transaction_type: str
    amount: str
    credit_amount: str
    remaining_amount_cents: int | None
    remaining_credit_amount: str | None
    priority: int
    settled_at: str | None
    failed_at: str | None
    created_at: str
    metadata: list[dict[str, str]]
    name: str | None
    invoice_requires_successful_payment: bool
    purchase_order_number: None
    payment_method: None
    applied_invoice_custom_sections: list[dict[str, Any]]
    void_reason: str | None  # Tally: "manual", "expired" or "terminated" on outbound voids.


class WalletTransactionResponse(Output):
    wallet_transaction: WalletTransactionObject


class WalletTransactionsCreated(Output):
    wallet_transactions: list[WalletTransactionObject]  # Lago: no meta on this answer.


class WalletTransactionsResponse(Output):
    wallet_transactions: list[WalletTransactionObject]
    meta: PaginationMeta


# Formats.


def credits_string(value: Decimal) -> str:
    """Credits and rates as Lago renders a BigDecimal: no trailing zeros, at least one place."""
    text = format(value.normalize(EXACT), "f")
    return text if "." in text else f"{text}.0"


def amount_string(cents: int, currency: str) -> str:
    return format(Decimal(cents).scaleb(-CURRENCY_EXPONENTS[currency], EXACT), "f")


def rule_object(wallet: Wallet, rule: Rule, now: datetime) -> RecurringTransactionRuleObject:
    def credits(cents: int | None) -> str | None:
        return None if cents is None else credits_string(wallet.credits(cents))

    return RecurringTransactionRuleObject(
        lago_id=rule.lago_id,
        trigger=rule.trigger,
        method=rule.method,
        interval=rule.interval,
        threshold_credits=credits(rule.threshold_cents),
        paid_credits=credits(rule.paid_cents) or "0.0",
        granted_credits=credits(rule.granted_cents) or "0.0",
        target_ongoing_balance=credits(rule.target_cents),
        grants_target_top_up=rule.grants_target_top_up,
        started_at=iso(rule.started_at),
        expiration_at=iso(rule.expiration_at),
        status="active" if rule.expiration_at is None or now < rule.expiration_at else "terminated",
        created_at=iso(rule.created_at),
        transaction_metadata=[dict(m) for m in rule.transaction_metadata],
        transaction_name=rule.transaction_name,
        ignore_paid_top_up_limits=rule.ignore_paid_top_up_limits,
        invoice_requires_successful_payment=rule.invoice_requires_successful_payment,
        purchase_order_number=None,
        payment_method=None,
        applied_invoice_custom_sections=[],
    )


def wallet_object(ongoing: OngoingBalance) -> WalletObject:
    wallet = ongoing.wallet
    credits = wallet.credits
    return WalletObject(
        lago_id=wallet.id,
        lago_customer_id=wallet.customer_id,
        external_customer_id=wallet.external_customer_id,
        status=wallet.status,
        currency=wallet.currency,
        name=wallet.name,
        code=wallet.code,
        priority=wallet.priority,
        rate_amount=credits_string(wallet.rate_amount),
        credits_balance=credits_string(credits(wallet.balance_cents)),
        balance_cents=wallet.balance_cents,
        consumed_credits=credits_string(credits(wallet.consumed_cents)),
        consumed_amount_cents=wallet.consumed_cents,
        created_at=iso(wallet.created_at) or "",
        expiration_at=iso(wallet.expiration_at),
        last_balance_sync_at=iso(ongoing.computed_at),
        last_consumed_credit_at=iso(wallet.last_consumed_at),
        terminated_at=iso(wallet.terminated_at),
        recurring_transaction_rules=[
            rule_object(wallet, rule, ongoing.computed_at) for rule in wallet.rules
        ],
        ongoing_balance_cents=ongoing.balance_cents,
        ongoing_usage_balance_cents=ongoing.usage_cents,
        credits_ongoing_balance=credits_string(credits(ongoing.balance_cents)),
        credits_ongoing_usage_balance=credits_string(credits(ongoing.usage_cents)),
        applies_to=AppliesToObject(
            fee_types=list(wallet.fee_types),
            billable_metric_codes=list(wallet.billable_metric_codes),
        ),
        invoice_requires_successful_payment=wallet.invoice_requires_successful_payment,
        paid_top_up_max_amount_cents=wallet.paid_top_up_max_amount_cents,
        paid_top_up_min_amount_cents=wallet.paid_top_up_min_amount_cents,
        metadata=dict(wallet.metadata),
        payment_method=None,
        applied_invoice_custom_sections=[],
        billing_entity_code=None,
        purchase_order_number=None,
    )


def transaction_object(wallet: Wallet, transaction: WalletTransaction) -> WalletTransactionObject:
    inbound_settled = transaction.transaction_type == "inbound" and transaction.status == "settled"
    return WalletTransactionObject(
        lago_id=transaction.transaction_id,
        lago_wallet_id=wallet.id,
        # Credits a voided invoice gave back name it as Lago's voided_invoice_id.
        lago_invoice_id=None if transaction.kind == "recredited" else transaction.invoice_id,
        lago_credit_note_id=None,
        lago_voided_invoice_id=transaction.invoice_id if transaction.kind == "recredited" else None,
        status=transaction.status,
        source=transaction.source,
        transaction_status=transaction.transaction_status,
        transaction_type=transaction.transaction_type,
        amount=amount_string(transaction.amount_cents, wallet.currency),
        credit_amount=credits_string(wallet.credits(transaction.amount_cents)),
        remaining_amount_cents=transaction.remaining_cents if inbound_settled else None,
        remaining_credit_amount=(
            credits_string(wallet.credits(transaction.remaining_cents)) if inbound_settled else None
        ),
        priority=wallet.priority,
        settled_at=iso(transaction.settled_at),
        failed_at=iso(transaction.failed_at),
        created_at=iso(transaction.created_at) or "",
        metadata=[dict(m) for m in transaction.metadata],
        name=transaction.name,
        invoice_requires_successful_payment=transaction.invoice_requires_successful_payment,
        purchase_order_number=None,
        payment_method=None,
        applied_invoice_custom_sections=[],
        void_reason=transaction.void_reason,
    )


# Inputs.


def _decimal(value: Decimal | None, field: str) -> Decimal | None:
    """Bounded like every decimal Tally takes (places, digits); the domain checks the sign."""
    return None if value is None else to_decimal(str(value), field)


def _credits(value: Decimal | None, field: str) -> Decimal | None:
    try:
        return _decimal(value, field)
    except InvalidValueError:
        raise InvalidValueError(field, f"invalid_{field}", value) from None


def _check_unsupported(body: Any, fields: tuple[str, ...]) -> None:
    for field in fields:
        if getattr(body, field) is not None:
            raise RequestBodyError(field, "unsupported_field", f"{field} is not supported.")


def _rule_input(body: RecurringTransactionRuleInput) -> RuleInput:
    _check_unsupported(body, ("payment_method", "invoice_custom_section"))
    field = "recurring_transaction_rules"
    lago_id = None
    if body.lago_id is not None:
        try:
            lago_id = UUID(body.lago_id)
        except ValueError:
            raise InvalidValueError(field, "invalid_recurring_rule", body.lago_id) from None
    return RuleInput(
        trigger=body.trigger,
        method=body.method,
        interval=body.interval,
        threshold_credits=_decimal(body.threshold_credits, field),
        paid_credits=_decimal(body.paid_credits, field),
        granted_credits=_decimal(body.granted_credits, field),
        target_ongoing_balance=_decimal(body.target_ongoing_balance, field),
        grants_target_top_up=body.grants_target_top_up,
        started_at=parse_instant(body.started_at, field),
        expiration_at=parse_instant(body.expiration_at, field),
        transaction_metadata=body.transaction_metadata,
        transaction_name=body.transaction_name,
        ignore_paid_top_up_limits=body.ignore_paid_top_up_limits,
        invoice_requires_successful_payment=body.invoice_requires_successful_payment,
        lago_id=lago_id,
    )


def wallet_values(body: WalletInput) -> WalletValues:
    _check_unsupported(body, ("payment_method", "invoice_custom_section"))
    applies_to = body.applies_to
    rate_amount = _decimal(body.rate_amount, "rate_amount")
    return WalletValues(
        external_customer_id=body.external_customer_id,
        currency=body.currency,
        rate_amount=rate_amount,
        name=body.name,
        code=body.code,
        priority=body.priority,
        expiration_at=parse_instant(body.expiration_at, "expiration_at"),
        paid_credits=_credits(body.paid_credits, "paid_credits"),
        granted_credits=_credits(body.granted_credits, "granted_credits"),
        fee_types=applies_to.fee_types if applies_to else None,
        billable_metric_codes=applies_to.billable_metric_codes if applies_to else None,
        rules=(
            None
            if body.recurring_transaction_rules is None
            else [_rule_input(rule) for rule in body.recurring_transaction_rules]
        ),
        invoice_requires_successful_payment=body.invoice_requires_successful_payment,
        paid_top_up_min_amount_cents=body.paid_top_up_min_amount_cents,
        paid_top_up_max_amount_cents=body.paid_top_up_max_amount_cents,
        ignore_paid_top_up_limits_on_creation=body.ignore_paid_top_up_limits_on_creation,
        metadata=body.metadata,
        transaction_name=body.transaction_name,
        transaction_metadata=body.transaction_metadata,
    )


def _lago_id(value: str, resource: str) -> UUID:
    """A lago_id from the path; anything else names nothing (Lago's 404, not a 422)."""
    try:
        return UUID(value)
    except ValueError:
        raise NotFoundError(resource, value) from None


def provide_wallets(request: Request[Any, Any, Any]) -> Wallets:
    wallets: Wallets = request.app.state.ledger.wallets
    return wallets


_DEPENDENCIES = {"wallets": Provide(provide_wallets, sync_to_thread=False)}


def _response(wallets: Wallets, wallet: Wallet) -> WalletResponse:
    return WalletResponse(wallet=wallet_object(wallets.ongoing_balance(wallet)))


class WalletController(Controller):
    path = "/wallets"
    tags = ("Wallets",)
    dependencies = _DEPENDENCIES

    @post(operation_id="createWallet", status_code=200, sync_to_thread=True)
    def create(
        self,
        raw_body: NamedDependency[bytes],
        wallets: NamedDependency[Wallets],
        organization_id: NamedDependency[UUID],
    ) -> WalletResponse:
        """Create a wallet, with its initial paid (pending until invoiced and paid) and granted
        credits and its recurring transaction rules."""
        body = decode_body(raw_body, WalletRequest, "wallet").wallet
        wallet = wallets.create_wallet(organization_id, wallet_values(body))
        return _response(wallets, wallet)

    @put("/{lago_id:str}", operation_id="updateWallet", sync_to_thread=True)
    def update(
        self,
        lago_id: FromPath[str],
        raw_body: NamedDependency[bytes],
        wallets: NamedDependency[Wallets],
        organization_id: NamedDependency[UUID],
    ) -> WalletResponse:
        """Change a wallet's name, priority, expiration, limitations, limits or rules."""
        body = decode_body(raw_body, WalletRequest, "wallet").wallet
        for field in ("external_customer_id", "currency", "rate_amount"):
            if getattr(body, field) is not None:
                # Lago ignores them on update; Tally refuses what it would not apply.
                raise RequestBodyError(field, "unsupported_field", f"{field} cannot change.")
        wallet = wallets.update_wallet(
            organization_id, _lago_id(lago_id, "wallet"), wallet_values(body)
        )
        return _response(wallets, wallet)

    @get("/{lago_id:str}", operation_id="findWallet", sync_to_thread=True)
    def find(
        self,
        lago_id: FromPath[str],
        wallets: NamedDependency[Wallets],
        organization_id: NamedDependency[UUID],
    ) -> WalletResponse:
        """A wallet with its balance and its ongoing balance, computed now."""
        return _response(wallets, wallets.wallet(organization_id, _lago_id(lago_id, "wallet")))

    @get(operation_id="findAllWallets", sync_to_thread=True)
    def find_all(
        self,
        wallets: NamedDependency[Wallets],
        organization_id: NamedDependency[UUID],
        external_customer_id: FromQuery[str | None] = None,
        currency: FromQuery[str | None] = None,
        page: FromQuery[int | None] = None,
        per_page: FromQuery[int | None] = None,
    ) -> WalletsResponse:
        """A customer's wallets, newest first (external_customer_id is required, as in Lago)."""
        page, per_page = pagination(page, per_page)
        found, total = wallets.wallets(
            organization_id, external_customer_id, page, per_page, currency=currency
        )
        balances = (
            wallets.ongoing_balances(organization_id, external_customer_id)
            if found and external_customer_id
            else {}
        )
        return WalletsResponse(
            wallets=[
                wallet_object(
                    OngoingBalance(w, balances[w.id].usage_cents, balances[w.id].computed_at)
                    if w.id in balances
                    else wallets.ongoing_balance(w)
                )
                for w in found
            ],
            meta=meta(page, per_page, total),
        )

    @delete("/{lago_id:str}", operation_id="destroyWallet", status_code=200, sync_to_thread=True)
    def destroy(
        self,
        lago_id: FromPath[str],
        wallets: NamedDependency[Wallets],
        organization_id: NamedDependency[UUID],
    ) -> WalletResponse:
        """Terminate a wallet; its remaining balance is forfeited with an explicit entry."""
        wallet = wallets.terminate_wallet(organization_id, _lago_id(lago_id, "wallet"))
        return _response(wallets, wallet)


class WalletTransactionController(Controller):
    path = "/wallet_transactions"
    tags = ("Wallet transactions",)
    dependencies = _DEPENDENCIES

    @post(operation_id="createWalletTransaction", status_code=200, sync_to_thread=True)
    def create(
        self,
        request: Request[Any, Any, Any],
        raw_body: NamedDependency[bytes],
        wallets: NamedDependency[Wallets],
        organization_id: NamedDependency[UUID],
    ) -> WalletTransactionsCreated:
        """Top up (paid, granted) or void credits: one transaction per non-zero kind. Send an
        Idempotency-Key to make a retry safe (Lago has no such guard): the transactions' ids
        derive from it, so even a retry after a lost answer tops up once."""
        body = decode_body(raw_body, WalletTransactionRequest, "wallet_transaction")
        values = body.wallet_transaction
        _check_unsupported(values, ("payment_method", "invoice_custom_section"))
        wallet_id = _lago_id(values.wallet_id or "", "wallet")
        made = wallets.top_up(
            organization_id,
            wallet_id,
            TopUpValues(
                paid_credits=_credits(values.paid_credits, "paid_credits"),
                granted_credits=_credits(values.granted_credits, "granted_credits"),
                voided_credits=_credits(values.voided_credits, "voided_credits"),
                name=values.name,
                metadata=values.metadata,
                invoice_requires_successful_payment=values.invoice_requires_successful_payment,
                ignore_paid_top_up_limits=values.ignore_paid_top_up_limits,
            ),
            request_key=request.headers.get("idempotency-key"),
        )
        wallet = wallets.wallet(organization_id, wallet_id)
        return WalletTransactionsCreated(
            wallet_transactions=[transaction_object(wallet, t) for t in made]
        )

    @get("/{lago_id:str}", operation_id="findWalletTransaction", sync_to_thread=True)
    def find(
        self,
        lago_id: FromPath[str],
        wallets: NamedDependency[Wallets],
        organization_id: NamedDependency[UUID],
    ) -> WalletTransactionResponse:
        """One wallet transaction."""
        wallet, transaction = wallets.transaction(
            organization_id, _lago_id(lago_id, "wallet_transaction")
        )
        return WalletTransactionResponse(wallet_transaction=transaction_object(wallet, transaction))


@get(
    "/wallets/{lago_id:str}/wallet_transactions",
    operation_id="findAllWalletTransactions",
    tags=("Wallet transactions",),
    sync_to_thread=True,
    dependencies=_DEPENDENCIES,
)
def wallet_transactions(
    lago_id: FromPath[str],
    wallets: NamedDependency[Wallets],
    organization_id: NamedDependency[UUID],
    status: FromQuery[str | None] = None,
    transaction_status: FromQuery[str | None] = None,
    transaction_type: FromQuery[str | None] = None,
    page: FromQuery[int | None] = None,
    per_page: FromQuery[int | None] = None,
) -> WalletTransactionsResponse:
    """A wallet's transactions, newest first, with Lago's filters."""
    page, per_page = pagination(page, per_page)
    wallet, found, total = wallets.transactions(
        organization_id,
        _lago_id(lago_id, "wallet"),
        page,
        per_page,
        status=status,
        transaction_status=transaction_status,
        transaction_type=transaction_type,
    )
    return WalletTransactionsResponse(
        wallet_transactions=[transaction_object(wallet, t) for t in found],
        meta=meta(page, per_page, total),
    )
