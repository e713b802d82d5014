"""create_app(): the composition root of the HTTP API."""

import gc
from typing import Final

from litestar import Litestar, Router
from litestar.datastructures import State
from litestar.di import Provide

from adapters.rate_limits import rate_leases
from adapters.settings import Settings, settings_from_env
from adapters.stores import Ledger, open_ledger
from api.admission import AdmissionMiddleware, admission_from_env
from api.auth import provide_billing, provide_organization_id, provide_raw_body
from api.controllers.add_ons import AddOnController
from api.controllers.audit_logs import audit_logs
from api.controllers.billable_metrics import BillableMetricController
from api.controllers.credit_notes import CreditNoteController
from api.controllers.customers import CustomerController, customer_history
from api.controllers.events import EventController
from api.controllers.health import health
from api.controllers.invoices import InvoiceController, past_usage
from api.controllers.journal import AnalyticsController, JournalController, ReportController
from api.controllers.organizations import BillingEntityController, OrganizationController
from api.controllers.payments import (
    PaymentController,
    PaymentProviderController,
    checkout_url,
    reconcile_bank_transfers,
    stripe_webhook,
)
from api.controllers.plans import PlanController, plan_version
from api.controllers.privacy import erase_customer, export_customer
from api.controllers.subscriptions import SubscriptionController
from api.controllers.taxes import TaxController
from api.controllers.usage import current_usage
from api.controllers.wallets import (
    WalletController,
    WalletTransactionController,
    wallet_transactions,
)
from api.controllers.webhooks import WebhookController, WebhookEndpointController
from api.idempotency import IdempotencyMiddleware
from api.openapi import openapi_config
from api.problems import exception_handlers
from api.security import Limits, SecurityMiddleware, SharedRateLimiter
from api.webhook_payloads import WebhookPayloads
from application.audit_log import AuditWriter
from application.webhooks import DeliveryWorker, WebhookTransport

GC_YOUNG_THRESHOLD: Final = 50_000  # Python's default: 700.
GC_OLDER_THRESHOLD: Final = 20  # Python's default: 10.


def create_app(
    ledger: Ledger,
    *,
    deliver_webhooks: bool = False,
    webhook_transport: WebhookTransport | None = None,
) -> Litestar:
    """The API on a ledger; deliver_webhooks runs the delivery worker while the app runs."""
    webhooks = ledger.open_webhooks(
        WebhookPayloads(ledger.webhook_settings.api_url), webhook_transport
    )
    worker = DeliveryWorker(webhooks) if deliver_webhooks else None
    audit_writer = AuditWriter(ledger.audit_log)  # ADR 0016.
    api = Router(
        "/api/v1",
        route_handlers=[
            CustomerController,
            customer_history,
            erase_customer,
            export_customer,
            audit_logs,
            TaxController,
            AddOnController,
            BillableMetricController,
            PlanController,
            plan_version,
            SubscriptionController,
            EventController,
            current_usage,
            past_usage,
            CreditNoteController,
            InvoiceController,
            JournalController,  # Tally's finance extensions and Lago's analytics (ADR 0019).
            ReportController,
            AnalyticsController,
            WebhookEndpointController,
            WebhookController,
            OrganizationController,
            BillingEntityController,
            WalletController,
            WalletTransactionController,
            wallet_transactions,
            PaymentController,
            PaymentProviderController,
            checkout_url,
            reconcile_bank_transfers,
            stripe_webhook,
        ],
        dependencies={
            "organization_id": Provide(provide_organization_id, sync_to_thread=False),
            "raw_body": Provide(provide_raw_body),
        },
    )
    return Litestar(
        route_handlers=[api, health],
        dependencies={"billing": Provide(provide_billing, sync_to_thread=False)},
        exception_handlers=exception_handlers(),  # type: ignore[arg-type]
        # Outermost first: keys, limits and the audit trail wrap everything, replays included.
        middleware=[
            AdmissionMiddleware(admission_from_env()),  # Overload: 503 at once (ADR 0024).
            SecurityMiddleware(request_limits(ledger)),
            IdempotencyMiddleware(),
        ],
        state=State({"ledger": ledger, "webhooks": webhooks, "audit_writer": audit_writer}),
        openapi_config=openapi_config("Tally", "0.1.0"),  # Bodies and errors: api/openapi.py.
        on_startup=[
            audit_writer.start,
            ledger.top_ups.start,
            *([worker.start] if worker else []),
        ],
        # The workers stop (their rounds end) before the store closes.
        on_shutdown=[
            ledger.top_ups.stop,
            *([worker.stop] if worker else []),
            lambda: audit_writer.stop(),
            lambda: ledger.close(),
        ],
        debug=False,
    )


def request_limits(ledger: Ledger) -> Limits:
    """The body-size and per-key rate limits (ADR 0015); the rate limit's buckets are shared
    by every process on the ledger's store (ADR 0023)."""
    settings = ledger.settings
    limiter = (
        SharedRateLimiter(
            rate_leases(ledger.billing.factory),
            settings.rate_limit_per_s,
            settings.rate_limit_burst,
        )
        if settings.rate_limit_per_s > 0
        else None
    )
    return Limits(body_max_bytes=settings.body_max_bytes, rate_limiter=limiter)


def create_app_from_env(settings: Settings | None = None) -> Litestar:
    """The app on the store that TALLY_DATABASE_URL names (used by `tally serve`)."""
    app = create_app(open_ledger(settings or settings_from_env()), deliver_webhooks=True)
    tune_garbage_collector()
    return app


def tune_garbage_collector() -> None:
    """For a serving process (ADR 0029): what exists at start-up is never collected, and the
    youngest generation is collected every GC_YOUNG_THRESHOLD allocations instead of 700 (a
    batch of events allocates tens of thousands of objects, nearly all freed by reference
    counting; collecting them in passes of 700 cost about a tenth of the ingest's time)."""
    gc.freeze()
    gc.set_threshold(GC_YOUNG_THRESHOLD, GC_OLDER_THRESHOLD, GC_OLDER_THRESHOLD)
