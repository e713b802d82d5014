"""VIES checks and the EU VAT engine, with a scripted VIES port, on the in-memory store."""

from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any
from uuid import UUID

import pytest

from adapters.stores import Ledger
from application.vat import VatChecks, ViesAnswer, ViesError
from domain.vat import (
    CHECK_INVALID,
    CHECK_PENDING,
    CHECK_UNVERIFIED,
    CHECK_VALID,
    DESTINATION,
    DOMESTIC,
    PENDING,
    REVERSE_CHARGE,
    EuTaxNotApplicableError,
)
from domain.vat_check import CHECK_ATTEMPTS_MAX, VatNumberCheck
from tests.conftest import Tenant

FR_VAT = "FR40303265045"
SELLER_VAT = "DE136695976"
START = datetime(2025, 3, 1, 9, 0, tzinfo=UTC)
MARCH = date(2025, 3, 31)


@dataclass
class ScriptedVies:
    """The VIES port: numbers registered as valid, errors queued per number, calls recorded."""

    valid: set[str] = field(default_factory=set)
    errors: dict[str, list[str]] = field(default_factory=dict)
    calls: list[tuple[str, tuple[str, str] | None]] = field(default_factory=list)

    def check_vat_number(
        self, country_code: str, vat_number: str, requester: tuple[str, str] | None = None
    ) -> ViesAnswer:
        number = country_code + vat_number
        self.calls.append((number, requester))
        if self.errors.get(number):
            raise ViesError(self.errors[number].pop(0))
        known = number in self.valid
        return ViesAnswer(
            valid=known,
            country_code=country_code,
            vat_number=vat_number,
            request_date=START,
            consultation_number=f"WAPIAAAAZ{len(self.calls):07d}" if known and requester else None,
            name="ACME SAS" if known else None,
        )


class Clock:
    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> datetime:
        return self.now

    def advance(self, delta: timedelta) -> None:
        self.now += delta


@dataclass
class World:
    ledger: Ledger
    organization_id: UUID
    vies: ScriptedVies
    clock: Clock
    checks: VatChecks

    def customer(self, external_id: str = "cus_1", **fields: Any) -> Any:
        return self.ledger.billing.upsert_customer(self.organization_id, external_id, fields)

    def check(self, number: str = FR_VAT) -> VatNumberCheck:
        check = self.ledger.billing.vat_number_check(self.organization_id, number)
        assert check is not None
        return check

    def decision(self, external_id: str = "cus_1", supply_date: date = MARCH) -> Any:
        billing = self.ledger.billing
        return self.checks.decision_for(
            billing.organization(self.organization_id),
            billing.customer(self.organization_id, external_id),
            supply_date,
        )


@pytest.fixture
def world(ledger: Ledger, tenant: Tenant) -> World:
    clock = Clock()
    ledger.billing.now = clock
    ledger.billing.update_organization_settings(
        tenant.organization_id,
        {"country": "DE", "eu_tax_management": True, "tax_identification_number": SELLER_VAT},
    )
    vies = ScriptedVies()
    return World(ledger, tenant.organization_id, vies, clock, VatChecks(ledger.billing, vies))


def test_creating_a_customer_never_waits_for_vies(world: World) -> None:
    world.customer(country="FR", tax_identification_number=FR_VAT)
    assert world.vies.calls == []
    decision = world.decision()
    assert (decision.regime, decision.tax_code, decision.rate) == (
        PENDING,
        "lago_eu_fr_standard",
        Decimal(20),
    )


def test_a_valid_number_gives_reverse_charge_with_the_consultation_number(world: World) -> None:
    world.vies.valid.add(FR_VAT)
    world.customer(country="FR", tax_identification_number="FR 403 032 650 45")
    assert world.checks.run() == 1
    assert world.vies.calls == [(FR_VAT, ("DE", "136695976"))]
    check = world.check()
    assert (check.status, check.vies_country, check.consultation_number) == (
        CHECK_VALID,
        "FR",
        "WAPIAAAAZ0000001",
    )
    decision = world.decision()
    assert (decision.regime, decision.tax_code, decision.rate) == (
        REVERSE_CHARGE,
        "lago_eu_reverse_charge",
        Decimal(0),
    )
    assert decision.evidence["vies_consultation_number"] == "WAPIAAAAZ0000001"
    assert decision.evidence["seller_vat_number"] == SELLER_VAT
    assert world.checks.run() == 0  # Nothing left to ask.


def test_an_invalid_number_makes_a_consumer(world: World) -> None:
    world.customer(country="FR", tax_identification_number=FR_VAT)
    world.checks.run()
    assert world.check().status == CHECK_INVALID
    decision = world.decision()
    assert (decision.regime, decision.tax_code, decision.rate) == (
        DESTINATION,
        "lago_eu_fr_standard",
        Decimal(20),
    )


def test_temporary_errors_are_retried_later_and_never_mean_invalid(world: World) -> None:
    world.vies.valid.add(FR_VAT)
    world.vies.errors[FR_VAT] = ["MS_UNAVAILABLE", "GLOBAL_MAX_CONCURRENT_REQ"]
    world.customer(country="FR", tax_identification_number=FR_VAT)

    assert world.checks.run() == 1
    assert world.check().status == CHECK_PENDING
    assert world.decision().regime == PENDING
    assert world.checks.run() == 0  # Not due yet: the retry waits a minute.

    world.clock.advance(timedelta(minutes=1))
    assert world.checks.run() == 1
    assert (world.check().status, world.check().failed_attempts) == (CHECK_PENDING, 2)

    world.clock.advance(timedelta(minutes=2))
    assert world.checks.run() == 1
    assert world.decision().regime == REVERSE_CHARGE
    kinds = [type(e).__name__ for e in world.ledger.billing.events.get(world.check().id)]
    assert kinds == ["Created", "AttemptFailed", "AttemptFailed", "Answered"]


@pytest.mark.parametrize(("b2c", "regime"), [(True, DESTINATION), (False, PENDING)])
def test_when_vies_never_answers_the_policy_decides(world: World, b2c: bool, regime: str) -> None:
    world.vies.errors[FR_VAT] = ["SERVICE_UNAVAILABLE"] * CHECK_ATTEMPTS_MAX
    world.customer(country="FR", tax_identification_number=FR_VAT)
    for _ in range(CHECK_ATTEMPTS_MAX):
        assert world.checks.run() == 1
        world.clock.advance(timedelta(hours=6))
    assert world.check().status == CHECK_UNVERIFIED
    assert world.checks.run() == 0
    checks = VatChecks(world.ledger.billing, world.vies, finalize_unverified_as_b2c=b2c)
    assert (
        checks.decision_for(
            world.ledger.billing.organization(world.organization_id),
            world.ledger.billing.customer(world.organization_id, "cus_1"),
            MARCH,
        ).regime
        == regime
    )


def test_malformed_and_ineligible_numbers_are_never_sent_to_vies(world: World) -> None:
    world.customer("cus_1", country="FR", tax_identification_number="FR40303265046")
    world.customer("cus_2", country="IE", tax_identification_number="XI123456782")
    world.customer("cus_3", country="NL", tax_identification_number="EU372000041")
    assert world.checks.run() == 0
    assert world.vies.calls == []
    assert world.decision("cus_1").regime == DESTINATION
    assert world.decision("cus_2").tax_code == "lago_eu_ie_standard"
    assert world.decision("cus_3").tax_code == "lago_eu_nl_standard"


def test_a_new_number_gets_its_own_check(world: World) -> None:
    world.vies.valid.add("DE811569869")
    world.customer(country="FR", tax_identification_number=FR_VAT)
    world.checks.run()
    world.customer(tax_identification_number="DE811569869")
    assert world.decision().regime == PENDING
    assert world.checks.run() == 1
    assert world.decision().regime == DOMESTIC  # VIES says Germany, whatever the address says.


def test_an_old_answer_is_verified_again_before_it_decides(world: World) -> None:
    world.vies.valid.add(FR_VAT)
    customer = world.customer(country="FR", tax_identification_number=FR_VAT)
    world.checks.run()
    world.clock.advance(timedelta(days=31))
    taxes = world.checks.taxes_for(world.organization_id, customer, MARCH)
    assert taxes is not None and taxes.pending
    world.checks.run()
    taxes = world.checks.taxes_for(world.organization_id, customer, MARCH)
    assert taxes is not None and not taxes.pending
    answers = [
        e
        for e in world.ledger.billing.events.get(world.check().id)
        if isinstance(e, VatNumberCheck.Answered)
    ]
    assert len(answers) == 2


def test_taxes_for_gives_the_decision_as_taxes_and_creates_lagos_tax(world: World) -> None:
    world.vies.valid.add(FR_VAT)
    customer = world.customer(country="FR", tax_identification_number=FR_VAT)
    pending = world.checks.taxes_for(world.organization_id, customer, MARCH)
    assert pending is not None and pending.pending
    assert [(t.tax_code, t.rate) for t in pending.taxes] == [("lago_eu_fr_standard", Decimal(20))]

    world.checks.run()
    final = world.checks.taxes_for(world.organization_id, customer, MARCH)
    assert final is not None and not final.pending
    assert [(t.tax_code, t.name, t.rate) for t in final.taxes] == [
        ("lago_eu_reverse_charge", "Lago EU Reverse Charge", Decimal(0))
    ]
    assert final.legal_mention is not None and final.legal_mention.startswith("Reverse charge")
    assert final.record["regime"] == REVERSE_CHARGE
    assert final.record["evidence"]["vies_consultation_number"] == "WAPIAAAAZ0000001"
    tax = world.ledger.billing.tax(world.organization_id, "lago_eu_reverse_charge")
    assert (tax.name, tax.rate) == ("Lago EU Reverse Charge", Decimal(0))


def test_ensure_eu_taxes_follows_the_decision_and_invoices_keep_their_own_rate(
    world: World,
) -> None:
    customer = world.customer(country="FI")
    august = world.checks.taxes_for(world.organization_id, customer, date(2024, 8, 31))
    september = world.checks.taxes_for(world.organization_id, customer, date(2024, 9, 30))
    assert august is not None and september is not None
    assert (august.taxes[0].rate, september.taxes[0].rate) == (Decimal(24), Decimal("25.5"))
    assert (august.record["rate"], september.record["rate"]) == ("24", "25.5")
    tax = world.ledger.billing.tax(world.organization_id, "lago_eu_fi_standard")
    assert (tax.name, tax.rate) == ("Lago EU FI Standard", Decimal("25.5"))


def test_without_eu_tax_management_the_catalog_decides(ledger: Ledger, tenant: Tenant) -> None:
    customer = ledger.billing.upsert_customer(tenant.organization_id, "cus_1", {"country": "FR"})
    checks = VatChecks(ledger.billing, ScriptedVies())
    assert checks.taxes_for(tenant.organization_id, customer, MARCH) is None
    with pytest.raises(EuTaxNotApplicableError):
        checks.decision_for(ledger.billing.organization(tenant.organization_id), customer, MARCH)


def test_the_customers_billing_entity_is_the_seller(world: World) -> None:
    billing = world.ledger.billing
    billing.create_billing_entity(
        world.organization_id,
        "fr",
        {"name": "Acme France", "country": "FR", "eu_tax_management": True},
    )
    world.vies.valid.add(FR_VAT)
    world.customer("cus_fr", country="FR", billing_entity_code="fr")
    world.customer(
        "cus_b2b", country="FR", billing_entity_code="fr", tax_identification_number=FR_VAT
    )
    world.checks.run()
    assert world.vies.calls == [(FR_VAT, None)]  # The French entity has no VAT number of its own.
    consumer, business = world.decision("cus_fr"), world.decision("cus_b2b")
    assert (consumer.regime, consumer.tax_code) == (DOMESTIC, "lago_eu_fr_standard")
    assert (business.regime, business.tax_code) == (DOMESTIC, "lago_eu_fr_standard")


def test_a_check_requested_in_one_process_is_attempted_by_another(world: World) -> None:
    world.vies.valid.add(FR_VAT)
    world.customer(country="FR", tax_identification_number=FR_VAT)
    world.checks.request_check(world.organization_id, "cus_1")
    other_process = VatChecks(world.ledger.billing, world.vies)
    assert other_process.run() == 1
    assert world.checks.run() == 0  # The first process reads the answer from the log.
    assert world.decision().regime == REVERSE_CHARGE
