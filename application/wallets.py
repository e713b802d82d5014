"""Prepaid wallets (§6): Lago's wallets and wallet transactions, consumption at finalization,
the ongoing balance, and automatic top-ups.

Every change to a wallet is saved in one transaction with what it implies: a paid top-up with
its `credit` invoice and the invoice number it takes; an invoice's finalization with the debits
of the wallets that pay it (apply_wallets, called by application/invoicing.py). The optimistic
concurrency of the wallet's stream replaces Lago's per-customer lock: a decision made on a stale
wallet fails to save, and is made again on the reloaded one.

Automatic top-ups are keyed on (rule, occurrence): a threshold rule's n-th crossing, an interval
rule's n-th anniversary. Their transaction (and its credit invoice) ids derive from that key, so
two workers deciding the same top-up make the same transaction, and one of them loses the save.
"""

import logging
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import TYPE_CHECKING, Any
from uuid import UUID, uuid4

from eventsourcing.application import AggregateNotFoundError
from eventsourcing.persistence import IntegrityError

from application.base import BillingBase
from application.current_usage import NoActiveSubscriptionError, UsageQueries
from application.errors import AlreadyExistsError, ConcurrencyConflictError, NotFoundError
from domain import ids
from domain.billable_metric import BillableMetric
from domain.customer import Customer
from domain.errors import CurrencyMismatchError, InvalidValueError
from domain.invoice import Invoice, NumberSequence
from domain.invoicing import FeeLine
from domain.limits import AMOUNT_CENTS_MAX, COMMAND_RETRIES_MAX
from domain.money import allocate_cents
from domain.periods import local_date
from domain.subscription import Subscription
from domain.wallet import (
    TRANSACTION_STATUSES,
    TRANSACTION_TYPES,
    WIRE_TRANSACTION_STATUSES,
    Rule,
    RuleInput,
    Wallet,
    WalletTransaction,
    check_credits,
    check_transaction_metadata,
    interval_index_at,
    rule_top_up,
    threshold_reached,
)

if TYPE_CHECKING:
    from application.billing import Billing
    from application.invoicing import Invoicing

logger = logging.getLogger("tally.wallets")

# Lago alerts on three automatic top-ups of one wallet within ten minutes (§6.5).
TOP_UP_ALERT_COUNT = 3
TOP_UP_ALERT_WINDOW = timedelta(minutes=10)


@dataclass(frozen=True)
class WalletValues:
    """Lago's wallet input, decoded; None means absent (Lago's client sends nulls)."""

    external_customer_id: str | None = None
    currency: str | None = None
    rate_amount: Decimal | None = None
    name: str | None = None
    code: str | None = None
    priority: int | None = None
    expiration_at: datetime | None = None
    paid_credits: Decimal | None = None
    granted_credits: Decimal | None = None
    fee_types: Sequence[str] | None = None
    billable_metric_codes: Sequence[str] | None = None
    rules: Sequence[RuleInput] | None = None
    invoice_requires_successful_payment: bool | None = None
    paid_top_up_min_amount_cents: int | None = None
    paid_top_up_max_amount_cents: int | None = None
    ignore_paid_top_up_limits_on_creation: bool | None = None
    metadata: Mapping[str, str | None] | None = None
    transaction_name: str | None = None
    transaction_metadata: Sequence[Mapping[str, str]] | None = None


@dataclass(frozen=True)
class TopUpValues:
    """Lago's wallet_transaction input: one transaction per non-zero kind."""

    paid_credits: Decimal | None = None
    granted_credits: Decimal | None = None
    voided_credits: Decimal | None = None
    name: str | None = None
    metadata: Sequence[Mapping[str, str]] | None = None
    invoice_requires_successful_payment: bool | None = None
    ignore_paid_top_up_limits: bool | None = None


@dataclass(frozen=True)
class OngoingBalance:
    """A wallet's balance minus the unbilled usage allocated to it (§6.4)."""

    wallet: Wallet
    usage_cents: int
    computed_at: datetime

    @property
    def balance_cents(self) -> int:
        return self.wallet.balance_cents - self.usage_cents


# Consumption at finalization (§6.3).


def fee_buckets(invoice: Invoice) -> dict[tuple[str, str | None], int]:
    """What each (fee type, billable metric) bucket of an invoice costs, tax included, minus its
    share of the credit notes' credit already applied (largest remainder), in fee order."""
    buckets: dict[tuple[str, str | None], int] = {}
    totals = invoice.totals
    for fee, line in zip(invoice.fees, totals.taxes.lines, strict=True):
        key = _bucket_key(fee)
        buckets[key] = buckets.get(key, 0) + fee.amount_cents + line.taxes_amount_cents
    credited = totals.credit_notes_amount_cents
    if credited > 0 and sum(buckets.values()) > 0:
        shares = allocate_cents(credited, list(buckets.values()))
        buckets = {
            key: cents - share for (key, cents), share in zip(buckets.items(), shares, strict=True)
        }
    return buckets


def _bucket_key(fee: FeeLine) -> tuple[str, str | None]:
    # A late-usage adjustment is a charge fee of the period it adjusts, as in Lago.
    fee_type = "charge" if fee.fee_type == "adjustment" else fee.fee_type
    return fee_type, fee.metric_code if fee_type == "charge" else None


def apply_wallets(billing: BillingBase, invoice: Invoice) -> list[Wallet]:
    """Let the customer's wallets pay the draft's total after tax and credit notes (§6.3):
    in priority order, each within its limitations, per fee bucket. Both the invoice and the
    wallets record it; the caller saves the wallets with the finalization, in one transaction.
    """
    due_cents = invoice.totals.total_amount_cents
    if due_cents <= 0 or invoice.invoice_type == "credit":  # A top-up is never paid in credits.
        return []
    now = billing.now()
    wallets = [
        wallet
        for wallet in customer_wallets(
            billing, invoice.organization_id, invoice.external_customer_id
        )
        if wallet.currency == invoice.currency and wallet.is_usable_at(now)
    ]
    if not wallets:
        return []
    remaining = fee_buckets(invoice)
    paying: list[Wallet] = []
    for wallet in wallets:
        applicable = [key for key in remaining if wallet.applies_to(*key)]
        cap_cents = min(due_cents, sum(max(0, remaining[key]) for key in applicable))
        lots_before = {lot.transaction_id: lot.kind for lot in wallet.lots}
        applied_cents = wallet.pay_invoice(invoice.id, cap_cents, invoice.currency, now)
        if applied_cents <= 0:
            continue
        left = applied_cents
        for key in applicable:
            taken = min(left, max(0, remaining[key]))
            remaining[key] -= taken
            left -= taken
        debit = wallet.entries()[-1]
        granted = sum(cents for lot_id, cents in debit.lots if lots_before[lot_id] == "granted")
        invoice.apply_prepaid_credit(wallet.id, debit.transaction_id, applied_cents, granted)
        paying.append(wallet)
        due_cents -= applied_cents
        if due_cents <= 0:
            break
    return paying


def recredit_wallets(
    billing: BillingBase, invoice: Invoice, now: datetime
) -> tuple[list[Wallet], int]:
    """A voided invoice's prepaid credits back to the wallets that paid it (§8.8), each once.
    Returns the wallets to save with the void, in one transaction, and the cents returned."""
    wallets, returned_cents = [], 0
    for wallet_id in dict.fromkeys(credit["wallet_id"] for credit in invoice.prepaid_credits):
        wallet: Wallet = billing.repository.get(wallet_id)
        cents = wallet.recredit_invoice(invoice.id, now)
        if cents > 0:
            wallets.append(wallet)
            returned_cents += cents
    return wallets, returned_cents


def customer_wallets(
    billing: BillingBase, organization_id: UUID, external_customer_id: str
) -> list[Wallet]:
    """The customer's wallets, in the order they pay: priority, then creation."""
    billing.catch_up()
    found, _ = billing.index.view.page(
        organization_id, "wallet", 1, 10**9, parent_key=external_customer_id
    )
    wallets = []
    for wallet_id in found:
        wallet: Wallet = billing.repository.get(wallet_id)
        wallets.append(wallet)
    wallets.sort(key=lambda w: (w.priority, w.created_at, w.id.int))
    return wallets


# Settlement of paid top-ups (§6.2).


def credit_fee_line(
    wallet: Wallet, transaction_id: UUID, amount_cents: int, name: str | None, now: datetime
) -> FeeLine:
    """The one fee of a `credit` invoice: the credits bought, at the wallet's rate, no tax."""
    return FeeLine(
        key=f"credit:{wallet.id}:{transaction_id}",
        fee_type="credit",
        external_subscription_id="",
        plan_id="",
        plan_version=0,
        from_at=now,
        to_at=now,
        units=wallet.credits(amount_cents),
        events_count=0,
        unit_amount=wallet.rate_amount,
        precise_amount_cents=Decimal(amount_cents),
        amount_cents=amount_cents,
        invoice_display_name=name,
    )


def credit_invoice_transaction(invoice: Invoice) -> tuple[UUID, UUID] | None:
    """The (wallet, transaction) a `credit` invoice pays for; None for any other invoice."""
    if invoice.invoice_type != "credit":
        return None
    for fee in invoice.fee_events:
        kind, wallet_id, transaction_id = str(fee["key"]).split(":")
        if kind == "credit":
            return UUID(wallet_id), UUID(transaction_id)
    return None


def settle_top_up(billing: BillingBase, invoice: Invoice) -> Wallet | None:
    """A credit invoice's payment status reaches its wallet: `succeeded` settles the credits,
    `failed` fails the transaction. Idempotent: a status delivered twice, or late, changes
    nothing more; the top-up worker's sweep calls it again for any purchase still pending."""
    paid_for = credit_invoice_transaction(invoice)
    if paid_for is None or invoice.payment_status == "pending":
        return None
    wallet_id, transaction_id = paid_for
    for _ in range(COMMAND_RETRIES_MAX):
        wallet: Wallet = billing.repository.get(wallet_id)
        now = billing.now()
        if invoice.payment_status == "succeeded":
            changed = wallet.settle(transaction_id, now)
        else:
            changed = wallet.fail(transaction_id, now)
        if not changed:
            return wallet
        try:
            billing.save(wallet)
        except IntegrityError:
            continue
        return wallet
    raise ConcurrencyConflictError("wallet", wallet_id)


# Ongoing usage (§6.4).


def allocate_ongoing_usage(
    wallets: Sequence[Wallet], usage: Mapping[tuple[str, str | None], int], now: datetime
) -> dict[UUID, int]:
    """Unbilled usage by (fee type, metric) allocated to wallets in priority order within their
    limitations, largest bucket first (Lago's AllocateOngoingUsageByWalletsService): each wallet
    takes up to its balance, except that a wallet with an active threshold rule absorbs all
    that reaches it, and the last applicable wallet the overflow, so either may go negative and
    its rule fire. Usage no wallet applies to stays unallocated."""
    allocated = {wallet.id: 0 for wallet in wallets}
    pool = sorted(
        ((key, cents) for key, cents in usage.items() if cents > 0),
        key=lambda item: (-item[1], item[0][0], item[0][1] or ""),
    )
    for (fee_type, metric_code), cents in pool:
        applicable = [w for w in wallets if w.applies_to(fee_type, metric_code)]
        left = cents
        for position, wallet in enumerate(applicable):
            if left <= 0:
                break
            if _has_threshold_rule(wallet, now) or position == len(applicable) - 1:
                taken = left
            else:
                taken = min(left, wallet.balance_cents - allocated[wallet.id])
                if taken <= 0:
                    continue
            allocated[wallet.id] += taken
            left -= taken
    return allocated


def _has_threshold_rule(wallet: Wallet, now: datetime) -> bool:
    return any(rule.trigger == "threshold" and rule.is_active_at(now) for rule in wallet.rules)


class Wallets:
    def __init__(
        self, billing: "Billing", invoicing: "Invoicing", usage_queries: UsageQueries
    ) -> None:
        self.billing = billing
        self.invoicing = invoicing
        self.usage_queries = usage_queries

    # Commands.

    def create_wallet(self, organization_id: UUID, values: WalletValues) -> Wallet:
        """Lago's POST /wallets, with its initial paid and granted credits."""
        billing = self.billing
        external_customer_id = _required(values.external_customer_id, "external_customer_id")
        currency = _required(values.currency, "currency")
        if values.rate_amount is None:
            raise InvalidValueError("rate_amount", "value_is_mandatory")
        customer = billing.customer(organization_id, external_customer_id)
        customer_currency = customer.fields.get("currency")
        if customer_currency and customer_currency != currency:
            raise CurrencyMismatchError(expected=customer_currency, got=currency)
        self._check_metrics(organization_id, values.billable_metric_codes or ())
        check_transaction_metadata(values.transaction_metadata)
        paid = check_credits(values.paid_credits, "paid_credits", "invalid_paid_credits")
        granted = check_credits(
            values.granted_credits, "granted_credits", "invalid_granted_credits"
        )
        code = values.code
        wallet_id = ids.wallet_id(organization_id, external_customer_id, code) if code else uuid4()
        rule_ids = [uuid4() for _ in values.rules or ()]
        for _ in range(COMMAND_RETRIES_MAX):
            now = billing.now()
            wallet = Wallet.create(
                wallet_id,
                organization_id=organization_id,
                customer_id=customer.id,
                external_customer_id=external_customer_id,
                currency=currency,
                rate_amount=values.rate_amount,
                name=values.name,
                code=code,
                priority=values.priority,
                expiration_at=values.expiration_at,
                fee_types=values.fee_types or (),
                billable_metric_codes=values.billable_metric_codes or (),
                rules=values.rules or (),
                invoice_requires_successful_payment=bool(
                    values.invoice_requires_successful_payment
                ),
                paid_top_up_min_amount_cents=values.paid_top_up_min_amount_cents,
                paid_top_up_max_amount_cents=values.paid_top_up_max_amount_cents,
                metadata=values.metadata or {},
                now=now,
                rule_ids=rule_ids,
            )
            aggregates = self._top_up(
                wallet,
                TopUpValues(
                    paid_credits=paid,
                    granted_credits=granted,
                    name=values.transaction_name,
                    metadata=values.transaction_metadata,
                    ignore_paid_top_up_limits=values.ignore_paid_top_up_limits_on_creation,
                ),
                now,
                [uuid4(), uuid4()],
            )
            try:
                billing.save(wallet, *aggregates)
            except IntegrityError:
                if self._exists(wallet_id):
                    raise AlreadyExistsError("code", code) from None
                continue  # The invoice number was taken by another finalization: again.
            billing.catch_up()
            return wallet
        raise ConcurrencyConflictError("wallet", wallet_id)

    def update_wallet(self, organization_id: UUID, wallet_id: UUID, values: WalletValues) -> Wallet:
        """Lago's PUT /wallets/{lago_id}: the settings, the limitations and the rules."""
        self._check_metrics(organization_id, values.billable_metric_codes or ())
        changes: dict[str, Any] = {
            field: getattr(values, field)
            for field in (
                "name",
                "priority",
                "expiration_at",
                "fee_types",
                "billable_metric_codes",
                "invoice_requires_successful_payment",
                "paid_top_up_min_amount_cents",
                "paid_top_up_max_amount_cents",
                "metadata",
            )
            if getattr(values, field) is not None
        }
        rule_ids = [uuid4() for _ in values.rules or ()]

        def decide() -> Wallet:
            wallet = self.wallet(organization_id, wallet_id)
            wallet.update(changes, values.rules, self.billing.now(), rule_ids)
            return wallet

        return self.billing._command("wallet", wallet_id, decide)

    def terminate_wallet(self, organization_id: UUID, wallet_id: UUID) -> Wallet:
        """Lago's DELETE /wallets/{lago_id}: terminated, the balance forfeited (D15)."""

        def decide() -> Wallet:
            wallet = self.wallet(organization_id, wallet_id)
            wallet.terminate(self.billing.now())
            return wallet

        return self.billing._command("wallet", wallet_id, decide)

    def top_up(
        self,
        organization_id: UUID,
        wallet_id: UUID,
        values: TopUpValues,
        request_key: str | None = None,
    ) -> list[WalletTransaction]:
        """Lago's POST /wallet_transactions: paid, granted and voided credits, one transaction
        per non-zero kind, in that order. A terminated wallet is not found, as in Lago.

        With a request_key (the request's Idempotency-Key) the transactions' ids derive from it,
        so a retry of a top-up that committed (its answer lost) returns what it made, once."""
        check_credits(values.paid_credits, "paid_credits", "invalid_paid_credits")
        check_credits(values.granted_credits, "granted_credits", "invalid_granted_credits")
        check_credits(values.voided_credits, "voided_credits", "invalid_voided_credits")
        check_transaction_metadata(values.metadata)
        transaction_ids = (
            [uuid4(), uuid4(), uuid4()]
            if request_key is None
            else [
                ids.wallet_transaction_id(wallet_id, "request", request_key, kind)
                for kind in ("paid", "granted", "voided")
            ]
        )
        for _ in range(COMMAND_RETRIES_MAX):
            wallet = self.wallet(organization_id, wallet_id)
            made = [wallet.transactions[t] for t in transaction_ids if t in wallet.transactions]
            if made:
                return made  # This request's top-up, committed already.
            now = self.billing.now()
            if not wallet.is_usable_at(now):
                raise NotFoundError("wallet", wallet_id)
            aggregates = self._top_up(wallet, values, now, transaction_ids)
            try:
                self.billing.save(wallet, *aggregates)
            except IntegrityError:
                continue
            self.billing.catch_up()
            return [wallet.transactions[t] for t in transaction_ids if t in wallet.transactions]
        raise ConcurrencyConflictError("wallet", wallet_id)

    def _top_up(
        self, wallet: Wallet, values: TopUpValues, now: datetime, transaction_ids: Sequence[UUID]
    ) -> list[Any]:
        """Record a manual top-up on a loaded wallet; returns the aggregates to save with it."""
        aggregates: list[Any] = []
        metadata = values.metadata or ()
        paid_id, granted_id, *voided_id = transaction_ids
        paid_cents = wallet.cents(values.paid_credits or Decimal(0))
        if paid_cents > 0:
            invoice, sequence = self._credit_invoice(wallet, paid_id, paid_cents, values.name, now)
            wallet.purchase(
                paid_id,
                paid_cents,
                invoice.id,
                now=now,
                name=values.name,
                metadata=metadata,
                invoice_requires_successful_payment=values.invoice_requires_successful_payment,
                ignore_paid_top_up_limits=bool(values.ignore_paid_top_up_limits),
            )
            aggregates += [invoice, sequence]
        granted_cents = wallet.cents(values.granted_credits or Decimal(0))
        if granted_cents > 0:
            wallet.grant(granted_id, granted_cents, now=now, name=values.name, metadata=metadata)
        voided_cents = wallet.cents(values.voided_credits or Decimal(0))
        if voided_cents > 0 and voided_id:
            wallet.void_credits(
                voided_id[0], voided_cents, now=now, name=values.name, metadata=metadata
            )
        return aggregates

    def _credit_invoice(
        self,
        wallet: Wallet,
        transaction_id: UUID,
        amount_cents: int,
        name: str | None,
        now: datetime,
    ) -> tuple[Invoice, NumberSequence]:
        """A paid top-up's invoice of type `credit`: one fee, no tax (§6.2), finalized and
        numbered at once in the organization's invoice series."""
        customer: Customer = self.billing.repository.get(wallet.customer_id)
        timezone = customer.timezone or "UTC"
        invoice = Invoice.draft(
            ids.credit_invoice_id(wallet.organization_id, transaction_id),
            organization_id=wallet.organization_id,
            customer_id=wallet.customer_id,
            external_customer_id=wallet.external_customer_id,
            invoice_type="credit",
            currency=wallet.currency,
            issuing_date=local_date(now, timezone),
            net_payment_term=int(customer.fields.get("net_payment_term") or 0),
            billing_periods=[],
            fees=[credit_fee_line(wallet, transaction_id, amount_cents, name, now)],
            watermark=0,
            tax_rates={},
        )
        sequence = self.invoicing._finalize(invoice, now, timezone, True)
        return invoice, sequence

    # Queries.

    def wallet(self, organization_id: UUID, wallet_id: UUID) -> Wallet:
        return self.billing._get(
            Wallet, wallet_id, organization_id, NotFoundError("wallet", wallet_id)
        )

    def wallets(
        self,
        organization_id: UUID,
        external_customer_id: str | None,
        page: int,
        per_page: int,
        *,
        currency: str | None = None,
    ) -> tuple[list[Wallet], int]:
        """Lago's GET /wallets: a customer's wallets (Lago answers 404 without one)."""
        if not external_customer_id:
            raise NotFoundError("customer", external_customer_id)
        self.billing.customer(organization_id, external_customer_id)
        if currency is None:
            return self.billing._page(
                Wallet, "wallet", organization_id, page, per_page, [], external_customer_id
            )
        found = self.billing._all(Wallet, "wallet", organization_id, external_customer_id)
        matching = [wallet for wallet in found if wallet.currency == currency]
        start = (page - 1) * per_page
        return matching[start : start + per_page], len(matching)

    def transactions(
        self,
        organization_id: UUID,
        wallet_id: UUID,
        page: int,
        per_page: int,
        *,
        status: str | None = None,
        transaction_status: str | None = None,
        transaction_type: str | None = None,
    ) -> tuple[Wallet, list[WalletTransaction], int]:
        """Lago's GET /wallets/{lago_id}/wallet_transactions, newest first, with its filters."""
        for field, value, allowed in (
            ("status", status, TRANSACTION_STATUSES),
            ("transaction_status", transaction_status, WIRE_TRANSACTION_STATUSES),
            ("transaction_type", transaction_type, TRANSACTION_TYPES),
        ):
            if value is not None and value not in allowed:
                raise InvalidValueError(field, "value_is_invalid", value)
        wallet = self.wallet(organization_id, wallet_id)
        matching = [
            t
            for t in reversed(wallet.entries())
            if (status is None or t.status == status)
            and (transaction_status is None or t.transaction_status == transaction_status)
            and (transaction_type is None or t.transaction_type == transaction_type)
        ]
        start = (page - 1) * per_page
        return wallet, matching[start : start + per_page], len(matching)

    def transaction(
        self, organization_id: UUID, transaction_id: UUID
    ) -> tuple[Wallet, WalletTransaction]:
        """One transaction by its lago_id (GET /wallet_transactions/{id}), across the wallets."""
        self.billing.catch_up()
        for wallet_id in self.billing.index.view.aggregate_ids_of_kind("wallet"):
            wallet: Wallet = self.billing.repository.get(wallet_id)
            if wallet.organization_id == organization_id and transaction_id in wallet.transactions:
                return wallet, wallet.transactions[transaction_id]
        raise NotFoundError("wallet_transaction", transaction_id)

    def ongoing_balances(
        self, organization_id: UUID, external_customer_id: str
    ) -> dict[UUID, OngoingBalance]:
        """§6.4 for each of the customer's wallets: balance − current usage including taxes
        (every active subscription) − draft invoices, allocated in priority order."""
        now = self.billing.now()
        wallets = customer_wallets(self.billing, organization_id, external_customer_id)
        if not any(wallet.is_usable_at(now) for wallet in wallets):
            return {wallet.id: OngoingBalance(wallet, 0, now) for wallet in wallets}
        usage = self._ongoing_usage(organization_id, external_customer_id)
        allocated: dict[UUID, int] = {}
        by_currency: dict[str, list[Wallet]] = defaultdict(list)
        for wallet in wallets:
            if wallet.is_usable_at(now):
                by_currency[wallet.currency].append(wallet)
        for currency, group in by_currency.items():
            allocated.update(allocate_ongoing_usage(group, usage.get(currency, {}), now))
        return {
            wallet.id: OngoingBalance(wallet, allocated.get(wallet.id, 0), now)
            for wallet in wallets
        }

    def ongoing_balance(self, wallet: Wallet) -> OngoingBalance:
        """One wallet's ongoing balance (the usage allocated to it, against its own balance)."""
        balances = self.ongoing_balances(wallet.organization_id, wallet.external_customer_id)
        found = balances.get(wallet.id)
        return OngoingBalance(wallet, found.usage_cents if found else 0, self.billing.now())

    def _ongoing_usage(
        self, organization_id: UUID, external_customer_id: str
    ) -> dict[str, dict[tuple[str, str | None], int]]:
        """Unbilled usage including taxes, by currency and (fee type, metric)."""
        usage: dict[str, dict[tuple[str, str | None], int]] = defaultdict(dict)
        now = self.billing.now()
        subscriptions = self.billing._all(
            Subscription, "subscription", organization_id, external_customer_id
        )
        for subscription in subscriptions:
            if not subscription.is_active_at(now):
                continue
            try:
                current = self.usage_queries.current_usage(
                    organization_id, external_customer_id, subscription.external_id
                )
            except (NoActiveSubscriptionError, NotFoundError):
                continue
            buckets = usage[current.currency]
            fees = [(charge, fee) for charge in current.charges for fee in charge.fees]
            for (charge, fee), line in zip(fees, current.taxes.lines, strict=True):
                key: tuple[str, str | None] = ("charge", charge.metric.code)
                buckets[key] = buckets.get(key, 0) + fee.amount_cents + line.taxes_amount_cents
        drafts, _ = self.billing.index.view.page(
            organization_id,
            "invoice",
            1,
            10**9,
            parent_key=external_customer_id,
            statuses=["draft"],
        )
        for invoice_id in drafts:
            invoice: Invoice = self.billing.repository.get(invoice_id)
            if invoice.status != "draft":
                continue
            buckets = usage[invoice.currency]
            for bucket, cents in fee_buckets(invoice).items():
                buckets[bucket] = buckets.get(bucket, 0) + cents
        return usage

    # Automatic top-ups (§6.5).

    def refresh(self, organization_id: UUID, external_customer_id: str) -> list[WalletTransaction]:
        """After usage changed: record depletions, and let threshold rules top up. Returns the
        transactions made."""
        made: list[WalletTransaction] = []
        balances = self.ongoing_balances(organization_id, external_customer_id)
        for balance in balances.values():
            if balance.wallet.status != "active":
                continue
            made += self._threshold_top_ups(balance.wallet.id, balance.usage_cents)
        return made

    def _threshold_top_ups(self, wallet_id: UUID, usage_cents: int) -> list[WalletTransaction]:
        for _ in range(COMMAND_RETRIES_MAX):
            wallet: Wallet = self.billing.repository.get(wallet_id)
            now = self.billing.now()
            if not wallet.is_usable_at(now):
                return []
            ongoing_cents = wallet.balance_cents - usage_cents
            wallet.observe_ongoing_balance(ongoing_cents, now)
            aggregates: list[Any] = []
            made: list[UUID] = []
            for rule in wallet.rules:
                if rule.trigger != "threshold" or not rule.is_active_at(now):
                    continue
                pending_cents = wallet.pending_inbound_cents
                if not threshold_reached(rule, ongoing_cents, pending_cents):
                    wallet.rearm(rule.lago_id)
                elif wallet.armed.get(rule.lago_id, True):
                    occurrence = str(len(wallet.occurrences.get(rule.lago_id, [])) + 1)
                    aggregates += self._rule_top_up(
                        wallet, rule, "threshold", occurrence, ongoing_cents, now, made
                    )
            if not wallet.pending_events:
                return []
            try:
                self.billing.save(wallet, *aggregates)
            except IntegrityError:
                continue  # Another worker changed the wallet (or made this top-up): again.
            if made:
                self._alert_on_bursts(wallet, now)
            return [wallet.transactions[t] for t in made]
        raise ConcurrencyConflictError("wallet", wallet_id)

    def _rule_top_up(
        self,
        wallet: Wallet,
        rule: Rule,
        source: str,
        occurrence: str,
        ongoing_cents: int,
        now: datetime,
        made: list[UUID],
    ) -> list[Any]:
        """One automatic top-up, keyed on (rule, occurrence); returns what to save with it."""
        top_up = rule_top_up(
            rule,
            ongoing_cents,
            wallet.pending_inbound_cents,
            paid_min_cents=wallet.paid_top_up_min_amount_cents,
            paid_max_cents=wallet.paid_top_up_max_amount_cents,
        )
        if top_up.paid_cents > 0 and not wallet.paid_top_up_allowed_at(now):
            logger.info("Wallet %s: paid top-up held back after a declined one", wallet.id)
            return []  # Stays armed: the sweep tries again when the back-off is over.
        aggregates: list[Any] = []
        key = ("rule", str(rule.lago_id), occurrence)
        paid_cents = min(top_up.paid_cents, AMOUNT_CENTS_MAX - wallet.inbound_cents)
        if paid_cents > 0:
            paid_id = ids.wallet_transaction_id(wallet.id, *key, "paid")
            invoice, sequence = self._credit_invoice(
                wallet, paid_id, paid_cents, rule.transaction_name, now
            )
            if wallet.purchase(
                paid_id,
                paid_cents,
                invoice.id,
                now=now,
                source=source,
                rule_id=rule.lago_id,
                occurrence=occurrence,
                name=rule.transaction_name,
                metadata=rule.transaction_metadata,
                invoice_requires_successful_payment=rule.invoice_requires_successful_payment,
                ignore_paid_top_up_limits=True,  # rule_top_up applied them.
            ):
                aggregates += [invoice, sequence]
                made.append(paid_id)
        granted_cents = min(top_up.granted_cents, AMOUNT_CENTS_MAX - wallet.inbound_cents)
        if granted_cents > 0:
            granted_id = ids.wallet_transaction_id(wallet.id, *key, "granted")
            if wallet.grant(
                granted_id,
                granted_cents,
                now=now,
                source=source,
                rule_id=rule.lago_id,
                occurrence=occurrence,
                name=rule.transaction_name,
                metadata=rule.transaction_metadata,
            ):
                made.append(granted_id)
        return aggregates

    def _alert_on_bursts(self, wallet: Wallet, now: datetime) -> None:
        recent = [
            t
            for t in wallet.entries()
            if t.source != "manual" and now - t.created_at <= TOP_UP_ALERT_WINDOW
        ]
        if len(recent) >= TOP_UP_ALERT_COUNT:
            logger.warning(
                "Wallet %s: %d automatic top-ups in %s", wallet.id, len(recent), TOP_UP_ALERT_WINDOW
            )

    def run_due(self) -> list[WalletTransaction]:
        """The periodic sweep: expire wallets, run interval rules at their anniversaries, retry
        threshold top-ups held back after a declined payment, and reconcile pending purchases
        with their invoices' payments (a status change whose settlement was lost)."""
        made: list[WalletTransaction] = []
        self.billing.catch_up()
        now = self.billing.now()
        held_back: set[tuple[UUID, str]] = set()
        for wallet_id in self.billing.index.view.aggregate_ids_of_kind("wallet"):
            wallet: Wallet = self.billing.repository.get(wallet_id)
            if wallet.status != "active":
                continue
            self._reconcile(wallet)
            if _expiry_or_interval_due(wallet, now):
                made += self._interval_top_ups(wallet_id)
            failed, settled = wallet.last_failed_paid_at, wallet.last_settled_paid_at
            if (
                failed is not None
                and (settled is None or settled < failed)
                and any(rule.trigger == "threshold" for rule in wallet.rules)
            ):
                held_back.add((wallet.organization_id, wallet.external_customer_id))
        for organization_id, external_customer_id in sorted(held_back):
            made += self.refresh(organization_id, external_customer_id)
        return made

    def _reconcile(self, wallet: Wallet) -> None:
        for transaction in wallet.entries():
            if transaction.kind == "purchased" and transaction.status == "pending":
                assert transaction.invoice_id is not None, transaction
                try:
                    invoice: Invoice = self.billing.repository.get(transaction.invoice_id)
                except AggregateNotFoundError:
                    continue
                settle_top_up(self.billing, invoice)

    def _interval_top_ups(self, wallet_id: UUID) -> list[WalletTransaction]:
        for _ in range(COMMAND_RETRIES_MAX):
            wallet: Wallet = self.billing.repository.get(wallet_id)
            now = self.billing.now()
            wallet.expire(now)
            aggregates: list[Any] = []
            made: list[UUID] = []
            for rule in wallet.rules if wallet.status == "active" else []:
                if rule.trigger != "interval" or not rule.is_active_at(now):
                    continue
                assert rule.interval is not None, rule
                index = interval_index_at(rule.started_at, rule.interval, now)
                if index < 1 or str(index) in wallet.occurrences.get(rule.lago_id, []):
                    continue  # Lago's first interval top-up is one interval after the start.
                ongoing_cents = wallet.balance_cents
                if rule.method == "target":
                    ongoing_cents = self.ongoing_balance(wallet).balance_cents
                aggregates += self._rule_top_up(
                    wallet, rule, "interval", str(index), ongoing_cents, now, made
                )
            if not wallet.pending_events:
                return []
            try:
                self.billing.save(wallet, *aggregates)
            except IntegrityError:
                continue
            return [wallet.transactions[t] for t in made]
        raise ConcurrencyConflictError("wallet", wallet_id)

    # Helpers.

    def _exists(self, wallet_id: UUID) -> bool:
        try:
            self.billing.repository.get(wallet_id)
        except AggregateNotFoundError:
            return False
        return True

    def _check_metrics(self, organization_id: UUID, codes: Sequence[str]) -> None:
        """Lago: applies_to names existing billable metrics (invalid_limitations)."""
        for code in codes:
            try:
                metric: BillableMetric = self.billing.repository.get(
                    ids.billable_metric_id(organization_id, code)
                )
            except AggregateNotFoundError:
                raise InvalidValueError("applies_to", "invalid_limitations", code) from None
            if metric.deleted:
                raise InvalidValueError("applies_to", "invalid_limitations", code)


def _expiry_or_interval_due(wallet: Wallet, now: datetime) -> bool:
    if wallet.expiration_at is not None and wallet.expiration_at <= now:
        return True
    for rule in wallet.rules:
        if rule.trigger == "interval" and rule.is_active_at(now):
            assert rule.interval is not None, rule
            index = interval_index_at(rule.started_at, rule.interval, now)
            if index >= 1 and str(index) not in wallet.occurrences.get(rule.lago_id, []):
                return True
    return False


def _required(value: str | None, field: str) -> str:
    if not value:
        raise InvalidValueError(field, "value_is_mandatory", value)
    return value
