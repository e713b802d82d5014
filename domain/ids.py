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


def plan_override_id(organization_id: UUID, parent_id: UUID, subscription_external_id: str) -> UUID:
    """A subscription's negotiated copy of a plan: one per (plan, subscription external_id)."""
    return _id("plan_override", organization_id, parent_id, subscription_external_id)


def charge_id(plan_id: UUID, code: str) -> UUID:
    """A plan's charge, by its code: the same charge keeps its lago_id in every version."""
    return _id("charge", plan_id, code)


def charge_filter_id(charge_id: UUID, values: str) -> UUID:
    """A charge filter, by its canonical values (JSON, keys and values sorted)."""
    return _id("charge_filter", charge_id, values)


def minimum_commitment_id(plan_id: UUID) -> UUID:
    return _id("minimum_commitment", plan_id)


def usage_threshold_id(plan_id: UUID, amount_cents: int, recurring: bool) -> UUID:
    return _id("usage_threshold", plan_id, str(amount_cents), str(recurring).lower())


def tax_id(organization_id: UUID, code: str) -> UUID:
    return _id("tax", organization_id, code)


def subscription_id(organization_id: UUID, external_id: str) -> UUID:
    return _id("subscription", organization_id, external_id)


def api_key_index_id(key_hash: str) -> UUID:
    return _id("api_key", key_hash)


def usage_event_id(
    organization_id: UUID, external_subscription_id: str, transaction_id: str
) -> UUID:
    """The lago_id of a usage event: its dedup key, hashed."""
    return _id("usage_event", organization_id, external_subscription_id, transaction_id)


def sequence_id(organization_id: UUID, series: str) -> UUID:
    return _id("sequence", organization_id, series)


def invoice_id(organization_id: UUID, *key: str) -> UUID:
    """One invoice per (customer or subscription, boundary, reason): a rerun collides."""
    return _id("invoice", organization_id, *key)
