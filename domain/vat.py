"""The EU VAT decision for one customer and supply date (billing-semantics §9.3, §9.4), pure.

The seller is established in one member state and sells electronically supplied services. The
decision names the regime, the country whose VAT applies, Lago's tax code, the exact rate in
force on the supply date, the legal mention and the evidence an auditor needs, so an invoice
records everything it was taxed on.

Order of the tree (§9.3): 1. no customer country; 2. outside the EU or an Art. 6 territory;
3. a VAT number still being checked; 4. a VAT number VIES confirmed (B2B); 5. everyone else (B2C).
"""

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Any, Final

from domain.errors import InvalidValueError, NotAllowedError
from domain.periods import local_date
from domain.vat_numbers import ABSENT, MALFORMED, NOT_ELIGIBLE
from domain.vat_rates import DATASET_VERSION, EU_MEMBER_STATES, rate_at, regional_rate_at

# Regimes.
DOMESTIC: Final = "domestic"  # The seller's own VAT (B2B or B2C in its country).
DESTINATION: Final = "destination"  # B2C in another member state: its VAT, through the OSS.
ORIGIN: Final = "origin"  # B2C abroad below the Art. 59c threshold, not opted in: seller's VAT.
REVERSE_CHARGE: Final = "reverse_charge"  # B2B abroad, VIES-valid number: the customer accounts.
OUTSIDE_SCOPE: Final = "outside_scope"  # Outside the EU or an Art. 6 territory: no EU VAT.
PENDING: Final = "pending"  # VIES has not answered yet: draft only, never finalize.

# The status of a customer's VAT number, as decide() reads it: the offline statuses of
# domain/vat_numbers.py (ABSENT, MALFORMED, NOT_ELIGIBLE), then what VIES said.
CHECK_PENDING: Final = "pending"
CHECK_VALID: Final = "valid"
CHECK_INVALID: Final = "invalid"
CHECK_UNVERIFIED: Final = "unverified"  # VIES never answered before the deadline (§9.5).
VAT_NUMBER_STATUSES: Final = (
    ABSENT,
    MALFORMED,
    NOT_ELIGIBLE,
    CHECK_PENDING,
    CHECK_VALID,
    CHECK_INVALID,
    CHECK_UNVERIFIED,
)

# Lago's codes and names (getlago/lago-api:app/services/taxes/auto_generate_service.rb).
REVERSE_CHARGE_CODE: Final = "lago_eu_reverse_charge"
TAX_EXEMPT_CODE: Final = "lago_eu_tax_exempt"
TAX_NAMES: Final = {
    REVERSE_CHARGE_CODE: "Lago EU Reverse Charge",
    TAX_EXEMPT_CODE: "Lago EU Tax Exempt",
}

# Art. 226(11a) requires the words "Reverse charge"; §9.3 gives the outside-the-EU text.
REVERSE_CHARGE_MENTION: Final = (
    "Reverse charge: VAT to be accounted for by the customer "
    "(Articles 44 and 196 of Directive 2006/112/EC)."
)
OUTSIDE_EU_MENTION: Final = "VAT not applicable – place of supply outside the EU."
ARTICLE_6_MENTION: Final = (
    "VAT not applicable – place of supply outside the EU VAT territory "
    "(Article 6 of Directive 2006/112/EC)."
)
FRENCH_ART_294_MENTION: Final = "VAT not applicable – Article 294 of the French General Tax Code."


class EuTaxNotApplicableError(NotAllowedError):
    """The customer's billing entity does not manage EU VAT (Lago's code)."""

    code = "eu_tax_not_applicable"

    def __init__(self, billing_entity_code: str) -> None:
        super().__init__(f"EU tax management is off for billing entity '{billing_entity_code}'.")
        self.billing_entity_code = billing_entity_code


# Art. 7: transactions with Monaco are treated as transactions with France.
COUNTRY_ALIASES: Final = {"MC": "FR"}


@dataclass(frozen=True)
class Territory:
    """A part of a member state with its own VAT treatment, found by postcode (§9.4).

    outside_eu_vat: an Art. 6 territory, outside EU VAT. Otherwise it is inside EU VAT with its
    own rate (REGIONAL_RATES[country/slug]) wherever that member state's VAT applies.
    domestic_rate: for an Art. 6 territory, the local rate a seller of the same member state
    charges (the French overseas departments: Lago's data, applied to B2B and B2C alike).
    """

    country: str
    slug: str
    name: str
    postcodes: tuple[str, ...]  # Prefixes of the normalised postcode; the longest match wins.
    outside_eu_vat: bool
    domestic_rate: bool = False
    iso_codes: tuple[str, ...] = ()  # ISO 3166 codes some customers use for it instead.
    domestic_mention: str | None = None


# To be confirmed with a tax advisor before shipping (§9.4). The Italian waters of Lake Lugano
# have no postcode of their own and cannot be found this way.
TERRITORIES: Final = (
    Territory("GR", "mount_athos", "Mount Athos", ("63086",), outside_eu_vat=True),
    Territory("ES", "canary_islands", "Canary Islands", ("35", "38"), outside_eu_vat=True),
    Territory("ES", "ceuta", "Ceuta", ("51",), outside_eu_vat=True),
    Territory("ES", "melilla", "Melilla", ("52",), outside_eu_vat=True),
    Territory("FR", "saint_barthelemy", "Saint-Barthelemy", ("97133",), True, iso_codes=("BL",)),
    Territory("FR", "saint_martin", "Saint-Martin", ("97150",), True, iso_codes=("MF",)),
    Territory("FR", "guadeloupe", "Guadeloupe", ("971",), True, True, ("GP",)),
    Territory("FR", "martinique", "Martinique", ("972",), True, True, ("MQ",)),
    Territory("FR", "guyane", "Guyane", ("973",), True, True, ("GF",), FRENCH_ART_294_MENTION),
    Territory("FR", "reunion", "Reunion", ("974",), True, True, ("RE",)),
    Territory("FR", "mayotte", "Mayotte", ("976",), True, True, ("YT",), FRENCH_ART_294_MENTION),
    Territory("FI", "aland", "Aland Islands", ("22",), outside_eu_vat=True, iso_codes=("AX",)),
    Territory("IT", "campione_d_italia", "Campione d'Italia", ("22061",), outside_eu_vat=True),
    Territory("IT", "livigno", "Livigno", ("23041",), outside_eu_vat=True),
    Territory("DE", "heligoland", "Heligoland", ("27498",), outside_eu_vat=True),
    Territory(
        "DE", "busingen_am_hochrhein", "Busingen am Hochrhein", ("78266",), outside_eu_vat=True
    ),
    Territory("PT", "madeira", "Madeira", ("90", "91", "92", "93", "94"), outside_eu_vat=False),
    Territory("PT", "azores", "Azores", ("95", "96", "97", "98", "99"), outside_eu_vat=False),
    Territory("AT", "jungholz", "Jungholz", ("6691",), outside_eu_vat=False),
    Territory("AT", "mittelberg", "Mittelberg", ("6991", "6992", "6993"), outside_eu_vat=False),
)
_BY_ISO_CODE: Final = {code: t for t in TERRITORIES for code in t.iso_codes}


@dataclass(frozen=True)
class VatNumberStatus:
    """The customer's VAT number as the decision sees it: its offline status or VIES's answer."""

    status: str  # One of VAT_NUMBER_STATUSES.
    number: str | None = None  # Normalised, with its VIES prefix.
    vies_country: str | None = None  # ISO code of the member state VIES confirmed (CHECK_VALID).
    consultation_number: str | None = None  # VIES's requestIdentifier: the proof.
    checked_at: datetime | None = None

    def __post_init__(self) -> None:
        assert self.status in VAT_NUMBER_STATUSES, self.status
        assert (self.status == CHECK_VALID) == (self.vies_country is not None), self


@dataclass(frozen=True)
class VatDecision:
    """What an invoice records about its VAT: enough to prove it, with no lookup."""

    regime: str
    country: str | None  # Whose VAT applies; the customer's for reverse charge and outside scope.
    tax_code: str
    tax_name: str
    rate: Decimal  # Percent, exact.
    legal_mention: str | None
    dataset_version: str
    supply_date: date
    evidence: Mapping[str, str] = field(default_factory=dict)

    @property
    def pending(self) -> bool:
        """True while VIES has not answered: the invoice may be drafted, not finalized."""
        return self.regime == PENDING

    def as_record(self) -> dict[str, Any]:
        """The decision as JSON-able facts, for an invoice's events."""
        return {
            "regime": self.regime,
            "country": self.country,
            "tax_code": self.tax_code,
            "tax_name": self.tax_name,
            "rate": format(self.rate, "f"),
            "legal_mention": self.legal_mention,
            "dataset_version": self.dataset_version,
            "supply_date": self.supply_date.isoformat(),
            "evidence": dict(sorted(self.evidence.items())),
        }


def supply_date_of(period_end_at: datetime, timezone: str) -> date:
    """The day a usage period's supply is completed: the last local day before its exclusive
    end. A period ending at 2025-01-01 00:00 in the customer's zone was supplied on 2024-12-31."""
    return local_date(period_end_at - timedelta(microseconds=1), timezone)


def standard_code(country: str) -> str:
    return f"lago_eu_{country.lower()}_standard"


def tax_name(code: str) -> str:
    """Lago's name for one of its EU codes: "Lago EU FR Standard", "Lago EU PT Madeira Standard"."""
    if code in TAX_NAMES:
        return TAX_NAMES[code]
    country = code.split("_")[2].upper()
    for territory in TERRITORIES:
        if code == _exception_code(territory):
            return f"Lago EU {country} {territory.name} Standard"
    return f"Lago EU {country} Standard"


def normalise_postcode(postcode: str | None) -> str:
    """Letters and digits only, without a leading country code: "D-27498" → "27498"."""
    text = "".join(c for c in (postcode or "").upper() if c.isalnum())
    return text.lstrip("ABCDEFGHIJKLMNOPQRSTUVWXYZ") if any(c.isdigit() for c in text) else text


def find_territory(country: str | None, postcode: str | None) -> Territory | None:
    """The territory of a customer's address: by its own ISO code (RE, AX...), or by postcode."""
    if country is None:
        return None
    if country in _BY_ISO_CODE:
        return _BY_ISO_CODE[country]
    code = normalise_postcode(postcode)
    if not code:
        return None
    matches = [
        (len(prefix), territory)
        for territory in TERRITORIES
        if territory.country == country
        for prefix in territory.postcodes
        if code.startswith(prefix)
    ]
    return max(matches, key=lambda match: match[0])[1] if matches else None


def decide(
    *,
    seller_country: str,
    customer_country: str | None,
    customer_postcode: str | None,
    vat_number: VatNumberStatus,
    supply_date: date,
    seller_vat_number: str | None = None,
    b2c_destination: bool = True,
) -> VatDecision:
    """The VAT decision for one customer and supply date (§9.3 with §9.4).

    b2c_destination: True (D9's default) taxes EU consumers abroad at their country's rate
    (opted in to, or above, the Art. 59c threshold); False taxes them at the seller's rate.
    Raises InvalidValueError when the seller is not established in a member state.
    """
    if seller_country not in EU_MEMBER_STATES:
        raise InvalidValueError("country", "org_must_be_in_eu", seller_country)
    territory = find_territory(customer_country, customer_postcode)
    country = COUNTRY_ALIASES.get(customer_country or "", customer_country)
    if territory is not None:
        country = territory.country
    evidence = _evidence(
        seller_country, seller_vat_number, customer_country, customer_postcode, vat_number
    )
    if territory is not None:
        evidence["territory"] = territory.name
    context = _Context(seller_country, supply_date, evidence)

    # 1. No customer country: a number VIES confirmed still locates the customer (step 4).
    if country is None and vat_number.status not in (CHECK_VALID, CHECK_PENDING):
        evidence["location"] = "unknown: the seller's country is assumed"
        return context.standard(DOMESTIC, seller_country)
    if country is not None:
        evidence["location"] = "customer_address"
    # 2. Outside the EU, or an Art. 6 territory.
    if territory is not None and territory.outside_eu_vat:
        if territory.domestic_rate and territory.country == seller_country:
            return context.regional(DOMESTIC, territory, territory.domestic_mention)
        return context.outside(ARTICLE_6_MENTION)
    if country is not None and country not in EU_MEMBER_STATES:
        return context.outside(OUTSIDE_EU_MENTION)
    # 3. VIES has not answered: the B2C decision is provisional until it does.
    if vat_number.status == CHECK_PENDING:
        provisional = _consumer(context, country, territory, b2c_destination)
        evidence["provisional_regime"] = provisional.regime
        return VatDecision(
            regime=PENDING,
            country=provisional.country,
            tax_code=provisional.tax_code,
            tax_name=provisional.tax_name,
            rate=provisional.rate,
            legal_mention=None,
            dataset_version=DATASET_VERSION,
            supply_date=supply_date,
            evidence=evidence,
        )
    # 4. A VAT number VIES confirmed: the member state VIES answered for, not the address.
    if vat_number.status == CHECK_VALID:
        assert vat_number.vies_country is not None, vat_number
        evidence["location"] = "vies"
        if vat_number.vies_country != seller_country:
            return context.fixed(
                REVERSE_CHARGE, vat_number.vies_country, REVERSE_CHARGE_CODE, REVERSE_CHARGE_MENTION
            )
        if territory is not None and territory.country == seller_country:
            return context.regional(DOMESTIC, territory)
        return context.standard(DOMESTIC, seller_country)
    # 5. Consumers, and businesses without a valid number (Reg. 282/2011 Art. 18(2)).
    return _consumer(context, country, territory, b2c_destination)


@dataclass(frozen=True)
class _Context:
    seller_country: str
    supply_date: date
    evidence: dict[str, str]

    def standard(self, regime: str, country: str) -> VatDecision:
        code = standard_code(country)
        return self._decision(regime, country, code, rate_at(country, self.supply_date), None)

    def regional(
        self, regime: str, territory: Territory, mention: str | None = None
    ) -> VatDecision:
        rate = regional_rate_at(territory.country, territory.slug, self.supply_date)
        code = _exception_code(territory)
        return self._decision(regime, territory.country, code, rate, mention)

    def outside(self, mention: str) -> VatDecision:
        country = self.evidence.get("customer_country")
        return self.fixed(OUTSIDE_SCOPE, country, TAX_EXEMPT_CODE, mention)

    def fixed(self, regime: str, country: str | None, code: str, mention: str) -> VatDecision:
        return self._decision(regime, country, code, Decimal(0), mention)

    def _decision(
        self, regime: str, country: str | None, code: str, rate: Decimal, mention: str | None
    ) -> VatDecision:
        return VatDecision(
            regime=regime,
            country=country,
            tax_code=code,
            tax_name=tax_name(code),
            rate=rate,
            legal_mention=mention,
            dataset_version=DATASET_VERSION,
            supply_date=self.supply_date,
            evidence=self.evidence,
        )


def _consumer(
    context: _Context, country: str | None, territory: Territory | None, b2c_destination: bool
) -> VatDecision:
    seller = context.seller_country
    if country is None:
        context.evidence["location"] = "unknown: the seller's country is assumed"
        return context.standard(DOMESTIC, seller)
    context.evidence["location"] = "customer_address"
    if country != seller and not b2c_destination:
        context.evidence["b2c_scheme"] = "origin"
        return context.standard(ORIGIN, seller)
    regime = DOMESTIC if country == seller else DESTINATION
    if regime == DESTINATION:
        context.evidence["b2c_scheme"] = "oss_union"
    if territory is not None and not territory.outside_eu_vat:
        return context.regional(regime, territory)
    return context.standard(regime, country)


def _exception_code(territory: Territory) -> str:
    return f"lago_eu_{territory.country.lower()}_exception_{territory.slug}"


def _evidence(
    seller_country: str,
    seller_vat_number: str | None,
    customer_country: str | None,
    customer_postcode: str | None,
    vat_number: VatNumberStatus,
) -> dict[str, str]:
    facts = {
        "seller_country": seller_country,
        "seller_vat_number": seller_vat_number,
        "customer_country": customer_country,
        "customer_postcode": customer_postcode,
        "vat_number": vat_number.number,
        "vat_number_status": vat_number.status,
        "vies_country": vat_number.vies_country,
        "vies_consultation_number": vat_number.consultation_number,
        "vies_checked_at": vat_number.checked_at.isoformat() if vat_number.checked_at else None,
    }
    return {key: value for key, value in facts.items() if value}
