"""The one table from exceptions to error bodies: RFC 9457 problem details and Lago's shape."""

import logging
import sqlite3
from collections.abc import Callable
from http import HTTPStatus
from typing import Any, Final

import psycopg
from eventsourcing.persistence import IntegrityError
from eventsourcing.persistence import InterfaceError as StoreInterfaceError
from eventsourcing.persistence import OperationalError as StoreOperationalError
from litestar import MediaType, Request, Response
from litestar.exceptions import (
    HTTPException,
    MethodNotAllowedException,
    NotAuthorizedException,
    NotFoundException,
    ValidationException,
)

from adapters.settings import SettingsError
from application.errors import (
    AlreadyExistsError,
    ConcurrencyConflictError,
    IdempotencyKeyInProgressError,
    IdempotencyKeyReusedError,
    NotFoundError,
)
from application.metering import BatchSizeError, EventRejectedError
from application.payments import ProviderError, ProviderUnavailableError, WebhookSignatureError
from domain.customer import CustomerNotErasableError
from domain.errors import InvalidValueError, NotAllowedError

logger = logging.getLogger("tally.api")

PROBLEM_TYPE_BASE: Final = "https://tally.example/problems/"  # ADR 0004 fixes the host.
PROBLEM_JSON: Final = "application/problem+json"
# Spelled as Lago spells them; http.HTTPStatus says "Unprocessable Content" from Python 3.13.
TITLES: Final = {
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    409: "Conflict",
    413: "Payload Too Large",  # Rails' name (Rack::Utils::HTTP_STATUS_CODES).
    422: "Unprocessable Entity",
    429: "Too Many Requests",
    500: "Internal Server Error",
    503: "Service Unavailable",
}
# A store that is busy or unreachable answers 503 with this Retry-After (seconds): the client
# retries with the same Idempotency-Key or transaction_id; a transaction is all or nothing
# (ADR 0024).
STORE_RETRY_AFTER_S: Final = 1
# SQLite's transient failures: another writer holds the lock past the busy timeout, or I/O.
SQLITE_TRANSIENT: Final = ("database is locked", "database table is locked", "disk i/o error")


class RequestBodyError(Exception):
    """A request body field is missing, of the wrong type, or not supported."""

    def __init__(self, field: str, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.field = field
        self.reason = reason


class MissingRootKeyError(Exception):
    """The body lacks Lago's root key; Lago answers 400 with Rails' message."""

    def __init__(self, root: str) -> None:
        super().__init__(f"param is missing or the value is empty: {root}")
        self.root = root


class BadQueryError(Exception):
    def __init__(self, field: str, reason: str = "value_is_invalid") -> None:
        super().__init__(f"Invalid query parameter {field}.")
        self.field = field
        self.reason = reason


def problem_body(
    status: int,
    detail: str,
    code: str | None = None,
    error_details: dict[str, Any] | None = None,
    error: str | None = None,
) -> dict[str, Any]:
    title = TITLES.get(status) or HTTPStatus(status).phrase
    body: dict[str, Any] = {
        "type": PROBLEM_TYPE_BASE + code if code else "about:blank",
        "title": title,
        "status": status,
        "detail": detail,
        "error": error or title,
    }
    if code is not None:
        body["code"] = code
    if error_details is not None:
        body["error_details"] = error_details
    return body


def problem(
    status: int,
    detail: str,
    code: str | None = None,
    error_details: dict[str, Any] | None = None,
    error: str | None = None,
    headers: dict[str, str] | None = None,
) -> Response[dict[str, Any]]:
    return Response(
        problem_body(status, detail, code, error_details, error),
        status_code=status,
        media_type=PROBLEM_JSON,
        headers=headers,
    )


def _validation(field: str, reason: str, detail: str) -> Response[dict[str, Any]]:
    return problem(422, detail, "validation_errors", {field: [reason]})


def _framework_validation(exc: ValidationException) -> Response[dict[str, Any]]:
    """Litestar's own checks: a bad query or path parameter names its field (422)."""
    keys = [
        item["key"]
        for item in exc.extra or []
        if isinstance(item, dict) and item.get("source") in ("query", "path") and "key" in item
    ]
    if keys:
        return problem(
            422, str(exc.detail), "validation_errors", {k: ["value_is_invalid"] for k in keys}
        )
    return problem(400, str(exc.detail), error=f"BadRequest: {exc.detail}")


def _provider_error(exc: ProviderError) -> Response[dict[str, Any]]:
    """Lago's payment-provider failure: 422 provider_error, naming the provider connection."""
    body = problem_body(422, str(exc), "provider_error", {"message": [exc.code]})
    body["provider"] = {"code": exc.connection_code}
    return Response(body, status_code=422, media_type=PROBLEM_JSON)


def _unexpected(exc: Exception) -> Response[dict[str, Any]]:
    logger.error("Unhandled error", exc_info=exc)
    return problem(500, "An unexpected error occurred; it has been logged.")


def _store_unavailable(exc: Exception) -> Response[dict[str, Any]]:
    """A store operational error: retryable 503 with Retry-After, never a 500; a programming
    error that SQLite also reports as operational (no such table) stays a logged 500."""
    if not _transient(exc):
        return _unexpected(exc)
    logger.warning("Store unavailable: %s: %s", type(exc).__name__, exc)
    return problem(
        503,
        f"The store is busy or unreachable: retry in {STORE_RETRY_AFTER_S} s with the same "
        "Idempotency-Key or transaction_id.",
        "store_unavailable",
        headers={"Retry-After": str(STORE_RETRY_AFTER_S)},
    )


def _transient(exc: BaseException) -> bool:
    """Operational errors of the drivers and the pools, through eventsourcing's wrappers."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, sqlite3.OperationalError):
            return any(text in str(seen).lower() for text in SQLITE_TRANSIENT)
        if isinstance(seen, psycopg.OperationalError | psycopg.InterfaceError):
            return True  # Connection lost, pool timeout, serialization failure, deadlock.
        seen = seen.__cause__
    if isinstance(exc, TimeoutError):
        return True  # eventsourcing's pool had no connection free (ConnectionUnavailableError).
    # Wrapped by eventsourcing from its message alone.
    text = str(exc).lower()
    return not isinstance(exc, sqlite3.Error) and (
        "timed out" in text
        or "connection" in text
        or any(transient in text for transient in SQLITE_TRANSIENT)
    )


def _http(exc: HTTPException) -> Response[dict[str, Any]]:
    if exc.status_code >= 500:
        return _unexpected(exc)
    return problem(exc.status_code, str(exc.detail))


# Matched along the exception's MRO: the most specific row wins.
PROBLEMS: Final[dict[type[Exception], Callable[[Any], Response[dict[str, Any]]]]] = {
    NotFoundError: lambda e: problem(404, str(e), f"{e.resource}_not_found"),
    AlreadyExistsError: lambda e: _validation(e.field, "value_already_exist", str(e)),
    InvalidValueError: lambda e: _validation(e.field, e.reason, str(e)),
    RequestBodyError: lambda e: _validation(e.field, e.reason, str(e)),
    BadQueryError: lambda e: _validation(e.field, e.reason, str(e)),
    NotAllowedError: lambda e: problem(405, str(e), e.code),
    CustomerNotErasableError: lambda e: problem(405, str(e), e.code, {"customer": e.reasons}),
    EventRejectedError: lambda e: problem(
        422,
        str(e),
        "validation_errors",
        {e.field: [e.reason]} if e.index is None else {str(e.index): {e.field: [e.reason]}},
    ),
    BatchSizeError: lambda e: _validation("events", e.reason, str(e)),
    IdempotencyKeyReusedError: lambda e: _validation(
        "idempotency_key", "value_already_exist", str(e)
    ),
    IdempotencyKeyInProgressError: lambda e: problem(409, str(e), "idempotency_key_in_progress"),
    ConcurrencyConflictError: lambda e: problem(409, str(e), "concurrent_modification"),
    ProviderError: _provider_error,
    ProviderUnavailableError: lambda e: problem(422, str(e), "third_party_error"),
    WebhookSignatureError: lambda e: problem(400, str(e), "invalid_signature"),
    IntegrityError: lambda e: problem(409, "A concurrent write won.", "concurrent_modification"),
    MissingRootKeyError: lambda e: problem(400, str(e), error=f"BadRequest: {e}"),
    ValidationException: lambda e: _framework_validation(e),
    NotAuthorizedException: lambda e: problem(401, "A valid API key is required."),
    NotFoundException: lambda e: problem(404, "No such route.", "resource_not_found"),
    MethodNotAllowedException: lambda e: problem(405, str(e.detail), "method_not_allowed"),
    HTTPException: _http,
    StoreOperationalError: _store_unavailable,  # Wrapped by eventsourcing's datastores.
    StoreInterfaceError: _store_unavailable,
    sqlite3.OperationalError: _store_unavailable,  # Raised by our own adapters' statements.
    psycopg.OperationalError: _store_unavailable,  # PoolTimeout and TransactionRollback too.
    psycopg.InterfaceError: _store_unavailable,
    SettingsError: _unexpected,
    Exception: _unexpected,
}


def exception_handlers() -> dict[
    type[Exception], Callable[[Request[Any, Any, Any], Any], Response[Any]]
]:
    def adapt(
        handler: Callable[[Any], Response[dict[str, Any]]],
    ) -> Callable[[Request[Any, Any, Any], Any], Response[Any]]:
        return lambda _request, exc: handler(exc)

    return {cls: adapt(handler) for cls, handler in PROBLEMS.items()}


__all__ = ["PROBLEMS", "MediaType", "exception_handlers", "problem", "problem_body"]
