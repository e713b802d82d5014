"""Tax: a named rate (a percentage, exact) that fees, plans, customers or the organization carry."""

from collections.abc import Mapping
from datetime import datetime
from decimal import Decimal
from typing import Any
from uuid import UUID

from eventsourcing.domain import AggregateCreated, AggregateEvent, BaseAggregate, event

from domain import ids
from domain.customer import check_key
from domain.errors import InvalidValueError
from domain.limits import TEXT_LENGTH_MAX
from domain.money import to_decimal


def check_rate(value: Any) -> Decimal:
    """A percentage from 0 to 100 (20 means 20 %), exact: 25.5 stays 25.5."""
    if isinstance(value, Decimal):
        value = str(value)
    if not isinstance(value, (str, int)) or isinstance(value, bool):
        raise InvalidValueError("rate", "value_is_invalid", value)
    rate = to_decimal(value, "rate")
    if not 0 <= rate <= 100:
        raise InvalidValueError("rate", "value_is_out_of_range", value)
    return rate


def check_tax_fields(values: Mapping[str, Any]) -> dict[str, Any]:
    checked: dict[str, Any] = {}
    for field, value in values.items():
        if value is None:
            continue
        if field in ("name", "description"):
            if not isinstance(value, str) or len(value) > TEXT_LENGTH_MAX:
                raise InvalidValueError(field, "value_is_invalid", value)
            checked[field] = value
        elif field == "rate":
            checked[field] = check_rate(value)
        elif field == "applied_to_organization":
            if not isinstance(value, bool):
                raise InvalidValueError(field, "value_is_invalid", value)
            checked[field] = value
        else:
            raise InvalidValueError(field, "unsupported_field", value)
    return checked


class Tax(BaseAggregate[UUID]):
    TOPIC = "tally.Tax"

    class Event(AggregateEvent):
        pass

    class Created(AggregateCreated, Event):
        TOPIC = "tally.Tax.Created"
        organization_id: UUID
        code: str
        name: str
        rate: Decimal
        description: str | None
        applied_to_organization: bool

    class Updated(Event):
        TOPIC = "tally.Tax.Updated"
        changes: dict[str, Any]

    class Deleted(Event):
        TOPIC = "tally.Tax.Deleted"

    @staticmethod
    def create_id(organization_id: UUID, code: str) -> UUID:
        return ids.tax_id(organization_id, code)

    @classmethod
    def create(cls, organization_id: UUID, code: str, values: Mapping[str, Any]) -> "Tax":
        checked = check_tax_fields(values)
        if not checked.get("name", "").strip():
            raise InvalidValueError("name", "value_is_mandatory", values.get("name"))
        if "rate" not in checked:
            raise InvalidValueError("rate", "value_is_mandatory", None)
        return cls(
            organization_id=organization_id,
            code=check_key(code, "code"),
            name=checked["name"],
            rate=checked["rate"],
            description=checked.get("description"),
            applied_to_organization=checked.get("applied_to_organization", False),
        )

    def update(self, values: Mapping[str, Any]) -> None:
        checked = check_tax_fields(values)
        current = {
            "name": self.name,
            "rate": self.rate,
            "description": self.description,
            "applied_to_organization": self.applied_to_organization,
        }
        changes = {k: v for k, v in checked.items() if current[k] != v}
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
        rate: Decimal,
        description: str | None,
        applied_to_organization: bool,
    ) -> None:
        self.organization_id = organization_id
        self.code = code
        self.name = name
        self.rate = rate
        self.description = description
        self.applied_to_organization = applied_to_organization
        self.deleted = False
        self.deleted_at: datetime | None = None

    @event(Updated)
    def _updated(self, changes: dict[str, Any]) -> None:
        for field, value in changes.items():
            setattr(self, field, value)

    @event(Deleted)
    def _deleted(self) -> None:
        self.deleted = True
        self.deleted_at = self.modified_on
