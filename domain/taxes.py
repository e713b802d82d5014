"""Taxes, pure: which codes apply to a fee (§9.1) and an invoice's tax per rate (§9.2)."""

from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Context, Decimal, DivisionByZero, FloatOperation, InvalidOperation, Overflow
from typing import Final

from domain.limits import DECIMAL_PLACES_MAX
from domain.money import EXACT, ROUNDING, allocate_cents, tax_cents

_PLACES: Final = Decimal(1).scaleb(-DECIMAL_PLACES_MAX)
# The average rate need not terminate: rounded half-up to 15 places, for display only.
_QUOTIENT: Final = Context(
    prec=80, rounding=ROUNDING, traps=[InvalidOperation, FloatOperation, DivisionByZero, Overflow]
)


def applicable_tax_codes(
    charge_tax_codes: Sequence[str],
    plan_tax_codes: Sequence[str],
    customer_tax_codes: Sequence[str],
    organization_tax_codes: Sequence[str],
) -> tuple[str, ...]:
    """§9.1 for a charge fee: the most specific non-empty level wins; levels never add up."""
    return most_specific_tax_codes(
        charge_tax_codes, plan_tax_codes, customer_tax_codes, organization_tax_codes
    )


def most_specific_tax_codes(*levels: Sequence[str]) -> tuple[str, ...]:
    """§9.1 for any fee: levels from most to least specific (fee, item, plan, customer,
    organization); every code of the first non-empty level applies, each once."""
    for codes in levels:
        if codes:
            return tuple(dict.fromkeys(codes))
    return ()


@dataclass(frozen=True)
class AppliedTax:
    """One tax code at one rate over a taxable base: on the invoice, or one line's share."""

    tax_code: str
    rate: Decimal  # Percent.
    taxable_base_cents: int
    tax_cents: int


@dataclass(frozen=True)
class LineTaxes:
    """A line's shares of the invoice's taxes (informational: tax is computed per rate)."""

    applied_taxes: tuple[AppliedTax, ...]
    taxes_amount_cents: int


@dataclass(frozen=True)
class InvoiceTaxes:
    applied_taxes: tuple[AppliedTax, ...]  # One per (code, rate), in order of first use.
    lines: tuple[LineTaxes, ...]  # One per input line, in order.
    taxes_amount_cents: int  # Σ applied_taxes, so Σ lines too.
    taxes_rate: Decimal  # Fee-weighted average rate, percent, for display only.


def invoice_taxes(lines: Sequence[tuple[int, Sequence[tuple[str, Decimal]]]]) -> InvoiceTaxes:
    """§9.2: per tax code and rate, round_half_up(Σ line nets × rate / 100), once.

    Each line is (net cents: rounded amount minus its coupon share, [(tax code, rate percent)]).
    A code is keyed with its rate, so lines taxed at an older rate of the same code (§8.5
    adjustments, D10) form their own base. Each rate's tax is split over its lines in proportion
    to their nets by largest remainder, so the line shares add up to it exactly.
    """
    bases: dict[tuple[str, Decimal], list[int]] = {}  # (code, rate) → indices of its lines
    for index, (net_cents, taxes) in enumerate(lines):
        assert isinstance(net_cents, int) and net_cents >= 0, net_cents
        for code, rate in taxes:
            assert isinstance(rate, Decimal) and rate.is_finite() and rate >= 0, rate
            members = bases.setdefault((code, rate), [])
            assert index not in members, (index, code)  # A code twice on one line: a bug.
            members.append(index)
    invoice: list[AppliedTax] = []
    shares: list[list[AppliedTax]] = [[] for _ in lines]
    for (code, rate), members in bases.items():
        nets = [lines[index][0] for index in members]
        base_cents = sum(nets)
        total_cents = tax_cents(base_cents, rate)
        invoice.append(AppliedTax(code, rate, base_cents, total_cents))
        parts = allocate_cents(total_cents, nets) if base_cents > 0 else [0] * len(nets)
        for index, net_cents, part in zip(members, nets, parts, strict=True):
            shares[index].append(AppliedTax(code, rate, net_cents, part))
    taxes_amount_cents = sum(tax.tax_cents for tax in invoice)
    fees_cents = sum(net_cents for net_cents, _ in lines)
    weighted = sum(
        (EXACT.multiply(tax.taxable_base_cents, tax.rate) for tax in invoice), Decimal(0)
    )
    taxes_rate = Decimal(0)
    if fees_cents > 0 and weighted > 0:
        taxes_rate = _display(weighted, fees_cents)
    return InvoiceTaxes(
        applied_taxes=tuple(invoice),
        lines=tuple(LineTaxes(tuple(line), sum(tax.tax_cents for tax in line)) for line in shares),
        taxes_amount_cents=taxes_amount_cents,
        taxes_rate=taxes_rate,
    )


def _display(numerator: Decimal, denominator: int) -> Decimal:
    """numerator / denominator rounded half-up to 15 places, trailing zeros dropped."""
    quotient = _QUOTIENT.divide(numerator, denominator).quantize(_PLACES, context=_QUOTIENT)
    normalized = quotient.normalize(_QUOTIENT)
    exponent = normalized.as_tuple().exponent
    assert isinstance(exponent, int), normalized
    return normalized if exponent <= 0 else normalized.quantize(Decimal(1), context=_QUOTIENT)
