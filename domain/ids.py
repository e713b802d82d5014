"""Aggregate ids from natural keys: uuid5 of a JSON array, so two keys never share an id."""

import hashlib
from functools import lru_cache
from typing import Final
from uuid import UUID, uuid5

from domain.json_text import string_array

NAMESPACE = UUID("6f1c2b4e-5d0a-4e8b-9a7c-3b2d1e0f9a8c")
_NAMESPACE_BYTES: Final = NAMESPACE.bytes
# uuid5's variant bits (10xx) on the first hex digit of the clock sequence.
_VARIANT: Final = {digit: "89ab"[int(digit, 16) & 3] for digit in "0123456789abcdef"}


def _id(*parts: str | UUID) -> UUID:
    return uuid5(NAMESPACE, string_array([str(part) for part in parts]))


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


def add_on_id(organization_id: UUID, code: str) -> UUID:
    return _id("add_on", organization_id, code)


@lru_cache(maxsize=65_536)  # Every usage event names one: ingest and its response ask often.
def subscription_id(organization_id: UUID, external_id: str) -> UUID:
    return _id("subscription", organization_id, external_id)


@lru_cache(maxsize=65_536)
def subscription_id_text(organization_id: UUID, external_id: str) -> str:
    """str(subscription_id(...)), remembered: every event answered names one."""
    return str(subscription_id(organization_id, external_id))


def api_key_index_id(key_hash: str) -> UUID:
    return _id("api_key", key_hash)


def usage_event_id(
    organization_id: UUID, external_subscription_id: str, transaction_id: str
) -> UUID:
    """The lago_id of a usage event: its dedup key, hashed."""
    return UUID(usage_event_id_text(organization_id, external_subscription_id, transaction_id))


def usage_event_id_text(
    organization_id: UUID, external_subscription_id: str, transaction_id: str
) -> str:
    """str(usage_event_id(...)), without building UUIDs: ingest answers one per event."""
    name = string_array(
        ["usage_event", uuid_text(organization_id), external_subscription_id, transaction_id]
    )
    digest = hashlib.sha1(_NAMESPACE_BYTES + name.encode(), usedforsecurity=False).hexdigest()
    # uuid5: the first 16 bytes of the SHA-1, version 5, RFC 4122 variant.
    return (
        f"{digest[:8]}-{digest[8:12]}-5{digest[13:16]}-"
        f"{_VARIANT[digest[16]]}{digest[17:20]}-{digest[20:32]}"
    )


@lru_cache(maxsize=1_024)  # Organizations and subscriptions: few, named by every event.
def uuid_text(value: UUID) -> str:
    return str(value)


def sequence_id(organization_id: UUID, series: str) -> UUID:
    return _id("sequence", organization_id, series)


def invoice_id(organization_id: UUID, *key: str) -> UUID:
    """One invoice per (customer or subscription, boundary, reason): a rerun collides."""
    return _id("invoice", organization_id, *key)


def fee_id(invoice_id: UUID, key: str) -> UUID:
    """An invoice line's lago_id, from its key within the invoice: the same in every version."""
    return _id("fee", invoice_id, key)


def applied_tax_id(invoice_id: UUID, tax_code: str, rate: str) -> UUID:
    """One tax code at one rate on an invoice (a code may recur at an older rate, §8.5)."""
    return _id("applied_tax", invoice_id, tax_code, rate)


def credit_note_id(invoice_id: UUID, sequential_id: int) -> UUID:
    """The n-th credit note of an invoice: two racing creates take the same number and collide."""
    return _id("credit_note", invoice_id, str(sequential_id))


def credit_note_item_id(credit_note_id: UUID, fee_key: str) -> UUID:
    return _id("credit_note_item", credit_note_id, fee_key)


def credit_note_applied_tax_id(credit_note_id: UUID, tax_code: str) -> UUID:
    return _id("credit_note_applied_tax", credit_note_id, tax_code)


def wallet_id(organization_id: UUID, external_customer_id: str, code: str) -> UUID:
    """A customer's wallet by its code: a repeated or racing create collides."""
    return _id("wallet", organization_id, external_customer_id, code)


def wallet_transaction_id(wallet_id: UUID, *key: str) -> UUID:
    """A wallet transaction decided from a natural key: an invoice it pays, or an automatic
    top-up's (rule, occurrence, kind), so racing deciders make the same transaction."""
    return _id("wallet_transaction", wallet_id, *key)


def credit_invoice_id(organization_id: UUID, transaction_id: UUID) -> UUID:
    """The `credit` invoice of a paid top-up: one per wallet transaction."""
    return _id("invoice", organization_id, "credit", transaction_id)


def payment_connection_id(organization_id: UUID, code: str) -> UUID:
    """A processor connection (a Stripe account, bank transfers) by its code."""
    return _id("payment_connection", organization_id, code)


def payment_id(invoice_id: UUID, payment_type: str, number: int) -> UUID:
    """An invoice's n-th processor attempt or n-th manual payment: racing starts collide."""
    return _id("payment", invoice_id, payment_type, str(number))


def collection_id(invoice_id: UUID) -> UUID:
    """The collection (payments, dunning) of one invoice."""
    return _id("collection", invoice_id)
