"""The customers endpoints: Lago's shapes, errors, auth and Idempotency-Key."""

from litestar import Litestar
from litestar.testing import TestClient

from api.problems import PROBLEM_TYPE_BASE
from tests.conftest import Tenant

Client = TestClient[Litestar]


def test_a_created_customer_has_lagos_shape(client: Client, tenant: Tenant) -> None:
    response = client.post(
        "/api/v1/customers",
        json={"customer": {"external_id": "cus_1", "name": "Ada", "timezone": "Europe/Paris"}},
        headers=tenant.headers,
    )
    assert response.status_code == 200  # Lago answers 200, not 201, to a create.
    body = response.json()["customer"]
    assert body["external_id"] == "cus_1"
    assert body["applicable_timezone"] == "Europe/Paris"
    assert body["created_at"].endswith("Z")
    assert {"lago_id", "billing_configuration", "metadata", "taxes", "shipping_address"} <= set(
        body
    )


def test_an_unknown_customer_is_both_a_problem_and_a_lago_error(
    client: Client, tenant: Tenant
) -> None:
    response = client.get("/api/v1/customers/nobody", headers=tenant.headers)
    assert response.status_code == 404
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json() == {
        "type": PROBLEM_TYPE_BASE + "customer_not_found",
        "title": "Not Found",
        "status": 404,
        "detail": "No customer 'nobody'.",
        "error": "Not Found",
        "code": "customer_not_found",
    }


def test_an_invalid_timezone_is_a_422_naming_the_field(client: Client, tenant: Tenant) -> None:
    response = client.post(
        "/api/v1/customers",
        json={"customer": {"external_id": "cus_1", "timezone": "Mars/Olympus"}},
        headers=tenant.headers,
    )
    assert response.status_code == 422
    assert response.json()["error_details"] == {"timezone": ["invalid_timezone"]}
    assert client.get("/api/v1/customers/cus_1", headers=tenant.headers).status_code == 404


def test_a_missing_root_key_is_lagos_400(client: Client, tenant: Tenant) -> None:
    response = client.post("/api/v1/customers", json={"client": {}}, headers=tenant.headers)
    assert response.status_code == 400
    assert response.json()["error"] == (
        "BadRequest: param is missing or the value is empty: customer"
    )


def test_an_unknown_or_mistyped_field_is_named(client: Client, tenant: Tenant) -> None:
    unknown = client.post(
        "/api/v1/customers",
        json={"customer": {"external_id": "c", "nickname": "x"}},
        headers=tenant.headers,
    )
    mistyped = client.post(
        "/api/v1/customers",
        json={"customer": {"external_id": "c", "net_payment_term": "30"}},
        headers=tenant.headers,
    )
    missing = client.post("/api/v1/customers", json={"customer": {}}, headers=tenant.headers)
    assert unknown.json()["error_details"] == {"nickname": ["unsupported_field"]}
    assert mistyped.json()["error_details"] == {"net_payment_term": ["value_is_invalid"]}
    assert missing.json()["error_details"] == {"external_id": ["value_is_mandatory"]}


def test_every_route_needs_a_valid_key(client: Client, tenant: Tenant) -> None:
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": tenant.api_key}):
        response = client.get("/api/v1/customers", headers=headers)
        assert response.status_code == 401
        assert response.json()["error"] == "Unauthorized"


def test_another_organizations_customer_answers_404(client: Client, tenant: Tenant) -> None:
    client.post(
        "/api/v1/customers", json={"customer": {"external_id": "c"}}, headers=tenant.headers
    )
    billing = client.app.state.ledger.billing
    _, other_key = billing.create_organization("other")
    response = client.get("/api/v1/customers/c", headers={"Authorization": f"Bearer {other_key}"})
    assert response.status_code == 404


def test_a_list_carries_lagos_pagination_meta(client: Client, tenant: Tenant) -> None:
    for n in range(3):
        client.post(
            "/api/v1/customers", json={"customer": {"external_id": f"c{n}"}}, headers=tenant.headers
        )
    body = client.get("/api/v1/customers?page=2&per_page=2", headers=tenant.headers).json()
    assert [c["external_id"] for c in body["customers"]] == ["c0"]
    assert body["meta"] == {
        "current_page": 2,
        "next_page": None,
        "prev_page": 1,
        "total_pages": 2,
        "total_count": 3,
    }
    bad = client.get("/api/v1/customers?per_page=0", headers=tenant.headers)
    assert bad.json()["error_details"] == {"per_page": ["value_is_invalid"]}


def test_an_empty_list_reports_page_zero_as_lago_does(client: Client, tenant: Tenant) -> None:
    body = client.get("/api/v1/customers", headers=tenant.headers).json()
    assert body == {
        "customers": [],
        "meta": {
            "current_page": 0,
            "next_page": None,
            "prev_page": None,
            "total_pages": 0,
            "total_count": 0,
        },
    }


def test_the_same_idempotency_key_and_body_replays_the_first_response(
    client: Client, tenant: Tenant
) -> None:
    headers = {**tenant.headers, "Idempotency-Key": "k1"}
    body = {"customer": {"external_id": "c1", "name": "Ada"}}
    first = client.post("/api/v1/customers", json=body, headers=headers)
    client.post(
        "/api/v1/customers",
        json={"customer": {"external_id": "c1", "name": "Changed"}},
        headers=tenant.headers,
    )
    replay = client.post("/api/v1/customers", json=body, headers=headers)
    assert (replay.status_code, replay.content) == (200, first.content)
    assert replay.headers["idempotent-replayed"] == "true"


def test_the_same_idempotency_key_with_another_body_is_refused(
    client: Client, tenant: Tenant
) -> None:
    headers = {**tenant.headers, "Idempotency-Key": "k1"}
    client.post("/api/v1/customers", json={"customer": {"external_id": "c1"}}, headers=headers)
    other = client.post(
        "/api/v1/customers", json={"customer": {"external_id": "c2"}}, headers=headers
    )
    assert other.status_code == 422
    assert other.json()["error_details"] == {"idempotency_key": ["value_already_exist"]}
    assert client.get("/api/v1/customers/c2", headers=tenant.headers).status_code == 404


def test_a_failed_request_does_not_burn_its_idempotency_key(client: Client, tenant: Tenant) -> None:
    headers = {**tenant.headers, "Idempotency-Key": "k1"}
    body = {"customer": {"external_id": "c1", "timezone": "Nowhere/Land"}}
    assert client.post("/api/v1/customers", json=body, headers=headers).status_code == 422
    body["customer"]["timezone"] = "UTC"
    # Another body under the same key is accepted: the failed attempt released it.
    assert client.post("/api/v1/customers", json=body, headers=headers).status_code == 200


def test_deleting_answers_the_deleted_customer(client: Client, tenant: Tenant) -> None:
    client.post(
        "/api/v1/customers", json={"customer": {"external_id": "c1"}}, headers=tenant.headers
    )
    deleted = client.delete("/api/v1/customers/c1", headers=tenant.headers)
    assert (deleted.status_code, deleted.json()["customer"]["external_id"]) == (200, "c1")
    assert client.get("/api/v1/customers/c1", headers=tenant.headers).status_code == 404


def test_history_lists_each_recorded_event_with_its_changes(client: Client, tenant: Tenant) -> None:
    for name in ("Ada", "Grace"):
        client.post(
            "/api/v1/customers",
            json={"customer": {"external_id": "c1", "name": name}},
            headers=tenant.headers,
        )
    events = client.get("/api/v1/customers/c1/history", headers=tenant.headers).json()["events"]
    assert [(e["version"], e["type"]) for e in events] == [
        (1, "Customer.Created"),
        (2, "Customer.Updated"),
    ]
    assert events[1]["changes"] == {"name": "Grace"}


def test_an_unknown_route_is_lagos_404(client: Client, tenant: Tenant) -> None:
    response = client.get("/api/v1/nothing_here", headers=tenant.headers)
    assert (response.status_code, response.json()["code"]) == (404, "resource_not_found")


def test_health_and_openapi_are_served(client: Client) -> None:
    assert client.get("/health").json() == {"status": "ok"}
    paths = client.get("/openapi/openapi.json").json()["paths"]
    assert "/api/v1/customers" in paths
