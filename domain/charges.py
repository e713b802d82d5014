"""Charge models, pure: validate Lago's charge properties and rate units into once-rounded fees.

Every formula is billing-semantics §4, computed exactly in Decimal (`EXACT` traps any inexact step)
and rounded once, half-up, to the currency's minor unit (§1.4). Amounts in properties are decimals
in major units; results carry both the exact amount and the rounded integer cents.
"""

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from decimal import (
    ROUND_CEILING,
    Context,
    Decimal,
    DivisionByZero,
    FloatOperation,
    InvalidOperation,
    Overflow,
    localcontext,
)
from fractions import Fraction
from itertools import accumulate, pairwise
from typing import Any, Final, TypeAlias

from domain.errors import InvalidValueError
from domain.limits import DECIMAL_DIGITS_MAX, DECIMAL_PLACES_MAX, KEY_LENGTH_MAX
from domain.money import (
    CURRENCY_EXPONENTS,
    EXACT,
    ROUNDING,
    check_currency,
    major_to_cents,
    prorate_cents,
    round_half_up,
    to_decimal,
)

CHARGE_MODELS: Final = (
    "standard",
    "graduated",
    "graduated_percentage",
    "package",
    "percentage",
    "volume",
    "dynamic",
)
# §4.6: volume is never billed in advance (Lago: `invalid_aggregation_type_or_charge_model`).
PAY_IN_ADVANCE_CHARGE_MODELS: Final = tuple(model for model in CHARGE_MODELS if model != "volume")

# Whole-unit bounds (range limits, package sizes, free units) fit the digits of any decimal we take.
_INTEGER_MAX: Final = 10**DECIMAL_DIGITS_MAX - 1
# Lago caps presentation group keys at two (charges/validators/base_service.rb).
PRESENTATION_GROUP_KEYS_MAX: Final = 2
_ZERO: Final = Decimal(0)
_PLACES: Final = Decimal(1).scaleb(-DECIMAL_PLACES_MAX)
# Display quotients (unit_amount) need not terminate: rounded half-up to 15 places, never summed.
_QUOTIENT: Final = Context(
    prec=80,
    rounding=ROUNDING,
    traps=[InvalidOperation, FloatOperation, DivisionByZero, Overflow],
)


# Typed properties, one class per model: what the rating functions compute with.


@dataclass(frozen=True)
class Tier:
    """One range of graduated, graduated_percentage or volume pricing, bounds in whole units."""

    from_value: int
    to_value: int | None  # None: unbounded (the last range only)
    per_unit_amount: Decimal  # Major units per unit; for graduated_percentage, rate / 100.
    flat_amount: Decimal
    rate: Decimal | None = None  # graduated_percentage only: percent of each unit.


@dataclass(frozen=True)
class StandardPrice:
    amount: Decimal


@dataclass(frozen=True)
class GraduatedPrice:
    ranges: tuple[Tier, ...]
    adjacent: bool  # §4.2: every from_value equals the previous to_value (0–10, 10–20).


@dataclass(frozen=True)
class GraduatedPercentagePrice:
    ranges: tuple[Tier, ...]  # Inclusive convention only (§4.3).


@dataclass(frozen=True)
class PackagePrice:
    amount: Decimal
    package_size: int
    free_units: int


@dataclass(frozen=True)
class PercentagePrice:
    rate: Decimal  # Percent.
    fixed_amount: Decimal | None = None  # Per paid event.
    free_units_per_events: int | None = None
    free_units_per_total_aggregation: Decimal | None = None
    per_transaction_min_amount: Decimal | None = None
    per_transaction_max_amount: Decimal | None = None


@dataclass(frozen=True)
class VolumePrice:
    ranges: tuple[Tier, ...]
    adjacent: bool


@dataclass(frozen=True)
class DynamicPrice:
    """No properties: each event carries its own precise_total_amount_cents (§4.7)."""


Price: TypeAlias = (
    StandardPrice
    | GraduatedPrice
    | GraduatedPercentagePrice
    | PackagePrice
    | PercentagePrice
    | VolumePrice
    | DynamicPrice
)
_PRICE_TYPES: Final[Mapping[str, type]] = {
    "standard": StandardPrice,
    "graduated": GraduatedPrice,
    "graduated_percentage": GraduatedPercentagePrice,
    "package": PackagePrice,
    "percentage": PercentagePrice,
    "volume": VolumePrice,
    "dynamic": DynamicPrice,
}


# Results.


@dataclass(frozen=True)
class TierAmount:
    """The part of a fee one range produced: units in it, its price and its exact amount."""

    from_value: int
    to_value: int | None
    units: Decimal
    per_unit_amount: Decimal
    flat_amount: Decimal  # Charged here: zero for a range whose flat fee was not reached.
    amount: Decimal  # Exact, major units: units × per_unit_amount + flat_amount.
    rate: Decimal | None = None


@dataclass(frozen=True)
class ChargeAmount:
    """One fee line: the units rated, the exact amount, and that amount rounded once (§1.4).

    `precise_amount_cents` is exact (minor units, unrounded); `amount_cents` is it rounded half-up.
    `unit_amount` is Lago's `precise_unit_amount` (major units): the exact amount divided by the
    units (by the paid units for package, by the unprorated units for prorated charges), 0 without
    units, rounded half-up to 15 places because it is for display and never summed.
    """

    charge_model: str
    currency: str
    units: Decimal
    amount_cents: int
    precise_amount_cents: Decimal
    unit_amount: Decimal
    free_units: Decimal = _ZERO  # Package and percentage: units the free allowance covered.
    paid_units: Decimal = _ZERO  # units − free_units.
    events_count: int = 0
    free_events: int = 0  # Percentage: events that paid neither rate nor fixed amount.
    tiers: tuple[TierAmount, ...] = ()  # Ranges visited (graduated) or chosen (volume).
    rounding: str = ROUNDING

    @property
    def precise_amount(self) -> Decimal:
        """The exact amount in major units."""
        return self.precise_amount_cents.scaleb(-CURRENCY_EXPONENTS[self.currency], EXACT)


# Properties: validation and the canonical form stored in events.

_RANGES_KEY: Final = {
    "graduated": "graduated_ranges",
    "graduated_percentage": "graduated_percentage_ranges",
    "volume": "volume_ranges",
}
_MODEL_KEYS: Final[Mapping[str, frozenset[str]]] = {
    "standard": frozenset({"amount"}),
    "graduated": frozenset({"graduated_ranges"}),
    "graduated_percentage": frozenset({"graduated_percentage_ranges"}),
    "package": frozenset({"amount", "package_size", "free_units"}),
    "percentage": frozenset(
        {
            "rate",
            "fixed_amount",
            "free_units_per_events",
            "free_units_per_total_aggregation",
            "per_transaction_min_amount",
            "per_transaction_max_amount",
        }
    ),
    "volume": frozenset({"volume_ranges"}),
    "dynamic": frozenset(),
}
# §3.10; Lago validates them on every model (charges/validators/base_service.rb).
_GROUP_KEYS: Final = frozenset({"pricing_group_keys", "grouped_by", "presentation_group_keys"})


def _default_range(price_key: str) -> dict[str, Any]:
    return {"from_value": 0, "to_value": None, price_key: "0", "flat_amount": "0"}


def _default_properties(charge_model: str) -> dict[str, Any]:
    """Lago's defaults for absent or empty properties (charge_models/build_default_properties)."""
    if charge_model == "standard":
        return {"amount": "0"}
    if charge_model == "package":
        return {"amount": "0", "package_size": 1, "free_units": 0}
    if charge_model == "percentage":
        return {"rate": "0"}
    if charge_model == "graduated_percentage":
        return {"graduated_percentage_ranges": [_default_range("rate")]}
    if charge_model in _RANGES_KEY:
        return {_RANGES_KEY[charge_model]: [_default_range("per_unit_amount")]}
    return {}


def parse_properties(
    charge_model: str, properties: Mapping[str, Any] | None, field: str = "properties"
) -> dict[str, Any]:
    """Validate a charge's properties as Lago sends them; return their canonical JSON-safe form.

    Decimals (str, int or Decimal; never float) become plain decimal strings, whole numbers ints.
    None or {} take Lago's defaults; a null key is absent; a key the model does not use is
    `unsupported_field`. The alias `grouped_by` becomes `pricing_group_keys`. Idempotent.
    """
    price = price_of(charge_model, properties, field)
    canonical = _price_properties(price)
    canonical.update(_group_keys(properties or {}, field))
    return canonical


def price_of(
    charge_model: str, properties: Mapping[str, Any] | None, field: str = "properties"
) -> Price:
    """The typed form of a charge's properties, validated as parse_properties does."""
    if charge_model not in CHARGE_MODELS:
        raise InvalidValueError("charge_model", "value_is_invalid", charge_model)
    if properties is None or (isinstance(properties, Mapping) and not properties):
        properties = _default_properties(charge_model)
    if not isinstance(properties, Mapping):
        raise InvalidValueError(field, "value_is_invalid", properties)
    allowed = _MODEL_KEYS[charge_model] | _GROUP_KEYS
    for key, value in properties.items():
        if not isinstance(key, str):
            raise InvalidValueError(field, "value_is_invalid", key)
        if key not in allowed and value is not None:  # Null means absent (lago-api.md §1.3).
            raise InvalidValueError(f"{field}.{key}", "unsupported_field", value)
    _group_keys(properties, field)  # Validated here too, so that price_of refuses what parse does.
    if charge_model == "standard":
        return StandardPrice(_decimal(properties, "amount", field))
    if charge_model == "package":
        return PackagePrice(
            amount=_decimal(properties, "amount", field),
            package_size=_integer(properties, "package_size", field, minimum=1),
            free_units=_integer(properties, "free_units", field, minimum=0, default=0),
        )
    if charge_model == "percentage":
        return _percentage_price(properties, field)
    if charge_model == "graduated":
        ranges, adjacent = _ranges(properties, "graduated_ranges", field, adjacent_allowed=True)
        return GraduatedPrice(ranges, adjacent)
    if charge_model == "graduated_percentage":
        key = "graduated_percentage_ranges"
        ranges, _ = _ranges(properties, key, field, adjacent_allowed=False)
        return GraduatedPercentagePrice(ranges)
    if charge_model == "volume":
        ranges, adjacent = _ranges(properties, "volume_ranges", field, adjacent_allowed=True)
        return VolumePrice(ranges, adjacent)
    return DynamicPrice()


def pricing_group_keys(properties: Mapping[str, Any] | None) -> tuple[str, ...]:
    """The property names that split a charge into one fee per group (§3.10), alias included."""
    return tuple(_group_keys(properties or {}, "properties").get("pricing_group_keys", ()))


def _percentage_price(properties: Mapping[str, Any], field: str) -> PercentagePrice:
    minimum = _optional_decimal(properties, "per_transaction_min_amount", field)
    maximum = _optional_decimal(properties, "per_transaction_max_amount", field)
    if minimum is not None and maximum is not None and maximum < minimum:
        # Lago's code for it (charges/validators/percentage_service.rb).
        raise InvalidValueError(
            f"{field}.per_transaction_max_amount",
            "per_transaction_max_lower_than_per_transaction_min",
            properties["per_transaction_max_amount"],
        )
    free_units_per_events = None
    if properties.get("free_units_per_events") is not None:
        free_units_per_events = _integer(properties, "free_units_per_events", field, minimum=1)
    return PercentagePrice(
        rate=_decimal(properties, "rate", field),
        fixed_amount=_optional_decimal(properties, "fixed_amount", field),
        free_units_per_events=free_units_per_events,
        free_units_per_total_aggregation=_optional_decimal(
            properties, "free_units_per_total_aggregation", field
        ),
        per_transaction_min_amount=minimum,
        per_transaction_max_amount=maximum,
    )


def _optional_decimal(container: Mapping[str, Any], key: str, field: str) -> Decimal | None:
    if container.get(key) is None:
        return None
    return _decimal(container, key, field)


def _decimal(container: Mapping[str, Any], key: str, field: str) -> Decimal:
    """A mandatory non-negative decimal: a str, an int or a Decimal, never a float or a bool."""
    path = f"{field}.{key}"
    value = container.get(key)
    if value is None:
        raise InvalidValueError(path, "value_is_mandatory", value)
    if isinstance(value, bool) or not isinstance(value, str | int | Decimal):
        raise InvalidValueError(path, "value_is_invalid", value)
    number = to_decimal(str(value) if isinstance(value, Decimal) else value, path)
    if number < 0:
        raise InvalidValueError(path, "value_is_out_of_range", value)
    return number


def _integer(
    container: Mapping[str, Any], key: str, field: str, *, minimum: int, default: int | None = None
) -> int:
    """A whole number sent as a JSON integer (Lago refuses strings and floats here too)."""
    path = f"{field}.{key}"
    value = container.get(key)
    if value is None:
        if default is None:
            raise InvalidValueError(path, "value_is_mandatory", value)
        return default
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidValueError(path, "value_is_invalid", value)
    if not minimum <= value <= _INTEGER_MAX:
        raise InvalidValueError(path, "value_is_out_of_range", value)
    return value


def _ranges(
    properties: Mapping[str, Any], key: str, field: str, *, adjacent_allowed: bool
) -> tuple[tuple[Tier, ...], bool]:
    """Ranges from 0, contiguous, the last unbounded; adjacent (0–10, 10–20) or inclusive (0–10,
    11–20), one convention per list (§4.2, D3). Returns the tiers and whether they are adjacent."""
    path = f"{field}.{key}"
    value = properties.get(key)
    if value is None or (isinstance(value, list | tuple) and not value):
        raise InvalidValueError(path, "value_is_mandatory", value)
    if not isinstance(value, list | tuple):
        raise InvalidValueError(path, "value_is_invalid", value)
    is_rate = key == "graduated_percentage_ranges"
    price_key = "rate" if is_rate else "per_unit_amount"
    allowed = {"from_value", "to_value", price_key, "flat_amount"}
    tiers = []
    for index, item in enumerate(value):
        item_path = f"{path}.{index}"
        if not isinstance(item, Mapping):
            raise InvalidValueError(item_path, "value_is_invalid", item)
        for item_key, item_value in item.items():
            if item_key not in allowed and item_value is not None:
                raise InvalidValueError(f"{item_path}.{item_key}", "unsupported_field", item_value)
        from_value = _integer(item, "from_value", item_path, minimum=0)
        to_value = None
        if item.get("to_value") is not None:
            to_value = _integer(item, "to_value", item_path, minimum=0)
        price = _decimal(item, price_key, item_path)
        flat_amount = _decimal(item, "flat_amount", item_path)
        if is_rate:
            per_unit_amount = EXACT.divide(price, 100)
            tiers.append(Tier(from_value, to_value, per_unit_amount, flat_amount, rate=price))
        else:
            tiers.append(Tier(from_value, to_value, price, flat_amount))
    pairs = list(pairwise(tiers))
    adjacent = bool(pairs) and all(b.from_value == a.to_value for a, b in pairs)
    inclusive = all(a.to_value is not None and b.from_value == a.to_value + 1 for a, b in pairs)
    valid = (
        tiers[0].from_value == 0
        and tiers[-1].to_value is None
        and all(t.to_value is not None and t.to_value > t.from_value for t in tiers[:-1])
        and (inclusive or (adjacent and adjacent_allowed))
    )
    if not valid:  # Lago's codes: invalid_graduated_ranges, invalid_volume_ranges, ...
        raise InvalidValueError(path, f"invalid_{key}", value)
    return tuple(tiers), adjacent


def _group_keys(properties: Mapping[str, Any], field: str) -> dict[str, Any]:
    """pricing_group_keys (alias grouped_by) and presentation_group_keys, canonical (§3.10)."""
    canonical: dict[str, Any] = {}
    keys = _string_list(properties.get("pricing_group_keys"), f"{field}.pricing_group_keys")
    alias = _string_list(properties.get("grouped_by"), f"{field}.grouped_by")
    if keys and alias and keys != alias:
        raise InvalidValueError(f"{field}.grouped_by", "value_is_invalid", properties["grouped_by"])
    if keys or alias:
        canonical["pricing_group_keys"] = keys or alias
    presentation = properties.get("presentation_group_keys")
    if presentation:
        path = f"{field}.presentation_group_keys"
        canonical["presentation_group_keys"] = _presentation_group_keys(presentation, path)
    return canonical


def _string_list(value: Any, path: str) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list | tuple) or not all(
        isinstance(key, str) and key.strip() and len(key) <= KEY_LENGTH_MAX for key in value
    ):
        raise InvalidValueError(path, "value_is_invalid", value)
    return list(value)


def _presentation_group_keys(value: Any, path: str) -> list[dict[str, Any]]:
    """Lago's shape: at most two [{"value": key, "options": {"display_in_invoice": bool}}]."""
    if not isinstance(value, list | tuple):
        raise InvalidValueError(path, "value_is_invalid", value)
    canonical: list[dict[str, Any]] = []
    for index, item in enumerate(value):
        item_path = f"{path}.{index}"
        if not isinstance(item, Mapping):
            raise InvalidValueError(item_path, "value_is_invalid", item)
        for item_key, item_value in item.items():
            if item_key not in ("value", "options") and item_value is not None:
                raise InvalidValueError(f"{item_path}.{item_key}", "unsupported_field", item_value)
        if item.get("value") is None:
            raise InvalidValueError(f"{item_path}.value", "value_is_mandatory", None)
        [key] = _string_list([item["value"]], f"{item_path}.value")
        entry: dict[str, Any] = {"value": key}
        options = item.get("options")
        if options is not None:
            if (
                not isinstance(options, Mapping)
                or set(options) != {"display_in_invoice"}
                or not isinstance(options["display_in_invoice"], bool)
            ):
                raise InvalidValueError(f"{item_path}.options", "value_is_invalid", options)
            entry["options"] = {"display_in_invoice": options["display_in_invoice"]}
        canonical.append(entry)
    if len(canonical) > PRESENTATION_GROUP_KEYS_MAX:
        raise InvalidValueError(path, "too_many_keys", value)  # Lago's code.
    values = [entry["value"] for entry in canonical]
    if len(set(values)) != len(values):
        raise InvalidValueError(path, "value_is_duplicated", value)  # Lago's code.
    return canonical


def _text(number: Decimal) -> str:
    """A decimal as a plain string, as sent when it was a string: never in exponent notation."""
    return format(number, "f")


def _tier_properties(tier: Tier) -> dict[str, Any]:
    if tier.rate is not None:
        price = {"rate": _text(tier.rate)}
    else:
        price = {"per_unit_amount": _text(tier.per_unit_amount)}
    return {
        "from_value": tier.from_value,
        "to_value": tier.to_value,
        **price,
        "flat_amount": _text(tier.flat_amount),
    }


def _price_properties(price: Price) -> dict[str, Any]:
    if isinstance(price, StandardPrice):
        return {"amount": _text(price.amount)}
    if isinstance(price, PackagePrice):
        return {
            "amount": _text(price.amount),
            "package_size": price.package_size,
            "free_units": price.free_units,
        }
    if isinstance(price, PercentagePrice):
        canonical: dict[str, Any] = {"rate": _text(price.rate)}
        for key in (
            "fixed_amount",
            "free_units_per_total_aggregation",
            "per_transaction_min_amount",
            "per_transaction_max_amount",
        ):
            number = getattr(price, key)
            if number is not None:
                canonical[key] = _text(number)
        if price.free_units_per_events is not None:
            canonical["free_units_per_events"] = price.free_units_per_events
        return canonical
    if isinstance(price, GraduatedPrice):
        return {"graduated_ranges": [_tier_properties(tier) for tier in price.ranges]}
    if isinstance(price, GraduatedPercentagePrice):
        return {"graduated_percentage_ranges": [_tier_properties(tier) for tier in price.ranges]}
    if isinstance(price, VolumePrice):
        return {"volume_ranges": [_tier_properties(tier) for tier in price.ranges]}
    return {}


# Rating.


def charge_amount(
    charge_model: str,
    properties: Mapping[str, Any] | Price,
    units: Decimal,
    currency: str,
    *,
    events_count: int = 0,
    event_values: Sequence[Decimal] = (),
    precise_total_amount_cents: Decimal | None = None,
    full_units: Decimal | None = None,
    prorated_events: Sequence[tuple[Decimal, Decimal]] | None = None,
) -> ChargeAmount:
    """Rate one bucket's period units with one charge model (§4.1–4.8); round once.

    Args:
        units: the bucket's aggregated units (≥ 0; fractions allowed); prorated ones if prorated.
        events_count: events in the bucket (percentage's fixed amount), when event_values is empty.
        event_values: percentage: each event's value in timestamp order, needed for the free
            allowances and the per-transaction minimum and maximum.
        precise_total_amount_cents: dynamic: Σ of the events' precise_total_amount_cents.
        full_units: prorated volume (and standard): the unprorated units, which choose the range.
        prorated_events: prorated graduated: per event, (full units, prorated units), in order.
    """
    check_currency(currency)
    price = _price(charge_model, properties)
    _check_units(units, "units")
    assert full_units is None or charge_model in ("standard", "volume"), charge_model
    assert prorated_events is None or charge_model == "graduated", charge_model
    if full_units is not None:
        _check_units(full_units, "full_units")
    basis = units if full_units is None else full_units
    with localcontext(EXACT):
        if isinstance(price, StandardPrice):
            return _result(price, currency, units, units * price.amount, basis=basis)
        if isinstance(price, GraduatedPrice) and prorated_events is not None:
            return _prorated_graduated(price, currency, units, prorated_events)
        if isinstance(price, GraduatedPrice | GraduatedPercentagePrice):
            adjacent = isinstance(price, GraduatedPrice) and price.adjacent
            tiers = _graduated_tiers(price.ranges, adjacent, units)
            amount = sum((tier.amount for tier in tiers), _ZERO)
            return _result(price, currency, units, amount, tiers=tiers)
        if isinstance(price, PackagePrice):
            return _package(price, currency, units)
        if isinstance(price, PercentagePrice):
            return _percentage(price, currency, units, events_count, event_values)
        if isinstance(price, VolumePrice):
            tier = _volume_tier(price.ranges, units, basis)
            return _result(price, currency, units, tier.amount, basis=basis, tiers=[tier])
        total_cents = _ZERO if precise_total_amount_cents is None else precise_total_amount_cents
        _check_units(total_cents, "precise_total_amount_cents")
        return _result(price, currency, units, total_cents.scaleb(-CURRENCY_EXPONENTS[currency]))


def pay_in_advance_delta(
    charge_model: str,
    properties: Mapping[str, Any] | Price,
    units_before: Decimal,
    units_after: Decimal,
    currency: str,
    *,
    event_values: Sequence[Decimal] = (),
    events_count: int = 0,
    precise_total_amount_cents: Decimal | None = None,
) -> ChargeAmount:
    """The fee of one pay-in-advance event: model(after) − model(before), rounded once (§4.9).

    units_before is the bucket's high-water mark before the event and units_after its level after
    it: a level at or under the mark bills nothing and nothing is refunded within the period. The
    first event of graduated models also pays the first range's flat amount. Percentage takes
    event_values (the period's values, this event last) or events_count (this event included);
    dynamic bills this event's precise_total_amount_cents.
    """
    if charge_model not in PAY_IN_ADVANCE_CHARGE_MODELS:
        raise InvalidValueError(
            "pay_in_advance", "invalid_aggregation_type_or_charge_model", charge_model
        )
    check_currency(currency)
    price = _price(charge_model, properties)
    _check_units(units_before, "units_before")
    _check_units(units_after, "units_after")
    with localcontext(EXACT):
        level = max(units_after, units_before)
        billed_units = level - units_before
        if isinstance(price, DynamicPrice):
            cents = _ZERO if precise_total_amount_cents is None else precise_total_amount_cents
            _check_units(cents, "precise_total_amount_cents")
            amount = cents.scaleb(-CURRENCY_EXPONENTS[currency])
            return _result(price, currency, billed_units, amount, events_count=1)
        if isinstance(price, PercentagePrice):
            count = len(event_values) or events_count
            assert count >= 1, (event_values, events_count)
            after = _percentage(price, currency, level, count, event_values)
            before = _percentage(price, currency, units_before, count - 1, event_values[:-1])
            delta = max(_ZERO, after.precise_amount - before.precise_amount)
            return _result(price, currency, billed_units, delta, events_count=1)
        if billed_units == 0:
            return _result(price, currency, billed_units, _ZERO, events_count=1)
        after_amount = charge_amount(charge_model, price, level, currency).precise_amount
        # Lago leaves the first range's flat amount out of the first event's baseline.
        before_amount = _ZERO
        if units_before > 0:
            before_amount = charge_amount(
                charge_model, price, units_before, currency
            ).precise_amount
        delta = max(_ZERO, after_amount - before_amount)
        return _result(price, currency, billed_units, delta, events_count=1)


def charge_minimum_true_up_cents(
    amount_cents: int,
    min_amount_cents: int,
    *,
    billed_days: int | None = None,
    period_days: int | None = None,
) -> int:
    """§4.10: what tops a charge's fees (all its buckets) up to its minimum, prorated by days.

    The minimum is prorated as one exact expression, min × billed_days / period_days, and the
    true-up rounded once; without days the whole minimum applies. Zero when the fees reach it.
    """
    return _true_up_cents(amount_cents, min_amount_cents, billed_days, period_days)


def minimum_commitment_true_up_cents(
    fees_amount_cents: int,
    commitment_amount_cents: int,
    *,
    days_covered: int | None = None,
    period_days: int | None = None,
) -> int:
    """§4.11: max(0, commitment × days_covered / period_days − Σ period fees), rounded once.

    fees_amount_cents counts the subscription fee, charges, pay-in-advance charges and fixed
    charges of the commitment period (the year, for yearly plans billed monthly).
    """
    return _true_up_cents(fees_amount_cents, commitment_amount_cents, days_covered, period_days)


def _true_up_cents(
    fees_cents: int, minimum_cents: int, days: int | None, period_days: int | None
) -> int:
    assert fees_cents >= 0, fees_cents
    assert minimum_cents >= 0, minimum_cents
    if days is None and period_days is None:
        prorated_cents = minimum_cents
    else:
        assert days is not None and period_days is not None, (days, period_days)
        assert 0 <= days <= period_days, (days, period_days)
        # Rounding min × days / period_days and then subtracting integer fees is the same as
        # rounding the exact difference once: half-up commutes with adding whole cents.
        prorated_cents = prorate_cents(minimum_cents, days, period_days)
    return max(0, prorated_cents - fees_cents)


def _price(charge_model: str, properties: Mapping[str, Any] | Price) -> Price:
    if isinstance(properties, Mapping):
        return price_of(charge_model, properties)
    if charge_model not in CHARGE_MODELS:
        raise InvalidValueError("charge_model", "value_is_invalid", charge_model)
    assert isinstance(properties, _PRICE_TYPES[charge_model]), (charge_model, properties)
    return properties


def _check_units(units: Decimal, field: str) -> None:
    assert isinstance(units, Decimal) and units.is_finite(), units  # Never a float: a bug.
    if units < 0:
        # Negative aggregates (refund events in a sum) are the caller's to settle, not a price's.
        raise InvalidValueError(field, "value_is_out_of_range", units)


def _result(
    price: Price,
    currency: str,
    units: Decimal,
    amount: Decimal,
    *,
    basis: Decimal | None = None,
    free_units: Decimal = _ZERO,
    paid_units: Decimal | None = None,
    events_count: int = 0,
    free_events: int = 0,
    tiers: Sequence[TierAmount] = (),
    precise_amount_cents: Decimal | None = None,
) -> ChargeAmount:
    """Round the exact amount (major units) once, half-up, to the currency's minor unit."""
    if precise_amount_cents is None:
        precise_amount_cents = major_to_cents(amount, currency)
    basis = units if basis is None else basis
    return ChargeAmount(
        charge_model=_model_of(price),
        currency=currency,
        units=units,
        amount_cents=round_half_up(precise_amount_cents),
        precise_amount_cents=precise_amount_cents,
        unit_amount=_quotient(amount, basis),
        free_units=free_units,
        paid_units=units - free_units if paid_units is None else paid_units,
        events_count=events_count,
        free_events=free_events,
        tiers=tuple(tiers),
    )


def _model_of(price: Price) -> str:
    return next(model for model, cls in _PRICE_TYPES.items() if isinstance(price, cls))


def _quotient(amount: Decimal, units: Decimal) -> Decimal:
    """amount / units for display, rounded half-up to 15 places, trailing zeros dropped."""
    if units == 0:
        return _ZERO
    quotient = _QUOTIENT.divide(amount, units).quantize(_PLACES, context=_QUOTIENT)
    return _plain(quotient)


def _plain(number: Decimal) -> Decimal:
    if number == 0:
        return _ZERO
    number = number.normalize(_QUOTIENT)
    _sign, _digits, exponent = number.as_tuple()
    assert isinstance(exponent, int), number
    return number.quantize(Decimal(1), context=_QUOTIENT) if exponent > 0 else number


def _graduated_tiers(ranges: Sequence[Tier], adjacent: bool, units: Decimal) -> list[TierAmount]:
    """§4.2: walk the ranges until one holds the last unit; the first is always visited."""
    visited = []
    for tier in ranges:
        top = units if tier.to_value is None else min(units, Decimal(tier.to_value))
        count = top - tier.from_value
        if not adjacent and tier.from_value != 0:
            count += 1  # Inclusive bounds: 11–20 holds the 11th unit.
        amount = count * tier.per_unit_amount + tier.flat_amount
        visited.append(
            TierAmount(
                tier.from_value,
                tier.to_value,
                count,
                tier.per_unit_amount,
                tier.flat_amount,
                amount,
                tier.rate,
            )
        )
        if tier.to_value is None or tier.to_value >= units:
            break
    return visited


def _lower_bounds(ranges: Sequence[Tier]) -> list[int]:
    """Where each range's units start, exclusive: the previous to_value, in both conventions."""
    return [0] + [tier.to_value or 0 for tier in ranges[:-1]]


def _volume_tier(ranges: Sequence[Tier], units: Decimal, basis: Decimal) -> TierAmount:
    """§4.6: the range holding ceil(units) prices all units, plus its flat amount. Prorated
    (§4.8), the unprorated units (basis) choose the range and the prorated ones are priced."""
    ceiling = basis.to_integral_value(rounding=ROUND_CEILING)
    tier = next(
        t for t in ranges if t.from_value <= ceiling and (t.to_value is None or basis <= t.to_value)
    )
    amount = units * tier.per_unit_amount + tier.flat_amount
    return TierAmount(
        tier.from_value, tier.to_value, units, tier.per_unit_amount, tier.flat_amount, amount
    )


def _package(price: PackagePrice, currency: str, units: Decimal) -> ChargeAmount:
    """§4.4: ceil((units − free_units) / package_size) packages; a package counts from its first
    unit."""
    paid_units = max(_ZERO, units - price.free_units)
    packages, remainder = divmod(paid_units, price.package_size)
    if remainder:
        packages += 1
    amount = packages * price.amount
    # Lago's unit amount for package divides by the paid units (charge_models/package_service.rb).
    return _result(
        price,
        currency,
        units,
        amount,
        basis=paid_units,
        free_units=units - paid_units,
        paid_units=paid_units,
    )


def _percentage(
    price: PercentagePrice,
    currency: str,
    units: Decimal,
    events_count: int,
    event_values: Sequence[Decimal],
) -> ChargeAmount:
    """§4.5 with D12: the free allowance ends when either of its limits is reached."""
    values = list(event_values)
    for value in values:
        assert isinstance(value, Decimal) and value.is_finite(), value
    assert not values or events_count in (0, len(values)), (events_count, len(values))
    count = len(values) or events_count
    assert count >= 0, count
    per_transaction = (
        price.per_transaction_min_amount is not None or price.per_transaction_max_amount is not None
    )
    events_limit = price.free_units_per_events
    # Lago treats a zero total allowance as none (`excluding(0)` in percentage_service.rb).
    total_limit = price.free_units_per_total_aggregation or None
    needs_values = per_transaction or events_limit is not None or total_limit is not None
    assert values or not needs_values or count == 0, "event_values are needed for this charge"
    running = list(accumulate(values))
    last_total = running[-1] if running else _ZERO
    free_amount, free_events = _ZERO, 0
    if events_limit is not None:
        within_events = running[min(events_limit, count) - 1] if running else _ZERO
        free_amount, free_events = within_events, min(events_limit, count)
        if total_limit is not None:
            below = sum(1 for total in running if total < total_limit)
            free_amount, free_events = min(within_events, total_limit), min(free_events, below)
    elif total_limit is not None:
        free_amount = min(last_total, total_limit)
        free_events = sum(1 for total in running if total < total_limit)
    free_amount = max(_ZERO, free_amount)  # Refunds among the free events never add units.
    paid_units = max(_ZERO, units - free_amount)
    rate = price.rate / 100
    fixed_amount = price.fixed_amount or _ZERO
    if per_transaction:
        amount = _per_transaction_amount(price, running, free_amount, free_events, rate)
    else:
        fixed_part = _ZERO if units == 0 else (count - free_events) * fixed_amount
        amount = paid_units * rate + fixed_part
    return _result(
        price,
        currency,
        units,
        amount,
        free_units=units - paid_units,
        paid_units=paid_units,
        events_count=count,
        free_events=free_events,
    )


def _per_transaction_amount(
    price: PercentagePrice,
    running: Sequence[Decimal],
    free_amount: Decimal,
    free_events: int,
    rate: Decimal,
) -> Decimal:
    """§4.5: free events pay nothing; every other event pays rate on its part above the free
    amount plus the fixed amount, clamped to the per-transaction minimum and maximum."""
    total = _ZERO
    previous = _ZERO
    for index, running_total in enumerate(running):
        if index >= free_events:
            # The part of this event above the free amount (an event straddling it pays on its
            # remainder); a negative event pays no percentage.
            paid = max(_ZERO, max(running_total, free_amount) - max(previous, free_amount))
            fee = paid * rate + (price.fixed_amount or _ZERO)
            if price.per_transaction_min_amount is not None:
                fee = max(fee, price.per_transaction_min_amount)
            if price.per_transaction_max_amount is not None:
                fee = min(fee, price.per_transaction_max_amount)
            total += fee
        previous = running_total
    return total


def _prorated_graduated(
    price: GraduatedPrice,
    currency: str,
    units: Decimal,
    prorated_events: Sequence[tuple[Decimal, Decimal]],
) -> ChargeAmount:
    """§4.8: each event's full units fall into ranges by the cumulative full total; each range
    prices the prorated share of those units. Flat amounts: every range the maximum cumulative
    full total reached (the first always). A negative usage part counts as zero (Lago)."""
    lowers = _lower_bounds(price.ranges)
    prorated_in = [Fraction(0)] * len(price.ranges)
    cumulative = Fraction(0)
    highest = Fraction(0)
    for full, prorated in prorated_events:
        assert isinstance(full, Decimal) and isinstance(prorated, Decimal), (full, prorated)
        if full == 0:
            assert prorated == 0, (full, prorated)
            continue
        start, cumulative = cumulative, cumulative + Fraction(full)
        low, high = min(start, cumulative), max(start, cumulative)
        weight = Fraction(prorated) / Fraction(full)  # Prorated units per full unit.
        sign = 1 if full > 0 else -1
        for index, tier in enumerate(price.ranges):
            top = high if tier.to_value is None else min(high, Fraction(tier.to_value))
            overlap = top - max(low, Fraction(lowers[index]))
            if overlap > 0:
                prorated_in[index] += sign * overlap * weight
        highest = max(highest, cumulative)
    usage = sum(
        (
            units_in * Fraction(tier.per_unit_amount)
            for units_in, tier in zip(prorated_in, price.ranges, strict=True)
        ),
        Fraction(0),
    )
    reached = [index == 0 or highest > lowers[index] for index in range(len(price.ranges))]
    flats = sum(
        (
            Fraction(tier.flat_amount)
            for tier, hit in zip(price.ranges, reached, strict=True)
            if hit
        ),
        Fraction(0),
    )
    amount = max(Fraction(0), usage) + flats
    tiers = [
        TierAmount(
            tier.from_value,
            tier.to_value,
            _approximate(units_in),
            tier.per_unit_amount,
            tier.flat_amount if hit else _ZERO,
            _approximate(units_in * Fraction(tier.per_unit_amount))
            + (tier.flat_amount if hit else _ZERO),
        )
        for units_in, tier, hit in zip(prorated_in, price.ranges, reached, strict=True)
        if hit
    ]
    exact_cents = amount * 10 ** CURRENCY_EXPONENTS[currency]
    result = _result(
        price,
        currency,
        units,
        _approximate(amount),
        basis=_approximate(cumulative),
        tiers=tiers,
        precise_amount_cents=_approximate(exact_cents),
    )
    # Rounded from the exact fraction, not from its 15-place approximation.
    return replace(result, amount_cents=round_half_up(exact_cents))


def _approximate(value: Fraction) -> Decimal:
    """A fraction as a Decimal: exact when it has at most 15 places, else rounded half-up."""
    quotient = _QUOTIENT.divide(Decimal(value.numerator), Decimal(value.denominator))
    return _plain(quotient.quantize(_PLACES, context=_QUOTIENT))
