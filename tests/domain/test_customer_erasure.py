"""A customer's personal data: what counts as personal, and its erasure."""

from datetime import UTC, datetime
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from domain.customer import (
    ERASED,
    PERSONAL_TEXT_FIELDS,
    Customer,
    erased,
    join_personal,
    split_personal,
)
from tests.builders import customer

NOW = datetime(2026, 3, 1, tzinfo=UTC)
FIELDS: dict[str, Any] = {
    "name": "Ada Lovelace",
    "email": "ada@example.org",
    "currency": "EUR",
    "country": "GB",
    "timezone": "Europe/London",
    "tax_identification_number": "GB123",
    "shipping_address": {"city": "London", "zipcode": "N1", "country": "GB"},
    "metadata": [{"key": "team", "value": "engines", "display_in_invoice": True}],
    "tax_codes": ["vat"],
}


def test_personal_values_are_split_from_what_billing_needs() -> None:
    clear, personal = split_personal(FIELDS)
    assert clear == {
        "currency": "EUR",
        "country": "GB",
        "timezone": "Europe/London",
        "shipping_address": {"country": "GB"},
        "metadata": [{"key": "team", "display_in_invoice": True}],
        "tax_codes": ["vat"],
    }
    assert personal == {
        "name": "Ada Lovelace",
        "email": "ada@example.org",
        "tax_identification_number": "GB123",
        "shipping_address.city": "London",
        "shipping_address.zipcode": "N1",
        "metadata.0.value": "engines",
    }
    assert join_personal(clear, personal) == FIELDS


text = st.text(max_size=20)


@given(
    personal=st.dictionaries(st.sampled_from(PERSONAL_TEXT_FIELDS), text),
    address=st.none() | st.dictionaries(st.sampled_from(["city", "state", "country"]), text),
    metadata=st.none()
    | st.lists(
        st.fixed_dictionaries({"key": text, "value": text, "display_in_invoice": st.booleans()})
    ),
    currency=st.none() | st.sampled_from(["EUR", "JPY"]),
)
def test_splitting_then_joining_gives_the_fields_back(
    personal: dict[str, str],
    address: dict[str, str] | None,
    metadata: list[dict[str, Any]] | None,
    currency: str | None,
) -> None:
    fields: dict[str, Any] = dict(personal)
    if address is not None:
        fields["shipping_address"] = address
    if metadata is not None:
        fields["metadata"] = metadata
    if currency is not None:
        fields["currency"] = currency
    clear, found = split_personal(fields)
    assert join_personal(clear, found) == fields
    assert set(found) <= {*PERSONAL_TEXT_FIELDS} | {
        p for p in found if p.startswith(("shipping_address.", "metadata."))
    }
    assert all(v == ERASED for v in split_personal(erased(fields))[1].values())
    assert split_personal(erased(fields))[0] == clear


def test_erasure_replaces_every_personal_value_and_keeps_the_rest() -> None:
    # Given a customer with personal data
    ada = customer("cus_1", **{k: v for k, v in FIELDS.items() if k != "currency"})
    # When it is erased
    assert ada.erase(NOW) is True
    # Then one Erased event, personal values read ERASED, billing fields are kept
    [event] = ada.collect_events()
    assert isinstance(event, Customer.Erased)
    assert ada.fields["name"] == ada.fields["email"] == ERASED
    assert ada.fields["shipping_address"] == {"city": ERASED, "zipcode": ERASED, "country": "GB"}
    assert ada.fields["metadata"] == [{"key": "team", "value": ERASED, "display_in_invoice": True}]
    assert (ada.currency, ada.timezone, ada.fields["country"]) == ("EUR", "Europe/London", "GB")
    assert ada.erased_at == event.erased_at == NOW


def test_erasing_again_records_nothing_until_new_personal_data_arrives() -> None:
    ada = customer("cus_1")
    ada.erase(NOW)
    ada.collect_events()
    assert ada.erase(NOW) is False
    assert ada.collect_events() == []
    # New personal data given after the erasure is new data, erasable in turn.
    ada.upsert({"name": "Ada again"})
    assert ada.fields["name"] == "Ada again"
    assert ada.erase(NOW) is True
    assert [type(e) for e in ada.collect_events()] == [Customer.Updated, Customer.Erased]
