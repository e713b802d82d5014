"""API keys in the domain: scopes, expiry and revocation."""

from datetime import UTC, datetime, timedelta

import pytest

from domain import ids
from domain.errors import InvalidValueError
from domain.organization import ApiKey, IssuedApiKey, Organization, api_key_hash

NOW = datetime(2026, 3, 1, 12, tzinfo=UTC)


def organization() -> Organization:
    created = Organization.create("acme")
    created.collect_events()
    return created


def test_a_key_is_issued_with_a_scope_and_an_expiry() -> None:
    # Given an organization
    org = organization()
    # When it issues a read-only key that expires in a day
    key_id = org.issue_api_key(api_key_hash("k"), NOW, "read_only", NOW + timedelta(days=1))
    # Then it records the scope and expiry, never the key
    [issued] = org.collect_events()
    assert isinstance(issued, Organization.ApiKeyIssued)
    assert (issued.api_key_id, issued.scope, issued.expires_at) == (
        key_id,
        "read_only",
        NOW + timedelta(days=1),
    )
    assert "k" not in (issued.key_hash, str(issued.api_key_id))
    assert org.api_keys[key_id].is_valid_at(NOW)
    assert not org.api_keys[key_id].is_valid_at(NOW + timedelta(days=1))


@pytest.mark.parametrize(
    ("scope", "expires_at", "field", "reason"),
    [
        ("admin", None, "scope", "value_is_invalid"),
        ("full", NOW, "expires_at", "value_is_in_the_past"),
        ("full", NOW - timedelta(seconds=1), "expires_at", "value_is_in_the_past"),
        ("full", datetime(2027, 1, 1), "expires_at", "value_is_invalid"),
    ],
)
def test_an_unknown_scope_or_a_past_expiry_is_refused(
    scope: str, expires_at: datetime | None, field: str, reason: str
) -> None:
    org = organization()
    with pytest.raises(InvalidValueError) as error:
        org.issue_api_key(api_key_hash("k"), NOW, scope, expires_at)
    assert (error.value.field, error.value.reason) == (field, reason)
    assert org.collect_events() == []


def test_a_revoked_key_is_recorded_once() -> None:
    # Given an organization with a key
    org = organization()
    key_id = org.issue_api_key(api_key_hash("k"), NOW - timedelta(days=2))
    org.collect_events()
    # When it is revoked twice
    assert org.revoke_api_key(key_id, NOW) is True
    assert org.revoke_api_key(key_id, NOW + timedelta(hours=1)) is False
    # Then one revocation is recorded, at the first time
    [revoked] = org.collect_events()
    assert isinstance(revoked, Organization.ApiKeyRevoked)
    assert org.api_keys[key_id] == IssuedApiKey(key_id, "full", None, NOW - timedelta(days=2), NOW)
    assert not org.api_keys[key_id].is_valid_at(NOW - timedelta(days=1))


def test_the_key_aggregate_refuses_after_revocation_or_expiry() -> None:
    key = ApiKey.create(ids.organization_id("acme"), api_key_hash("k"), "ingest_only", NOW)
    key.collect_events()
    assert key.is_valid_at(NOW - timedelta(seconds=1))
    assert not key.is_valid_at(NOW)
    assert key.revoke(NOW - timedelta(hours=1)) is True
    assert key.revoke(NOW) is False
    [revoked] = key.collect_events()
    assert isinstance(revoked, ApiKey.Revoked)
    assert not key.is_valid_at(NOW - timedelta(minutes=1))
