"""Charge models: every worked example of billing-semantics §1 and §4, edges, and bad properties."""

from decimal import Decimal
from typing import Any

import pytest

from domain.charges import (
    CHARGE_MODELS,
    ChargeAmount,
    GraduatedPrice,
    charge_amount,
    charge_minimum_true_up_cents,
    minimum_commitment_true_up_cents,
    parse_properties,
    pay_in_advance_delta,
    price_of,
    pricing_group_keys,
)
from domain.errors import InvalidValueError


def tier(
    from_value: int, to_value: int | None, per_unit_amount: str, flat_amount: str = "0"
) -> dict[str, Any]:
    return {
        "from_value": from_value,
        "to_value": to_value,
        "per_unit_amount": per_unit_amount,
        "flat_amount": flat_amount,
    }


def rate(
    charge_model: str,
    properties: dict[str, Any],
    units: str,
    currency: str = "EUR",
    **options: Any,
) -> ChargeAmount:
    return charge_amount(charge_model, properties, Decimal(units), currency, **options)


# §4.2: 0–100 @ 1.00 + flat 10, then 101–∞ @ 0.50, in both range conventions.
GRADUATED = {"graduated_ranges": [tier(0, 100, "1.00", "10"), tier(101, None, "0.50")]}
GRADUATED_ADJACENT = {"graduated_ranges": [tier(0, 100, "1.00", "10"), tier(100, None, "0.50")]}
# §4.6: 0–100 @ 1.00, 101–1000 @ 0.80 + 10, 1001–∞ @ 0.50 + 20.
VOLUME = {
    "volume_ranges": [
        tier(0, 100, "1.00"),
        tier(101, 1000, "0.80", "10"),
        tier(1001, None, "0.50", "20"),
    ]
}
# §4.4: packages of 1,000 at 5.00, 500 units free.
PACKAGE = {"amount": "5", "package_size": 1000, "free_units": 500}


# §1: numbers, currencies, rounding.


@pytest.mark.parametrize(
    ("currency", "cents"), [("JPY", 1235), ("EUR", 123457), ("KWD", 1234568), ("CLF", 12345678)]
)
def test_a_fee_is_rounded_to_the_iso_minor_unit_of_its_currency(currency: str, cents: int) -> None:
    # Given an exact amount of 1234.5678 (§1.2)
    # When one unit is rated at that price
    fee = rate("standard", {"amount": "1234.5678"}, "1", currency)
    # Then the fee keeps the exact amount and rounds it half-up to the currency's minor unit
    assert fee.amount_cents == cents
    assert fee.precise_amount == Decimal("1234.5678")


@pytest.mark.parametrize(
    ("amount", "currency", "cents"),
    [
        ("2.345", "EUR", 235),  # §1.1: 2.35 half-up, where half-even gives 2.34
        ("0.125", "EUR", 13),  # round(0.125, 2) is 0.12 in Python
        ("0.005", "EUR", 1),  # exactly half a cent
        ("2.5", "JPY", 3),  # exponent 0
        ("1.0005", "KWD", 1001),  # exponent 3: half a fils
    ],
)
def test_half_a_minor_unit_rounds_up(amount: str, currency: str, cents: int) -> None:
    # Given a fee that lands exactly on half a minor unit, when rated, then it rounds up
    assert rate("standard", {"amount": amount}, "1", currency).amount_cents == cents


def test_a_price_per_million_tokens_stays_exact_until_the_line_is_rounded() -> None:
    # Given EUR 0.20 per 1,000,000 tokens, sent as a per-token amount (§1.3)
    # When 123,456,789 tokens are rated
    fee = rate("standard", {"amount": "0.0000002"}, "123456789")
    # Then 24.6913578 is kept exact and billed 24.69
    assert fee.precise_amount_cents == Decimal("2469.13578")
    assert fee.amount_cents == 2469


def test_a_per_token_price_string_bills_exactly() -> None:
    # Given "0.000003" per token (§1.3), when 1,500,000 tokens are rated, then 4.50
    assert rate("standard", {"amount": "0.000003"}, "1500000").amount_cents == 450


def test_sub_cent_events_are_billed_on_their_aggregate_not_one_by_one() -> None:
    # Given 1,000,000 events of one unit at 0.0000002 (§1.4)
    properties = {"amount": "0.0000002"}
    # When rated in arrears, then the aggregate is 0.20
    assert rate("standard", properties, "1000000").amount_cents == 20
    # When one such event is billed in advance, then it rounds to nothing: the reason for the rule
    delta = pay_in_advance_delta("standard", properties, Decimal(5), Decimal(6), "EUR")
    assert delta.amount_cents == 0


def test_a_weighted_sum_is_priced_unrounded() -> None:
    # Given 8.3333… time-weighted units at 2.00 per unit (§3.1)
    # When rated, then 16.666… is billed 16.67
    assert rate("standard", {"amount": "2"}, "8.333333333333333").amount_cents == 1667


# §3.10: pricing group keys.


def test_each_pricing_group_is_rated_on_its_own() -> None:
    # Given requests at 0.01 grouped by workspace (§3.10)
    properties = parse_properties("standard", {"amount": "0.01", "pricing_group_keys": ["ws"]})
    assert pricing_group_keys(properties) == ("ws",)
    # When workspace A used 1,000 and B 250, then A pays 10.00 and B 2.50
    assert rate("standard", properties, "1000").amount_cents == 1000
    assert rate("standard", properties, "250").amount_cents == 250


def test_a_first_tier_flat_fee_applies_per_group() -> None:
    # Given the §4.2 graduated charge grouped by workspace
    properties = {**GRADUATED, "pricing_group_keys": ["workspace"]}
    # When two workspaces used 50 units each
    fees = [rate("graduated", properties, "50").amount_cents for _ in ("A", "B")]
    # Then each pays the first tier's flat 10.00: 2 × 60.00, not 110.00 on 100 units
    assert fees == [6000, 6000]
    assert rate("graduated", GRADUATED, "100").amount_cents == 11000


def test_presentation_group_keys_do_not_change_the_amount() -> None:
    # Given the same price with and without presentation keys
    keys = [{"value": "region", "options": {"display_in_invoice": True}}]
    with_keys = {"amount": "0.01", "presentation_group_keys": keys}
    # When both rate 1,000 units, then they bill the same
    assert rate("standard", with_keys, "1000") == rate("standard", {"amount": "0.01"}, "1000")
    assert parse_properties("standard", with_keys)["presentation_group_keys"] == keys


def test_grouped_by_is_read_as_pricing_group_keys() -> None:
    # Given the deprecated alias, when parsed, then it is stored under the current name
    canonical = parse_properties("package", {**PACKAGE, "grouped_by": ["region"]})
    assert canonical["pricing_group_keys"] == ["region"]
    assert "grouped_by" not in canonical
    assert pricing_group_keys({"amount": "1", "grouped_by": ["region"]}) == ("region",)


# §4.1 standard.


@pytest.mark.parametrize(
    ("units", "amount", "cents"), [("1500000", "0.000003", 450), ("200000", "0.000015", 300)]
)
def test_standard_multiplies_units_by_the_unit_amount(units: str, amount: str, cents: int) -> None:
    # Given L-in at 0.000003 and L-out at 0.000015, when rated, then 4.50 and 3.00
    fee = rate("standard", {"amount": amount}, units)
    assert fee.amount_cents == cents
    assert fee.unit_amount == Decimal(amount)


def test_standard_bills_fractional_units() -> None:
    # Given 2.5 GB at 0.10, when rated, then 0.25
    assert rate("standard", {"amount": "0.10"}, "2.5").amount_cents == 25


def test_zero_units_bill_nothing_and_have_no_unit_amount() -> None:
    fee = rate("standard", {"amount": "3"}, "0")
    assert (fee.amount_cents, fee.precise_amount_cents, fee.unit_amount) == (0, 0, 0)


# §4.2 graduated.


@pytest.mark.parametrize(
    ("units", "cents"),
    [
        ("0", 1000),  # the first range's flat amount is charged even at 0 units
        ("100", 11000),  # exactly on the boundary: the walk stops in range 1
        ("150", 13500),  # 110 + (150 − 101 + 1) × 0.50
        ("100.5", 11025),  # 110 + 0.5 × 0.50
        ("101", 11050),
    ],
)
def test_graduated_inclusive_ranges(units: str, cents: int) -> None:
    # Given ranges 0–100 @ 1.00 + 10 and 101–∞ @ 0.50, when rated, then §4.2's amounts
    assert rate("graduated", GRADUATED, units).amount_cents == cents


@pytest.mark.parametrize(
    ("units", "cents"), [("0", 1000), ("100", 11000), ("100.5", 11025), ("150", 13500)]
)
def test_graduated_adjacent_ranges_bill_the_same(units: str, cents: int) -> None:
    # Given the adjacent form 0–100, 100–∞, when rated, then the same amounts (§4.2, D3)
    assert rate("graduated", GRADUATED_ADJACENT, units).amount_cents == cents


def test_graduated_records_each_visited_range() -> None:
    # Given the §4.2 ranges, when 150 units are rated
    fee = rate("graduated", GRADUATED, "150")
    # Then both ranges are recorded, with their units and exact amounts
    assert [(t.from_value, t.units, t.amount) for t in fee.tiers] == [
        (0, Decimal(100), Decimal(110)),
        (101, Decimal(50), Decimal(25)),
    ]
    assert fee.unit_amount == Decimal("0.9")  # Lago's unit amount: amount / units


def test_a_later_range_flat_amount_is_charged_once_the_walk_reaches_it() -> None:
    # Given 0–10 @ 1.00 then 11–∞ @ 1.00 + flat 5
    properties = {"graduated_ranges": [tier(0, 10, "1"), tier(11, None, "1", "5")]}
    # When usage ends on range 1's last unit, then range 2's flat amount is not charged
    assert rate("graduated", properties, "10").amount_cents == 1000
    # When it goes a fraction past it, then it is
    assert rate("graduated", properties, "10.5").amount_cents == 1550


# §4.3 graduated_percentage.


def test_graduated_percentage_charges_each_range_rate_and_flat_amount() -> None:
    # Given 0–1000 @ 1 % + 0.50 and 1001–∞ @ 0.5 % (§4.3)
    properties = {
        "graduated_percentage_ranges": [
            {"from_value": 0, "to_value": 1000, "rate": "1", "flat_amount": "0.50"},
            {"from_value": 1001, "to_value": None, "rate": "0.5", "flat_amount": "0"},
        ]
    }
    # When 3000 is rated, then 10.50 + 10.00 = 20.50
    fee = rate("graduated_percentage", properties, "3000")
    assert fee.amount_cents == 2050
    assert [t.rate for t in fee.tiers] == [Decimal(1), Decimal("0.5")]


# §4.4 package.


@pytest.mark.parametrize(
    ("units", "cents"),
    [
        ("2300", 1000),  # ceil(1800 / 1000) = 2 packages
        ("500", 0),  # all free
        ("501", 500),  # a package counts from its first unit
        ("1500", 500),  # exactly one full package
        ("1500.5", 1000),
        ("0", 0),
        ("200", 0),  # free units larger than usage
    ],
)
def test_package_bills_started_packages_beyond_the_free_units(units: str, cents: int) -> None:
    # Given packages of 1,000 at 5.00 with 500 free units, when rated, then §4.4's amounts
    assert rate("package", PACKAGE, units).amount_cents == cents


def test_package_reports_free_and_paid_units_and_lagos_unit_amount() -> None:
    fee = rate("package", PACKAGE, "2300")
    assert (fee.free_units, fee.paid_units) == (Decimal(500), Decimal(1800))
    assert fee.unit_amount == Decimal("0.005555555555556")  # 10.00 / 1800 paid units (Lago)


# §4.5 percentage.


def test_percentage_with_fixed_amount_and_both_free_limits() -> None:
    # Given 1.5 %, 0.10 per event, 2 free events and 500 free units (§4.5)
    properties = {
        "rate": "1.5",
        "fixed_amount": "0.10",
        "free_units_per_events": 2,
        "free_units_per_total_aggregation": "500",
    }
    # When events of 100, 300, 400 and 200 are rated
    values = [Decimal(v) for v in ("100", "300", "400", "200")]
    fee = rate("percentage", properties, "1000", event_values=values)
    # Then F = min(400, 500) = 400 and f = 2: 600 × 1.5 % + 2 × 0.10 = 9.20
    assert fee.amount_cents == 920
    assert (fee.free_units, fee.paid_units, fee.free_events) == (400, 600, 2)


@pytest.mark.parametrize(
    ("limits", "free_units", "free_events", "cents"),
    [
        ({}, 0, 0, 1540),  # 1000 × 1.5 % + 4 × 0.10
        ({"free_units_per_events": 2}, 400, 2, 920),  # only N: F = R_2
        ({"free_units_per_events": 9}, 1000, 4, 0),  # N beyond the events: all free
        ({"free_units_per_total_aggregation": "500"}, 500, 2, 770),  # only X: R < 500 twice
        ({"free_units_per_total_aggregation": "5000"}, 1000, 4, 0),
        # Both, X reached first (D12): F = min(R_3 = 800, 500), f = min(3, 2)
        ({"free_units_per_events": 3, "free_units_per_total_aggregation": "500"}, 500, 2, 770),
        # Both, N reached first: F = min(R_1 = 100, 500), f = min(1, 2)
        ({"free_units_per_events": 1, "free_units_per_total_aggregation": "500"}, 100, 1, 1380),
        # A zero total allowance is no allowance (Lago): only N counts
        ({"free_units_per_events": 2, "free_units_per_total_aggregation": "0"}, 400, 2, 920),
    ],
)
def test_percentage_free_allowance_ends_when_either_limit_is_reached(
    limits: dict[str, Any], free_units: int, free_events: int, cents: int
) -> None:
    # Given 1.5 % + 0.10 per event and events 100, 300, 400, 200
    properties = {"rate": "1.5", "fixed_amount": "0.10", **limits}
    values = [Decimal(v) for v in ("100", "300", "400", "200")]
    # When rated, then the allowance is whichever limit is reached first (D12)
    fee = rate("percentage", properties, "1000", event_values=values)
    assert (fee.free_units, fee.free_events, fee.amount_cents) == (free_units, free_events, cents)


def test_percentage_fixed_amount_is_zero_without_units() -> None:
    # Given 0.10 per event, when three events total 0 units, then nothing is billed (§4.5)
    fee = rate("percentage", {"rate": "2", "fixed_amount": "0.10"}, "0", events_count=3)
    assert fee.amount_cents == 0


def test_percentage_needs_only_a_count_without_free_limits() -> None:
    # Given 2 % + 0.25 per event, when 3 events total 150.50, then 3.01 + 0.75
    fee = rate("percentage", {"rate": "2", "fixed_amount": "0.25"}, "150.50", events_count=3)
    assert fee.amount_cents == 376


MIN_MAX = {
    "rate": "2",
    "fixed_amount": "0.30",
    "per_transaction_min_amount": "0.50",
    "per_transaction_max_amount": "5.00",
}


def test_percentage_clamps_each_transaction_to_its_minimum_and_maximum() -> None:
    # Given 2 % + 0.30, min 0.50, max 5.00 per transaction (§4.5)
    values = [Decimal(5), Decimal(100), Decimal(1000)]
    # When events of 5, 100 and 1000 are rated
    fee = rate("percentage", MIN_MAX, "1105", event_values=values)
    # Then 0.40 → 0.50, 2.30, 20.30 → 5.00: 7.80
    assert fee.amount_cents == 780
    # And without the clamps: 22.10 + 0.90 = 23.00
    unclamped = {"rate": "2", "fixed_amount": "0.30"}
    assert rate("percentage", unclamped, "1105", event_values=values).amount_cents == 2300


def test_per_transaction_free_events_pay_nothing_and_a_straddling_event_pays_its_remainder() -> (
    None
):
    # Given the §4.5 clamps with 50 free units
    properties = {**MIN_MAX, "free_units_per_total_aggregation": "50"}
    # When events of 30, 40 and 10 are rated
    values = [Decimal(30), Decimal(40), Decimal(10)]
    fee = rate("percentage", properties, "80", event_values=values)
    # Then 30 is free (not raised to the minimum); 40 pays on 20: 0.70; 10 pays 0.50 (min)
    assert fee.free_events == 1
    assert fee.amount_cents == 120


def test_per_transaction_free_allowance_also_ends_at_the_first_limit() -> None:
    # Given one free event or 50 free units, whichever ends first (D12), with the §4.5 clamps
    properties = {**MIN_MAX, "free_units_per_events": 1, "free_units_per_total_aggregation": "50"}
    # When events of 30 and 40 are rated
    fee = rate("percentage", properties, "70", event_values=[Decimal(30), Decimal(40)])
    # Then only the first event is free: 40 × 2 % + 0.30 = 1.10 (Lago would free 20 more units)
    assert fee.amount_cents == 110


# §4.6 volume.


@pytest.mark.parametrize(
    ("units", "cents"),
    [
        ("500", 41000),  # 500 × 0.80 + 10
        ("100.4", 9032),  # ceil 101 → range 2: 80.32 + 10
        ("0", 0),  # range 1, no flat amount
        ("2000", 102000),  # 2000 × 0.50 + 20
        ("100", 10000),  # on the boundary: range 1
        ("101", 9080),
        ("1000", 81000),
    ],
)
def test_volume_prices_every_unit_at_the_range_reached(units: str, cents: int) -> None:
    # Given the §4.6 ranges, when rated, then all units are priced in one range
    assert rate("volume", VOLUME, units).amount_cents == cents


def test_volume_at_zero_units_charges_the_first_range_flat_amount() -> None:
    properties = {"volume_ranges": [tier(0, 10, "1", "2.50"), tier(11, None, "0.5")]}
    assert rate("volume", properties, "0").amount_cents == 250


def test_volume_accepts_adjacent_ranges() -> None:
    # Given 0–100 @ 1.00 and 100–∞ @ 0.80, when 100 and 100.5 units are rated
    properties = {"volume_ranges": [tier(0, 100, "1.00"), tier(100, None, "0.80")]}
    # Then 100 is in range 1 and 100.5 in range 2
    assert rate("volume", properties, "100").amount_cents == 10000
    assert rate("volume", properties, "100.5").amount_cents == 8040


# §4.7 dynamic.


def test_dynamic_sums_the_events_precise_amounts_and_rounds_once() -> None:
    # Given events of "12.5" and "7.25" cents (§4.7), when rated, then 19.75 cents → 0.20
    fee = rate("dynamic", {}, "2", precise_total_amount_cents=Decimal("19.75"))
    assert (fee.precise_amount_cents, fee.amount_cents) == (Decimal("19.75"), 20)


def test_dynamic_in_yen_divides_by_one() -> None:
    fee = rate("dynamic", {}, "1", "JPY", precise_total_amount_cents=Decimal("1234.5"))
    assert fee.amount_cents == 1235


# §4.8 prorated graduated and volume.


SEATS = [tier(0, 10, "10"), tier(11, None, "8")]


def test_prorated_volume_chooses_the_range_by_full_units() -> None:
    # Given seats 0–10 @ 10 and 11–∞ @ 8; 10 all month, 5 more for 15 of 30 days (§4.8)
    # When rated on 15 full and 12.5 prorated units
    fee = rate("volume", {"volume_ranges": SEATS}, "12.5", full_units=Decimal(15))
    # Then range 2 prices the prorated units: 12.5 × 8 = 100.00
    assert fee.amount_cents == 10000


def test_prorated_graduated_walks_full_units_and_prices_prorated_ones() -> None:
    # Given the same seats, graduated (§4.8)
    events = [(Decimal(10), Decimal(10)), (Decimal(5), Decimal("2.5"))]
    # When rated per event (full, prorated)
    fee = rate("graduated", {"graduated_ranges": SEATS}, "12.5", prorated_events=events)
    # Then 10 × 10 in range 1 and 2.5 × 8 in range 2: 120.00
    assert fee.amount_cents == 12000
    assert [t.units for t in fee.tiers] == [Decimal(10), Decimal("2.5")]


def test_prorated_graduated_splits_an_event_across_ranges_and_charges_reached_flats() -> None:
    # Given 0–10 @ 10 + flat 5 and 11–∞ @ 8 + flat 7
    ranges = [tier(0, 10, "10", "5"), tier(11, None, "8", "7")]
    # When one event adds 15 seats with half the period left (7.5 prorated)
    events = [(Decimal(15), Decimal("7.5"))]
    fee = rate("graduated", {"graduated_ranges": ranges}, "7.5", prorated_events=events)
    # Then 10 full units at half weight in range 1 (5 × 10), 5 in range 2 (2.5 × 8), both flats
    assert fee.amount_cents == 5000 + 2000 + 500 + 700


# §4.9 pay in advance.


def test_pay_in_advance_package_bills_each_event_its_difference() -> None:
    # Given packages of 100 at 5.00 billed in advance (§4.9)
    properties = {"amount": "5", "package_size": 100}
    # When events of 60 and 60 arrive
    first = pay_in_advance_delta("package", properties, Decimal(0), Decimal(60), "EUR")
    second = pay_in_advance_delta("package", properties, Decimal(60), Decimal(120), "EUR")
    # Then 5.00, then 10.00 − 5.00
    assert (first.amount_cents, second.amount_cents) == (500, 500)


def test_pay_in_advance_graduated_first_event_pays_the_first_flat_amount() -> None:
    # Given the §4.2 graduated charge in advance, when events of 60 and 60 arrive
    first = pay_in_advance_delta("graduated", GRADUATED, Decimal(0), Decimal(60), "EUR")
    second = pay_in_advance_delta("graduated", GRADUATED, Decimal(60), Decimal(120), "EUR")
    # Then 70.00, then 120.00 − 70.00 = 50.00: together model(120)
    assert (first.amount_cents, second.amount_cents) == (7000, 5000)
    assert (
        first.amount_cents + second.amount_cents == rate("graduated", GRADUATED, "120").amount_cents
    )
    assert (first.units, second.units) == (Decimal(60), Decimal(60))


def test_pay_in_advance_bills_high_water_marks_and_never_refunds() -> None:
    # Given a sum metric at 1.00 per unit in advance, billed on high-water marks (§4.9)
    properties = {"amount": "1"}
    current, high = Decimal(0), Decimal(0)
    billed = []
    # When values +50, −20, +30 arrive
    for value in (Decimal(50), Decimal(-20), Decimal(30)):
        current += value
        fee = pay_in_advance_delta("standard", properties, high, current, "EUR")
        billed.append((fee.units, fee.amount_cents))
        high = max(high, current)
    # Then units 50, 0 and 10 are billed
    assert billed == [(50, 5000), (0, 0), (10, 1000)]


def test_pay_in_advance_percentage_bills_each_transaction() -> None:
    # Given the §4.5 per-transaction clamps in advance, when events 5, 100, 1000 arrive
    values = [Decimal(5), Decimal(100), Decimal(1000)]
    fees = []
    for index in range(len(values)):
        seen = values[: index + 1]
        before, after = sum(seen[:-1], Decimal(0)), sum(seen, Decimal(0))
        fee = pay_in_advance_delta("percentage", MIN_MAX, before, after, "EUR", event_values=seen)
        fees.append(fee.amount_cents)
    # Then each pays its own clamped fee: 0.50, 2.30, 5.00 (Σ = the period's 7.80)
    assert fees == [50, 230, 500]


def test_pay_in_advance_dynamic_bills_the_event_amount() -> None:
    fee = pay_in_advance_delta(
        "dynamic", {}, Decimal(3), Decimal(4), "EUR", precise_total_amount_cents=Decimal("12.5")
    )
    assert fee.amount_cents == 13


def test_volume_cannot_be_billed_in_advance() -> None:
    with pytest.raises(InvalidValueError) as error:
        pay_in_advance_delta("volume", VOLUME, Decimal(0), Decimal(1), "EUR")
    assert (error.value.field, error.value.reason) == (
        "pay_in_advance",
        "invalid_aggregation_type_or_charge_model",
    )


# §4.10 and §4.11 minimums.


def test_a_charge_minimum_tops_up_the_fees_to_it() -> None:
    # Given a 100.00 minimum and 62.40 of fees over a full period, then a 37.60 true-up (§4.10)
    assert charge_minimum_true_up_cents(6240, 10000) == 3760
    # Given a first period of 10 of 30 days, then the minimum is 33.33 ≤ 62.40: none
    assert charge_minimum_true_up_cents(6240, 10000, billed_days=10, period_days=30) == 0
    # Given only 20.00 of fees in those 10 days, then 33.333… − 20.00 rounds once to 13.33
    assert charge_minimum_true_up_cents(2000, 10000, billed_days=10, period_days=30) == 1333


def test_a_minimum_commitment_tops_up_the_period_fees() -> None:
    # Given 500.00 committed and 100 + 250 + 20 of fees (§4.11), then a 130.00 true-up
    assert minimum_commitment_true_up_cents(37000, 50000) == 13000
    assert minimum_commitment_true_up_cents(60000, 50000) == 0
    # Given half a period covered, then the commitment is 250.00
    assert minimum_commitment_true_up_cents(20000, 50000, days_covered=15, period_days=30) == 5000


# Properties: canonical form.


def test_properties_are_stored_as_canonical_json() -> None:
    # Given decimals as a string, an int and a Decimal
    properties = {
        "rate": " 1.50 ",
        "fixed_amount": 1,
        "free_units_per_total_aggregation": Decimal("1E+3"),
        "per_transaction_max_amount": None,  # null means absent
    }
    # When parsed, then every decimal is a plain string, whole numbers stay ints
    assert parse_properties("percentage", properties) == {
        "rate": "1.50",
        "fixed_amount": "1",
        "free_units_per_total_aggregation": "1000",
    }
    assert parse_properties("package", {"amount": "5", "package_size": 10}) == {
        "amount": "5",
        "package_size": 10,
        "free_units": 0,
    }


@pytest.mark.parametrize("properties", [None, {}])
def test_absent_properties_take_lagos_defaults(properties: dict[str, Any] | None) -> None:
    assert parse_properties("standard", properties) == {"amount": "0"}
    assert parse_properties("graduated", properties) == {"graduated_ranges": [tier(0, None, "0")]}
    assert parse_properties("package", properties)["package_size"] == 1
    for model in CHARGE_MODELS:
        assert parse_properties(model, parse_properties(model, properties)) == parse_properties(
            model, properties
        )


def test_price_of_gives_the_typed_form() -> None:
    price = price_of("graduated", GRADUATED_ADJACENT)
    assert isinstance(price, GraduatedPrice) and price.adjacent
    assert rate("graduated", GRADUATED_ADJACENT, "150") == charge_amount(
        "graduated", price, Decimal(150), "EUR"
    )


# Properties: refused configurations.


def refused(charge_model: str, properties: Any) -> tuple[str, str]:
    with pytest.raises(InvalidValueError) as error:
        parse_properties(charge_model, properties)
    return error.value.field, error.value.reason


RANGES_REFUSED = {
    "overlapping": [tier(0, 10, "1"), tier(5, None, "1")],
    "gapped": [tier(0, 10, "1"), tier(12, None, "1")],
    "first not at 0": [tier(1, 10, "1"), tier(11, None, "1")],
    "last bounded": [tier(0, 10, "1"), tier(11, 20, "1")],
    "middle unbounded": [tier(0, None, "1"), tier(0, None, "1")],
    "mixed conventions": [tier(0, 10, "1"), tier(10, 20, "1"), tier(21, None, "1")],
    "empty range": [tier(0, 10, "1"), tier(11, 11, "1"), tier(12, None, "1")],
    "out of order": [tier(11, None, "1"), tier(0, 10, "1")],
}


@pytest.mark.parametrize("ranges", RANGES_REFUSED.values(), ids=RANGES_REFUSED.keys())
@pytest.mark.parametrize("charge_model", ["graduated", "volume"])
def test_ranges_that_do_not_tile_from_zero_are_refused(
    charge_model: str, ranges: list[dict[str, Any]]
) -> None:
    key = f"{charge_model}_ranges"
    assert refused(charge_model, {key: ranges}) == (f"properties.{key}", f"invalid_{key}")


def test_graduated_percentage_ranges_are_inclusive_only() -> None:
    # §4.3: the adjacent convention 0–1000, 1000–∞ is refused
    ranges = [
        {"from_value": 0, "to_value": 1000, "rate": "1", "flat_amount": "0"},
        {"from_value": 1000, "to_value": None, "rate": "1", "flat_amount": "0"},
    ]
    assert refused("graduated_percentage", {"graduated_percentage_ranges": ranges}) == (
        "properties.graduated_percentage_ranges",
        "invalid_graduated_percentage_ranges",
    )


@pytest.mark.parametrize(
    ("charge_model", "properties", "field", "reason"),
    [
        ("standard", {"amount": "-1"}, "properties.amount", "value_is_out_of_range"),
        ("standard", {"amount": 0.5}, "properties.amount", "value_is_invalid"),  # float
        ("standard", {"amount": True}, "properties.amount", "value_is_invalid"),
        ("standard", {"amount": "abc"}, "properties.amount", "value_is_invalid"),
        ("standard", {"amount": "0.0000000000000001"}, "properties.amount", "value_is_invalid"),
        ("standard", {"amount": Decimal("NaN")}, "properties.amount", "value_is_invalid"),
        ("standard", {"amount": None, "x": None}, "properties.amount", "value_is_mandatory"),
        ("standard", {"amount": "1", "rate": "2"}, "properties.rate", "unsupported_field"),
        ("standard", ["1"], "properties", "value_is_invalid"),
        (
            "package",
            {"amount": "5", "package_size": 0},
            "properties.package_size",
            "value_is_out_of_range",
        ),
        (
            "package",
            {"amount": "5", "package_size": "10"},
            "properties.package_size",
            "value_is_invalid",
        ),
        (
            "package",
            {"amount": "5", "package_size": 1.0},
            "properties.package_size",
            "value_is_invalid",
        ),
        ("package", {"amount": "5"}, "properties.package_size", "value_is_mandatory"),
        (
            "package",
            {**PACKAGE, "free_units": -1},
            "properties.free_units",
            "value_is_out_of_range",
        ),
        ("percentage", {"fixed_amount": "1"}, "properties.rate", "value_is_mandatory"),
        ("percentage", {"rate": "-0.5"}, "properties.rate", "value_is_out_of_range"),
        (
            "percentage",
            {"rate": "1", "free_units_per_events": 0},
            "properties.free_units_per_events",
            "value_is_out_of_range",
        ),
        (
            "percentage",
            {"rate": "1", "per_transaction_min_amount": "5", "per_transaction_max_amount": "1"},
            "properties.per_transaction_max_amount",
            "per_transaction_max_lower_than_per_transaction_min",
        ),
        (
            "graduated",
            {"graduated_ranges": []},
            "properties.graduated_ranges",
            "value_is_mandatory",
        ),
        (
            "graduated",
            {"graduated_ranges": "0-10"},
            "properties.graduated_ranges",
            "value_is_invalid",
        ),
        (
            "graduated",
            {"graduated_ranges": [{**tier(0, None, "1"), "per_unit_amount": 0.1}]},
            "properties.graduated_ranges.0.per_unit_amount",
            "value_is_invalid",
        ),
        (
            "graduated",
            {"graduated_ranges": [{**tier(0, None, "-1")}]},
            "properties.graduated_ranges.0.per_unit_amount",
            "value_is_out_of_range",
        ),
        (
            "graduated",
            {"graduated_ranges": [{"from_value": 0, "to_value": None, "per_unit_amount": "1"}]},
            "properties.graduated_ranges.0.flat_amount",
            "value_is_mandatory",
        ),
        (
            "graduated",
            {"graduated_ranges": [tier(0, 10, "1"), {**tier(11, None, "1"), "from_value": 11.0}]},
            "properties.graduated_ranges.1.from_value",
            "value_is_invalid",
        ),
        (
            "volume",
            {"volume_ranges": [{**tier(0, None, "1"), "rate": "1"}]},
            "properties.volume_ranges.0.rate",
            "unsupported_field",
        ),
        ("dynamic", {"amount": "1"}, "properties.amount", "unsupported_field"),
        (
            "standard",
            {"amount": "1", "pricing_group_keys": "ws"},
            "properties.pricing_group_keys",
            "value_is_invalid",
        ),
        (
            "standard",
            {"amount": "1", "pricing_group_keys": [""]},
            "properties.pricing_group_keys",
            "value_is_invalid",
        ),
        (
            "standard",
            {"amount": "1", "pricing_group_keys": ["a"], "grouped_by": ["b"]},
            "properties.grouped_by",
            "value_is_invalid",
        ),
        (
            "standard",
            {"amount": "1", "presentation_group_keys": [{"value": k} for k in "abc"]},
            "properties.presentation_group_keys",
            "too_many_keys",
        ),
        (
            "standard",
            {"amount": "1", "presentation_group_keys": [{"value": "a"}, {"value": "a"}]},
            "properties.presentation_group_keys",
            "value_is_duplicated",
        ),
        (
            "standard",
            {"amount": "1", "presentation_group_keys": [{"value": "a", "options": {"x": 1}}]},
            "properties.presentation_group_keys.0.options",
            "value_is_invalid",
        ),
        ("custom", {}, "charge_model", "value_is_invalid"),
    ],
)
def test_invalid_properties_are_refused_with_the_field_and_a_reason(
    charge_model: str, properties: Any, field: str, reason: str
) -> None:
    assert refused(charge_model, properties) == (field, reason)


def test_a_custom_field_path_prefixes_errors() -> None:
    # A charge filter's properties report under the filter's own path.
    with pytest.raises(InvalidValueError) as error:
        parse_properties("standard", {"amount": "x"}, "filters.0.properties")
    assert error.value.field == "filters.0.properties.amount"


def test_negative_units_are_refused() -> None:
    with pytest.raises(InvalidValueError) as error:
        rate("standard", {"amount": "1"}, "-1")
    assert (error.value.field, error.value.reason) == ("units", "value_is_out_of_range")


def test_an_unknown_currency_is_refused() -> None:
    with pytest.raises(InvalidValueError):
        rate("standard", {"amount": "1"}, "1", "XXX")
