"""Personal data through the application: sealed in stored events, erased by deleting its key."""

import json
from dataclasses import replace

import pytest
from eventsourcing.domain import Snapshot
from eventsourcing.persistence import StoredEvent
from eventsourcing.utils import get_topic

from adapters.settings import memory_settings
from adapters.stores import Ledger, open_ledger
from application.billing import Billing
from application.personal_data import SEALED
from domain import ids
from domain.customer import ERASED, Customer, CustomerNotErasableError
from tests.conftest import Tenant
from tests.erasure_scenario import EMAIL, NAME, PERSONAL, billed_customer, settle


def stored_bytes(ledger: Ledger, customer_id: object) -> bytes:
    return b"".join(s.state for s in ledger.billing.recorder.select_events(customer_id))


def test_stored_customer_events_hold_ciphertext_and_reads_are_clear(
    ledger: Ledger, tenant: Tenant
) -> None:
    billing = ledger.billing
    customer = billing.upsert_customer(
        tenant.organization_id, "cus_1", {**PERSONAL, "currency": "EUR"}
    )
    billing.upsert_customer(tenant.organization_id, "cus_1", {"email": "new@example.org"})
    stored = stored_bytes(ledger, customer.id)
    for value in (NAME, EMAIL, "new@example.org", "Sète", "Zeb the unerasable", "FR40303265045"):
        assert value.encode() not in stored, value
    assert b'"currency":"EUR"' in stored and SEALED.encode() in stored
    read = billing.customer(tenant.organization_id, "cus_1")
    assert read.fields == {**PERSONAL, "currency": "EUR", "email": "new@example.org"}
    history = billing.customer_history(tenant.organization_id, "cus_1")
    assert history[1].changes == {"email": "new@example.org"}


def test_erasure_deletes_the_key_and_every_read_shows_the_data_as_erased(
    ledger: Ledger, tenant: Tenant
) -> None:
    billing = ledger.billing
    customer = billing.upsert_customer(tenant.organization_id, "cus_1", dict(PERSONAL))
    erased = billing.erase_customer(tenant.organization_id, "cus_1")
    assert erased.erased_at is not None
    # Reads, replays and history, now and after a restart of the application's caches.
    for read in (erased, billing.customer(tenant.organization_id, "cus_1")):
        assert read.fields["name"] == read.fields["email"] == ERASED
        assert read.fields["shipping_address"]["country"] == "FR"
    created, erasure = billing.customer_history(tenant.organization_id, "cus_1")
    assert created.changes["name"] == ERASED and erasure.type == "Customer.Erased"
    assert billing.personal_data is not None
    assert billing.personal_data.erase(customer.id) == 0  # Nothing left to delete.
    customers, total = billing.customers(tenant.organization_id, 1, 10)
    assert total == 1 and customers[0].fields["name"] == ERASED  # The index still lists it.
    # Erasing again is harmless; new data after an erasure is sealed with a new key.
    billing.erase_customer(tenant.organization_id, "cus_1")
    billing.upsert_customer(tenant.organization_id, "cus_1", {"name": "Zeb II"})
    assert billing.customer(tenant.organization_id, "cus_1").fields["name"] == "Zeb II"


def test_events_stored_before_sealing_still_read(ledger: Ledger, tenant: Tenant) -> None:
    customer_id = ids.customer_id(tenant.organization_id, "old")
    state = {
        "timestamp": {"_type_": "datetime_iso", "_data_": "2025-01-01T00:00:00+00:00"},
        "originator_topic": "tally.Customer",
        "organization_id": {"_type_": "uuid_hex", "_data_": tenant.organization_id.hex},
        "external_id": "old",
        "fields": {"name": "Clear Name", "currency": "EUR"},
    }
    ledger.billing.recorder.insert_events(
        [StoredEvent(customer_id, 1, get_topic(Customer.Created), json.dumps(state).encode())]
    )
    old = ledger.billing.customer(tenant.organization_id, "old")
    assert old.fields == {"name": "Clear Name", "currency": "EUR"}


def test_snapshots_are_sealed_too(monkeypatch: pytest.MonkeyPatch) -> None:
    # Tally takes no snapshots today; if it ever does, they must not hold personal data.
    monkeypatch.setattr(Billing, "snapshot_class", Snapshot)
    settings = memory_settings()
    env = {**settings.eventsourcing_env, "IS_SNAPSHOTTING_ENABLED": "y"}
    ledger = open_ledger(replace(settings, eventsourcing_env=env))
    try:
        organization, _ = ledger.billing.create_organization("acme")
        customer = ledger.billing.upsert_customer(organization.id, "cus_1", dict(PERSONAL))
        ledger.billing.take_snapshot(customer.id)
        assert ledger.billing.snapshots is not None
        [snapshot] = ledger.billing.snapshots.recorder.select_events(customer.id)
        assert NAME.encode() not in snapshot.state and SEALED.encode() in snapshot.state
        assert ledger.billing.repository.get(customer.id).fields["name"] == NAME
        assert ledger.billing.personal_data is not None
        ledger.billing.personal_data.erase(customer.id)  # The key alone, no Erased event.
        assert ledger.billing.repository.get(customer.id).fields["name"] == ERASED
    finally:
        ledger.close()


def test_erasure_waits_for_the_legal_reasons_to_keep_the_data(ledger: Ledger) -> None:
    org, _, invoice = billed_customer(ledger)
    with pytest.raises(CustomerNotErasableError) as refused:
        ledger.billing.erase_customer(org, "cus_1")
    assert refused.value.reasons == ["unpaid_invoices", "active_subscriptions"]
    assert ledger.billing.customer(org, "cus_1").fields["name"] == NAME  # Nothing erased.
    settle(ledger, org)
    assert ledger.billing.erasure_blockers(org, "cus_1") == []
    erased = ledger.billing.erase_customer(org, "cus_1")
    assert erased.fields["name"] == ERASED
    # The invoice keeps its number and amounts, and still audits as matching.
    assert ledger.invoicing.invoice(org, invoice.id).number == invoice.number
    assert ledger.invoicing.audit(org, invoice.id).matches
