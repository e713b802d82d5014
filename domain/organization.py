"""Organization: the tenant every resource belongs to, and its API keys (stored as hashes only)."""

import hashlib
import secrets
from typing import Any
from uuid import UUID

from eventsourcing.domain import AggregateCreated, AggregateEvent, BaseAggregate, event

from domain import ids
from domain.errors import InvalidValueError
from domain.limits import TEXT_LENGTH_MAX

API_KEY_PREFIX = "tally_"
API_KEY_BYTES = 32  # 256 bits: a fast hash suffices, a guess is hopeless.


def new_api_key() -> str:
    """A random API key, shown once to its owner."""
    return API_KEY_PREFIX + secrets.token_urlsafe(API_KEY_BYTES)


def api_key_hash(api_key: str) -> str:
    return hashlib.sha256(api_key.encode()).hexdigest()


def check_organization_name(name: str) -> str:
    name = name.strip()
    if not 0 < len(name) <= TEXT_LENGTH_MAX:
        raise InvalidValueError("name", "value_is_invalid", name)
    return name


class Organization(BaseAggregate[UUID]):
    TOPIC = "tally.Organization"

    class Event(AggregateEvent):
        pass

    class Created(AggregateCreated, Event):
        TOPIC = "tally.Organization.Created"
        name: str

    class ApiKeyIssued(Event):
        TOPIC = "tally.Organization.ApiKeyIssued"
        api_key_id: UUID
        key_hash: str

    class SettingsUpdated(Event):
        TOPIC = "tally.Organization.SettingsUpdated"
        changes: dict[str, Any]

    @staticmethod
    def create_id(name: str) -> UUID:
        return ids.organization_id(name)

    @classmethod
    def create(cls, name: str) -> "Organization":
        return cls(name=check_organization_name(name))

    def issue_api_key(self, key_hash: str) -> UUID:
        api_key_id = ids.api_key_index_id(key_hash)
        self._api_key_issued(api_key_id=api_key_id, key_hash=key_hash)
        return api_key_id

    @event(Created)
    def __init__(self, name: str) -> None:
        self.name = name
        self.api_key_hashes: list[str] = []
        self.settings: dict[str, Any] = {}

    @event(ApiKeyIssued)
    def _api_key_issued(self, api_key_id: UUID, key_hash: str) -> None:
        self.api_key_hashes.append(key_hash)

    @event(SettingsUpdated)
    def _settings_updated(self, changes: dict[str, Any]) -> None:
        self.settings.update(changes)


class ApiKey(BaseAggregate[UUID]):
    """Maps the hash of a key to its organization; its id is derived from the hash."""

    TOPIC = "tally.ApiKey"

    class Event(AggregateEvent):
        pass

    class Created(AggregateCreated, Event):
        TOPIC = "tally.ApiKey.Created"
        organization_id: UUID
        key_hash: str

    @staticmethod
    def create_id(key_hash: str) -> UUID:
        return ids.api_key_index_id(key_hash)

    @classmethod
    def create(cls, organization_id: UUID, key_hash: str) -> "ApiKey":
        return cls(organization_id=organization_id, key_hash=key_hash)

    @event(Created)
    def __init__(self, organization_id: UUID, key_hash: str) -> None:
        self.organization_id = organization_id
        self.key_hash = key_hash
