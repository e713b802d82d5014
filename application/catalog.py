"""What an integrator configures before usage arrives: taxes, add-ons and billable metrics."""

from collections.abc import Mapping
from typing import Any
from uuid import UUID

from application.base import BillingBase
from application.errors import NotFoundError
from domain import ids
from domain.add_on import AddOn
from domain.billable_metric import BillableMetric
from domain.tax import Tax


class CatalogCommands(BillingBase):
    # Taxes.

    def create_tax(self, organization_id: UUID, code: str, values: Mapping[str, Any]) -> Tax:
        return self._create_new(Tax.create(organization_id, code, values), "code", code)

    def update_tax(self, organization_id: UUID, code: str, values: Mapping[str, Any]) -> Tax:
        def decide() -> Tax:
            tax = self.tax(organization_id, code)
            tax.update(values)
            return tax

        return self._command("tax", code, decide)

    def tax(self, organization_id: UUID, code: str) -> Tax:
        tax = self._get(
            Tax, ids.tax_id(organization_id, code), organization_id, NotFoundError("tax", code)
        )
        if tax.deleted:
            raise NotFoundError("tax", code)
        return tax

    def taxes(self, organization_id: UUID, page: int, per_page: int) -> tuple[list[Tax], int]:
        return self._page(Tax, "tax", organization_id, page, per_page, ["active"])

    def delete_tax(self, organization_id: UUID, code: str) -> Tax:
        def decide() -> Tax:
            tax = self.tax(organization_id, code)
            tax.delete()
            return tax

        return self._command("tax", code, decide)

    # Add-ons.

    def create_add_on(self, organization_id: UUID, code: str, values: Mapping[str, Any]) -> AddOn:
        self._check_add_on_taxes(organization_id, values)
        return self._create_new(AddOn.create(organization_id, code, values), "code", code)

    def update_add_on(self, organization_id: UUID, code: str, values: Mapping[str, Any]) -> AddOn:
        self._check_add_on_taxes(organization_id, values)

        def decide() -> AddOn:
            add_on = self.add_on(organization_id, code)
            add_on.update(values)
            return add_on

        return self._command("add_on", code, decide)

    def add_on(self, organization_id: UUID, code: str) -> AddOn:
        missing = NotFoundError("add_on", code)
        add_on = self._get(AddOn, ids.add_on_id(organization_id, code), organization_id, missing)
        if add_on.deleted:
            raise missing
        return add_on

    def add_ons(self, organization_id: UUID, page: int, per_page: int) -> tuple[list[AddOn], int]:
        return self._page(AddOn, "add_on", organization_id, page, per_page, ["active"])

    def delete_add_on(self, organization_id: UUID, code: str) -> AddOn:
        def decide() -> AddOn:
            add_on = self.add_on(organization_id, code)
            add_on.delete()
            return add_on

        return self._command("add_on", code, decide)

    def _check_add_on_taxes(self, organization_id: UUID, values: Mapping[str, Any]) -> None:
        codes = values.get("tax_codes")
        for code in codes if isinstance(codes, list) else []:
            if isinstance(code, str):
                self.tax(organization_id, code)  # 404 naming the tax when it does not exist.

    # Billable metrics.

    def create_billable_metric(
        self, organization_id: UUID, code: str, values: Mapping[str, Any]
    ) -> BillableMetric:
        metric = BillableMetric.create(organization_id, code, values)
        return self._create_new(metric, "code", code)

    def update_billable_metric(
        self, organization_id: UUID, code: str, values: Mapping[str, Any]
    ) -> BillableMetric:
        def decide() -> BillableMetric:
            metric = self.billable_metric(organization_id, code)
            metric.update(values)
            return metric

        return self._command("billable_metric", code, decide)

    def billable_metric(self, organization_id: UUID, code: str) -> BillableMetric:
        metric = self._get(
            BillableMetric,
            ids.billable_metric_id(organization_id, code),
            organization_id,
            NotFoundError("billable_metric", code),
        )
        if metric.deleted:
            raise NotFoundError("billable_metric", code)
        return metric

    def billable_metrics(
        self, organization_id: UUID, page: int, per_page: int
    ) -> tuple[list[BillableMetric], int]:
        return self._page(
            BillableMetric, "billable_metric", organization_id, page, per_page, ["active"]
        )

    def delete_billable_metric(self, organization_id: UUID, code: str) -> BillableMetric:
        def decide() -> BillableMetric:
            metric = self.billable_metric(organization_id, code)
            metric.delete()
            return metric

        return self._command("billable_metric", code, decide)
