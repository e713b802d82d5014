"""Lago's webhook endpoints and public key, and Tally's webhook log (list, retry)."""

import base64
import textwrap
from typing import Annotated, Any
from uuid import UUID

import msgspec
from litestar import Controller, Request, Response, delete, get, post, put
from litestar.di import NamedDependency, Provide
from litestar.params import FromPath, FromQuery, QueryParameter

from api.http import Envelope, Input, Output, PaginationMeta, decode_body, iso, meta, pagination
from api.problems import RequestBodyError
from application.errors import NotFoundError
from application.webhooks import WebhookMessage, Webhooks
from domain.webhook_endpoint import WebhookEndpoint


def provide_webhooks(request: Request[Any, Any, Any]) -> Webhooks:
    webhooks: Webhooks = request.app.state.webhooks
    return webhooks


DEPENDENCIES = {"webhooks": Provide(provide_webhooks, sync_to_thread=False)}


def _uuid(value: str, resource: str) -> UUID:
    """A lago_id from the path; anything else names nothing (Lago's 404, not a 422)."""
    try:
        return UUID(value.strip())
    except ValueError:
        raise NotFoundError(resource, value) from None


# Webhook endpoints (Lago).


class WebhookEndpointInput(Input):
    webhook_url: str | None = None
    signature_algo: str | None = None
    name: str | None = None
    event_types: list[str] | None = None  # null (or []): every type.


class WebhookEndpointRequest(Envelope):
    webhook_endpoint: WebhookEndpointInput


class WebhookEndpointObject(Output):
    lago_id: UUID
    lago_organization_id: UUID
    webhook_url: str
    signature_algo: str
    name: str | None
    event_types: list[str] | None
    created_at: str


class WebhookEndpointResponse(Output):
    webhook_endpoint: WebhookEndpointObject


class WebhookEndpointsResponse(Output):
    webhook_endpoints: list[WebhookEndpointObject]
    meta: PaginationMeta


def webhook_endpoint_object(endpoint: WebhookEndpoint) -> WebhookEndpointObject:
    return WebhookEndpointObject(
        lago_id=endpoint.id,
        lago_organization_id=endpoint.organization_id,
        webhook_url=endpoint.webhook_url,
        signature_algo=endpoint.signature_algo,
        name=endpoint.name,
        event_types=endpoint.event_types,
        created_at=iso(endpoint.created_on) or "",
    )


def _respond(endpoint: WebhookEndpoint) -> WebhookEndpointResponse:
    return WebhookEndpointResponse(webhook_endpoint=webhook_endpoint_object(endpoint))


class WebhookEndpointController(Controller):
    path = "/webhook_endpoints"
    tags = ("Webhook endpoints",)
    dependencies = DEPENDENCIES

    @post(operation_id="createWebhookEndpoint", status_code=200, sync_to_thread=True)
    def create(
        self,
        raw_body: NamedDependency[bytes],
        webhooks: NamedDependency[Webhooks],
        organization_id: NamedDependency[UUID],
    ) -> WebhookEndpointResponse:
        """Add an endpoint (at most 10): its URL, signature algorithm and event types."""
        body = decode_body(raw_body, WebhookEndpointRequest, "webhook_endpoint").webhook_endpoint
        if body.webhook_url is None:
            raise RequestBodyError("webhook_url", "value_is_mandatory", "webhook_url is required.")
        endpoint = webhooks.create_endpoint(
            organization_id,
            webhook_url=body.webhook_url,
            signature_algo=body.signature_algo,
            name=body.name,
            event_types=body.event_types,
        )
        return _respond(endpoint)

    @put("/{lago_id:str}", operation_id="updateWebhookEndpoint", sync_to_thread=True)
    def update(
        self,
        lago_id: FromPath[str],
        raw_body: NamedDependency[bytes],
        webhooks: NamedDependency[Webhooks],
        organization_id: NamedDependency[UUID],
    ) -> WebhookEndpointResponse:
        """Change an endpoint; a null field is left as it is, event_types [] means every type."""
        body = decode_body(raw_body, WebhookEndpointRequest, "webhook_endpoint").webhook_endpoint
        endpoint = webhooks.update_endpoint(
            organization_id,
            _uuid(lago_id, "webhook_endpoint"),
            webhook_url=body.webhook_url,
            signature_algo=body.signature_algo,
            name=body.name,
            event_types=body.event_types,
        )
        return _respond(endpoint)

    @get("/{lago_id:str}", operation_id="findWebhookEndpoint", sync_to_thread=True)
    def find(
        self,
        lago_id: FromPath[str],
        webhooks: NamedDependency[Webhooks],
        organization_id: NamedDependency[UUID],
    ) -> WebhookEndpointResponse:
        endpoint = webhooks.endpoint(organization_id, _uuid(lago_id, "webhook_endpoint"))
        return _respond(endpoint)

    @get(operation_id="findAllWebhookEndpoints", sync_to_thread=True)
    def find_all(
        self,
        webhooks: NamedDependency[Webhooks],
        organization_id: NamedDependency[UUID],
        page: FromQuery[int | None] = None,
        per_page: FromQuery[int | None] = None,
    ) -> WebhookEndpointsResponse:
        """The organization's endpoints, newest first."""
        page, per_page = pagination(page, per_page)
        endpoints, total = webhooks.endpoints(organization_id, page, per_page)
        return WebhookEndpointsResponse(
            webhook_endpoints=[webhook_endpoint_object(e) for e in endpoints],
            meta=meta(page, per_page, total),
        )

    @delete(
        "/{lago_id:str}",
        operation_id="destroyWebhookEndpoint",
        status_code=200,
        sync_to_thread=True,
    )
    def destroy(
        self,
        lago_id: FromPath[str],
        webhooks: NamedDependency[Webhooks],
        organization_id: NamedDependency[UUID],
    ) -> WebhookEndpointResponse:
        """Delete an endpoint; its undelivered webhooks are canceled."""
        endpoint = webhooks.delete_endpoint(organization_id, _uuid(lago_id, "webhook_endpoint"))
        return _respond(endpoint)


# The public key (Lago) and the webhook log (Tally).


class PublicKeyObject(Output):
    public_key: str


class PublicKeyResponse(Output):
    webhook: PublicKeyObject


class SigningKeyObject(Output):
    public_key: str  # As json_public_key: base64 of the PEM.
    kid: str  # The kid header of the JWTs this key signs.
    status: str  # "current" or "retired".
    created_at: str
    retired_at: str | None


class SigningKeysResponse(Output):
    webhook_public_keys: list[SigningKeyObject]


class WebhookObject(Output):
    lago_id: UUID  # Also the X-Lago-Unique-Key of every attempt.
    lago_webhook_endpoint_id: UUID
    lago_object_id: UUID
    webhook_type: str
    object_type: str
    status: str
    attempts: int
    retries: int  # Lago's name: attempts after the first.
    http_status: int | None
    endpoint: str
    payload: msgspec.Raw  # The body as sent, byte for byte.
    response: str | None
    error: str | None
    next_attempt_at: str | None
    last_retried_at: str | None
    delivered_at: str | None
    created_at: str
    updated_at: str


class WebhookResponse(Output):
    webhook: WebhookObject


class WebhooksResponse(Output):
    webhooks: list[WebhookObject]
    meta: PaginationMeta


def public_key_text(pem: bytes) -> str:
    """Ruby's Base64.encode64, as Lago answers: 60-character lines, each ending with \\n."""
    encoded = base64.b64encode(pem).decode()
    return "".join(line + "\n" for line in textwrap.wrap(encoded, 60))


def webhook_object(message: WebhookMessage) -> WebhookObject:
    return WebhookObject(
        lago_id=message.id,
        lago_webhook_endpoint_id=message.endpoint_id,
        lago_object_id=message.object_id,
        webhook_type=message.webhook_type,
        object_type=message.object_type,
        status=message.status,
        attempts=message.attempts,
        retries=max(0, message.attempts - 1),
        http_status=message.http_status,
        endpoint=message.endpoint,
        payload=msgspec.Raw(message.payload.encode()),
        response=message.response,
        error=message.last_error,
        next_attempt_at=iso(message.next_attempt_at) if message.status == "pending" else None,
        last_retried_at=iso(message.last_attempt_at) if message.attempts > 1 else None,
        delivered_at=iso(message.delivered_at),
        created_at=iso(message.created_at) or "",
        updated_at=iso(message.updated_at) or "",
    )


class WebhookController(Controller):
    path = "/webhooks"
    tags = ("Webhooks",)
    dependencies = DEPENDENCIES

    @get("/json_public_key", operation_id="fetchJsonPublicKey", sync_to_thread=True)
    def json_public_key(
        self, webhooks: NamedDependency[Webhooks], organization_id: NamedDependency[UUID]
    ) -> PublicKeyResponse:
        """The RSA public key that verifies jwt signatures: base64 of its PEM."""
        return PublicKeyResponse(
            webhook=PublicKeyObject(public_key=public_key_text(webhooks.public_key_pem()))
        )

    @get("/public_key", operation_id="fetchPublicKey", media_type="text/plain", sync_to_thread=True)
    def public_key(
        self, webhooks: NamedDependency[Webhooks], organization_id: NamedDependency[UUID]
    ) -> Response[str]:
        """The same base64 text, as text/plain (Lago's older route)."""
        return Response(public_key_text(webhooks.public_key_pem()), media_type="text/plain")

    @get("/public_keys", operation_id="findAllWebhookPublicKeys", sync_to_thread=True)
    def public_keys(
        self, webhooks: NamedDependency[Webhooks], organization_id: NamedDependency[UUID]
    ) -> SigningKeysResponse:
        """Tally extension: the current public key, then those retired by a rotation within the
        grace period (TALLY_WEBHOOK_KEY_GRACE_S), newest first. A receiver verifies a JWT with
        the key whose kid its header names, so webhooks signed before a rotation still verify."""
        return SigningKeysResponse(
            webhook_public_keys=[
                SigningKeyObject(
                    public_key=public_key_text(key.public_key_pem),
                    kid=key.kid,
                    status="current" if key.retired_at is None else "retired",
                    created_at=iso(key.created_at) or "",
                    retired_at=iso(key.retired_at),
                )
                for key in webhooks.public_keys()
            ]
        )

    @get(operation_id="findAllWebhooks", sync_to_thread=True)
    def find_all(
        self,
        webhooks: NamedDependency[Webhooks],
        organization_id: NamedDependency[UUID],
        page: FromQuery[int | None] = None,
        per_page: FromQuery[int | None] = None,
        status: FromQuery[list[str] | None] = None,
        status_list: Annotated[list[str] | None, QueryParameter(name="status[]")] = None,
    ) -> WebhooksResponse:
        """Tally extension: the webhooks sent or to send, newest first; filter by status
        (pending, succeeded, failed, canceled)."""
        page, per_page = pagination(page, per_page)
        messages, total = webhooks.messages(
            organization_id, tuple(status or status_list or ()), page, per_page
        )
        return WebhooksResponse(
            webhooks=[webhook_object(m) for m in messages], meta=meta(page, per_page, total)
        )

    @get("/{lago_id:uuid}", operation_id="findWebhook", sync_to_thread=True)
    def find(
        self,
        lago_id: FromPath[UUID],
        webhooks: NamedDependency[Webhooks],
        organization_id: NamedDependency[UUID],
    ) -> WebhookResponse:
        """Tally extension: one webhook, with its payload and last answer."""
        return WebhookResponse(webhook=webhook_object(webhooks.message(organization_id, lago_id)))

    @post("/{lago_id:str}/retry", operation_id="retryWebhook", status_code=200, sync_to_thread=True)
    def retry(
        self,
        lago_id: FromPath[str],
        webhooks: NamedDependency[Webhooks],
        organization_id: NamedDependency[UUID],
    ) -> WebhookResponse:
        """Tally extension: send a failed webhook again, with the same unique key."""
        message = webhooks.retry(organization_id, _uuid(lago_id, "webhook"))
        return WebhookResponse(webhook=webhook_object(message))
