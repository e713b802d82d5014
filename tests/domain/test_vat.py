"""The EU VAT decision (§9.3, §9.4) as a table, and the offline VAT-number check."""

from datetime import UTC, date, datetime
from decimal import Decimal

import pytest

from domain.errors import InvalidValueError
from domain.vat import (
    ARTICLE_6_MENTION,
    CHECK_INVALID,
    CHECK_PENDING,
    CHECK_UNVERIFIED,
    CHECK_VALID,
    DESTINATION,
    DOMESTIC,
    FRENCH_ART_294_MENTION,
    ORIGIN,
    OUTSIDE_EU_MENTION,
    OUTSIDE_SCOPE,
    PENDING,
    REVERSE_CHARGE,
    REVERSE_CHARGE_MENTION,
    VatNumberStatus,
    decide,
    find_territory,
    normalise_postcode,
    supply_date_of,
    tax_name,
)
from domain.vat_numbers import (
    ABSENT,
    MALFORMED,
    NOT_ELIGIBLE,
    WELL_FORMED,
    check_vat_number,
)
from domain.vat_rates import DATASET_VERSION

CHECKED_AT = datetime(2025, 3, 1, 9, 30, tzinfo=UTC)
NONE = VatNumberStatus(ABSENT)
SPRING_2025 = date(2025, 3, 31)


def valid(number: str, country: str) -> VatNumberStatus:
    return VatNumberStatus(CHECK_VALID, number, country, "WAPIAAAAZ0000001", CHECKED_AT)


def invalid(number: str) -> VatNumberStatus:
    return VatNumberStatus(CHECK_INVALID, number, checked_at=CHECKED_AT)


def pending(number: str) -> VatNumberStatus:
    return VatNumberStatus(CHECK_PENDING, number)


FR_VAT = "FR40303265045"
DE_VAT = "DE136695976"
EL_VAT = "EL094259216"
PT_VAT = "PT501964843"

# (case, seller, customer country, postcode, VAT number, supply date, regime, code, rate)
CASES = [
    # Germany sells: consumers and businesses at home, in the EU and beyond.
    ("consumer at home", "DE", "DE", "10115", NONE, SPRING_2025, DOMESTIC, "de", "19"),
    ("consumer in France", "DE", "FR", "75001", NONE, SPRING_2025, DESTINATION, "fr", "20"),
    ("consumer in Greece", "DE", "GR", "10431", NONE, SPRING_2025, DESTINATION, "gr", "24"),
    ("consumer in Finland", "DE", "FI", "00100", NONE, SPRING_2025, DESTINATION, "fi", "25.5"),
    (
        "consumer in Monaco is French",
        "DE",
        "MC",
        "98000",
        NONE,
        SPRING_2025,
        DESTINATION,
        "fr",
        "20",
    ),
    (
        "business at home",
        "DE",
        "DE",
        "10115",
        valid(DE_VAT, "DE"),
        SPRING_2025,
        DOMESTIC,
        "de",
        "19",
    ),
    (
        "valid French business",
        "DE",
        "FR",
        "75001",
        valid(FR_VAT, "FR"),
        SPRING_2025,
        REVERSE_CHARGE,
        "rc",
        "0",
    ),
    (
        "valid Greek business (EL)",
        "DE",
        "GR",
        None,
        valid(EL_VAT, "GR"),
        SPRING_2025,
        REVERSE_CHARGE,
        "rc",
        "0",
    ),
    (
        "VIES country beats the address",
        "DE",
        "FR",
        "75001",
        valid(DE_VAT, "DE"),
        SPRING_2025,
        DOMESTIC,
        "de",
        "19",
    ),
    (
        "invalid French number",
        "DE",
        "FR",
        "75001",
        invalid(FR_VAT),
        SPRING_2025,
        DESTINATION,
        "fr",
        "20",
    ),
    (
        "malformed number",
        "DE",
        "FR",
        "75001",
        VatNumberStatus(MALFORMED, "FR123"),
        SPRING_2025,
        DESTINATION,
        "fr",
        "20",
    ),
    (
        "unverified number",
        "DE",
        "FR",
        "75001",
        VatNumberStatus(CHECK_UNVERIFIED, FR_VAT),
        SPRING_2025,
        DESTINATION,
        "fr",
        "20",
    ),
    (
        "pending French number",
        "DE",
        "FR",
        "75001",
        pending(FR_VAT),
        SPRING_2025,
        PENDING,
        "fr",
        "20",
    ),
    (
        "pending number at home",
        "DE",
        "DE",
        "10115",
        pending(DE_VAT),
        SPRING_2025,
        PENDING,
        "de",
        "19",
    ),
    (
        "XI number in Ireland",
        "DE",
        "IE",
        "D02",
        VatNumberStatus(NOT_ELIGIBLE, "XI123456782"),
        SPRING_2025,
        DESTINATION,
        "ie",
        "23",
    ),
    (
        "EU-prefixed number in NL",
        "DE",
        "NL",
        "1012",
        VatNumberStatus(NOT_ELIGIBLE, "EU372000041"),
        SPRING_2025,
        DESTINATION,
        "nl",
        "21",
    ),
    (
        "XI number in Northern Ireland",
        "DE",
        "GB",
        "BT1 1AA",
        VatNumberStatus(NOT_ELIGIBLE, "XI123456782"),
        SPRING_2025,
        OUTSIDE_SCOPE,
        "ex",
        "0",
    ),
    ("consumer in the US", "DE", "US", "94105", NONE, SPRING_2025, OUTSIDE_SCOPE, "ex", "0"),
    (
        "Swiss business",
        "DE",
        "CH",
        "8001",
        VatNumberStatus(MALFORMED, "CHE123456788"),
        SPRING_2025,
        OUTSIDE_SCOPE,
        "ex",
        "0",
    ),
    (
        "US business with a valid EU number",
        "DE",
        "US",
        "10001",
        valid(FR_VAT, "FR"),
        SPRING_2025,
        OUTSIDE_SCOPE,
        "ex",
        "0",
    ),
    ("consumer in the UK", "DE", "GB", "SW1A 1AA", NONE, SPRING_2025, OUTSIDE_SCOPE, "ex", "0"),
    # No customer country (§9.3 step 1).
    ("no country, no number", "DE", None, None, NONE, SPRING_2025, DOMESTIC, "de", "19"),
    (
        "no country, valid French number",
        "DE",
        None,
        None,
        valid(FR_VAT, "FR"),
        SPRING_2025,
        REVERSE_CHARGE,
        "rc",
        "0",
    ),
    (
        "no country, pending number",
        "DE",
        None,
        None,
        pending(FR_VAT),
        SPRING_2025,
        PENDING,
        "de",
        "19",
    ),
    # Art. 6 territories, by postcode or by their own ISO code (§9.4).
    ("Mount Athos", "DE", "GR", "63086", NONE, SPRING_2025, OUTSIDE_SCOPE, "ex", "0"),
    ("Las Palmas", "DE", "ES", "35001", NONE, SPRING_2025, OUTSIDE_SCOPE, "ex", "0"),
    (
        "Tenerife business",
        "DE",
        "ES",
        "38001",
        valid("ESA28015865", "ES"),
        SPRING_2025,
        OUTSIDE_SCOPE,
        "ex",
        "0",
    ),
    ("Ceuta", "DE", "ES", "51001", NONE, SPRING_2025, OUTSIDE_SCOPE, "ex", "0"),
    ("Melilla", "DE", "ES", "52001", NONE, SPRING_2025, OUTSIDE_SCOPE, "ex", "0"),
    ("Madrid", "DE", "ES", "28001", NONE, SPRING_2025, DESTINATION, "es", "21"),
    (
        "Heligoland, from a German seller",
        "DE",
        "DE",
        "D-27498",
        NONE,
        SPRING_2025,
        OUTSIDE_SCOPE,
        "ex",
        "0",
    ),
    ("Busingen", "DE", "DE", "78266", NONE, SPRING_2025, OUTSIDE_SCOPE, "ex", "0"),
    ("Livigno", "DE", "IT", "23041", NONE, SPRING_2025, OUTSIDE_SCOPE, "ex", "0"),
    ("Campione d'Italia", "DE", "IT", "22061", NONE, SPRING_2025, OUTSIDE_SCOPE, "ex", "0"),
    ("Aland by postcode", "DE", "FI", "22100", NONE, SPRING_2025, OUTSIDE_SCOPE, "ex", "0"),
    ("Aland as AX", "DE", "AX", "22100", NONE, SPRING_2025, OUTSIDE_SCOPE, "ex", "0"),
    ("Reunion, German seller", "DE", "FR", "97400", NONE, SPRING_2025, OUTSIDE_SCOPE, "ex", "0"),
    (
        "Reunion, French seller",
        "FR",
        "FR",
        "97400",
        NONE,
        SPRING_2025,
        DOMESTIC,
        "fr:reunion",
        "8.5",
    ),
    (
        "Guadeloupe as GP, French seller",
        "FR",
        "GP",
        "97110",
        NONE,
        SPRING_2025,
        DOMESTIC,
        "fr:guadeloupe",
        "8.5",
    ),
    ("Guyane, French seller", "FR", "FR", "97300", NONE, SPRING_2025, DOMESTIC, "fr:guyane", "0"),
    (
        "Reunion business, French seller",
        "FR",
        "FR",
        "97400",
        valid(FR_VAT, "FR"),
        SPRING_2025,
        DOMESTIC,
        "fr:reunion",
        "8.5",
    ),
    (
        "Saint-Martin, French seller",
        "FR",
        "FR",
        "97150",
        NONE,
        SPRING_2025,
        OUTSIDE_SCOPE,
        "ex",
        "0",
    ),
    # Regions inside EU VAT with their own rate.
    (
        "Madeira consumer",
        "DE",
        "PT",
        "9000-123",
        NONE,
        SPRING_2025,
        DESTINATION,
        "pt:madeira",
        "22",
    ),
    (
        "Madeira business",
        "DE",
        "PT",
        "9000-123",
        valid(PT_VAT, "PT"),
        SPRING_2025,
        REVERSE_CHARGE,
        "rc",
        "0",
    ),
    (
        "Madeira business, Portuguese seller",
        "PT",
        "PT",
        "9000-123",
        valid(PT_VAT, "PT"),
        SPRING_2025,
        DOMESTIC,
        "pt:madeira",
        "22",
    ),
    ("Lisbon consumer", "DE", "PT", "1100-148", NONE, SPRING_2025, DESTINATION, "pt", "23"),
    (
        "Azores before July 2021",
        "DE",
        "PT",
        "9500-100",
        NONE,
        date(2021, 6, 30),
        DESTINATION,
        "pt:azores",
        "18",
    ),
    (
        "Azores from July 2021",
        "DE",
        "PT",
        "9500-100",
        NONE,
        date(2021, 7, 1),
        DESTINATION,
        "pt:azores",
        "16",
    ),
    ("Jungholz", "DE", "AT", "6691", NONE, SPRING_2025, DESTINATION, "at:jungholz", "19"),
    ("Vienna", "DE", "AT", "1010", NONE, SPRING_2025, DESTINATION, "at", "20"),
    # Rates change with the supply date, on both sides of each change.
    ("Finland before 25.5", "DE", "FI", "00100", NONE, date(2024, 8, 31), DESTINATION, "fi", "24"),
    ("Finland from 25.5", "DE", "FI", "00100", NONE, date(2024, 9, 1), DESTINATION, "fi", "25.5"),
    (
        "Finnish seller at home, 2024-09-01",
        "FI",
        "FI",
        "00100",
        NONE,
        date(2024, 9, 1),
        DOMESTIC,
        "fi",
        "25.5",
    ),
    ("Slovakia before 23", "DE", "SK", "81101", NONE, date(2024, 12, 31), DESTINATION, "sk", "20"),
    ("Slovakia from 23", "DE", "SK", "81101", NONE, date(2025, 1, 1), DESTINATION, "sk", "23"),
    ("Estonia before 24", "DE", "EE", "10111", NONE, date(2025, 6, 30), DESTINATION, "ee", "22"),
    ("Estonia from 24", "DE", "EE", "10111", NONE, date(2025, 7, 1), DESTINATION, "ee", "24"),
    ("Estonia 2023", "DE", "EE", "10111", NONE, date(2023, 12, 31), DESTINATION, "ee", "20"),
    ("Romania before 21", "DE", "RO", "010011", NONE, date(2025, 7, 31), DESTINATION, "ro", "19"),
    ("Romania from 21", "DE", "RO", "010011", NONE, date(2025, 8, 1), DESTINATION, "ro", "21"),
    (
        "Germany before the 2020 cut",
        "DE",
        "DE",
        "10115",
        NONE,
        date(2020, 6, 30),
        DOMESTIC,
        "de",
        "19",
    ),
    (
        "Germany during the 2020 cut",
        "DE",
        "DE",
        "10115",
        NONE,
        date(2020, 7, 1),
        DOMESTIC,
        "de",
        "16",
    ),
    (
        "Germany, last day of the cut",
        "DE",
        "DE",
        "10115",
        NONE,
        date(2020, 12, 31),
        DOMESTIC,
        "de",
        "16",
    ),
    ("Germany after the cut", "DE", "DE", "10115", NONE, date(2021, 1, 1), DOMESTIC, "de", "19"),
    ("Ireland before its cut", "DE", "IE", "D02", NONE, date(2020, 8, 31), DESTINATION, "ie", "23"),
    ("Ireland during its cut", "DE", "IE", "D02", NONE, date(2020, 9, 1), DESTINATION, "ie", "21"),
    (
        "Ireland, last day of its cut",
        "DE",
        "IE",
        "D02",
        NONE,
        date(2021, 2, 28),
        DESTINATION,
        "ie",
        "21",
    ),
    ("Ireland after its cut", "DE", "IE", "D02", NONE, date(2021, 3, 1), DESTINATION, "ie", "23"),
    ("Luxembourg 2022", "DE", "LU", "1111", NONE, date(2022, 12, 31), DESTINATION, "lu", "17"),
    ("Luxembourg 2023", "DE", "LU", "1111", NONE, date(2023, 1, 1), DESTINATION, "lu", "16"),
    (
        "Luxembourg end of 2023",
        "DE",
        "LU",
        "1111",
        NONE,
        date(2023, 12, 31),
        DESTINATION,
        "lu",
        "16",
    ),
    ("Luxembourg 2024", "DE", "LU", "1111", NONE, date(2024, 1, 1), DESTINATION, "lu", "17"),
    ("France at 19.6", "DE", "FR", "75001", NONE, date(2013, 12, 31), DESTINATION, "fr", "19.6"),
    ("France at 20", "DE", "FR", "75001", NONE, date(2014, 1, 1), DESTINATION, "fr", "20"),
    (
        "reverse charge during a rate change",
        "DE",
        "FI",
        "00100",
        valid("FI20774740", "FI"),
        date(2024, 9, 1),
        REVERSE_CHARGE,
        "rc",
        "0",
    ),
]
CODES = {"rc": "lago_eu_reverse_charge", "ex": "lago_eu_tax_exempt"}


def _code(short: str) -> str:
    if short in CODES:
        return CODES[short]
    country, _, territory = short.partition(":")
    if territory:
        return f"lago_eu_{country}_exception_{territory}"
    return f"lago_eu_{country}_standard"


@pytest.mark.parametrize(
    ("seller", "country", "postcode", "vat", "supply_date", "regime", "code", "rate"),
    [case[1:] for case in CASES],
    ids=[case[0] for case in CASES],
)
def test_the_decision_table(
    seller: str,
    country: str | None,
    postcode: str | None,
    vat: VatNumberStatus,
    supply_date: date,
    regime: str,
    code: str,
    rate: str,
) -> None:
    decision = decide(
        seller_country=seller,
        customer_country=country,
        customer_postcode=postcode,
        vat_number=vat,
        supply_date=supply_date,
    )
    assert (decision.regime, decision.tax_code, decision.rate) == (
        regime,
        _code(code),
        Decimal(rate),
    )
    assert decision.dataset_version == DATASET_VERSION
    assert decision.supply_date == supply_date


def test_the_table_has_at_least_forty_cases_of_every_kind() -> None:
    assert len(CASES) >= 40
    regimes = {case[6] for case in CASES}
    assert regimes == {DOMESTIC, DESTINATION, REVERSE_CHARGE, OUTSIDE_SCOPE, PENDING}


def test_a_reverse_charge_carries_the_legal_mention_and_the_vies_proof() -> None:
    decision = decide(
        seller_country="DE",
        seller_vat_number=DE_VAT,
        customer_country="FR",
        customer_postcode="75001",
        vat_number=valid(FR_VAT, "FR"),
        supply_date=SPRING_2025,
    )
    assert decision.legal_mention == REVERSE_CHARGE_MENTION
    assert decision.legal_mention.startswith("Reverse charge")
    assert decision.country == "FR"
    assert decision.tax_name == "Lago EU Reverse Charge"
    assert decision.evidence == {
        "seller_country": "DE",
        "seller_vat_number": DE_VAT,
        "customer_country": "FR",
        "customer_postcode": "75001",
        "location": "vies",
        "vat_number": FR_VAT,
        "vat_number_status": "valid",
        "vies_country": "FR",
        "vies_consultation_number": "WAPIAAAAZ0000001",
        "vies_checked_at": "2025-03-01T09:30:00+00:00",
    }


def test_outside_the_eu_and_in_a_territory_the_mentions_differ() -> None:
    us = decide(
        seller_country="DE",
        customer_country="US",
        customer_postcode=None,
        vat_number=NONE,
        supply_date=SPRING_2025,
    )
    canary = decide(
        seller_country="DE",
        customer_country="ES",
        customer_postcode="35001",
        vat_number=NONE,
        supply_date=SPRING_2025,
    )
    guyane = decide(
        seller_country="FR",
        customer_country="FR",
        customer_postcode="97300",
        vat_number=NONE,
        supply_date=SPRING_2025,
    )
    assert (us.legal_mention, us.country) == (OUTSIDE_EU_MENTION, "US")
    assert (canary.legal_mention, canary.evidence["territory"]) == (
        ARTICLE_6_MENTION,
        "Canary Islands",
    )
    assert guyane.legal_mention == FRENCH_ART_294_MENTION
    assert guyane.tax_name == "Lago EU FR Guyane Standard"


def test_a_pending_decision_is_provisional_and_says_what_it_would_be() -> None:
    decision = decide(
        seller_country="DE",
        customer_country="FR",
        customer_postcode=None,
        vat_number=pending(FR_VAT),
        supply_date=SPRING_2025,
    )
    assert decision.pending
    assert decision.legal_mention is None
    assert decision.evidence["provisional_regime"] == DESTINATION
    assert decision.as_record()["regime"] == "pending"


def test_below_the_threshold_without_opting_in_consumers_pay_the_sellers_rate() -> None:
    decision = decide(
        seller_country="DE",
        customer_country="FR",
        customer_postcode=None,
        vat_number=NONE,
        supply_date=SPRING_2025,
        b2c_destination=False,
    )
    assert (decision.regime, decision.tax_code, decision.rate) == (
        ORIGIN,
        "lago_eu_de_standard",
        Decimal(19),
    )
    assert decision.evidence["b2c_scheme"] == "origin"


def test_a_seller_outside_the_eu_gets_no_eu_decision() -> None:
    for seller in ("US", "GB", "XI", "CH"):
        with pytest.raises(InvalidValueError) as error:
            decide(
                seller_country=seller,
                customer_country="FR",
                customer_postcode=None,
                vat_number=NONE,
                supply_date=SPRING_2025,
            )
        assert error.value.reason == "org_must_be_in_eu"


def test_a_decision_records_as_json_facts() -> None:
    decision = decide(
        seller_country="DE",
        customer_country="FI",
        customer_postcode="00100",
        vat_number=NONE,
        supply_date=date(2024, 9, 30),
    )
    assert decision.as_record() == {
        "regime": "destination",
        "country": "FI",
        "tax_code": "lago_eu_fi_standard",
        "tax_name": "Lago EU FI Standard",
        "rate": "25.5",
        "legal_mention": None,
        "dataset_version": DATASET_VERSION,
        "supply_date": "2024-09-30",
        "evidence": {
            "b2c_scheme": "oss_union",
            "customer_country": "FI",
            "customer_postcode": "00100",
            "location": "customer_address",
            "seller_country": "DE",
            "vat_number_status": "absent",
        },
    }


def test_the_supply_date_is_the_last_local_day_of_the_period() -> None:
    # December's usage in Paris ends at 2025-01-01 00:00 local, 2024-12-31 23:00 UTC.
    end_at = datetime(2024, 12, 31, 23, 0, tzinfo=UTC)
    assert supply_date_of(end_at, "Europe/Paris") == date(2024, 12, 31)
    assert supply_date_of(datetime(2025, 1, 1, tzinfo=UTC), "UTC") == date(2024, 12, 31)
    # So Slovak December 2024 usage is taxed at 20, not at January's 23.
    decision = decide(
        seller_country="DE",
        customer_country="SK",
        customer_postcode=None,
        vat_number=NONE,
        supply_date=supply_date_of(datetime(2025, 1, 1, tzinfo=UTC), "UTC"),
    )
    assert decision.rate == Decimal(20)


@pytest.mark.parametrize(
    ("postcode", "normalised"),
    [("D-27498", "27498"), ("9000-123", "9000123"), ("AX-22100", "22100"), ("BT1 1AA", "11AA")],
)
def test_postcodes_are_read_without_separators_or_country_letters(
    postcode: str, normalised: str
) -> None:
    assert normalise_postcode(postcode) == normalised


def test_the_longest_postcode_prefix_wins() -> None:
    saint_martin = find_territory("FR", "97150")
    guadeloupe = find_territory("FR", "97100")
    assert saint_martin is not None and guadeloupe is not None
    assert (saint_martin.slug, guadeloupe.slug) == ("saint_martin", "guadeloupe")
    assert find_territory("FR", "75001") is None
    assert find_territory("DE", "22100") is None  # Åland's prefix, but in Germany.


def test_lagos_tax_names() -> None:
    assert tax_name("lago_eu_fr_standard") == "Lago EU FR Standard"
    assert tax_name("lago_eu_pt_exception_madeira") == "Lago EU PT Madeira Standard"
    assert tax_name("lago_eu_tax_exempt") == "Lago EU Tax Exempt"


# VAT numbers, offline.


@pytest.mark.parametrize(
    ("raw", "country", "status", "number"),
    [
        ("FR40303265045", None, WELL_FORMED, "FR40303265045"),
        ("fr 40 303 265 045", None, WELL_FORMED, "FR40303265045"),
        ("40303265045", "FR", WELL_FORMED, "FR40303265045"),
        ("U13585627", "AT", WELL_FORMED, "ATU13585627"),
        ("EL094259216", None, WELL_FORMED, "EL094259216"),
        ("GR094259216", None, WELL_FORMED, "EL094259216"),
        ("094259216", "GR", WELL_FORMED, "EL094259216"),
        ("BE 0403.170.701", None, WELL_FORMED, "BE0403170701"),
        ("FR40303265046", None, MALFORMED, "FR40303265046"),
        ("DE12345", None, MALFORMED, "DE12345"),
        ("40303265045", None, MALFORMED, "40303265045"),
        ("40303265045", "US", MALFORMED, "40303265045"),
        ("GB123456782", None, MALFORMED, "GB123456782"),
        ("CHE-123.456.788", "CH", MALFORMED, "CHE123456788"),
        ("XI123456782", None, NOT_ELIGIBLE, "XI123456782"),
        ("EU372000041", None, NOT_ELIGIBLE, "EU372000041"),
        ("IM123456782", None, NOT_ELIGIBLE, "IM123456782"),
        (None, "FR", ABSENT, None),
        ("   ", "FR", ABSENT, None),
    ],
)
def test_vat_numbers_are_checked_offline(
    raw: str | None, country: str | None, status: str, number: str | None
) -> None:
    checked = check_vat_number(raw, country)
    assert (checked.status, checked.number) == (status, number)


def test_a_well_formed_number_splits_as_vies_takes_it() -> None:
    checked = check_vat_number("GR094259216")
    assert checked.vies_parts == ("EL", "094259216")
    assert checked.member_state == "GR"
    assert check_vat_number("XI123456782").vies_parts is None
