"""The billing run and invoice commands: one invoice per customer, currency and boundary.

At each boundary (a period end in the customer's time zone) a customer's subscriptions with
something to bill go on one invoice (Lago's consolidate_invoice): base fees in arrears or in
advance, the closing charges period's usage, minimum true-ups, and adjustments for late usage
of periods already invoiced. An invoice covers exactly the usage events at or below its
watermark (application/usage_log.py: positions), read from the raw log, so the audit
recomputes it with the same inputs.
Its id derives from (customer, currency, boundary): running twice, or concurrently, collides.
"""

import hashlib
import json
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextvars import ContextVar, copy_context
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any
from uuid import UUID, uuid4

from eventsourcing.application import AggregateNotFoundError, Repository
from eventsourcing.persistence import IntegrityError
from eventsourcing.utils import get_topic

from application.billing import Billing
from application.credit_notes import available_credit_notes, issue_credit_note
from application.errors import ConcurrencyConflictError, NotFoundError
from application.rating import Prefetched, Rating, from_events
from application.usage_log import Span, UsageLog
from application.vat import TaxEngine
from application.wallets import (
    apply_wallets,
    credit_fee_line,
    credit_invoice_transaction,
    recredit_wallets,
    settle_top_up,
)
from domain import ids
from domain.charges import charge_minimum_true_up_cents, minimum_commitment_true_up_cents
from domain.credit_note import CreditNote, CreditNoteAmounts
from domain.customer import Customer
from domain.errors import InvalidValueError
from domain.invoice import Invoice, NumberSequence, document_prefix, invoice_number
from domain.invoicing import (
    ADVANCE_AGGREGATION_TYPES,
    FeeLine,
    add_on_fee_line,
    advance_fee_line,
    advance_fees,
    charge_fee_line,
    period_key,
    subscription_fee,
    true_up_line,
)
from domain.limits import COMMAND_RETRIES_MAX
from domain.money import CURRENCY_EXPONENTS, EXACT, check_currency, prorate_cents
from domain.organization import Organization
from domain.payment import Collection, Payment
from domain.periods import (
    BillingSchedule,
    Period,
    base_fee_period,
    local_date,
    local_days,
    local_midnight_at,
)
from domain.rating import MetricRule
from domain.subscription import Phase, Subscription
from domain.taxes import applicable_tax_codes, most_specific_tax_codes
from domain.usage import UsageEvent, plain_decimal
from domain.vat import supply_date_of
from domain.wallet import Wallet

INVOICE_SERIES = "invoice"
# Boundaries after a subscription's end at which its late usage is still billed: a year of
# monthly periods. Each run visits them, so they are bounded.
LATE_BOUNDARIES_MAX = 12
# Invoices a billing run saves in one transaction, with their number sequence (ADR 0027).
SAVE_BATCH = 200
# Customers whose usage a billing run reads in one query (ADR 0027).
PREFETCH_CUSTOMERS = 500


@dataclass
class _Draft:
    """What one boundary bills for one customer, before it becomes an Invoice."""

    customer: Customer
    currency: str
    boundary: datetime
    billing_periods: list[dict[str, Any]] = field(default_factory=list)
    fees: list[FeeLine] = field(default_factory=list)
    subscriptions: set[str] = field(default_factory=set)
    issued: Invoice | None = None
    stored: bool = True  # False once a read found no invoice of this boundary in the store.
    own_subscription: str | None = None  # Set for a subscription billed apart (backdated).
    invoice_key: tuple[str, ...] | None = None  # A pay-in-advance bill's own key (§4.9).
    late_credits: list["_LateCredit"] = field(default_factory=list)  # Negative late deltas.
    # Auditing a period recorded before ADR 0020, when late usage of pay-in-advance charges
    # was adjusted like any other charge's.
    legacy_late_usage: bool = False


@dataclass(frozen=True)
class OneOffFee:
    """One line of a one-off invoice as the API gives it (create_one_off checks it)."""

    add_on_code: str | None
    units: Decimal | int | None = None
    unit_amount_cents: Decimal | int | None = None
    invoice_display_name: str | None = None
    from_datetime: datetime | None = None
    to_datetime: datetime | None = None
    tax_codes: tuple[str, ...] | None = None


@dataclass(frozen=True)
class _LateCredit:
    """Late usage that lowered an invoiced period's charge (§8.5): a credit note on the invoice
    that billed it, for `cents` of its line `fee_key`, once per `origin`."""

    organization_id: UUID
    external_subscription_id: str
    external_customer_id: str
    customer_id: UUID
    currency: str
    invoice_boundary: datetime
    fee_key: str
    cents: int
    origin: str
    credited_cents: int  # Already credited under this origin when it was computed.


@dataclass(frozen=True)
class UsagePeriod:
    """One invoiced charges period of a subscription (Lago's past usage): its charge fees,
    each with its share of the invoice's tax."""

    invoice: Invoice
    from_at: datetime
    to_at: datetime
    fees: list[tuple[FeeLine, int]]  # (line, its tax share in cents)

    @property
    def amount_cents(self) -> int:
        return sum(fee.amount_cents for fee, _ in self.fees)

    @property
    def taxes_amount_cents(self) -> int:
        return sum(tax for _, tax in self.fees)


@dataclass(frozen=True)
class AuditReport:
    invoice_id: UUID
    matches: bool
    differences: list[dict[str, Any]]
    recomputed: list[FeeLine]
    stored: list[FeeLine]
    content_hash: str
    watermark: int
    plan_versions: list[dict[str, Any]]


class Invoicing:
    def __init__(
        self,
        billing: Billing,
        usage: UsageLog,
        rating: Rating,
        tax_engine: TaxEngine | None = None,
    ) -> None:
        self.billing = billing
        self.usage = usage
        self.rating = rating
        self.tax_engine = tax_engine
        self._advance_cursor: dict[UUID, int] = {}  # Known ends of advance-bill chains.
        # Number sequences grow by an event per invoice: replaying one on every finalization
        # made a run quadratic. This repository keeps each sequence and fast-forwards it from
        # the events stored since (one short read), so it is as exact as a fresh load.
        self._sequences: Repository[UUID] = Repository(billing.events, cache_maxsize=1_000)

    # The billing run.

    def run(self, now: datetime, organization_id: UUID | None = None) -> list[Invoice]:
        """Bill every boundary up to now, for every customer; safe to repeat or race.

        What does not change during a run is read once for it (ADR 0025): the usage watermark
        (ADR 0010), metric definitions, each organization and its taxes, and which customers
        hold credit notes or wallets (read again when one is created). Customers are read,
        and their usage totals, 500 at a time, ahead of their billing; invoices are saved 200
        at a time with their numbers, and handed to the resource index as saved (ADR 0027)."""
        scope = _RunScope(watermark=self.usage.watermark())
        token = _RUN.set(scope)
        try:
            with self.rating.snapshot():
                invoices = self._run(now, organization_id)
                self._flush()
        finally:
            _RUN.reset(token)
        self.billing.catch_up()
        return [scope.reissued.get(invoice.id, invoice) for invoice in invoices]

    def _run(self, now: datetime, organization_id: UUID | None) -> list[Invoice]:
        organizations = [organization_id] if organization_id else self.billing.organization_ids()
        invoices: list[Invoice] = []
        for org in organizations:
            subscriptions = self.billing._all(Subscription, "subscription", org)
            by_customer: dict[str, list[Subscription]] = defaultdict(list)
            for subscription in subscriptions:
                if subscription.canceled_at is None and subscription.subscription_at <= now:
                    by_customer[subscription.external_customer_id].append(subscription)
            customers = sorted(by_customer.items())
            chunks = [
                customers[first : first + PREFETCH_CUSTOMERS]
                for first in range(0, len(customers), PREFETCH_CUSTOMERS)
            ]
            # The next chunk is read in a thread while this one is billed: the database works
            # on the other core while this one computes (the thread shares the run's scope).
            with ThreadPoolExecutor(max_workers=1) as reader:
                context = copy_context()
                ahead = [reader.submit(context.run, self._read, org, c, now) for c in chunks[:1]]
                for position, chunk in enumerate(chunks):
                    loaded, prefetched = ahead[position].result()
                    if position + 1 < len(chunks):
                        following = chunks[position + 1]
                        ahead.append(reader.submit(context.run, self._read, org, following, now))
                    with self.rating.prefetched(prefetched):
                        for external_customer_id, customer_subscriptions in chunk:
                            customer = loaded[ids.customer_id(org, external_customer_id)]
                            invoices.extend(
                                self.bill_customer(
                                    org, external_customer_id, customer_subscriptions, now, customer
                                )
                            )
        return invoices

    def _read(
        self, organization_id: UUID, chunk: list[tuple[str, list[Subscription]]], now: datetime
    ) -> tuple[dict[UUID, Any], Prefetched]:
        """What billing these customers reads, read at once: the customers, and the usage
        totals of the charges periods their latest boundaries close."""
        spans, codes = self._charge_spans([s for _, subs in chunk for s in subs], now)
        loaded = self.billing.load_many(
            [ids.customer_id(organization_id, external_id) for external_id, _ in chunk]
        )
        watermark = _run_scope().watermark
        return loaded, self.rating.prefetch(organization_id, spans, sorted(codes), watermark)

    def _charge_spans(
        self, subscriptions: list[Subscription], now: datetime
    ) -> tuple[list[Span], set[str]]:
        """The charges periods the subscriptions' latest boundaries close, unless invoiced
        already, and the metrics of their plans: what the run is about to rate (an earlier
        boundary is usually invoiced)."""
        spans: list[Span] = []
        codes: set[str] = set()
        for subscription in subscriptions:
            boundary = max(
                (b for b in _boundaries(subscription, now, self._plan) if b <= now), default=None
            )
            if boundary is None:
                continue
            plan = subscription.phase_at(boundary - timedelta(microseconds=1)).plan
            invoice_id = _boundary_invoice_id(
                subscription.organization_id,
                subscription.customer_id,
                plan.amount_currency,
                boundary,
            )
            if invoice_id in self._indexed_invoices(subscription.organization_id):
                continue
            for phase, phase_end in _phases(subscription):
                definition = self._plan(phase).definition_shared(phase.plan.plan_version)
                codes.update(c["billable_metric_code"] for c in definition.get("charges", []))
                charges = _schedule(subscription, phase).charges_schedule(
                    bool(definition.get("bill_charges_monthly"))
                )
                closing = _closing_period(charges, phase.starts_at, phase_end, boundary)
                if closing is not None:
                    spans.append((subscription.external_id, closing.start_at, closing.end_at))
        return spans, codes

    def bill_customer(
        self,
        organization_id: UUID,
        external_customer_id: str,
        subscriptions: list[Subscription],
        now: datetime,
        customer: Customer | None = None,
    ) -> list[Invoice]:
        """customer: the customer, when the caller loaded it (a run loads many at once)."""
        if customer is None:
            customer = self.billing.repository.get(
                ids.customer_id(organization_id, external_customer_id)
            )
        scope = _RUN.get()
        watermark = self.usage.watermark() if scope is None else scope.watermark
        boundaries: set[datetime] = set()
        for subscription in subscriptions:
            boundaries.update(b for b in _boundaries(subscription, now, self._plan) if b <= now)
            boundaries.update(_late_boundaries(subscription, now, self._plan))
        invoices = []
        previous_watermark: dict[str, int] = {}
        for boundary in sorted(boundaries):
            drafts: dict[tuple[str, str | None], _Draft] = {}
            for subscription in subscriptions:
                plan = subscription.phase_at(boundary - timedelta(microseconds=1)).plan
                key: tuple[str, str | None] = (plan.amount_currency, None)
                issued = self._draft_for(organization_id, drafts, key, customer, boundary).issued
                if issued is not None and subscription.external_id not in _billed(issued):
                    # Backdated after the consolidated invoice was final: an invoice of its own.
                    key = (plan.amount_currency, subscription.external_id)
                draft = self._draft_for(organization_id, drafts, key, customer, boundary)
                if draft.issued is None:
                    self._bill_boundary(
                        draft, subscription, boundary, watermark, previous_watermark
                    )
            for subscription in subscriptions:
                # Before the boundary's invoice, so that invoice consumes the credit (§5.6).
                self._lifecycle_credit_notes(subscription, boundary, now)
            for draft in drafts.values():
                for credit in draft.late_credits:  # Likewise (§8.5).
                    self._issue_late_credit(credit, now)
            for draft in drafts.values():
                invoice = draft.issued
                if invoice is None and draft.billing_periods:
                    invoice = self._issue(organization_id, draft, watermark, now)
                if invoice is not None:
                    invoices.append(invoice)
                    for period in invoice.billing_periods:
                        previous_watermark[period["external_subscription_id"]] = invoice.watermark
        for subscription in subscriptions:
            advance = self._bill_advance(organization_id, customer, subscription, watermark, now)
            if advance is not None:
                invoices.append(advance)
        return invoices

    def _draft_for(
        self,
        organization_id: UUID,
        drafts: dict[tuple[str, str | None], "_Draft"],
        key: tuple[str, str | None],
        customer: Customer,
        boundary: datetime,
    ) -> "_Draft":
        if key not in drafts:
            draft = _Draft(customer, key[0], boundary, own_subscription=key[1])
            draft.issued = self._issued(organization_id, draft)
            drafts[key] = draft
        return drafts[key]

    def _invoice_id(self, organization_id: UUID, draft: "_Draft") -> UUID:
        if draft.invoice_key is not None:
            return ids.invoice_id(organization_id, *draft.invoice_key)
        return _boundary_invoice_id(
            organization_id,
            draft.customer.id,
            draft.currency,
            draft.boundary,
            draft.own_subscription,
        )

    def _issued(self, organization_id: UUID, draft: "_Draft") -> Invoice | None:
        """The boundary's invoice if it is no longer a draft (a draft is recomputed)."""
        invoice_id = self._invoice_id(organization_id, draft)
        if _RUN.get() is not None and invoice_id not in self._indexed_invoices(organization_id):
            draft.stored = False
            return None
        try:
            invoice: Invoice = self.billing.repository.get(invoice_id)
        except AggregateNotFoundError:
            draft.stored = False
            return None
        return None if invoice.status == "draft" else invoice

    def _indexed_invoices(self, organization_id: UUID) -> set[UUID]:
        """In a run, the organization's invoices as the index knew them when first asked (it
        caught up when the run began): one read instead of one per invoice. One that another
        run made since is found when saving the same one collides."""
        scope = _run_scope()
        if organization_id not in scope.indexed_invoices:
            found, _ = self.billing.index.view.page(organization_id, "invoice", 1, 10**9)
            scope.indexed_invoices[organization_id] = set(found)
        return scope.indexed_invoices[organization_id]

    def _issue(
        self, organization_id: UUID, draft: _Draft, watermark: int, now: datetime
    ) -> Invoice | None:
        """Create the boundary's invoice (finalized at once without a grace period), or refresh
        its draft; an invoice already final is left alone."""
        invoice_id = self._invoice_id(organization_id, draft)
        # A pay-in-advance bill is issued at once (§4.9): no grace period.
        grace_days = 0 if draft.invoice_key is not None else _grace_period_days(draft.customer)
        timezone = draft.customer.timezone or "UTC"
        decision = (
            self.tax_engine.taxes_for(
                organization_id,
                draft.customer,
                supply_date_of(draft.boundary, timezone),
                self._organization(organization_id),
            )
            if self.tax_engine is not None
            else None
        )
        if decision is None:  # The catalog's taxes, by precedence (§9.1).
            taxes = self._taxes(organization_id)
            fees = [taxes.apply(draft.customer, fee) for fee in draft.fees]
            used_rates = {code: taxes.rates[code] for fee in fees for code in fee.tax_codes}
        else:  # The engine's decision replaces the catalog's levels; its rates are recorded.
            codes = tuple(line.tax_code for line in decision.taxes)
            fees = [
                fee if fee.fee_type == "credit" else fee.with_tax_codes(codes) for fee in draft.fees
            ]
            used_rates = {line.tax_code: line.rate for line in decision.taxes}
        scope = _RUN.get()
        for attempt in range(COMMAND_RETRIES_MAX):
            try:
                if attempt == 0 and not draft.stored:
                    raise AggregateNotFoundError(invoice_id)  # Just read: no need to again.
                invoice: Invoice = self.billing.repository.get(invoice_id)
            except AggregateNotFoundError:
                invoice = Invoice.draft(
                    invoice_id,
                    organization_id=organization_id,
                    customer_id=draft.customer.id,
                    external_customer_id=draft.customer.external_id,
                    invoice_type="subscription",
                    currency=draft.currency,
                    issuing_date=local_date(draft.boundary, timezone),
                    net_payment_term=int(draft.customer.fields.get("net_payment_term") or 0),
                    billing_periods=draft.billing_periods,
                    fees=fees,
                    watermark=watermark,
                    tax_rates=used_rates,
                )
            else:
                if invoice.status != "draft":
                    return invoice
                invoice.refresh(draft.billing_periods, fees, watermark, used_rates)
            if decision is not None:
                invoice.record_tax_decision(dict(decision.record), decision.legal_mention)
            sequence = None
            credits: list[Any] = []
            # A pending tax decision (a VAT number VIES has not answered yet) keeps a draft.
            pending = decision is not None and decision.pending
            finalizing = now >= draft.boundary + timedelta(days=grace_days) and not pending
            if finalizing:
                credits = self._apply_customer_credit(invoice)
            # In a run, an invoice that changes nothing else waits to be saved with others (a
            # pay-in-advance bill does not: the next one's id depends on it).
            deferred = (
                scope is not None and scope.deferring and not credits and draft.invoice_key is None
            )
            if not deferred:
                self._flush()  # Those decided before come first, and take their numbers first.
            if finalizing:
                sequence = self._finalize(invoice, now, timezone, grace_days > 0)
            if deferred:
                assert scope is not None
                scope.pending[invoice.id] = _Pending(
                    invoice, organization_id, draft, watermark, now
                )
                if sequence is not None:
                    scope.sequences[organization_id] = sequence
                if len(scope.pending) >= SAVE_BATCH:
                    self._flush()
                return invoice
            try:
                self.billing.save(invoice, sequence, *credits)
            except IntegrityError:
                continue  # Another run created it, or took the number: reload and decide again.
            if _RUN.get() is None:  # A run catches up once, at its end.
                self.billing.catch_up()
            return invoice
        raise ConcurrencyConflictError("invoice", invoice_id)

    def _flush(self) -> None:
        """Save the invoices the run decided and has not saved yet, with the number sequence
        they took their numbers from, in one transaction. If another run made one of them or
        took a number (a conflict), each is decided again and saved alone, as outside a run."""
        scope = _RUN.get()
        if scope is None or not scope.pending:
            return
        pending = list(scope.pending.values())
        sequences = list(scope.sequences.values())
        scope.pending.clear()
        scope.sequences.clear()
        scope.credit_checked = False  # A batch's worth of time: look for new credit again.
        try:
            recordings = self.billing.save(*(p.invoice for p in pending), *sequences)
        except IntegrityError:
            scope.deferring = False
            try:
                for p in pending:
                    invoice = self._issue(p.organization_id, p.draft, p.watermark, p.now)
                    if invoice is not None:
                        scope.reissued[invoice.id] = invoice
            finally:
                scope.deferring = True
        else:
            # The index takes the batch as saved, instead of reading it back at the run's end.
            self.billing.catch_up.recorded(recordings)

    def _finalize(
        self, invoice: Invoice, now: datetime, timezone: str, on_finalization_date: bool
    ) -> NumberSequence:
        organization = self._organization(invoice.organization_id)
        scope = _RUN.get()
        try:
            # The run's own, while invoices numbered from it wait to be saved.
            sequence: NumberSequence = (
                scope.sequences[invoice.organization_id]
                if scope is not None and invoice.organization_id in scope.sequences
                else self._sequences.get(ids.sequence_id(invoice.organization_id, INVOICE_SERIES))
            )
        except AggregateNotFoundError:
            sequence = NumberSequence.start(invoice.organization_id, INVOICE_SERIES)
        value = sequence.allocate(invoice.id)
        finalized_on = local_date(now, timezone)
        invoice.finalize(
            invoice_number(
                document_prefix(organization.name, organization.id), value, finalized_on
            ),
            value,
            finalized_on if on_finalization_date else invoice.issuing_date,
        )
        return sequence

    # Credit notes: the customer's credit at finalization (§8.2), and the lifecycle notes
    # for the unused days of a base fee paid in advance (§5.6, §5.7).

    def _apply_customer_credit(self, invoice: Invoice) -> list[Any]:
        """Let the customer's credit notes with a balance, oldest first, pay the draft's total
        after tax. The notes are saved with the finalization, in the same transaction."""
        consumed: list[CreditNote] = []
        if not self._may_hold_credit(invoice.organization_id, invoice.external_customer_id):
            return consumed  # Neither a credit note nor a wallet: nothing can pay it.
        due_cents = invoice.totals.total_amount_cents
        if due_cents <= 0:
            return consumed
        notes = available_credit_notes(
            self.billing, invoice.organization_id, invoice.external_customer_id
        )
        for note in notes:
            if note.currency != invoice.currency:
                continue
            applied_cents = note.consume(invoice.id, due_cents, invoice.currency)
            if applied_cents > 0:
                invoice.apply_credit(note.id, applied_cents)
                consumed.append(note)
                due_cents -= applied_cents
            if due_cents <= 0:
                break
        # Then the wallets (§6.3), saved with the finalization too.
        return [*consumed, *apply_wallets(self.billing, invoice)]

    def _lifecycle_credit_notes(
        self, subscription: Subscription, boundary: datetime, now: datetime
    ) -> list[CreditNote]:
        """A credit note for each phase of a plan paid in advance that ends at this boundary
        before its period does: a termination (on_termination_credit_note) or an immediate
        plan change (upgrade, new overrides: credit only). Idempotent: the invoice records
        each note's origin, so a rerun or a racing run issues it once."""
        issued = []
        phases = list(_phases(subscription))
        for position, (phase, phase_end) in enumerate(phases):
            if phase_end != boundary:
                continue
            if subscription.ended_at is not None and phase_end == subscription.ended_at:
                kind, mode = "termination", subscription.on_termination_credit_note or "credit"
            elif position + 1 < len(phases) and phases[position + 1][0].reason in (
                "upgrade",
                "overrides",
            ):
                kind, mode = "upgrade", "credit"  # §5.6: upgrades allow credit only.
            else:
                continue
            if mode == "skip":
                continue
            note = self._unused_base_fee_credit_note(
                subscription, phase, phase_end, kind, mode, now
            )
            if note is not None:
                issued.append(note)
        return issued

    def _unused_base_fee_credit_note(
        self,
        subscription: Subscription,
        phase: Phase,
        phase_end: datetime,
        kind: str,
        mode: str,
        now: datetime,
    ) -> CreditNote | None:
        definition = self._plan(phase).definition_shared(phase.plan.plan_version)
        if not definition["pay_in_advance"]:
            return None
        schedule = _schedule(subscription, phase)
        index = schedule.index_at(phase_end - timedelta(microseconds=1))
        full = schedule.full_period(index)
        timezone = subscription.timezone
        # The day of a termination counts as used (§5.7); a plan change starts at a midnight,
        # so the switch day is credited (§5.6).
        day = local_date(phase_end, timezone)
        if local_midnight_at(day, timezone) < phase_end:
            day += timedelta(days=1)
        unused = full.clamp(start_at=local_midnight_at(day, timezone))
        unused = None if unused is None else base_fee_period(unused, subscription.trial_ended_at())
        if unused is None:
            return None
        fee_key = f"subscription:{subscription.external_id}:{period_key(full)}"
        origin = f"{kind}:{subscription.external_id}:{phase_end.isoformat()}"
        unused_cents = prorate_cents(
            definition["amount_cents"], local_days(unused, timezone), local_days(full, timezone)
        )
        for _ in range(COMMAND_RETRIES_MAX):
            invoice = self._advance_invoice(subscription, schedule.period(index).start_at, fee_key)
            if invoice is None or invoice.status != "finalized":
                return None  # Not invoiced yet, a draft in its grace period, or voided.
            if origin in invoice.credit_note_origins:
                return None  # Issued by an earlier run.
            fee = next(f for f in invoice.fees if f.key == fee_key)
            # Capped at the base fee minus earlier credit notes on it (§5.7).
            cents = min(unused_cents, fee.amount_cents - invoice.credited_fee_cents.get(fee_key, 0))
            if cents <= 0:
                return None
            amounts = invoice.credit_note_amounts({fee_key: cents})
            credit, refund, offset = _lifecycle_split(mode, invoice, fee_key, amounts)
            aggregates = issue_credit_note(
                self.billing,
                invoice,
                {fee_key: cents},
                credit_amount_cents=credit,
                refund_amount_cents=refund,
                offset_amount_cents=offset,
                reason="order_cancellation" if kind == "termination" else "order_change",
                description=None,
                origin=origin,
                now=now,
            )
            try:
                self.billing.save(*aggregates)
            except IntegrityError:
                continue  # Another run or note changed the invoice: reload and decide again.
            _credit_created()
            self.billing.catch_up()
            note: CreditNote = aggregates[0]
            return note
        raise ConcurrencyConflictError("invoice", fee_key)

    def _advance_invoice(
        self, subscription: Subscription, billed_at: datetime, fee_key: str
    ) -> Invoice | None:
        """The invoice that billed a base fee in advance: the customer's invoice of the period
        start, or the subscription's own one (backdated after the consolidated one was final)."""
        return self._invoice_with_fee(
            subscription.organization_id,
            subscription.customer_id,
            subscription.external_id,
            subscription.phase_at(billed_at).plan.amount_currency,
            billed_at,
            fee_key,
        )

    # Pay-in-advance charges (§4.9): each event's fee, on a bill of its own.

    def _bill_advance(
        self,
        organization_id: UUID,
        customer: Customer,
        subscription: Subscription,
        watermark: int,
        now: datetime,
    ) -> Invoice | None:
        """Bill the events of the subscription's pay-in-advance charges received since its
        last advance bill. The bills form a chain: each one's id is keyed by the watermark it
        starts from (the previous one's), so a rerun or a racing run collides on the same id
        and every event is billed exactly once."""
        if not self._advance_charges(subscription):
            return None
        since = self._advance_since(subscription)
        if watermark <= since:
            return None
        draft = _Draft(
            customer,
            "",
            now,
            invoice_key=("advance", str(subscription.id), str(since)),
        )
        self._bill_advance_lines(draft, subscription, since, watermark, now)
        if not draft.fees:
            return None
        invoice = self._issue(organization_id, draft, watermark, now)
        if invoice is not None and invoice.status != "draft":
            self._advance_cursor[subscription.id] = invoice.watermark
        return invoice

    def _advance_charges(self, subscription: Subscription) -> bool:
        for phase, _ in _phases(subscription):
            definition = self._plan(phase).definition_shared(phase.plan.plan_version)
            if any(_in_advance(charge) for charge in definition.get("charges", [])):
                return True
        return False

    def _advance_since(self, subscription: Subscription) -> int:
        """The watermark the subscription's next advance bill starts from: the end of the
        chain of its finalized advance bills (a draft, awaiting a tax decision, is redone)."""
        since = self._advance_cursor.get(subscription.id, 0)
        while True:
            try:
                invoice: Invoice = self.billing.repository.get(
                    ids.invoice_id(
                        subscription.organization_id, "advance", str(subscription.id), str(since)
                    )
                )
            except AggregateNotFoundError:
                break
            if invoice.status == "draft":
                break
            since = invoice.watermark
        self._advance_cursor[subscription.id] = since
        return since

    def _bill_advance_lines(
        self,
        draft: _Draft,
        subscription: Subscription,
        since: int,
        watermark: int,
        boundary: datetime,
    ) -> None:
        """Into the draft: a line per event appended in (since, watermark] to a pay-in-advance
        charge, priced in its own charges period (a late one too, §8.5), and the billing period
        that records `since`, the audit's input."""
        org = subscription.organization_id
        external_id = subscription.external_id
        spans: list[Period] = []
        plan_id, plan_version = "", 0
        for phase, phase_end in _phases(subscription):
            definition = self._plan(phase).definition_shared(phase.plan.plan_version)
            charges = _schedule(subscription, phase).charges_schedule(
                bool(definition.get("bill_charges_monthly"))
            )
            plan_taxes = definition.get("tax_codes") or []
            for charge, rule in self._billed_in_advance(org, definition):
                changed = self.usage.events_since(
                    org, external_id, rule.code, phase.starts_at, phase_end, since, watermark
                )
                indexes = sorted(
                    {charges.index_at(s.event.timestamp) for s in changed if s.position > since}
                )
                for index in indexes:
                    period = charges.period(index).clamp(start_at=phase.starts_at, end_at=phase_end)
                    assert period is not None, (index, phase.starts_at, phase_end)
                    now_view = self._ordered(org, external_id, rule.code, period, watermark)
                    fees = advance_fees(
                        charge,
                        rule,
                        definition["amount_currency"],
                        period,
                        [
                            s.event
                            for s in self._ordered(org, external_id, rule.code, period, since)
                        ],
                        [s.event for s in now_view if s.position <= since],
                        [s.event for s in now_view if s.position > since],
                    )
                    for fee in fees:
                        if fee.amount_cents == 0:
                            continue  # Under the high-water mark or free: nothing to bill.
                        draft.fees.append(
                            advance_fee_line(
                                fee,
                                charge,
                                external_subscription_id=external_id,
                                plan_id=str(phase.plan.plan_id),
                                plan_version=phase.plan.plan_version,
                                period=period,
                                tax_codes=charge.get("tax_codes") or plan_taxes,
                            )
                        )
                        spans.append(period)
                        draft.currency = definition["amount_currency"]
                        plan_id, plan_version = str(phase.plan.plan_id), phase.plan.plan_version
        if draft.fees:
            draft.billing_periods.extend(
                _jsonable(
                    [
                        {
                            "external_subscription_id": external_id,
                            "lago_subscription_id": str(subscription.id),
                            "lago_plan_id": plan_id,
                            "plan_version": plan_version,
                            "charges_from_datetime": min(p.start_at for p in spans),
                            "charges_to_datetime": max(p.end_at for p in spans),
                            "invoicing_reason": "in_advance_charge",
                            "boundary": boundary,
                            "advance_since": since,
                        }
                    ]
                )
            )
            draft.subscriptions.add(external_id)

    def _charge_lines(
        self,
        subscription: Subscription,
        definition: Mapping[str, Any],
        charges: BillingSchedule,
        period: Period,
        watermark: int,
        common: Mapping[str, Any],
    ) -> list[FeeLine]:
        """The lines of a charges period's charges billed in arrears, at the watermark, each
        charge's minimum true-up after its lines (§4.10)."""
        external_id = subscription.external_id
        plan_taxes = definition.get("tax_codes") or []
        exponent = CURRENCY_EXPONENTS[definition["amount_currency"]]
        rated = self.rating.rate_charges(
            subscription.organization_id,
            external_id,
            definition,
            period,
            subscription.timezone,
            up_to_position=watermark,
        )
        lines: list[FeeLine] = []
        for charge in rated:
            if charge.charge.get("pay_in_advance"):
                continue
            tax_codes = charge.charge.get("tax_codes") or plan_taxes
            charge_lines = [
                charge_fee_line(fee, **common, period=period, tax_codes=tax_codes)
                for fee in charge.fees
            ]
            lines.extend(charge_lines)
            minimum = charge.charge.get("min_amount_cents") or 0
            if not (minimum and charge_lines):
                continue
            index = charges.index_at(period.start_at)
            top_up = charge_minimum_true_up_cents(
                sum(line.amount_cents for line in charge_lines),
                minimum,
                billed_days=charges.billed_days(index),
                period_days=charges.period_days(index),
            )
            if top_up:
                lines.append(
                    true_up_line(
                        key=f"charge_minimum:{external_id}:{charge.charge['lago_id']}:"
                        f"{period_key(period)}",
                        fee_type="charge",
                        cents=top_up,
                        **common,
                        period=period,
                        invoice_display_name="Minimum spending true-up",
                        tax_codes=tax_codes,
                        currency_exponent=exponent,
                        charge_id=charge.charge["lago_id"],
                        charge_code=charge.charge["code"],
                    )
                )
        return lines

    def _advance_cents(
        self,
        subscription: Subscription,
        definition: Mapping[str, Any],
        period: Period | None,
        watermark: int,
    ) -> int:
        """What the pay-in-advance charges' fees of a charges period come to at a watermark:
        per bucket the model of its high-water units, which is what the period's advance bills
        sum to, to the cent (domain.invoicing.advance_fees), unless an event billed was voided
        since (its fee is not refunded, §4.9, but is not counted here)."""
        if period is None:
            return 0
        org, external_id = subscription.organization_id, subscription.external_id
        cents = 0
        for charge, rule in self._billed_in_advance(org, definition):
            events = [
                s.event for s in self._ordered(org, external_id, rule.code, period, watermark)
            ]
            fees = advance_fees(charge, rule, definition["amount_currency"], period, [], [], events)
            cents += sum(fee.amount_cents for fee in fees)
        return cents

    def _billed_in_advance(
        self, organization_id: UUID, definition: Mapping[str, Any]
    ) -> Iterator[tuple[Mapping[str, Any], MetricRule]]:
        """The plan's pay-in-advance charges billed per event, with their metrics' rules."""
        for charge in definition.get("charges", []):
            if _in_advance(charge):
                _, rule = self.rating.metric(organization_id, charge["billable_metric_code"])
                if rule.aggregation_type in ADVANCE_AGGREGATION_TYPES:
                    yield charge, rule

    def _ordered(
        self, org: UUID, external_id: str, code: str, period: Period, up_to: int
    ) -> list[Any]:
        """The period's live events at a watermark, in committed order (§4.9)."""
        stored = self.usage.events(org, external_id, code, period.start_at, period.end_at, up_to)
        return sorted(stored, key=lambda s: (s.position, s.sequence))

    # One subscription at one boundary.

    def _bill_boundary(
        self,
        draft: _Draft,
        subscription: Subscription,
        boundary: datetime,
        watermark: int,
        previous_watermark: dict[str, int],
    ) -> None:
        external_id = subscription.external_id
        lines: list[FeeLine] = []
        periods: list[dict[str, Any]] = []
        late_spans: list[Period] = []  # Late usage of phases ended before the boundary.
        for phase, phase_end in _phases(subscription):
            plan = self._plan(phase)
            definition = plan.definition_shared(phase.plan.plan_version)
            schedule = _schedule(subscription, phase)
            charges = schedule.charges_schedule(bool(definition.get("bill_charges_monthly")))
            ended_at = subscription.ended_at
            exponent = CURRENCY_EXPONENTS[definition["amount_currency"]]
            plan_taxes = definition.get("tax_codes") or []
            common: dict[str, Any] = {
                "external_subscription_id": external_id,
                "plan_id": str(phase.plan.plan_id),
                "plan_version": phase.plan.plan_version,
            }
            # Charges of the charges period that closes here.
            closing = _closing_period(charges, phase.starts_at, phase_end, boundary)
            closing_lines = (
                []
                if closing is None
                else self._charge_lines(
                    subscription, definition, charges, closing, watermark, common
                )
            )
            lines.extend(closing_lines)
            # Late usage of this phase's earlier periods, or of a phase that ended before.
            late_before = closing.start_at if closing is not None else phase_end
            if closing is not None or phase_end < boundary:
                late_lines, late_credits = self._late_adjustments(
                    subscription,
                    definition,
                    charges,
                    phase,
                    late_before,
                    watermark,
                    previous_watermark.get(external_id),
                    common,
                    plan_taxes,
                    advance_too=draft.legacy_late_usage,
                )
                lines.extend(late_lines)
                draft.late_credits.extend(late_credits)
                if late_lines and phase_end < boundary:
                    late_spans.extend(Period(line.from_at, line.to_at) for line in late_lines)
            # The base fee: in arrears for the period closing here, in advance for the next.
            amount_cents = definition["amount_cents"]
            arrears = _closing_period(schedule, phase.starts_at, phase_end, boundary)
            trial_ended_at = subscription.trial_ended_at()
            if arrears is not None:
                index = schedule.index_at(arrears.start_at)
                base_fee = subscription_fee(
                    **common,
                    amount_cents=amount_cents,
                    currency_exponent=exponent,
                    schedule=schedule,
                    index=index,
                    trial_ended_at=trial_ended_at,
                    # Cut where the phase ends: a termination, or a plan change (§5.6).
                    ended_at=arrears.end_at,
                    invoice_display_name=definition.get("invoice_display_name"),
                    tax_codes=plan_taxes,
                )
                if not definition["pay_in_advance"]:
                    lines.append(base_fee)
                commitment = definition.get("minimum_commitment")
                if commitment:
                    # §4.11: the period's fees, whichever invoice carries them: its base fee
                    # (here in arrears, or on the invoice of its start in advance: its true-up
                    # is then on the next one, this), the charges of every charges period in it
                    # (a year's months, billed monthly) and its pay-in-advance charges' fees.
                    fees_cents = base_fee.amount_cents + sum(
                        line.amount_cents for line in closing_lines
                    )
                    for span in _charges_periods(charges, arrears, phase.starts_at, phase_end):
                        if span != closing:  # Billed on an earlier invoice: as it is now.
                            fees_cents += sum(
                                line.amount_cents
                                for line in self._charge_lines(
                                    subscription, definition, charges, span, watermark, common
                                )
                            )
                        fees_cents += self._advance_cents(subscription, definition, span, watermark)
                    top_up = minimum_commitment_true_up_cents(
                        fees_cents,
                        commitment["amount_cents"],
                        days_covered=schedule.billed_days(index),
                        period_days=schedule.period_days(index),
                    )
                    if top_up:
                        lines.append(
                            true_up_line(
                                key=f"commitment:{external_id}:{period_key(arrears)}",
                                fee_type="commitment",
                                cents=top_up,
                                **common,
                                period=arrears,
                                invoice_display_name=commitment.get("invoice_display_name")
                                or "Minimum commitment true-up",
                                tax_codes=commitment.get("tax_codes") or plan_taxes,
                                currency_exponent=exponent,
                            )
                        )
            starts_here = phase.starts_at <= boundary < phase_end and (
                ended_at is None or boundary < ended_at
            )
            if definition["pay_in_advance"] and starts_here:
                index = schedule.index_at(boundary)
                if schedule.period(index).start_at == boundary:
                    lines.append(
                        subscription_fee(
                            **common,
                            amount_cents=amount_cents,
                            currency_exponent=exponent,
                            schedule=schedule,
                            index=index,
                            trial_ended_at=trial_ended_at,
                            ended_at=None,
                            invoice_display_name=definition.get("invoice_display_name"),
                            tax_codes=plan_taxes,
                        )
                    )
            if (
                closing is not None
                or arrears is not None
                or (definition["pay_in_advance"] and starts_here)
            ):
                periods.append(
                    {
                        "external_subscription_id": external_id,
                        "lago_subscription_id": str(subscription.id),
                        "lago_plan_id": str(phase.plan.plan_id),
                        "plan_version": phase.plan.plan_version,
                        "charges_from_datetime": (closing or arrears or _empty(boundary)).start_at,
                        "charges_to_datetime": (closing or arrears or _empty(boundary)).end_at,
                        "invoicing_reason": _reason(subscription, phase, boundary),
                        "boundary": boundary,
                    }
                )
        if not periods and late_spans and draft.own_subscription is None:
            # Late usage of a subscription whose final invoice is out (§8.5): on the customer's
            # next invoice, as this subscription's billing period of adjustments only.
            last = subscription.phases[-1]
            periods.append(
                {
                    "external_subscription_id": external_id,
                    "lago_subscription_id": str(subscription.id),
                    "lago_plan_id": str(last.plan.plan_id),
                    "plan_version": last.plan.plan_version,
                    "charges_from_datetime": min(span.start_at for span in late_spans),
                    "charges_to_datetime": max(span.end_at for span in late_spans),
                    "invoicing_reason": "subscription_terminating",
                    "boundary": boundary,
                    "late_usage_only": True,
                }
            )
        for period in periods:
            # The baseline of late usage, recorded: the audit's input (None: first invoice).
            period["late_usage_since"] = previous_watermark.get(external_id)
        if periods:
            draft.billing_periods.extend(_jsonable(periods))
            draft.fees.extend(lines)
            draft.subscriptions.add(external_id)

    def _late_adjustments(
        self,
        subscription: Subscription,
        definition: Mapping[str, Any],
        charges: BillingSchedule,
        phase: Phase,
        late_before: datetime,
        watermark: int,
        previous: int | None,
        common: Mapping[str, Any],
        plan_taxes: list[str],
        advance_too: bool = False,
    ) -> tuple[list[FeeLine], list[_LateCredit]]:
        """Usage stamped in the phase's periods already invoiced (those before `late_before`)
        that arrived, or was voided, since (§8.5): per bucket, the difference between the
        period rated now and as last invoiced. `previous` is the watermark of the
        subscription's previous invoice (None: this is its first), which may be 0.

        A rise is a line; a fall is a credit note on the invoice that billed the period. Credit
        notes for a fall are keyed by the baseline `previous` (they do not move it, as a line
        does), so what was credited since that baseline counts as already adjusted: the
        adjustment is delta + credited, a line when positive, a further credit when negative.
        Pay-in-advance charges are billed per event on their own path (§4.9)."""
        if previous is None or late_before <= phase.starts_at:
            return [], []
        late_periods: set[int] = set()
        first = _period_at(charges, phase.starts_at)
        for charge in definition.get("charges", []):
            if _in_advance(charge) and not advance_too:
                continue
            # Only what changed between the two watermarks: appended or voided since.
            for stored in self.usage.events_since(
                subscription.organization_id,
                subscription.external_id,
                charge["billable_metric_code"],
                first.start_at,
                late_before,
                previous,
                watermark,
            ):
                late_periods.add(charges.index_at(stored.event.timestamp))
        lines: list[FeeLine] = []
        credits: list[_LateCredit] = []
        for index in sorted(late_periods):
            # As it was invoiced: the last period of an ended phase is cut at its end.
            period = charges.period(index).clamp(end_at=late_before)
            assert period is not None, (index, late_before)
            now = {
                (c.charge["lago_id"], f.bucket): f
                for c in self.rating.rate_charges(
                    subscription.organization_id,
                    subscription.external_id,
                    definition,
                    period,
                    subscription.timezone,
                    up_to_position=watermark,
                )
                for f in c.fees
            }
            before = {
                (c.charge["lago_id"], f.bucket): f.amount_cents
                for c in self.rating.rate_charges(
                    subscription.organization_id,
                    subscription.external_id,
                    definition,
                    period,
                    subscription.timezone,
                    up_to_position=previous,
                )
                for f in c.fees
            }
            currency = definition["amount_currency"]
            for key, fee in sorted(now.items(), key=lambda item: item[1].bucket.sort_key()):
                charge = next(c for c in definition["charges"] if c["lago_id"] == fee.charge_id)
                if _in_advance(charge) and not advance_too:
                    continue
                delta = fee.amount_cents - before.get(key, 0)
                if delta == 0:
                    continue
                original_key = charge_fee_line(
                    fee, **common, period=period, tax_codes=()
                ).key  # The line that billed the period.
                billed_on = self._invoice_with_fee(
                    subscription.organization_id,
                    subscription.customer_id,
                    subscription.external_id,
                    currency,
                    period.end_at,
                    original_key,
                )
                origin = f"late:{original_key}:{previous}:"
                credited = self._late_credited(
                    subscription.organization_id,
                    subscription.external_customer_id,
                    billed_on,
                    original_key,
                    origin,
                )
                adjustment = delta + credited
                if adjustment > 0:
                    line = charge_fee_line(
                        fee,
                        **common,
                        period=period,
                        tax_codes=charge.get("tax_codes") or plan_taxes,
                        key_prefix="adjustment",
                    )
                    lines.append(_adjusted(line, adjustment, CURRENCY_EXPONENTS[currency]))
                elif adjustment < 0:
                    credits.append(
                        _LateCredit(
                            organization_id=subscription.organization_id,
                            external_subscription_id=subscription.external_id,
                            external_customer_id=subscription.external_customer_id,
                            customer_id=subscription.customer_id,
                            currency=currency,
                            invoice_boundary=period.end_at,
                            fee_key=original_key,
                            cents=-adjustment,
                            origin=origin,
                            credited_cents=credited,
                        )
                    )
        return lines, credits

    def _invoice_with_fee(
        self,
        organization_id: UUID,
        customer_id: UUID,
        external_subscription_id: str,
        currency: str,
        boundary: datetime,
        fee_key: str,
    ) -> Invoice | None:
        """The invoice that billed a charges period's line: the customer's invoice at the
        period's end, or the subscription's own one (backdated)."""
        self._flush()  # Reads invoices: those the run decided must be stored.
        for own in (None, external_subscription_id):
            invoice_id = _boundary_invoice_id(organization_id, customer_id, currency, boundary, own)
            try:
                invoice: Invoice = self.billing.repository.get(invoice_id)
            except AggregateNotFoundError:
                continue
            if any(fee["key"] == fee_key for fee in invoice.fee_events):
                return invoice
        return None

    def _late_credited(
        self,
        organization_id: UUID,
        external_customer_id: str,
        original: Invoice | None,
        original_key: str,
        origin: str,
    ) -> int:
        """What late-usage credit notes under this origin credited of a period's bucket: on
        its original line, and, once that line is fully credited (only then are they issued
        there), on the adjustment lines later invoices carry for it."""
        credited = _credited_since(original, original_key, origin)
        if original is None or original.status != "finalized":
            return credited
        fee = next(f for f in original.fees if f.key == original_key)
        if original.credited_fee_cents.get(original_key, 0) < fee.amount_cents:
            return credited
        adjustment_key = _adjustment_key(original_key)
        return credited + sum(
            _credited_since(invoice, adjustment_key, origin)
            for invoice in self._with_line(organization_id, external_customer_id, adjustment_key)
        )

    def _with_line(
        self, organization_id: UUID, external_customer_id: str, fee_key: str
    ) -> list[Invoice]:
        """The customer's finalized invoices with this line, oldest first (a rare scan)."""
        self._flush()  # Reads invoices: those the run decided must be stored.
        found = [
            invoice
            for invoice in self.billing._all(
                Invoice, "invoice", organization_id, external_customer_id
            )
            if invoice.status == "finalized"
            and any(fee["key"] == fee_key for fee in invoice.fee_events)
        ]
        return sorted(found, key=lambda invoice: invoice.sequential_id or 0)

    def _issue_late_credit(self, credit: _LateCredit, now: datetime) -> list[CreditNote]:
        """Credit notes for late usage that lowered an invoiced period (§8.5): on the invoice
        that billed it, at its own rates, offset while it is unpaid, else credit, up to what is
        left of its line; what that line cannot take goes on the adjustment lines later
        invoices carry for the period. Once per origin: a rerun finds them recorded."""
        original = self._invoice_with_fee(
            credit.organization_id,
            credit.customer_id,
            credit.external_subscription_id,
            credit.currency,
            credit.invoice_boundary,
            credit.fee_key,
        )
        if original is None or original.status != "finalized":
            return []  # Voided, or a draft still refreshed with the usage itself.
        done = self._late_credited(
            credit.organization_id,
            credit.external_customer_id,
            original,
            credit.fee_key,
            credit.origin,
        )
        # Less what another run credited under this origin since it was computed.
        needed = credit.cents - (done - credit.credited_cents)
        notes = []
        targets = [(original.id, credit.fee_key)]
        fee = next(f for f in original.fees if f.key == credit.fee_key)
        if needed > fee.amount_cents - original.credited_fee_cents.get(credit.fee_key, 0):
            adjustment_key = _adjustment_key(credit.fee_key)
            for invoice in self._with_line(
                credit.organization_id, credit.external_customer_id, adjustment_key
            ):
                targets.append((invoice.id, adjustment_key))
        for invoice_id, fee_key in targets:
            if needed <= 0:
                break
            note = self._late_credit_note(invoice_id, fee_key, needed, credit.origin, now)
            if note is not None:
                needed -= note.sub_total_excluding_taxes_amount_cents
                notes.append(note)
        return notes

    def _late_credit_note(
        self, invoice_id: UUID, fee_key: str, cents_max: int, origin: str, now: datetime
    ) -> CreditNote | None:
        """One late-usage credit note on one line, up to what is left of it."""
        self._flush()  # Reads invoices: those the run decided must be stored.
        for _ in range(COMMAND_RETRIES_MAX):
            invoice: Invoice = self.billing.repository.get(invoice_id)
            fee = next(f for f in invoice.fees if f.key == fee_key)
            left = fee.amount_cents - invoice.credited_fee_cents.get(fee_key, 0)
            cents = min(cents_max, left)
            if cents <= 0 or invoice.status != "finalized":
                return None
            amounts = invoice.credit_note_amounts({fee_key: cents})
            offset = min(amounts.total_amount_cents, invoice.offsettable_amount_cents)
            sequence_number = sum(
                1 for known in invoice.credit_note_origins if known.startswith(origin)
            )
            aggregates = issue_credit_note(
                self.billing,
                invoice,
                {fee_key: cents},
                credit_amount_cents=amounts.total_amount_cents - offset,
                refund_amount_cents=0,
                offset_amount_cents=offset,
                reason="other",
                description=(
                    f"Late usage lowered the charge of {fee.from_at.isoformat()} to "
                    f"{fee.to_at.isoformat()}."
                ),
                origin=f"{origin}{sequence_number + 1}",
                now=now,
            )
            try:
                self.billing.save(*aggregates)
            except IntegrityError:
                continue
            _credit_created()
            self.billing.catch_up()
            note: CreditNote = aggregates[0]
            return note
        raise ConcurrencyConflictError("invoice", invoice_id)

    # One-off invoices: add-ons billed once (Lago's POST /invoices).

    def create_one_off(
        self,
        organization_id: UUID,
        external_customer_id: str | None,
        currency: str | None,
        fees: Sequence[OneOffFee],
        now: datetime,
    ) -> Invoice:
        """An invoice of type one_off for add-ons, finalized and numbered at once. Each line:
        units (1 by default) × unit_amount_cents (the add-on's amount by default), rounded once
        half-up; taxes by precedence: the line's tax_codes, the add-on's, the customer's, the
        organization's (§9.1). Credit notes and wallets pay it as any invoice (§6.3)."""
        if not external_customer_id:
            raise InvalidValueError("external_customer_id", "value_is_mandatory", None)
        customer = self.billing.customer(organization_id, external_customer_id)
        if not fees:
            raise InvalidValueError("fees", "value_is_mandatory", None)
        taxes = self._taxes(organization_id)
        add_ons = [self.billing.add_on(organization_id, fee.add_on_code or "") for fee in fees]
        currency = currency or customer.currency or add_ons[0].amount_currency
        check_currency(currency)
        if customer.currency not in (None, currency):
            raise InvalidValueError("currency", "currencies_does_not_match", currency)
        lines = []
        for index, (fee, add_on) in enumerate(zip(fees, add_ons, strict=True)):
            if fee.unit_amount_cents is None and add_on.amount_currency != currency:
                raise InvalidValueError("currency", "currencies_does_not_match", currency)
            for code in fee.tax_codes or ():
                self.billing.tax(organization_id, code)  # 404 naming an unknown tax.
            codes = most_specific_tax_codes(
                fee.tax_codes or (),
                add_on.tax_codes,
                customer.fields.get("tax_codes") or (),
                taxes.defaults,
            )
            lines.append(
                add_on_fee_line(
                    key=f"add_on:{index}:{add_on.code}",
                    add_on_id=str(add_on.id),
                    add_on_code=add_on.code,
                    units=_quantity(fee.units, "units", Decimal(1)),
                    unit_amount_cents=_quantity(
                        fee.unit_amount_cents, "unit_amount_cents", Decimal(add_on.amount_cents)
                    ),
                    name=fee.invoice_display_name or add_on.invoice_display_name or add_on.name,
                    from_at=fee.from_datetime or now,
                    to_at=fee.to_datetime or now,
                    tax_codes=tuple(code for code in codes if code in taxes.rates),
                    currency_exponent=CURRENCY_EXPONENTS[currency],
                )
            )
        invoice_id = uuid4()
        timezone = customer.timezone or "UTC"
        for _ in range(COMMAND_RETRIES_MAX):
            invoice = Invoice.draft(
                invoice_id,
                organization_id=organization_id,
                customer_id=customer.id,
                external_customer_id=customer.external_id,
                invoice_type="one_off",
                currency=currency,
                issuing_date=local_date(now, timezone),
                net_payment_term=int(customer.fields.get("net_payment_term") or 0),
                billing_periods=[],
                fees=lines,
                watermark=0,
                tax_rates={code: taxes.rates[code] for line in lines for code in line.tax_codes},
            )
            credits = self._apply_customer_credit(invoice)
            sequence = self._finalize(invoice, now, timezone, True)
            try:
                self.billing.save(invoice, sequence, *credits)
            except IntegrityError:
                continue  # Another invoice took the number: decide again.
            self.billing.catch_up()
            return invoice
        raise ConcurrencyConflictError("invoice", invoice_id)

    # Lago's estimate_fees (§4.9).

    def estimate_advance_fees(
        self, organization_id: UUID, event: UsageEvent, now: datetime
    ) -> Invoice:
        """What the event would bill on its subscription's pay-in-advance charges if it were
        ingested now: per charge on its metric, its fee against the live events of its charges
        period (high-water marks, §4.9), taxed by the catalog's precedence (§9.1), never by the
        EU VAT engine, whose decisions record checks. Returned as an invoice that is never
        saved (its fees and totals are the estimate); nothing is stored."""
        subscription: Subscription = self.billing.repository.get(
            ids.subscription_id(organization_id, event.external_subscription_id)
        )
        customer: Customer = self.billing.repository.get(subscription.customer_id)
        phase, phase_end = next(
            (p, end) for p, end in _phases(subscription) if p.starts_at <= event.timestamp < end
        )
        definition = self._plan(phase).definition_shared(phase.plan.plan_version)
        charges = _schedule(subscription, phase).charges_schedule(
            bool(definition.get("bill_charges_monthly"))
        )
        period = charges.period(charges.index_at(event.timestamp)).clamp(end_at=phase_end)
        assert period is not None, (event.timestamp, phase_end)
        taxes = self._taxes(organization_id)
        lines = []
        for charge, rule in self._billed_in_advance(organization_id, definition):
            if rule.code != event.code:
                continue
            stored = self.usage.events(
                organization_id, subscription.external_id, rule.code, period.start_at, period.end_at
            )
            live = [s.event for s in sorted(stored, key=lambda s: (s.position, s.sequence))]
            currency = definition["amount_currency"]
            for fee in advance_fees(charge, rule, currency, period, live, live, [event]):
                line = advance_fee_line(
                    fee,
                    charge,
                    external_subscription_id=subscription.external_id,
                    plan_id=str(phase.plan.plan_id),
                    plan_version=phase.plan.plan_version,
                    period=period,
                    tax_codes=charge.get("tax_codes") or definition.get("tax_codes") or [],
                )
                lines.append(taxes.apply(customer, line))
        return Invoice.draft(
            ids.invoice_id(organization_id, "estimate", event.external_subscription_id),
            organization_id=organization_id,
            customer_id=customer.id,
            external_customer_id=customer.external_id,
            invoice_type="subscription",
            currency=definition["amount_currency"],
            issuing_date=local_date(now, customer.timezone or "UTC"),
            net_payment_term=0,
            billing_periods=[],
            fees=lines,
            watermark=0,
            tax_rates={code: taxes.rates[code] for line in lines for code in line.tax_codes},
        )

    # Invoice commands and queries.

    def invoice(self, organization_id: UUID, invoice_id: UUID) -> Invoice:
        return self.billing._get(
            Invoice, invoice_id, organization_id, NotFoundError("invoice", invoice_id)
        )

    def finalize(self, organization_id: UUID, invoice_id: UUID, now: datetime) -> Invoice:
        for _ in range(COMMAND_RETRIES_MAX):
            invoice = self.invoice(organization_id, invoice_id)
            if invoice.status != "draft":
                raise NotFoundError("invoice", invoice_id)  # Lago: only drafts are found here.
            customer: Customer = self.billing.repository.get(invoice.customer_id)
            credits = self._apply_customer_credit(invoice)
            sequence = self._finalize(invoice, now, customer.timezone or "UTC", True)
            try:
                self.billing.save(invoice, sequence, *credits)
            except IntegrityError:
                continue
            self.billing.catch_up()
            return invoice
        raise ConcurrencyConflictError("invoice", invoice_id)

    def void(
        self,
        organization_id: UUID,
        invoice_id: UUID,
        now: datetime,
        *,
        generate_credit_note: bool = False,
        credit_amount_cents: int = 0,
        refund_amount_cents: int = 0,
    ) -> Invoice:
        """Lago's void (§8.8): the wallets get back the credits the invoice took; with
        generate_credit_note a paid invoice may be voided too, and its credit notes (the
        amounts asked, then the rest, see Invoice.void_credit_notes) are issued with it, in
        one transaction."""

        def decide() -> list[Any]:
            invoice = self.invoice(organization_id, invoice_id)
            if not generate_credit_note:
                invoice.void(now)  # Refuses before anything is decided.
            wallets, returned_cents = recredit_wallets(self.billing, invoice, now)
            aggregates: list[Any] = []
            if generate_credit_note:
                planned = invoice.void_credit_notes(
                    credit_amount_cents,
                    refund_amount_cents,
                    paid_amount_cents=self._paid_cents(invoice),
                    returned_cents=returned_cents,
                )
                sequence = None
                for number, note in enumerate(planned, start=1):
                    issued = issue_credit_note(
                        self.billing,
                        invoice,
                        {},
                        credit_amount_cents=note.credit_amount_cents,
                        refund_amount_cents=note.refund_amount_cents,
                        offset_amount_cents=note.offset_amount_cents,
                        reason="other",
                        description=f"Credit note created due to voided invoice {invoice.id}",
                        origin=f"void:{invoice.id}:{number}",
                        now=now,
                        void=note,
                        sequence=sequence,
                    )
                    credit_note: CreditNote = issued[0]
                    sequence = issued[2]
                    if note.voided:
                        credit_note.void(now)
                    aggregates.append(credit_note)
                if sequence is not None:
                    aggregates.append(sequence)
                invoice.void(now, generate_credit_note=True)
            return [invoice, *aggregates, *wallets]

        invoice: Invoice = self.billing._command_many("invoice", invoice_id, decide)[0]
        return invoice

    def _paid_cents(self, invoice: Invoice) -> int:
        """What payments brought in for an invoice: all of it once paid, else the payments
        recorded so far that succeeded (a partial payment)."""
        if invoice.payment_status == "succeeded":
            return invoice.total_paid_amount_cents
        try:
            collection: Collection = self.billing.repository.get(ids.collection_id(invoice.id))
        except AggregateNotFoundError:
            return 0
        paid = 0
        for payment_id in collection.payment_ids:
            payment: Payment = self.billing.repository.get(payment_id)
            if payment.settled_status == "succeeded":
                paid += payment.amount_cents
        return paid

    def refresh(self, organization_id: UUID, invoice_id: UUID, now: datetime) -> Invoice:
        """Lago's refresh: recompute a draft with the usage received since, through the billing
        run's own path (its customer billed at `now`, so a draft whose grace period is over is
        finalized, as the next run would). Anything but a draft comes back unchanged, as from
        Lago's Invoices::RefreshDraftService."""
        invoice = self.invoice(organization_id, invoice_id)
        if invoice.status != "draft":
            return invoice
        subscriptions = [
            subscription
            for subscription in self.billing._all(
                Subscription, "subscription", organization_id, invoice.external_customer_id
            )
            if subscription.canceled_at is None and subscription.subscription_at <= now
        ]
        self.bill_customer(organization_id, invoice.external_customer_id, subscriptions, now)
        return self.invoice(organization_id, invoice_id)

    def past_usage(
        self,
        organization_id: UUID,
        external_customer_id: str,
        external_subscription_id: str | None,
        *,
        billable_metric_code: str | None = None,
        periods_count: int | None = None,
    ) -> list[UsagePeriod]:
        """Lago's past usage: the subscription's invoiced charges periods, newest first, from
        the invoices' charge fees (Lago's PastUsageQuery), pay-in-advance fees of the period
        included; late-usage adjustments stay on the invoice that carries them."""
        if not external_subscription_id:
            raise InvalidValueError(
                "external_subscription_id", "value_is_mandatory", external_subscription_id
            )
        self.billing._get(
            Customer,
            ids.customer_id(organization_id, external_customer_id),
            organization_id,
            NotFoundError("customer", external_customer_id),
        )
        if billable_metric_code is not None:
            try:
                self.rating.metric(organization_id, billable_metric_code)
            except AggregateNotFoundError:
                raise NotFoundError("billable_metric", billable_metric_code) from None
        if periods_count is not None and periods_count < 0:
            raise InvalidValueError("periods_count", "value_is_invalid", periods_count)
        invoices = [
            invoice
            for invoice in self.billing._all(
                Invoice, "invoice", organization_id, external_customer_id
            )
            if invoice.status != "draft" and invoice.invoice_type == "subscription"
        ]
        charge_fees: dict[tuple[datetime, datetime], list[tuple[FeeLine, int]]] = defaultdict(list)
        for invoice in invoices:
            lines = invoice.totals.taxes.lines
            for fee, taxes in zip(invoice.fees, lines, strict=True):
                if fee.fee_type != "charge" or fee.external_subscription_id != (
                    external_subscription_id
                ):
                    continue
                if billable_metric_code is not None and fee.metric_code != billable_metric_code:
                    continue
                charge_fees[(fee.from_at, fee.to_at)].append((fee, taxes.taxes_amount_cents))
        periods = []
        for invoice in invoices:
            for period in invoice.billing_periods:
                if period["external_subscription_id"] != external_subscription_id:
                    continue
                if "advance_since" in period or period.get("late_usage_only"):
                    continue  # Their fees belong to the periods they bill.
                from_at = datetime.fromisoformat(period["charges_from_datetime"])
                to_at = datetime.fromisoformat(period["charges_to_datetime"])
                if to_at - from_at <= timedelta(microseconds=1):
                    continue  # A base fee in advance only: no charges period.
                periods.append(
                    UsagePeriod(invoice, from_at, to_at, charge_fees.get((from_at, to_at), []))
                )
        periods.sort(key=lambda usage: usage.from_at, reverse=True)
        return periods if periods_count is None else periods[:periods_count]

    def invoice_history(self, organization_id: UUID, invoice_id: UUID) -> list[Invoice]:
        """The invoice as it was after each of its events, oldest first (version 1 to latest)."""
        latest = self.invoice(organization_id, invoice_id)
        missing = NotFoundError("invoice", invoice_id)
        return [
            self.billing._get(Invoice, invoice_id, organization_id, missing, version=version)
            for version in range(1, latest.version)
        ] + [latest]

    def set_payment_status(
        self, organization_id: UUID, invoice_id: UUID, payment_status: str
    ) -> Invoice:
        def decide() -> Invoice:
            invoice = self.invoice(organization_id, invoice_id)
            invoice.set_payment_status(payment_status)
            return invoice

        invoice = self.billing._command("invoice", invoice_id, decide)
        settle_top_up(self.billing, invoice)  # A paid credit invoice settles its credits (§6.2).
        return invoice

    def invoices(
        self,
        organization_id: UUID,
        page: int,
        per_page: int,
        *,
        external_customer_id: str | None = None,
        statuses: tuple[str, ...] = (),
        payment_statuses: tuple[str, ...] = (),
    ) -> tuple[list[Invoice], int]:
        found = self.billing._all(Invoice, "invoice", organization_id, external_customer_id)
        matching = [
            i
            for i in found
            if (not statuses or i.status in statuses)
            and (not payment_statuses or i.payment_status in payment_statuses)
        ]
        start = (page - 1) * per_page
        return matching[start : start + per_page], len(matching)

    # Audit.

    def audit(self, organization_id: UUID, invoice_id: UUID) -> AuditReport:
        """Recompute the invoice from the plan versions it recorded and the raw usage log up
        to its watermark, and compare it line by line. The tax decision is an input the
        invoice recorded (each line's tax codes and the rates), so it is reused, not re-made.
        Every event is read and aggregated from its properties (rating.from_events), not the
        store's totals the run used: the reference, independent of the stored values."""
        with from_events():
            return self._audit(organization_id, invoice_id)

    def _audit(self, organization_id: UUID, invoice_id: UUID) -> AuditReport:
        invoice = self.invoice(organization_id, invoice_id)
        stored = invoice.fees
        stored_codes = {fee.key: fee.tax_codes for fee in stored}
        recomputed = [
            fee.with_tax_codes(stored_codes.get(fee.key, fee.tax_codes))
            for fee in self._recomputed_fees(invoice)
        ]
        by_key = {fee.key: fee for fee in stored}
        again = {fee.key: fee for fee in recomputed}
        differences = []
        for key in sorted(by_key.keys() | again.keys()):
            before, after = by_key.get(key), again.get(key)
            if before is None or after is None or before.as_event() != after.as_event():
                differences.append(
                    {
                        "key": key,
                        "stored": None if before is None else before.as_event(),
                        "recomputed": None if after is None else after.as_event(),
                    }
                )
        return AuditReport(
            invoice_id=invoice.id,
            matches=not differences,
            differences=differences,
            recomputed=recomputed,
            stored=stored,
            content_hash=content_hash(invoice),
            watermark=invoice.watermark,
            plan_versions=[
                {
                    "external_subscription_id": p["external_subscription_id"],
                    "lago_plan_id": p["lago_plan_id"],
                    "plan_version": p["plan_version"],
                }
                for p in invoice.billing_periods
            ],
        )

    def _recomputed_fees(self, invoice: Invoice) -> list[FeeLine]:
        """The invoice's lines computed again from their inputs: a wallet top-up's from its
        purchase (§6.2), any other from the plan versions and the usage log it recorded."""
        if invoice.invoice_type == "one_off":  # Each line from the units and price it recorded.
            exponent = CURRENCY_EXPONENTS[invoice.currency]
            return [
                add_on_fee_line(
                    key=fee.key,
                    add_on_id=fee.charge_id or "",
                    add_on_code=fee.charge_code or "",
                    units=fee.units,
                    unit_amount_cents=fee.unit_amount.scaleb(exponent, EXACT),
                    name=fee.invoice_display_name or "",
                    from_at=fee.from_at,
                    to_at=fee.to_at,
                    tax_codes=fee.tax_codes,
                    currency_exponent=exponent,
                )
                for fee in invoice.fees
            ]
        top_up = credit_invoice_transaction(invoice)
        if top_up is not None:
            wallet: Wallet = self.billing.repository.get(top_up[0])
            purchase = wallet.transactions[top_up[1]]
            return [
                credit_fee_line(
                    wallet, top_up[1], purchase.amount_cents, purchase.name, purchase.created_at
                )
            ]
        organization_id = invoice.organization_id
        customer: Customer = self.billing.repository.get(invoice.customer_id)
        boundary = _invoice_boundary(invoice)
        draft = _Draft(customer, invoice.currency, boundary)
        recorded = {p["external_subscription_id"]: p for p in invoice.billing_periods}
        for external_id in sorted(recorded):
            subscription: Subscription = self.billing.repository.get(
                ids.subscription_id(organization_id, external_id)
            )
            if "advance_since" in recorded[external_id]:  # A pay-in-advance bill (§4.9).
                since = int(recorded[external_id]["advance_since"])
                self._bill_advance_lines(draft, subscription, since, invoice.watermark, boundary)
                continue
            draft.legacy_late_usage = "late_usage_since" not in recorded[external_id]
            if not draft.legacy_late_usage:  # The baseline it recorded.
                previous_watermark = recorded[external_id]["late_usage_since"]
            else:
                previous_watermark = self._previous_watermark(invoice, subscription)
            previous = {} if previous_watermark is None else {external_id: previous_watermark}
            self._bill_boundary(draft, subscription, boundary, invoice.watermark, previous)
        return draft.fees

    def _previous_watermark(self, invoice: Invoice, subscription: Subscription) -> int | None:
        """The watermark of this subscription's invoice before this one (late-usage baseline),
        as the billing run takes it: the latest earlier invoice that bills the subscription,
        the customer's or its own (backdated); None when this is its first."""
        boundary = _invoice_boundary(invoice)
        earlier = {b for b in _boundaries(subscription, boundary, self._plan) if b < boundary}
        for previous_boundary in sorted(earlier, reverse=True):
            for own in (None, subscription.external_id):
                previous_id = _boundary_invoice_id(
                    invoice.organization_id,
                    invoice.customer_id,
                    invoice.currency,
                    previous_boundary,
                    own,
                )
                try:
                    previous: Invoice = self.billing.repository.get(previous_id)
                except AggregateNotFoundError:
                    continue
                if subscription.external_id in _billed(previous):
                    return previous.watermark
        return None

    # Helpers.

    def _plan(self, phase: Phase) -> Any:
        # A plan's versions never change once made (ADR 0006): a cached plan serves every
        # version it has, and one without the phase's version is loaded afresh.
        plan = self.rating.aggregates.get(phase.plan.plan_id)
        if not plan.has_version(phase.plan.plan_version):
            plan = self.billing.repository.get(phase.plan.plan_id)
        return plan

    def _may_hold_credit(self, organization_id: UUID, external_customer_id: str) -> bool:
        """Whether the customer may hold a credit note or a wallet. Outside a run, always
        (they are then looked up). In a run, from the index as of the run's start (one read
        per organization), read again once either is created anywhere: one short read of the
        event store per call instead of two index catch-ups and lookups."""
        scope = _RUN.get()
        if scope is None:
            return True
        recorder = self.billing.recorder
        created = not scope.credit_checked and recorder.select_notifications(
            scope.credit_position, 1, topics=_CREDIT_TOPICS, inclusive_of_start=False
        )
        scope.credit_checked = True
        if created or organization_id not in scope.credit_holders:
            if created:
                scope.credit_holders.clear()
            # The position first: the index then holds at least every creation up to it.
            scope.credit_position = recorder.max_notification_id() or 0
            self.billing.catch_up()
            scope.credit_holders[organization_id] = self.billing.index.view.parent_keys(
                organization_id, ["credit_note", "wallet"]
            )
        return external_customer_id in scope.credit_holders[organization_id]

    def _organization(self, organization_id: UUID) -> Organization:
        scope = _RUN.get()
        if scope is None or organization_id not in scope.organizations:
            organization: Organization = self.billing.repository.get(organization_id)
            if scope is None:
                return organization
            scope.organizations[organization_id] = organization
        return scope.organizations[organization_id]

    def _taxes(self, organization_id: UUID) -> "_Taxes":
        scope = _RUN.get()
        if scope is not None and organization_id in scope.taxes:
            return scope.taxes[organization_id]
        taxes, _ = self.billing.taxes(organization_id, 1, 10_000)
        found = _Taxes(
            rates={tax.code: tax.rate for tax in taxes},
            defaults=tuple(tax.code for tax in taxes if tax.applied_to_organization),
        )
        if scope is not None:
            scope.taxes[organization_id] = found
        return found


@dataclass
class _RunScope:
    """What one billing run reads once: the usage watermark it bills up to, and per
    organization the organization (its name makes the invoice numbers' prefix) and its taxes.
    Held in a context variable, so concurrent runs and commands in other threads never see it.
    """

    watermark: int
    organizations: dict[UUID, Organization] = field(default_factory=dict)
    taxes: dict[UUID, "_Taxes"] = field(default_factory=dict)
    # Per organization, the customers holding a credit note or a wallet, as the index knew
    # them at credit_position (a notification id); looked for again once per saved batch.
    credit_holders: dict[UUID, set[str]] = field(default_factory=dict)
    credit_position: int = 0
    credit_checked: bool = False
    # Per organization, the ids of its invoices as the index knew them when first asked.
    indexed_invoices: dict[UUID, set[UUID]] = field(default_factory=dict)
    # Invoices decided, not yet saved (ADR 0027), by id, and the number sequences they took
    # their numbers from, by organization; the invoices a conflict made decide again.
    deferring: bool = True
    pending: dict[UUID, "_Pending"] = field(default_factory=dict)
    sequences: dict[UUID, NumberSequence] = field(default_factory=dict)
    reissued: dict[UUID, Invoice] = field(default_factory=dict)


@dataclass(frozen=True)
class _Pending:
    """An invoice a run decided, and what decides it again after a conflict."""

    invoice: Invoice
    organization_id: UUID
    draft: _Draft
    watermark: int
    now: datetime


_RUN: ContextVar[_RunScope | None] = ContextVar("tally_billing_run", default=None)


def _run_scope() -> _RunScope:
    scope = _RUN.get()
    assert scope is not None, "outside a billing run"
    return scope


def _credit_created() -> None:
    """The run made a credit note: the next invoice looks for it (it may consume it)."""
    scope = _RUN.get()
    if scope is not None:
        scope.credit_checked = False


_CREDIT_TOPICS = (get_topic(CreditNote.Created), get_topic(Wallet.Created))


@dataclass(frozen=True)
class _Taxes:
    """The organization's tax rates and its default taxes, for one billing decision."""

    rates: Mapping[str, Decimal]
    defaults: tuple[str, ...]

    def apply(self, customer: Customer, fee: FeeLine) -> FeeLine:
        """The fee's taxes by precedence: charge or plan (already on the line), then the
        customer's, then the organization's defaults (§9.1)."""
        codes = applicable_tax_codes(
            fee.tax_codes, [], customer.fields.get("tax_codes") or [], self.defaults
        )
        return fee.with_tax_codes(tuple(code for code in codes if code in self.rates))


def content_hash(invoice: Invoice) -> str:
    """SHA-256 of the invoice's recorded content, canonical JSON: the proof an auditor keeps."""
    content = {
        "id": str(invoice.id),
        "number": invoice.number,
        "status": invoice.status,
        "currency": invoice.currency,
        "issuing_date": invoice.issuing_date.isoformat(),
        "billing_periods": invoice.billing_periods,
        "fees": invoice.fee_events,
        "watermark": invoice.watermark,
        "tax_rates": {code: str(rate) for code, rate in sorted(invoice.tax_rates.items())},
    }
    encoded = json.dumps(content, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(encoded.encode()).hexdigest()


def _boundary_invoice_id(
    organization_id: UUID,
    customer_id: UUID,
    currency: str,
    boundary: datetime,
    own_subscription: str | None = None,
) -> UUID:
    """The customer's invoice of a boundary in a currency, or a subscription's own one
    (backdated after the consolidated one was final)."""
    key = [str(customer_id), currency, boundary.isoformat()]
    if own_subscription is not None:
        key.append(own_subscription)
    return ids.invoice_id(organization_id, *key)


def _phases(subscription: Subscription) -> Iterable[tuple[Phase, datetime]]:
    """Each phase with the instant it ends (the next phase, the subscription's end, or far)."""
    ends = [p.starts_at for p in subscription.phases[1:]]
    far = datetime.max.replace(tzinfo=UTC)
    ended_at = subscription.ended_at or far
    for phase, end in zip(subscription.phases, [*ends, far], strict=True):
        end = min(end, ended_at)
        if phase.starts_at < end:
            yield phase, end


def _schedule(subscription: Subscription, phase: Phase) -> BillingSchedule:
    return BillingSchedule(
        subscription_date=subscription.subscription_date,
        started_at=phase.starts_at,
        billing_time=subscription.billing_time,
        interval=phase.plan.interval,
        timezone=subscription.timezone,
    )


def _charges_periods(
    charges: BillingSchedule, period: Period, phase_start: datetime, phase_end: datetime
) -> list[Period]:
    """The charges periods within a billing period (one, or a year's months), as billed:
    within the phase."""
    spans = []
    index = charges.index_at(max(period.start_at, phase_start))
    while True:
        span = charges.period(index).clamp(
            start_at=phase_start, end_at=min(phase_end, period.end_at)
        )
        if span is None or span.start_at >= period.end_at:
            break
        spans.append(span)
        index += 1
    return spans


def _period_at(schedule: BillingSchedule, instant: datetime) -> Period:
    return schedule.period(schedule.index_at(instant))


def _closing_period(
    schedule: BillingSchedule, phase_start: datetime, phase_end: datetime, boundary: datetime
) -> Period | None:
    """The period of the schedule that closes at the boundary (cut at the phase end), if any."""
    if not phase_start < boundary <= phase_end:
        return None
    before = boundary - timedelta(microseconds=1)
    period = _period_at(schedule, before)
    end = min(period.end_at, phase_end)
    return Period(period.start_at, end) if end == boundary else None


def _boundaries(subscription: Subscription, until: datetime, plan_of: Any) -> Iterable[datetime]:
    """Every instant up to `until` at which the subscription has something to bill."""
    for phase, phase_end in _phases(subscription):
        plan = plan_of(phase)
        definition = plan.definition_shared(phase.plan.plan_version)
        schedule = _schedule(subscription, phase)
        charges = schedule.charges_schedule(bool(definition.get("bill_charges_monthly")))
        if definition["pay_in_advance"]:
            yield phase.starts_at
        for sched in (schedule, charges):
            index = sched.first_index
            while True:
                end = min(sched.period(index).end_at, phase_end)
                if end > until:
                    break
                yield end
                if end == phase_end:
                    break
                index += 1


def _adjustment_key(charge_key: str) -> str:
    """The key of the adjustment lines for a charge line's period and bucket (§8.5)."""
    assert charge_key.startswith("charge:"), charge_key
    return "adjustment" + charge_key[len("charge") :]


def _credited_since(invoice: Invoice | None, fee_key: str, origin: str) -> int:
    """What late-usage credit notes keyed by this origin credited of a line (§8.5)."""
    if invoice is None:
        return 0
    return sum(
        int(item["amount_cents"])
        for note in invoice.credit_notes_issued
        if (note["origin"] or "").startswith(origin)
        for item in note.get("items", [])
        if item["fee_key"] == fee_key
    )


def _in_advance(charge: Mapping[str, Any]) -> bool:
    return bool(charge.get("pay_in_advance"))


def _late_boundaries(
    subscription: Subscription, until: datetime, plan_of: Any
) -> Iterable[datetime]:
    """After a subscription's end, its charges schedule's next boundaries up to `until`, at
    most LATE_BOUNDARIES_MAX: where its late usage is billed when its customer has no other
    invoice then (§8.5). Usage arriving later than that is not billed (a documented limit)."""
    ended_at = subscription.ended_at
    if ended_at is None or ended_at > until:
        return
    phases = list(_phases(subscription))
    if not phases:
        return  # Ended as it started: nothing was ever billable.
    phase, _ = phases[-1]
    definition = plan_of(phase).definition_shared(phase.plan.plan_version)
    charges = _schedule(subscription, phase).charges_schedule(
        bool(definition.get("bill_charges_monthly"))
    )
    index = charges.index_at(ended_at - timedelta(microseconds=1))
    for _ in range(LATE_BOUNDARIES_MAX):
        index += 1
        boundary = charges.period(index).start_at
        if boundary > until:
            return
        if boundary > ended_at:
            yield boundary


def _billed(invoice: Invoice) -> set[str]:
    return {period["external_subscription_id"] for period in invoice.billing_periods}


def _reason(subscription: Subscription, phase: Phase, boundary: datetime) -> str:
    if subscription.ended_at is not None and boundary >= subscription.ended_at:
        return "subscription_terminating"
    if boundary == phase.starts_at:
        return "subscription_starting"
    return "subscription_periodic"


def _grace_period_days(customer: Customer) -> int:
    configuration = customer.fields.get("billing_configuration") or {}
    return int(configuration.get("invoice_grace_period") or 0)


def _empty(instant: datetime) -> Period:
    return Period(instant, instant + timedelta(microseconds=1))


def _jsonable(periods: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        {k: v.isoformat() if isinstance(v, datetime) else v for k, v in period.items()}
        for period in periods
    ]


def _invoice_boundary(invoice: Invoice) -> datetime:
    """The boundary an invoice was issued at, recorded in its billing periods."""
    return datetime.fromisoformat(invoice.billing_periods[0]["boundary"])


def _adjusted(line: FeeLine, delta_cents: int, exponent: int) -> FeeLine:
    return replace(
        line,
        amount_cents=delta_cents,
        precise_amount_cents=Decimal(delta_cents),
        unit_amount=Decimal(delta_cents).scaleb(-exponent),
    )


def _lifecycle_split(
    mode: str, invoice: Invoice, fee_key: str, amounts: CreditNoteAmounts
) -> tuple[int, int, int]:
    """§5.7: (credit, refund, offset) of a termination credit note.

    refund = min(total, paid share − used), where the paid share is the fee's part (tax
    included) of what was paid and used is the fee's amount (tax included) not credited now;
    offset (mode offset) takes what is still due; credit takes the rest.
    """
    total_cents = amounts.total_amount_cents
    if mode == "credit":
        return total_cents, 0, 0
    assert mode in ("refund", "offset"), mode
    totals = invoice.totals
    position = next(i for i, fee in enumerate(invoice.fees) if fee.key == fee_key)
    fee_cents = (
        invoice.fees[position].amount_cents + totals.taxes.lines[position].taxes_amount_cents
    )
    billed_cents = totals.sub_total_including_taxes_amount_cents
    paid_share_cents = (
        fee_cents * invoice.total_paid_amount_cents // billed_cents if billed_cents > 0 else 0
    )
    used_cents = fee_cents - total_cents
    refund = max(
        0, min(total_cents, paid_share_cents - used_cents, invoice.refundable_amount_cents)
    )
    offset = 0
    if mode == "offset":
        offset = min(total_cents - refund, invoice.offsettable_amount_cents)
    return total_cents - refund - offset, refund, offset


def _quantity(value: Decimal | int | None, field: str, default: Decimal) -> Decimal:
    """A one-off line's units or unit price: a non-negative exact number, the default if absent."""
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, Decimal)):
        raise InvalidValueError(field, "value_is_invalid", value)
    quantity = Decimal(value)
    if not quantity.is_finite() or quantity < 0:
        raise InvalidValueError(field, "value_is_invalid", value)
    return plain_decimal(quantity)  # The client sends 3 units as 3.0.
