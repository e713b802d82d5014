"""WebhookEndpoint: where an organization's webhooks go, how they are signed, and which types."""

import json
import re
from collections.abc import Sequence
from typing import Any, Final
from urllib.parse import urlsplit
from uuid import UUID, uuid5

from eventsourcing.domain import AggregateCreated, AggregateEvent, BaseAggregate, event

from domain.errors import InvalidValueError
from domain.ids import NAMESPACE
from domain.limits import TEXT_LENGTH_MAX

SIGNATURE_ALGOS: Final = ("jwt", "hmac")  # Lago's default is jwt.
# Lago's WebhookEndpoint::LIMIT: more endpoints per organization is `exceeded_limit`.
WEBHOOK_ENDPOINTS_MAX: Final = 10
# Lago's types look like `invoice.created` or `wallet_transaction.payment_failure`. Tally sends a
# subset (application/webhooks.py), but a filter may name any of Lago's types.
WEBHOOK_TYPE: Final = re.compile(r"^[a-z_]+(\.[a-z_]+)+$")
EVENT_TYPES_MAX: Final = 100  # Lago has 75 types.


def webhook_endpoint_id(organization_id: UUID, webhook_url: str, generation: int) -> UUID:
    """The id of the generation-th endpoint created with this URL (a deleted one leaves a gap)."""
    key = json.dumps(
        ["webhook_endpoint", str(organization_id), webhook_url, str(generation)],
        separators=(",", ":"),
    )
    return uuid5(NAMESPACE, key)


def check_webhook_url(value: Any) -> str:
    """An absolute http(s) URL; Lago's UrlValidator answers `url_invalid`."""
    if not isinstance(value, str) or not 0 < len(value) <= TEXT_LENGTH_MAX:
        raise InvalidValueError("webhook_url", "url_invalid", value)
    try:
        parts = urlsplit(value)
    except ValueError:
        raise InvalidValueError("webhook_url", "url_invalid", value) from None
    if parts.scheme not in ("http", "https") or not parts.hostname or value != value.strip():
        raise InvalidValueError("webhook_url", "url_invalid", value)
    return value


def check_signature_algo(value: Any) -> str:
    if value not in SIGNATURE_ALGOS:
        raise InvalidValueError("signature_algo", "value_is_invalid", value)
    return str(value)


def check_event_types(value: Sequence[Any] | None) -> list[str] | None:
    """None or [] means every type; otherwise the distinct types, in the given order."""
    if value is None:
        return None
    if isinstance(value, str) or len(value) > EVENT_TYPES_MAX:
        raise InvalidValueError("event_types", "value_is_invalid", value)
    for item in value:
        if not isinstance(item, str) or not WEBHOOK_TYPE.match(item):
            raise InvalidValueError("event_types", "value_is_invalid", item)
    return list(dict.fromkeys(value)) or None


def check_name(value: Any) -> str | None:
    if value is not None and (not isinstance(value, str) or len(value) > TEXT_LENGTH_MAX):
        raise InvalidValueError("name", "value_is_invalid", value)
    return value


class WebhookEndpoint(BaseAggregate[UUID]):
    TOPIC = "tally.WebhookEndpoint"

    class Event(AggregateEvent):
        pass

    class Created(AggregateCreated, Event):
        TOPIC = "tally.WebhookEndpoint.Created"
        organization_id: UUID
        webhook_url: str
        signature_algo: str
        name: str | None
        event_types: list[str] | None

    class Updated(Event):
        TOPIC = "tally.WebhookEndpoint.Updated"
        changes: dict[str, Any]

    class Deleted(Event):
        TOPIC = "tally.WebhookEndpoint.Deleted"

    # Commands decide.

    @classmethod
    def create(
        cls,
        organization_id: UUID,
        generation: int,
        *,
        webhook_url: str,
        signature_algo: str | None,
        name: str | None,
        event_types: Sequence[str] | None,
    ) -> "WebhookEndpoint":
        url = check_webhook_url(webhook_url)
        return cls._create(
            cls.Created,
            id=webhook_endpoint_id(organization_id, url, generation),
            organization_id=organization_id,
            webhook_url=url,
            signature_algo=check_signature_algo(signature_algo or "jwt"),
            name=check_name(name),
            event_types=check_event_types(event_types),
        )

    def update(
        self,
        *,
        webhook_url: str | None,
        signature_algo: str | None,
        name: str | None,
        event_types: Sequence[str] | None,
    ) -> None:
        """Lago's PUT. A null field is left as it is; event_types [] means every type again."""
        changes: dict[str, Any] = {}
        if webhook_url is not None and webhook_url != self.webhook_url:
            changes["webhook_url"] = check_webhook_url(webhook_url)
        if signature_algo is not None and signature_algo != self.signature_algo:
            changes["signature_algo"] = check_signature_algo(signature_algo)
        if name is not None and name != self.name:
            changes["name"] = check_name(name)
        if event_types is not None:
            checked = check_event_types(event_types)
            if checked != self.event_types:
                changes["event_types"] = checked
        if changes:
            self._updated(changes=changes)

    def delete(self) -> None:
        if not self.deleted:
            self._deleted()

    def accepts(self, webhook_type: str) -> bool:
        return self.event_types is None or webhook_type in self.event_types

    # Evolvers apply.

    @event(Created)
    def __init__(
        self,
        organization_id: UUID,
        webhook_url: str,
        signature_algo: str,
        name: str | None,
        event_types: list[str] | None,
    ) -> None:
        self.organization_id = organization_id
        self.webhook_url = webhook_url
        self.signature_algo = signature_algo
        self.name = name
        self.event_types = event_types
        self.deleted = False

    @event(Updated)
    def _updated(self, changes: dict[str, Any]) -> None:
        for field, value in changes.items():
            assert field in ("webhook_url", "signature_algo", "name", "event_types"), field
            setattr(self, field, value)

    @event(Deleted)
    def _deleted(self) -> None:
        self.deleted = True
