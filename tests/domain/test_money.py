"""Money: exact decimals, half-up rounding once per fee, largest-remainder splits."""

from decimal import Decimal

import pytest

from domain.errors import InvalidValueError
from domain.money import (
    CURRENCY_EXPONENTS,
    allocate_cents,
    fee_amount_cents,
    prorate_cents,
    tax_cents,
    to_decimal,
)


def test_currency_exponents_are_iso_minor_units_not_display_digits() -> None:
    assert [CURRENCY_EXPONENTS[c] for c in ("EUR", "JPY", "KWD", "HUF", "IQD", "CLF")] == [
        2,
        0,
        3,
        2,
        3,
        4,
    ]


@pytest.mark.parametrize(
    ("units", "unit_amount", "currency", "cents"),
    [
        ("1500000", "0.000003", "EUR", 450),  # billing-semantics §1.3
        ("2.345", "1", "EUR", 235),  # half-up, not half-even (§1.1)
        ("1234.5678", "1", "JPY", 1235),  # §1.2
        ("1234.5678", "1", "KWD", 1234568),
        ("1000000", "0.0000002", "EUR", 20),  # §1.4: aggregated, not per event
        ("0", "5", "EUR", 0),
    ],
)
def test_a_fee_is_rounded_once_half_up(
    units: str, unit_amount: str, currency: str, cents: int
) -> None:
    assert fee_amount_cents(Decimal(units), Decimal(unit_amount), currency) == cents


def test_tax_is_rounded_once_on_the_sum_of_rounded_lines() -> None:
    # Three lines of 0.02 at 19 %: 0.0114 → 1 cent (billing-semantics §1.4).
    assert tax_cents(2 + 2 + 2, Decimal("19")) == 1


def test_ten_euros_split_three_ways_gives_the_leftover_cent_to_the_first() -> None:
    assert allocate_cents(1000, [1, 1, 1]) == [334, 333, 333]


def test_proration_is_one_exact_expression_rounded_once() -> None:
    assert prorate_cents(1000, 10, 31) == 323  # 322.58… → 323


@pytest.mark.parametrize("value", ["1e400", "abc", "0.0000000000000001", "NaN", "Infinity", ""])
def test_to_decimal_refuses_what_is_not_an_exact_finite_price(value: str) -> None:
    with pytest.raises(InvalidValueError):
        to_decimal(value, "amount")


def test_to_decimal_refuses_a_float_outright() -> None:
    with pytest.raises(InvalidValueError):
        to_decimal(0.1, "amount")  # type: ignore[arg-type]
