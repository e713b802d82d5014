"""Invoice lines and totals, purely: subscription fees, charge fees, true-ups, taxes (§8.2)."""

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from domain.money import EXACT, ROUNDING, display_quotient, prorate_cents
from domain.periods import BillingSchedule, Period, base_fee_period, local_days
from domain.rating import ChargeFee
from domain.taxes import InvoiceTaxes, invoice_taxes

FEE_TYPES = ("subscription", "charge", "commitment", "adjustment")


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

    def as_event(self) -> dict[str, Any]:
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
    grouped = json.dumps(fee.bucket.grouped_by, separators=(",", ":"))
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


def with_tax_codes(fee: FeeLine, tax_codes: Sequence[str]) -> FeeLine:
    return replace(fee, tax_codes=tuple(tax_codes))


_MICROSECOND = timedelta(microseconds=1)
