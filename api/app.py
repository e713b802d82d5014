"""create_app(): the composition root of the HTTP API."""

from litestar import Litestar, Router
from litestar.datastructures import State
from litestar.di import Provide
from litestar.openapi import OpenAPIConfig

from adapters.settings import Settings, settings_from_env
from adapters.stores import Ledger, open_ledger
from api.auth import provide_billing, provide_organization_id, provide_raw_body
from api.controllers.billable_metrics import BillableMetricController
from api.controllers.customers import CustomerController, customer_history
from api.controllers.events import EventController
from api.controllers.health import health
from api.controllers.plans import PlanController, plan_version
from api.controllers.subscriptions import SubscriptionController
from api.controllers.taxes import TaxController
from api.controllers.usage import current_usage
from api.idempotency import IdempotencyMiddleware
from api.problems import exception_handlers


def create_app(ledger: Ledger) -> Litestar:
    api = Router(
        "/api/v1",
        route_handlers=[
            CustomerController,
            customer_history,
            TaxController,
            BillableMetricController,
            PlanController,
            plan_version,
            SubscriptionController,
            EventController,
            current_usage,
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
        middleware=[IdempotencyMiddleware()],
        state=State({"ledger": ledger}),
        openapi_config=OpenAPIConfig(title="Tally", version="0.1.0", path="/openapi"),
        on_shutdown=[lambda: ledger.close()],
        debug=False,
    )


def create_app_from_env(settings: Settings | None = None) -> Litestar:
    """The app on the store that TALLY_DATABASE_URL names (used by `tally serve`)."""
    return create_app(open_ledger(settings or settings_from_env()))
