"""Customers end to end: a real `tally serve` process driven by Lago's official Python client."""

import pytest
from lago_python_client.client import Client
from lago_python_client.exceptions import LagoApiError
from lago_python_client.models import Customer

from tests.conftest import Server


@pytest.fixture
def lago(server: Server) -> Client:
    return Client(api_key=server.api_key, api_url=server.url)


def test_customers_round_trip_through_the_official_client(lago: Client) -> None:
    created = lago.customers.create(
        Customer(external_id="cus_1", name="Ada", timezone="Europe/Paris", currency="EUR")
    )
    updated = lago.customers.create(Customer(external_id="cus_1", email="ada@example.com"))
    assert updated.lago_id == created.lago_id

    found = lago.customers.find("cus_1")
    assert (found.name, found.email, found.applicable_timezone) == (
        "Ada",
        "ada@example.com",
        "Europe/Paris",
    )

    lago.customers.create(Customer(external_id="cus_2"))
    listed = lago.customers.find_all({"per_page": 1, "page": 1})
    assert [c.external_id for c in listed["customers"]] == ["cus_2"]
    assert listed["meta"]["total_count"] == 2

    deleted = lago.customers.destroy("cus_1")
    assert deleted.external_id == "cus_1"
    with pytest.raises(LagoApiError) as missing:
        lago.customers.find("cus_1")
    assert missing.value.status_code == 404
    assert missing.value.response["code"] == "customer_not_found"


def test_a_wrong_key_is_refused_with_401(server: Server) -> None:
    intruder = Client(api_key="tally_not_a_key", api_url=server.url)
    with pytest.raises(LagoApiError) as error:
        intruder.customers.find("cus_1")
    assert error.value.status_code == 401


def test_an_invalid_timezone_is_refused_naming_the_field(lago: Client) -> None:
    with pytest.raises(LagoApiError) as error:
        lago.customers.create(Customer(external_id="cus_1", timezone="Mars/Olympus"))
    assert error.value.status_code == 422
    assert error.value.response["error_details"] == {"timezone": ["invalid_timezone"]}
