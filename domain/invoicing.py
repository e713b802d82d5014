"""Invoice lines and totals, purely: subscription fees, charge fees, true-ups, taxes (§8.2)."""

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from domain.charges import charge_amount
from domain.money import (
    CURRENCY_EXPONENTS,
    EXACT,
    ROUNDING,
    display_quotient,
    prorate_cents,
    round_half_up,
)
from domain.periods import BillingSchedule, Period, base_fee_period, local_days
from domain.rating import (
    EVENT_VALUE_MODELS,
    BucketKey,
    ChargeFee,
    MetricRule,
    bucket_properties,
    classify,
)
from domain.taxes import InvoiceTaxes, invoice_taxes
from domain.usage import UsageEvent, aggregate

FEE_TYPES = ("subscription", "charge", "commitment", "adjustment", "add_on")
# Pay-in-advance charges: aggregations billed per event (§4.9).
ADVANCE_AGGREGATION_TYPES = ("count_agg", "sum_agg", "unique_count_agg")


@dataclass(frozen=True)
class FeeLine:
    """One invoice line with every input its amount came from, so it rebuilds without the log.

    `key` identifies the line within its invoice (the audit compares lines by key). Amounts:
    `precise_amount_cents` exact, `amount_cents` rounded once half-up (`rounding`).
    """

    key: str
    fee_type: str
    external_subscription_id: str
    plan_id: str
    plan_version: int
    from_at: datetime
    to_at: datetime
    units: Decimal
    events_count: int
    unit_amount: Decimal
    precise_amount_cents: Decimal
    amount_cents: int
    invoice_display_name: str | None = None
    charge_id: str | None = None
    charge_code: str | None = None
    charge_model: str | None = None
    metric_code: str | None = None
    filter_values: Mapping[str, Sequence[str]] | None = None
    grouped_by: Mapping[str, str | None] = field(default_factory=dict)
    tax_codes: tuple[str, ...] = ()
    adjusted_invoice_id: str | None = None
    rounding: str = ROUNDING
    # A pay-in-advance charge's fee, billed for one event at ingestion (§4.9); recorded only
    # when set, so lines recorded before these fields existed keep their exact shape.
    pay_in_advance: bool = False
    event_transaction_id: str | None = None

    def with_tax_codes(self, tax_codes: tuple[str, ...]) -> "FeeLine":
        """This line with these tax codes. A billing run asks it of every line: the fields are
        copied as they are (nothing is checked at construction), which dataclasses.replace's
        re-initialisation made ten times slower."""
        if tax_codes == self.tax_codes:
            return self
        line = object.__new__(FeeLine)
        line.__dict__.update(self.__dict__, tax_codes=tax_codes)
        return line

    def as_event(self) -> dict[str, Any]:
        recorded = self._as_event()
        if self.pay_in_advance:
            recorded["pay_in_advance"] = True
            recorded["event_transaction_id"] = self.event_transaction_id
        return recorded

    def _as_event(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "fee_type": self.fee_type,
            "external_subscription_id": self.external_subscription_id,
            "plan_id": self.plan_id,
            "plan_version": self.plan_version,
            "from_at": self.from_at.isoformat(),
            "to_at": self.to_at.isoformat(),
            "units": str(self.units),
            "events_count": self.events_count,
            "unit_amount": str(self.unit_amount),
            "precise_amount_cents": str(self.precise_amount_cents),
            "amount_cents": self.amount_cents,
            "invoice_display_name": self.invoice_display_name,
            "charge_id": self.charge_id,
            "charge_code": self.charge_code,
            "charge_model": self.charge_model,
            "metric_code": self.metric_code,
            "filter_values": (
                None
                if self.filter_values is None
                else {k: list(v) for k, v in self.filter_values.items()}
            ),
            "grouped_by": dict(self.grouped_by),
            "tax_codes": list(self.tax_codes),
            "adjusted_invoice_id": self.adjusted_invoice_id,
            "rounding": self.rounding,
        }

    @classmethod
    def from_event(cls, data: Mapping[str, Any]) -> "FeeLine":
        return cls(
            key=data["key"],
            fee_type=data["fee_type"],
            external_subscription_id=data["external_subscription_id"],
            plan_id=data["plan_id"],
            plan_version=data["plan_version"],
            from_at=datetime.fromisoformat(data["from_at"]),
            to_at=datetime.fromisoformat(data["to_at"]),
            units=Decimal(data["units"]),
            events_count=data["events_count"],
            unit_amount=Decimal(data["unit_amount"]),
            precise_amount_cents=Decimal(data["precise_amount_cents"]),
            amount_cents=data["amount_cents"],
            invoice_display_name=data["invoice_display_name"],
            charge_id=data["charge_id"],
            charge_code=data["charge_code"],
            charge_model=data["charge_model"],
            metric_code=data["metric_code"],
            filter_values=data["filter_values"],
            grouped_by=data["grouped_by"],
            tax_codes=tuple(data["tax_codes"]),
            adjusted_invoice_id=data["adjusted_invoice_id"],
            rounding=data["rounding"],
            pay_in_advance=bool(data.get("pay_in_advance", False)),
            event_transaction_id=data.get("event_transaction_id"),
        )


def period_key(period: Period) -> str:
    return f"{period.start_at.isoformat()}/{period.end_at.isoformat()}"


def subscription_fee(
    *,
    external_subscription_id: str,
    plan_id: str,
    plan_version: int,
    amount_cents: int,
    currency_exponent: int,
    schedule: BillingSchedule,
    index: int,
    trial_ended_at: datetime | None,
    ended_at: datetime | None,
    invoice_display_name: str | None,
    tax_codes: Sequence[str],
) -> FeeLine:
    """The base fee of period `index`, prorated by local days when partial (§5.3): cut at the
    start, at the trial end (§5.4) and at a termination, whose day counts as used (§5.7)."""
    full = schedule.full_period(index)
    billed = schedule.period(index)
    if ended_at is not None and ended_at < billed.end_at:
        billed = Period(billed.start_at, max(ended_at, billed.start_at + _MICROSECOND))
    due = base_fee_period(billed, trial_ended_at)
    period_days = local_days(full, schedule.timezone)
    days = 0 if due is None else min(local_days(due, schedule.timezone), period_days)
    cents = prorate_cents(amount_cents, days, period_days)
    precise = display_quotient(amount_cents * days, period_days)
    return FeeLine(
        key=f"subscription:{external_subscription_id}:{period_key(full)}",
        fee_type="subscription",
        external_subscription_id=external_subscription_id,
        plan_id=plan_id,
        plan_version=plan_version,
        from_at=billed.start_at,
        to_at=billed.end_at,
        units=Decimal(1),
        events_count=0,
        unit_amount=precise.scaleb(-currency_exponent, EXACT),
        precise_amount_cents=precise,
        amount_cents=cents,
        invoice_display_name=invoice_display_name,
        tax_codes=tuple(tax_codes),
    )


def charge_fee_line(
    fee: ChargeFee,
    *,
    external_subscription_id: str,
    plan_id: str,
    plan_version: int,
    period: Period,
    tax_codes: Sequence[str],
    key_prefix: str = "charge",
    adjusted_invoice_id: str | None = None,
) -> FeeLine:
    grouped_by = fee.bucket.grouped_by
    # No group (most lines): the text json.dumps gives for an empty tuple, without the call.
    grouped = json.dumps(grouped_by, separators=(",", ":")) if grouped_by else "[]"
    return FeeLine(
        key=(
            f"{key_prefix}:{external_subscription_id}:{fee.charge_id}:{fee.bucket.filter_index}:"
            f"{grouped}:{period_key(period)}"
        ),
        fee_type="adjustment" if key_prefix == "adjustment" else "charge",
        external_subscription_id=external_subscription_id,
        plan_id=plan_id,
        plan_version=plan_version,
        from_at=period.start_at,
        to_at=period.end_at,
        units=fee.units,
        events_count=fee.events_count,
        unit_amount=fee.amount.unit_amount,
        precise_amount_cents=fee.amount.precise_amount_cents,
        amount_cents=fee.amount_cents,
        invoice_display_name=fee.invoice_display_name,
        charge_id=fee.charge_id,
        charge_code=fee.charge_code,
        charge_model=fee.charge_model,
        metric_code=fee.metric_code,
        filter_values=fee.filter_values,
        grouped_by=fee.grouped_by,
        tax_codes=tuple(tax_codes),
        adjusted_invoice_id=adjusted_invoice_id,
    )


def add_on_fee_line(
    *,
    key: str,
    add_on_id: str,
    add_on_code: str,
    units: Decimal,
    unit_amount_cents: Decimal,
    name: str,
    from_at: datetime,
    to_at: datetime,
    tax_codes: Sequence[str],
    currency_exponent: int,
) -> FeeLine:
    """A one-off invoice's line for an add-on: units × unit price, rounded once half-up."""
    precise = EXACT.multiply(units, unit_amount_cents)
    return FeeLine(
        key=key,
        fee_type="add_on",
        external_subscription_id="",
        plan_id="",
        plan_version=0,
        from_at=from_at,
        to_at=to_at,
        units=units,
        events_count=0,
        unit_amount=unit_amount_cents.scaleb(-currency_exponent, EXACT),
        precise_amount_cents=precise,
        amount_cents=round_half_up(precise),
        invoice_display_name=name,
        charge_id=add_on_id,
        charge_code=add_on_code,
        tax_codes=tuple(tax_codes),
    )


def true_up_line(
    *,
    key: str,
    fee_type: str,
    cents: int,
    external_subscription_id: str,
    plan_id: str,
    plan_version: int,
    period: Period,
    invoice_display_name: str | None,
    tax_codes: Sequence[str],
    currency_exponent: int,
    charge_id: str | None = None,
    charge_code: str | None = None,
) -> FeeLine:
    """A minimum's true-up (§4.10, §4.11): a whole-cent line topping fees up to the minimum."""
    return FeeLine(
        key=key,
        fee_type=fee_type,
        external_subscription_id=external_subscription_id,
        plan_id=plan_id,
        plan_version=plan_version,
        from_at=period.start_at,
        to_at=period.end_at,
        units=Decimal(1),
        events_count=0,
        unit_amount=Decimal(cents).scaleb(-currency_exponent, EXACT),
        precise_amount_cents=Decimal(cents),
        amount_cents=cents,
        invoice_display_name=invoice_display_name,
        charge_id=charge_id,
        charge_code=charge_code,
        tax_codes=tuple(tax_codes),
    )


@dataclass(frozen=True)
class Totals:
    """§8.2, for what Tally bills so far (no coupons or progressive billing yet)."""

    fees_amount_cents: int
    taxes: InvoiceTaxes
    credit_notes_amount_cents: int = 0
    prepaid_credit_amount_cents: int = 0

    @property
    def taxes_amount_cents(self) -> int:
        return self.taxes.taxes_amount_cents

    @property
    def sub_total_excluding_taxes_amount_cents(self) -> int:
        return self.fees_amount_cents

    @property
    def sub_total_including_taxes_amount_cents(self) -> int:
        return self.fees_amount_cents + self.taxes_amount_cents

    @property
    def total_amount_cents(self) -> int:
        return (
            self.sub_total_including_taxes_amount_cents
            - self.credit_notes_amount_cents
            - self.prepaid_credit_amount_cents
        )


def totals(fees: Sequence[FeeLine], rates: Mapping[str, Decimal]) -> Totals:
    """Taxes per rate over the rounded lines (§9.2), then the invoice's totals."""
    lines = [(fee.amount_cents, [(code, rates[code]) for code in fee.tax_codes]) for fee in fees]
    return Totals(
        fees_amount_cents=sum(fee.amount_cents for fee in fees),
        taxes=invoice_taxes(lines),
    )


@dataclass(frozen=True)
class AdvanceFee:
    """One event's pay-in-advance fee (§4.9): what its arrival added to its bucket's bill."""

    event: UsageEvent
    bucket: BucketKey
    filter_values: Mapping[str, Sequence[str]] | None
    invoice_display_name: str | None
    units: Decimal  # The billed units' increase (the high-water mark's).
    unit_amount: Decimal
    precise_amount_cents: Decimal
    amount_cents: int


def advance_fees(
    charge: Mapping[str, Any],
    metric: MetricRule,
    currency: str,
    period: Period,
    billed: Sequence[UsageEvent],
    kept: Sequence[UsageEvent],
    new: Sequence[UsageEvent],
) -> list[AdvanceFee]:
    """The fee of each new event of a pay-in-advance charge in one charges period (§4.9).

    `billed` are the period's events as the previous advance bill saw them, `kept` those of
    them still live now, `new` the events since; each in committed order. Per bucket the billed
    units follow a high-water mark (decreases and removes never refund within the period) and an
    event pays model(after) − what the bucket paid so far, the first one from nothing (so it pays
    a graduated first range's flat amount). Each fee is a difference of rounded totals: the fees
    of a period always sum, to the cent, to the model of its highest units.
    """
    by_bucket: dict[BucketKey, tuple[list[UsageEvent], list[UsageEvent], list[UsageEvent]]] = {}
    for index, events in enumerate((billed, kept, new)):
        for usage in events:
            key = classify(charge, metric, usage.properties)
            by_bucket.setdefault(key, ([], [], []))[index].append(usage)
    filters = charge.get("filters", [])
    fees = []
    for key in sorted(by_bucket, key=BucketKey.sort_key):
        bucket_billed, current, bucket_new = by_bucket[key]
        properties = bucket_properties(charge, key.filter_index)

        high = max(_running_units(metric, bucket_billed, period), default=Decimal(0))
        paid_cents, paid_precise = (
            _advance_price(charge, metric, properties, currency, high, bucket_billed)
            if bucket_billed
            else (0, Decimal(0))
        )
        kept_count = len(current)
        running = _running_units(metric, [*current, *bucket_new], period)
        for position, usage in enumerate(bucket_new):
            current.append(usage)
            after = max(high, running[kept_count + position])
            cents, precise = _advance_price(charge, metric, properties, currency, after, current)
            fee_cents = max(0, cents - paid_cents)
            fee_precise = max(Decimal(0), EXACT.subtract(precise, paid_precise))
            units = after - high
            fees.append(
                AdvanceFee(
                    event=usage,
                    bucket=key,
                    filter_values=None
                    if key.filter_index < 0
                    else filters[key.filter_index]["values"],
                    invoice_display_name=(
                        charge.get("invoice_display_name")
                        if key.filter_index < 0
                        else filters[key.filter_index].get("invoice_display_name")
                    ),
                    units=units,
                    unit_amount=(
                        display_quotient(fee_precise, units).scaleb(
                            -CURRENCY_EXPONENTS[currency], EXACT
                        )
                        if units > 0
                        else Decimal(0)
                    ),
                    precise_amount_cents=fee_precise,
                    amount_cents=fee_cents,
                )
            )
            high = after
            paid_cents, paid_precise = max(paid_cents, cents), max(paid_precise, precise)
    return fees


def advance_fee_line(
    fee: AdvanceFee,
    charge: Mapping[str, Any],
    *,
    external_subscription_id: str,
    plan_id: str,
    plan_version: int,
    period: Period,
    tax_codes: Sequence[str],
) -> FeeLine:
    return FeeLine(
        key=f"advance:{external_subscription_id}:{charge['lago_id']}:{fee.event.transaction_id}",
        fee_type="charge",
        external_subscription_id=external_subscription_id,
        plan_id=plan_id,
        plan_version=plan_version,
        from_at=period.start_at,
        to_at=period.end_at,
        units=fee.units,
        events_count=1,
        unit_amount=fee.unit_amount,
        precise_amount_cents=fee.precise_amount_cents,
        amount_cents=fee.amount_cents,
        invoice_display_name=fee.invoice_display_name,
        charge_id=charge["lago_id"],
        charge_code=charge["code"],
        charge_model=charge["charge_model"],
        metric_code=charge["billable_metric_code"],
        filter_values=fee.filter_values,
        grouped_by=dict(fee.bucket.grouped_by),
        tax_codes=tuple(tax_codes),
        pay_in_advance=True,
        event_transaction_id=fee.event.transaction_id,
    )


def _advance_price(
    charge: Mapping[str, Any],
    metric: MetricRule,
    properties: Mapping[str, Any],
    currency: str,
    units: Decimal,
    events: Sequence[UsageEvent],
) -> tuple[int, Decimal]:
    model = charge["charge_model"]
    values = (
        [_value(metric, e) for e in sorted(events, key=lambda e: e.timestamp)]
        if model in EVENT_VALUE_MODELS
        else []
    )
    amount = charge_amount(
        model, properties, units, currency, events_count=len(events), event_values=values
    )
    return amount.amount_cents, amount.precise_amount_cents


def _running_units(
    metric: MetricRule, events: Sequence[UsageEvent], period: Period
) -> list[Decimal]:
    """A bucket's units after each of these events, unrounded (§3.8: no rounding per event)."""
    if metric.aggregation_type == "count_agg":
        return [Decimal(n) for n in range(1, len(events) + 1)]
    if metric.aggregation_type == "sum_agg":
        total, running = Decimal(0), []
        for usage in events:
            total = EXACT.add(total, _value(metric, usage))
            running.append(total)
        return running
    assert metric.aggregation_type == "unique_count_agg", metric.aggregation_type
    return [
        aggregate(
            metric.aggregation_type, metric.field_name, events[:end], period.start_at, period.end_at
        ).units
        for end in range(1, len(events) + 1)
    ]


def _value(metric: MetricRule, event: UsageEvent) -> Decimal:
    assert metric.field_name is not None, metric.code
    return Decimal(event.properties.get(metric.field_name, "0"))


def with_tax_codes(fee: FeeLine, tax_codes: Sequence[str]) -> FeeLine:
    return replace(fee, tax_codes=tuple(tax_codes))


_MICROSECOND = timedelta(microseconds=1)
