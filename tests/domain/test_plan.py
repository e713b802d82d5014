"""Plan aggregate: given (history), when (one command), then (the recorded events)."""

from decimal import Decimal
from typing import Any
from uuid import UUID

import pytest

from domain import ids
from domain.charges import charge_amount
from domain.errors import InvalidValueError
from domain.limits import AMOUNT_CENTS_MAX
from domain.plan import MetricInfo, Plan, apply_overrides
from tests.builders import ORG_ID

TOKENS = MetricInfo(
    id=UUID("10000000-0000-4000-8000-000000000001"),
    code="tokens",
    aggregation_type="sum_agg",
    recurring=False,
    filters={"model": ("small", "large"), "direction": ("input", "output")},
)
CALLS = MetricInfo(UUID("10000000-0000-4000-8000-000000000002"), "calls", "count_agg", False)
SEATS = MetricInfo(UUID("10000000-0000-4000-8000-000000000003"), "seats", "unique_count_agg", True)
PEAK = MetricInfo(UUID("10000000-0000-4000-8000-000000000004"), "peak", "max_agg", False)
LATEST = MetricInfo(UUID("10000000-0000-4000-8000-000000000005"), "level", "latest_agg", False)
LEVEL = MetricInfo(UUID("10000000-0000-4000-8000-000000000006"), "gb", "weighted_sum_agg", True)
METRICS = {str(m.id): m for m in (TOKENS, CALLS, SEATS, PEAK, LATEST, LEVEL)}
TAX_CODES = frozenset({"vat_20", "reduced_10"})
PLAN_ID = ids.plan_id(ORG_ID, "pro")


def tier(from_value: int, to_value: int | None, per_unit: str, flat: str = "0") -> dict[str, Any]:
    return {
        "from_value": from_value,
        "to_value": to_value,
        "per_unit_amount": per_unit,
        "flat_amount": flat,
    }


def tokens_charge(**fields: Any) -> dict[str, Any]:
    return {
        "billable_metric_id": str(TOKENS.id),
        "charge_model": "standard",
        "properties": {"amount": "0.000003"},
        **fields,
    }


def calls_charge(**fields: Any) -> dict[str, Any]:
    return {
        "billable_metric_id": str(CALLS.id),
        "charge_model": "graduated",
        "properties": {"graduated_ranges": [tier(0, 100, "1.00", "10"), tier(101, None, "0.50")]},
        **fields,
    }


def values(**fields: Any) -> dict[str, Any]:
    return {
        "name": "Pro",
        "interval": "monthly",
        "amount_cents": 1000,
        "amount_currency": "EUR",
        "pay_in_advance": True,
        "charges": [tokens_charge(), calls_charge()],
        **fields,
    }


def create(**fields: Any) -> Plan:
    return Plan.create(ORG_ID, "pro", values(**fields), metrics=METRICS, tax_codes=TAX_CODES)


def pro_plan(**fields: Any) -> Plan:
    """Given a plan at version 1, its events collected."""
    plan = create(**fields)
    plan.collect_events()
    return plan


def update(plan: Plan, **fields: Any) -> None:
    plan.update(fields, metrics=METRICS, tax_codes=TAX_CODES)


# Create.


def test_a_plan_records_its_whole_definition_as_version_1() -> None:
    plan = create(tax_codes=["vat_20"], trial_period=Decimal("14.5"))
    [created] = plan.collect_events()
    assert isinstance(created, Plan.Created)
    assert (created.originator_id, created.code) == (PLAN_ID, "pro")
    assert plan.version_number == 1
    definition = plan.definition(1)
    assert definition == created.definition
    assert {k: v for k, v in definition.items() if k != "charges"} == {
        "name": "Pro",
        "invoice_display_name": None,
        "description": None,
        "interval": "monthly",
        "amount_cents": 1000,
        "amount_currency": "EUR",
        "pay_in_advance": True,
        "trial_period": "14.5",
        "bill_charges_monthly": None,
        "bill_fixed_charges_monthly": None,
        "tax_codes": ["vat_20"],
        "minimum_commitment": None,
        "usage_thresholds": [],
        "metadata": {},
    }
    assert definition["charges"][0] == {
        "lago_id": str(ids.charge_id(PLAN_ID, "tokens")),
        "code": "tokens",
        "billable_metric_id": str(TOKENS.id),
        "billable_metric_code": "tokens",
        "charge_model": "standard",
        "pay_in_advance": False,
        "invoiceable": True,
        "regroup_paid_fees": None,
        "prorated": False,
        "min_amount_cents": 0,
        "invoice_display_name": None,
        "properties": {"amount": "0.000003"},
        "filters": [],
        "tax_codes": [],
        "accepts_target_wallet": False,
    }
    assert not plan.is_override


def test_a_yearly_plan_keeps_bill_charges_monthly_and_a_monthly_one_stores_null() -> None:
    yearly = create(interval="yearly", bill_charges_monthly=True)
    monthly = create(bill_charges_monthly=True)
    assert yearly.definition()["bill_charges_monthly"] is True
    assert yearly.definition()["bill_fixed_charges_monthly"] is False
    assert monthly.definition()["bill_charges_monthly"] is None


def test_a_repeated_metric_gets_suffixed_charge_codes() -> None:
    plan = create(charges=[tokens_charge(), tokens_charge(), calls_charge(code="tokens_2")])
    assert [c["code"] for c in plan.definition()["charges"]] == ["tokens", "tokens_3", "tokens_2"]


def test_a_charge_filter_is_stored_with_a_stable_id_and_its_own_price() -> None:
    charge = tokens_charge(
        filters=[
            {"values": {"model": ["large"]}, "properties": {"amount": "0.000015"}},
            {
                "values": {"model": ["large"], "direction": ["output"]},
                "properties": {"amount": "0.00006"},
                "invoice_display_name": "Large output",
            },
        ]
    )
    [stored, _] = create(charges=[charge, calls_charge()]).definition()["charges"]
    first, second = stored["filters"]
    assert first["values"] == {"model": ["large"]}
    assert first["properties"] == {"amount": "0.000015"}
    assert second["invoice_display_name"] == "Large output"
    assert first["lago_id"] != second["lago_id"]
    again = create(charges=[charge, calls_charge()]).definition()["charges"][0]["filters"]
    assert [f["lago_id"] for f in again] == [first["lago_id"], second["lago_id"]]


# Refusals, each naming its field.


OVERLAPPING = [tier(0, 100, "1"), tier(50, None, "0.5")]
REFUSED_CREATES: list[tuple[dict[str, Any], str, str]] = [
    ({"name": None}, "name", "value_is_mandatory"),
    ({"name": "  "}, "name", "value_is_mandatory"),
    ({"interval": None}, "interval", "value_is_mandatory"),
    ({"interval": "daily"}, "interval", "value_is_invalid"),
    ({"amount_cents": -1}, "amount_cents", "value_is_out_of_range"),
    ({"amount_cents": AMOUNT_CENTS_MAX + 1}, "amount_cents", "value_is_out_of_range"),
    ({"amount_cents": "100"}, "amount_cents", "value_is_invalid"),
    ({"amount_cents": Decimal("1.5")}, "amount_cents", "value_is_invalid"),
    ({"amount_currency": "XXX"}, "amount_currency", "value_is_invalid"),
    ({"pay_in_advance": None}, "pay_in_advance", "value_is_mandatory"),
    ({"trial_period": Decimal("-1")}, "trial_period", "value_is_out_of_range"),
    ({"trial_period": 1.5}, "trial_period", "value_is_invalid"),
    ({"tax_codes": ["gst"]}, "tax_codes", "value_is_invalid"),
    (
        {"minimum_commitment": {"amount_cents": 100, "tax_codes": ["gst"]}},
        "minimum_commitment.tax_codes",
        "value_is_invalid",
    ),
    ({"fixed_charges": [{"add_on_id": "x"}]}, "fixed_charges", "unsupported_field"),
    ({"coupons": ["x"]}, "coupons", "unsupported_field"),
    (
        {"charges": [tokens_charge(billable_metric_id=str(UUID(int=7)))]},
        "charges.0.billable_metric_id",
        "value_is_invalid",
    ),
    (
        {"charges": [tokens_charge(billable_metric_id="tokens")]},
        "charges.0.billable_metric_id",
        "value_is_invalid",
    ),
    (
        {"charges": [tokens_charge(billable_metric_id=None)]},
        "charges.0.billable_metric_id",
        "value_is_mandatory",
    ),
    (
        {"charges": [calls_charge(properties={"graduated_ranges": OVERLAPPING})]},
        "charges.0.properties.graduated_ranges",
        "invalid_graduated_ranges",
    ),
    (
        {"charges": [tokens_charge(properties={"amount": "-1"})]},
        "charges.0.properties.amount",
        "value_is_out_of_range",
    ),
    (
        {"charges": [tokens_charge(charge_model="custom")]},
        "charges.0.charge_model",
        "value_is_invalid",
    ),
    (
        {"charges": [tokens_charge(charge_model=None)]},
        "charges.0.charge_model",
        "value_is_mandatory",
    ),
    (
        {"charges": [calls_charge(charge_model="dynamic", properties=None)]},
        "charges.0.charge_model",
        "invalid_aggregation_type_or_charge_model",
    ),
    ({"charges": [tokens_charge(tax_codes=["gst"])]}, "charges.0.tax_codes", "value_is_invalid"),
    (
        {"charges": [calls_charge(charge_model="volume", properties=None, pay_in_advance=True)]},
        "charges.0.pay_in_advance",
        "invalid_aggregation_type_or_charge_model",
    ),
    *(
        (
            {"charges": [tokens_charge(billable_metric_id=str(m.id), pay_in_advance=True)]},
            "charges.0.pay_in_advance",
            "invalid_aggregation_type_or_charge_model",
        )
        for m in (PEAK, LATEST, LEVEL)
    ),
    (
        {"charges": [tokens_charge(pay_in_advance=True, min_amount_cents=100)]},
        "charges.0.min_amount_cents",
        "not_compatible_with_pay_in_advance",
    ),
    (
        {"charges": [tokens_charge(min_amount_cents=-1)]},
        "charges.0.min_amount_cents",
        "value_is_out_of_range",
    ),
    (
        {"charges": [tokens_charge(prorated=True)]},
        "charges.0.prorated",
        "invalid_billable_metric_or_charge_model",
    ),
    (
        {"charges": [tokens_charge(billable_metric_id=str(LEVEL.id), prorated=True)]},
        "charges.0.prorated",
        "invalid_billable_metric_or_charge_model",
    ),
    (
        {
            "charges": [
                calls_charge(billable_metric_id=str(SEATS.id), prorated=True, pay_in_advance=True)
            ]
        },
        "charges.0.prorated",
        "invalid_billable_metric_or_charge_model",
    ),
    (
        {"charges": [tokens_charge(invoiceable=False)]},
        "charges.0.invoiceable",
        "must_be_true_unless_pay_in_advance",
    ),
    (
        {"charges": [tokens_charge(regroup_paid_fees="invoice", pay_in_advance=True)]},
        "charges.0.regroup_paid_fees",
        "only_compatible_with_pay_in_advance_and_non_invoiceable",
    ),
    (
        {"charges": [tokens_charge(filters=[{"values": {"region": ["eu"]}, "properties": {}}])]},
        "charges.0.filters",
        "value_is_invalid",
    ),
    (
        {"charges": [tokens_charge(filters=[{"values": {"model": ["huge"]}, "properties": {}}])]},
        "charges.0.filters",
        "value_is_invalid",
    ),
    (
        {
            "charges": [
                tokens_charge(
                    filters=[
                        {"values": {"model": ["large"]}, "properties": {"amount": "1"}},
                        {"values": {"direction": ["input"]}, "properties": {"amount": "1"}},
                    ]
                )
            ]
        },
        "charges.0.filters",
        "overlapping_filters",
    ),
    (
        {"charges": [tokens_charge(filters=[{"values": {"model": ["large"]}}])]},
        "charges.0.filters.0.properties",
        "value_is_mandatory",
    ),
    (
        {
            "charges": [
                tokens_charge(
                    filters=[{"values": {"model": ["large"]}, "properties": {"rate": "1"}}]
                )
            ]
        },
        "charges.0.filters.0.properties.rate",
        "unsupported_field",
    ),
    (
        {"charges": [tokens_charge(code="usage"), calls_charge(code="usage")]},
        "charges.1.code",
        "value_already_exist",
    ),
    (
        {"charges": [tokens_charge(code="a/b")]},
        "charges.0.code",
        "value_is_invalid",
    ),
    (
        {"charges": [tokens_charge(applied_pricing_unit={"code": "credits"})]},
        "charges.0.applied_pricing_unit",
        "unsupported_field",
    ),
]


@pytest.mark.parametrize(("fields", "field", "reason"), REFUSED_CREATES)
def test_a_create_is_refused_naming_the_field(
    fields: dict[str, Any], field: str, reason: str
) -> None:
    with pytest.raises(InvalidValueError) as error:
        create(**fields)
    assert (error.value.field, error.value.reason) == (field, reason)


@pytest.mark.parametrize(
    "charge",
    [
        tokens_charge(pay_in_advance=True),
        calls_charge(pay_in_advance=True),
        tokens_charge(billable_metric_id=str(SEATS.id), pay_in_advance=True, prorated=True),
        calls_charge(billable_metric_id=str(SEATS.id), prorated=True),
        tokens_charge(pay_in_advance=True, invoiceable=False, regroup_paid_fees="invoice"),
        tokens_charge(charge_model="dynamic", properties=None),
    ],
)
def test_charges_lago_accepts_are_accepted(charge: dict[str, Any]) -> None:
    assert create(charges=[charge]).definition()["charges"][0]["charge_model"]


# Versions.


def test_an_edit_appends_a_version_and_leaves_version_1_unchanged() -> None:
    plan = pro_plan()
    before = plan.definition(1)
    update(plan, name="Pro 2026", amount_cents=2000)
    [versioned] = plan.collect_events()
    assert isinstance(versioned, Plan.Versioned)
    assert plan.version_number == 2
    assert plan.definition(1) == before
    assert (plan.definition()["name"], plan.definition(2)["amount_cents"]) == ("Pro 2026", 2000)
    assert plan.definition()["charges"] == before["charges"]  # Absent charges are kept.


def test_a_definition_is_a_copy_that_cannot_change_the_plan() -> None:
    plan = pro_plan()
    plan.definition(1)["charges"][0]["properties"]["amount"] = "1"
    assert plan.definition(1)["charges"][0]["properties"] == {"amount": "0.000003"}


def test_an_update_that_changes_nothing_records_nothing() -> None:
    plan = pro_plan()
    update(plan, name="Pro", amount_cents=1000, interval="monthly", description=None)
    update(plan, charges=[tokens_charge(), calls_charge()])
    assert plan.collect_events() == []
    assert plan.version_number == 1


def test_editing_a_price_leaves_every_earlier_versions_rating_unchanged() -> None:
    plan = pro_plan()

    def rate_version_1() -> int:
        charge = plan.definition(1)["charges"][0]
        return charge_amount(
            charge["charge_model"], charge["properties"], Decimal(1_500_000), "EUR"
        ).amount_cents

    before = rate_version_1()
    tokens_id = plan.definition()["charges"][0]["lago_id"]
    update(plan, charges=[tokens_charge(id=tokens_id, properties={"amount": "0.00001"})])
    assert rate_version_1() == before == 450
    latest = plan.definition()["charges"][0]
    assert charge_amount(
        "standard", latest["properties"], Decimal(1_500_000), "EUR"
    ).amount_cents == (1500)


def test_a_charge_matched_by_id_keeps_its_lago_id_and_fields_and_absent_ones_go() -> None:
    plan = pro_plan()
    tokens = plan.definition()["charges"][0]
    update(plan, charges=[{"id": tokens["lago_id"], "invoice_display_name": "LLM tokens"}])
    [charge] = plan.definition()["charges"]
    assert charge == {**tokens, "invoice_display_name": "LLM tokens"}
    assert len(plan.definition(1)["charges"]) == 2


def test_a_matched_charge_cannot_take_another_code() -> None:
    plan = pro_plan()
    tokens = plan.definition()["charges"][0]
    with pytest.raises(InvalidValueError) as error:
        update(plan, charges=[{"id": tokens["lago_id"], "code": "words"}])
    assert (error.value.field, error.value.reason) == ("charges.0.code", "value_is_immutable")
    assert plan.collect_events() == []


def test_a_new_charge_model_without_properties_takes_lagos_defaults() -> None:
    plan = pro_plan()
    calls = plan.definition()["charges"][1]
    update(plan, charges=[{"id": calls["lago_id"], "charge_model": "standard"}])
    [charge] = plan.definition()["charges"]
    assert (charge["lago_id"], charge["properties"]) == (calls["lago_id"], {"amount": "0"})


@pytest.mark.parametrize(
    ("fields", "field"),
    [({"interval": "yearly"}, "interval"), ({"amount_currency": "USD"}, "amount_currency")],
)
def test_the_interval_and_currency_are_immutable(fields: dict[str, Any], field: str) -> None:
    plan = pro_plan()
    with pytest.raises(InvalidValueError) as error:
        update(plan, **fields)
    assert (error.value.field, error.value.reason) == (field, "value_is_immutable")
    assert plan.collect_events() == []


def test_a_refused_edit_records_nothing() -> None:
    plan = pro_plan()
    with pytest.raises(InvalidValueError) as error:
        update(plan, charges=[calls_charge(properties={"graduated_ranges": OVERLAPPING})])
    assert error.value.field == "charges.0.properties.graduated_ranges"
    assert plan.collect_events() == []
    assert plan.version_number == 1


def test_an_empty_minimum_commitment_removes_it() -> None:
    plan = pro_plan(minimum_commitment={"amount_cents": 50_000, "tax_codes": ["vat_20"]})
    commitment = plan.definition()["minimum_commitment"]
    assert commitment == {
        "lago_id": str(ids.minimum_commitment_id(PLAN_ID)),
        "amount_cents": 50_000,
        "invoice_display_name": None,
        "tax_codes": ["vat_20"],
    }
    update(plan, minimum_commitment={"invoice_display_name": "Minimum"})
    assert plan.definition()["minimum_commitment"] == {
        **commitment,
        "invoice_display_name": "Minimum",
    }
    update(plan, minimum_commitment={})
    assert plan.definition()["minimum_commitment"] is None
    assert plan.version_number == 3


def test_delete_marks_the_plan_deleted_and_keeps_its_versions() -> None:
    plan = pro_plan()
    plan.delete()
    plan.delete()
    [deleted] = plan.collect_events()
    assert isinstance(deleted, Plan.Deleted)
    assert plan.deleted and plan.definition(1)["name"] == "Pro"


# Overrides.


def override_of(parent: Plan, overrides: dict[str, Any]) -> Plan:
    return Plan.create_override(parent, "sub_1", overrides, metrics=METRICS, tax_codes=TAX_CODES)


def test_apply_overrides_changes_a_copy_and_keeps_charge_ids() -> None:
    definition = pro_plan().definition()
    tokens_id = definition["charges"][0]["lago_id"]
    overridden = apply_overrides(
        definition,
        {
            "name": "Pro (ACME)",
            "amount_cents": 800,
            "trial_period": Decimal("30"),
            "tax_codes": ["reduced_10"],
            "minimum_commitment": {"amount_cents": 10_000},
            "charges": [
                {
                    "id": tokens_id,
                    "properties": {"amount": "0.000002"},
                    "filters": [{"values": {"model": ["large"]}, "properties": {"amount": "1"}}],
                    "min_amount_cents": 500,
                }
            ],
        },
        METRICS,
        TAX_CODES,
        plan_id=PLAN_ID,
    )
    assert definition == pro_plan().definition()  # The input is untouched.
    tokens = overridden["charges"][0]
    assert (overridden["name"], overridden["amount_cents"], overridden["trial_period"]) == (
        "Pro (ACME)",
        800,
        "30",
    )
    assert overridden["tax_codes"] == ["reduced_10"]
    assert overridden["minimum_commitment"]["amount_cents"] == 10_000
    assert (tokens["lago_id"], tokens["properties"], tokens["min_amount_cents"]) == (
        tokens_id,
        {"amount": "0.000002"},
        500,
    )
    assert [f["values"] for f in tokens["filters"]] == [{"model": ["large"]}]
    assert overridden["charges"][1] == definition["charges"][1]


@pytest.mark.parametrize(
    ("overrides", "field", "reason"),
    [
        ({"charges": [{"id": str(UUID(int=1))}]}, "charges.0.id", "value_is_invalid"),
        ({"charges": [{"id": None, "properties": {}}]}, "charges.0.id", "value_is_invalid"),
        ({"interval": "yearly"}, "interval", "unsupported_field"),
        ({"tax_codes": ["gst"]}, "tax_codes", "value_is_invalid"),
        ({"amount_cents": -5}, "amount_cents", "value_is_out_of_range"),
    ],
)
def test_overrides_are_refused_naming_the_field(
    overrides: dict[str, Any], field: str, reason: str
) -> None:
    with pytest.raises(InvalidValueError) as error:
        apply_overrides(pro_plan().definition(), overrides, METRICS, TAX_CODES, plan_id=PLAN_ID)
    assert (error.value.field, error.value.reason) == (field, reason)


def test_an_override_plan_copies_the_parents_latest_version_for_one_subscription() -> None:
    parent = pro_plan()
    update(parent, name="Pro v2")
    parent.collect_events()
    override = override_of(parent, {"amount_cents": 500})
    [created] = override.collect_events()
    assert isinstance(created, Plan.OverrideCreated)
    assert override.id == ids.plan_override_id(ORG_ID, parent.id, "sub_1") != parent.id
    assert (override.code, override.parent_id, override.parent_version) == ("pro", parent.id, 2)
    assert (override.subscription_external_id, override.is_override) == ("sub_1", True)
    assert override.definition() == {**parent.definition(), "amount_cents": 500}


def test_an_override_plan_rebuilds_from_its_events() -> None:
    override = override_of(pro_plan(), {"amount_cents": 500})
    override.override({"name": "Pro (ACME)"}, metrics=METRICS, tax_codes=TAX_CODES)
    events = override.collect_events()
    rebuilt: Plan | None = None
    for domain_event in events:
        rebuilt = domain_event.mutate(rebuilt)
    assert rebuilt is not None
    assert (rebuilt.parent_id, rebuilt.parent_version, rebuilt.version_number) == (
        override.parent_id,
        1,
        2,
    )
    assert rebuilt.definition(1)["name"] == "Pro"
    assert rebuilt.definition()["name"] == "Pro (ACME)"


def test_overriding_again_appends_a_version_and_keeps_the_currency() -> None:
    override = override_of(pro_plan(), {"amount_cents": 500})
    override.collect_events()
    override.override({"amount_cents": 500}, metrics=METRICS, tax_codes=TAX_CODES)
    assert override.collect_events() == []
    with pytest.raises(InvalidValueError) as error:
        override.override({"amount_currency": "USD"}, metrics=METRICS, tax_codes=TAX_CODES)
    assert (error.value.field, error.value.reason) == ("amount_currency", "value_is_immutable")
    override.override({"amount_cents": 700}, metrics=METRICS, tax_codes=TAX_CODES)
    [versioned] = override.collect_events()
    assert isinstance(versioned, Plan.Versioned)
    assert (override.definition(1)["amount_cents"], override.definition()["amount_cents"]) == (
        500,
        700,
    )
