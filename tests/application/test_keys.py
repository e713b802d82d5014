"""API keys through the application: scopes, expiry, rotation, revocation, old keys."""

import json
from datetime import UTC, datetime, timedelta

import pytest
from eventsourcing.persistence import StoredEvent
from eventsourcing.utils import get_topic

from adapters.stores import Ledger
from application.errors import NotFoundError
from domain import ids
from domain.organization import ApiKey, Organization, api_key_hash
from tests.conftest import Tenant

NOW = datetime(2026, 3, 1, 12, tzinfo=UTC)


def test_a_scoped_key_authenticates_with_its_scope(ledger: Ledger, tenant: Tenant) -> None:
    billing = ledger.billing
    issued, api_key = billing.create_api_key(tenant.organization_id, scope="ingest_only")
    grant = billing.authenticate_api_key(api_key)
    assert grant is not None
    assert (grant.api_key_id, grant.organization_id, grant.scope) == (
        issued.id,
        tenant.organization_id,
        "ingest_only",
    )
    first = billing.authenticate_api_key(tenant.api_key)
    assert first is not None and first.scope == "full"  # The organization's first key.


def test_rotation_keeps_the_old_key_working_until_it_is_revoked(
    ledger: Ledger, tenant: Tenant
) -> None:
    billing = ledger.billing
    old = billing.api_keys(tenant.organization_id)[0]
    # Rotate: a new key first, both work...
    new_key = billing.issue_api_key(tenant.organization_id)
    assert billing.organization_for_api_key(tenant.api_key) == tenant.organization_id
    assert billing.organization_for_api_key(new_key) == tenant.organization_id
    # ...then the old one is revoked, and refused from the next request on.
    revoked = billing.revoke_api_key(old.id)
    assert revoked.revoked_at is not None
    assert billing.authenticate_api_key(tenant.api_key) is None
    assert billing.organization_for_api_key(new_key) == tenant.organization_id
    assert [
        (k.id == old.id, k.revoked_at is None) for k in billing.api_keys(tenant.organization_id)
    ] == [
        (True, False),
        (False, True),
    ]


def test_a_revocation_recorded_elsewhere_is_seen_by_the_cache(
    ledger: Ledger, tenant: Tenant
) -> None:
    billing = ledger.billing
    assert billing.authenticate_api_key(tenant.api_key) is not None  # Now cached.
    # Revoked behind this cache's back, as another process would.
    key: ApiKey = billing.repository.get(ids.api_key_index_id(api_key_hash(tenant.api_key)))
    key.revoke(billing.now())
    billing.save(key)
    assert billing.authenticate_api_key(tenant.api_key) is None


def test_an_expired_key_is_refused(ledger: Ledger, tenant: Tenant) -> None:
    billing = ledger.billing
    billing.now = lambda: NOW
    _, api_key = billing.create_api_key(
        tenant.organization_id, scope="read_only", expires_at=NOW + timedelta(hours=1)
    )
    assert billing.authenticate_api_key(api_key) is not None
    billing.now = lambda: NOW + timedelta(hours=1)
    assert billing.authenticate_api_key(api_key) is None


def test_an_unknown_or_foreign_key_id_cannot_be_revoked(ledger: Ledger, tenant: Tenant) -> None:
    billing = ledger.billing
    other, other_key = billing.create_organization("other")
    other_key_id = billing.api_keys(other.id)[0].id
    with pytest.raises(NotFoundError):
        billing.revoke_api_key(ids.api_key_index_id("nope"))
    with pytest.raises(NotFoundError):
        billing.revoke_api_key(other_key_id, tenant.organization_id)
    with pytest.raises(NotFoundError):
        billing.revoke_api_key(tenant.organization_id)  # Not a key's id at all.
    assert billing.organization_for_api_key(other_key) == other.id


def test_listed_keys_never_hold_the_key_or_its_hash(ledger: Ledger, tenant: Tenant) -> None:
    listed = repr(ledger.billing.api_keys(tenant.organization_id))
    assert tenant.api_key not in listed
    assert api_key_hash(tenant.api_key) not in listed


def test_a_key_issued_before_scopes_still_works_as_a_full_key(ledger: Ledger) -> None:
    # Given an organization and its key as they were stored before scopes existed (v1 events)
    billing = ledger.billing
    org_id, key_hash = ids.organization_id("old"), api_key_hash("tally_old")
    key_id = ids.api_key_index_id(key_hash)
    stamp = {"_type_": "datetime_iso", "_data_": NOW.isoformat()}

    def stored(
        originator: object, version: int, topic: str, state: dict[str, object]
    ) -> StoredEvent:
        return StoredEvent(originator, version, topic, json.dumps(state).encode())

    billing.recorder.insert_events(
        [
            stored(
                org_id,
                1,
                get_topic(Organization.Created),
                {"timestamp": stamp, "originator_topic": "tally.Organization", "name": "old"},
            ),
            stored(
                org_id,
                2,
                get_topic(Organization.ApiKeyIssued),
                {
                    "timestamp": stamp,
                    "api_key_id": {"_type_": "uuid_hex", "_data_": key_id.hex},
                    "key_hash": key_hash,
                },
            ),
            stored(
                key_id,
                1,
                get_topic(ApiKey.Created),
                {
                    "timestamp": stamp,
                    "originator_topic": "tally.ApiKey",
                    "organization_id": {"_type_": "uuid_hex", "_data_": org_id.hex},
                    "key_hash": key_hash,
                },
            ),
        ]
    )
    # Then the old key authenticates as a full key that never expires, and can be revoked
    grant = billing.authenticate_api_key("tally_old")
    assert grant is not None
    assert (grant.organization_id, grant.scope, grant.expires_at) == (org_id, "full", None)
    [listed] = billing.api_keys(org_id)
    assert (listed.id, listed.scope, listed.issued_at) == (key_id, "full", NOW)
    billing.revoke_api_key(key_id)
    assert billing.authenticate_api_key("tally_old") is None
