"""BillableMetric: how an organization's usage events of one code aggregate into units."""

from collections.abc import Mapping
from datetime import datetime
from typing import Any, Final
from uuid import UUID

from eventsourcing.domain import AggregateCreated, AggregateEvent, BaseAggregate, event

from domain import ids
from domain.customer import check_key
from domain.errors import InvalidValueError
from domain.limits import TEXT_LENGTH_MAX
from domain.metrics import check_metric

# Fields that decide what an event is worth: fixed at creation, so that usage already recorded
# and plans already sold keep their meaning. Another definition is another metric (another code).
IMMUTABLE_FIELDS: Final = ("aggregation_type", "field_name", "recurring", "weighted_interval")
FIELDS: Final = (
    "name",
    "description",
    *IMMUTABLE_FIELDS,
    "rounding_function",
    "rounding_precision",
    "expression",
    "filters",
)


def check_definition(values: Mapping[str, Any]) -> dict[str, Any]:
    """A complete metric definition, validated and normalised for an event."""
    name = values.get("name")
    if not isinstance(name, str) or not 0 < len(name.strip()) <= TEXT_LENGTH_MAX:
        raise InvalidValueError("name", "value_is_mandatory", name)
    description = values.get("description")
    if description is not None and (
        not isinstance(description, str) or len(description) > TEXT_LENGTH_MAX
    ):
        raise InvalidValueError("description", "value_is_invalid", description)
    expression = values.get("expression")
    if expression not in (None, ""):
        # Lago's expressions need its own evaluator; refusing beats mis-billing.
        raise InvalidValueError("expression", "unsupported_field", expression)
    filters = _check_filters(values.get("filters") or [])
    aggregation_type = values.get("aggregation_type")
    if not isinstance(aggregation_type, str):
        raise InvalidValueError("aggregation_type", "value_is_mandatory", aggregation_type)
    field_name = values.get("field_name") or None
    recurring = values.get("recurring") or False
    if not isinstance(recurring, bool):
        raise InvalidValueError("recurring", "value_is_invalid", recurring)
    check_metric(
        aggregation_type,
        field_name,
        recurring,
        values.get("rounding_function"),
        values.get("rounding_precision"),
        values.get("weighted_interval"),
        [(f["key"], f["values"]) for f in filters],
    )
    return {
        "name": name,
        "description": description,
        "aggregation_type": aggregation_type,
        "field_name": None if aggregation_type == "count_agg" else field_name,
        "recurring": recurring,
        "weighted_interval": values.get("weighted_interval"),
        "rounding_function": values.get("rounding_function"),
        "rounding_precision": values.get("rounding_precision"),
        "expression": None,
        "filters": filters,
    }


def _check_filters(filters: Any) -> list[dict[str, Any]]:
    if not isinstance(filters, list):
        raise InvalidValueError("filters", "value_is_invalid", filters)
    checked = []
    for item in filters:
        if not isinstance(item, Mapping):
            raise InvalidValueError("filters", "value_is_invalid", item)
        key, values = item.get("key"), item.get("values")
        if not isinstance(values, list):
            raise InvalidValueError("filters", "value_is_mandatory", item)
        checked.append({"key": key, "values": list(values)})
    return checked


class BillableMetric(BaseAggregate[UUID]):
    TOPIC = "tally.BillableMetric"

    class Event(AggregateEvent):
        pass

    class Created(AggregateCreated, Event):
        TOPIC = "tally.BillableMetric.Created"
        organization_id: UUID
        code: str
        definition: dict[str, Any]

    class Updated(Event):
        TOPIC = "tally.BillableMetric.Updated"
        changes: dict[str, Any]

    class Deleted(Event):
        TOPIC = "tally.BillableMetric.Deleted"

    @staticmethod
    def create_id(organization_id: UUID, code: str) -> UUID:
        return ids.billable_metric_id(organization_id, code)

    @classmethod
    def create(
        cls, organization_id: UUID, code: str, values: Mapping[str, Any]
    ) -> "BillableMetric":
        return cls(
            organization_id=organization_id,
            code=check_key(code, "code"),
            definition=check_definition(values),
        )

    def update(self, values: Mapping[str, Any]) -> None:
        """Lago's PUT: given fields replace the current ones; null means not given."""
        given = {k: v for k, v in values.items() if v is not None}
        merged = check_definition({**self.definition, **given})
        for field in IMMUTABLE_FIELDS:
            if merged[field] != self.definition[field]:
                raise InvalidValueError(field, "value_is_immutable", given.get(field))
        changes = {k: v for k, v in merged.items() if self.definition[k] != v}
        if changes:
            self._updated(changes=changes)

    def delete(self) -> None:
        if not self.deleted:
            self._deleted()

    @event(Created)
    def __init__(self, organization_id: UUID, code: str, definition: dict[str, Any]) -> None:
        self.organization_id = organization_id
        self.code = code
        self.definition = dict(definition)
        self.deleted = False
        self.deleted_at: datetime | None = None

    @event(Updated)
    def _updated(self, changes: dict[str, Any]) -> None:
        self.definition.update(changes)

    @event(Deleted)
    def _deleted(self) -> None:
        self.deleted = True
        self.deleted_at = self.modified_on

    @property
    def aggregation_type(self) -> str:
        value: str = self.definition["aggregation_type"]
        return value

    @property
    def field_name(self) -> str | None:
        value: str | None = self.definition["field_name"]
        return value

    @property
    def filter_keys(self) -> tuple[str, ...]:
        return tuple(f["key"] for f in self.definition["filters"])
