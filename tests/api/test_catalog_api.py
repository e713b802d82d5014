"""Taxes and billable metrics through the HTTP API."""

from litestar import Litestar
from litestar.testing import TestClient

from tests.conftest import Tenant

Client = TestClient[Litestar]


def test_a_tax_rate_sent_as_a_number_comes_back_with_the_same_digits(
    client: Client, tenant: Tenant
) -> None:
    created = client.post(
        "/api/v1/taxes",
        content=b'{"tax": {"code": "fi_vat", "name": "VAT FI", "rate": 25.5}}',
        headers=tenant.headers,
    )
    assert created.status_code == 200
    assert b'"rate":25.5,' in created.content
    found = client.get("/api/v1/taxes/fi_vat", headers=tenant.headers).json()["tax"]
    assert (found["code"], found["rate"], found["applied_to_organization"]) == (
        "fi_vat",
        25.5,
        False,
    )


def test_a_tax_code_is_unique_and_immutable(client: Client, tenant: Tenant) -> None:
    body = {"tax": {"code": "vat", "name": "VAT", "rate": "20"}}
    client.post("/api/v1/taxes", json=body, headers=tenant.headers)
    again = client.post("/api/v1/taxes", json=body, headers=tenant.headers)
    assert again.json()["error_details"] == {"code": ["value_already_exist"]}
    renamed = client.put("/api/v1/taxes/vat", json={"tax": {"code": "tva"}}, headers=tenant.headers)
    assert renamed.json()["error_details"] == {"code": ["value_is_immutable"]}
    updated = client.put("/api/v1/taxes/vat", json={"tax": {"rate": "21"}}, headers=tenant.headers)
    assert updated.json()["tax"]["rate"] == 21


def test_taxes_list_and_delete(client: Client, tenant: Tenant) -> None:
    for code in ("a", "b"):
        client.post(
            "/api/v1/taxes",
            json={"tax": {"code": code, "name": code, "rate": "1"}},
            headers=tenant.headers,
        )
    assert client.delete("/api/v1/taxes/a", headers=tenant.headers).json()["tax"]["code"] == "a"
    body = client.get("/api/v1/taxes", headers=tenant.headers).json()
    assert [t["code"] for t in body["taxes"]] == ["b"]
    missing = client.get("/api/v1/taxes/a", headers=tenant.headers)
    assert (missing.status_code, missing.json()["code"]) == (404, "tax_not_found")


def test_a_metric_round_trips_with_its_filters(client: Client, tenant: Tenant) -> None:
    body = {
        "billable_metric": {
            "name": "Tokens",
            "code": "tokens",
            "aggregation_type": "sum_agg",
            "field_name": "tokens",
            "filters": [{"key": "model", "values": ["small", "large"]}],
        }
    }
    created = client.post("/api/v1/billable_metrics", json=body, headers=tenant.headers).json()
    metric = created["billable_metric"]
    assert metric["filters"] == [{"key": "model", "values": ["small", "large"]}]
    renamed = client.put(
        "/api/v1/billable_metrics/tokens",
        json={"billable_metric": {"name": "LLM tokens"}},
        headers=tenant.headers,
    ).json()["billable_metric"]
    assert (renamed["lago_id"], renamed["name"], renamed["field_name"]) == (
        metric["lago_id"],
        "LLM tokens",
        "tokens",
    )
    listed = client.get("/api/v1/billable_metrics", headers=tenant.headers).json()
    assert [m["code"] for m in listed["billable_metrics"]] == ["tokens"]


def test_a_recurring_count_metric_is_refused(client: Client, tenant: Tenant) -> None:
    response = client.post(
        "/api/v1/billable_metrics",
        json={
            "billable_metric": {
                "name": "Calls",
                "code": "calls",
                "aggregation_type": "count_agg",
                "recurring": True,
            }
        },
        headers=tenant.headers,
    )
    assert response.status_code == 422
    assert response.json()["error_details"] == {
        "recurring": ["not_compatible_with_aggregation_type"]
    }


def test_a_missing_code_is_named(client: Client, tenant: Tenant) -> None:
    response = client.post(
        "/api/v1/billable_metrics",
        json={"billable_metric": {"name": "Calls", "aggregation_type": "count_agg"}},
        headers=tenant.headers,
    )
    assert response.json()["error_details"] == {"code": ["value_is_mandatory"]}
