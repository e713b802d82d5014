"""Bearer API key → organization id; every /api/v1 route depends on it."""

from typing import Any
from uuid import UUID

from litestar import Request
from litestar.exceptions import NotAuthorizedException

from application.billing import Billing


def api_key_from(authorization: str | None) -> str | None:
    """Lago takes the second word of Authorization; we also require the Bearer scheme."""
    if not authorization:
        return None
    scheme, _, key = authorization.strip().partition(" ")
    key = key.strip()
    if scheme.lower() != "bearer" or not key:
        return None
    return key


def authenticate(billing: Billing, authorization: str | None) -> UUID | None:
    api_key = api_key_from(authorization)
    return billing.organization_for_api_key(api_key) if api_key else None


def provide_organization_id(request: Request[Any, Any, Any]) -> UUID:
    billing: Billing = request.app.state.ledger.billing
    organization_id = authenticate(billing, request.headers.get("authorization"))
    if organization_id is None:
        raise NotAuthorizedException()
    return organization_id


def provide_billing(request: Request[Any, Any, Any]) -> Billing:
    billing: Billing = request.app.state.ledger.billing
    return billing


async def provide_raw_body(request: Request[Any, Any, Any]) -> bytes:
    """The undecoded body: controllers decode it with msgspec, so decimals never pass a float."""
    return await request.body()
