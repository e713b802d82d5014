"""Properties of the charge models and of invoice taxes, against independent formulas."""

import math
from decimal import Decimal
from fractions import Fraction
from typing import Any

from hypothesis import assume, given
from hypothesis import strategies as st

from domain.charges import (
    CHARGE_MODELS,
    charge_amount,
    parse_properties,
    pay_in_advance_delta,
)
from domain.taxes import invoice_taxes

units_st = st.decimals(min_value=0, max_value=10**6, places=3)
prices_st = st.decimals(min_value=0, max_value=100, places=6)
flats_st = st.decimals(min_value=0, max_value=50, places=2)


@st.composite
def ranges_st(draw: st.DrawFn, *, adjacent: bool | None = None) -> list[dict[str, Any]]:
    """Valid ranges in either convention: from 0, contiguous, the last unbounded."""
    if adjacent is None:
        adjacent = draw(st.booleans())
    widths = draw(st.lists(st.integers(1, 2000), max_size=4))
    ranges, start = [], 0
    for width in [*widths, None]:
        end = None if width is None else start + width
        price, flat = draw(prices_st), draw(flats_st)
        ranges.append(
            {
                "from_value": start,
                "to_value": end,
                "per_unit_amount": str(price),
                "flat_amount": flat,
            }
        )
        if end is not None:
            start = end if adjacent else end + 1
    return ranges


def lower_bounds(ranges: list[dict[str, Any]]) -> list[int]:
    """Each range holds the units above the previous to_value, whatever the convention."""
    return [0] + [r["to_value"] for r in ranges[:-1]]


def graduated_by_slices(ranges: list[dict[str, Any]], units: Decimal) -> Decimal:
    total = Decimal(0)
    for index, (r, lower) in enumerate(zip(ranges, lower_bounds(ranges), strict=True)):
        top = units if r["to_value"] is None else min(units, Decimal(r["to_value"]))
        total += max(Decimal(0), top - lower) * Decimal(r["per_unit_amount"])
        if index == 0 or units > lower:
            total += Decimal(r["flat_amount"])
    return total


@given(ranges=ranges_st(), units=units_st, more=units_st)
def test_graduated_grows_with_units_and_is_the_sum_of_its_slices(
    ranges: list[dict[str, Any]], units: Decimal, more: Decimal
) -> None:
    properties = {"graduated_ranges": ranges}
    fee = charge_amount("graduated", properties, units, "EUR")
    larger = charge_amount("graduated", properties, units + more, "EUR")
    assert fee.precise_amount == graduated_by_slices(ranges, units)
    assert fee.precise_amount <= larger.precise_amount
    assert fee.amount_cents <= larger.amount_cents


def volume_range(ranges: list[dict[str, Any]], units: Decimal) -> dict[str, Any]:
    """The range whose interval (previous to_value, to_value] holds the units; range 1 holds 0."""
    for r, lower in zip(ranges, lower_bounds(ranges), strict=True):
        if (units > lower or lower == 0) and (r["to_value"] is None or units <= r["to_value"]):
            return r
    raise AssertionError(units)


@given(ranges=ranges_st(), units=units_st)
def test_volume_prices_all_units_at_one_range_price(
    ranges: list[dict[str, Any]], units: Decimal
) -> None:
    fee = charge_amount("volume", {"volume_ranges": ranges}, units, "EUR")
    chosen = volume_range(ranges, units)
    [tier] = fee.tiers
    assert tier.from_value == chosen["from_value"]
    price = Decimal(chosen["per_unit_amount"])
    assert fee.precise_amount == units * price + Decimal(chosen["flat_amount"])


@given(ranges=ranges_st(), units=units_st, fraction=st.decimals(0, 1, places=3))
def test_volume_is_constant_per_unit_within_a_range(
    ranges: list[dict[str, Any]], units: Decimal, fraction: Decimal
) -> None:
    # Another quantity in the same range pays the same price per unit above the same flat amount.
    chosen = volume_range(ranges, units)
    lower = lower_bounds(ranges)[ranges.index(chosen)]
    other = lower + (units - lower) * fraction
    assume(volume_range(ranges, other) is chosen and other > 0)
    flat = Decimal(chosen["flat_amount"])
    first = charge_amount("volume", {"volume_ranges": ranges}, units, "EUR")
    second = charge_amount("volume", {"volume_ranges": ranges}, other, "EUR")
    assert (first.precise_amount - flat) / units == (second.precise_amount - flat) / other


@given(
    units=units_st,
    size=st.integers(1, 5000),
    free=st.integers(0, 5000),
    amount=prices_st,
    fraction=st.decimals(Decimal("0.001"), 1, places=3),
)
def test_package_is_a_step_function_of_started_packages(
    units: Decimal, size: int, free: int, amount: Decimal, fraction: Decimal
) -> None:
    properties = {"amount": str(amount), "package_size": size, "free_units": free}
    packages = max(0, math.ceil(Fraction(units - free) / size))
    fee = charge_amount("package", properties, units, "EUR")
    assert fee.precise_amount == packages * amount
    if packages:
        # Any quantity inside the same package costs the same.
        other = free + (packages - 1) * size + fraction * size
        assert charge_amount("package", properties, other, "EUR").amount_cents == fee.amount_cents


event_values_st = st.lists(
    st.decimals(min_value=-50, max_value=10**4, places=2), min_size=0, max_size=12
)


@given(
    values=event_values_st,
    rate=st.decimals(0, 100, places=4),
    fixed=st.none() | st.decimals(0, 5, places=2),
    free_events=st.none() | st.integers(1, 6),
    free_total=st.none() | st.decimals(0, 5000, places=2),
    bounds=st.none() | st.tuples(st.decimals(0, 5, places=2), st.decimals(0, 50, places=2)),
)
def test_percentage_is_never_negative_and_respects_per_transaction_bounds(
    values: list[Decimal],
    rate: Decimal,
    fixed: Decimal | None,
    free_events: int | None,
    free_total: Decimal | None,
    bounds: tuple[Decimal, Decimal] | None,
) -> None:
    units = sum(values, Decimal(0))
    assume(units >= 0)  # Negative aggregates are refused before pricing.
    properties: dict[str, Any] = {
        "rate": rate,
        "fixed_amount": fixed,
        "free_units_per_events": free_events,
        "free_units_per_total_aggregation": free_total,
    }
    if bounds is not None:
        low, high = sorted(bounds)
        properties |= {"per_transaction_min_amount": low, "per_transaction_max_amount": high}
    fee = charge_amount("percentage", properties, units, "EUR", event_values=values)
    assert fee.precise_amount >= 0
    assert fee.amount_cents >= 0
    assert 0 <= fee.free_units <= units
    assert 0 <= fee.free_events <= len(values)
    if bounds is not None:
        paid_events = len(values) - fee.free_events
        assert paid_events * low <= fee.precise_amount <= paid_events * high


@given(
    steps=st.lists(units_st, min_size=1, max_size=6),
    model=st.sampled_from(["graduated", "package", "standard"]),
    ranges=ranges_st(),
)
def test_pay_in_advance_fees_add_up_to_the_period_fee(
    steps: list[Decimal], model: str, ranges: list[dict[str, Any]]
) -> None:
    properties: dict[str, Any] = {
        "graduated": {"graduated_ranges": ranges},
        "package": {"amount": "5", "package_size": 100, "free_units": 30},
        "standard": {"amount": "0.0375"},
    }[model]
    level, exact = Decimal(0), Decimal(0)
    for step in steps:
        delta = pay_in_advance_delta(model, properties, level, level + step, "EUR")
        exact += delta.precise_amount
        level += step
    if level > 0:
        assert exact == charge_amount(model, properties, level, "EUR").precise_amount


decimal_text = st.decimals(min_value=0, max_value=10**6, places=4)
as_wire = st.sampled_from([str, lambda d: d, lambda d: f"  {d}  "])


@st.composite
def wire_properties(draw: st.DrawFn) -> tuple[str, dict[str, Any]]:
    """Valid properties as a client may send them: decimals as str, int or Decimal."""
    model = draw(st.sampled_from(CHARGE_MODELS))

    def decimal() -> Any:
        number = draw(decimal_text)
        if number == number.to_integral_value() and draw(st.booleans()):
            return int(number)
        return draw(as_wire)(number)

    groups: dict[str, Any] = draw(
        st.sampled_from(
            [
                {},
                {"pricing_group_keys": ["workspace"]},
                {"grouped_by": ["a", "b"]},
                {"grouped_by": None},
            ]
        )
    )
    if model == "standard":
        return model, {"amount": decimal(), **groups}
    if model == "package":
        free = draw(st.none() | st.integers(0, 100))
        return model, {
            "amount": decimal(),
            "package_size": draw(st.integers(1, 100)),
            "free_units": free,
        }
    if model == "percentage":
        optional = (
            "fixed_amount",
            "free_units_per_total_aggregation",
            "per_transaction_max_amount",
        )
        properties = {"rate": decimal()}
        for key in optional:
            if draw(st.booleans()):
                properties[key] = decimal()
        return model, properties
    if model in ("graduated", "volume"):
        ranges = draw(ranges_st())
        for r in ranges:
            r["per_unit_amount"] = decimal()
        return model, {f"{model}_ranges": ranges, **groups}
    if model == "graduated_percentage":
        ranges = draw(ranges_st(adjacent=False))
        for r in ranges:
            r["rate"] = str(r.pop("per_unit_amount"))
        return model, {"graduated_percentage_ranges": ranges}
    return model, groups


@given(model_and_properties=wire_properties(), units=units_st)
def test_parsing_is_idempotent_and_keeps_the_price(
    model_and_properties: tuple[str, dict[str, Any]], units: Decimal
) -> None:
    model, properties = model_and_properties
    canonical = parse_properties(model, properties)
    assert parse_properties(model, canonical) == canonical
    values = {"event_values": [units]} if model == "percentage" else {}
    assert charge_amount(model, properties, units, "EUR", **values) == charge_amount(
        model, canonical, units, "EUR", **values
    )


@given(
    lines=st.lists(
        st.tuples(
            st.integers(0, 10**9),
            st.lists(st.sampled_from(["vat_20", "vat_5_5", "reduced_7"]), unique=True, max_size=3),
        ),
        max_size=20,
    )
)
def test_line_taxes_add_up_exactly_to_each_rate_tax(lines: list[tuple[int, list[str]]]) -> None:
    rates = {"vat_20": Decimal("20"), "vat_5_5": Decimal("5.5"), "reduced_7": Decimal("7")}
    taxes = invoice_taxes([(net, [(code, rates[code]) for code in codes]) for net, codes in lines])
    for applied in taxes.applied_taxes:
        shares = [
            share.tax_cents
            for line in taxes.lines
            for share in line.applied_taxes
            if share.tax_code == applied.tax_code
        ]
        assert sum(shares) == applied.tax_cents
        assert all(share >= 0 for share in shares)
        base = sum(net for net, codes in lines if applied.tax_code in codes)
        assert applied.taxable_base_cents == base
        exact = Decimal(base) * applied.rate / 100
        assert abs(applied.tax_cents - exact) <= Decimal("0.5")
    assert sum(line.taxes_amount_cents for line in taxes.lines) == taxes.taxes_amount_cents
