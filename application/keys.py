"""API keys: issue with a scope and an optional expiry, list, revoke, and authenticate.

A key is random, shown once and stored as its hash (the ApiKey aggregate, whose id is the key's
id). Authentication reads keys through FreshAggregates: each request first reads the changes
recorded since the last look (one query, shared by concurrent requests), so a revocation recorded
by any process is refused by every process from its next request (ADR 0015).
"""

from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

from eventsourcing.application import AggregateNotFoundError

from application.base import BillingBase
from application.errors import NotFoundError
from application.fresh_aggregates import FreshAggregates
from domain import ids
from domain.organization import ApiKey, IssuedApiKey, Organization, api_key_hash, new_api_key


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

        organization, _ = self._command_many("api_key", api_key_id, decide)
        issued: IssuedApiKey = organization.api_keys[api_key_id]
        return issued

    def authenticate_api_key(self, api_key: str) -> ApiKeyGrant | None:
        """The grant of a known, unrevoked and unexpired key; None for any other.

        Keys are cached with the other hot aggregates (FreshAggregates): its refresh, one query
        shared by concurrent requests, forgets a key revoked in any process before this call.
        """
        aggregates = FreshAggregates.of(self)
        aggregates.refresh(since_arrival=True)
        try:
            key: Any = aggregates.get(ids.api_key_index_id(api_key_hash(api_key)))
        except AggregateNotFoundError:
            return None
        assert isinstance(key, ApiKey), key
        grant = ApiKeyGrant(
            api_key_id=key.id,
            organization_id=key.organization_id,
            scope=key.scope,
            expires_at=key.expires_at,
            revoked_at=key.revoked_at,
            version=key.version,
        )
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


__all__ = ["ApiKeyCommands", "ApiKeyGrant", "IssuedApiKey"]
