"""Personal data through the application: sealed in stored events, erased by deleting its key."""

import json
from dataclasses import replace
from datetime import UTC, datetime
from uuid import uuid4

import msgspec
import pytest
from eventsourcing.domain import Snapshot
from eventsourcing.persistence import StoredEvent
from eventsourcing.utils import get_topic

from adapters.data_keys import MemoryDataKeys, seal_json, unseal_json
from adapters.settings import memory_settings
from adapters.stores import Ledger, open_ledger
from application.billing import Billing
from application.personal_data import SEALED
from application.vat import VERIFICATION_AGE_MAX, VatChecks, ViesAnswer
from domain import ids
from domain.customer import ERASED, Customer, CustomerNotErasableError
from domain.vat import CHECK_VALID
from tests.conftest import Tenant
from tests.erasure_scenario import EMAIL, NAME, PERSONAL, billed_customer, settle

VAT = {"tax_identification_number": "FR40303265045"}


class HolderVies:
    """VIES: every number valid, with its holder's name and address."""

    def __init__(self) -> None:
        self.calls = 0

    def check_vat_number(
        self, country_code: str, vat_number: str, requester: tuple[str, str] | None = None
    ) -> ViesAnswer:
        self.calls += 1
        return ViesAnswer(True, country_code, vat_number, None, None, "ZQM SARL", "1 RUE Z")


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


def test_a_vies_check_is_sealed_and_erased_with_a_customer_holding_its_number(
    ledger: Ledger, tenant: Tenant
) -> None:
    billing, org = ledger.billing, tenant.organization_id
    now = [datetime(2026, 3, 1, tzinfo=UTC)]
    billing.now = lambda: now[0]
    billing.update_organization_settings(org, {"country": "DE", "eu_tax_management": True})
    vies = HolderVies()
    checks = VatChecks(billing, vies)
    for external_id in ("cus_1", "cus_2"):  # Two accounts of one taxable person.
        billing.upsert_customer(org, external_id, {"country": "FR", "name": NAME, **VAT})
    assert checks.run() == 1 and vies.calls == 1
    check = billing.vat_number_check(org, VAT["tax_identification_number"])
    assert check is not None and check.name == "ZQM SARL"
    stored = b"".join(s.state for s in billing.recorder.select_events(check.id))
    for value in (VAT["tax_identification_number"], "303265045", "ZQM SARL", "1 RUE Z"):
        assert value.encode() not in stored, value
    # Erasing one customer erases the check of its number ...
    billing.erase_customer(org, "cus_1")
    erased = billing.vat_number_check(org, VAT["tax_identification_number"])
    assert erased is not None and erased.status == CHECK_VALID
    assert erased.vat_number == erased.name == erased.address == ERASED
    # ... and the other holder's number is still verified when the answer is due again (the
    # billing run asks, through taxes_for).
    now[0] += VERIFICATION_AGE_MAX
    assert checks.request_check(org, "cus_2") is not None
    assert checks.run() == 1 and vies.calls == 2
    again = billing.vat_number_check(org, VAT["tax_identification_number"])
    assert again is not None and (again.status, again.name) == (CHECK_VALID, "ZQM SARL")
    assert again.vat_number == ERASED  # Its first request was erased with cus_1.


def test_customer_objects_in_documents_are_sealed_in_place() -> None:
    keys = MemoryDataKeys()
    customer_id = uuid4()
    keys.encrypt(customer_id, b"{}")  # The customer's key, made with its first event.
    customer = {
        "lago_id": str(customer_id),
        "name": NAME,
        "currency": "EUR",
        "email": EMAIL,
        "shipping_address": {"city": "Sète", "country": "FR"},
        "metadata": [{"key": "nickname", "value": "Zeb"}],
    }
    document = {"invoice": {"lago_id": "i", "customer": customer, "fees": [{"name": "Basic"}]}}
    clear = msgspec.json.encode(document)
    sealed = seal_json(keys, clear)
    for value in (NAME, EMAIL, "Sète", "Zeb"):
        assert value.encode() not in sealed, value
    assert b'"Basic"' in sealed and b'"FR"' in sealed
    assert unseal_json(keys, sealed) == clear  # Same bytes: keys keep their places.
    plain = b'{"event":{"transaction_id":"t1"}}'
    assert seal_json(keys, plain) is plain and unseal_json(keys, plain) is plain
    keys.erase(customer_id)
    shown = json.loads(unseal_json(keys, sealed))["invoice"]["customer"]
    assert shown["name"] == shown["email"] == shown["metadata"][0]["value"] == ERASED
    assert shown["shipping_address"] == {"city": ERASED, "country": "FR"}
    # A copy made after the key is gone never makes a new one: its values are stored erased.
    late = json.loads(seal_json(keys, clear))["invoice"]["customer"]
    assert late["name"] == ERASED and SEALED not in late
    assert keys.erase(customer_id) == 0
