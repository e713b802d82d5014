"""Stripe, through its official SDK: one StripeClient per connection (its own secret key), so
one organization can collect through several Stripe accounts. The only module importing stripe.

Stripe counts most currencies in hundredths, but its zero-decimal currencies in units and its
three-decimal ones in thousandths that must end in 0; ISK is zero-decimal yet written with two
decimals of 00. Tally counts in ISO 4217 minor units, so every amount is converted here, and an
amount Stripe cannot take (below its minimum, or not representable) never reaches it.
"""

import json
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any, Final
from uuid import UUID

import stripe

from application.payments import (
    BalanceTransaction,
    PaymentRequest,
    PaymentResult,
    Payout,
    ProviderCustomer,
    ProviderError,
    ProviderEvent,
    ProviderUnavailableError,
    RefundRequest,
    RefundResult,
    WebhookSignatureError,
)
from domain.money import CURRENCY_EXPONENTS

API_BASE_DEFAULT: Final = "https://api.stripe.com"
TIMEOUT_S_DEFAULT: Final = 30.0
WEBHOOK_TOLERANCE_S: Final = 300  # Stripe's default: a signed payload older than this is refused.
# Stripe's zero-decimal currencies (amounts in units) and its three-decimal ones.
ZERO_DECIMAL: Final = frozenset(
    "BIF CLP DJF GNF JPY KMF KRW MGA PYG RWF UGX VND VUV XAF XOF XPF".split()
)
THREE_DECIMAL: Final = frozenset("BHD JOD KWD OMR TND".split())
# Zero-decimal in fact, but written with two decimals that must be 00.
TWO_DECIMALS_OF_ZERO: Final = frozenset({"ISK"})
# Stripe's minimum charge amounts, in Stripe units (docs.stripe.com/currencies#minimum-and-
# maximum-charge-amounts); other currencies: the equivalent of 0.50 USD, checked by Stripe.
MINIMUM_STRIPE_AMOUNTS: Final = {
    "USD": 50, "AED": 200, "AUD": 50, "BGN": 100, "BRL": 50, "CAD": 50, "CHF": 50, "CZK": 1500,
    "DKK": 250, "EUR": 50, "GBP": 30, "HKD": 400, "HUF": 17500, "INR": 50, "JPY": 50,
    "MXN": 1000, "MYR": 200, "NOK": 300, "NZD": 50, "PLN": 200, "RON": 200, "SEK": 300,
    "SGD": 50, "THB": 1000,
}  # fmt: skip
METADATA_PAYMENT: Final = "tally_payment_id"
METADATA_INVOICE: Final = "lago_invoice_id"
METADATA_CREDIT_NOTE: Final = "tally_credit_note_id"
LIST_PAGE_SIZE: Final = 100  # Stripe's largest page.
LIST_PAGES_MAX: Final = 1_000  # 100,000 balance transactions in a reconciliation window.


class AmountNotCollectableError(Exception):
    def __init__(self, code: str, amount_cents: int, currency: str) -> None:
        super().__init__(f"{amount_cents} minor units of {currency}: {code}")
        self.code = code


def stripe_exponent(currency: str) -> int:
    code = currency.upper()
    if code in ZERO_DECIMAL:
        return 0
    if code in THREE_DECIMAL:
        return 3
    return 2


def to_stripe_amount(amount_cents: int, currency: str) -> int:
    """Tally's ISO minor units → Stripe's amount; refuses what Stripe cannot represent."""
    code = currency.upper()
    shift = stripe_exponent(code) - CURRENCY_EXPONENTS[code]
    if shift >= 0:
        amount = amount_cents * 10**shift
    else:
        amount, rest = divmod(amount_cents, 10**-shift)
        if rest:
            raise AmountNotCollectableError("amount_not_representable", amount_cents, code)
    if code in TWO_DECIMALS_OF_ZERO and amount % 100:
        raise AmountNotCollectableError("amount_not_representable", amount_cents, code)
    if code in THREE_DECIMAL and amount % 10:
        raise AmountNotCollectableError("amount_not_representable", amount_cents, code)
    if amount < MINIMUM_STRIPE_AMOUNTS.get(code, 1):
        raise AmountNotCollectableError("amount_too_small", amount_cents, code)
    return int(amount)


def from_stripe_amount(amount: int, currency: str) -> int:
    """Stripe's amount → Tally's ISO minor units (exact for every amount Stripe reports)."""
    code = currency.upper()
    shift = stripe_exponent(code) - CURRENCY_EXPONENTS[code]
    return int(amount * 10**-shift if shift < 0 else amount // 10**shift)


class StripeGateway:
    """The PaymentProvider port on one Stripe account."""

    requires_customer = True

    def __init__(
        self,
        secret_key: str,
        webhook_secret: str,
        *,
        api_base: str = API_BASE_DEFAULT,
        timeout_s: float = TIMEOUT_S_DEFAULT,
    ) -> None:
        self.webhook_secret = webhook_secret
        self.client = stripe.StripeClient(
            secret_key,
            base_addresses={"api": api_base.rstrip("/")},
            # We retry ourselves, later and with the same idempotency key (application/payments).
            max_network_retries=0,
            http_client=stripe.RequestsClient(timeout=timeout_s),
        )

    def create_customer(self, customer: ProviderCustomer, idempotency_key: str) -> str:
        params: dict[str, Any] = {
            "metadata": {"tally_customer_id": str(customer.customer_id)},
            "description": customer.external_id,
        }
        if customer.name:
            params["name"] = customer.name
        if customer.email:
            params["email"] = customer.email.split(",")[0].strip()
        created = self._call(
            lambda: self.client.v1.customers.create(
                params=params,  # type: ignore[arg-type]
                options={"idempotency_key": idempotency_key},
            )
        )
        return str(created["id"])

    def default_payment_method(self, provider_customer_id: str | None) -> str | None:
        assert provider_customer_id is not None
        customer = self._call(lambda: self.client.v1.customers.retrieve(provider_customer_id))
        method = (customer.get("invoice_settings") or {}).get("default_payment_method")
        if isinstance(method, dict):
            method = method.get("id")  # Expanded.
        return str(method) if method else None

    def set_default_payment_method(self, provider_customer_id: str, payment_method_id: str) -> None:
        self._call(
            lambda: self.client.v1.customers.update(
                provider_customer_id,
                params={"invoice_settings": {"default_payment_method": payment_method_id}},
            )
        )

    def checkout_url(
        self, provider_customer_id: str, currency: str | None, success_url: str | None
    ) -> str:
        """A Checkout Session in setup mode: the customer saves a card for later payments."""
        params: dict[str, Any] = {
            "mode": "setup",
            "customer": provider_customer_id,
            "payment_method_types": ["card"],
            "success_url": success_url or "https://stripe.com/",
        }
        if currency:
            params["currency"] = currency.lower()
        session = self._call(
            lambda: self.client.v1.checkout.sessions.create(params=params)  # type: ignore[arg-type]
        )
        return str(session["url"])

    def create_payment(self, request: PaymentRequest) -> PaymentResult:
        """An off-session PaymentIntent, confirmed at once, keyed by the attempt."""
        try:
            amount = to_stripe_amount(request.amount_cents, request.currency)
        except AmountNotCollectableError as error:
            return PaymentResult("canceled", None, error.code, str(error))
        params: dict[str, Any] = {
            "amount": amount,
            "currency": request.currency.lower(),
            "customer": request.provider_customer_id,
            "payment_method": request.payment_method_id,
            "confirm": True,
            "off_session": True,
            "error_on_requires_action": True,
            "description": request.description,
            "metadata": {
                METADATA_PAYMENT: str(request.payment_id),
                METADATA_INVOICE: str(request.invoice_id),
            },
        }
        try:
            intent = self._call(
                lambda: self.client.v1.payment_intents.create(
                    params=params,  # type: ignore[arg-type]
                    options={"idempotency_key": request.idempotency_key},
                )
            )
        except StripeRefusedError as error:
            # A decline (402) names the PaymentIntent it made; other 4xx refuse the request.
            return PaymentResult("failed", error.payment_intent_id, error.code, error.message)
        return PaymentResult(_intent_status(intent["status"]), str(intent["id"]))

    def find_payment(self, provider_payment_id: str) -> UUID | None:
        try:
            intent = self._call(
                lambda: self.client.v1.payment_intents.retrieve(provider_payment_id)
            )
        except StripeRefusedError:
            return None  # Not this account's.
        return _uuid((intent.get("metadata") or {}).get(METADATA_PAYMENT))

    def refund(self, request: RefundRequest) -> RefundResult:
        params: dict[str, Any] = {
            "payment_intent": request.provider_payment_id,
            "amount": to_stripe_amount_any(request.amount_cents, request.currency),
            "metadata": {
                METADATA_PAYMENT: str(request.payment_id),
                METADATA_CREDIT_NOTE: str(request.credit_note_id),
            },
        }
        try:
            refund = self._call(
                lambda: self.client.v1.refunds.create(
                    params=params,  # type: ignore[arg-type]
                    options={"idempotency_key": request.idempotency_key},
                )
            )
        except StripeRefusedError:
            return RefundResult(None, "failed")
        return RefundResult(str(refund["id"]), _refund_status(refund["status"]))

    def parse_webhook(self, payload: bytes, signature: str | None) -> ProviderEvent:
        try:
            stripe.Webhook.construct_event(
                payload.decode(), signature, self.webhook_secret, tolerance=WEBHOOK_TOLERANCE_S
            )
        except (stripe.SignatureVerificationError, ValueError, UnicodeDecodeError) as error:
            raise WebhookSignatureError(str(error)) from None
        return self.read_event(payload)

    def read_event(self, payload: bytes) -> ProviderEvent:
        event = json.loads(payload)
        kind = str(event["type"])
        obj: dict[str, Any] = event["data"]["object"]
        occurred_at = datetime.fromtimestamp(int(event["created"]), UTC)
        metadata = obj.get("metadata") or {}
        common: dict[str, Any] = {
            "event_id": str(event["id"]),
            "event_type": kind,
            "occurred_at": occurred_at,
            "payment_id": _uuid(metadata.get(METADATA_PAYMENT)),
        }
        if kind.startswith("payment_intent."):
            error = obj.get("last_payment_error") or {}
            return ProviderEvent(
                **common,
                provider_payment_id=obj.get("id"),
                provider_customer_id=obj.get("customer"),
                failure_code=error.get("decline_code") or error.get("code"),
                failure_message=error.get("message"),
            )
        if kind == "charge.refunded":
            return ProviderEvent(
                **common,
                provider_payment_id=obj.get("payment_intent"),
                refunded_amount_cents=from_stripe_amount(
                    int(obj["amount_refunded"]), str(obj["currency"])
                ),
            )
        if kind in ("charge.refund.updated", "refund.updated", "refund.failed"):
            return ProviderEvent(
                **common,
                provider_payment_id=obj.get("payment_intent"),
                credit_note_id=_uuid(metadata.get(METADATA_CREDIT_NOTE)),
                refund_id=obj.get("id"),
                refund_status=_refund_status(str(obj.get("status"))),
            )
        if kind == "setup_intent.succeeded":
            return ProviderEvent(
                **common,
                provider_customer_id=obj.get("customer"),
                payment_method_id=obj.get("payment_method"),
            )
        if kind.startswith("charge.dispute."):
            return ProviderEvent(
                **common,
                provider_payment_id=obj.get("payment_intent"),
                dispute_status=obj.get("status"),
            )
        return ProviderEvent(**common)

    def balance_transactions(
        self, created_from: datetime, created_to: datetime
    ) -> list[BalanceTransaction]:
        """The account's balance history in [from, to), each with its source expanded, so a
        charge names its PaymentIntent (and our payment id, in its metadata)."""
        params: dict[str, Any] = {
            "created": {"gte": _unix(created_from), "lt": _unix(created_to)},
            "limit": LIST_PAGE_SIZE,
            "expand": ["data.source"],
        }
        found = [_balance_transaction(t) for t in self._list("balance_transactions", params)]
        return sorted(found, key=lambda t: (t.created_at, t.transaction_id))

    def payouts(self, created_from: datetime, created_to: datetime) -> list[Payout]:
        params: dict[str, Any] = {
            "created": {"gte": _unix(created_from), "lt": _unix(created_to)},
            "limit": LIST_PAGE_SIZE,
        }
        found = [
            Payout(
                payout_id=str(p["id"]),
                amount_cents=from_stripe_amount(int(p["amount"]), str(p["currency"])),
                currency=str(p["currency"]).upper(),
                status=str(p.get("status") or ""),
                created_at=datetime.fromtimestamp(int(p["created"]), UTC),
                arrival_on=(
                    datetime.fromtimestamp(int(p["arrival_date"]), UTC).date()
                    if p.get("arrival_date")
                    else None
                ),
            )
            for p in self._list("payouts", params)
        ]
        return sorted(found, key=lambda p: (p.created_at, p.payout_id))

    def _list(self, resource: str, params: dict[str, Any]) -> list[dict[str, Any]]:
        """Every page of a Stripe list (newest first), through starting_after."""
        service = getattr(self.client.v1, resource)
        found: list[dict[str, Any]] = []
        for _ in range(LIST_PAGES_MAX):
            page = self._call(lambda: service.list(params=dict(params)))
            data: list[dict[str, Any]] = page.get("data") or []
            found += data
            if not page.get("has_more") or not data:
                return found
            params["starting_after"] = data[-1]["id"]
        raise ProviderUnavailableError(f"More than {LIST_PAGES_MAX} pages of {resource}.")

    @staticmethod
    def _call(call: Callable[[], stripe.StripeObject]) -> dict[str, Any]:
        """Stripe's answer as a plain dict; its errors as the port's: outages to retry,
        refusals to record."""
        try:
            answer: dict[str, Any] = call().to_dict()
            return answer
        except stripe.CardError as error:
            raise _refused(error) from None
        except (
            stripe.APIConnectionError,
            stripe.RateLimitError,
            stripe.IdempotencyError,
            stripe.AuthenticationError,
            stripe.PermissionError,
        ) as error:
            # An idempotency error means our key met other parameters: never a new charge. A
            # refused secret key is the connection's to fix (rotate it): the attempt waits.
            raise ProviderUnavailableError(str(error)) from None
        except stripe.APIError as error:
            raise ProviderUnavailableError(str(error)) from None
        except stripe.StripeError as error:
            if error.http_status is None or error.http_status >= 500:
                raise ProviderUnavailableError(str(error)) from None
            raise _refused(error) from None


class StripeRefusedError(ProviderError):
    """Stripe refused the request (4xx); a declined payment names its PaymentIntent."""

    def __init__(self, code: str, message: str, payment_intent_id: str | None) -> None:
        super().__init__(code, message)
        self.payment_intent_id = payment_intent_id


def _refused(error: stripe.StripeError) -> StripeRefusedError:
    body: dict[str, Any] = error.json_body if isinstance(error.json_body, dict) else {}
    details: dict[str, Any] = body.get("error") or {}
    code = details.get("decline_code") or details.get("code") or "provider_error"
    intent = details.get("payment_intent")
    intent_id = intent.get("id") if isinstance(intent, dict) else None
    return StripeRefusedError(str(code), str(details.get("message") or error), intent_id)


def to_stripe_amount_any(amount_cents: int, currency: str) -> int:
    """A refund's amount: representable, whatever the minimum charge."""
    code = currency.upper()
    shift = stripe_exponent(code) - CURRENCY_EXPONENTS[code]
    return int(amount_cents * 10**shift if shift >= 0 else amount_cents // 10**-shift)


def _intent_status(status: str) -> str:
    return {
        "succeeded": "succeeded",
        "canceled": "canceled",
        "requires_payment_method": "failed",
        "requires_action": "failed",
    }.get(status, "pending")  # processing, requires_capture, requires_confirmation


def _refund_status(status: str) -> str:
    return {"succeeded": "succeeded", "failed": "failed", "canceled": "failed"}.get(
        status, "pending"
    )


def _unix(instant: datetime) -> int:
    return int(instant.timestamp())


def _balance_transaction(found: dict[str, Any]) -> BalanceTransaction:
    """A Stripe balance transaction in the port's terms; its source (expanded) is a charge, a
    refund or a payout, whose PaymentIntent and metadata name our payment."""
    currency = str(found["currency"]).upper()
    source = found.get("source")
    source_obj: dict[str, Any] = source if isinstance(source, dict) else {}
    source_id = source_obj.get("id") if source_obj else source
    metadata = source_obj.get("metadata") or {}
    kind = str(found.get("type") or "")
    intent = source_obj.get("payment_intent")
    if isinstance(intent, dict):
        intent = intent.get("id")
    return BalanceTransaction(
        transaction_id=str(found["id"]),
        kind=kind,
        amount_cents=from_stripe_amount(int(found["amount"]), currency),
        fee_cents=from_stripe_amount(int(found.get("fee") or 0), currency),
        net_cents=from_stripe_amount(int(found["net"]), currency),
        currency=currency,
        created_at=datetime.fromtimestamp(int(found["created"]), UTC),
        provider_payment_id=str(intent) if intent else None,
        payment_id=_uuid(metadata.get(METADATA_PAYMENT)),
        provider_refund_id=str(source_id) if kind in ("refund", "payment_refund") else None,
        payout_id=str(source_id) if kind == "payout" and source_id else None,
        description=found.get("description"),
    )


def _uuid(value: Any) -> UUID | None:
    try:
        return UUID(str(value)) if value else None
    except ValueError:
        return None


def stripe_gateway(
    secrets: Mapping[str, str], *, api_base: str = API_BASE_DEFAULT, timeout_s: float
) -> StripeGateway:
    return StripeGateway(
        secrets["secret_key"], secrets["webhook_secret"], api_base=api_base, timeout_s=timeout_s
    )
