"""Prepaid wallet: a customer's credits in one currency, held as integer cents in lots (§6).

Amounts are authoritative in minor units (D6); credits are derived, cents / rate_amount, shown to
five places. Every settled inbound transaction (granted, or purchased once its credit invoice is
paid) is a lot. Outbound transactions (a void, an invoice paid with credits, the balance forfeited
at expiry or termination, D15) take from the lots, granted before purchased, oldest first, and
record which lots they took: the balance is the sum of the lots, and of the settled entries.
"""

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from fractions import Fraction
from typing import Any, Final
from uuid import UUID

from eventsourcing.domain import AggregateCreated, AggregateEvent, BaseAggregate, event

from domain import ids
from domain.errors import CurrencyMismatchError, InvalidValueError, NotAllowedError
from domain.limits import AMOUNT_CENTS_MAX, KEY_LENGTH_MAX, TEXT_LENGTH_MAX
from domain.money import CURRENCY_EXPONENTS, EXACT, check_currency, round_half_up
from domain.periods import INTERVALS, MONTHS_PER_INTERVAL, add_months

PRIORITY_MIN: Final = 1
PRIORITY_MAX: Final = 50
PRIORITY_DEFAULT: Final = 50  # Lago: 1 is consumed first, 50 last.
CREDITS_PLACES: Final = 5  # Lago keeps credits with five decimals.
# Lago's Fee.fee_types: what `applies_to.fee_types` may name.
FEE_TYPES: Final = ("charge", "add_on", "subscription", "credit", "commitment", "fixed_charge")
TRIGGERS: Final = ("interval", "threshold")
METHODS: Final = ("fixed", "target")
# Lago refuses a second rule (invalid_number_of_recurring_rules).
RECURRING_RULES_MAX: Final = 1
STATUSES: Final = ("active", "terminated")
TRANSACTION_STATUSES: Final = ("pending", "settled", "failed")
# Tally's kinds: Lago's four, and `expired` for the balance forfeited at expiry (D15), which the
# wire shows as a `voided` transaction (Lago's enum) with void_reason "expired".
KINDS: Final = ("purchased", "granted", "voided", "invoiced", "expired", "recredited")
WIRE_TRANSACTION_STATUSES: Final = ("purchased", "granted", "voided", "invoiced")
TRANSACTION_TYPES: Final = ("inbound", "outbound")
SOURCES: Final = ("manual", "interval", "threshold")
# Lago: no automatic paid top-up within an hour of a declined one, unless one settled since.
PAID_TOP_UP_BACKOFF: Final = timedelta(hours=1)
METADATA_MAX: Final = 50


class WalletNotActiveError(NotAllowedError):
    """A terminated (or expired) wallet takes no top-up, void or change."""

    code = "wallet_not_active"


# Credits and cents (D6).


def credits_to_cents(credits: Decimal, rate_amount: Decimal, currency: str) -> int:
    """The money value of some credits in minor units, rounded half-up once (D6)."""
    exact = EXACT.multiply(credits, rate_amount).scaleb(CURRENCY_EXPONENTS[currency], EXACT)
    return round_half_up(exact)


def cents_to_credits(cents: int, rate_amount: Decimal, currency: str) -> Decimal:
    """Credits derived from cents, half-up to five places: for display, never summed."""
    value = Fraction(cents, 10 ** CURRENCY_EXPONENTS[currency]) / Fraction(rate_amount)
    return Decimal(round_half_up(value * 10**CREDITS_PLACES)).scaleb(-CREDITS_PLACES)


def check_credits(value: Decimal | None, field: str, code: str) -> Decimal:
    """A credits input: a finite decimal ≥ 0 (None is 0); Lago's code names the field."""
    if value is None:
        return Decimal(0)
    if not value.is_finite() or value < 0:
        raise InvalidValueError(field, code, value)
    return value


def check_rate_amount(rate_amount: Decimal) -> Decimal:
    if not rate_amount.is_finite() or rate_amount <= 0:
        raise InvalidValueError("rate_amount", "value_is_invalid", rate_amount)
    return rate_amount


# Recurring transaction rules (§6.5).


@dataclass(frozen=True)
class RuleInput:
    """A recurring transaction rule as the caller gives it, credits in decimals."""

    trigger: str | None
    method: str | None = None
    interval: str | None = None
    threshold_credits: Decimal | None = None
    paid_credits: Decimal | None = None
    granted_credits: Decimal | None = None
    target_ongoing_balance: Decimal | None = None
    grants_target_top_up: bool | None = None
    started_at: datetime | None = None
    expiration_at: datetime | None = None
    transaction_metadata: Sequence[Mapping[str, str]] | None = None
    transaction_name: str | None = None
    ignore_paid_top_up_limits: bool | None = None
    invoice_requires_successful_payment: bool | None = None
    lago_id: UUID | None = None


@dataclass(frozen=True)
class Rule:
    """A rule as the wallet records it: amounts in cents, converted once at the wallet's rate."""

    lago_id: UUID
    trigger: str
    method: str
    interval: str | None
    threshold_cents: int | None
    paid_cents: int
    granted_cents: int
    target_cents: int | None
    grants_target_top_up: bool
    started_at: datetime
    expiration_at: datetime | None
    created_at: datetime
    transaction_metadata: tuple[Mapping[str, str], ...]
    transaction_name: str | None
    ignore_paid_top_up_limits: bool
    invoice_requires_successful_payment: bool

    def as_event(self) -> dict[str, Any]:
        return {
            "lago_id": self.lago_id,
            "trigger": self.trigger,
            "method": self.method,
            "interval": self.interval,
            "threshold_cents": self.threshold_cents,
            "paid_cents": self.paid_cents,
            "granted_cents": self.granted_cents,
            "target_cents": self.target_cents,
            "grants_target_top_up": self.grants_target_top_up,
            "started_at": self.started_at,
            "expiration_at": self.expiration_at,
            "created_at": self.created_at,
            "transaction_metadata": [dict(m) for m in self.transaction_metadata],
            "transaction_name": self.transaction_name,
            "ignore_paid_top_up_limits": self.ignore_paid_top_up_limits,
            "invoice_requires_successful_payment": self.invoice_requires_successful_payment,
        }

    @classmethod
    def from_event(cls, data: Mapping[str, Any]) -> "Rule":
        return cls(**{**data, "transaction_metadata": tuple(data["transaction_metadata"])})

    def is_active_at(self, now: datetime) -> bool:
        return self.started_at <= now and (self.expiration_at is None or now < self.expiration_at)


def interval_occurrence_at(started_at: datetime, interval: str, index: int) -> datetime:
    """The index-th anniversary of a rule's start (UTC), never derived from the previous one."""
    assert interval in INTERVALS, interval
    if interval == "weekly":
        return started_at + timedelta(weeks=index)
    start = started_at.astimezone(UTC)
    day = add_months(start.date(), index * MONTHS_PER_INTERVAL[interval])
    return datetime.combine(day, start.timetz())


def interval_index_at(started_at: datetime, interval: str, now: datetime) -> int:
    """The last anniversary reached by now (0 is the start itself; -1 before it)."""
    if now < started_at:
        return -1
    start = started_at.astimezone(UTC)
    if interval == "weekly":
        index = (now - started_at) // timedelta(weeks=1)
    else:
        moment = now.astimezone(UTC)
        months = (moment.year - start.year) * 12 + moment.month - start.month
        index = max(0, months // MONTHS_PER_INTERVAL[interval])
    while interval_occurrence_at(started_at, interval, index) > now:
        index -= 1
    while interval_occurrence_at(started_at, interval, index + 1) <= now:
        index += 1
    return index


@dataclass(frozen=True)
class TopUp:
    """What an automatic top-up buys and grants, in cents."""

    paid_cents: int
    granted_cents: int


def fixed_paid_cents(rule: Rule, ongoing_cents: int, pending_cents: int) -> int:
    """§6.5 fixed method, paid part: the smallest multiple of paid_credits that lifts the ongoing
    balance strictly above the threshold (interval rules buy paid_credits as they are)."""
    if rule.paid_cents == 0:
        return 0
    if rule.threshold_cents is None or rule.trigger != "threshold":
        return rule.paid_cents
    gap = rule.threshold_cents - ongoing_cents - rule.granted_cents - pending_cents
    if gap < rule.paid_cents:
        return rule.paid_cents
    return rule.paid_cents * (gap // rule.paid_cents + 1)


def rule_top_up(
    rule: Rule,
    ongoing_cents: int,
    pending_cents: int,
    *,
    paid_min_cents: int | None,
    paid_max_cents: int | None,
) -> TopUp:
    """§6.5: what the rule tops up at this ongoing balance (its trigger already fired).

    fixed: granted_credits, and paid credits capped by the wallet's paid maximum (and lifted to
    its minimum, as target does, rather than refused); target: target − ongoing (0 if above),
    granted with grants_target_top_up, else paid with the minimum and without the maximum.
    """
    ignore = rule.ignore_paid_top_up_limits
    if rule.method == "target":
        assert rule.target_cents is not None, rule
        gap = max(0, rule.target_cents - ongoing_cents)
        if gap == 0:
            return TopUp(0, 0)
        if rule.grants_target_top_up:
            return TopUp(0, gap)
        if paid_min_cents is not None and not ignore:
            gap = max(gap, paid_min_cents)
        return TopUp(gap, 0)
    paid = fixed_paid_cents(rule, ongoing_cents, pending_cents)
    if paid > 0 and not ignore:
        if paid_max_cents is not None:
            paid = min(paid, paid_max_cents)
        if paid_min_cents is not None:
            paid = max(paid, paid_min_cents)
    return TopUp(paid, rule.granted_cents)


def threshold_reached(rule: Rule, ongoing_cents: int, pending_cents: int) -> bool:
    """§6.5: ongoing ≤ threshold and ongoing + pending inbound ≤ threshold."""
    assert rule.trigger == "threshold" and rule.threshold_cents is not None, rule
    return (
        ongoing_cents <= rule.threshold_cents
        and ongoing_cents + pending_cents <= rule.threshold_cents
    )


# Transactions.


@dataclass(frozen=True)
class WalletTransaction:
    """One entry of the wallet: inbound (granted, purchased) or outbound (voided, invoiced,
    expired). Inbound settled entries are the lots; remaining_cents is what is left of one."""

    transaction_id: UUID
    kind: str
    status: str
    source: str
    amount_cents: int
    created_at: datetime
    sequence: int  # Order of creation in the wallet.
    name: str | None = None
    metadata: tuple[Mapping[str, str], ...] = ()
    invoice_id: UUID | None = None  # The credit invoice (purchased) or the invoice paid.
    rule_id: UUID | None = None
    invoice_requires_successful_payment: bool = False
    settled_at: datetime | None = None
    failed_at: datetime | None = None
    remaining_cents: int = 0
    lot_order: int | None = None  # Order of settlement: lots are consumed oldest first.
    lots: tuple[tuple[UUID, int], ...] = ()  # Outbound: cents taken from each lot.
    void_reason: str | None = None  # "manual", "expired" or "terminated" for outbound voids.

    @property
    def transaction_type(self) -> str:
        return "inbound" if self.kind in ("granted", "purchased", "recredited") else "outbound"

    @property
    def transaction_status(self) -> str:
        """Lago's enum: the forfeiture at expiry is a void; credits returned by a voided
        invoice come back as granted ones (Lago's WalletTransactions::RecreditService)."""
        if self.kind == "recredited":
            return "granted"
        return "voided" if self.kind == "expired" else self.kind


class Wallet(BaseAggregate[UUID]):
    TOPIC = "tally.Wallet"

    class Event(AggregateEvent):
        pass

    class Created(AggregateCreated, Event):
        TOPIC = "tally.Wallet.Created"
        organization_id: UUID
        customer_id: UUID
        external_customer_id: str
        currency: str
        rate_amount: Decimal
        name: str | None
        code: str | None
        priority: int
        expiration_at: datetime | None
        fee_types: list[str]
        billable_metric_codes: list[str]
        rules: list[dict[str, Any]]
        invoice_requires_successful_payment: bool
        paid_top_up_min_amount_cents: int | None
        paid_top_up_max_amount_cents: int | None
        metadata: dict[str, str | None]
        created_at: datetime

    class Updated(Event):
        """Changed settings, by field (`rules` is the whole new list)."""

        TOPIC = "tally.Wallet.Updated"
        changes: dict[str, Any]

    class Granted(Event):
        """Free credits, settled at once: a new lot."""

        TOPIC = "tally.Wallet.Granted"
        transaction_id: UUID
        amount_cents: int
        source: str
        rule_id: UUID | None
        occurrence: str | None  # An automatic top-up's trigger occurrence.
        name: str | None
        metadata: list[dict[str, str]]
        created_at: datetime

    class Purchased(Event):
        """Paid credits, pending until their credit invoice is paid (§6.2)."""

        TOPIC = "tally.Wallet.Purchased"
        transaction_id: UUID
        amount_cents: int
        invoice_id: UUID
        source: str
        rule_id: UUID | None
        occurrence: str | None
        name: str | None
        metadata: list[dict[str, str]]
        invoice_requires_successful_payment: bool
        vat_treatment: str  # §6.2: a top-up is an advance, not taxed at issue.
        created_at: datetime

    class PurchaseSettled(Event):
        TOPIC = "tally.Wallet.PurchaseSettled"
        transaction_id: UUID
        settled_at: datetime

    class PurchaseFailed(Event):
        TOPIC = "tally.Wallet.PurchaseFailed"
        transaction_id: UUID
        failed_at: datetime

    class Voided(Event):
        TOPIC = "tally.Wallet.Voided"
        transaction_id: UUID
        amount_cents: int
        lots: list[dict[str, Any]]  # [{"transaction_id": UUID, "amount_cents": int}]
        name: str | None
        metadata: list[dict[str, str]]
        created_at: datetime

    class Invoiced(Event):
        """Credits paid part of an invoice at its finalization (§6.3)."""

        TOPIC = "tally.Wallet.Invoiced"
        transaction_id: UUID
        invoice_id: UUID
        amount_cents: int
        lots: list[dict[str, Any]]
        created_at: datetime

    class Recredited(Event):
        """A voided invoice's credits back in the wallet (§8.8): each lot its payment took
        gets its cents back, and an inbound entry records it."""

        TOPIC = "tally.Wallet.Recredited"
        transaction_id: UUID
        invoice_id: UUID
        amount_cents: int
        lots: list[dict[str, Any]]
        created_at: datetime

    class Forfeited(Event):
        """The balance a wallet loses when it expires or is terminated: an explicit entry (D15)."""

        TOPIC = "tally.Wallet.Forfeited"
        transaction_id: UUID
        amount_cents: int
        lots: list[dict[str, Any]]
        reason: str  # "expired" or "terminated"
        created_at: datetime

    class Terminated(Event):
        TOPIC = "tally.Wallet.Terminated"
        terminated_at: datetime
        reason: str  # "expired" or "terminated"

    class RuleRearmed(Event):
        """The ongoing balance went back above a threshold rule's threshold: the next crossing
        may top up again (one top-up per crossing)."""

        TOPIC = "tally.Wallet.RuleRearmed"
        rule_id: UUID

    class OngoingBalanceDepleted(Event):
        """The ongoing balance reached zero or less (Lago's wallet.depleted_ongoing_balance)."""

        TOPIC = "tally.Wallet.OngoingBalanceDepleted"
        ongoing_balance_cents: int
        at: datetime

    class OngoingBalanceReplenished(Event):
        TOPIC = "tally.Wallet.OngoingBalanceReplenished"
        ongoing_balance_cents: int
        at: datetime

    @staticmethod
    def create_id(organization_id: UUID, external_customer_id: str, code: str) -> UUID:
        return ids.wallet_id(organization_id, external_customer_id, code)

    # Commands decide: they validate and compute, run once, and never run on replay.

    @classmethod
    def create(
        cls,
        wallet_id: UUID,
        *,
        organization_id: UUID,
        customer_id: UUID,
        external_customer_id: str,
        currency: str,
        rate_amount: Decimal,
        name: str | None,
        code: str | None,
        priority: int | None,
        expiration_at: datetime | None,
        fee_types: Sequence[str],
        billable_metric_codes: Sequence[str],
        rules: Sequence[RuleInput],
        invoice_requires_successful_payment: bool,
        paid_top_up_min_amount_cents: int | None,
        paid_top_up_max_amount_cents: int | None,
        metadata: Mapping[str, str | None],
        now: datetime,
        rule_ids: Sequence[UUID],
    ) -> "Wallet":
        """A wallet; rule_ids name its rules (made once by the caller, one per rule)."""
        check_currency(currency)
        check_rate_amount(rate_amount)
        _check_text(name, "name")
        if code is not None:
            _check_text(code, "code", KEY_LENGTH_MAX)
        _check_expiration(expiration_at, now)
        _check_limits(paid_top_up_min_amount_cents, paid_top_up_max_amount_cents)
        _check_metadata(metadata)
        return cls._create(
            cls.Created,
            id=wallet_id,
            organization_id=organization_id,
            customer_id=customer_id,
            external_customer_id=external_customer_id,
            currency=currency,
            rate_amount=rate_amount,
            name=name,
            code=code,
            priority=_check_priority(priority),
            expiration_at=expiration_at,
            fee_types=_check_fee_types(fee_types),
            billable_metric_codes=list(dict.fromkeys(billable_metric_codes)),
            rules=_rules(rules, [], rule_ids, rate_amount, currency, now),
            invoice_requires_successful_payment=invoice_requires_successful_payment,
            paid_top_up_min_amount_cents=paid_top_up_min_amount_cents,
            paid_top_up_max_amount_cents=paid_top_up_max_amount_cents,
            metadata=dict(metadata),
            created_at=now,
        )

    def update(
        self,
        changes: Mapping[str, Any],
        rules: Sequence[RuleInput] | None,
        now: datetime,
        rule_ids: Sequence[UUID] = (),
    ) -> bool:
        """Change settings (name, priority, expiration_at, fee_types, billable_metric_codes,
        invoice_requires_successful_payment, paid_top_up_*, metadata) and, when given, the rules
        (Lago: a rule with a lago_id is updated, one without is new, one left out is removed).
        Records nothing when nothing changes; returns whether it did."""
        self._check_active()
        checked: dict[str, Any] = {}
        for field, value in changes.items():
            if field == "name":
                _check_text(value, "name")
            elif field == "priority":
                value = _check_priority(value)
            elif field == "expiration_at":
                _check_expiration(value, now)
            elif field == "fee_types":
                value = _check_fee_types(value)
            elif field == "billable_metric_codes":
                value = list(dict.fromkeys(value))
            elif field == "metadata":
                _check_metadata(value)
                value = dict(value)
            else:
                assert field in (
                    "invoice_requires_successful_payment",
                    "paid_top_up_min_amount_cents",
                    "paid_top_up_max_amount_cents",
                ), field
            if getattr(self, field) != value:
                checked[field] = value
        _check_limits(
            checked.get("paid_top_up_min_amount_cents", self.paid_top_up_min_amount_cents),
            checked.get("paid_top_up_max_amount_cents", self.paid_top_up_max_amount_cents),
        )
        if rules is not None:
            new_rules = _rules(rules, self.rules, rule_ids, self.rate_amount, self.currency, now)
            if new_rules != [rule.as_event() for rule in self.rules]:
                checked["rules"] = new_rules
        if not checked:
            return False
        self._updated(changes=checked)
        return True

    def grant(
        self,
        transaction_id: UUID,
        amount_cents: int,
        *,
        now: datetime,
        source: str = "manual",
        rule_id: UUID | None = None,
        occurrence: str | None = None,
        name: str | None = None,
        metadata: Sequence[Mapping[str, str]] = (),
    ) -> bool:
        """Free credits, settled at once. A transaction id already recorded (a repeated
        automatic top-up) records nothing; returns whether it recorded the grant."""
        self._check_active()
        if transaction_id in self.transactions:
            return False
        self._check_inbound(amount_cents, "granted_credits", source)
        _check_text(name, "name")
        self._granted(
            transaction_id=transaction_id,
            amount_cents=amount_cents,
            source=source,
            rule_id=rule_id,
            occurrence=occurrence,
            name=name,
            metadata=[dict(m) for m in metadata],
            created_at=now,
        )
        return True

    def purchase(
        self,
        transaction_id: UUID,
        amount_cents: int,
        invoice_id: UUID,
        *,
        now: datetime,
        source: str = "manual",
        rule_id: UUID | None = None,
        occurrence: str | None = None,
        name: str | None = None,
        metadata: Sequence[Mapping[str, str]] = (),
        invoice_requires_successful_payment: bool | None = None,
        ignore_paid_top_up_limits: bool = False,
    ) -> bool:
        """Paid credits, pending until the credit invoice is paid; the paid top-up limits apply
        unless ignored. A transaction id already recorded records nothing."""
        self._check_active()
        if transaction_id in self.transactions:
            return False
        self._check_inbound(amount_cents, "paid_credits", source)
        _check_text(name, "name")
        if not ignore_paid_top_up_limits:
            minimum, maximum = self.paid_top_up_min_amount_cents, self.paid_top_up_max_amount_cents
            if minimum is not None and amount_cents < minimum:
                raise InvalidValueError("paid_credits", "amount_below_minimum", amount_cents)
            if maximum is not None and amount_cents > maximum:
                raise InvalidValueError("paid_credits", "amount_above_maximum", amount_cents)
        if invoice_requires_successful_payment is None:
            invoice_requires_successful_payment = self.invoice_requires_successful_payment
        self._purchased(
            transaction_id=transaction_id,
            amount_cents=amount_cents,
            invoice_id=invoice_id,
            source=source,
            rule_id=rule_id,
            occurrence=occurrence,
            name=name,
            metadata=[dict(m) for m in metadata],
            invoice_requires_successful_payment=invoice_requires_successful_payment,
            vat_treatment="advance_not_taxed",
            created_at=now,
        )
        return True

    def settle(self, transaction_id: UUID, now: datetime) -> bool:
        """Its credit invoice was paid: the credits reach the balance. Settling again (a PSP
        webhook delivered twice) records nothing; a payment that succeeds after a failure
        settles. Credits settling on a terminated wallet are forfeited at once (D15)."""
        transaction = self._purchase_named(transaction_id)
        if transaction.status == "settled":
            return False
        self._purchase_settled(transaction_id=transaction_id, settled_at=now)
        if self.status == "terminated":
            self._forfeit(self.terminated_reason or "terminated", now)
        return True

    def fail(self, transaction_id: UUID, now: datetime) -> bool:
        """Its payment failed: a pending purchase is failed. A failure after the settlement (an
        old webhook arriving late) or a second one records nothing."""
        transaction = self._purchase_named(transaction_id)
        if transaction.status != "pending":
            return False
        self._purchase_failed(transaction_id=transaction_id, failed_at=now)
        return True

    def void_credits(
        self,
        transaction_id: UUID,
        amount_cents: int,
        *,
        now: datetime,
        name: str | None = None,
        metadata: Sequence[Mapping[str, str]] = (),
    ) -> None:
        """Lago's voided_credits: take credits out of the balance, granted lots first."""
        self._check_active()
        assert transaction_id not in self.transactions, transaction_id
        if amount_cents <= 0:
            raise InvalidValueError("voided_credits", "invalid_voided_credits", amount_cents)
        if amount_cents > self.balance_cents:
            raise InvalidValueError("voided_credits", "insufficient_credits", amount_cents)
        _check_text(name, "name")
        self._voided(
            transaction_id=transaction_id,
            amount_cents=amount_cents,
            lots=self._take(amount_cents),
            name=name,
            metadata=[dict(m) for m in metadata],
            created_at=now,
        )

    def pay_invoice(self, invoice_id: UUID, due_cents: int, currency: str, now: datetime) -> int:
        """Cover as much of an invoice's amount as the balance allows; returns the cents taken.

        The caller has already capped due_cents to what this wallet may pay (its buckets within
        applies_to, the invoice's remaining amount). An expired or terminated wallet pays nothing.
        """
        if currency != self.currency:
            raise CurrencyMismatchError(expected=self.currency, got=currency)
        assert 0 <= due_cents <= AMOUNT_CENTS_MAX, due_cents
        if not self.is_usable_at(now):
            return 0
        applied_cents = min(self.balance_cents, due_cents)
        if applied_cents <= 0:
            return 0
        transaction_id = ids.wallet_transaction_id(self.id, "invoice", str(invoice_id))
        assert transaction_id not in self.transactions, (invoice_id, self.id)  # Paid once.
        self._invoiced(
            transaction_id=transaction_id,
            invoice_id=invoice_id,
            amount_cents=applied_cents,
            lots=self._take(applied_cents),
            created_at=now,
        )
        return applied_cents

    def recredit_invoice(self, invoice_id: UUID, now: datetime) -> int:
        """Give back what this wallet paid of an invoice that is being voided, to the lots it
        came from; returns the cents. Once per invoice: again, it records nothing. A wallet no
        longer active is not recredited (Lago recredits active wallets only)."""
        paid = self.transactions.get(ids.wallet_transaction_id(self.id, "invoice", str(invoice_id)))
        transaction_id = ids.wallet_transaction_id(self.id, "recredit", str(invoice_id))
        if paid is None or transaction_id in self.transactions or self.status != "active":
            return 0
        self._recredited(
            transaction_id=transaction_id,
            invoice_id=invoice_id,
            amount_cents=paid.amount_cents,
            lots=[{"transaction_id": lot, "amount_cents": cents} for lot, cents in paid.lots],
            created_at=now,
        )
        return paid.amount_cents

    def terminate(self, now: datetime) -> bool:
        """Lago's DELETE: the wallet stops; its remaining balance is forfeited with an explicit
        entry. Terminating again records nothing."""
        if self.status == "terminated":
            return False
        self._forfeit("terminated", now)
        self._terminated(terminated_at=now, reason="terminated")
        return True

    def expire(self, now: datetime) -> bool:
        """§6.6: at expiration_at the wallet terminates and its balance is forfeited (D15)."""
        if self.status == "terminated" or self.expiration_at is None or now < self.expiration_at:
            return False
        self._forfeit("expired", self.expiration_at)
        self._terminated(terminated_at=self.expiration_at, reason="expired")
        return True

    def rearm(self, rule_id: UUID) -> bool:
        if self.armed.get(rule_id, True):
            return False
        self._rule_rearmed(rule_id=rule_id)
        return True

    def observe_ongoing_balance(self, ongoing_balance_cents: int, now: datetime) -> bool:
        """Record the ongoing balance crossing zero, either way (Lago's depleted webhook)."""
        depleted = ongoing_balance_cents <= 0
        if depleted == self.depleted or self.status != "active":
            return False
        if depleted:
            self._ongoing_balance_depleted(ongoing_balance_cents=ongoing_balance_cents, at=now)
        else:
            self._ongoing_balance_replenished(ongoing_balance_cents=ongoing_balance_cents, at=now)
        return True

    def _forfeit(self, reason: str, now: datetime) -> None:
        balance_cents = self.balance_cents
        if balance_cents > 0:
            self._forfeited(
                transaction_id=ids.wallet_transaction_id(
                    self.id, "forfeit", str(len(self.transaction_order))
                ),
                amount_cents=balance_cents,
                lots=self._take(balance_cents),
                reason=reason,
                created_at=now,
            )

    def _take(self, amount_cents: int) -> list[dict[str, Any]]:
        """Which lots pay an amount: granted before purchased, oldest first."""
        assert 0 < amount_cents <= self.balance_cents, (amount_cents, self.balance_cents)
        taken = []
        left = amount_cents
        for lot in self.lots:
            if left == 0:
                break
            cents = min(left, lot.remaining_cents)
            if cents > 0:
                taken.append({"transaction_id": lot.transaction_id, "amount_cents": cents})
                left -= cents
        assert left == 0, left
        return taken

    def _check_active(self) -> None:
        if self.status != "active":
            raise WalletNotActiveError(f"Wallet {self.id} is {self.status}.")

    def _check_inbound(self, amount_cents: int, field: str, source: str) -> None:
        assert source in SOURCES, source
        if not 0 < amount_cents <= AMOUNT_CENTS_MAX - self.inbound_cents:
            raise InvalidValueError(field, f"invalid_{field}", amount_cents)

    def _purchase_named(self, transaction_id: UUID) -> WalletTransaction:
        transaction = self.transactions.get(transaction_id)
        assert transaction is not None and transaction.kind == "purchased", transaction_id
        return transaction

    # Evolvers apply: they run now and on every replay, so they only assign (and assert).

    @event(Created)
    def __init__(
        self,
        organization_id: UUID,
        customer_id: UUID,
        external_customer_id: str,
        currency: str,
        rate_amount: Decimal,
        name: str | None,
        code: str | None,
        priority: int,
        expiration_at: datetime | None,
        fee_types: list[str],
        billable_metric_codes: list[str],
        rules: list[dict[str, Any]],
        invoice_requires_successful_payment: bool,
        paid_top_up_min_amount_cents: int | None,
        paid_top_up_max_amount_cents: int | None,
        metadata: dict[str, str | None],
        created_at: datetime,
    ) -> None:
        self.organization_id = organization_id
        self.customer_id = customer_id
        self.external_customer_id = external_customer_id
        self.currency = currency
        self.rate_amount = rate_amount
        self.name = name
        self.code = code
        self.priority = priority
        self.expiration_at = expiration_at
        self.fee_types = fee_types
        self.billable_metric_codes = billable_metric_codes
        self.rule_events = rules
        self.invoice_requires_successful_payment = invoice_requires_successful_payment
        self.paid_top_up_min_amount_cents = paid_top_up_min_amount_cents
        self.paid_top_up_max_amount_cents = paid_top_up_max_amount_cents
        self.metadata = metadata
        self.created_at = created_at
        self.status = "active"
        self.terminated_at: datetime | None = None
        self.terminated_reason: str | None = None
        self.transactions: dict[UUID, WalletTransaction] = {}
        self.transaction_order: list[UUID] = []
        self.lot_ids: list[UUID] = []  # Settled inbound transactions, in order of settlement.
        self.armed: dict[UUID, bool] = {}  # Threshold rules: may the next crossing top up?
        self.occurrences: dict[UUID, list[str]] = {}  # Automatic top-ups made, per rule.
        self.last_failed_paid_at: datetime | None = None
        self.last_settled_paid_at: datetime | None = None
        self.depleted = False
        self.changed_at = created_at

    @event(Updated)
    def _updated(self, changes: dict[str, Any]) -> None:
        for field, value in changes.items():
            setattr(self, "rule_events" if field == "rules" else field, value)

    @event(Granted)
    def _granted(
        self,
        transaction_id: UUID,
        amount_cents: int,
        source: str,
        rule_id: UUID | None,
        occurrence: str | None,
        name: str | None,
        metadata: list[dict[str, str]],
        created_at: datetime,
    ) -> None:
        self._add(
            WalletTransaction(
                transaction_id=transaction_id,
                kind="granted",
                status="settled",
                source=source,
                amount_cents=amount_cents,
                created_at=created_at,
                sequence=len(self.transaction_order),
                name=name,
                metadata=tuple(metadata),
                rule_id=rule_id,
                settled_at=created_at,
                remaining_cents=amount_cents,
                lot_order=len(self.lot_ids),
            )
        )
        self.lot_ids.append(transaction_id)
        self._record_occurrence(rule_id, occurrence)

    @event(Purchased)
    def _purchased(
        self,
        transaction_id: UUID,
        amount_cents: int,
        invoice_id: UUID,
        source: str,
        rule_id: UUID | None,
        occurrence: str | None,
        name: str | None,
        metadata: list[dict[str, str]],
        invoice_requires_successful_payment: bool,
        vat_treatment: str,
        created_at: datetime,
    ) -> None:
        self._add(
            WalletTransaction(
                transaction_id=transaction_id,
                kind="purchased",
                status="pending",
                source=source,
                amount_cents=amount_cents,
                created_at=created_at,
                sequence=len(self.transaction_order),
                name=name,
                metadata=tuple(metadata),
                invoice_id=invoice_id,
                rule_id=rule_id,
                invoice_requires_successful_payment=invoice_requires_successful_payment,
            )
        )
        self._record_occurrence(rule_id, occurrence)

    @event(PurchaseSettled)
    def _purchase_settled(self, transaction_id: UUID, settled_at: datetime) -> None:
        transaction = self.transactions[transaction_id]
        assert transaction.status in ("pending", "failed"), transaction
        self.transactions[transaction_id] = replace(
            transaction,
            status="settled",
            settled_at=settled_at,
            remaining_cents=transaction.amount_cents,
            lot_order=len(self.lot_ids),
        )
        self.lot_ids.append(transaction_id)
        self.last_settled_paid_at = settled_at
        self.changed_at = settled_at

    @event(PurchaseFailed)
    def _purchase_failed(self, transaction_id: UUID, failed_at: datetime) -> None:
        transaction = self.transactions[transaction_id]
        assert transaction.status == "pending", transaction
        self.transactions[transaction_id] = replace(
            transaction, status="failed", failed_at=failed_at
        )
        self.last_failed_paid_at = failed_at
        self.changed_at = failed_at
        if transaction.rule_id is not None:
            self.armed[transaction.rule_id] = True  # The crossing was not served: try again.

    @event(Voided)
    def _voided(
        self,
        transaction_id: UUID,
        amount_cents: int,
        lots: list[dict[str, Any]],
        name: str | None,
        metadata: list[dict[str, str]],
        created_at: datetime,
    ) -> None:
        self._debit(
            WalletTransaction(
                transaction_id=transaction_id,
                kind="voided",
                status="settled",
                source="manual",
                amount_cents=amount_cents,
                created_at=created_at,
                sequence=len(self.transaction_order),
                name=name,
                metadata=tuple(metadata),
                settled_at=created_at,
                void_reason="manual",
            ),
            lots,
        )

    @event(Invoiced)
    def _invoiced(
        self,
        transaction_id: UUID,
        invoice_id: UUID,
        amount_cents: int,
        lots: list[dict[str, Any]],
        created_at: datetime,
    ) -> None:
        self._debit(
            WalletTransaction(
                transaction_id=transaction_id,
                kind="invoiced",
                status="settled",
                source="manual",
                amount_cents=amount_cents,
                created_at=created_at,
                sequence=len(self.transaction_order),
                invoice_id=invoice_id,
                settled_at=created_at,
            ),
            lots,
        )

    @event(Recredited)
    def _recredited(
        self,
        transaction_id: UUID,
        invoice_id: UUID,
        amount_cents: int,
        lots: list[dict[str, Any]],
        created_at: datetime,
    ) -> None:
        returned = []
        for lot in lots:
            lot_id, cents = lot["transaction_id"], lot["amount_cents"]
            inbound = self.transactions[lot_id]
            remaining = inbound.remaining_cents + cents
            assert cents > 0 and remaining <= inbound.amount_cents, (lot_id, remaining)
            self.transactions[lot_id] = replace(inbound, remaining_cents=remaining)
            returned.append((lot_id, cents))
        assert sum(cents for _, cents in returned) == amount_cents, (returned, amount_cents)
        self._add(
            WalletTransaction(
                transaction_id=transaction_id,
                kind="recredited",
                status="settled",
                source="manual",
                amount_cents=amount_cents,
                created_at=created_at,
                sequence=len(self.transaction_order),
                invoice_id=invoice_id,
                settled_at=created_at,
                lots=tuple(returned),
            )
        )

    @event(Forfeited)
    def _forfeited(
        self,
        transaction_id: UUID,
        amount_cents: int,
        lots: list[dict[str, Any]],
        reason: str,
        created_at: datetime,
    ) -> None:
        self._debit(
            WalletTransaction(
                transaction_id=transaction_id,
                kind="expired" if reason == "expired" else "voided",
                status="settled",
                source="manual",
                amount_cents=amount_cents,
                created_at=created_at,
                sequence=len(self.transaction_order),
                settled_at=created_at,
                void_reason=reason,
            ),
            lots,
        )

    @event(Terminated)
    def _terminated(self, terminated_at: datetime, reason: str) -> None:
        self.status = "terminated"
        self.terminated_at = terminated_at
        self.terminated_reason = reason
        self.changed_at = terminated_at

    @event(RuleRearmed)
    def _rule_rearmed(self, rule_id: UUID) -> None:
        self.armed[rule_id] = True

    @event(OngoingBalanceDepleted)
    def _ongoing_balance_depleted(self, ongoing_balance_cents: int, at: datetime) -> None:
        self.depleted = True

    @event(OngoingBalanceReplenished)
    def _ongoing_balance_replenished(self, ongoing_balance_cents: int, at: datetime) -> None:
        self.depleted = False

    def _add(self, transaction: WalletTransaction) -> None:
        assert transaction.transaction_id not in self.transactions, transaction
        self.transactions[transaction.transaction_id] = transaction
        self.transaction_order.append(transaction.transaction_id)
        self.changed_at = transaction.created_at

    def _debit(self, transaction: WalletTransaction, lots: list[dict[str, Any]]) -> None:
        taken = []
        for lot in lots:
            lot_id, cents = lot["transaction_id"], lot["amount_cents"]
            inbound = self.transactions[lot_id]
            assert inbound.status == "settled" and cents > 0, (inbound, cents)
            remaining = inbound.remaining_cents - cents
            assert remaining >= 0, (lot_id, remaining)  # No lot below zero: _take's min().
            self.transactions[lot_id] = replace(inbound, remaining_cents=remaining)
            taken.append((lot_id, cents))
        assert sum(cents for _, cents in taken) == transaction.amount_cents, (taken, transaction)
        self._add(replace(transaction, lots=tuple(taken)))

    def _record_occurrence(self, rule_id: UUID | None, occurrence: str | None) -> None:
        if rule_id is not None and occurrence is not None:
            made = self.occurrences.setdefault(rule_id, [])
            if occurrence not in made:  # A paid and a granted part share one occurrence.
                made.append(occurrence)
            self.armed[rule_id] = False

    # Queries.

    @property
    def rules(self) -> list[Rule]:
        return [Rule.from_event(rule) for rule in self.rule_events]

    @property
    def lots(self) -> list[WalletTransaction]:
        """Settled inbound transactions with credits left, in the order they are consumed."""
        lots = [self.transactions[lot_id] for lot_id in self.lot_ids]
        lots.sort(key=lambda lot: (lot.kind != "granted", lot.lot_order))
        return [lot for lot in lots if lot.remaining_cents > 0]

    @property
    def balance_cents(self) -> int:
        return sum(self.transactions[lot_id].remaining_cents for lot_id in self.lot_ids)

    def entries(self) -> list[WalletTransaction]:
        """Every transaction, oldest first."""
        return [self.transactions[t] for t in self.transaction_order]

    @property
    def settled_inbound_cents(self) -> int:
        return sum(
            t.amount_cents
            for t in self.transactions.values()
            if t.transaction_type == "inbound" and t.status == "settled"
        )

    @property
    def outbound_cents(self) -> int:
        return sum(
            t.amount_cents for t in self.transactions.values() if t.transaction_type == "outbound"
        )

    @property
    def inbound_cents(self) -> int:
        """Every inbound amount, pending included: bounded so sums stay in range."""
        return sum(
            t.amount_cents for t in self.transactions.values() if t.transaction_type == "inbound"
        )

    @property
    def pending_inbound_cents(self) -> int:
        return sum(
            t.amount_cents
            for t in self.transactions.values()
            if t.transaction_type == "inbound" and t.status == "pending"
        )

    @property
    def consumed_cents(self) -> int:
        return sum(t.amount_cents for t in self.transactions.values() if t.kind == "invoiced")

    @property
    def last_consumed_at(self) -> datetime | None:
        consumed = [t.created_at for t in self.transactions.values() if t.kind == "invoiced"]
        return max(consumed, default=None)

    def credits(self, cents: int) -> Decimal:
        return cents_to_credits(cents, self.rate_amount, self.currency)

    def cents(self, credits: Decimal) -> int:
        return credits_to_cents(credits, self.rate_amount, self.currency)

    def is_usable_at(self, now: datetime) -> bool:
        return self.status == "active" and (self.expiration_at is None or now < self.expiration_at)

    def applies_to(self, fee_type: str, billable_metric_code: str | None) -> bool:
        """Lago's limitations: a matching metric, or a matching fee type, or no limitation."""
        if not self.fee_types and not self.billable_metric_codes:
            return True
        metric_match = fee_type == "charge" and billable_metric_code in self.billable_metric_codes
        return metric_match or fee_type in self.fee_types

    def paid_top_up_allowed_at(self, now: datetime) -> bool:
        """Lago's guard: no automatic paid top-up within an hour of a declined one, unless a
        paid top-up settled since."""
        failed = self.last_failed_paid_at
        if failed is None or now - failed >= PAID_TOP_UP_BACKOFF:
            return True
        settled = self.last_settled_paid_at
        return settled is not None and settled > failed

    def invariant_violations(self) -> list[str]:
        """§6.6, checked by the tests: balance = Σ settled entries; no lot below zero."""
        problems = []
        if self.balance_cents != self.settled_inbound_cents - self.outbound_cents:
            problems.append("balance differs from the settled entries")
        if any(t.remaining_cents < 0 for t in self.transactions.values()):
            problems.append("a lot below zero")
        if self.balance_cents < 0:
            problems.append("negative balance")
        return problems


def _rules(
    given: Sequence[RuleInput],
    existing: Sequence[Rule],
    new_ids: Sequence[UUID],
    rate_amount: Decimal,
    currency: str,
    now: datetime,
) -> list[dict[str, Any]]:
    """The rules after a create or an update: given ones with a known lago_id keep it (and
    their created_at), others take the next of new_ids."""
    if len(given) > RECURRING_RULES_MAX:
        raise InvalidValueError(
            "recurring_transaction_rules", "invalid_number_of_recurring_rules", len(given)
        )
    known = {rule.lago_id: rule for rule in existing}
    fresh = iter(new_ids)
    rules = []
    for rule_input in given:
        previous = known.get(rule_input.lago_id) if rule_input.lago_id else None
        if rule_input.lago_id is not None and previous is None:
            raise InvalidValueError("recurring_transaction_rules", "invalid_recurring_rule")
        lago_id = previous.lago_id if previous else next(fresh)
        rule = _rule(rule_input, lago_id, previous, rate_amount, currency, now)
        rules.append(rule.as_event())
    return rules


def _rule(
    given: RuleInput,
    lago_id: UUID,
    previous: Rule | None,
    rate_amount: Decimal,
    currency: str,
    now: datetime,
) -> Rule:
    """Lago's validation (invalid_recurring_rule), then the amounts in cents."""

    def invalid(value: Any = None) -> InvalidValueError:
        return InvalidValueError("recurring_transaction_rules", "invalid_recurring_rule", value)

    trigger = given.trigger or (previous.trigger if previous else None)
    method = given.method or (previous.method if previous else "fixed")
    if trigger not in TRIGGERS or method not in METHODS:
        raise invalid(trigger if trigger not in TRIGGERS else method)

    def cents(value: Decimal | None, fallback: int | None) -> int | None:
        if value is None:
            return fallback
        if not value.is_finite() or value < 0:
            raise invalid(value)
        amount = credits_to_cents(value, rate_amount, currency)
        if amount > AMOUNT_CENTS_MAX:
            raise invalid(value)
        return amount

    interval = given.interval or (previous.interval if previous else None)
    threshold = cents(given.threshold_credits, previous.threshold_cents if previous else None)
    if trigger == "interval" and interval not in INTERVALS:
        raise invalid(interval)
    if trigger == "threshold" and threshold is None:
        raise invalid()
    target = cents(given.target_ongoing_balance, previous.target_cents if previous else None)
    if method == "target" and target is None:
        raise invalid()
    started_at = given.started_at or (previous.started_at if previous else now)
    expiration_at = given.expiration_at or (previous.expiration_at if previous else None)
    if expiration_at is not None and expiration_at <= started_at:
        raise invalid(expiration_at)
    metadata = given.transaction_metadata
    if metadata is not None:
        _check_transaction_metadata(metadata, "recurring_transaction_rules")
    _check_text(given.transaction_name, "recurring_transaction_rules")

    def flag(value: bool | None, before: bool) -> bool:
        return value if value is not None else before

    return Rule(
        lago_id=lago_id,
        trigger=trigger,
        method=method,
        interval=interval if trigger == "interval" else None,
        threshold_cents=threshold if trigger == "threshold" else None,
        paid_cents=cents(given.paid_credits, previous.paid_cents if previous else 0) or 0,
        granted_cents=cents(given.granted_credits, previous.granted_cents if previous else 0) or 0,
        target_cents=target if method == "target" else None,
        grants_target_top_up=flag(
            given.grants_target_top_up, previous.grants_target_top_up if previous else False
        ),
        started_at=started_at,
        expiration_at=expiration_at,
        created_at=previous.created_at if previous else now,
        transaction_metadata=tuple(
            dict(m)
            for m in (
                metadata
                if metadata is not None
                else (previous.transaction_metadata if previous else ())
            )
        ),
        transaction_name=given.transaction_name
        or (previous.transaction_name if previous else None),
        ignore_paid_top_up_limits=flag(
            given.ignore_paid_top_up_limits,
            previous.ignore_paid_top_up_limits if previous else False,
        ),
        invoice_requires_successful_payment=flag(
            given.invoice_requires_successful_payment,
            previous.invoice_requires_successful_payment if previous else False,
        ),
    )


def _check_priority(priority: int | None) -> int:
    if priority is None:
        return PRIORITY_DEFAULT
    if isinstance(priority, bool) or not PRIORITY_MIN <= priority <= PRIORITY_MAX:
        raise InvalidValueError("priority", "value_is_invalid", priority)
    return priority


def _check_fee_types(fee_types: Sequence[str]) -> list[str]:
    for fee_type in fee_types:
        if fee_type not in FEE_TYPES:
            raise InvalidValueError("applies_to", "invalid_limitations", fee_type)
    return list(dict.fromkeys(fee_types))


def _check_expiration(expiration_at: datetime | None, now: datetime) -> None:
    """Lago's ExpirationDateValidator: in the future."""
    if expiration_at is not None and expiration_at <= now:
        raise InvalidValueError("expiration_at", "invalid_date", expiration_at.isoformat())


def _check_limits(minimum: int | None, maximum: int | None) -> None:
    for field, value in (
        ("paid_top_up_min_amount_cents", minimum),
        ("paid_top_up_max_amount_cents", maximum),
    ):
        if value is not None and not 0 < value <= AMOUNT_CENTS_MAX:
            raise InvalidValueError(field, "value_is_invalid", value)
    if minimum is not None and maximum is not None and minimum > maximum:
        raise InvalidValueError("paid_top_up_max_amount_cents", "value_is_invalid", maximum)


def _check_text(value: str | None, field: str, length_max: int = TEXT_LENGTH_MAX) -> None:
    if value is not None and not 0 < len(value) <= length_max:
        raise InvalidValueError(field, "value_is_invalid", value)


def _check_metadata(metadata: Mapping[str, str | None]) -> None:
    if len(metadata) > METADATA_MAX:
        raise InvalidValueError("metadata", "value_is_invalid", len(metadata))
    for key, value in metadata.items():
        _check_text(key, "metadata", KEY_LENGTH_MAX)
        _check_text(value, "metadata")


def _check_transaction_metadata(metadata: Sequence[Mapping[str, str]], field: str) -> None:
    """Lago's [{key, value}] metadata of a transaction."""
    if len(metadata) > METADATA_MAX:
        raise InvalidValueError(field, "value_is_invalid", len(metadata))
    for entry in metadata:
        if set(entry) != {"key", "value"}:
            raise InvalidValueError(field, "value_is_invalid", entry)
        _check_text(entry["key"], field, KEY_LENGTH_MAX)
        _check_text(entry["value"], field)


def check_transaction_metadata(metadata: Sequence[Mapping[str, str]] | None) -> None:
    """A manual transaction's metadata (Lago: [{"key": ..., "value": ...}])."""
    if metadata is not None:
        _check_transaction_metadata(metadata, "metadata")
