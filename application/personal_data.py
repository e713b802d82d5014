"""Personal data kept out of stored events (crypto-shredding), its erasure and its export.

Customer events are stored with their personal values sealed: the mapper encrypts them with the
customer's data key before any event reaches the store and decrypts them when events are read,
so the domain, projections and replays see clear values; once erasure deletes the key, the same
events read as ERASED (ADR 0017). The key store is the PersonalDataKeys port (adapters/
data_keys.py): AES-GCM keys in a table of their own, on the event store's database.

Erasure also reaches the copies (ADR 0023): customer objects in stored JSON documents (webhook
payloads, kept responses) are sealed with the customer's key, and VIES checks' events with a key
of the check's, deleted with every customer that had its number.
"""

import base64
import copy
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final, Protocol
from uuid import UUID

from eventsourcing.domain import DomainEventProtocol
from eventsourcing.persistence import Mapper, StoredEvent
from eventsourcing.utils import get_topic

from application.base import BillingBase, HistoryEntry, history_entry
from application.errors import NotFoundError
from domain import ids
from domain.credit_note import CreditNote
from domain.customer import (
    ERASED,
    Customer,
    CustomerNotErasableError,
    join_personal,
    split_personal,
)
from domain.invoice import Invoice
from domain.subscription import Subscription
from domain.vat_check import VatNumberCheck, vat_number_check_id
from domain.vat_numbers import check_vat_number
from domain.wallet import Wallet

SEALED: Final = "$sealed"  # Never a customer field: check_customer_fields refuses unknown names.
# The events whose attribute holds customer fields; a snapshot of a Customer holds them in its
# state's "fields".
SEALED_ATTRIBUTES: Final = {
    get_topic(Customer.Created): "fields",
    get_topic(Customer.Updated): "changes",
    get_topic(Customer.Recreated): "fields",
}
CUSTOMER_TOPIC: Final = get_topic(Customer)


class PersonalDataKeys(Protocol):
    """Per-subject data keys in a deletable table: the only place personal data can be read from."""

    def encrypt(self, subject_id: UUID, plaintext: bytes) -> tuple[str, bytes]:
        """Encrypt with the subject's current key (made on first use): (key id, ciphertext)."""

    def encrypt_existing(self, subject_id: UUID, plaintext: bytes) -> tuple[str, bytes] | None:
        """Encrypt with the subject's current key, or None when it has none (erased): what
        copies made after the fact use, so that a copy never outlives an erasure."""

    def decrypt(self, key_id: str, subject_id: UUID, ciphertext: bytes) -> bytes | None:
        """The plaintext, or None once the key is erased."""

    def erase(self, subject_id: UUID) -> int:
        """Delete every key of the subject, beyond recovery from the store; returns how many."""


def seal(
    values: Mapping[str, Any], encrypt: Callable[[bytes], tuple[str, bytes]]
) -> dict[str, Any]:
    """Customer fields with the personal values replaced by one sealed entry."""
    clear, personal = split_personal(values)
    if not personal:
        return dict(values)
    plaintext = json.dumps(personal, sort_keys=True, separators=(",", ":")).encode()
    key_id, ciphertext = encrypt(plaintext)
    clear[SEALED] = {
        "key_id": key_id,
        "ciphertext": base64.b64encode(ciphertext).decode(),
        "paths": sorted(personal),  # Names only: what an erased event shows as ERASED.
    }
    return clear


def unseal(
    values: Mapping[str, Any], decrypt: Callable[[str, bytes], bytes | None]
) -> dict[str, Any]:
    """The inverse of seal; with the key erased, every sealed value reads ERASED."""
    sealed = values.get(SEALED)
    if not isinstance(sealed, Mapping):
        return dict(values)  # Nothing personal, or an event stored before sealing existed.
    clear = {k: v for k, v in values.items() if k != SEALED}
    plaintext = decrypt(sealed["key_id"], base64.b64decode(sealed["ciphertext"]))
    if plaintext is None:
        return join_personal(clear, dict.fromkeys(sealed["paths"], ERASED))
    personal: dict[str, Any] = json.loads(plaintext)
    return join_personal(clear, personal)


# Copies of customer objects (webhook payloads, stored responses): ADR 0023.


def seal_customer_objects(
    document: Any, encrypt: Callable[[UUID, bytes], tuple[str, bytes] | None]
) -> bool:
    """Seal, in place, the personal values of every customer object in a JSON document (a
    webhook payload, an API response): a mapping under the key "customer" whose lago_id is the
    customer's id, the subject of its key. A value whose subject has no key (encrypt answers
    None: erased) is stored as ERASED. Keys keep their places, so unsealing restores the
    document's order. Returns whether anything changed."""
    changed = False
    for found in _customer_objects(document):
        _, personal = split_personal(found)
        values = {p: v for p, v in personal.items() if isinstance(v, str) and v != ERASED}
        if not values:
            continue
        changed = True
        plaintext = json.dumps(values, sort_keys=True, separators=(",", ":")).encode()
        sealed = encrypt(UUID(found["lago_id"]), plaintext)
        for path in values:
            _put(found, path, None if sealed is not None else ERASED)
        if sealed is not None:
            key_id, ciphertext = sealed
            found[SEALED] = {
                "key_id": key_id,
                "ciphertext": base64.b64encode(ciphertext).decode(),
                "paths": sorted(values),
            }
    return changed


def unseal_customer_objects(
    document: Any, decrypt: Callable[[str, UUID, bytes], bytes | None]
) -> bool:
    """The inverse of seal_customer_objects, in place; erased values read ERASED."""
    changed = False
    for found in _customer_objects(document):
        sealed = found.pop(SEALED, None)
        if not isinstance(sealed, Mapping):
            continue
        changed = True
        plaintext = decrypt(
            sealed["key_id"], UUID(found["lago_id"]), base64.b64decode(sealed["ciphertext"])
        )
        values = json.loads(plaintext) if plaintext is not None else None
        if values is None:
            values = dict.fromkeys(sealed["paths"], ERASED)
        for path, value in values.items():
            _put(found, path, value)
    return changed


def _customer_objects(document: Any) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    stack = [document]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            for key, value in node.items():
                if (
                    key == "customer"
                    and isinstance(value, dict)
                    and isinstance(value.get("lago_id"), str)
                ):
                    found.append(value)
                    continue
                stack.append(value)
        elif isinstance(node, list):
            stack.extend(node)
    return found


def _put(values: dict[str, Any], path: str, value: Any) -> None:
    """Set a personal value by its split_personal path, where it is."""
    field, _, rest = path.partition(".")
    if not rest:
        values[field] = value
    elif field == "shipping_address":
        values[field][rest] = value
    else:
        assert field == "metadata" and rest.endswith(".value"), path
        values[field][int(rest.removesuffix(".value"))]["value"] = value


# VatNumberCheck events: the number and what VIES said about its holder, sealed with a key of
# the check's own (its subject is the check's id), which erasing a customer deletes (ADR 0023).
SEALED_TEXT_ATTRIBUTES: Final = {
    get_topic(VatNumberCheck.Created): ("vat_number",),
    get_topic(VatNumberCheck.Answered): ("name", "address"),
}


def seal_text(value: Any, encrypt: Callable[[bytes], tuple[str, bytes]]) -> Any:
    if not isinstance(value, str) or value == ERASED:
        return value
    key_id, ciphertext = encrypt(value.encode())
    return {SEALED: {"key_id": key_id, "ciphertext": base64.b64encode(ciphertext).decode()}}


def unseal_text(value: Any, decrypt: Callable[[str, bytes], bytes | None]) -> Any:
    sealed = value.get(SEALED) if isinstance(value, Mapping) else None
    if not isinstance(sealed, Mapping):
        return value
    plaintext = decrypt(sealed["key_id"], base64.b64decode(sealed["ciphertext"]))
    return ERASED if plaintext is None else plaintext.decode()


class PersonalDataMapper(Mapper[UUID]):
    """The application's mapper: seals customer fields on the way to the store, unseals them
    on the way back. Without keys (a bare Billing in unit tests) it maps as the library's."""

    def __init__(self, *args: Any, keys: PersonalDataKeys | None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.keys = keys

    def to_stored_event(self, domain_event: DomainEventProtocol[UUID]) -> StoredEvent:
        keys = self.keys
        if keys is None:
            return super().to_stored_event(domain_event)
        subject_id = domain_event.originator_id

        def encrypt(plaintext: bytes) -> tuple[str, bytes]:
            return keys.encrypt(subject_id, plaintext)

        attribute = SEALED_ATTRIBUTES.get(get_topic(type(domain_event)))
        if attribute is not None:
            sealed = copy.copy(domain_event)
            object.__setattr__(sealed, attribute, seal(getattr(domain_event, attribute), encrypt))
            return super().to_stored_event(sealed)
        texts = SEALED_TEXT_ATTRIBUTES.get(get_topic(type(domain_event)), ())
        if texts:
            sealed = copy.copy(domain_event)
            for name in texts:
                object.__setattr__(sealed, name, seal_text(getattr(domain_event, name), encrypt))
            return super().to_stored_event(sealed)
        if _is_customer_snapshot(domain_event):
            state = dict(getattr(domain_event, "state"))  # noqa: B009 (not in the Protocol)
            state["fields"] = seal(state["fields"], encrypt)
            sealed = copy.copy(domain_event)
            object.__setattr__(sealed, "state", state)
            return super().to_stored_event(sealed)
        return super().to_stored_event(domain_event)

    def to_domain_event(self, stored_event: StoredEvent) -> DomainEventProtocol[UUID]:
        domain_event = super().to_domain_event(stored_event)
        attribute = SEALED_ATTRIBUTES.get(stored_event.topic)
        texts = SEALED_TEXT_ATTRIBUTES.get(stored_event.topic, ())
        if attribute is None and not texts and not _is_customer_snapshot(domain_event):
            return domain_event
        subject_id = domain_event.originator_id

        def decrypt(key_id: str, ciphertext: bytes) -> bytes | None:
            assert self.keys is not None, "sealed personal data, but no key store"
            return self.keys.decrypt(key_id, subject_id, ciphertext)

        if texts:
            for name in texts:
                value = unseal_text(getattr(domain_event, name), decrypt)
                object.__setattr__(domain_event, name, value)
            return domain_event

        if attribute is not None:
            values = getattr(domain_event, attribute)
            object.__setattr__(domain_event, attribute, unseal(values, decrypt))
        else:
            state = getattr(domain_event, "state")  # noqa: B009
            state["fields"] = unseal(state["fields"], decrypt)
        return domain_event


def _is_customer_snapshot(domain_event: object) -> bool:
    return getattr(domain_event, "topic", None) == CUSTOMER_TOPIC and isinstance(
        getattr(domain_event, "state", None), dict
    )


@dataclass(frozen=True)
class CustomerRecords:
    """Everything the ledger holds about a customer, as domain objects (right of access)."""

    customer: Customer
    history: list[HistoryEntry]
    subscriptions: list[Subscription]
    invoices: list[Invoice]
    credit_notes: list[CreditNote]
    wallets: list[Wallet]


# Why erasure waits (ADR 0017): the organization still needs to identify the customer.
UNPAID_INVOICES: Final = "unpaid_invoices"  # To collect, chase or litigate (GDPR 17(3)(e)).
DRAFT_INVOICES: Final = "draft_invoices"  # An invoice about to be issued names its buyer.
ACTIVE_SUBSCRIPTIONS: Final = "active_subscriptions"  # They would bill an unknown buyer.
ACTIVE_WALLETS: Final = "active_wallets"  # Prepaid credits are owed to someone identifiable.


class PersonalDataCommands(BillingBase):
    """Erasure (crypto-shredding) and export of a customer's personal data."""

    personal_data: PersonalDataKeys | None

    def erase_customer(self, organization_id: UUID, external_id: str) -> Customer:
        """Erase the customer's personal data once nothing legal requires keeping it: record
        Customer.Erased, then delete the customer's data keys. Safe to repeat."""
        customer = self._customer_any_state(organization_id, external_id)
        reasons = self.erasure_blockers(organization_id, external_id)
        if reasons:
            raise CustomerNotErasableError(external_id, reasons)

        def decide() -> Customer:
            found = self._customer_any_state(organization_id, external_id)
            found.erase(self.now())
            return found

        # Read while the customer's key still opens its history.
        vat_checks = self._vat_check_ids(organization_id, customer.id)
        self._command("customer", external_id, decide)
        if self.personal_data is not None:
            self.personal_data.erase(customer.id)
            for check_id in vat_checks:  # The VIES checks of its numbers (ADR 0023).
                self.personal_data.erase(check_id)
        # Read back: what any process now reads, the stored history included.
        return self._customer_any_state(organization_id, external_id)

    def _vat_check_ids(self, organization_id: UUID, customer_id: UUID) -> set[UUID]:
        """The ids of the VIES checks any VAT number the customer ever had may have made,
        with any country it had (a number typed without its prefix takes the country's)."""
        numbers: set[str] = set()
        countries: set[str | None] = {None}
        for domain_event in self.events.get(customer_id):
            values = getattr(domain_event, "fields", None) or getattr(domain_event, "changes", None)
            if isinstance(values, Mapping):
                if isinstance(values.get("tax_identification_number"), str):
                    numbers.add(values["tax_identification_number"])
                if isinstance(values.get("country"), str):
                    countries.add(values["country"])
        checked = (check_vat_number(n, c) for n in numbers for c in countries)
        return {vat_number_check_id(organization_id, v.number) for v in checked if v.number}

    def erasure_blockers(self, organization_id: UUID, external_id: str) -> list[str]:
        """The legal-retention reasons that forbid erasing now (empty: erasable)."""
        now = self.now()
        reasons = []
        invoices = self._all(Invoice, "invoice", organization_id, external_id)
        if any(i.status == "finalized" and i.payment_status != "succeeded" for i in invoices):
            reasons.append(UNPAID_INVOICES)
        if any(i.status == "draft" for i in invoices):
            reasons.append(DRAFT_INVOICES)
        subscriptions = self._all(Subscription, "subscription", organization_id, external_id)
        if any(s.status_at(now) in ("active", "pending") for s in subscriptions):
            reasons.append(ACTIVE_SUBSCRIPTIONS)
        wallets = self._all(Wallet, "wallet", organization_id, external_id)
        if any(w.status == "active" for w in wallets):
            reasons.append(ACTIVE_WALLETS)
        return reasons

    def customer_records(self, organization_id: UUID, external_id: str) -> CustomerRecords:
        """Everything held about the customer, deleted or erased ones included (usage events
        live in the usage log: the API pages them)."""
        customer = self._customer_any_state(organization_id, external_id)
        return CustomerRecords(
            customer=customer,
            history=[history_entry(e) for e in self.events.get(customer.id)],
            subscriptions=self._all(Subscription, "subscription", organization_id, external_id),
            invoices=self._all(Invoice, "invoice", organization_id, external_id),
            credit_notes=self._all(CreditNote, "credit_note", organization_id, external_id),
            wallets=self._all(Wallet, "wallet", organization_id, external_id),
        )

    def _customer_any_state(self, organization_id: UUID, external_id: str) -> Customer:
        return self._get(
            Customer,
            ids.customer_id(organization_id, external_id),
            organization_id,
            NotFoundError("customer", external_id),
        )


__all__ = [
    "SEALED",
    "CustomerRecords",
    "PersonalDataCommands",
    "PersonalDataKeys",
    "PersonalDataMapper",
    "seal",
    "seal_customer_objects",
    "unseal",
    "unseal_customer_objects",
]
