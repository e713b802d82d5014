"""The served OpenAPI document (api/openapi.py): request bodies, error bodies, the API key."""

from typing import Any

from litestar import Litestar
from litestar.testing import TestClient

from api.openapi import request_body_type

Client = TestClient[Litestar]


def test_every_operation_that_decodes_a_body_documents_it(client: Client) -> None:
    document = client.get("/openapi/openapi.json").json()
    undocumented = []
    for route in client.app.routes:
        for handler in getattr(route, "route_handlers", []):
            for method in handler.http_methods:
                if request_body_type(handler) is None:
                    continue
                operation = document["paths"][route.path_format][method.lower()]
                if "requestBody" not in operation:
                    undocumented.append(f"{method} {route.path_format}")
    assert undocumented == []
    customer = document["paths"]["/api/v1/customers"]["post"]["requestBody"]
    assert customer["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/CustomerRequest"
    }
    assert document["components"]["schemas"]["CustomerInput"]["required"] == ["external_id"]


def test_every_api_operation_documents_its_errors_as_problem_bodies(client: Client) -> None:
    document = client.get("/openapi/openapi.json").json()
    operations: list[tuple[str, dict[str, Any]]] = [
        (path, operation)
        for path, item in document["paths"].items()
        if path.startswith("/api/v1/")
        for method, operation in item.items()
        if method in ("get", "post", "put", "delete")
    ]
    assert operations
    for _path, operation in operations:
        responses = operation["responses"]
        assert {"401", "404", "422", "429", "503"} <= set(responses)
        assert "Retry-After" in responses["503"]["headers"]
        problem = responses["422"]["content"]["application/problem+json"]["schema"]
        assert problem == {"$ref": "#/components/schemas/Problem"}
    assert "oneOf" not in str(document)  # `T | None` is anyOf: null may match both.


def test_event_ids_made_as_text_are_documented_as_uuids(client: Client) -> None:
    document = client.get("/openapi/openapi.json").json()
    event = document["components"]["schemas"]["EventObject"]["properties"]
    for field in ("lago_id", "lago_subscription_id"):
        assert event[field] == {"type": "string", "format": "uuid"}, field
