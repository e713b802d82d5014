"""Customer: given (history), when (one command), then (the recorded events)."""

import pytest

from domain.customer import Customer
from domain.errors import InvalidValueError
from tests.builders import ORG_ID, customer


def test_creating_a_customer_records_its_normalised_fields() -> None:
    # When a customer is created with a lower-case country
    created = Customer.create(ORG_ID, "cus_1", {"name": "Ada", "country": "fr", "email": None})
    # Then one event records the fields, the country upper-cased and nulls left out
    [event] = created.collect_events()
    assert isinstance(event, Customer.Created)
    assert (event.external_id, event.fields) == ("cus_1", {"name": "Ada", "country": "FR"})


def test_an_upsert_records_only_the_fields_that_change() -> None:
    # Given a customer named Ada paying in EUR
    existing = customer(name="Ada")
    # When the same name and a new email arrive
    existing.upsert({"name": "Ada", "email": "ada@example.com", "city": None})
    # Then one update records only the email
    [event] = existing.collect_events()
    assert isinstance(event, Customer.Updated)
    assert event.changes == {"email": "ada@example.com"}


def test_an_upsert_that_changes_nothing_records_nothing() -> None:
    existing = customer(name="Ada")
    existing.upsert({"name": "Ada"})
    assert existing.collect_events() == []


@pytest.mark.parametrize(
    ("field", "value", "reason"),
    [
        ("timezone", "Mars/Base", "invalid_timezone"),
        ("timezone", "../etc/passwd", "invalid_timezone"),
        ("currency", "EURO", "value_is_invalid"),
        ("country", "XX", "country_code_invalid"),
        ("email", "not-an-email", "invalid_email_format"),
        ("customer_type", "robot", "value_is_invalid"),
        ("net_payment_term", -1, "value_is_invalid"),
        ("name", 12, "value_is_invalid"),
    ],
)
def test_an_invalid_field_is_refused_naming_it(field: str, value: object, reason: str) -> None:
    with pytest.raises(InvalidValueError) as error:
        Customer.create(ORG_ID, "cus_1", {field: value})
    assert (error.value.field, error.value.reason) == (field, reason)


@pytest.mark.parametrize("external_id", ["", " padded", "a/b", "a?b", "a#b", "x" * 256])
def test_an_external_id_the_sdk_could_not_address_is_refused(external_id: str) -> None:
    with pytest.raises(InvalidValueError) as error:
        Customer.create(ORG_ID, external_id, {})
    assert error.value.field == "external_id"


def test_a_customer_currency_cannot_change_once_set() -> None:
    # Given a customer paying in EUR
    existing = customer(currency="EUR")
    # When an upsert asks for USD, then it is refused and nothing is recorded
    with pytest.raises(InvalidValueError) as error:
        existing.upsert({"currency": "USD"})
    assert error.value.reason == "currencies_does_not_match"
    assert existing.collect_events() == []


def test_a_deleted_customer_used_again_starts_afresh() -> None:
    # Given a deleted customer
    existing = customer(name="Ada", city="Paris")
    existing.delete()
    existing.collect_events()
    # When its external_id is upserted again
    existing.upsert({"name": "Grace"})
    # Then it is recreated with only the new fields
    [event] = existing.collect_events()
    assert isinstance(event, Customer.Recreated)
    assert (existing.deleted, existing.fields) == (False, {"name": "Grace"})


def test_deleting_twice_records_one_deletion() -> None:
    existing = customer()
    existing.delete()
    existing.delete()
    assert [type(e) for e in existing.collect_events()] == [Customer.Deleted]
