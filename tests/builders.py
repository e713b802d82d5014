"""Builders for tests: aggregates in a known state, with their creation events collected."""

from collections.abc import Mapping
from typing import Any
from uuid import UUID

from domain.customer import Customer

ORG_ID = UUID("00000000-0000-4000-8000-000000000001")
OTHER_ORG_ID = UUID("00000000-0000-4000-8000-000000000002")


def customer(external_id: str = "cus_1", **fields: Any) -> Customer:
    values: Mapping[str, Any] = {"name": "Ada", "currency": "EUR", **fields}
    created = Customer.create(ORG_ID, external_id, values)
    created.collect_events()
    return created
