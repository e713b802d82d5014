"""Bearer API key → organization id; every /api/v1 route depends on it."""

from typing import Any, Final
from uuid import UUID

from litestar import Request
from litestar.exceptions import NotAuthorizedException

from application.billing import Billing
from application.keys import ApiKeyGrant

# Where api/security.py leaves the request's grant (or None), so routes need not look it up again.
GRANT_SCOPE_KEY: Final = "tally.api_key_grant"


def api_key_from(authorization: str | None) -> str | None:
    """Lago takes the second word of Authorization; we also require the Bearer scheme."""
    if not authorization:
        return None
    scheme, _, key = authorization.strip().partition(" ")
    key = key.strip()
    if scheme.lower() != "bearer" or not key:
        return None
    return key


def grant_for(billing: Billing, authorization: str | None) -> ApiKeyGrant | None:
    """The grant of a valid (known, unrevoked, unexpired) key, or None."""
    api_key = api_key_from(authorization)
    return billing.authenticate_api_key(api_key) if api_key else None


def authenticate(billing: Billing, authorization: str | None) -> UUID | None:
    grant = grant_for(billing, authorization)
    return None if grant is None else grant.organization_id


def provide_organization_id(request: Request[Any, Any, Any]) -> UUID:
    scope: dict[str, Any] = request.scope  # type: ignore[assignment]
    if GRANT_SCOPE_KEY in scope:
        grant: ApiKeyGrant | None = scope[GRANT_SCOPE_KEY]
    else:
        grant = grant_for(request.app.state.ledger.billing, request.headers.get("authorization"))
    if grant is None:
        raise NotAuthorizedException()
    return grant.organization_id


def provide_billing(request: Request[Any, Any, Any]) -> Billing:
    billing: Billing = request.app.state.ledger.billing
    return billing


async def provide_raw_body(request: Request[Any, Any, Any]) -> bytes:
    """The undecoded body: controllers decode it with msgspec, so decimals never pass a float."""
    return await request.body()
