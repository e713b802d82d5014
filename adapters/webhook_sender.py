"""Webhook delivery over HTTP (the only module that posts webhooks), JWT signing, and settings.

The RSA key pair is one per store (lago-api holds one per instance): its private half is kept in
the store's webhook_signing_keys table, generated on first use, never in an event. A rotation
replaces it and keeps the retired public half (ADR 0022); every JWT names its key in `kid`.
"""

import hashlib
import os
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

import httpx
import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from adapters.settings import SettingsError
from application.webhooks import KEY_REFRESH_S, DeliveryResult, SigningKey, WebhookSettings

RSA_KEY_BITS = 2048  # Lago's key size; RS256 with it is what Lago's receivers expect.
USER_AGENT = "Tally webhooks"
ROTATION_RETRIES_MAX = 10  # Rotations racing each other: each retires the key the last made.


class SigningKeyStore(Protocol):
    def private_key_pem(self, generate: Callable[[], str]) -> str:
        """The stored private key, or the one generate() makes, stored first."""

    def rotate(self, old_pem: str, old_public_pem: str, new_pem: str, now: datetime) -> bool:
        """Replace the current key, if it is still old_pem, keeping old_public_pem as retired."""

    def created_at(self) -> datetime:
        """When the current key was made."""

    def retired(self) -> list[tuple[str, datetime, datetime]]:
        """(public key PEM, created_at, retired_at) of the retired keys, newest first."""


def generate_private_key_pem() -> str:
    key = rsa.generate_private_key(public_exponent=65537, key_size=RSA_KEY_BITS)
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()


def key_id(public_key_pem: bytes) -> str:
    """The JWT kid of a key: the first 16 bytes of the SHA-256 of its DER
    SubjectPublicKeyInfo, in hex (stable, and the same for every process)."""
    public_key = serialization.load_pem_public_key(public_key_pem)
    der = public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(der).hexdigest()[:32]


def _public_pem(private_key: rsa.RSAPrivateKey) -> bytes:
    return private_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


@dataclass
class RsaJwtSigner:
    """Lago's jwt signature: JWT.encode({data: body, iss: API URL}, private key, "RS256"), with
    the key's id as the header's kid (receivers that ignore it verify as with Lago)."""

    keys: SigningKeyStore
    issuer: str

    def __post_init__(self) -> None:
        self._pem: str | None = None
        self._private_key: rsa.RSAPrivateKey | None = None
        self._kid = ""
        self._read_at = float("-inf")
        self._lock = threading.Lock()

    def _key(self) -> tuple[rsa.RSAPrivateKey, str]:
        """The current key: read from the store again after KEY_REFRESH_S, so that a rotation
        made by another process is picked up; parsed only when it changed."""
        with self._lock:
            if self._private_key is None or time.monotonic() - self._read_at >= KEY_REFRESH_S:
                pem = self.keys.private_key_pem(generate_private_key_pem)
                self._read_at = time.monotonic()
                if pem != self._pem:
                    key = serialization.load_pem_private_key(pem.encode(), password=None)
                    assert isinstance(key, rsa.RSAPrivateKey), type(key)
                    self._pem, self._private_key = pem, key
                    self._kid = key_id(_public_pem(key))
            assert self._private_key is not None
            return self._private_key, self._kid

    def jwt(self, body: bytes) -> str:
        key, kid = self._key()
        # No exp claim, as Lago: a receiver may verify a stored webhook later.
        return jwt.encode(
            {"data": body.decode(), "iss": self.issuer}, key, "RS256", headers={"kid": kid}
        )

    def public_key_pem(self) -> bytes:
        return _public_pem(self._key()[0])

    def signing_keys(self) -> list[SigningKey]:
        current = self.public_key_pem()
        found = [SigningKey(current, key_id(current), self.keys.created_at())]
        for pem, created_at, retired_at in self.keys.retired():
            public = pem.encode()
            found.append(SigningKey(public, key_id(public), created_at, retired_at))
        return found

    def rotate(self, now: datetime) -> SigningKey:
        new_pem = generate_private_key_pem()
        for _ in range(ROTATION_RETRIES_MAX):
            old_pem = self.keys.private_key_pem(generate_private_key_pem)
            old = serialization.load_pem_private_key(old_pem.encode(), password=None)
            assert isinstance(old, rsa.RSAPrivateKey), type(old)
            if self.keys.rotate(old_pem, _public_pem(old).decode(), new_pem, now):
                break  # Else another rotation came first: retire the key it made.
        else:
            raise RuntimeError("The signing key kept changing during its rotation.")
        with self._lock:
            self._read_at = float("-inf")  # This process signs with the new key at once.
        new = self.public_key_pem()
        return SigningKey(new, key_id(new), now)


class HttpTransport:
    """POST with httpx, no redirects followed (a 3xx fails, as any non-2xx).

    One client for every delivery: it keeps connections to receivers alive, and building a
    client (its TLS context) costs more than a local delivery.
    """

    def __init__(self) -> None:
        self._client: httpx.Client | None = None
        self._lock = threading.Lock()

    def _http(self) -> httpx.Client:
        with self._lock:  # Made on first use: most apps (and tests) never deliver.
            if self._client is None:
                self._client = httpx.Client(
                    follow_redirects=False, headers={"User-Agent": USER_AGENT}
                )
            return self._client

    def post(
        self, url: str, body: bytes, headers: Mapping[str, str], timeout_s: float
    ) -> DeliveryResult:
        try:
            response = self._http().post(url, content=body, headers=headers, timeout=timeout_s)
        except httpx.HTTPError as error:
            return DeliveryResult(None, "", f"{type(error).__name__}: {error}")
        return DeliveryResult(response.status_code, response.text)


def api_origin(url: str) -> str:
    """The public API URL as Lago's clients take it: no trailing /api/v1 (lago-api.md §1.1)."""
    url = url.strip().rstrip("/")
    return url.removesuffix("/api/v1").rstrip("/")


def webhook_settings_from_env(environ: Mapping[str, str] | None = None) -> WebhookSettings:
    """TALLY_API_URL and TALLY_WEBHOOK_{ATTEMPTS_MAX, BACKOFF_BASE_S, BACKOFF_CAP_S,
    TIMEOUT_S, POLL_S, BATCH_MAX, CONCURRENCY, KEY_GRACE_S}; unset ones keep WebhookSettings'
    defaults."""
    environ = os.environ if environ is None else environ
    defaults = WebhookSettings()
    api_url = environ.get("TALLY_API_URL", "").strip() or defaults.api_url
    if not api_url.startswith(("http://", "https://")):
        raise SettingsError(f"TALLY_API_URL={api_url!r}: an http(s) URL, the API's origin.")

    def number(name: str, default: float, low: float, high: float, whole: bool) -> float:
        raw = environ.get(f"TALLY_WEBHOOK_{name}", "").strip()
        if not raw:
            return default
        try:
            value = int(raw) if whole else float(raw)
        except ValueError:
            value = low - 1
        if not low <= value <= high:
            kind = "a whole number" if whole else "a number"
            raise SettingsError(f"TALLY_WEBHOOK_{name}={raw!r}: {kind} from {low} to {high}.")
        return value

    return WebhookSettings(
        api_url=api_origin(api_url),
        attempts_max=int(number("ATTEMPTS_MAX", defaults.attempts_max, 1, 100, True)),
        backoff_base_s=number("BACKOFF_BASE_S", defaults.backoff_base_s, 0, 3600, False),
        backoff_cap_s=number("BACKOFF_CAP_S", defaults.backoff_cap_s, 0, 86400, False),
        timeout_s=number("TIMEOUT_S", defaults.timeout_s, 0.1, 300, False),
        poll_s=number("POLL_S", defaults.poll_s, 0.01, 60, False),
        batch_max=int(number("BATCH_MAX", defaults.batch_max, 1, 1000, True)),
        concurrency=int(number("CONCURRENCY", defaults.concurrency, 1, 64, True)),
        key_grace_s=number("KEY_GRACE_S", defaults.key_grace_s, 0, 366 * 86400, False),
    )
