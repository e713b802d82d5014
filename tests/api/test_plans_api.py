"""Plans through the HTTP API: Lago's bodies, Tally's versions, and the refusals."""

import json
from decimal import Decimal
from typing import Any
from uuid import UUID

import pytest
from litestar import Litestar
from litestar.testing import TestClient

from adapters.stores import Ledger
from api.problems import PROBLEM_TYPE_BASE
from domain import ids
from domain.limits import AMOUNT_CENTS_MAX
from tests.conftest import Tenant

Client = TestClient[Litestar]

INCLUSIVE = [
    {"from_value": 0, "to_value": 100, "per_unit_amount": "1.00", "flat_amount": "10"},
    {"from_value": 101, "to_value": None, "per_unit_amount": "0.50", "flat_amount": "0"},
]
ADJACENT = [
    {"from_value": 0, "to_value": 100, "per_unit_amount": "1.00", "flat_amount": "10"},
    {"from_value": 100, "to_value": None, "per_unit_amount": "0.50", "flat_amount": "0"},
]


def metric(client: Client, tenant: Tenant, code: str = "tokens") -> str:
    body = {
        "billable_metric": {
            "name": code,
            "code": code,
            "aggregation_type": "sum_agg",
            "field_name": "total",
            "filters": [{"key": "model", "values": ["small", "large"]}],
        }
    }
    response = client.post("/api/v1/billable_metrics", json=body, headers=tenant.headers)
    lago_id: str = response.json()["billable_metric"]["lago_id"]
    return lago_id


def plan_body(metric_id: str, **fields: Any) -> dict[str, Any]:
    return {
        "plan": {
            "name": "Pro",
            "code": "pro",
            "interval": "monthly",
            "amount_cents": 1000,
            "amount_currency": "EUR",
            "pay_in_advance": True,
            "charges": [
                {
                    "billable_metric_id": metric_id,
                    "charge_model": "standard",
                    "properties": {"amount": "0.000003"},
                }
            ],
            **fields,
        }
    }


def post_plan(client: Client, tenant: Tenant, body: dict[str, Any]) -> Any:
    return client.post("/api/v1/plans", json=body, headers=tenant.headers)


def test_a_plan_answers_lagos_whole_body(client: Client, tenant: Tenant) -> None:
    metric_id = metric(client, tenant)
    client.post(
        "/api/v1/taxes",
        json={"tax": {"code": "vat", "name": "VAT", "rate": "20"}},
        headers=tenant.headers,
    )
    charge = {
        "billable_metric_id": metric_id,
        "charge_model": "standard",
        "invoice_display_name": "Tokens",
        "properties": {"amount": "0.000003"},
        "filters": [{"values": {"model": ["large"]}, "properties": {"amount": "0.000015"}}],
        "tax_codes": ["vat"],
    }
    content = json.dumps(plan_body(metric_id, charges=[charge], description="For teams"))
    # The client sends trial_period as a JSON number; it must come back with the same digits.
    content = content.replace(
        '"pay_in_advance": true', '"pay_in_advance": true, "trial_period": 14.5'
    )
    created = client.post("/api/v1/plans", content=content.encode(), headers=tenant.headers)
    assert created.status_code == 200
    assert b'"trial_period":14.5,' in created.content
    plan = created.json()["plan"]
    plan_id = ids.plan_id(tenant.organization_id, "pro")
    charge_id = ids.charge_id(plan_id, "tokens")
    stamp = plan["created_at"]
    [tax] = plan["charges"][0]["taxes"]
    assert plan == {
        "lago_id": str(plan_id),
        "name": "Pro",
        "invoice_display_name": None,
        "created_at": stamp,
        "code": "pro",
        "interval": "monthly",
        "description": "For teams",
        "amount_cents": 1000,
        "amount_currency": "EUR",
        "trial_period": 14.5,
        "pay_in_advance": True,
        "bill_charges_monthly": None,
        "bill_fixed_charges_monthly": None,
        "charges": [
            {
                "lago_id": str(charge_id),
                "lago_billable_metric_id": metric_id,
                "billable_metric_code": "tokens",
                "code": "tokens",
                "created_at": stamp,
                "charge_model": "standard",
                "pay_in_advance": False,
                "prorated": False,
                "invoiceable": True,
                "regroup_paid_fees": None,
                "invoice_display_name": "Tokens",
                "min_amount_cents": 0,
                "properties": {"amount": "0.000003"},
                "filters": [
                    {
                        "lago_id": str(ids.charge_filter_id(charge_id, '{"model":["large"]}')),
                        "invoice_display_name": None,
                        "properties": {"amount": "0.000015"},
                        "values": {"model": ["large"]},
                        "created_at": stamp,
                    }
                ],
                "taxes": [tax],
                "accepts_target_wallet": False,
            }
        ],
        "fixed_charges": [],
        "minimum_commitment": None,
        "usage_thresholds": [],
        "taxes": [],
        "metadata": {},
        "version": 1,
    }
    assert (tax["code"], tax["rate"]) == ("vat", 20)
    found = client.get("/api/v1/plans/pro", headers=tenant.headers)
    assert found.json() == created.json()


@pytest.mark.parametrize("ranges", [INCLUSIVE, ADJACENT], ids=["inclusive", "adjacent"])
def test_a_graduated_charge_takes_both_range_conventions(
    client: Client, tenant: Tenant, ranges: list[dict[str, Any]]
) -> None:
    metric_id = metric(client, tenant)
    charge = {
        "billable_metric_id": metric_id,
        "charge_model": "graduated",
        "properties": {"graduated_ranges": ranges},
    }
    response = post_plan(client, tenant, plan_body(metric_id, charges=[charge]))
    assert response.status_code == 200
    assert response.json()["plan"]["charges"][0]["properties"] == {"graduated_ranges": ranges}


def test_overlapping_tiers_are_refused_naming_the_field(client: Client, tenant: Tenant) -> None:
    metric_id = metric(client, tenant)
    ranges = [{**INCLUSIVE[0]}, {**INCLUSIVE[1], "from_value": 50}]
    charge = {
        "billable_metric_id": metric_id,
        "charge_model": "graduated",
        "properties": {"graduated_ranges": ranges},
    }
    response = post_plan(client, tenant, plan_body(metric_id, charges=[charge]))
    assert response.status_code == 422
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()
    assert body["type"] == PROBLEM_TYPE_BASE + "validation_errors"
    assert (body["code"], body["error_details"]) == (
        "validation_errors",
        {"charges.0.properties.graduated_ranges": ["invalid_graduated_ranges"]},
    )


@pytest.mark.parametrize(
    ("fields", "error_details"),
    [
        (
            {"charges": [{"billable_metric_id": str(ids.NAMESPACE), "charge_model": "standard"}]},
            {"charges.0.billable_metric_id": ["value_is_invalid"]},
        ),
        ({"tax_codes": ["gst"]}, {"tax_codes": ["value_is_invalid"]}),
        ({"amount_cents": -1}, {"amount_cents": ["value_is_out_of_range"]}),
        ({"amount_cents": AMOUNT_CENTS_MAX + 1}, {"amount_cents": ["value_is_out_of_range"]}),
        ({"amount_cents": "100"}, {"amount_cents": ["value_is_invalid"]}),
        ({"interval": "daily"}, {"interval": ["value_is_invalid"]}),
        ({"amount_currency": "EURO"}, {"amount_currency": ["value_is_invalid"]}),
        ({"trial_period": "-1"}, {"trial_period": ["value_is_out_of_range"]}),
        ({"coupons": []}, {"coupons": ["unsupported_field"]}),
        ({"fixed_charges": [{"add_on_id": "x"}]}, {"fixed_charges": ["unsupported_field"]}),
    ],
)
def test_a_bad_plan_is_refused_naming_the_field(
    client: Client, tenant: Tenant, fields: dict[str, Any], error_details: dict[str, list[str]]
) -> None:
    metric_id = metric(client, tenant)
    response = post_plan(client, tenant, plan_body(metric_id, **fields))
    assert response.status_code == 422
    assert response.json()["error_details"] == error_details


def test_an_unknown_charge_tax_code_is_refused(client: Client, tenant: Tenant) -> None:
    metric_id = metric(client, tenant)
    charge = {"billable_metric_id": metric_id, "charge_model": "standard", "tax_codes": ["gst"]}
    response = post_plan(client, tenant, plan_body(metric_id, charges=[charge]))
    assert response.json()["error_details"] == {"charges.0.tax_codes": ["value_is_invalid"]}


def test_a_pricing_unit_is_refused_and_cascade_updates_ignored(
    client: Client, tenant: Tenant
) -> None:
    metric_id = metric(client, tenant)
    charge = {
        "billable_metric_id": metric_id,
        "charge_model": "standard",
        "applied_pricing_unit": {"code": "credits", "conversion_rate": 0.5},
    }
    refused = post_plan(client, tenant, plan_body(metric_id, charges=[charge]))
    assert refused.json()["error_details"] == {
        "charges.0.applied_pricing_unit": ["unsupported_field"]
    }
    accepted = post_plan(client, tenant, plan_body(metric_id, cascade_updates=True))
    assert accepted.status_code == 200


def test_a_plan_without_its_root_key_is_a_bad_request(client: Client, tenant: Tenant) -> None:
    response = client.post("/api/v1/plans", json={"name": "Pro"}, headers=tenant.headers)
    assert response.status_code == 400
    assert response.json()["error"] == "BadRequest: param is missing or the value is empty: plan"


def test_an_edit_is_a_new_version_and_earlier_versions_stay_readable(
    client: Client, tenant: Tenant
) -> None:
    metric_id = metric(client, tenant)
    created = post_plan(client, tenant, plan_body(metric_id)).json()["plan"]
    charge_id = created["charges"][0]["lago_id"]
    update = {
        "plan": {
            "name": "Pro 2026",
            "charges": [{"id": charge_id, "properties": {"amount": "0.00001"}}],
        }
    }
    updated = client.put("/api/v1/plans/pro", json=update, headers=tenant.headers).json()["plan"]
    assert (updated["version"], updated["name"], updated["lago_id"]) == (
        2,
        "Pro 2026",
        created["lago_id"],
    )
    assert updated["charges"][0]["lago_id"] == charge_id
    assert updated["charges"][0]["properties"] == {"amount": "0.00001"}
    first = client.get("/api/v1/plans/pro/versions/1", headers=tenant.headers)
    assert first.json() == {"plan": created}
    second = client.get("/api/v1/plans/pro/versions/2", headers=tenant.headers)
    assert second.json() == {"plan": updated}
    missing = client.get("/api/v1/plans/pro/versions/3", headers=tenant.headers)
    assert missing.status_code == 404
    assert missing.json() == {
        "type": PROBLEM_TYPE_BASE + "plan_not_found",
        "title": "Not Found",
        "status": 404,
        "detail": "No plan 'pro version 3'.",
        "error": "Not Found",
        "code": "plan_not_found",
    }
    same = client.put(
        "/api/v1/plans/pro", json={"plan": {"name": "Pro 2026"}}, headers=tenant.headers
    )
    assert same.json()["plan"]["version"] == 2


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"code": "pro_2"}, "code"),
        ({"interval": "yearly"}, "interval"),
        ({"amount_currency": "USD"}, "amount_currency"),
    ],
)
def test_an_edit_cannot_change_the_code_interval_or_currency(
    client: Client, tenant: Tenant, fields: dict[str, Any], field: str
) -> None:
    post_plan(client, tenant, plan_body(metric(client, tenant)))
    response = client.put("/api/v1/plans/pro", json={"plan": fields}, headers=tenant.headers)
    assert response.json()["error_details"] == {field: ["value_is_immutable"]}


def test_plans_list_and_delete(client: Client, tenant: Tenant) -> None:
    metric_id = metric(client, tenant)
    for code in ("starter", "pro"):
        post_plan(client, tenant, plan_body(metric_id, code=code))
    listed = client.get("/api/v1/plans?per_page=1", headers=tenant.headers).json()
    assert [p["code"] for p in listed["plans"]] == ["pro"]
    assert listed["meta"]["total_count"] == 2
    deleted = client.delete("/api/v1/plans/pro", headers=tenant.headers)
    assert (deleted.status_code, deleted.json()["plan"]["code"]) == (200, "pro")
    listed = client.get("/api/v1/plans", headers=tenant.headers).json()
    assert [p["code"] for p in listed["plans"]] == ["starter"]
    missing = client.get("/api/v1/plans/pro", headers=tenant.headers)
    assert (missing.status_code, missing.json()["code"]) == (404, "plan_not_found")
    again = post_plan(client, tenant, plan_body(metric_id))
    assert again.json()["error_details"] == {"code": ["value_already_exist"]}


def test_another_organizations_metric_is_unknown(client: Client, tenant: Tenant) -> None:
    other, other_key = client.app.state["ledger"].billing.create_organization("globex")
    other_metric = client.post(
        "/api/v1/billable_metrics",
        json={"billable_metric": {"name": "c", "code": "c", "aggregation_type": "count_agg"}},
        headers={"Authorization": f"Bearer {other_key}"},
    ).json()["billable_metric"]["lago_id"]
    response = post_plan(client, tenant, plan_body(other_metric))
    assert response.json()["error_details"] == {
        "charges.0.billable_metric_id": ["value_is_invalid"]
    }
    assert other.id != tenant.organization_id


def test_an_override_plan_is_a_subscriptions_copy_and_not_in_the_catalog(
    client: Client, tenant: Tenant, ledger: Ledger
) -> None:
    created = post_plan(client, tenant, plan_body(metric(client, tenant))).json()["plan"]
    charge_id = created["charges"][0]["lago_id"]
    billing = ledger.billing
    overrides = {
        "amount_cents": 900,
        "trial_period": Decimal("30"),
        "charges": [{"id": charge_id, "properties": {"amount": "0.000002"}}],
    }
    override = billing.create_plan_override(tenant.organization_id, "pro", "sub_1", overrides)
    assert (override.code, override.parent_id, override.parent_version) == (
        "pro",
        UUID(created["lago_id"]),
        1,
    )
    assert override.definition()["charges"][0]["properties"] == {"amount": "0.000002"}
    again = billing.create_plan_override(
        tenant.organization_id, "pro", "sub_1", {"amount_cents": 800}
    )
    assert (again.id, again.version_number) == (override.id, 2)
    assert again.definition(1)["amount_cents"] == 900
    assert billing.plan_by_id(tenant.organization_id, override.id).definition()["trial_period"] == (
        "30"
    )
    listed = client.get("/api/v1/plans", headers=tenant.headers).json()
    assert [p["lago_id"] for p in listed["plans"]] == [created["lago_id"]]
    assert client.get("/api/v1/plans/pro", headers=tenant.headers).json()["plan"] == created
