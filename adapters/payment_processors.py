"""The PaymentProviders port: a connection's processor, built from its secrets and settings
(TALLY_STRIPE_API_BASE points every Stripe connection at another address, e.g. a test fake)."""

import os
from collections.abc import Mapping
from dataclasses import dataclass

from adapters.bank_transfer import BankTransferProvider
from adapters.settings import SettingsError
from adapters.stripe_gateway import API_BASE_DEFAULT, TIMEOUT_S_DEFAULT, stripe_gateway
from application.payments import PaymentProvider

STRIPE_API_BASE_ENV = "TALLY_STRIPE_API_BASE"
STRIPE_TIMEOUT_ENV = "TALLY_STRIPE_TIMEOUT_S"


@dataclass(frozen=True)
class Processors:
    stripe_api_base: str = API_BASE_DEFAULT
    stripe_timeout_s: float = TIMEOUT_S_DEFAULT

    def open(self, provider: str, secrets: Mapping[str, str]) -> PaymentProvider:
        if provider == "stripe":
            return stripe_gateway(
                secrets, api_base=self.stripe_api_base, timeout_s=self.stripe_timeout_s
            )
        assert provider == "bank_transfer", provider
        return BankTransferProvider()


def processors_from_env(environ: Mapping[str, str] | None = None) -> Processors:
    environ = os.environ if environ is None else environ
    api_base = environ.get(STRIPE_API_BASE_ENV, "").strip() or API_BASE_DEFAULT
    if not api_base.startswith(("https://", "http://")):
        raise SettingsError(f"{STRIPE_API_BASE_ENV}={api_base!r}: an http(s) URL.")
    timeout = environ.get(STRIPE_TIMEOUT_ENV, "").strip()
    try:
        timeout_s = float(timeout) if timeout else TIMEOUT_S_DEFAULT
    except ValueError:
        timeout_s = -1.0
    if not 0 < timeout_s <= 120:
        raise SettingsError(f"{STRIPE_TIMEOUT_ENV}={timeout!r}: seconds, above 0, up to 120.")
    return Processors(api_base.rstrip("/"), timeout_s)
