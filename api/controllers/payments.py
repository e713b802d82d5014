"""Lago's payments (manual payments, the payments list) and checkout_url; Tally's extensions for
processor connections (/payment_providers) and bank-transfer reconciliation; and the inbound
processor webhooks, which carry no API key: their signature is their authentication."""

from datetime import datetime
from typing import Annotated, Any
from uuid import UUID

import msgspec
from litestar import Controller, Request, delete, get, post, put
from litestar.di import NamedDependency, Provide
from litestar.params import FromPath, FromQuery

from adapters.bank_transfer import amount_string, read_statement
from api.http import Envelope, Input, Output, PaginationMeta, decode_body, iso, meta, pagination
from application.errors import NotFoundError
from application.payments import Payments, TransferReceived
from domain.errors import InvalidValueError
from domain.invoice import Invoice
from domain.limits import AMOUNT_CENTS_MAX
from domain.money import CURRENCY_EXPONENTS, EXACT, to_decimal
from domain.payment import Payment, PaymentConnection

AmountCents = Annotated[int, msgspec.Meta(ge=1, le=AMOUNT_CENTS_MAX)]


def provide_payments(request: Request[Any, Any, Any]) -> Payments:
    payments: Payments = request.app.state.ledger.payments
    return payments


_DEPENDENCIES = {"payments": Provide(provide_payments, sync_to_thread=False)}


# Payments.


class PaymentInput(Input):
    invoice_id: str
    amount_cents: AmountCents
    reference: Annotated[str, msgspec.Meta(min_length=1, max_length=255)]
    paid_at: str | None = None


class PaymentRequest(Envelope):
    payment: PaymentInput


class PaymentObject(Output):
    lago_id: UUID
    invoice_ids: list[UUID]
    invoice_numbers: list[str]
    amount_cents: int
    amount_currency: str
    payment_status: str
    type: str
    reference: str  # Required by Lago's client: "" when a processor payment has none.
    external_payment_id: str | None  # Deprecated by Lago for provider_payment_id.
    created_at: str
    lago_payable_id: UUID
    payable_type: str
    status: str  # The processor's own status in Lago; Tally's normalized one here.
    payment_provider_type: str | None
    provider_payment_id: str | None
    provider_customer_id: str | None
    next_action: dict[str, Any]
    # Tally's additions.
    lago_customer_id: UUID
    external_customer_id: str
    payment_provider: str | None
    payment_provider_code: str | None
    attempt: int
    idempotency_key: str | None
    paid_at: str | None
    failure_code: str | None
    refunded_amount_cents: int
    dispute_status: str | None


class PaymentResponse(Output):
    payment: PaymentObject


class PaymentsResponse(Output):
    payments: list[PaymentObject]
    meta: PaginationMeta


def payment_object(payment: Payment, invoice: Invoice) -> PaymentObject:
    return PaymentObject(
        lago_id=payment.id,
        invoice_ids=[payment.invoice_id],
        invoice_numbers=[invoice.number or ""],
        amount_cents=payment.amount_cents,
        amount_currency=payment.currency,
        payment_status=payment.status,
        type=payment.payment_type,
        reference=payment.reference or "",
        external_payment_id=payment.provider_payment_id,
        created_at=iso(payment.created_at) or "",
        lago_payable_id=payment.invoice_id,
        payable_type="Invoice",
        status=payment.status,
        payment_provider_type=payment.provider,
        provider_payment_id=payment.provider_payment_id,
        provider_customer_id=payment.provider_customer_id,
        next_action={},  # Off-session payments never wait for the customer.
        lago_customer_id=payment.customer_id,
        external_customer_id=payment.external_customer_id,
        payment_provider=payment.provider,
        payment_provider_code=payment.connection_code,
        attempt=payment.number,
        idempotency_key=payment.idempotency_key,
        paid_at=iso(payment.paid_at),
        failure_code=payment.failure_code,
        refunded_amount_cents=payment.refunded_amount_cents,
        dispute_status=payment.dispute_status,
    )


def _uuid(value: str, resource: str) -> UUID:
    try:
        return UUID(value)
    except ValueError:
        raise NotFoundError(resource, value) from None


def _instant(value: str | None, field: str) -> datetime | None:
    if value is None:
        return None
    try:
        instant = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        raise InvalidValueError(field, "invalid_date", value) from None
    if instant.tzinfo is None:
        raise InvalidValueError(field, "invalid_date", value)
    return instant


class PaymentController(Controller):
    path = "/payments"
    tags = ("Payments",)
    dependencies = _DEPENDENCIES

    @post(operation_id="createPayment", status_code=200, sync_to_thread=True)
    def create(
        self,
        raw_body: NamedDependency[bytes],
        payments: NamedDependency[Payments],
        organization_id: NamedDependency[UUID],
    ) -> PaymentResponse:
        """A manual payment of an invoice (partial ones add up): the invoice is paid once the
        payments reach its amount due."""
        body = decode_body(raw_body, PaymentRequest, "payment").payment
        invoice_id = _uuid(body.invoice_id, "invoice")
        payment = payments.create_manual_payment(
            organization_id,
            invoice_id,
            body.amount_cents,
            body.reference,
            _instant(body.paid_at, "paid_at"),
        )
        invoice = payments.invoicing.invoice(organization_id, invoice_id)
        return PaymentResponse(payment=payment_object(payment, invoice))

    @get(operation_id="findAllPayments", sync_to_thread=True)
    def find_all(
        self,
        payments: NamedDependency[Payments],
        organization_id: NamedDependency[UUID],
        page: FromQuery[int | None] = None,
        per_page: FromQuery[int | None] = None,
        invoice_id: FromQuery[str | None] = None,
        external_customer_id: FromQuery[str | None] = None,
    ) -> PaymentsResponse:
        """Payments, newest first, by invoice or by customer."""
        page, per_page = pagination(page, per_page)
        found, total = payments.payments(
            organization_id,
            page,
            per_page,
            invoice_id=None if invoice_id is None else _uuid(invoice_id, "invoice"),
            external_customer_id=external_customer_id,
        )
        invoices: dict[UUID, Invoice] = {}
        for payment in found:
            if payment.invoice_id not in invoices:
                invoices[payment.invoice_id] = payments.invoicing.invoice(
                    organization_id, payment.invoice_id
                )
        return PaymentsResponse(
            payments=[payment_object(p, invoices[p.invoice_id]) for p in found],
            meta=meta(page, per_page, total),
        )

    @get("/{lago_id:str}", operation_id="findPayment", sync_to_thread=True)
    def find(
        self,
        lago_id: FromPath[str],
        payments: NamedDependency[Payments],
        organization_id: NamedDependency[UUID],
    ) -> PaymentResponse:
        payment = payments.payment(organization_id, _uuid(lago_id, "payment"))
        invoice = payments.invoicing.invoice(organization_id, payment.invoice_id)
        return PaymentResponse(payment=payment_object(payment, invoice))


# Checkout (Lago's POST /customers/{external_id}/checkout_url).


class CheckoutUrlObject(Output):
    lago_customer_id: UUID
    external_customer_id: str
    payment_provider: str
    checkout_url: str


class CheckoutUrlResponse(Output):
    customer: CheckoutUrlObject


@post(
    "/customers/{external_id:str}/checkout_url",
    operation_id="generateCustomerCheckoutURL",
    status_code=200,
    sync_to_thread=True,
    dependencies=_DEPENDENCIES,
)
def checkout_url(
    external_id: FromPath[str],
    payments: NamedDependency[Payments],
    organization_id: NamedDependency[UUID],
) -> CheckoutUrlResponse:
    """A processor page where the customer saves a payment method for later payments."""
    url = payments.checkout_url(organization_id, external_id)
    customer = payments.billing.customer(organization_id, external_id)
    configuration = customer.fields.get("billing_configuration") or {}
    return CheckoutUrlResponse(
        customer=CheckoutUrlObject(
            lago_customer_id=customer.id,
            external_customer_id=customer.external_id,
            payment_provider=str(configuration.get("payment_provider")),
            checkout_url=url,
        )
    )


# Inbound processor webhooks: no API key, the signature authenticates.


class WebhookReceivedResponse(Output):
    received: bool
    event_id: str
    processed: bool


@post(
    "/webhooks/stripe/{connection_code:str}",
    operation_id="receiveStripeWebhook",
    status_code=200,
    sync_to_thread=True,
    dependencies=_DEPENDENCIES,
)
def stripe_webhook(
    request: Request[Any, Any, Any],
    connection_code: FromPath[str],
    raw_body: NamedDependency[bytes],
    payments: NamedDependency[Payments],
) -> WebhookReceivedResponse:
    """Tally extension: Stripe's webhooks for one connection, verified with its signing secret
    (Stripe-Signature), stored, then processed once; a bad signature is a 400
    (invalid_signature), storing nothing."""
    item = payments.receive_webhook(
        "stripe", connection_code, raw_body, request.headers.get("stripe-signature")
    )
    return WebhookReceivedResponse(
        received=True, event_id=item.event_id, processed=item.processed_at is not None
    )


# Processor connections: Tally's /payment_providers extension.


class PaymentProviderInput(Input):
    code: str | None = None
    provider: str | None = None
    name: str | None = None
    secret_key: str | None = None
    webhook_secret: str | None = None
    success_redirect_url: str | None = None
    retry_schedule: str | None = None
    reference_prefix: str | None = None


class PaymentProviderRequest(Envelope):
    payment_provider: PaymentProviderInput


class PaymentProviderObject(Output):
    lago_id: UUID
    code: str
    provider: str
    name: str | None
    success_redirect_url: str | None
    retry_schedule: str
    reference_prefix: str | None
    # The last characters of each secret, so an operator can tell which one is set.
    secrets: dict[str, str]
    created_at: str
    updated_at: str


class PaymentProviderResponse(Output):
    payment_provider: PaymentProviderObject


class PaymentProvidersResponse(Output):
    payment_providers: list[PaymentProviderObject]
    meta: PaginationMeta


def _settings(body: PaymentProviderInput) -> dict[str, Any]:
    return {
        "name": body.name,
        "success_redirect_url": body.success_redirect_url,
        "retry_schedule": body.retry_schedule,
        "reference_prefix": body.reference_prefix,
    }


def _secrets(body: PaymentProviderInput) -> dict[str, str | None]:
    return {"secret_key": body.secret_key, "webhook_secret": body.webhook_secret}


def provider_object(payments: Payments, connection: PaymentConnection) -> PaymentProviderObject:
    settings = connection.settings
    return PaymentProviderObject(
        lago_id=connection.id,
        code=connection.code,
        provider=connection.provider,
        name=connection.name,
        success_redirect_url=connection.success_redirect_url,
        retry_schedule=str(settings.get("retry_schedule", "")),
        reference_prefix=settings.get("reference_prefix"),
        secrets=payments.secret_hints(connection.organization_id, connection.code),
        created_at=iso(connection.created_on) or "",
        updated_at=iso(connection.modified_on) or "",
    )


class PaymentProviderController(Controller):
    path = "/payment_providers"
    tags = ("Payment providers",)
    dependencies = _DEPENDENCIES

    @post(operation_id="createPaymentProvider", status_code=200, sync_to_thread=True)
    def create(
        self,
        raw_body: NamedDependency[bytes],
        payments: NamedDependency[Payments],
        organization_id: NamedDependency[UUID],
    ) -> PaymentProviderResponse:
        """A processor connection: a Stripe account (secret key and webhook signing secret,
        stored apart from events and never shown again) or bank transfers."""
        body = decode_body(raw_body, PaymentProviderRequest, "payment_provider").payment_provider
        if not body.code:
            raise InvalidValueError("code", "value_is_mandatory")
        if not body.provider:
            raise InvalidValueError("provider", "value_is_mandatory")
        settings = _settings(body)
        if body.retry_schedule is None:
            settings["retry_schedule"] = "1d,3d,7d"
        connection = payments.create_connection(
            organization_id, body.code, body.provider, settings, _secrets(body)
        )
        return PaymentProviderResponse(payment_provider=provider_object(payments, connection))

    @get(operation_id="findAllPaymentProviders", sync_to_thread=True)
    def find_all(
        self,
        payments: NamedDependency[Payments],
        organization_id: NamedDependency[UUID],
        page: FromQuery[int | None] = None,
        per_page: FromQuery[int | None] = None,
    ) -> PaymentProvidersResponse:
        page, per_page = pagination(page, per_page)
        found = payments.connections(organization_id)
        start = (page - 1) * per_page
        return PaymentProvidersResponse(
            payment_providers=[
                provider_object(payments, c) for c in found[start : start + per_page]
            ],
            meta=meta(page, per_page, len(found)),
        )

    @get("/{code:str}", operation_id="findPaymentProvider", sync_to_thread=True)
    def find(
        self,
        code: FromPath[str],
        payments: NamedDependency[Payments],
        organization_id: NamedDependency[UUID],
    ) -> PaymentProviderResponse:
        connection = payments.connection(organization_id, code)
        return PaymentProviderResponse(payment_provider=provider_object(payments, connection))

    @put("/{code:str}", operation_id="updatePaymentProvider", sync_to_thread=True)
    def update(
        self,
        code: FromPath[str],
        raw_body: NamedDependency[bytes],
        payments: NamedDependency[Payments],
        organization_id: NamedDependency[UUID],
    ) -> PaymentProviderResponse:
        """Change settings or rotate secrets; what is left out stays as it is."""
        body = decode_body(raw_body, PaymentProviderRequest, "payment_provider").payment_provider
        if body.code not in (None, code):
            raise InvalidValueError("code", "value_is_invalid", body.code)
        current = payments.connection(organization_id, code)
        if body.provider not in (None, current.provider):
            raise InvalidValueError("provider", "value_is_invalid", body.provider)
        connection = payments.update_connection(
            organization_id, code, _settings(body), _secrets(body)
        )
        return PaymentProviderResponse(payment_provider=provider_object(payments, connection))

    @delete(
        "/{code:str}", operation_id="destroyPaymentProvider", status_code=200, sync_to_thread=True
    )
    def destroy(
        self,
        code: FromPath[str],
        payments: NamedDependency[Payments],
        organization_id: NamedDependency[UUID],
    ) -> PaymentProviderResponse:
        """Delete the connection and its secrets; its payments keep their history."""
        connection = payments.delete_connection(organization_id, code)
        return PaymentProviderResponse(payment_provider=provider_object(payments, connection))


# Bank transfers: reconciliation of a statement.


class TransferInput(Input):
    reference: str
    amount: str  # Major units, a decimal string: "123.45".
    currency: str
    received_at: str | None = None


class ReconcileRequest(Input):
    bank_transfers: list[TransferInput] | None = None
    csv: str | None = None  # Or the statement itself (reference,amount,currency[,received_at]).


class ReconciliationObject(Output):
    reference: str
    amount: str
    currency: str
    result: str
    lago_payment_id: UUID | None
    lago_invoice_id: UUID | None


class ReconciliationsResponse(Output):
    reconciliations: list[ReconciliationObject]


def _transfer(item: TransferInput, index: int, now: datetime) -> TransferReceived:
    currency = item.currency.upper()
    if currency not in CURRENCY_EXPONENTS:
        raise InvalidValueError(f"bank_transfers.{index}.currency", "value_is_invalid", currency)
    amount = to_decimal(item.amount, f"bank_transfers.{index}.amount")
    cents = amount.scaleb(CURRENCY_EXPONENTS[currency], EXACT)
    if cents != cents.to_integral_value() or cents <= 0:
        raise InvalidValueError(f"bank_transfers.{index}.amount", "value_is_invalid", item.amount)
    return TransferReceived(
        reference=item.reference,
        amount_cents=int(cents),
        currency=currency,
        received_at=_instant(item.received_at, f"bank_transfers.{index}.received_at") or now,
    )


@post(
    "/bank_transfers/reconcile",
    operation_id="reconcileBankTransfers",
    status_code=200,
    sync_to_thread=True,
    dependencies=_DEPENDENCIES,
    tags=("Payments",),
)
def reconcile_bank_transfers(
    raw_body: NamedDependency[bytes],
    payments: NamedDependency[Payments],
    organization_id: NamedDependency[UUID],
) -> ReconciliationsResponse:
    """Tally extension: received transfers (JSON lines or a CSV statement) matched to pending
    bank-transfer payments by reference and amount; each match pays its payment once."""
    body = decode_body(raw_body, ReconcileRequest)
    now = payments.billing.now()
    transfers = [_transfer(item, i, now) for i, item in enumerate(body.bank_transfers or [])]
    if body.csv:
        transfers.extend(read_statement(body.csv))
    results = payments.reconcile_transfers(organization_id, transfers)
    return ReconciliationsResponse(
        reconciliations=[
            ReconciliationObject(
                reference=r.transfer.reference,
                amount=amount_string(r.transfer.amount_cents, r.transfer.currency),
                currency=r.transfer.currency,
                result=r.result,
                lago_payment_id=r.payment_id,
                lago_invoice_id=r.invoice_id,
            )
            for r in results
        ]
    )


__all__ = [
    "PaymentController",
    "PaymentProviderController",
    "checkout_url",
    "reconcile_bank_transfers",
    "stripe_webhook",
]
