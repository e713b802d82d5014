"""The versioned EU-27 rates dataset: complete, tiled by date, and right on each listed change."""

import json
from datetime import date, timedelta
from decimal import Decimal
from importlib import resources
from itertools import pairwise

import pytest
from hypothesis import given
from hypothesis import strategies as st

from domain.vat_rates import (
    COVERAGE_FROM,
    DATASET_VERSION,
    EU_MEMBER_STATES,
    REGIONAL_RATES,
    STANDARD_RATES,
    VIES_PREFIXES,
    VatRateUnknownError,
    rate_at,
    regional_rate_at,
)

# billing-semantics §9.6: the standard rate of each member state in force in 2026.
CURRENT = {
    "AT": "20", "BE": "21", "BG": "20", "HR": "25", "CY": "19", "CZ": "21", "DK": "25",
    "EE": "24", "FI": "25.5", "FR": "20", "DE": "19", "GR": "24", "HU": "27", "IE": "23",
    "IT": "22", "LV": "21", "LT": "21", "LU": "17", "MT": "18", "NL": "21", "PL": "23",
    "PT": "23", "RO": "21", "SK": "23", "SI": "22", "ES": "21", "SE": "25",
}  # fmt: skip

# (country, first day of the new rate, rate before, rate from then on)
CHANGES = [
    ("FI", date(2024, 9, 1), "24", "25.5"),
    ("SK", date(2025, 1, 1), "20", "23"),
    ("EE", date(2025, 7, 1), "22", "24"),
    ("EE", date(2024, 1, 1), "20", "22"),
    ("RO", date(2025, 8, 1), "19", "21"),
    ("DE", date(2020, 7, 1), "19", "16"),
    ("DE", date(2021, 1, 1), "16", "19"),
    ("IE", date(2020, 9, 1), "23", "21"),
    ("IE", date(2021, 3, 1), "21", "23"),
    ("LU", date(2023, 1, 1), "17", "16"),
    ("LU", date(2024, 1, 1), "16", "17"),
    ("FR", date(2014, 1, 1), "19.6", "20"),
    ("GR", date(2016, 6, 1), "23", "24"),
]


def test_every_member_state_has_its_current_rate() -> None:
    assert set(CURRENT) == set(EU_MEMBER_STATES) == set(STANDARD_RATES)
    assert len(EU_MEMBER_STATES) == 27
    for country, rate in CURRENT.items():
        assert rate_at(country, date(2026, 6, 1)) == Decimal(rate), country


@pytest.mark.parametrize(("country", "changed_on", "before", "after"), CHANGES)
def test_a_rate_change_takes_effect_on_its_day(
    country: str, changed_on: date, before: str, after: str
) -> None:
    assert rate_at(country, changed_on - timedelta(days=1)) == Decimal(before)
    assert rate_at(country, changed_on) == Decimal(after)


def test_rates_are_exact_decimals() -> None:
    rate = rate_at("FI", date(2025, 1, 1))
    assert rate == Decimal("25.5") and str(rate) == "25.5"
    assert str(rate_at("FR", date(2013, 7, 1))) == "19.6"


def test_periods_tile_from_the_coverage_start_with_one_open_end() -> None:
    for key, periods in [
        *STANDARD_RATES.items(),
        *((k, r.periods) for k, r in REGIONAL_RATES.items()),
    ]:
        assert periods[0].effective_from == COVERAGE_FROM, key
        assert [p.effective_to is None for p in periods].count(True) == 1, key
        for earlier, later in pairwise(periods):
            assert earlier.effective_to is not None
            assert earlier.effective_to + timedelta(days=1) == later.effective_from, key


@given(
    country=st.sampled_from(sorted(EU_MEMBER_STATES)),
    day=st.dates(COVERAGE_FROM, date(2100, 12, 31)),
)
def test_exactly_one_period_covers_every_day(country: str, day: date) -> None:
    covering = [p for p in STANDARD_RATES[country] if p.covers(day)]
    assert len(covering) == 1
    assert rate_at(country, day) == covering[0].rate


def test_no_rate_outside_the_eu_or_before_the_coverage() -> None:
    with pytest.raises(VatRateUnknownError) as error:
        rate_at("GB", date(2025, 1, 1))
    assert error.value.field == "country"
    with pytest.raises(VatRateUnknownError) as error:
        rate_at("FR", COVERAGE_FROM - timedelta(days=1))
    assert error.value.field == "supply_date"


def test_regional_rates() -> None:
    assert regional_rate_at("PT", "madeira", date(2025, 1, 1)) == Decimal(22)
    assert regional_rate_at("PT", "azores", date(2021, 6, 30)) == Decimal(18)
    assert regional_rate_at("PT", "azores", date(2021, 7, 1)) == Decimal(16)
    assert regional_rate_at("FR", "reunion", date(2025, 1, 1)) == Decimal("8.5")
    assert regional_rate_at("AT", "jungholz", date(2025, 1, 1)) == Decimal(19)
    with pytest.raises(VatRateUnknownError):
        regional_rate_at("FR", "corsica", date(2025, 1, 1))


def test_the_dataset_is_versioned_and_each_period_names_its_source() -> None:
    raw = json.loads(
        resources.files("domain").joinpath("data/eu_vat_rates.json").read_text("utf-8")
    )
    assert raw["version"] == DATASET_VERSION
    for rows in raw["standard"].values():
        for row in rows:
            assert isinstance(row["rate"], str)  # Decimal strings, never floats (D14).
            assert row["source"]


def test_greece_is_el_in_vies() -> None:
    assert VIES_PREFIXES["GR"] == "EL"
    assert {iso for iso, prefix in VIES_PREFIXES.items() if iso != prefix} == {"GR"}
