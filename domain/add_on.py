"""AddOn: a one-off charge of the catalog (a set-up fee, a service), billed by one-off invoices."""

from collections.abc import Mapping
from datetime import datetime
from typing import Any
from uuid import UUID

from eventsourcing.domain import AggregateCreated, AggregateEvent, BaseAggregate, event

from domain import ids
from domain.customer import check_key
from domain.errors import InvalidValueError
from domain.limits import TEXT_LENGTH_MAX
from domain.money import check_currency


def check_add_on_fields(values: Mapping[str, Any]) -> dict[str, Any]:
    """The given fields, checked; None means absent."""
    checked: dict[str, Any] = {}
    for field, value in values.items():
        if value is None:
            continue
        if field in ("name", "invoice_display_name", "description"):
            if not isinstance(value, str) or len(value) > TEXT_LENGTH_MAX:
                raise InvalidValueError(field, "value_is_invalid", value)
            checked[field] = value
        elif field == "amount_cents":
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise InvalidValueError(field, "value_is_invalid", value)
            checked[field] = value
        elif field == "amount_currency":
            checked[field] = check_currency(value, field) if isinstance(value, str) else None
            if checked[field] is None:
                raise InvalidValueError(field, "value_is_invalid", value)
        elif field == "tax_codes":
            if not isinstance(value, list) or not all(isinstance(c, str) for c in value):
                raise InvalidValueError(field, "value_is_invalid", value)
            checked[field] = tuple(dict.fromkeys(value))
        else:
            raise InvalidValueError(field, "unsupported_field", value)
    return checked


class AddOn(BaseAggregate[UUID]):
    TOPIC = "tally.AddOn"

    class Event(AggregateEvent):
        pass

    class Created(AggregateCreated, Event):
        TOPIC = "tally.AddOn.Created"
        organization_id: UUID
        code: str
        name: str
        amount_cents: int
        amount_currency: str
        invoice_display_name: str | None
        description: str | None
        tax_codes: tuple[str, ...]

    class Updated(Event):
        TOPIC = "tally.AddOn.Updated"
        changes: dict[str, Any]

    class Deleted(Event):
        TOPIC = "tally.AddOn.Deleted"

    @staticmethod
    def create_id(organization_id: UUID, code: str) -> UUID:
        return ids.add_on_id(organization_id, code)

    @classmethod
    def create(cls, organization_id: UUID, code: str, values: Mapping[str, Any]) -> "AddOn":
        checked = check_add_on_fields(values)
        if not checked.get("name", "").strip():
            raise InvalidValueError("name", "value_is_mandatory", values.get("name"))
        for field in ("amount_cents", "amount_currency"):
            if field not in checked:
                raise InvalidValueError(field, "value_is_mandatory", None)
        return cls(
            organization_id=organization_id,
            code=check_key(code, "code"),
            name=checked["name"],
            amount_cents=checked["amount_cents"],
            amount_currency=checked["amount_currency"],
            invoice_display_name=checked.get("invoice_display_name"),
            description=checked.get("description"),
            tax_codes=checked.get("tax_codes", ()),
        )

    def update(self, values: Mapping[str, Any]) -> None:
        checked = check_add_on_fields(values)
        changes = {k: v for k, v in checked.items() if getattr(self, k) != v}
        if changes:
            self._updated(changes=changes)

    def delete(self) -> None:
        if not self.deleted:
            self._deleted()

    @event(Created)
    def __init__(
        self,
        organization_id: UUID,
        code: str,
        name: str,
        amount_cents: int,
        amount_currency: str,
        invoice_display_name: str | None,
        description: str | None,
        tax_codes: tuple[str, ...],
    ) -> None:
        self.organization_id = organization_id
        self.code = code
        self.name = name
        self.amount_cents = amount_cents
        self.amount_currency = amount_currency
        self.invoice_display_name = invoice_display_name
        self.description = description
        self.tax_codes = tuple(tax_codes)
        self.deleted = False
        self.deleted_at: datetime | None = None

    @event(Updated)
    def _updated(self, changes: dict[str, Any]) -> None:
        for field, value in changes.items():
            setattr(self, field, tuple(value) if field == "tax_codes" else value)

    @event(Deleted)
    def _deleted(self) -> None:
        self.deleted = True
        self.deleted_at = self.modified_on
