"""The served OpenAPI document, completed where Litestar cannot see: request bodies, error
responses and the API key.

Handlers take the raw body and decode it with msgspec (api/http.py), so Litestar knows no request
body type; this module finds it in the handler (the Envelope or Input class its code names, or
the one crud_controller closed over) and documents it with msgspec's JSON Schema. Every error is
api/problems.py's body, as `application/problem+json`; 429 and 503 carry `Retry-After`.
The reliability battery's R9 (tests/reliability/test_r9_schemathesis.py) fuzzes this document.
"""

import inspect
from collections.abc import Iterator
from typing import Any, Final

import msgspec
from litestar import Litestar, Request
from litestar.handlers import HTTPRouteHandler
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import JsonRenderPlugin, SwaggerRenderPlugin, YamlRenderPlugin
from litestar.routes import HTTPRoute

from api.http import Envelope, Input
from api.problems import PROBLEM_JSON

REF_TEMPLATE: Final = "#/components/schemas/{name}"
MUTATING: Final = frozenset({"POST", "PUT", "PATCH", "DELETE"})
# What any /api/v1 operation may answer besides its success (api/problems.py, api/security.py,
# api/admission.py): a missing key, a scope, a limit, a conflict, an overloaded store.
ERRORS_READ: Final = {
    "400": "Bad request: a query parameter or the body's root key is missing or malformed.",
    "401": "A valid API key is required.",
    "403": "The API key's scope does not allow this request.",
    "404": "No such resource in this organization.",
    "405": "The resource's state does not allow this action.",
    "409": "A concurrent request changed the resource first: retry.",
    "422": "A field is invalid; `error_details` names it.",
    "429": "Too many requests (the key's rate limit, or the server's limit of requests in "
    "flight): retry after `Retry-After` seconds.",
    "503": "The store is busy or unreachable: retry after `Retry-After` seconds.",
}
ERRORS_WRITE: Final = {**ERRORS_READ, "413": "The request body is too large."}
RETRY_AFTER: Final = {
    "Retry-After": {
        "description": "Seconds to wait before retrying.",
        "required": True,
        "schema": {"type": "string", "pattern": "^[0-9]+$"},
    }
}
PROBLEM: Final = {
    "title": "Problem",
    "description": "RFC 9457 problem details that are also Lago's error body.",
    "type": "object",
    "properties": {
        "type": {"type": "string"},
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "detail": {"type": "string"},
        "error": {"type": "string"},
        "code": {"type": "string"},
        "error_details": {"type": "object"},
    },
    "required": ["type", "title", "status", "detail", "error"],
}


class _Completing:
    """Completes the document in place before its first rendering (Litestar caches the document
    it builds, so the completion is kept; completing twice changes nothing)."""

    _completed: set[int]

    def render(self, request: Request[Any, Any, Any], openapi_schema: dict[str, Any]) -> bytes:
        if id(openapi_schema) not in self._completed:
            complete(openapi_schema, request.app)
            self._completed.add(id(openapi_schema))
        rendered: bytes = super().render(request, openapi_schema)  # type: ignore[misc]
        return rendered


class CompletedJsonRenderPlugin(_Completing, JsonRenderPlugin):
    def __init__(self) -> None:
        super().__init__(path="/openapi.json")
        self._completed = set()


class CompletedYamlRenderPlugin(_Completing, YamlRenderPlugin):
    def __init__(self) -> None:
        super().__init__(path=["/openapi.yaml", "/openapi.yml"])
        self._completed = set()


def openapi_config(title: str, version: str) -> OpenAPIConfig:
    """The document at /openapi/openapi.json (and .yaml), and Swagger UI at /openapi."""
    return OpenAPIConfig(
        title=title,
        version=version,
        path="/openapi",
        render_plugins=[
            SwaggerRenderPlugin(path="/"),
            CompletedJsonRenderPlugin(),
            CompletedYamlRenderPlugin(),
        ],
    )


def complete(document: dict[str, Any], app: Litestar) -> dict[str, Any]:
    components: dict[str, Any] = document.setdefault("components", {})
    schemas: dict[str, Any] = components.setdefault("schemas", {})
    schemas["Problem"] = PROBLEM
    components["securitySchemes"] = {
        "ApiKey": {"type": "http", "scheme": "bearer", "description": "An organization's API key."}
    }
    bodies: dict[tuple[str, str], type[msgspec.Struct]] = {}
    for path, method, handler in _operations(app):
        operation = document.get("paths", {}).get(path, {}).get(method.lower())
        if operation is None:
            continue
        if path.startswith("/api/v1/"):
            operation["security"] = [{"ApiKey": []}]
            errors = ERRORS_WRITE if method in MUTATING else ERRORS_READ
            responses = operation.setdefault("responses", {})
            for status, description in errors.items():
                responses[status] = _problem_response(status, description)
        body = request_body_type(handler) if method in MUTATING else None
        if body is not None:
            bodies[(path, method)] = body
    if bodies:
        types = sorted(set(bodies.values()), key=lambda cls: cls.__name__)
        refs, found = msgspec.json.schema_components(types, ref_template=REF_TEMPLATE)
        by_type = dict(zip(types, refs, strict=True))
        for name, schema in found.items():
            schemas.setdefault(name, _widen_decimals(schema))
        for (path, method), body in bodies.items():
            operation = document["paths"][path][method.lower()]
            operation["requestBody"] = {
                # An Input body is optional (Lago's client sends some actions without one).
                "required": issubclass(body, Envelope),
                "content": {"application/json": {"schema": by_type[body]}},
            }
    _any_of(document)
    return document


def _any_of(schema: Any) -> None:
    """Litestar writes `T | None` as oneOf, which `null` fails when T admits it (Any): the
    union is inclusive, so anyOf, everywhere."""
    if isinstance(schema, dict):
        if "oneOf" in schema:
            schema["anyOf"] = schema.pop("oneOf")
        for value in schema.values():
            _any_of(value)
    elif isinstance(schema, list):
        for item in schema:
            _any_of(item)


def request_body_type(handler: HTTPRouteHandler) -> type[msgspec.Struct] | None:
    """The Envelope or Input class a handler decodes its raw body into, when it names one."""
    function: Any = getattr(handler.fn, "func", handler.fn)  # sync_to_thread wraps it,
    function = getattr(function, "__func__", function)  # and a controller's is a method.
    if not inspect.isfunction(function) or "raw_body" not in inspect.signature(function).parameters:
        return None
    candidates: list[Any] = [function.__globals__.get(name) for name in function.__code__.co_names]
    candidates += [cell.cell_contents for cell in function.__closure__ or ()]
    found = {
        candidate
        for candidate in candidates
        if isinstance(candidate, type)
        and issubclass(candidate, (Envelope, Input))
        and candidate not in (Envelope, Input)
    }
    return found.pop() if len(found) == 1 else None


def _operations(app: Litestar) -> Iterator[tuple[str, str, HTTPRouteHandler]]:
    for route in app.routes:
        if isinstance(route, HTTPRoute):
            for handler in route.route_handlers:
                for method in handler.http_methods:
                    yield route.path_format, method, handler


def _problem_response(status: str, description: str) -> dict[str, Any]:
    response: dict[str, Any] = {
        "description": description,
        "content": {PROBLEM_JSON: {"schema": {"$ref": "#/components/schemas/Problem"}}},
    }
    if status in ("429", "503"):
        response["headers"] = RETRY_AFTER
    return response


def _widen_decimals(schema: Any) -> Any:
    """msgspec decodes a Decimal field from a JSON string or number: say both."""
    if isinstance(schema, dict):
        if schema.get("type") == "string" and schema.get("format") == "decimal":
            return {"anyOf": [{"type": "string", "format": "decimal"}, {"type": "number"}]}
        return {key: _widen_decimals(value) for key, value in schema.items()}
    if isinstance(schema, list):
        return [_widen_decimals(item) for item in schema]
    return schema
