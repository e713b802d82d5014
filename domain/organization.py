"""Organization: the tenant every resource belongs to, its API keys (stored as hashes only), its
settings (Lago's PUT /organizations) and its billing entities.

The default billing entity (code "default") is the organization's own settings; other entities
are kept here too, since an organization has a handful at most.
"""

import hashlib
import json
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any, Final
from uuid import UUID, uuid5

from eventsourcing.domain import AggregateCreated, AggregateEvent, BaseAggregate, event

from domain import ids
from domain.countries import check_country
from domain.customer import EMAIL, NET_PAYMENT_TERM_MAX, check_key
from domain.errors import InvalidValueError
from domain.limits import TEXT_LENGTH_MAX
from domain.money import check_currency
from domain.periods import ISSUING_DATE_ADJUSTMENTS, ISSUING_DATE_ANCHORS, check_timezone
from domain.vat_rates import EU_MEMBER_STATES

API_KEY_PREFIX = "tally_"
API_KEY_BYTES = 32  # 256 bits: a fast hash suffices, a guess is hopeless.
HMAC_KEY_BYTES = 32  # The webhook HMAC-SHA256 key: as long as the hash (RFC 2104).


def new_api_key() -> str:
    """A random API key, shown once to its owner."""
    return API_KEY_PREFIX + secrets.token_urlsafe(API_KEY_BYTES)


def new_hmac_key() -> str:
    """A random key that signs the organization's hmac webhooks (Lago's "HMAC Signature Token")."""
    return secrets.token_urlsafe(HMAC_KEY_BYTES)


def api_key_hash(api_key: str) -> str:
    return hashlib.sha256(api_key.encode()).hexdigest()


# Least privilege: full does everything; read_only only reads; ingest_only posts and reads usage
# events (POST /events, /events/batch, GET /events*). The API enforces them (api/security.py).
API_KEY_SCOPES: Final = ("full", "read_only", "ingest_only")


def check_api_key_scope(scope: str) -> str:
    if scope not in API_KEY_SCOPES:
        raise InvalidValueError("scope", "value_is_invalid", scope)
    return scope


@dataclass(frozen=True)
class IssuedApiKey:
    """What an organization knows of one of its keys: never the key, not even its hash."""

    id: UUID
    scope: str
    expires_at: datetime | None
    issued_at: datetime
    revoked_at: datetime | None

    def is_valid_at(self, now: datetime) -> bool:
        return self.revoked_at is None and (self.expires_at is None or now < self.expires_at)


def check_organization_name(name: str) -> str:
    name = name.strip()
    if not 0 < len(name) <= TEXT_LENGTH_MAX:
        raise InvalidValueError("name", "value_is_invalid", name)
    return name


DEFAULT_BILLING_ENTITY: Final = "default"
TEXT_SETTINGS: Final = (
    "legal_name",
    "legal_number",
    "tax_identification_number",
    "address_line1",
    "address_line2",
    "city",
    "state",
    "zipcode",
    "email",
    "phone",
    "name",
    "logo_url",
    "webhook_url",
)
BOOLEAN_SETTINGS: Final = ("eu_tax_management", "finalize_zero_amount_invoice", "einvoicing")
LIST_SETTINGS: Final = ("webhook_urls", "tax_codes", "invoice_custom_section_codes")
# Lago's organization and billing-entity enums (getlago/lago-api:app/models/organization.rb,
# billing_entity.rb): an entity numbers per_billing_entity, an organization per_organization.
DOCUMENT_NUMBERINGS: Final = ("per_customer", "per_organization", "per_billing_entity")
EMAIL_SETTINGS: Final = ("invoice.finalized", "credit_note.created", "payment_receipt.created")
DOCUMENT_NUMBER_PREFIX_LENGTH_MAX: Final = 10  # Lago's validation.
# A grace period longer than a year would hold invoices as drafts past any tax deadline.
INVOICE_GRACE_PERIOD_DAYS_MAX: Final = 365
DOCUMENT_LOCALE: Final = re.compile(r"^[a-z]{2}(-[A-Z]{2})?$")
ORGANIZATION_SETTINGS: Final = frozenset(
    {
        *TEXT_SETTINGS,
        "country",
        "default_currency",
        "timezone",
        "net_payment_term",
        "document_numbering",
        "document_number_prefix",
        "email_settings",
        "eu_tax_management",
        "finalize_zero_amount_invoice",
        "webhook_urls",
        "billing_configuration",
    }
    - {"name", "phone", "logo_url"}
)
BILLING_ENTITY_SETTINGS: Final = frozenset(
    {*ORGANIZATION_SETTINGS, *BOOLEAN_SETTINGS, *LIST_SETTINGS, "name", "phone", "logo_url"}
    - {"webhook_url", "webhook_urls"}
)
ORGANIZATION_BILLING_CONFIGURATION: Final = frozenset(
    {"invoice_footer", "invoice_grace_period", "document_locale"}
)
BILLING_ENTITY_BILLING_CONFIGURATION: Final = ORGANIZATION_BILLING_CONFIGURATION | {
    "subscription_invoice_issuing_date_anchor",
    "subscription_invoice_issuing_date_adjustment",
}


def billing_entity_id(organization_id: UUID, code: str) -> UUID:
    """A billing entity's lago_id, from its code (the default entity's too)."""
    key = json.dumps(["billing_entity", str(organization_id), code], separators=(",", ":"))
    return uuid5(ids.NAMESPACE, key)


def check_settings(
    values: Mapping[str, Any], allowed: frozenset[str], configuration: frozenset[str]
) -> dict[str, Any]:
    """Validate the given (non-null) settings and return them normalised, ready for an event."""
    checked: dict[str, Any] = {}
    for field, value in values.items():
        if value is None:
            continue  # Lago's client sends null for "not provided".
        if field not in allowed:
            raise InvalidValueError(field, "unsupported_field", value)
        if field in TEXT_SETTINGS:
            checked[field] = _text(value, field)
        elif field in BOOLEAN_SETTINGS:
            if not isinstance(value, bool):
                raise InvalidValueError(field, "value_is_invalid", value)
            checked[field] = value
        elif field in LIST_SETTINGS:
            checked[field] = _strings(value, field)
        elif field == "country":
            checked[field] = check_country(_text(value, field))
        elif field == "default_currency":
            checked[field] = check_currency(_text(value, field), field)
        elif field == "timezone":
            checked[field] = check_timezone(_text(value, field))
        elif field == "net_payment_term":
            if type(value) is not int or not 0 <= value <= NET_PAYMENT_TERM_MAX:
                raise InvalidValueError(field, "value_is_invalid", value)
            checked[field] = value
        elif field == "document_numbering":
            if value not in DOCUMENT_NUMBERINGS:
                raise InvalidValueError(field, "value_is_invalid", value)
            checked[field] = value
        elif field == "document_number_prefix":
            prefix = _text(value, field).strip().upper()
            if not 0 < len(prefix) <= DOCUMENT_NUMBER_PREFIX_LENGTH_MAX:
                raise InvalidValueError(field, "value_is_invalid", value)
            checked[field] = prefix
        elif field == "email_settings":
            settings = _strings(value, field)
            if any(setting not in EMAIL_SETTINGS for setting in settings):
                raise InvalidValueError(field, "value_is_invalid", value)
            checked[field] = settings
        else:
            assert field == "billing_configuration", field
            checked[field] = _billing_configuration(value, configuration)
    email = checked.get("email")
    if email and not all(EMAIL.match(part.strip()) for part in email.split(",")):
        raise InvalidValueError("email", "invalid_email_format", email)
    for field in ("webhook_url", "logo_url"):
        url = checked.get(field)
        if url and not url.startswith(("https://", "http://")):
            raise InvalidValueError(field, "url_is_invalid", url)
    for url in checked.get("webhook_urls", []):
        if not url.startswith(("https://", "http://")):
            raise InvalidValueError("webhook_urls", "url_is_invalid", url)
    return checked


def _text(value: Any, field: str) -> str:
    if not isinstance(value, str) or len(value) > TEXT_LENGTH_MAX:
        raise InvalidValueError(field, "value_is_invalid", value)
    return value


def _strings(value: Any, field: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise InvalidValueError(field, "value_is_invalid", value)
    return [_text(item, field) for item in dict.fromkeys(value)]


def _billing_configuration(value: Any, keys: frozenset[str]) -> dict[str, Any]:
    field = "billing_configuration"
    if not isinstance(value, Mapping):
        raise InvalidValueError(field, "value_is_invalid", value)
    checked: dict[str, Any] = {}
    for key, item in value.items():
        name = f"{field}.{key}"
        if key not in keys:
            raise InvalidValueError(name, "unsupported_field", item)
        if item is None:
            continue
        if key == "invoice_grace_period":
            if type(item) is not int or not 0 <= item <= INVOICE_GRACE_PERIOD_DAYS_MAX:
                raise InvalidValueError(name, "value_is_invalid", item)
        elif key == "invoice_footer":
            _text(item, name)
        elif key == "document_locale":
            if not isinstance(item, str) or not DOCUMENT_LOCALE.match(item):
                raise InvalidValueError(name, "value_is_invalid", item)
        elif key == "subscription_invoice_issuing_date_anchor":
            if item not in ISSUING_DATE_ANCHORS:
                raise InvalidValueError(name, "value_is_invalid", item)
        else:
            assert key == "subscription_invoice_issuing_date_adjustment", key
            if item not in ISSUING_DATE_ADJUSTMENTS:
                raise InvalidValueError(name, "value_is_invalid", item)
        checked[key] = item
    return checked


def _merged_changes(current: Mapping[str, Any], checked: Mapping[str, Any]) -> dict[str, Any]:
    """The settings that differ; a billing_configuration merges key by key, as Lago's does."""
    changes: dict[str, Any] = {}
    for field, value in checked.items():
        if field == "billing_configuration":
            value = {**(current.get(field) or {}), **value}
        if current.get(field) != value:
            changes[field] = value
    return changes


def _check_eu(settings: Mapping[str, Any], reason: str) -> None:
    """Lago refuses EU tax management for a seller established outside the EU."""
    if settings.get("eu_tax_management") and settings.get("country") not in EU_MEMBER_STATES:
        raise InvalidValueError("eu_tax_management", reason, settings.get("country"))


@dataclass(frozen=True)
class BillingEntity:
    """A seller identity of the organization: its legal details, country and tax settings."""

    id: UUID
    organization_id: UUID
    code: str
    name: str
    is_default: bool
    settings: Mapping[str, Any]
    created_at: datetime
    updated_at: datetime

    @property
    def country(self) -> str | None:
        value = self.settings.get("country")
        return value if isinstance(value, str) else None

    @property
    def eu_tax_management(self) -> bool:
        return bool(self.settings.get("eu_tax_management"))

    @property
    def tax_identification_number(self) -> str | None:
        value = self.settings.get("tax_identification_number")
        return value if isinstance(value, str) else None


class Organization(BaseAggregate[UUID]):
    TOPIC = "tally.Organization"

    class Event(AggregateEvent):
        pass

    class Created(AggregateCreated, Event):
        TOPIC = "tally.Organization.Created"
        name: str

    class ApiKeyIssued(Event):
        TOPIC = "tally.Organization.ApiKeyIssued"
        class_version = 2  # v2 adds scope, expires_at and issued_at.
        api_key_id: UUID
        key_hash: str
        scope: str
        expires_at: datetime | None
        issued_at: datetime

        @staticmethod
        def upcast_v1_v2(state: dict[str, Any]) -> None:
            state["scope"] = "full"  # Every key was a full key before scopes.
            state["expires_at"] = None
            state["issued_at"] = state["timestamp"]

    class ApiKeyRevoked(Event):
        TOPIC = "tally.Organization.ApiKeyRevoked"
        api_key_id: UUID
        revoked_at: datetime

    class HmacKeyIssued(Event):
        """The webhook HMAC key: a secret the receivers share, so it is kept to verify replays."""

        TOPIC = "tally.Organization.HmacKeyIssued"
        hmac_key: str

    class SettingsUpdated(Event):
        TOPIC = "tally.Organization.SettingsUpdated"
        changes: dict[str, Any]

    class BillingEntityCreated(Event):
        TOPIC = "tally.Organization.BillingEntityCreated"
        code: str
        settings: dict[str, Any]
        created_at: datetime

    class BillingEntityUpdated(Event):
        TOPIC = "tally.Organization.BillingEntityUpdated"
        code: str
        changes: dict[str, Any]
        updated_at: datetime

    @staticmethod
    def create_id(name: str) -> UUID:
        return ids.organization_id(name)

    @classmethod
    def create(cls, name: str) -> "Organization":
        organization = cls(name=check_organization_name(name))
        organization.issue_hmac_key(new_hmac_key())
        return organization

    def issue_hmac_key(self, hmac_key: str) -> None:
        """Set the webhook HMAC key; organizations created before webhooks get one lazily."""
        if self.hmac_key is None:
            self._hmac_key_issued(hmac_key=hmac_key)

    def rotate_hmac_key(self, hmac_key: str) -> None:
        """A new webhook HMAC key signs from now on; the earlier ones stay in the history, so a
        replay still verifies what they signed (ADR 0022)."""
        if hmac_key == self.hmac_key or len(hmac_key) < 32:
            raise InvalidValueError("hmac_key", "value_is_invalid", len(hmac_key))
        self._hmac_key_issued(hmac_key=hmac_key)

    def issue_api_key(
        self,
        key_hash: str,
        at: datetime,
        scope: str = "full",
        expires_at: datetime | None = None,
    ) -> UUID:
        """Record a new key (by its hash); `at` is the application's clock, which an expiry
        must be later than."""
        check_api_key_scope(scope)
        if expires_at is not None:
            if expires_at.tzinfo is None:
                raise InvalidValueError("expires_at", "value_is_invalid", expires_at)
            if expires_at <= at:
                raise InvalidValueError("expires_at", "value_is_in_the_past", expires_at)
        api_key_id = ids.api_key_index_id(key_hash)
        if api_key_id in self.api_keys:
            raise InvalidValueError("api_key", "value_already_exist", api_key_id)
        self._api_key_issued(
            api_key_id=api_key_id,
            key_hash=key_hash,
            scope=scope,
            expires_at=expires_at,
            issued_at=at,
        )
        return api_key_id

    def revoke_api_key(self, api_key_id: UUID, at: datetime) -> bool:
        """Revoke a key of this organization; False when it was already revoked.
        Raises KeyError for a key the organization never issued."""
        if self.api_keys[api_key_id].revoked_at is not None:
            return False
        self._api_key_revoked(api_key_id=api_key_id, revoked_at=at)
        return True

    def update_settings(self, values: Mapping[str, Any]) -> None:
        """Lago's PUT /organizations: change the settings given, keep the others."""
        self._update_settings(
            values, ORGANIZATION_SETTINGS, ORGANIZATION_BILLING_CONFIGURATION, "org_must_be_in_eu"
        )

    def create_billing_entity(self, code: str, values: Mapping[str, Any], at: datetime) -> None:
        """A new billing entity; `at` is the application's clock, recorded for created_at."""
        code = check_key(code, "code")
        if code == DEFAULT_BILLING_ENTITY or code in self.billing_entities:
            raise InvalidValueError("code", "value_already_exist", code)
        checked = check_settings(
            values, BILLING_ENTITY_SETTINGS, BILLING_ENTITY_BILLING_CONFIGURATION
        )
        if not str(checked.get("name", "")).strip():
            raise InvalidValueError("name", "value_is_mandatory", values.get("name"))
        _check_eu(checked, "billing_entity_must_be_in_eu")
        self._billing_entity_created(code=code, settings=checked, created_at=at)

    def update_billing_entity(self, code: str, values: Mapping[str, Any], at: datetime) -> None:
        """Lago's PUT /billing_entities/{code}; the default entity's settings are the
        organization's. Raises KeyError for an unknown code."""
        if code == DEFAULT_BILLING_ENTITY:
            self._update_settings(
                values,
                BILLING_ENTITY_SETTINGS,
                BILLING_ENTITY_BILLING_CONFIGURATION,
                "billing_entity_must_be_in_eu",
            )
            return
        current = self.billing_entities[code]["settings"]
        checked = check_settings(
            values, BILLING_ENTITY_SETTINGS, BILLING_ENTITY_BILLING_CONFIGURATION
        )
        if "name" in checked and not checked["name"].strip():
            raise InvalidValueError("name", "value_is_invalid", checked["name"])
        changes = _merged_changes(current, checked)
        _check_eu({**current, **changes}, "billing_entity_must_be_in_eu")
        if changes:
            self._billing_entity_updated(code=code, changes=changes, updated_at=at)

    def billing_entity(self, code: str) -> BillingEntity | None:
        if code == DEFAULT_BILLING_ENTITY:
            return BillingEntity(
                id=billing_entity_id(self.id, code),
                organization_id=self.id,
                code=code,
                name=str(self.settings.get("name") or self.name),
                is_default=True,
                settings=self.settings,
                created_at=self.created_on,
                updated_at=self.modified_on,
            )
        entity = self.billing_entities.get(code)
        if entity is None:
            return None
        return BillingEntity(
            id=billing_entity_id(self.id, code),
            organization_id=self.id,
            code=code,
            name=str(entity["settings"]["name"]),
            is_default=False,
            settings=entity["settings"],
            created_at=entity["created_at"],
            updated_at=entity["updated_at"],
        )

    def seller_for(self, billing_entity_code: str | None) -> BillingEntity:
        """The entity that bills a customer: its billing_entity_code, else the default one."""
        entity = self.billing_entity(billing_entity_code or DEFAULT_BILLING_ENTITY)
        if entity is None:
            entity = self.billing_entity(DEFAULT_BILLING_ENTITY)
        assert entity is not None
        return entity

    def all_billing_entities(self) -> list[BillingEntity]:
        """The default entity first, then the others in order of creation."""
        codes = [DEFAULT_BILLING_ENTITY, *self.billing_entities]
        return [entity for code in codes if (entity := self.billing_entity(code)) is not None]

    def _update_settings(
        self,
        values: Mapping[str, Any],
        allowed: frozenset[str],
        configuration: frozenset[str],
        eu_reason: str,
    ) -> None:
        checked = check_settings(values, allowed, configuration)
        if "name" in checked and not checked["name"].strip():
            raise InvalidValueError("name", "value_is_invalid", checked["name"])
        changes = _merged_changes(self.settings, checked)
        _check_eu({**self.settings, **changes}, eu_reason)
        if changes:
            self._settings_updated(changes=changes)

    @event(Created)
    def __init__(self, name: str) -> None:
        self.name = name
        self.api_key_hashes: list[str] = []
        self.api_keys: dict[UUID, IssuedApiKey] = {}
        self.settings: dict[str, Any] = {}
        self.billing_entities: dict[str, dict[str, Any]] = {}
        self.hmac_key: str | None = None

    @event(ApiKeyIssued)
    def _api_key_issued(
        self,
        api_key_id: UUID,
        key_hash: str,
        scope: str,
        expires_at: datetime | None,
        issued_at: datetime,
    ) -> None:
        self.api_key_hashes.append(key_hash)
        self.api_keys[api_key_id] = IssuedApiKey(
            id=api_key_id,
            scope=scope,
            expires_at=expires_at,
            issued_at=issued_at,
            revoked_at=None,
        )

    @event(ApiKeyRevoked)
    def _api_key_revoked(self, api_key_id: UUID, revoked_at: datetime) -> None:
        self.api_keys[api_key_id] = replace(self.api_keys[api_key_id], revoked_at=revoked_at)

    @event(HmacKeyIssued)
    def _hmac_key_issued(self, hmac_key: str) -> None:
        self.hmac_key = hmac_key

    @event(SettingsUpdated)
    def _settings_updated(self, changes: dict[str, Any]) -> None:
        self.settings.update(changes)

    @event(BillingEntityCreated)
    def _billing_entity_created(
        self, code: str, settings: dict[str, Any], created_at: datetime
    ) -> None:
        self.billing_entities[code] = {
            "settings": dict(settings),
            "created_at": created_at,
            "updated_at": created_at,
        }

    @event(BillingEntityUpdated)
    def _billing_entity_updated(
        self, code: str, changes: dict[str, Any], updated_at: datetime
    ) -> None:
        entity = self.billing_entities[code]
        entity["settings"] = {**entity["settings"], **changes}
        entity["updated_at"] = updated_at


class ApiKey(BaseAggregate[UUID]):
    """Maps the hash of a key to its organization, scope, expiry and revocation; its id (the
    key's id everywhere: lists, audit logs) is derived from the hash. Authentication reads it
    on every request, so a revocation recorded by any process takes effect at once."""

    TOPIC = "tally.ApiKey"

    class Event(AggregateEvent):
        pass

    class Created(AggregateCreated, Event):
        TOPIC = "tally.ApiKey.Created"
        class_version = 2  # v2 adds scope and expires_at.
        organization_id: UUID
        key_hash: str
        scope: str
        expires_at: datetime | None

        @staticmethod
        def upcast_v1_v2(state: dict[str, Any]) -> None:
            state["scope"] = "full"  # Every key was a full key before scopes.
            state["expires_at"] = None

    class Revoked(Event):
        TOPIC = "tally.ApiKey.Revoked"
        revoked_at: datetime

    @staticmethod
    def create_id(key_hash: str) -> UUID:
        return ids.api_key_index_id(key_hash)

    @classmethod
    def create(
        cls,
        organization_id: UUID,
        key_hash: str,
        scope: str = "full",
        expires_at: datetime | None = None,
    ) -> "ApiKey":
        return cls(
            organization_id=organization_id,
            key_hash=key_hash,
            scope=check_api_key_scope(scope),
            expires_at=expires_at,
        )

    def revoke(self, at: datetime) -> bool:
        """False when the key was already revoked (a repeated revocation changes nothing)."""
        if self.revoked_at is not None:
            return False
        self._revoked(revoked_at=at)
        return True

    def is_valid_at(self, now: datetime) -> bool:
        return self.revoked_at is None and (self.expires_at is None or now < self.expires_at)

    @event(Created)
    def __init__(
        self, organization_id: UUID, key_hash: str, scope: str, expires_at: datetime | None
    ) -> None:
        self.organization_id = organization_id
        self.key_hash = key_hash
        self.scope = scope
        self.expires_at = expires_at
        self.revoked_at: datetime | None = None

    @event(Revoked)
    def _revoked(self, revoked_at: datetime) -> None:
        self.revoked_at = revoked_at
