"""WebhookEndpoint: given its history, when a command runs, then the events it records."""

from uuid import uuid4

import pytest

from domain.errors import InvalidValueError
from domain.organization import Organization
from domain.webhook_endpoint import WebhookEndpoint, webhook_endpoint_id

ORG_ID = uuid4()


def endpoint(**fields: object) -> WebhookEndpoint:
    values: dict[str, object] = {
        "webhook_url": "https://hooks.example/lago",
        "signature_algo": None,
        "name": None,
        "event_types": None,
        **fields,
    }
    created = WebhookEndpoint.create(ORG_ID, 0, **values)  # type: ignore[arg-type]
    created.collect_events()
    return created


def test_an_endpoint_signs_with_jwt_and_takes_every_type_by_default() -> None:
    created = WebhookEndpoint.create(
        ORG_ID,
        0,
        webhook_url="https://h.example/x",
        signature_algo=None,
        name="Ops",
        event_types=[],
    )
    [event] = created.collect_events()
    assert isinstance(event, WebhookEndpoint.Created)
    assert (event.signature_algo, event.event_types, event.name) == ("jwt", None, "Ops")
    assert created.id == webhook_endpoint_id(ORG_ID, "https://h.example/x", 0)
    assert created.accepts("invoice.created") and created.accepts("customer.updated")


def test_a_url_that_is_not_absolute_http_is_lagos_url_invalid() -> None:
    for url in ("ftp://h.example/x", "/relative", "https://", " https://h.example", ""):
        with pytest.raises(InvalidValueError) as error:
            WebhookEndpoint.create(
                ORG_ID, 0, webhook_url=url, signature_algo=None, name=None, event_types=None
            )
        assert (error.value.field, error.value.reason) == ("webhook_url", "url_invalid")


def test_an_unknown_algorithm_or_a_malformed_type_is_refused() -> None:
    with pytest.raises(InvalidValueError) as algo:
        endpoint(signature_algo="rsa")
    with pytest.raises(InvalidValueError) as types:
        endpoint(event_types=["invoice.created", "Invoice Created"])
    assert (algo.value.field, types.value.field) == ("signature_algo", "event_types")


def test_a_filter_keeps_only_its_types_once_each() -> None:
    filtered = endpoint(event_types=["invoice.created", "invoice.voided", "invoice.created"])
    assert filtered.event_types == ["invoice.created", "invoice.voided"]
    assert filtered.accepts("invoice.voided") and not filtered.accepts("customer.created")


def test_an_update_records_only_what_changes_and_null_keeps_a_field() -> None:
    # Given an endpoint filtering one type
    existing = endpoint(event_types=["invoice.created"], name="Ops")
    # When it moves to hmac, keeps its name (null) and takes every type again ([])
    existing.update(webhook_url=None, signature_algo="hmac", name=None, event_types=[])
    # Then one event records the two changes
    [updated] = existing.collect_events()
    assert isinstance(updated, WebhookEndpoint.Updated)
    assert updated.changes == {"signature_algo": "hmac", "event_types": None}
    assert (existing.name, existing.accepts("customer.created")) == ("Ops", True)


def test_an_update_that_changes_nothing_records_nothing() -> None:
    existing = endpoint(signature_algo="hmac")
    existing.update(
        webhook_url="https://hooks.example/lago", signature_algo="hmac", name=None, event_types=None
    )
    assert existing.collect_events() == []


def test_a_refused_update_records_nothing() -> None:
    existing = endpoint()
    with pytest.raises(InvalidValueError):
        existing.update(
            webhook_url="mailto:x@y.z", signature_algo=None, name=None, event_types=None
        )
    assert existing.collect_events() == []


def test_deleting_twice_records_one_deletion() -> None:
    existing = endpoint()
    existing.delete()
    existing.delete()
    assert [type(e) for e in existing.collect_events()] == [WebhookEndpoint.Deleted]
    assert existing.deleted


def test_a_new_organization_gets_its_hmac_key_once() -> None:
    organization = Organization.create("acme")
    events = organization.collect_events()
    [issued] = [e for e in events if isinstance(e, Organization.HmacKeyIssued)]
    assert organization.hmac_key == issued.hmac_key and len(issued.hmac_key) >= 43
    organization.issue_hmac_key("another")  # Lazily issuing again keeps the first key.
    assert organization.collect_events() == []
    assert organization.hmac_key == issued.hmac_key
