"""Plan: what a subscription pays, as numbered versions that never change once recorded.

A plan's definition is one JSON-safe dict holding everything rating needs (decimals as canonical
strings, ids as text). Every accepted change appends a new version; earlier versions stay as they
were, so a subscription (or an invoice) that read version n reads the same prices forever.

Override plans are a subscription's negotiated copy of a plan (Lago's plan_overrides): same code,
their own id, and a `parent_id`/`parent_version` naming what they were copied from.
"""

import copy
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any, Final
from uuid import UUID

from eventsourcing.domain import AggregateCreated, AggregateEvent, BaseAggregate, event

from domain import ids
from domain.charges import CHARGE_MODELS, PAY_IN_ADVANCE_CHARGE_MODELS, parse_properties
from domain.customer import METADATA_MAX, check_key
from domain.errors import InvalidValueError
from domain.limits import AMOUNT_CENTS_MAX, KEY_LENGTH_MAX, TEXT_LENGTH_MAX
from domain.money import check_currency, to_decimal
from domain.periods import CHARGES_MONTHLY_INTERVALS, check_interval
from domain.usage import check_charge_filters

# Keys a plan's values may carry. `fixed_charges` is declared so that an empty list passes; Tally
# has no fixed charges yet, so a non-empty one is refused as unsupported.
PLAN_KEYS: Final = frozenset(
    {
        "name",
        "invoice_display_name",
        "description",
        "interval",
        "amount_cents",
        "amount_currency",
        "pay_in_advance",
        "trial_period",
        "bill_charges_monthly",
        "bill_fixed_charges_monthly",
        "tax_codes",
        "minimum_commitment",
        "usage_thresholds",
        "metadata",
        "charges",
        "fixed_charges",
    }
)
# Changing these under running subscriptions would corrupt them (an invoice in another currency
# than the wallets and the earlier invoices; periods cut by another interval), so they are fixed
# at creation: another currency or interval is another plan.
IMMUTABLE_FIELDS: Final = ("interval", "amount_currency")
CHARGE_KEYS: Final = frozenset(
    {
        "id",
        "billable_metric_id",
        "code",
        "charge_model",
        "pay_in_advance",
        "prorated",
        "invoiceable",
        "regroup_paid_fees",
        "invoice_display_name",
        "min_amount_cents",
        "properties",
        "filters",
        "tax_codes",
        "accepts_target_wallet",
        # Declared to be refused by name when not null: Tally has no pricing units yet.
        "applied_pricing_unit",
    }
)
FILTER_KEYS: Final = frozenset({"values", "properties", "invoice_display_name"})
# Lago's client may send cascade_updates on a filter (propagate to overrides): accepted, ignored,
# since overrides are copies taken when a subscription is sold.
_FILTER_INPUT_KEYS: Final = FILTER_KEYS | {"cascade_updates"}
COMMITMENT_KEYS: Final = frozenset({"amount_cents", "invoice_display_name", "tax_codes"})
THRESHOLD_KEYS: Final = frozenset({"id", "amount_cents", "threshold_display_name", "recurring"})
OVERRIDE_KEYS: Final = frozenset(
    {
        "name",
        "invoice_display_name",
        "description",
        "amount_cents",
        "amount_currency",
        "trial_period",
        "tax_codes",
        "minimum_commitment",
        "usage_thresholds",
        "metadata",
        "charges",
        "fixed_charges",
    }
)
CHARGE_OVERRIDE_KEYS: Final = frozenset(
    {"id", "invoice_display_name", "min_amount_cents", "properties", "filters", "tax_codes"}
)
# Lago's BillableMetric#payable_in_advance? (custom_agg aside, which Tally refuses): max, latest
# and weighted sums have no per-event increment to bill (billing-semantics §4.9).
PAY_IN_ADVANCE_AGGREGATION_TYPES: Final = ("count_agg", "sum_agg", "unique_count_agg")
# Lago's Charge#validate_prorated: a recurring metric (never a weighted sum, which is prorated
# by time already), with standard in advance, or standard, volume or graduated in arrears.
PRORATED_IN_ADVANCE_CHARGE_MODELS: Final = ("standard",)
PRORATED_IN_ARREARS_CHARGE_MODELS: Final = ("standard", "volume", "graduated")
REGROUP_PAID_FEES: Final = ("invoice",)


@dataclass(frozen=True)
class MetricInfo:
    """What a plan needs to know of a billable metric to validate a charge on it."""

    id: UUID
    code: str
    aggregation_type: str
    recurring: bool
    filters: Mapping[str, tuple[str, ...]] = field(default_factory=dict)


# --- Field checks ----------------------------------------------------------------------------


def _refuse_unknown(values: Mapping[str, Any], allowed: frozenset[str], path: str) -> None:
    for key, value in values.items():
        if key not in allowed and value is not None:
            raise InvalidValueError(_join(path, str(key)), "unsupported_field", value)


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _mapping(value: Any, path: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise InvalidValueError(path, "value_is_invalid", value)
    return value


def _list(value: Any, path: str) -> Sequence[Any]:
    if not isinstance(value, list | tuple):
        raise InvalidValueError(path, "value_is_invalid", value)
    return value


def _text(value: Any, path: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > TEXT_LENGTH_MAX:
        raise InvalidValueError(path, "value_is_invalid", value)
    return value


def _name(value: Any, path: str) -> str:
    if value is None or (isinstance(value, str) and not value.strip()):
        raise InvalidValueError(path, "value_is_mandatory", value)
    text = _text(value, path)
    assert text is not None
    return text


def _bool(value: Any, path: str, default: bool) -> bool:
    if value is None:
        return default
    if not isinstance(value, bool):
        raise InvalidValueError(path, "value_is_invalid", value)
    return value


def _amount_cents(value: Any, path: str, *, mandatory: bool = True, minimum: int = 0) -> int:
    """Integer minor units: a JSON integer (never a bool, a string or a decimal)."""
    if value is None and mandatory:
        raise InvalidValueError(path, "value_is_mandatory", value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidValueError(path, "value_is_invalid", value)
    if not minimum <= value <= AMOUNT_CENTS_MAX:
        raise InvalidValueError(path, "value_is_out_of_range", value)
    return value


def _trial_period(value: Any) -> str | None:
    """Days, a decimal ≥ 0 (Lago's float, kept exact): its canonical text, or None."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, str | int | Decimal):
        raise InvalidValueError("trial_period", "value_is_invalid", value)
    days = to_decimal(str(value) if isinstance(value, Decimal) else value, "trial_period")
    if days < 0:
        raise InvalidValueError("trial_period", "value_is_out_of_range", value)
    return format(days, "f")


def _tax_codes(value: Any, path: str, existing: frozenset[str]) -> list[str]:
    """Codes of existing taxes, each once, in the order given; an unknown one is refused."""
    codes: list[str] = []
    for code in _list(value, path):
        if not isinstance(code, str) or code not in existing:
            raise InvalidValueError(path, "value_is_invalid", code)
        if code not in codes:
            codes.append(code)
    return codes


def _metadata(value: Any) -> dict[str, str | None]:
    """Lago's plan metadata: {key: string or null}, at most METADATA_MAX keys."""
    metadata = _mapping(value, "metadata")
    if len(metadata) > METADATA_MAX:
        raise InvalidValueError("metadata", "value_is_out_of_range", len(metadata))
    checked: dict[str, str | None] = {}
    for key, item in metadata.items():
        if not isinstance(key, str) or not key.strip() or len(key) > KEY_LENGTH_MAX:
            raise InvalidValueError("metadata", "value_is_invalid", key)
        checked[key] = _text(item, f"metadata.{key}")
    return checked


def _usage_thresholds(value: Any, plan_id: UUID) -> list[dict[str, Any]]:
    """Stored for Lago's response; Tally does not bill progressively yet."""
    thresholds: list[dict[str, Any]] = []
    seen: set[tuple[int, bool]] = set()
    for index, item in enumerate(_list(value, "usage_thresholds")):
        path = f"usage_thresholds.{index}"
        threshold = _mapping(item, path)
        _refuse_unknown(threshold, THRESHOLD_KEYS, path)
        amount_cents = _amount_cents(
            threshold.get("amount_cents"), f"{path}.amount_cents", minimum=1
        )
        recurring = _bool(threshold.get("recurring"), f"{path}.recurring", False)
        if (amount_cents, recurring) in seen:
            raise InvalidValueError(f"{path}.amount_cents", "value_already_exist", amount_cents)
        seen.add((amount_cents, recurring))
        thresholds.append(
            {
                "lago_id": str(ids.usage_threshold_id(plan_id, amount_cents, recurring)),
                "amount_cents": amount_cents,
                "threshold_display_name": _text(
                    threshold.get("threshold_display_name"), f"{path}.threshold_display_name"
                ),
                "recurring": recurring,
            }
        )
    if sum(1 for t in thresholds if t["recurring"]) > 1:
        # Lago allows one recurring threshold per plan.
        raise InvalidValueError("usage_thresholds", "value_already_exist", value)
    return thresholds


def _minimum_commitment(
    value: Any,
    current: Mapping[str, Any] | None,
    plan_id: UUID,
    tax_codes: frozenset[str],
) -> dict[str, Any] | None:
    """Given keys replace the current ones; {} removes the commitment (Lago's update)."""
    commitment = _mapping(value, "minimum_commitment")
    _refuse_unknown(commitment, COMMITMENT_KEYS, "minimum_commitment")
    given = {k: v for k, v in commitment.items() if v is not None}
    if not given:
        return None
    base = current or {}
    codes = base.get("tax_codes", [])
    if "tax_codes" in given:
        codes = _tax_codes(given["tax_codes"], "minimum_commitment.tax_codes", tax_codes)
    return {
        "lago_id": base.get("lago_id") or str(ids.minimum_commitment_id(plan_id)),
        "amount_cents": _amount_cents(
            given.get("amount_cents", base.get("amount_cents")), "minimum_commitment.amount_cents"
        ),
        "invoice_display_name": _text(
            given.get("invoice_display_name", base.get("invoice_display_name")),
            "minimum_commitment.invoice_display_name",
        ),
        "tax_codes": list(codes),
    }


def _refuse_fixed_charges(value: Any) -> None:
    if value is not None and value != []:
        # Tally has no fixed charges yet: refusing them beats silently not billing them.
        raise InvalidValueError("fixed_charges", "unsupported_field", value)


def _uuid_text(value: Any) -> str | None:
    """A UUID's canonical text (lower case, hyphens), or None when value is not one."""
    if not isinstance(value, str):
        return None
    try:
        return str(UUID(value))
    except ValueError:
        return None


# --- Charges ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class _ChargeRequest:
    """One item of `charges`, resolved against the current charges and the metrics."""

    index: int
    item: Mapping[str, Any]
    matched: Mapping[str, Any] | None
    metric: MetricInfo
    code: str | None  # Given or kept; None takes the metric's code (suffixed when repeated).

    @property
    def path(self) -> str:
        return f"charges.{self.index}"


def check_charges(
    items: Any,
    current: Sequence[Mapping[str, Any]],
    *,
    plan_id: UUID,
    metrics: Mapping[str, MetricInfo],
    tax_codes: frozenset[str],
) -> list[dict[str, Any]]:
    """A plan's new charge set from Lago's `charges`, given the current charges.

    An item whose `id` is a current charge's lago_id (else whose `code` is a current charge's)
    updates that charge: it keeps its lago_id and code, and its fields not given (null) keep
    their values. Any other item is a new charge with Lago's defaults; an `id` that matches no
    current charge is ignored, as Lago does. Current charges not matched are removed.
    """
    by_id = {charge["lago_id"]: charge for charge in current}
    by_code = {charge["code"]: charge for charge in current}
    requests: list[_ChargeRequest] = []
    for index, raw in enumerate(_list(items, "charges")):
        path = f"charges.{index}"
        item = _mapping(raw, path)
        _refuse_unknown(item, CHARGE_KEYS, path)
        if item.get("applied_pricing_unit") is not None:
            raise InvalidValueError(
                f"{path}.applied_pricing_unit", "unsupported_field", item["applied_pricing_unit"]
            )
        matched = by_id.get(_uuid_text(item.get("id")) or "")
        code = item.get("code")
        if code is not None:
            if not isinstance(code, str):
                raise InvalidValueError(f"{path}.code", "value_is_invalid", code)
            check_key(code, f"{path}.code")
            if matched is not None and code != matched["code"]:
                # The lago_id derives from the code: a new code is a new charge.
                raise InvalidValueError(f"{path}.code", "value_is_immutable", code)
            matched = matched or by_code.get(code)
        if matched is not None:
            code = matched["code"]
        requests.append(
            _ChargeRequest(index, item, matched, _metric(item, matched, path, metrics), code)
        )
    taken: set[str] = set()
    for request in requests:
        if request.code is not None:
            if request.code in taken:
                raise InvalidValueError(f"{request.path}.code", "value_already_exist", request.code)
            taken.add(request.code)
    charges = []
    for request in requests:
        code = request.code or _default_code(request.metric.code, taken)
        taken.add(code)
        charges.append(_check_charge(request, code, plan_id=plan_id, tax_codes=tax_codes))
    return charges


def _metric(
    item: Mapping[str, Any],
    matched: Mapping[str, Any] | None,
    path: str,
    metrics: Mapping[str, MetricInfo],
) -> MetricInfo:
    raw = item.get("billable_metric_id")
    if raw is None:
        if matched is None:
            raise InvalidValueError(f"{path}.billable_metric_id", "value_is_mandatory", raw)
        raw = matched["billable_metric_id"]
    metric = metrics.get(_uuid_text(raw) or "")
    if metric is None:  # Not a metric of this organization (or deleted since).
        raise InvalidValueError(f"{path}.billable_metric_id", "value_is_invalid", raw)
    return metric


def _default_code(metric_code: str, taken: set[str]) -> str:
    """The metric's code; when taken, with the first free suffix: tokens, tokens_2, tokens_3."""
    code, suffix = metric_code, 1
    while code in taken:
        suffix += 1
        code = f"{metric_code}_{suffix}"
    return code


def _check_charge(
    request: _ChargeRequest, code: str, *, plan_id: UUID, tax_codes: frozenset[str]
) -> dict[str, Any]:
    item, matched, metric, path = request.item, request.matched, request.metric, request.path
    base: Mapping[str, Any] = matched or {}

    def pick(key: str) -> Any:
        value = item.get(key)
        return base.get(key) if value is None else value

    charge_model = pick("charge_model")
    if charge_model is None:
        raise InvalidValueError(f"{path}.charge_model", "value_is_mandatory", charge_model)
    if charge_model not in CHARGE_MODELS:
        raise InvalidValueError(f"{path}.charge_model", "value_is_invalid", charge_model)
    if charge_model == "dynamic" and metric.aggregation_type != "sum_agg":
        # Lago's code (Charge#validate_dynamic): each event's amount is summed.
        raise InvalidValueError(
            f"{path}.charge_model", "invalid_aggregation_type_or_charge_model", charge_model
        )
    model_kept = matched is not None and matched["charge_model"] == charge_model
    properties = item.get("properties")
    if properties is None and model_kept:
        properties = base["properties"]
    properties = parse_properties(charge_model, properties, f"{path}.properties")

    pay_in_advance = _bool(pick("pay_in_advance"), f"{path}.pay_in_advance", False)
    if pay_in_advance and (
        charge_model not in PAY_IN_ADVANCE_CHARGE_MODELS
        or metric.aggregation_type not in PAY_IN_ADVANCE_AGGREGATION_TYPES
    ):
        raise InvalidValueError(
            f"{path}.pay_in_advance", "invalid_aggregation_type_or_charge_model", pay_in_advance
        )
    invoiceable = _bool(pick("invoiceable"), f"{path}.invoiceable", True)
    if not invoiceable and not pay_in_advance:
        raise InvalidValueError(
            f"{path}.invoiceable", "must_be_true_unless_pay_in_advance", invoiceable
        )
    regroup_paid_fees = pick("regroup_paid_fees")
    if regroup_paid_fees is not None:
        if regroup_paid_fees not in REGROUP_PAID_FEES:
            raise InvalidValueError(
                f"{path}.regroup_paid_fees", "value_is_invalid", regroup_paid_fees
            )
        if not pay_in_advance or invoiceable:
            raise InvalidValueError(
                f"{path}.regroup_paid_fees",
                "only_compatible_with_pay_in_advance_and_non_invoiceable",
                regroup_paid_fees,
            )
    prorated = _bool(pick("prorated"), f"{path}.prorated", False)
    if prorated:
        models = (
            PRORATED_IN_ADVANCE_CHARGE_MODELS
            if pay_in_advance
            else PRORATED_IN_ARREARS_CHARGE_MODELS
        )
        if (
            not metric.recurring
            or metric.aggregation_type == "weighted_sum_agg"
            or charge_model not in models
        ):
            raise InvalidValueError(
                f"{path}.prorated", "invalid_billable_metric_or_charge_model", prorated
            )
    min_amount_cents = _min_amount_cents(pick("min_amount_cents"), pay_in_advance, path)
    charge_id = ids.charge_id(plan_id, code)
    filters = item.get("filters")
    if filters is None:
        # Kept filters are checked again: the model or the metric may have changed.
        filters = [{k: f[k] for k in FILTER_KEYS} for f in base.get("filters", [])]
    codes = base.get("tax_codes", [])
    if item.get("tax_codes") is not None:
        codes = _tax_codes(item["tax_codes"], f"{path}.tax_codes", tax_codes)
    return {
        "lago_id": str(charge_id),
        "code": code,
        "billable_metric_id": str(metric.id),
        "billable_metric_code": metric.code,
        "charge_model": charge_model,
        "pay_in_advance": pay_in_advance,
        "invoiceable": invoiceable,
        "regroup_paid_fees": regroup_paid_fees,
        "prorated": prorated,
        "min_amount_cents": min_amount_cents,
        "invoice_display_name": _text(pick("invoice_display_name"), f"{path}.invoice_display_name"),
        "properties": properties,
        "filters": _check_filters(filters, charge_model, metric, charge_id, path),
        "tax_codes": list(codes),
        "accepts_target_wallet": _bool(
            pick("accepts_target_wallet"), f"{path}.accepts_target_wallet", False
        ),
    }


def _min_amount_cents(value: Any, pay_in_advance: bool, path: str) -> int:
    if value is None:
        return 0
    min_amount_cents = _amount_cents(value, f"{path}.min_amount_cents")
    if pay_in_advance and min_amount_cents > 0:
        # §4.10: a minimum is trued up at period end, which an in-advance charge never reaches.
        raise InvalidValueError(
            f"{path}.min_amount_cents", "not_compatible_with_pay_in_advance", min_amount_cents
        )
    return min_amount_cents


def _check_filters(
    value: Any, charge_model: str, metric: MetricInfo, charge_id: UUID, path: str
) -> list[dict[str, Any]]:
    """Charge filters: the metric's keys and values, one bucket per event (D13), each priced
    with the charge's model."""
    filters_path = f"{path}.filters"
    checked: list[dict[str, Any]] = []
    for index, raw in enumerate(_list(value, filters_path)):
        item_path = f"{filters_path}.{index}"
        item = _mapping(raw, item_path)
        _refuse_unknown(item, _FILTER_INPUT_KEYS, item_path)
        values = item.get("values")
        if values is None:
            raise InvalidValueError(f"{item_path}.values", "value_is_mandatory", values)
        values = _mapping(values, f"{item_path}.values")
        canonical_values: dict[str, list[str]] = {}
        for key, key_values in values.items():
            if not isinstance(key, str) or not all(
                isinstance(v, str) for v in _list(key_values, f"{item_path}.values")
            ):
                raise InvalidValueError(f"{item_path}.values", "value_is_invalid", values)
            canonical_values[key] = list(key_values)
        properties = item.get("properties")
        if properties is None:
            # Lago validates a filter's properties with the charge's model: they are mandatory.
            raise InvalidValueError(f"{item_path}.properties", "value_is_mandatory", properties)
        filter_key = json.dumps(
            {key: sorted(v) for key, v in sorted(canonical_values.items())},
            separators=(",", ":"),
        )
        checked.append(
            {
                "lago_id": str(ids.charge_filter_id(charge_id, filter_key)),
                "values": canonical_values,
                "properties": parse_properties(charge_model, properties, f"{item_path}.properties"),
                "invoice_display_name": _text(
                    item.get("invoice_display_name"), f"{item_path}.invoice_display_name"
                ),
            }
        )
    try:
        check_charge_filters([f["values"] for f in checked], metric.filters)
    except InvalidValueError as error:
        raise InvalidValueError(filters_path, error.reason, error.value) from None
    return checked


# --- Definitions -----------------------------------------------------------------------------


def check_definition(
    values: Mapping[str, Any],
    *,
    plan_id: UUID,
    metrics: Mapping[str, MetricInfo],
    tax_codes: frozenset[str],
    current: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """A complete plan definition from Lago's plan fields, validated and canonical.

    Without `current` it is a create: Lago's mandatory fields must be there. With it, Lago's PUT:
    given fields replace the current ones, null means not given; `charges` given replaces the
    charge set (check_charges). Tax codes are checked where given (existing taxes only); kept
    ones are not checked again, so deleting a tax never blocks editing a plan.
    """
    _refuse_unknown(values, PLAN_KEYS, "")
    given = {key: value for key, value in values.items() if value is not None}
    _refuse_fixed_charges(given.get("fixed_charges"))
    base: Mapping[str, Any] = current or {}
    if current is not None:
        for key in IMMUTABLE_FIELDS:
            if key in given and given[key] != current[key]:
                raise InvalidValueError(key, "value_is_immutable", given[key])

    def pick(key: str) -> Any:
        return given.get(key, base.get(key))

    interval = pick("interval")
    if interval is None:
        raise InvalidValueError("interval", "value_is_mandatory", interval)
    check_interval(interval)
    currency = pick("amount_currency")
    if currency is None:
        raise InvalidValueError("amount_currency", "value_is_mandatory", currency)
    check_currency(currency, "amount_currency")
    pay_in_advance = pick("pay_in_advance")
    if pay_in_advance is None:
        raise InvalidValueError("pay_in_advance", "value_is_mandatory", pay_in_advance)
    charges_monthly = interval in CHARGES_MONTHLY_INTERVALS
    definition = {
        "name": _name(pick("name"), "name"),
        "invoice_display_name": _text(pick("invoice_display_name"), "invoice_display_name"),
        "description": _text(pick("description"), "description"),
        "interval": interval,
        "amount_cents": _amount_cents(pick("amount_cents"), "amount_cents"),
        "amount_currency": currency,
        "pay_in_advance": _bool(pay_in_advance, "pay_in_advance", False),
        "trial_period": _trial_period(pick("trial_period")),
        # Lago stores null for the intervals where billing monthly means nothing
        # (getlago/lago-api: app/services/plans/create_service.rb).
        "bill_charges_monthly": (
            _bool(pick("bill_charges_monthly"), "bill_charges_monthly", False)
            if charges_monthly
            else None
        ),
        "bill_fixed_charges_monthly": (
            _bool(pick("bill_fixed_charges_monthly"), "bill_fixed_charges_monthly", False)
            if charges_monthly
            else None
        ),
        "tax_codes": (
            _tax_codes(given["tax_codes"], "tax_codes", tax_codes)
            if "tax_codes" in given
            else list(base.get("tax_codes", []))
        ),
        "minimum_commitment": (
            _minimum_commitment(
                given["minimum_commitment"], base.get("minimum_commitment"), plan_id, tax_codes
            )
            if "minimum_commitment" in given
            else copy.deepcopy(base.get("minimum_commitment"))
        ),
        "usage_thresholds": (
            _usage_thresholds(given["usage_thresholds"], plan_id)
            if "usage_thresholds" in given
            else copy.deepcopy(base.get("usage_thresholds", []))
        ),
        "metadata": (
            _metadata(given["metadata"]) if "metadata" in given else dict(base.get("metadata", {}))
        ),
        "charges": (
            check_charges(
                given["charges"],
                base.get("charges", []),
                plan_id=plan_id,
                metrics=metrics,
                tax_codes=tax_codes,
            )
            if "charges" in given
            else copy.deepcopy(base.get("charges", []))
        ),
    }
    return definition


def apply_overrides(
    definition: Mapping[str, Any],
    overrides: Mapping[str, Any],
    metrics: Mapping[str, MetricInfo],
    tax_codes: frozenset[str],
    *,
    plan_id: UUID,
) -> dict[str, Any]:
    """Lago's plan_overrides applied to a definition: a new definition, the input untouched.

    Plan fields: name, invoice_display_name, description, amount_cents, amount_currency,
    trial_period, tax_codes, minimum_commitment (given keys replace), usage_thresholds and
    metadata (replace). Charges are matched by `id` (the charge's lago_id; an unknown one is
    refused) and take invoice_display_name, min_amount_cents, properties (in the charge's own
    model), filters (the set is replaced) and tax_codes; they keep their lago_ids. `plan_id` is
    the override plan's id, for a minimum commitment the definition did not have.
    """
    _refuse_unknown(overrides, OVERRIDE_KEYS, "")
    given = {key: value for key, value in overrides.items() if value is not None}
    _refuse_fixed_charges(given.get("fixed_charges"))
    result = copy.deepcopy(dict(definition))
    if "name" in given:
        result["name"] = _name(given["name"], "name")
    for key in ("invoice_display_name", "description"):
        if key in given:
            result[key] = _text(given[key], key)
    if "amount_cents" in given:
        result["amount_cents"] = _amount_cents(given["amount_cents"], "amount_cents")
    if "amount_currency" in given:
        result["amount_currency"] = check_currency(given["amount_currency"], "amount_currency")
    if "trial_period" in given:
        result["trial_period"] = _trial_period(given["trial_period"])
    if "tax_codes" in given:
        result["tax_codes"] = _tax_codes(given["tax_codes"], "tax_codes", tax_codes)
    if "minimum_commitment" in given:
        result["minimum_commitment"] = _minimum_commitment(
            given["minimum_commitment"], result.get("minimum_commitment"), plan_id, tax_codes
        )
    if "usage_thresholds" in given:
        result["usage_thresholds"] = _usage_thresholds(given["usage_thresholds"], plan_id)
    if "metadata" in given:
        result["metadata"] = _metadata(given["metadata"])
    if "charges" in given:
        result["charges"] = _override_charges(
            given["charges"], result["charges"], metrics, tax_codes
        )
    return result


def _override_charges(
    items: Any,
    charges: list[dict[str, Any]],
    metrics: Mapping[str, MetricInfo],
    tax_codes: frozenset[str],
) -> list[dict[str, Any]]:
    by_id = {charge["lago_id"]: index for index, charge in enumerate(charges)}
    seen: set[int] = set()
    for index, raw in enumerate(_list(items, "charges")):
        path = f"charges.{index}"
        item = _mapping(raw, path)
        _refuse_unknown(item, CHARGE_OVERRIDE_KEYS, path)
        position = by_id.get(_uuid_text(item.get("id")) or "")
        if position is None:
            raise InvalidValueError(f"{path}.id", "value_is_invalid", item.get("id"))
        if position in seen:
            raise InvalidValueError(f"{path}.id", "value_already_exist", item.get("id"))
        seen.add(position)
        charge = charges[position]
        model = charge["charge_model"]
        if item.get("invoice_display_name") is not None:
            charge["invoice_display_name"] = _text(
                item["invoice_display_name"], f"{path}.invoice_display_name"
            )
        if item.get("min_amount_cents") is not None:
            charge["min_amount_cents"] = _min_amount_cents(
                item["min_amount_cents"], charge["pay_in_advance"], path
            )
        if item.get("properties") is not None:
            charge["properties"] = parse_properties(model, item["properties"], f"{path}.properties")
        if item.get("filters") is not None:
            metric = metrics.get(charge["billable_metric_id"])
            if metric is None:
                raise InvalidValueError(
                    f"{path}.billable_metric_id", "value_is_invalid", charge["billable_metric_id"]
                )
            charge_id = UUID(charge["lago_id"])
            charge["filters"] = _check_filters(item["filters"], model, metric, charge_id, path)
        if item.get("tax_codes") is not None:
            charge["tax_codes"] = _tax_codes(item["tax_codes"], f"{path}.tax_codes", tax_codes)
    return charges


def referenced_metric_ids(values: Mapping[str, Any]) -> set[str]:
    """The billable metric ids that Lago's plan fields name, as sent (for loading them)."""
    charges = values.get("charges")
    if not isinstance(charges, list | tuple):
        return set()
    return {
        charge["billable_metric_id"]
        for charge in charges
        if isinstance(charge, Mapping) and isinstance(charge.get("billable_metric_id"), str)
    }


def referenced_tax_codes(values: Mapping[str, Any]) -> set[str]:
    """The tax codes that Lago's plan fields (or plan overrides) name, for loading them."""
    lists: list[Any] = [values.get("tax_codes")]
    commitment = values.get("minimum_commitment")
    if isinstance(commitment, Mapping):
        lists.append(commitment.get("tax_codes"))
    charges = values.get("charges")
    if isinstance(charges, list | tuple):
        lists.extend(c.get("tax_codes") for c in charges if isinstance(c, Mapping))
    return {
        code
        for codes in lists
        if isinstance(codes, list | tuple)
        for code in codes
        if isinstance(code, str)
    }


def charge_metric_ids(definition: Mapping[str, Any]) -> set[str]:
    """The billable metric ids a definition's charges are on."""
    return {charge["billable_metric_id"] for charge in definition.get("charges", [])}


# --- The aggregate ---------------------------------------------------------------------------


class Plan(BaseAggregate[UUID]):
    TOPIC = "tally.Plan"

    class Event(AggregateEvent):
        pass

    class Created(AggregateCreated, Event):
        TOPIC = "tally.Plan.Created"
        organization_id: UUID
        code: str
        definition: dict[str, Any]

    class OverrideCreated(AggregateCreated, Event):
        """A subscription's own copy of a plan (Lago's plan_overrides): not in the plan list."""

        TOPIC = "tally.Plan.OverrideCreated"
        organization_id: UUID
        code: str
        definition: dict[str, Any]
        parent_id: UUID
        parent_version: int
        subscription_external_id: str

        def apply(self, aggregate: Any) -> None:
            # Runs after __init__ on creation and on every replay: it only assigns.
            aggregate.parent_id = self.parent_id
            aggregate.parent_version = self.parent_version
            aggregate.subscription_external_id = self.subscription_external_id

    class Versioned(Event):
        """A new definition; the earlier ones stay as they were."""

        TOPIC = "tally.Plan.Versioned"
        definition: dict[str, Any]

    class Deleted(Event):
        TOPIC = "tally.Plan.Deleted"

    @staticmethod
    def create_id(organization_id: UUID, code: str) -> UUID:
        return ids.plan_id(organization_id, code)

    # Commands decide.

    @classmethod
    def create(
        cls,
        organization_id: UUID,
        code: str,
        values: Mapping[str, Any],
        *,
        metrics: Mapping[str, MetricInfo],
        tax_codes: frozenset[str],
    ) -> "Plan":
        if not isinstance(code, str) or not code:
            raise InvalidValueError("code", "value_is_mandatory", code)
        check_key(code, "code")
        definition = check_definition(
            values,
            plan_id=ids.plan_id(organization_id, code),
            metrics=metrics,
            tax_codes=tax_codes,
        )
        return cls(organization_id=organization_id, code=code, definition=definition)

    @classmethod
    def create_override(
        cls,
        parent: "Plan",
        subscription_external_id: str,
        overrides: Mapping[str, Any],
        *,
        metrics: Mapping[str, MetricInfo],
        tax_codes: frozenset[str],
    ) -> "Plan":
        """A subscription's copy of the parent's latest version, with Lago's plan_overrides."""
        assert not parent.is_override, parent.id
        override_id = ids.plan_override_id(
            parent.organization_id, parent.id, subscription_external_id
        )
        definition = apply_overrides(
            parent.definition(), overrides, metrics, tax_codes, plan_id=override_id
        )
        return cls._create(
            cls.OverrideCreated,
            id=override_id,
            organization_id=parent.organization_id,
            code=parent.code,
            definition=definition,
            parent_id=parent.id,
            parent_version=parent.version_number,
            subscription_external_id=subscription_external_id,
        )

    def update(
        self,
        values: Mapping[str, Any],
        *,
        metrics: Mapping[str, MetricInfo],
        tax_codes: frozenset[str],
    ) -> None:
        """Lago's PUT /plans/{code}: a new version, unless nothing changes."""
        definition = check_definition(
            values,
            plan_id=self.id,
            metrics=metrics,
            tax_codes=tax_codes,
            current=self.definitions[-1],
        )
        self._version_if_changed(definition)

    def override(
        self,
        overrides: Mapping[str, Any],
        *,
        metrics: Mapping[str, MetricInfo],
        tax_codes: frozenset[str],
    ) -> None:
        """More plan_overrides on an override plan: applied to its latest version."""
        assert self.is_override, self.id
        current = self.definitions[-1]
        definition = apply_overrides(current, overrides, metrics, tax_codes, plan_id=self.id)
        # The subscription already runs in its currency: as for a plan, another is another plan.
        if definition["amount_currency"] != current["amount_currency"]:
            raise InvalidValueError(
                "amount_currency", "value_is_immutable", definition["amount_currency"]
            )
        self._version_if_changed(definition)

    def delete(self) -> None:
        """Removes the plan from the catalog; subscriptions keep the versions they use."""
        assert not self.is_override, self.id  # Overrides live and end with their subscription.
        if not self.deleted:
            self._deleted()

    def _version_if_changed(self, definition: dict[str, Any]) -> None:
        if definition != self.definitions[-1]:
            self._versioned(definition=definition)

    # Evolvers apply.

    @event(Created)
    def __init__(self, organization_id: UUID, code: str, definition: dict[str, Any]) -> None:
        self.organization_id = organization_id
        self.code = code
        self.definitions: list[dict[str, Any]] = [definition]
        self.versioned_on: list[datetime] = [self.modified_on]
        self.parent_id: UUID | None = None  # OverrideCreated.apply sets these three.
        self.parent_version: int | None = None
        self.subscription_external_id: str | None = None
        self.deleted = False
        self.deleted_at: datetime | None = None

    @event(Versioned)
    def _versioned(self, definition: dict[str, Any]) -> None:
        self.definitions.append(definition)
        self.versioned_on.append(self.modified_on)

    @event(Deleted)
    def _deleted(self) -> None:
        self.deleted = True
        self.deleted_at = self.modified_on

    # Queries.

    @property
    def is_override(self) -> bool:
        return self.parent_id is not None

    @property
    def version_number(self) -> int:
        """How many definitions the plan has had; the latest is this one (1-based)."""
        return len(self.definitions)

    def has_version(self, version: int) -> bool:
        return 1 <= version <= len(self.definitions)

    def definition(self, version: int | None = None) -> dict[str, Any]:
        """A copy of the definition at this version (1-based), the latest by default."""
        version = self.version_number if version is None else version
        assert self.has_version(version), version
        return copy.deepcopy(self.definitions[version - 1])

    def definition_shared(self, version: int | None = None) -> Mapping[str, Any]:
        """The definition at this version itself, for readers that never change it: the
        billing run reads one for every subscription, and a copy cost more than the rest."""
        version = self.version_number if version is None else version
        assert self.has_version(version), version
        return self.definitions[version - 1]

    def version_created_at(self, version: int | None = None) -> datetime:
        version = self.version_number if version is None else version
        assert self.has_version(version), version
        return self.versioned_on[version - 1]

    def first_seen_at(self, lago_id: str, version: int | None = None) -> datetime:
        """When an item (charge, filter, commitment, threshold) with this lago_id first appeared
        in the definitions up to this version: its created_at on the wire."""
        version = self.version_number if version is None else version
        for number in range(1, version + 1):
            if _mentions(self.definitions[number - 1], lago_id):
                return self.versioned_on[number - 1]
        return self.version_created_at(version)


def _mentions(definition: Mapping[str, Any], lago_id: str) -> bool:
    items: list[Mapping[str, Any]] = [*definition["charges"], *definition["usage_thresholds"]]
    items.extend(f for charge in definition["charges"] for f in charge["filters"])
    if definition["minimum_commitment"] is not None:
        items.append(definition["minimum_commitment"])
    return any(item["lago_id"] == lago_id for item in items)


__all__ = [
    "MetricInfo",
    "Plan",
    "apply_overrides",
    "charge_metric_ids",
    "check_charges",
    "check_definition",
    "referenced_metric_ids",
    "referenced_tax_codes",
]
