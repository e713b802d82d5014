"""Aggregate ids from natural keys: uuid5 of a JSON array, so two keys never share an id."""

import json
from uuid import UUID, uuid5

NAMESPACE = UUID("6f1c2b4e-5d0a-4e8b-9a7c-3b2d1e0f9a8c")


def _id(*parts: str | UUID) -> UUID:
    return uuid5(NAMESPACE, json.dumps([str(part) for part in parts], separators=(",", ":")))


def organization_id(name: str) -> UUID:
    return _id("organization", name)


def customer_id(organization_id: UUID, external_id: str) -> UUID:
    return _id("customer", organization_id, external_id)


def billable_metric_id(organization_id: UUID, code: str) -> UUID:
    return _id("billable_metric", organization_id, code)


def plan_id(organization_id: UUID, code: str) -> UUID:
    return _id("plan", organization_id, code)


def tax_id(organization_id: UUID, code: str) -> UUID:
    return _id("tax", organization_id, code)


def subscription_id(organization_id: UUID, external_id: str) -> UUID:
    return _id("subscription", organization_id, external_id)


def api_key_index_id(key_hash: str) -> UUID:
    return _id("api_key", key_hash)
