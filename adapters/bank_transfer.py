"""Bank transfers: the second PaymentProvider, proving the port is processor-agnostic.

An attempt asks for nothing from anyone: it gives the invoice a payment reference and waits.
A bank statement (CSV: reference, amount, currency, and optionally date) is then reconciled,
by `POST /api/v1/bank_transfers/reconcile` or `tally payments reconcile FILE.csv`, and each line
whose reference and amount match a pending transfer pays it.
"""

import csv
import io
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from uuid import UUID

from application.payments import (
    BalanceTransaction,
    PaymentRequest,
    PaymentResult,
    Payout,
    ProviderCustomer,
    ProviderError,
    ProviderEvent,
    RefundRequest,
    RefundResult,
    TransferReceived,
    WebhookSignatureError,
)
from domain.errors import InvalidValueError
from domain.money import CURRENCY_EXPONENTS, EXACT, to_decimal

METHOD: str = "bank_transfer"  # What stands for the customer's payment method.


class BankTransferProvider:
    requires_customer = False

    def create_customer(self, customer: ProviderCustomer, idempotency_key: str) -> str:
        raise ProviderError("not_supported", "Bank transfers keep no customer.")

    def default_payment_method(self, provider_customer_id: str | None) -> str | None:
        return METHOD

    def set_default_payment_method(self, provider_customer_id: str, payment_method_id: str) -> None:
        return None

    def checkout_url(
        self, provider_customer_id: str, currency: str | None, success_url: str | None
    ) -> str:
        raise ProviderError("not_supported", "Bank transfers have no checkout.")

    def create_payment(self, request: PaymentRequest) -> PaymentResult:
        """The attempt's reference is its id here: pending until a statement line matches."""
        assert request.reference is not None, request.payment_id
        return PaymentResult("pending", request.reference)

    def find_payment(self, provider_payment_id: str) -> UUID | None:
        return None

    def refund(self, request: RefundRequest) -> RefundResult:
        return RefundResult(None, "pending")  # Sent by hand; PUT /credit_notes settles it.

    def parse_webhook(self, payload: bytes, signature: str | None) -> ProviderEvent:
        raise WebhookSignatureError("Bank transfers send no webhooks.")

    def read_event(self, payload: bytes) -> ProviderEvent:
        raise WebhookSignatureError("Bank transfers send no webhooks.")

    def balance_transactions(
        self, created_from: datetime, created_to: datetime
    ) -> list[BalanceTransaction]:
        """A bank is not queried: its statement is imported (`tally reconcile --statement`,
        application/payments.statement_transactions)."""
        return []

    def payouts(self, created_from: datetime, created_to: datetime) -> list[Payout]:
        return []  # The money is already on the seller's account.


def read_statement(text: str) -> Iterator[TransferReceived]:
    """Lines of a CSV statement with a header: reference, amount (major units, a decimal
    string), currency, and an optional received_at (ISO 8601; a date is midnight UTC)."""
    rows = csv.DictReader(io.StringIO(text))
    missing = {"reference", "amount", "currency"} - set(rows.fieldnames or ())
    if missing:
        raise InvalidValueError("statement", "missing_columns", sorted(missing))
    for number, row in enumerate(rows, start=2):
        currency = (row.get("currency") or "").strip().upper()
        if currency not in CURRENCY_EXPONENTS:
            raise InvalidValueError(f"line {number}.currency", "value_is_invalid", currency)
        amount = to_decimal((row.get("amount") or "").strip(), f"line {number}.amount")
        cents = amount.scaleb(CURRENCY_EXPONENTS[currency], EXACT)
        if cents != cents.to_integral_value() or cents <= 0:
            raise InvalidValueError(f"line {number}.amount", "value_is_invalid", str(amount))
        yield TransferReceived(
            reference=(row.get("reference") or "").strip(),
            amount_cents=int(cents),
            currency=currency,
            received_at=_instant(row.get("received_at"), number),
        )


def _instant(value: str | None, number: int) -> datetime:
    if not value or not value.strip():
        return datetime.now(UTC)
    try:
        instant = datetime.fromisoformat(value.strip())
    except ValueError:
        raise InvalidValueError(f"line {number}.received_at", "invalid_date", value) from None
    if instant.tzinfo is None:
        instant = instant.replace(tzinfo=UTC)
    return instant.astimezone(UTC)


def amount_string(amount_cents: int, currency: str) -> str:
    return format(Decimal(amount_cents).scaleb(-CURRENCY_EXPONENTS[currency], EXACT), "f")
