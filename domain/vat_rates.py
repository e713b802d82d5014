"""EU-27 VAT rates as versioned data: the rate in force on the supply date (§9.6, D10).

The rates live in domain/data/eu_vat_rates.json, checked in and reviewed as a pull request before
a change takes effect. Each period has effective_from and effective_to (both inclusive, to null
while in force) and a decimal-string rate. The file is read once, from the package, at import:
it is code in another syntax, so a malformed file fails at start, never at billing time.
Every decision records DATASET_VERSION, and each invoice keeps the rate it used, so a new
release of the table never changes an invoice already issued.
"""

import json
from dataclasses import dataclass
from datetime import date, timedelta
from decimal import Decimal
from importlib import resources
from itertools import pairwise
from types import MappingProxyType
from typing import Any, Final

from domain.errors import InvalidValueError
from domain.money import to_decimal

# The EU-27 member states (ISO 3166-1 alpha-2), and the prefix VIES uses for each.
VIES_PREFIXES: Final = MappingProxyType(
    {
        iso: ("EL" if iso == "GR" else iso)
        for iso in (
            "AT BE BG CY CZ DE DK EE ES FI FR GR HR HU IE IT LT LU LV MT NL PL PT RO SE SI SK"
        ).split()
    }
)
EU_MEMBER_STATES: Final = frozenset(VIES_PREFIXES)


@dataclass(frozen=True)
class RatePeriod:
    effective_from: date
    effective_to: date | None  # The last day in force; None while in force.
    rate: Decimal  # Percent: Decimal("25.5") is 25.5 %.
    source: str

    def covers(self, day: date) -> bool:
        return self.effective_from <= day and (
            self.effective_to is None or day <= self.effective_to
        )


@dataclass(frozen=True)
class RegionalRates:
    """A territory inside EU VAT with its own rate (Madeira, Azores, Jungholz, ...), or the
    local rate a seller of the same member state charges in an overseas department."""

    country: str
    slug: str  # Lago's name for it, as in lago_eu_pt_exception_madeira.
    name: str
    periods: tuple[RatePeriod, ...]


class VatRateUnknownError(InvalidValueError):
    """No rate for this country (not a member state) or day (before the dataset's coverage)."""

    def __init__(self, country: str, supply_date: date) -> None:
        field = "country" if country not in EU_MEMBER_STATES else "supply_date"
        super().__init__(field, "vat_rate_unknown", f"{country} {supply_date.isoformat()}")
        self.country = country
        self.supply_date = supply_date


def _load() -> dict[str, Any]:
    text = resources.files("domain").joinpath("data/eu_vat_rates.json").read_text("utf-8")
    loaded: dict[str, Any] = json.loads(text)
    return loaded


def _periods(rows: list[dict[str, Any]], coverage_from: date, key: str) -> tuple[RatePeriod, ...]:
    """Periods in order; they must tile [coverage_from, ∞) without gap or overlap."""
    periods = tuple(
        RatePeriod(
            effective_from=date.fromisoformat(row["effective_from"]),
            effective_to=(
                None if row["effective_to"] is None else date.fromisoformat(row["effective_to"])
            ),
            rate=to_decimal(row["rate"], "rate"),
            source=str(row["source"]),
        )
        for row in rows
    )
    assert periods and periods[0].effective_from == coverage_from, key
    assert periods[-1].effective_to is None, key
    for earlier, later in pairwise(periods):
        assert earlier.effective_to is not None, key
        assert earlier.effective_to + timedelta(days=1) == later.effective_from, key
        assert earlier.rate != later.rate, key  # A period with the same rate is a typing error.
    for period in periods:
        assert isinstance(period.rate, Decimal) and 0 <= period.rate < 100, key
    return periods


_DATA: Final = _load()
DATASET_VERSION: Final[str] = str(_DATA["version"])
# The first supply date the dataset answers for: Croatia's accession, after which the EU-27 of
# today (less the United Kingdom, which the table never lists) were all members.
COVERAGE_FROM: Final = date.fromisoformat(_DATA["coverage_from"])
STANDARD_RATES: Final = MappingProxyType(
    {country: _periods(rows, COVERAGE_FROM, country) for country, rows in _DATA["standard"].items()}
)
REGIONAL_RATES: Final = MappingProxyType(
    {
        key: RegionalRates(
            country=key.split("/")[0],
            slug=key.split("/")[1],
            name=str(region["name"]),
            periods=_periods(region["periods"], COVERAGE_FROM, key),
        )
        for key, region in _DATA["regional"].items()
    }
)
assert frozenset(STANDARD_RATES) == EU_MEMBER_STATES, sorted(STANDARD_RATES)
assert all(region.country in EU_MEMBER_STATES for region in REGIONAL_RATES.values())


def _rate_in(periods: tuple[RatePeriod, ...], country: str, supply_date: date) -> Decimal:
    for period in periods:
        if period.covers(supply_date):
            return period.rate
    raise VatRateUnknownError(country, supply_date)


def rate_at(country: str, supply_date: date) -> Decimal:
    """The member state's standard rate on the day the supply is completed (Art. 63 and 64:
    the last day of a usage period), never the invoice date nor today."""
    periods = STANDARD_RATES.get(country)
    if periods is None:
        raise VatRateUnknownError(country, supply_date)
    return _rate_in(periods, country, supply_date)


def regional_rate_at(country: str, slug: str, supply_date: date) -> Decimal:
    region = REGIONAL_RATES.get(f"{country}/{slug}")
    if region is None:
        raise VatRateUnknownError(country, supply_date)
    return _rate_in(region.periods, country, supply_date)
