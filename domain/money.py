"""Exact money: ISO 4217 exponents, Decimal from strings only, one rounding policy (half-up)."""

import re
from collections.abc import Sequence
from decimal import (
    ROUND_HALF_UP,
    Context,
    Decimal,
    DivisionByZero,
    FloatOperation,
    Inexact,
    InvalidOperation,
    Overflow,
)
from fractions import Fraction
from types import MappingProxyType
from typing import Final

from domain.errors import InvalidValueError
from domain.limits import DECIMAL_DIGITS_MAX, DECIMAL_PLACES_MAX

# ISO 4217 minor units (not CLDR display digits: HUF is 2 and IQD 3 here). Checked in, versioned.
_MINOR_UNITS: Final = {  # exponent: currencies
    2: (
        "AED AFN ALL AMD ANG AOA ARS AUD AWG AZN BAM BBD "
        "BDT BGN BMD BND BOB BRL BSD BTN BWP BYN BZD CAD "
        "CDF CHF CNY COP CRC CUP CVE CZK DKK DOP DZD EGP "
        "ERN ETB EUR FJD FKP GBP GEL GHS GIP GMD GTQ GYD "
        "HKD HNL HTG HUF IDR ILS INR IRR JMD KES KGS KHR "
        "KPW KYD KZT LAK LBP LKR LRD LSL MAD MDL MKD MMK "
        "MNT MOP MRU MUR MVR MWK MXN MYR MZN NAD NGN NIO "
        "NOK NPR NZD PAB PEN PGK PHP PKR PLN QAR RON RSD "
        "RUB SAR SBD SCR SDG SEK SGD SHP SLE SOS SRD SSP "
        "STN SVC SYP SZL THB TJS TMT TOP TRY TTD TWD TZS "
        "UAH USD UYU UZS VES WST XCD YER ZAR ZMW ZWG"
    ),
    0: ("BIF CLP DJF GNF ISK JPY KMF KRW PYG RWF UGX UYI VND VUV XAF XOF XPF"),
    3: ("BHD IQD JOD KWD LYD OMR TND"),
    4: ("CLF UYW"),
}
CURRENCY_EXPONENTS: Final = MappingProxyType(
    {code: exponent for exponent, codes in _MINOR_UNITS.items() for code in codes.split()}
)

# 80 digits hold any in-range product; Inexact and FloatOperation turn silent errors into crashes.
EXACT: Final = Context(
    prec=80, traps=[Inexact, InvalidOperation, FloatOperation, DivisionByZero, Overflow]
)
ROUNDING: Final = ROUND_HALF_UP  # Named at every call.
# What to_decimal accepts at a glance (most event values): digits, an optional fraction, both
# within bounds. Anything else takes the checks.
_PLAIN_NUMBER: Final = re.compile(
    rf"[0-9]{{1,{DECIMAL_DIGITS_MAX}}}(?:\.[0-9]{{1,{DECIMAL_PLACES_MAX}}})?", re.ASCII
)


def to_decimal(value: str | int, field: str) -> Decimal:
    """The only way into Decimal: from str or int, finite, at most DECIMAL_PLACES_MAX places."""
    if type(value) is str and _PLAIN_NUMBER.fullmatch(value):
        return Decimal(value)  # Unsigned and within bounds as written: as checked_decimal gives.
    return checked_decimal(value, field)


def checked_decimal(value: str | int, field: str) -> Decimal:
    """to_decimal for any input: parsed in the exact context, then checked."""
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise InvalidValueError(field, "value_is_invalid", value)
    try:
        number = EXACT.create_decimal(value.strip() if isinstance(value, str) else value)
    except (InvalidOperation, Inexact, Overflow):
        raise InvalidValueError(field, "value_is_invalid", value) from None
    _sign, digits, exponent = number.as_tuple()
    if not isinstance(exponent, int) or exponent < -DECIMAL_PLACES_MAX:
        raise InvalidValueError(field, "value_is_invalid", value)
    if len(digits) + exponent > DECIMAL_DIGITS_MAX:
        raise InvalidValueError(field, "value_is_out_of_range", value)
    return number + 0 if number == 0 else number  # -0 becomes 0.


def check_currency(currency: str, field: str = "currency") -> str:
    if currency not in CURRENCY_EXPONENTS:
        raise InvalidValueError(field, "value_is_invalid", currency)
    return currency


def round_half_up(value: Decimal | Fraction) -> int:
    """Round an exact amount of minor units to an integer, half away from zero."""
    if isinstance(value, Decimal):
        return int(value.to_integral_value(rounding=ROUNDING))
    quotient, remainder = divmod(abs(value.numerator), value.denominator)
    rounded = quotient + (1 if 2 * remainder >= value.denominator else 0)
    return rounded if value >= 0 else -rounded


def major_to_cents(amount: Decimal, currency: str) -> Decimal:
    """An exact amount in major units as exact minor units (not rounded)."""
    return amount.scaleb(CURRENCY_EXPONENTS[currency], EXACT)


def fee_amount_cents(units: Decimal, unit_amount: Decimal, currency: str) -> int:
    """Price one fee line (unit_amount is in major units) and round it, once, to cents."""
    return round_half_up(major_to_cents(EXACT.multiply(units, unit_amount), currency))


def tax_cents(taxable_cents: int, rate_percent: Decimal) -> int:
    """Tax at one rate on the sum of the rounded fee amounts it covers, rounded once."""
    return round_half_up(EXACT.divide(EXACT.multiply(taxable_cents, rate_percent), 100))


def prorate_cents(amount_cents: int, numerator: int, denominator: int) -> int:
    """amount × numerator / denominator as one exact expression, rounded once half-up."""
    assert denominator > 0, denominator
    return round_half_up(Fraction(amount_cents * numerator, denominator))


def allocate_cents(total_cents: int, weights: Sequence[int]) -> list[int]:
    """Split total_cents in proportion to weights; the parts always sum to the total."""
    weight_sum = sum(weights)
    assert total_cents >= 0, total_cents
    assert weight_sum > 0, weights
    assert min(weights) >= 0, weights
    shares = [divmod(total_cents * weight, weight_sum) for weight in weights]
    parts = [quotient for quotient, _ in shares]
    # Largest remainder: leftover cents go to the biggest remainders, ties to the earliest part.
    by_remainder = sorted(range(len(shares)), key=lambda i: shares[i][1], reverse=True)
    for i in by_remainder[: total_cents - sum(parts)]:
        parts[i] += 1
    return parts


def display_quotient(numerator: Decimal | int, denominator: Decimal | int) -> Decimal:
    """numerator / denominator to DECIMAL_PLACES_MAX places, half-up: for display, never summed."""
    value = Fraction(Decimal(numerator)) / Fraction(Decimal(denominator))
    scaled = round_half_up(value * 10**DECIMAL_PLACES_MAX)
    return Decimal(scaled).scaleb(-DECIMAL_PLACES_MAX, EXACT).normalize(EXACT) + 0
