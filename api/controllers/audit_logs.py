"""Tally extension: the organization's audit trail (GET /audit_logs), newest first."""

from typing import Annotated, Any
from uuid import UUID

from litestar import Request, get
from litestar.di import NamedDependency
from litestar.params import FromQuery, QueryParameter

from api.http import Output, PaginationMeta, meta, pagination, parse_instant
from api.problems import BadQueryError
from application.audit_log import (
    AuditFilter,
    AuditLog,
    AuditWriter,
    ChainedEntry,
    instant_text,
)

MUTATING = ("POST", "PUT", "PATCH", "DELETE")


class AuditLogObject(Output):
    lago_id: UUID
    sequence: int
    api_key_id: UUID | None
    method: str
    path: str
    resource_type: str | None
    resource_key: str | None
    status: int
    client_address: str | None
    idempotency_key: str | None
    occurred_at: str  # Microseconds: the text the entry's hash covers.
    previous_hash: str
    hash: str


class AuditLogsResponse(Output):
    audit_logs: list[AuditLogObject]
    meta: PaginationMeta


def audit_log_object(chained: ChainedEntry) -> AuditLogObject:
    entry = chained.entry
    return AuditLogObject(
        lago_id=entry.id,
        sequence=chained.sequence,
        api_key_id=entry.api_key_id,
        method=entry.method,
        path=entry.path,
        resource_type=entry.resource_type,
        resource_key=entry.resource_key,
        status=entry.status_code,
        client_address=entry.client_address,
        idempotency_key=entry.idempotency_key,
        occurred_at=instant_text(entry.occurred_at),
        previous_hash=chained.previous_hash,
        hash=chained.hash,
    )


@get("/audit_logs", operation_id="findAllAuditLogs", sync_to_thread=True)
def audit_logs(
    request: Request[Any, Any, Any],
    organization_id: NamedDependency[UUID],
    page: FromQuery[int | None] = None,
    per_page: FromQuery[int | None] = None,
    occurred_from: Annotated[str | None, QueryParameter(name="from")] = None,
    occurred_to: Annotated[str | None, QueryParameter(name="to")] = None,
    api_key_id: FromQuery[str | None] = None,
    method: FromQuery[str | None] = None,
    status: FromQuery[int | None] = None,
) -> AuditLogsResponse:
    """Every mutating request of the organization's keys: who (api_key_id), what, when, from
    where; filters from and to (ISO 8601, both included), api_key_id, method and status."""
    page, per_page = pagination(page, per_page)
    filters = AuditFilter(
        occurred_from=parse_instant(occurred_from, "from"),
        occurred_to=parse_instant(occurred_to, "to"),
        api_key_id=_uuid(api_key_id, "api_key_id"),
        method=_method(method),
        status_code=status,
    )
    if status is not None and not 100 <= status <= 599:
        raise BadQueryError("status")
    writer: AuditWriter = request.app.state.audit_writer
    writer.flush()  # Read this process's own requests, queued a moment ago.
    log: AuditLog = request.app.state.ledger.audit_log
    entries, total = log.page(organization_id, filters, page, per_page)
    return AuditLogsResponse(
        audit_logs=[audit_log_object(e) for e in entries], meta=meta(page, per_page, total)
    )


def _uuid(value: str | None, field: str) -> UUID | None:
    if value is None:
        return None
    try:
        return UUID(value)
    except ValueError:
        raise BadQueryError(field) from None


def _method(value: str | None) -> str | None:
    if value is None:
        return None
    if value.upper() not in MUTATING:
        raise BadQueryError("method")
    return value.upper()
