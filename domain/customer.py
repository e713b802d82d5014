"""Customer: who is billed, with Lago's fields; identified by organization and external_id.

Personal data (PERSONAL_TEXT_FIELDS, the shipping address but its country, metadata values) is
held in clear here, in memory only: the application seals it with a per-customer key before any
event is stored (application/personal_data.py), and erasure deletes that key (ADR 0017).
"""

import re
from collections.abc import Mapping
from datetime import datetime
from typing import Any, Final
from uuid import UUID

from eventsourcing.domain import AggregateCreated, AggregateEvent, BaseAggregate, event

from domain import ids
from domain.countries import check_country
from domain.errors import InvalidValueError, NotAllowedError
from domain.limits import KEY_LENGTH_MAX, TEXT_LENGTH_MAX
from domain.money import check_currency
from domain.periods import check_timezone

TEXT_FIELDS: Final = (
    "name",
    "firstname",
    "lastname",
    "email",
    "phone",
    "url",
    "address_line1",
    "address_line2",
    "city",
    "state",
    "zipcode",
    "legal_name",
    "legal_number",
    "tax_identification_number",
    "billing_entity_code",
)
CHOICES: Final = {
    "customer_type": ("company", "individual"),
    "account_type": ("customer", "partner"),
    "finalize_zero_amount_invoice": ("inherit", "skip", "finalize"),
}
BILLING_CONFIGURATION_KEYS: Final = frozenset(
    {
        "invoice_grace_period",
        "payment_provider",
        "payment_provider_code",
        "provider_customer_id",
        "sync",
        "sync_with_provider",
        "document_locale",
        "provider_payment_methods",
        "subscription_invoice_issuing_date_anchor",
        "subscription_invoice_issuing_date_adjustment",
    }
)
ADDRESS_KEYS: Final = frozenset(
    {"address_line1", "address_line2", "city", "state", "zipcode", "country"}
)
# Every field a customer records, in Lago's order of its response.
FIELDS: Final = (
    *TEXT_FIELDS,
    *CHOICES,
    "country",
    "currency",
    "timezone",
    "net_payment_term",
    "billing_configuration",
    "shipping_address",
    "metadata",
    "tax_codes",
)
# Personal data: sealed with the customer's key in stored events, shown as ERASED once the key is
# deleted. Country, currency, timezone, tax codes and settings stay in clear: billing, VAT and
# audits need them, and alone they identify nobody.
PERSONAL_TEXT_FIELDS: Final = (
    "name",
    "firstname",
    "lastname",
    "email",
    "phone",
    "url",
    "address_line1",
    "address_line2",
    "city",
    "state",
    "zipcode",
    "legal_name",
    "legal_number",
    "tax_identification_number",
)
ERASED: Final = "[erased]"  # What an erased value reads as, in every projection and replay.
# Lago accepts several addresses separated by commas; each must look like one.
EMAIL: Final = re.compile(r"^[^@\s,]+@[^@\s,]+\.[^@\s,]+$")
NET_PAYMENT_TERM_MAX: Final = 3650  # Ten years: a longer term is a typing error.
METADATA_MAX: Final = 50


def check_key(value: str, field: str) -> str:
    """An external id or code: the SDK does not escape paths, so / ? # could never be addressed."""
    if not 0 < len(value) <= KEY_LENGTH_MAX or value != value.strip():
        raise InvalidValueError(field, "value_is_invalid", value)
    if any(c in value for c in "/?#") or not value.isprintable():
        raise InvalidValueError(field, "value_is_invalid", value)
    return value


def _check_text(value: Any, field: str) -> str:
    if not isinstance(value, str) or len(value) > TEXT_LENGTH_MAX:
        raise InvalidValueError(field, "value_is_invalid", value)
    return value


def check_customer_fields(values: Mapping[str, Any]) -> dict[str, Any]:
    """Validate the given (non-null) fields and return them normalised, ready for an event."""
    checked: dict[str, Any] = {}
    for field, value in values.items():
        if value is None:
            continue  # Lago's client sends null for "not provided".
        if field in TEXT_FIELDS:
            checked[field] = _check_text(value, field)
        elif field in CHOICES:
            if value not in CHOICES[field]:
                raise InvalidValueError(field, "value_is_invalid", value)
            checked[field] = value
        elif field == "country":
            checked[field] = check_country(_check_text(value, field))
        elif field == "currency":
            checked[field] = check_currency(_check_text(value, field))
        elif field == "timezone":
            checked[field] = check_timezone(_check_text(value, field))
        elif field == "net_payment_term":
            if type(value) is not int or not 0 <= value <= NET_PAYMENT_TERM_MAX:
                raise InvalidValueError(field, "value_is_invalid", value)
            checked[field] = value
        elif field == "billing_configuration":
            checked[field] = _check_object(value, field, BILLING_CONFIGURATION_KEYS)
        elif field == "shipping_address":
            address = _check_object(value, field, ADDRESS_KEYS)
            if address.get("country") is not None:
                address["country"] = check_country(address["country"], f"{field}.country")
            checked[field] = address
        elif field == "metadata":
            checked[field] = _check_metadata(value)
        elif field == "tax_codes":
            if not isinstance(value, list) or not all(isinstance(c, str) for c in value):
                raise InvalidValueError(field, "value_is_invalid", value)
            checked[field] = list(dict.fromkeys(value))
        else:
            raise InvalidValueError(field, "unsupported_field", value)
    email = checked.get("email")
    if email and not all(EMAIL.match(part.strip()) for part in email.split(",")):
        raise InvalidValueError("email", "invalid_email_format", email)
    return checked


def _check_object(value: Any, field: str, keys: frozenset[str]) -> dict[str, Any]:
    if not isinstance(value, Mapping):
        raise InvalidValueError(field, "value_is_invalid", value)
    for key, item in value.items():
        if key not in keys:
            raise InvalidValueError(f"{field}.{key}", "unsupported_field", item)
        if not (item is None or isinstance(item, (str, bool, int, list))):
            raise InvalidValueError(f"{field}.{key}", "value_is_invalid", item)
    return {key: item for key, item in value.items() if item is not None}


def _check_metadata(value: Any) -> list[dict[str, Any]]:
    if not isinstance(value, list) or len(value) > METADATA_MAX:
        raise InvalidValueError("metadata", "value_is_invalid", value)
    entries: dict[str, dict[str, Any]] = {}
    for i, item in enumerate(value):
        if not isinstance(item, Mapping) or not isinstance(item.get("key"), str):
            raise InvalidValueError(f"metadata.{i}.key", "value_is_mandatory", item)
        if not isinstance(item.get("value"), str):
            raise InvalidValueError(f"metadata.{i}.value", "value_is_mandatory", item)
        entries[item["key"]] = {
            "key": item["key"],
            "value": item["value"],
            "display_in_invoice": bool(item.get("display_in_invoice", False)),
        }
    return list(entries.values())


def split_personal(values: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Customer fields (or changes) as (clear part, personal values by path).

    Paths are a field name ("email"), "shipping_address.<key>" (every key but the country) or
    "metadata.<index>.value" (the keys and display flags of metadata entries stay in clear).
    """
    clear: dict[str, Any] = {}
    personal: dict[str, Any] = {}
    for field, value in values.items():
        if field in PERSONAL_TEXT_FIELDS:
            personal[field] = value
        elif field == "shipping_address" and isinstance(value, Mapping):
            clear[field] = {k: v for k, v in value.items() if k == "country"}
            personal.update({f"{field}.{k}": v for k, v in value.items() if k != "country"})
        elif field == "metadata" and isinstance(value, list):
            clear[field] = [{k: v for k, v in entry.items() if k != "value"} for entry in value]
            personal.update({f"{field}.{i}.value": entry["value"] for i, entry in enumerate(value)})
        else:
            clear[field] = value
    return clear, personal


def join_personal(clear: Mapping[str, Any], personal: Mapping[str, Any]) -> dict[str, Any]:
    """The inverse of split_personal: the clear part with the personal values put back."""
    values: dict[str, Any] = dict(clear)
    address: dict[str, Any] = dict(clear.get("shipping_address") or {})
    metadata: list[dict[str, Any]] = [dict(entry) for entry in clear.get("metadata") or []]
    for path, value in personal.items():
        field, _, rest = path.partition(".")
        if not rest:
            values[field] = value
        elif field == "shipping_address":
            address[rest] = value
            values[field] = address
        else:
            assert field == "metadata" and rest.endswith(".value"), path
            index = int(rest.removesuffix(".value"))
            entry = metadata[index]
            metadata[index] = {"key": entry.get("key"), "value": value, **entry}
    if "shipping_address" in clear:
        values["shipping_address"] = address
    if "metadata" in clear:
        values["metadata"] = metadata
    return values


def erased(values: Mapping[str, Any]) -> dict[str, Any]:
    """The fields with every personal value replaced by ERASED."""
    clear, personal = split_personal(values)
    return join_personal(clear, dict.fromkeys(personal, ERASED))


class CustomerNotErasableError(NotAllowedError):
    """Personal data the law still requires us to keep (ADR 0017): `reasons` names each."""

    code = "not_erasable"

    def __init__(self, external_id: str, reasons: list[str]) -> None:
        super().__init__(f"Customer '{external_id}' cannot be erased yet: {', '.join(reasons)}.")
        self.external_id = external_id
        self.reasons = reasons


class Customer(BaseAggregate[UUID]):
    TOPIC = "tally.Customer"

    class Event(AggregateEvent):
        pass

    class Created(AggregateCreated, Event):
        TOPIC = "tally.Customer.Created"
        organization_id: UUID
        external_id: str
        fields: dict[str, Any]

    class Updated(Event):
        TOPIC = "tally.Customer.Updated"
        changes: dict[str, Any]

    class Deleted(Event):
        TOPIC = "tally.Customer.Deleted"

    class Recreated(Event):
        """A deleted customer's external_id used again: a fresh customer under the same id."""

        TOPIC = "tally.Customer.Recreated"
        fields: dict[str, Any]

    class Erased(Event):
        """The customer's personal data erased (GDPR art. 17): its key is deleted after this."""

        TOPIC = "tally.Customer.Erased"
        erased_at: datetime

    @staticmethod
    def create_id(organization_id: UUID, external_id: str) -> UUID:
        return ids.customer_id(organization_id, external_id)

    # Commands decide.

    @classmethod
    def create(
        cls, organization_id: UUID, external_id: str, values: Mapping[str, Any]
    ) -> "Customer":
        return cls(
            organization_id=organization_id,
            external_id=check_key(external_id, "external_id"),
            fields=check_customer_fields(values),
        )

    def upsert(self, values: Mapping[str, Any]) -> None:
        """Lago's POST /customers on an existing external_id: change what differs."""
        checked = check_customer_fields(values)
        if self.deleted:
            self._recreated(fields=checked)
            return
        if "currency" in checked and self.fields.get("currency") not in (
            None,
            checked["currency"],
        ):
            # Lago refuses to change a customer's currency once it is set and used; until
            # subscriptions exist we refuse any change, which is the safe superset.
            raise InvalidValueError("currency", "currencies_does_not_match", checked["currency"])
        changes = {k: v for k, v in checked.items() if self.fields.get(k) != v}
        if changes:
            self._updated(changes=changes)

    def delete(self) -> None:
        if not self.deleted:
            self._deleted()

    def erase(self, at: datetime) -> bool:
        """Erase the personal data (`at`: the application's clock); False when there is none
        left to erase."""
        if self.erased_at is not None and self.fields == erased(self.fields):
            return False
        self._erased(erased_at=at)
        return True

    # Evolvers apply.

    @event(Created)
    def __init__(self, organization_id: UUID, external_id: str, fields: dict[str, Any]) -> None:
        self.organization_id = organization_id
        self.external_id = external_id
        self.fields = dict(fields)
        self.deleted = False
        self.deleted_at: datetime | None = None
        self.erased_at: datetime | None = None

    @event(Updated)
    def _updated(self, changes: dict[str, Any]) -> None:
        self.fields.update(changes)

    @event(Deleted)
    def _deleted(self) -> None:
        self.deleted = True
        self.deleted_at = self.modified_on

    @event(Recreated)
    def _recreated(self, fields: dict[str, Any]) -> None:
        self.fields = dict(fields)
        self.deleted = False
        self.deleted_at = None
        self.recreated_at = self.modified_on

    @event(Erased)
    def _erased(self, erased_at: datetime) -> None:
        # Replays after the key is gone already read ERASED; this also covers the moment
        # between this event and the key's deletion.
        self.fields = erased(self.fields)
        self.erased_at = erased_at

    @property
    def timezone(self) -> str | None:
        value = self.fields.get("timezone")
        return value if isinstance(value, str) else None

    @property
    def currency(self) -> str | None:
        value = self.fields.get("currency")
        return value if isinstance(value, str) else None
