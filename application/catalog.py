"""What an integrator configures before usage arrives: taxes and billable metrics."""

from collections.abc import Mapping
from typing import Any
from uuid import UUID

from application.base import BillingBase
from application.errors import NotFoundError
from domain import ids
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
