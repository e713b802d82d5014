"""Lago's events resource: usage ingestion, one event or a batch, and reading them back."""

from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime
from functools import lru_cache
from typing import Annotated, Any
from uuid import UUID, uuid4

from anyio import to_thread
from litestar import Controller, Request, get, post
from litestar.di import NamedDependency, Provide
from litestar.openapi.spec import OpenAPIFormat
from litestar.params import FromPath, FromQuery, KwargDefinition

from api.auth import provide_organization_id
from api.controllers.invoices import FeeObject, estimated_fee_objects, provide_invoicing
from api.http import (
    Envelope,
    Input,
    Output,
    PaginationMeta,
    decode_body,
    iso,
    iso_ms,
    meta,
    pagination,
    parse_instant,
)
from application.invoicing import Invoicing
from application.metering import EventInput, Metering
from application.usage_log import StoredUsage
from domain import ids


class EventBody(Input):
    transaction_id: str | None = None
    external_subscription_id: str | None = None
    code: str | None = None
    # Any: a JSON integer stays an int and a fraction becomes a Decimal from its text (never a
    # float); strings pass as sent. domain.usage.parse_timestamp decides what is valid.
    timestamp: Any = None
    properties: dict[str, Any] | None = None
    precise_total_amount_cents: Any = None
    # The SDK's Event model also carries these; Lago ignores them on ingest.
    external_customer_id: str | None = None


class EventRequest(Envelope):
    event: EventBody


class EventsBatchRequest(Envelope):
    events: list[EventBody]


class VoidEventBody(Envelope):
    external_subscription_id: str | None = None


class VoidEventRequest(Envelope):
    """`{"external_subscription_id": ...}`, or Lago's envelope `{"event": {...}}`."""

    external_subscription_id: str | None = None
    event: VoidEventBody | None = None


# Ids as text: a batch's answer names 100 (api.controllers.events.event_objects).
UuidText = Annotated[str, KwargDefinition(format=OpenAPIFormat.UUID)]


class EventObject(Output):
    lago_id: UuidText
    transaction_id: str
    lago_customer_id: UUID | None
    lago_subscription_id: UuidText
    external_subscription_id: str
    code: str
    timestamp: str
    properties: dict[str, str]
    precise_total_amount_cents: str | None
    created_at: str
    # Tally extension: when the event was voided (POST /events/{transaction_id}/void), or null.
    voided_at: str | None = None


class EventResponse(Output):
    event: EventObject


class FeesResponse(Output):
    fees: list[FeeObject]


class EventsResponse(Output):
    events: list[EventObject]


class EventsPageResponse(Output):
    events: list[EventObject]
    meta: PaginationMeta


def event_object(stored: StoredUsage) -> EventObject:
    [found] = event_objects([stored])
    return found


def event_objects(records: Sequence[StoredUsage]) -> list[EventObject]:
    """Lago's event objects, ids hashed straight to text (a batch's answer names 100)."""
    objects = []
    for stored in records:
        event = stored.event
        amount = event.precise_total_amount_cents
        objects.append(
            EventObject(
                lago_id=ids.usage_event_id_text(
                    event.organization_id, event.external_subscription_id, event.transaction_id
                ),
                transaction_id=event.transaction_id,
                lago_customer_id=None,
                lago_subscription_id=ids.subscription_id_text(
                    event.organization_id, event.external_subscription_id
                ),
                external_subscription_id=event.external_subscription_id,
                code=event.code,
                timestamp=iso_ms(event.timestamp),
                properties=dict(event.properties),
                precise_total_amount_cents=None if amount is None else format(amount, "f"),
                created_at=_received_at(stored.received_at),
                voided_at=iso(stored.voided_at),
            )
        )
    return objects


@lru_cache(maxsize=1_024)  # The events of a batch share their time of receipt.
def _received_at(instant: datetime) -> str:
    return iso(instant) or ""


def _input(body: EventBody) -> EventInput:
    return EventInput(
        transaction_id=body.transaction_id,
        external_subscription_id=body.external_subscription_id,
        code=body.code,
        timestamp=body.timestamp,
        properties=body.properties,
        precise_total_amount_cents=body.precise_total_amount_cents,
    )


def provide_metering(request: Request[Any, Any, Any]) -> Metering:
    metering: Metering = request.app.state.ledger.metering
    return metering


class EventController(Controller):
    path = "/events"
    tags = ("Events",)
    dependencies = {  # noqa: RUF012
        "metering": Provide(provide_metering, sync_to_thread=False),
        "invoicing": Provide(provide_invoicing, sync_to_thread=False),
    }

    # The hot path: no dependency injection (Litestar resolves several dependencies in a task
    # group, which costs more than the rest of a small request) and one thread hop.

    @post(operation_id="createEvent", status_code=200)
    async def create(self, request: Request[Any, Any, Any]) -> EventResponse:
        """Record one usage event; an identical re-send is accepted and counted once."""
        organization_id, raw_body = provide_organization_id(request), await request.body()
        metering = provide_metering(request)

        def ingest() -> EventResponse:
            body = decode_body(raw_body, EventRequest, "event").event
            [stored] = metering.ingest(organization_id, [body], batch=False)
            return EventResponse(event=event_object(stored))

        return await to_thread.run_sync(ingest)

    @post("/batch", operation_id="createBatchEvents", status_code=200)
    async def create_batch(self, request: Request[Any, Any, Any]) -> EventsResponse:
        """Record up to the batch maximum of events, all or nothing."""
        organization_id, raw_body = provide_organization_id(request), await request.body()
        metering = provide_metering(request)

        def ingest() -> EventsResponse:
            body = decode_body(raw_body, EventsBatchRequest, "events")
            stored = metering.ingest(organization_id, body.events, batch=True)
            return EventsResponse(events=event_objects(stored))

        return await to_thread.run_sync(ingest)

    @post("/estimate_fees", operation_id="estimateFees", status_code=200, sync_to_thread=True)
    def estimate_fees(
        self,
        raw_body: NamedDependency[bytes],
        metering: NamedDependency[Metering],
        invoicing: NamedDependency[Invoicing],
        organization_id: NamedDependency[UUID],
    ) -> FeesResponse:
        """The fees the event would bill on its subscription's pay-in-advance charges if sent
        now (none for a charge in arrears); checked like an event, and nothing is stored. The
        transaction_id may be left out. Taxes come from the catalog (not the EU VAT engine)."""
        body = decode_body(raw_body, EventRequest, "event").event
        event = _input(body)
        if event.transaction_id is None:
            event = replace(event, transaction_id=f"estimate-{uuid4()}")
        usage = metering.validate(organization_id, event).event
        now = invoicing.billing.now()
        estimate = invoicing.estimate_advance_fees(organization_id, usage, now)
        return FeesResponse(fees=estimated_fee_objects(estimate, invoicing.billing))

    @post(
        "/{transaction_id:str}/void", operation_id="voidEvent", status_code=200, sync_to_thread=True
    )
    def void(
        self,
        transaction_id: FromPath[str],
        raw_body: NamedDependency[bytes],
        metering: NamedDependency[Metering],
        organization_id: NamedDependency[UUID],
        external_subscription_id: FromQuery[str | None] = None,
    ) -> EventResponse:
        """Void an event (Tally extension): a reversal is appended to the usage log and the
        event leaves current usage and later invoices; nothing is deleted. The subscription
        comes in the query or the body. Voiding again answers the same; an unknown event 404."""
        body = decode_body(raw_body, VoidEventRequest)
        subscription = (
            external_subscription_id
            or body.external_subscription_id
            or (body.event.external_subscription_id if body.event else None)
        )
        voided = metering.void(organization_id, transaction_id, subscription)
        return EventResponse(event=event_object(voided))

    @get("/{transaction_id:str}", operation_id="findEvent", sync_to_thread=True)
    def find(
        self,
        transaction_id: FromPath[str],
        metering: NamedDependency[Metering],
        organization_id: NamedDependency[UUID],
        external_subscription_id: FromQuery[str | None] = None,
    ) -> EventResponse:
        """An event by transaction_id; external_subscription_id disambiguates (Tally)."""
        stored = metering.event(organization_id, transaction_id, external_subscription_id)
        return EventResponse(event=event_object(stored))

    @get(operation_id="findAllEvents", sync_to_thread=True)
    def find_all(
        self,
        metering: NamedDependency[Metering],
        organization_id: NamedDependency[UUID],
        page: FromQuery[int | None] = None,
        per_page: FromQuery[int | None] = None,
        external_subscription_id: FromQuery[str | None] = None,
        code: FromQuery[str | None] = None,
        timestamp_from: FromQuery[str | None] = None,
        timestamp_to: FromQuery[str | None] = None,
    ) -> EventsPageResponse:
        """Events newest first, filtered by subscription, code and time."""
        page, per_page = pagination(page, per_page)
        events, total = metering.usage.page(
            organization_id,
            page,
            per_page,
            external_subscription_id=external_subscription_id,
            code=code,
            timestamp_from=parse_instant(timestamp_from, "timestamp_from"),
            timestamp_to=parse_instant(timestamp_to, "timestamp_to"),
        )
        return EventsPageResponse(events=event_objects(events), meta=meta(page, per_page, total))
