"""Properties of the money functions."""

from decimal import Decimal

from hypothesis import given
from hypothesis import strategies as st

from domain.errors import InvalidValueError
from domain.money import allocate_cents, checked_decimal, fee_amount_cents, to_decimal

decimals = st.decimals(
    min_value=Decimal("-1e20"), max_value=Decimal("1e20"), places=15, allow_nan=False
)


@given(
    total=st.integers(0, 10**12), weights=st.lists(st.integers(0, 10**9), min_size=1, max_size=30)
)
def test_allocations_always_sum_to_the_total(total: int, weights: list[int]) -> None:
    if sum(weights) == 0:
        weights = [*weights[:-1], 1]
    parts = allocate_cents(total, weights)
    assert sum(parts) == total
    assert all(part >= 0 for part in parts)


# Digit strings around both bounds (the fast path's edges), and anything else.
number_texts = st.one_of(
    st.from_regex(r"[0-9]{1,26}(\.[0-9]{1,17})?", fullmatch=True),
    st.from_regex(r" ?-?[0-9]{0,3}\.?[0-9]{0,3}(e-?[0-9])? ?", fullmatch=True),
    st.text(max_size=8),
)


@given(number_texts)
def test_to_decimal_is_checked_decimal(text: str) -> None:
    """to_decimal's fast path for plain digits gives what the checks give, value and form."""
    try:
        expected = checked_decimal(text, "x")
    except InvalidValueError as error:
        try:
            to_decimal(text, "x")
        except InvalidValueError as again:
            assert (again.field, again.reason) == (error.field, error.reason)
        else:
            raise AssertionError(f"{text!r} was accepted") from None
        return
    found = to_decimal(text, "x")
    assert found.as_tuple() == expected.as_tuple(), text


@given(value=decimals)
def test_to_decimal_round_trips_its_text(value: Decimal) -> None:
    assert to_decimal(str(value), "x") == value


@given(
    units=st.decimals(min_value=0, max_value=10**9, places=6),
    more=st.decimals(min_value=0, max_value=10**9, places=6),
    price=st.decimals(min_value=0, max_value=1000, places=9),
)
def test_fees_grow_with_units(units: Decimal, more: Decimal, price: Decimal) -> None:
    assert fee_amount_cents(units, price, "EUR") <= fee_amount_cents(units + more, price, "EUR")
