"""Customers through the application service, on the in-memory store."""

import threading

import pytest

from adapters.stores import Ledger
from application.errors import NotFoundError
from tests.conftest import Tenant


def test_an_upsert_creates_then_updates_one_customer(ledger: Ledger, tenant: Tenant) -> None:
    billing = ledger.billing
    first = billing.upsert_customer(tenant.organization_id, "cus_1", {"name": "Ada"})
    second = billing.upsert_customer(tenant.organization_id, "cus_1", {"city": "Paris"})
    assert first.id == second.id
    assert billing.customer(tenant.organization_id, "cus_1").fields == {
        "name": "Ada",
        "city": "Paris",
    }


def test_another_organization_cannot_see_the_customer(ledger: Ledger, tenant: Tenant) -> None:
    billing = ledger.billing
    billing.upsert_customer(tenant.organization_id, "cus_1", {"name": "Ada"})
    other, _ = billing.create_organization("other")
    with pytest.raises(NotFoundError):
        billing.customer(other.id, "cus_1")
    assert billing.customers(other.id, 1, 10) == ([], 0)


def test_a_deleted_customer_is_gone_from_reads_and_lists(ledger: Ledger, tenant: Tenant) -> None:
    billing = ledger.billing
    billing.upsert_customer(tenant.organization_id, "cus_1", {})
    billing.upsert_customer(tenant.organization_id, "cus_2", {})
    billing.delete_customer(tenant.organization_id, "cus_1")
    with pytest.raises(NotFoundError):
        billing.customer(tenant.organization_id, "cus_1")
    customers, total = billing.customers(tenant.organization_id, 1, 10)
    assert ([c.external_id for c in customers], total) == (["cus_2"], 1)


def test_lists_page_newest_first(ledger: Ledger, tenant: Tenant) -> None:
    billing = ledger.billing
    for n in range(5):
        billing.upsert_customer(tenant.organization_id, f"cus_{n}", {})
    page_2, total = billing.customers(tenant.organization_id, 2, 2)
    assert ([c.external_id for c in page_2], total) == (["cus_2", "cus_1"], 5)


def test_api_keys_are_stored_only_as_hashes(ledger: Ledger, tenant: Tenant) -> None:
    organization = ledger.billing.organization(tenant.organization_id)
    recorded = repr(list(ledger.billing.events.get(organization.id)))
    assert tenant.api_key not in recorded
    assert ledger.billing.organization_for_api_key(tenant.api_key) == tenant.organization_id
    assert ledger.billing.organization_for_api_key(tenant.api_key + "x") is None


def test_racing_creates_of_one_external_id_make_one_customer(
    ledger: Ledger, tenant: Tenant
) -> None:
    barrier = threading.Barrier(8)

    def create(n: int) -> None:
        barrier.wait()
        ledger.billing.upsert_customer(tenant.organization_id, "cus_race", {"name": f"n{n}"})

    threads = [threading.Thread(target=create, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    customers, total = ledger.billing.customers(tenant.organization_id, 1, 10)
    assert total == 1
    created = [
        e for e in ledger.billing.events.get(customers[0].id) if type(e).__name__ == "Created"
    ]
    assert len(created) == 1
