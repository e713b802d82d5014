"""GET /health: the store answers."""

from typing import Any

from litestar import get
from litestar.di import NamedDependency

from application.billing import Billing


@get("/health", operation_id="health", sync_to_thread=True, include_in_schema=True)
def health(billing: NamedDependency[Billing]) -> dict[str, Any]:
    """Whether the service and its store are reachable."""
    billing.is_store_reachable()
    return {"status": "ok"}
