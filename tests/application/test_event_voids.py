"""Voiding usage events (Tally extension): current usage drops at once, an invoice keeps the
log as it stood at its watermark, so its audit still matches after a later void."""

from collections.abc import Callable
from datetime import UTC, datetime

import pytest

from adapters.stores import Ledger
from application.errors import NotFoundError
from tests.application.test_invoicing import APRIL_1, MARCH_1, MAY_1, at, bill, ingest, subscribe
from tests.conftest import Tenant

pytest_plugins = ["tests.application.test_invoicing"]  # The catalog fixture.


def charges(ledger: Ledger, tenant: Tenant) -> int:
    usage = ledger.usage_queries.current_usage(tenant.organization_id, "acme", "sub_1")
    return sum(charge.amount_cents for charge in usage.charges)


def test_a_void_before_the_invoice_leaves_the_event_out(
    ledger: Ledger, tenant: Tenant, catalog: Callable[..., None]
) -> None:
    catalog("usage", 0)
    subscribe(ledger, tenant, "usage", MARCH_1)
    ingest(ledger, tenant, "t1", 1_500_000, datetime(2026, 3, 10, tzinfo=UTC))
    ingest(ledger, tenant, "t2", 1_000_000, datetime(2026, 3, 11, tzinfo=UTC))
    assert charges(ledger, tenant) == 750
    voided = ledger.metering.void(tenant.organization_id, "t2", "sub_1")
    assert voided.voided_at == datetime(2026, 3, 11, tzinfo=UTC)  # The clock at the void.
    assert charges(ledger, tenant) == 450
    [march] = bill(ledger, APRIL_1)
    assert march.totals.fees_amount_cents == 450
    assert ledger.invoicing.audit(tenant.organization_id, march.id).matches


def test_a_void_after_the_invoice_changes_neither_it_nor_its_audit(
    ledger: Ledger, tenant: Tenant, catalog: Callable[..., None]
) -> None:
    catalog("usage", 0)
    subscribe(ledger, tenant, "usage", MARCH_1)
    ingest(ledger, tenant, "t1", 1_500_000, datetime(2026, 3, 10, tzinfo=UTC))
    ingest(ledger, tenant, "t2", 1_000_000, datetime(2026, 3, 11, tzinfo=UTC))
    [march] = bill(ledger, APRIL_1)
    assert march.totals.fees_amount_cents == 750
    at(ledger, datetime(2026, 4, 2, tzinfo=UTC))
    ledger.metering.void(tenant.organization_id, "t2", "sub_1")
    report = ledger.invoicing.audit(tenant.organization_id, march.id)
    assert report.matches, report.differences
    # The next invoice carries no (negative) adjustment: a finalized invoice changes only
    # through a credit note; its audit matches too.
    april = bill(ledger, MAY_1)[-1]
    assert [fee for fee in april.fees if fee.fee_type == "adjustment"] == []
    assert ledger.invoicing.audit(tenant.organization_id, april.id).matches


def test_voiding_an_unknown_event_is_not_found(ledger: Ledger, tenant: Tenant) -> None:
    with pytest.raises(NotFoundError):
        ledger.metering.void(tenant.organization_id, "nope", "sub_1")
