"""API keys: issue with a scope and an optional expiry, list, revoke, and authenticate.

A key is random, shown once and stored as its hash (the ApiKey aggregate, whose id is the key's
id). Authentication caches what it loaded, but every request first asks the store whether the
key's aggregate changed since (one indexed query on the events table), so a revocation recorded
by any process is refused by every process from its next request (ADR 0015).
"""

import threading
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final
from uuid import UUID

from eventsourcing.application import AggregateNotFoundError

from application.base import BillingBase
from application.errors import NotFoundError
from domain import ids
from domain.organization import ApiKey, IssuedApiKey, Organization, api_key_hash, new_api_key

GRANTS_CACHED_MAX: Final = 10_000  # Keys remembered per process; a full cache starts over.


@dataclass(frozen=True)
class ApiKeyGrant:
    """What a valid key lets its bearer do: act for an organization, within a scope."""

    api_key_id: UUID
    organization_id: UUID
    scope: str
    expires_at: datetime | None
    revoked_at: datetime | None
    version: int  # The ApiKey aggregate's version this was read at.

    def is_valid_at(self, now: datetime) -> bool:
        return self.revoked_at is None and (self.expires_at is None or now < self.expires_at)


class ApiKeyCommands(BillingBase):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._grants: dict[str, ApiKeyGrant] = {}  # By key hash.
        self._grants_lock = threading.Lock()
        super().__init__(*args, **kwargs)

    def create_api_key(
        self,
        organization_id: UUID,
        *,
        scope: str = "full",
        expires_at: datetime | None = None,
    ) -> tuple[IssuedApiKey, str]:
        """A new key of the organization (the old ones keep working: rotate, then revoke).
        Returns what the organization records of it and the key, which is never stored."""
        issued: list[tuple[UUID, str]] = []

        def decide() -> list[Any]:
            organization = self._key_owner(organization_id)
            api_key = new_api_key()
            key_hash = api_key_hash(api_key)
            api_key_id = organization.issue_api_key(key_hash, self.now(), scope, expires_at)
            issued.append((api_key_id, api_key))
            return [organization, ApiKey.create(organization.id, key_hash, scope, expires_at)]

        organization = self._command_many("organization", organization_id, decide)[0]
        api_key_id, api_key = issued[-1]
        return organization.api_keys[api_key_id], api_key

    def api_keys(self, organization_id: UUID) -> list[IssuedApiKey]:
        """The organization's keys, oldest first (never the keys themselves)."""
        organization = self._key_owner(organization_id)
        return sorted(organization.api_keys.values(), key=lambda k: (k.issued_at, k.id.int))

    def revoke_api_key(self, api_key_id: UUID, organization_id: UUID | None = None) -> IssuedApiKey:
        """Revoke a key: refused by every process from its next request. Without an
        organization (the command line) the key names its own; repeating changes nothing."""
        missing = NotFoundError("api_key", api_key_id)

        def decide() -> list[Any]:
            try:
                key: Any = self.repository.get(api_key_id)
            except AggregateNotFoundError:
                raise missing from None
            if not isinstance(key, ApiKey) or organization_id not in (None, key.organization_id):
                raise missing
            organization = self._key_owner(key.organization_id)
            now = self.now()
            key.revoke(now)
            organization.revoke_api_key(api_key_id, now)
            return [organization, key]

        organization, key = self._command_many("api_key", api_key_id, decide)
        with self._grants_lock:  # This process forgets it now; the others at their next check.
            self._grants.pop(key.key_hash, None)
        issued: IssuedApiKey = organization.api_keys[api_key_id]
        return issued

    def authenticate_api_key(self, api_key: str) -> ApiKeyGrant | None:
        """The grant of a known, unrevoked and unexpired key; None for any other."""
        key_hash = api_key_hash(api_key)
        api_key_id = ids.api_key_index_id(key_hash)
        with self._grants_lock:
            grant = self._grants.get(key_hash)
        if grant is not None and self.recorder.select_events(api_key_id, gt=grant.version, limit=1):
            grant = None  # Changed since it was cached (revoked): read it again.
        if grant is None:
            grant = self._load_grant(api_key_id)
            if grant is None:
                return None
            with self._grants_lock:
                if len(self._grants) >= GRANTS_CACHED_MAX:
                    self._grants.clear()
                self._grants[key_hash] = grant
        return grant if grant.is_valid_at(self.now()) else None

    def organization_for_api_key(self, api_key: str) -> UUID | None:
        """The organization of a valid key, or None."""
        grant = self.authenticate_api_key(api_key)
        return None if grant is None else grant.organization_id

    def _key_owner(self, organization_id: UUID) -> Organization:
        return self._get(
            Organization,
            organization_id,
            organization_id,
            NotFoundError("organization", organization_id),
        )

    def _load_grant(self, api_key_id: UUID) -> ApiKeyGrant | None:
        try:
            key: Any = self.repository.get(api_key_id)
        except AggregateNotFoundError:
            return None
        assert isinstance(key, ApiKey), key
        return ApiKeyGrant(
            api_key_id=key.id,
            organization_id=key.organization_id,
            scope=key.scope,
            expires_at=key.expires_at,
            revoked_at=key.revoked_at,
            version=key.version,
        )


__all__ = ["ApiKeyCommands", "ApiKeyGrant", "IssuedApiKey"]
