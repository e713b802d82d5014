"""Plans: create, edit (each edit a new version), read any version, delete; per-subscription
overrides. The application loads the metrics and taxes a plan names; the Plan decides."""

from collections.abc import Iterable, Mapping
from typing import Any
from uuid import UUID

from eventsourcing.application import AggregateNotFoundError

from application.base import BillingBase
from application.errors import NotFoundError
from domain import ids
from domain.billable_metric import BillableMetric
from domain.plan import (
    MetricInfo,
    Plan,
    charge_metric_ids,
    referenced_metric_ids,
    referenced_tax_codes,
)
from domain.tax import Tax


class PlanCommands(BillingBase):
    def create_plan(self, organization_id: UUID, code: str, values: Mapping[str, Any]) -> Plan:
        """Lago's POST /plans: version 1 of a new plan; a code in use (even deleted) is refused."""
        plan = Plan.create(
            organization_id,
            code,
            values,
            metrics=self._metrics(organization_id, referenced_metric_ids(values)),
            tax_codes=self._existing_tax_codes(organization_id, referenced_tax_codes(values)),
        )
        return self._create_new(plan, "code", code)

    def update_plan(self, organization_id: UUID, code: str, values: Mapping[str, Any]) -> Plan:
        """Lago's PUT /plans/{code}: a new version with the given fields, if anything changes."""

        def decide() -> Plan:
            plan = self.plan(organization_id, code)
            metric_ids = referenced_metric_ids(values) | charge_metric_ids(plan.definition())
            plan.update(
                values,
                metrics=self._metrics(organization_id, metric_ids),
                tax_codes=self._existing_tax_codes(organization_id, referenced_tax_codes(values)),
            )
            return plan

        return self._command("plan", code, decide)

    def plan(self, organization_id: UUID, code: str) -> Plan:
        plan = self._get(
            Plan, ids.plan_id(organization_id, code), organization_id, NotFoundError("plan", code)
        )
        if plan.deleted:
            raise NotFoundError("plan", code)
        return plan

    def plan_version(self, organization_id: UUID, code: str, version: int) -> Plan:
        """The plan, checked to have this version (read it with plan.definition(version))."""
        plan = self.plan(organization_id, code)
        if not plan.has_version(version):
            raise NotFoundError("plan", f"{code} version {version}")
        return plan

    def plan_by_id(self, organization_id: UUID, plan_id: UUID) -> Plan:
        """A plan or an override plan by its id, deleted or not: subscriptions keep using the
        versions they were sold, whatever happened to the plan since."""
        return self._get(Plan, plan_id, organization_id, NotFoundError("plan", plan_id))

    def plans(self, organization_id: UUID, page: int, per_page: int) -> tuple[list[Plan], int]:
        """The catalog, newest first; override plans are not in it."""
        return self._page(Plan, "plan", organization_id, page, per_page, ["active"])

    def delete_plan(self, organization_id: UUID, code: str) -> Plan:
        def decide() -> Plan:
            plan = self.plan(organization_id, code)
            plan.delete()
            return plan

        return self._command("plan", code, decide)

    def create_plan_override(
        self,
        organization_id: UUID,
        plan_code: str,
        subscription_external_id: str,
        overrides: Mapping[str, Any],
    ) -> Plan:
        """A subscription's copy of a plan with Lago's plan_overrides, or a new version of the
        copy it already has (the overrides then apply to that copy's latest version)."""
        parent = self.plan(organization_id, plan_code)
        override_id = ids.plan_override_id(organization_id, parent.id, subscription_external_id)
        tax_codes = self._existing_tax_codes(organization_id, referenced_tax_codes(overrides))

        def decide() -> Plan:
            try:
                existing: Plan = self.repository.get(override_id)
            except AggregateNotFoundError:
                metrics = self._metrics(organization_id, charge_metric_ids(parent.definition()))
                return Plan.create_override(
                    parent,
                    subscription_external_id,
                    overrides,
                    metrics=metrics,
                    tax_codes=tax_codes,
                )
            metrics = self._metrics(organization_id, charge_metric_ids(existing.definition()))
            existing.override(overrides, metrics=metrics, tax_codes=tax_codes)
            return existing

        return self._command("plan", plan_code, decide)

    def plan_taxes(
        self, organization_id: UUID, plan: Plan, version: int | None = None
    ) -> dict[str, Tax]:
        """The taxes a plan version names (plan, charges, commitment), by code. A tax deleted
        since still shows: the version names it."""
        definition = plan.definition(version)
        codes = set(definition["tax_codes"])
        for charge in definition["charges"]:
            codes.update(charge["tax_codes"])
        if definition["minimum_commitment"] is not None:
            codes.update(definition["minimum_commitment"]["tax_codes"])
        taxes: dict[str, Tax] = {}
        for code in sorted(codes):
            try:
                taxes[code] = self._get(
                    Tax,
                    ids.tax_id(organization_id, code),
                    organization_id,
                    NotFoundError("tax", code),
                )
            except NotFoundError:
                continue  # Never recorded: cannot happen for a version the Plan accepted.
        return taxes

    def _metrics(self, organization_id: UUID, metric_ids: Iterable[str]) -> dict[str, MetricInfo]:
        """The organization's live metrics among these ids, keyed by canonical id text."""
        metrics: dict[str, MetricInfo] = {}
        for raw in metric_ids:
            try:
                metric_id = UUID(raw)
            except ValueError:
                continue  # The Plan names the field.
            try:
                metric = self._get(
                    BillableMetric,
                    metric_id,
                    organization_id,
                    NotFoundError("billable_metric", metric_id),
                )
            except NotFoundError:
                continue
            if metric.deleted:
                continue
            metrics[str(metric.id)] = MetricInfo(
                id=metric.id,
                code=metric.code,
                aggregation_type=metric.aggregation_type,
                recurring=metric.definition["recurring"],
                filters={f["key"]: tuple(f["values"]) for f in metric.definition["filters"]},
            )
        return metrics

    def _existing_tax_codes(self, organization_id: UUID, codes: Iterable[str]) -> frozenset[str]:
        """Which of these tax codes name a live tax of the organization."""
        existing = set()
        for code in codes:
            try:
                tax = self._get(
                    Tax,
                    ids.tax_id(organization_id, code),
                    organization_id,
                    NotFoundError("tax", code),
                )
            except NotFoundError:
                continue
            if not tax.deleted:
                existing.add(code)
        return frozenset(existing)
