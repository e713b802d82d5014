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
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any
from uuid import UUID

from eventsourcing.application import AggregateNotFoundError
from eventsourcing.persistence import IntegrityError

from application.billing import Billing
from application.credit_notes import available_credit_notes, issue_credit_note
from application.errors import ConcurrencyConflictError, NotFoundError
from application.rating import Rating
from application.usage_log import UsageLog
from application.vat import TaxEngine
from application.wallets import apply_wallets, settle_top_up
from domain import ids
from domain.charges import charge_minimum_true_up_cents, minimum_commitment_true_up_cents
from domain.credit_note import CreditNote, CreditNoteAmounts
from domain.customer import Customer
from domain.invoice import Invoice, NumberSequence, document_prefix, invoice_number
from domain.invoicing import (
    FeeLine,
    charge_fee_line,
    period_key,
    subscription_fee,
    true_up_line,
)
from domain.limits import COMMAND_RETRIES_MAX
from domain.money import CURRENCY_EXPONENTS, prorate_cents
from domain.organization import Organization
from domain.periods import (
    BillingSchedule,
    Period,
    base_fee_period,
    local_date,
    local_days,
    local_midnight_at,
)
from domain.subscription import Phase, Subscription
from domain.taxes import applicable_tax_codes
from domain.vat import supply_date_of

INVOICE_SERIES = "invoice"


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
    own_subscription: str | None = None  # Set for a subscription billed apart (backdated).


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

    # The billing run.

    def run(self, now: datetime, organization_id: UUID | None = None) -> list[Invoice]:
        """Bill every boundary up to now, for every customer; safe to repeat or race."""
        organizations = [organization_id] if organization_id else self.billing.organization_ids()
        invoices: list[Invoice] = []
        for org in organizations:
            subscriptions = self.billing._all(Subscription, "subscription", org)
            by_customer: dict[str, list[Subscription]] = defaultdict(list)
            for subscription in subscriptions:
                if subscription.canceled_at is None and subscription.subscription_at <= now:
                    by_customer[subscription.external_customer_id].append(subscription)
            for external_customer_id, customer_subscriptions in sorted(by_customer.items()):
                invoices.extend(
                    self.bill_customer(org, external_customer_id, customer_subscriptions, now)
                )
        return invoices

    def bill_customer(
        self,
        organization_id: UUID,
        external_customer_id: str,
        subscriptions: list[Subscription],
        now: datetime,
    ) -> list[Invoice]:
        customer: Customer = self.billing.repository.get(
            ids.customer_id(organization_id, external_customer_id)
        )
        watermark = self.usage.watermark()
        boundaries: set[datetime] = set()
        for subscription in subscriptions:
            boundaries.update(b for b in _boundaries(subscription, now, self._plan) if b <= now)
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
                invoice = draft.issued
                if invoice is None and draft.billing_periods:
                    invoice = self._issue(organization_id, draft, watermark, now)
                if invoice is not None:
                    invoices.append(invoice)
                    for period in invoice.billing_periods:
                        previous_watermark[period["external_subscription_id"]] = invoice.watermark
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
        key = [str(draft.customer.id), draft.currency, draft.boundary.isoformat()]
        if draft.own_subscription is not None:
            key.append(draft.own_subscription)
        return ids.invoice_id(organization_id, *key)

    def _issued(self, organization_id: UUID, draft: "_Draft") -> Invoice | None:
        """The boundary's invoice if it is no longer a draft (a draft is recomputed)."""
        try:
            invoice: Invoice = self.billing.repository.get(self._invoice_id(organization_id, draft))
        except AggregateNotFoundError:
            return None
        return None if invoice.status == "draft" else invoice

    def _issue(
        self, organization_id: UUID, draft: _Draft, watermark: int, now: datetime
    ) -> Invoice | None:
        """Create the boundary's invoice (finalized at once without a grace period), or refresh
        its draft; an invoice already final is left alone."""
        invoice_id = self._invoice_id(organization_id, draft)
        grace_days = _grace_period_days(draft.customer)
        timezone = draft.customer.timezone or "UTC"
        decision = (
            self.tax_engine.taxes_for(
                organization_id, draft.customer, supply_date_of(draft.boundary, timezone)
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
                fee if fee.fee_type == "credit" else replace(fee, tax_codes=codes)
                for fee in draft.fees
            ]
            used_rates = {line.tax_code: line.rate for line in decision.taxes}
        for _ in range(COMMAND_RETRIES_MAX):
            try:
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
            credits: list[CreditNote] = []
            # A pending tax decision (a VAT number VIES has not answered yet) keeps a draft.
            pending = decision is not None and decision.pending
            if now >= draft.boundary + timedelta(days=grace_days) and not pending:
                credits = self._apply_customer_credit(invoice)
                sequence = self._finalize(invoice, now, timezone, grace_days > 0)
            try:
                self.billing.save(invoice, sequence, *credits)
            except IntegrityError:
                continue  # Another run created it, or took the number: reload and decide again.
            self.billing.catch_up()
            return invoice
        raise ConcurrencyConflictError("invoice", invoice_id)

    def _finalize(
        self, invoice: Invoice, now: datetime, timezone: str, on_finalization_date: bool
    ) -> NumberSequence:
        organization: Organization = self.billing.repository.get(invoice.organization_id)
        try:
            sequence: NumberSequence = self.billing.repository.get(
                ids.sequence_id(invoice.organization_id, INVOICE_SERIES)
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
        due_cents = invoice.totals.total_amount_cents
        consumed: list[CreditNote] = []
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
        definition = self._plan(phase).definition(phase.plan.plan_version)
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
            self.billing.catch_up()
            note: CreditNote = aggregates[0]
            return note
        raise ConcurrencyConflictError("invoice", fee_key)

    def _advance_invoice(
        self, subscription: Subscription, billed_at: datetime, fee_key: str
    ) -> Invoice | None:
        """The invoice that billed a base fee in advance: the customer's invoice of the period
        start, or the subscription's own one (backdated after the consolidated one was final)."""
        phase = subscription.phase_at(billed_at)
        key = [str(subscription.customer_id), phase.plan.amount_currency, billed_at.isoformat()]
        for parts in (key, [*key, subscription.external_id]):
            try:
                invoice: Invoice = self.billing.repository.get(
                    ids.invoice_id(subscription.organization_id, *parts)
                )
            except AggregateNotFoundError:
                continue
            if any(fee["key"] == fee_key for fee in invoice.fee_events):
                return invoice
        return None

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
        for phase, phase_end in _phases(subscription):
            plan = self._plan(phase)
            definition = plan.definition(phase.plan.plan_version)
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
            if closing is not None:
                rated = self.rating.rate_charges(
                    subscription.organization_id,
                    external_id,
                    definition,
                    closing,
                    subscription.timezone,
                    up_to_position=watermark,
                )
                for charge in rated:
                    charge_lines = [
                        charge_fee_line(
                            fee,
                            **common,
                            period=closing,
                            tax_codes=charge.charge.get("tax_codes") or plan_taxes,
                        )
                        for fee in charge.fees
                        if not charge.charge.get("pay_in_advance")
                    ]
                    lines.extend(charge_lines)
                    minimum = charge.charge.get("min_amount_cents") or 0
                    if minimum and charge_lines:
                        index = charges.index_at(closing.start_at)
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
                                    f"{period_key(closing)}",
                                    fee_type="charge",
                                    cents=top_up,
                                    **common,
                                    period=closing,
                                    invoice_display_name="Minimum spending true-up",
                                    tax_codes=charge.charge.get("tax_codes") or plan_taxes,
                                    currency_exponent=exponent,
                                    charge_id=charge.charge["lago_id"],
                                    charge_code=charge.charge["code"],
                                )
                            )
            # Late usage of this phase's earlier periods, or of a phase that ended before.
            late_before = closing.start_at if closing is not None else phase_end
            if closing is not None or phase_end < boundary:
                lines.extend(
                    self._late_adjustments(
                        subscription,
                        definition,
                        charges,
                        phase,
                        late_before,
                        watermark,
                        previous_watermark.get(external_id),
                        common,
                        plan_taxes,
                    )
                )
            # The base fee: in arrears for the period closing here, in advance for the next.
            amount_cents = definition["amount_cents"]
            arrears = _closing_period(schedule, phase.starts_at, phase_end, boundary)
            trial_ended_at = subscription.trial_ended_at()
            if arrears is not None and not definition["pay_in_advance"]:
                index = schedule.index_at(arrears.start_at)
                lines.append(
                    subscription_fee(
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
                )
                commitment = definition.get("minimum_commitment")
                if commitment:
                    fees_cents = sum(line.amount_cents for line in lines)
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
    ) -> list[FeeLine]:
        """Usage stamped in the phase's periods already invoiced (those before `late_before`)
        that arrived since (§8.5): the difference between the period rated now and as last
        invoiced, positive parts only, as lines. `previous` is the watermark of the
        subscription's previous invoice (None: this is its first), which may be 0."""
        if previous is None or late_before <= phase.starts_at:
            return []
        late_periods: set[int] = set()
        first = _period_at(charges, phase.starts_at)
        for charge in definition.get("charges", []):
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
        lines = []
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
            for key, fee in sorted(now.items(), key=lambda item: item[1].bucket.sort_key()):
                delta = fee.amount_cents - before.get(key, 0)
                if delta > 0:
                    charge = next(c for c in definition["charges"] if c["lago_id"] == fee.charge_id)
                    line = charge_fee_line(
                        fee,
                        **common,
                        period=period,
                        tax_codes=charge.get("tax_codes") or plan_taxes,
                        key_prefix="adjustment",
                    )
                    lines.append(
                        _adjusted(line, delta, CURRENCY_EXPONENTS[definition["amount_currency"]])
                    )
        return lines

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

    def void(self, organization_id: UUID, invoice_id: UUID, now: datetime) -> Invoice:
        def decide() -> Invoice:
            invoice = self.invoice(organization_id, invoice_id)
            invoice.void(now)
            return invoice

        return self.billing._command("invoice", invoice_id, decide)

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
        invoice recorded (each line's tax codes and the rates), so it is reused, not re-made."""
        invoice = self.invoice(organization_id, invoice_id)
        customer: Customer = self.billing.repository.get(invoice.customer_id)
        stored = invoice.fees
        boundary = _invoice_boundary(invoice)
        draft = _Draft(customer, invoice.currency, boundary)
        for external_id in sorted({p["external_subscription_id"] for p in invoice.billing_periods}):
            subscription: Subscription = self.billing.repository.get(
                ids.subscription_id(organization_id, external_id)
            )
            previous_watermark = self._previous_watermark(invoice, subscription)
            previous = {} if previous_watermark is None else {external_id: previous_watermark}
            self._bill_boundary(draft, subscription, boundary, invoice.watermark, previous)
        stored_codes = {fee.key: fee.tax_codes for fee in stored}
        recomputed = [
            replace(fee, tax_codes=stored_codes.get(fee.key, fee.tax_codes)) for fee in draft.fees
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

    def _previous_watermark(self, invoice: Invoice, subscription: Subscription) -> int | None:
        """The watermark of this subscription's invoice before this one (late-usage baseline),
        as the billing run takes it: the latest earlier invoice that bills the subscription,
        the customer's or its own (backdated); None when this is its first."""
        boundary = _invoice_boundary(invoice)
        earlier = {b for b in _boundaries(subscription, boundary, self._plan) if b < boundary}
        for previous_boundary in sorted(earlier, reverse=True):
            key = [str(invoice.customer_id), invoice.currency, previous_boundary.isoformat()]
            for parts in (key, [*key, subscription.external_id]):
                try:
                    previous: Invoice = self.billing.repository.get(
                        ids.invoice_id(invoice.organization_id, *parts)
                    )
                except AggregateNotFoundError:
                    continue
                if subscription.external_id in _billed(previous):
                    return previous.watermark
        return None

    # Helpers.

    def _plan(self, phase: Phase) -> Any:
        return self.billing.repository.get(phase.plan.plan_id)

    def _taxes(self, organization_id: UUID) -> "_Taxes":
        taxes, _ = self.billing.taxes(organization_id, 1, 10_000)
        return _Taxes(
            rates={tax.code: tax.rate for tax in taxes},
            defaults=tuple(tax.code for tax in taxes if tax.applied_to_organization),
        )


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
        return replace(fee, tax_codes=tuple(code for code in codes if code in self.rates))


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
        definition = plan.definition(phase.plan.plan_version)
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
