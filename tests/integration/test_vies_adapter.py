"""The VIES REST adapter against the local fake that speaks the EC's protocol on a loopback port."""

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest

from adapters.settings import SettingsError
from adapters.stores import Ledger
from adapters.vies import EC_VIES_URL, FakeVies, HttpVies, parse_answer, vies_from_env
from application.vat import VatChecks, ViesError
from domain.vat import CHECK_VALID, REVERSE_CHARGE
from tests.conftest import Tenant, free_port

FR_VAT = "FR40303265045"


@pytest.fixture
def fake() -> Iterator[FakeVies]:
    with FakeVies() as server:
        yield server


def test_a_valid_number_comes_back_with_its_consultation_number(fake: FakeVies) -> None:
    fake.register(FR_VAT, name="ACME SAS", address="1 rue de la Paix, Paris")
    answer = HttpVies(fake.url).check_vat_number("FR", "40303265045", ("DE", "136695976"))
    assert (answer.valid, answer.country_code, answer.vat_number) == (True, "FR", "40303265045")
    assert answer.consultation_number == "WAPIAAAAZ0000001"
    assert (answer.name, answer.address) == ("ACME SAS", "1 rue de la Paix, Paris")
    assert answer.request_date is not None and answer.request_date.tzinfo is UTC
    assert fake.requests == [
        {
            "countryCode": "FR",
            "vatNumber": "40303265045",
            "requesterMemberStateCode": "DE",
            "requesterNumber": "136695976",
        }
    ]


def test_an_unknown_number_is_invalid_and_undisclosed_fields_are_none(fake: FakeVies) -> None:
    answer = HttpVies(fake.url).check_vat_number("FR", "40303265045")
    assert (answer.valid, answer.name, answer.address, answer.consultation_number) == (
        False,
        None,
        None,
        None,
    )


@pytest.mark.parametrize("code", ["MS_UNAVAILABLE", "TIMEOUT", "MS_MAX_CONCURRENT_REQ"])
def test_vies_errors_become_temporary_vies_errors(fake: FakeVies, code: str) -> None:
    fake.fail_next(FR_VAT, code)
    with pytest.raises(ViesError) as error:
        HttpVies(fake.url).check_vat_number("FR", "40303265045")
    assert (error.value.code, error.value.temporary) == (code, True)


def test_a_maintenance_page_is_an_http_error(fake: FakeVies) -> None:
    fake.fail_next(FR_VAT, "HTML")
    with pytest.raises(ViesError) as error:
        HttpVies(fake.url).check_vat_number("FR", "40303265045")
    assert (error.value.code, error.value.temporary) == ("HTTP_ERROR", True)


def test_no_server_is_a_network_error() -> None:
    with pytest.raises(ViesError) as error:
        HttpVies(f"http://127.0.0.1:{free_port()}", timeout_s=2).check_vat_number("FR", "1")
    assert error.value.code == "NETWORK_ERROR"


def test_an_error_in_user_error_is_not_an_answer() -> None:
    body = b'{"countryCode": "FR", "vatNumber": "1", "valid": false, "userError": "MS_UNAVAILABLE"}'
    with pytest.raises(ViesError) as error:
        parse_answer(200, body)
    assert error.value.code == "MS_UNAVAILABLE"


def test_checks_retry_through_http_until_vies_answers(
    fake: FakeVies, ledger: Ledger, tenant: Tenant
) -> None:
    fake.register(FR_VAT)
    fake.fail_next(FR_VAT, "MS_UNAVAILABLE", "HTML")
    now = [datetime(2025, 3, 1, tzinfo=UTC)]
    billing = ledger.billing
    billing.now = lambda: now[0]
    billing.update_organization_settings(
        tenant.organization_id,
        {"country": "DE", "eu_tax_management": True, "tax_identification_number": "DE136695976"},
    )
    customer = billing.upsert_customer(
        tenant.organization_id, "cus_1", {"country": "FR", "tax_identification_number": FR_VAT}
    )
    checks = VatChecks(billing, HttpVies(fake.url))
    for _ in range(3):
        assert checks.run() == 1
        now[0] += timedelta(hours=1)
    check = billing.vat_number_check(tenant.organization_id, FR_VAT)
    assert check is not None
    assert (check.status, check.failed_attempts) == (CHECK_VALID, 2)
    assert check.consultation_number == "WAPIAAAAZ0000001"
    taxes = checks.taxes_for(tenant.organization_id, customer, now[0].date())
    assert taxes is not None and taxes.record["regime"] == REVERSE_CHARGE
    assert len(fake.requests) == 3


def test_the_url_comes_from_tally_vies_url() -> None:
    assert vies_from_env({}).endpoint == EC_VIES_URL + "/check-vat-number"
    local = vies_from_env({"TALLY_VIES_URL": "http://127.0.0.1:9/vies/"})
    assert local.endpoint == "http://127.0.0.1:9/vies/check-vat-number"
    with pytest.raises(SettingsError):
        vies_from_env({"TALLY_VIES_URL": "ec.europa.eu"})
