"""Webhook delivery over HTTP (the only module that posts webhooks), JWT signing, and settings.

The RSA key pair is one per store (lago-api holds one per instance): its private half is kept in
the store's webhook_signing_keys table, generated on first use, never in an event.
"""

import os
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Protocol

import httpx
import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from adapters.settings import SettingsError
from application.webhooks import DeliveryResult, WebhookSettings

RSA_KEY_BITS = 2048  # Lago's key size; RS256 with it is what Lago's receivers expect.
USER_AGENT = "Tally webhooks"


class SigningKeyStore(Protocol):
    def private_key_pem(self, generate: Callable[[], str]) -> str:
        """The stored private key, or the one generate() makes, stored first."""


def generate_private_key_pem() -> str:
    key = rsa.generate_private_key(public_exponent=65537, key_size=RSA_KEY_BITS)
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()


@dataclass
class RsaJwtSigner:
    """Lago's jwt signature: JWT.encode({data: body, iss: API URL}, private key, "RS256")."""

    keys: SigningKeyStore
    issuer: str

    def __post_init__(self) -> None:
        self._private_key: rsa.RSAPrivateKey | None = None

    def _key(self) -> rsa.RSAPrivateKey:
        if self._private_key is None:
            pem = self.keys.private_key_pem(generate_private_key_pem)
            key = serialization.load_pem_private_key(pem.encode(), password=None)
            assert isinstance(key, rsa.RSAPrivateKey), type(key)
            self._private_key = key
        return self._private_key

    def jwt(self, body: bytes) -> str:
        # No exp claim, as Lago: a receiver may verify a stored webhook later.
        return jwt.encode({"data": body.decode(), "iss": self.issuer}, self._key(), "RS256")

    def public_key_pem(self) -> bytes:
        return (
            self._key()
            .public_key()
            .public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )


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
    TIMEOUT_S, POLL_S, BATCH_MAX, CONCURRENCY}; unset ones keep WebhookSettings' defaults."""
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
    )
