"""Tally's finance extensions (the journal, its trial balance and reports, each also as CSV) and
Lago's analytics endpoints, all read from the journal projection (ADR 0019)."""

import csv
import io
from collections.abc import Iterable, Sequence
from datetime import date
from decimal import Decimal
from typing import Annotated, Any
from uuid import UUID

import msgspec
from litestar import Controller, Request, Response, get
from litestar.di import NamedDependency, Provide
from litestar.params import FromQuery, QueryParameter

from api.http import Output, PaginationMeta, decimal_string, iso, meta, pagination
from api.problems import BadQueryError
from application.journal import Journal, JournalRow, RowFilter
from application.payments import Payments
from domain.errors import InvalidValueError
from domain.journal import CHART
from domain.money import CURRENCY_EXPONENTS

CSV_MEDIA_TYPE = "text/csv"  # Litestar adds "; charset=utf-8".
# The export accounting software imports (`tally journal export` writes the same).
EXPORT_COLUMNS = ("account", "debit", "credit", "currency", "reference", "date")


def provide_journal(request: Request[Any, Any, Any]) -> Journal:
    journal: Journal = request.app.state.ledger.journal
    return journal


_DEPENDENCIES = {"journal": Provide(provide_journal, sync_to_thread=False)}
FromParam = Annotated[str | None, QueryParameter(name="from")]


# Journal entries and the trial balance.


class JournalEntryObject(Output):
    transaction_id: str
    line: int
    kind: str
    date: str
    account: str
    account_name: str
    debit_amount_cents: int
    credit_amount_cents: int
    currency: str
    reference: str
    lago_customer_id: UUID
    external_customer_id: str
    lago_invoice_id: UUID | None
    lago_credit_note_id: UUID | None
    lago_wallet_id: UUID | None
    product_line: str | None
    billable_metric_code: str | None
    fee_type: str | None
    country: str | None
    tax_code: str | None
    tax_rate: str | None
    taxable_base_amount_cents: int | None


class JournalEntriesResponse(Output):
    journal_entries: list[JournalEntryObject]
    meta: PaginationMeta


class TrialBalanceLineObject(Output):
    account: str
    account_name: str
    account_type: str
    currency: str
    debit_amount_cents: int
    credit_amount_cents: int
    balance_amount_cents: int  # Debit minus credit.


class TrialBalanceTotalObject(Output):
    currency: str
    debit_amount_cents: int
    credit_amount_cents: int


class TrialBalanceObject(Output):
    at: str
    balanced: bool
    lines: list[TrialBalanceLineObject]
    totals: list[TrialBalanceTotalObject]


class TrialBalanceResponse(Output):
    trial_balance: TrialBalanceObject


def entry_object(row: JournalRow) -> JournalEntryObject:
    return JournalEntryObject(
        transaction_id=row.transaction_id,
        line=row.line,
        kind=row.kind,
        date=row.posted_on.isoformat(),
        account=row.account,
        account_name=CHART[row.account].name,
        debit_amount_cents=row.debit_cents,
        credit_amount_cents=row.credit_cents,
        currency=row.currency,
        reference=row.reference,
        lago_customer_id=row.customer_id,
        external_customer_id=row.external_customer_id,
        lago_invoice_id=row.invoice_id,
        lago_credit_note_id=row.credit_note_id,
        lago_wallet_id=row.wallet_id,
        product_line=row.product_line,
        billable_metric_code=row.metric_code,
        fee_type=row.fee_type,
        country=row.country,
        tax_code=row.tax_code,
        tax_rate=decimal_string(row.tax_rate),
        taxable_base_amount_cents=row.base_cents,
    )


class JournalController(Controller):
    path = "/journal"
    tags = ("Journal",)
    dependencies = _DEPENDENCIES

    @get("/entries", operation_id="findAllJournalEntries", sync_to_thread=True)
    def entries(
        self,
        request: Request[Any, Any, Any],
        journal: NamedDependency[Journal],
        organization_id: NamedDependency[UUID],
        page: FromQuery[int | None] = None,
        per_page: FromQuery[int | None] = None,
        account: FromQuery[str | None] = None,
        date_from: FromParam = None,
        to: FromQuery[str | None] = None,
        currency: FromQuery[str | None] = None,
        external_customer_id: FromQuery[str | None] = None,
        kind: FromQuery[str | None] = None,
        invoice_id: FromQuery[str | None] = None,
        reference: FromQuery[str | None] = None,
        format: FromQuery[str | None] = None,
    ) -> Response[Any]:
        """Tally extension: journal entries in posting order, with filters; as CSV (every
        matching entry, in accounting software's columns) with `Accept: text/csv` or
        `format=csv`."""
        if account is not None and account not in CHART:
            raise InvalidValueError("account", "value_is_invalid", account)
        row_filter = RowFilter(
            organization_id=organization_id,
            posted_from=_date(date_from, "from"),
            posted_to=_date(to, "to"),
            accounts=(account,) if account else (),
            currency=currency,
            external_customer_id=external_customer_id,
            kind=kind,
            invoice_id=_uuid(invoice_id, "invoice_id"),
            reference=reference,
        )
        if _wants_csv(request, format):
            return _csv(EXPORT_COLUMNS, export_lines(journal.rows(row_filter)))
        page, per_page = pagination(page, per_page)
        rows, total = journal.entries(row_filter, page, per_page)
        return Response(
            JournalEntriesResponse(
                journal_entries=[entry_object(row) for row in rows],
                meta=meta(page, per_page, total),
            )
        )

    @get("/trial_balance", operation_id="findTrialBalance", sync_to_thread=True)
    def trial_balance(
        self,
        request: Request[Any, Any, Any],
        journal: NamedDependency[Journal],
        organization_id: NamedDependency[UUID],
        at: FromQuery[str | None] = None,
        format: FromQuery[str | None] = None,
    ) -> Response[Any]:
        """Tally extension: every account's debits and credits up to a date (`at`, included;
        default today), per currency; debits equal credits."""
        day = _date(at, "at") or journal.billing.now().date()
        balance = journal.trial_balance(organization_id, day)
        lines = [
            TrialBalanceLineObject(
                account=line.account,
                account_name=line.name,
                account_type=line.type,
                currency=line.currency,
                debit_amount_cents=line.debit_cents,
                credit_amount_cents=line.credit_cents,
                balance_amount_cents=line.balance_cents,
            )
            for line in balance.lines
        ]
        if _wants_csv(request, format):
            return _csv_objects(lines, TrialBalanceLineObject)
        return Response(
            TrialBalanceResponse(
                trial_balance=TrialBalanceObject(
                    at=day.isoformat(),
                    balanced=balance.balanced,
                    lines=lines,
                    totals=[
                        TrialBalanceTotalObject(
                            currency=t.currency,
                            debit_amount_cents=t.debit_cents,
                            credit_amount_cents=t.credit_cents,
                        )
                        for t in balance.totals
                    ],
                )
            )
        )


# Reports.


class ReceivablesAgeingObject(Output):
    external_customer_id: str
    invoice_number: str | None
    currency: str
    current_amount_cents: int
    days_1_30_amount_cents: int
    days_31_60_amount_cents: int
    days_61_90_amount_cents: int
    days_over_90_amount_cents: int
    total_amount_cents: int


class WalletLiabilityObject(Output):
    external_customer_id: str
    lago_wallet_id: UUID | None
    currency: str
    paid_amount_cents: int
    granted_amount_cents: int
    total_amount_cents: int
    awaiting_payment_amount_cents: int


class RevenueObject(Output, omit_defaults=True):
    """One group: only the dimensions asked for are present."""

    currency: str
    amount_cents: int
    month: str | None = None
    product_line: str | None = None
    external_customer_id: str | None = None
    country: str | None = None


class VatObject(Output):
    country: str | None
    tax_code: str | None
    tax_rate: str | None
    currency: str
    taxable_base_amount_cents: int
    taxes_amount_cents: int


class ReceivablesAgeingResponse(Output):
    receivables_ageing: list[ReceivablesAgeingObject]


class WalletLiabilityResponse(Output):
    wallet_liability: list[WalletLiabilityObject]


class RevenueResponse(Output):
    revenue: list[RevenueObject]


class VatResponse(Output):
    vat: list[VatObject]


class ProcessorItemObject(Output):
    """A processor balance transaction matched (or not) to a recorded payment (ADR 0021)."""

    payment_provider_code: str
    result: str
    difference: bool
    transaction_id: str | None
    kind: str | None
    date: str | None
    currency: str | None
    processor_amount_cents: int | None
    recorded_amount_cents: int | None
    fee_amount_cents: int
    lago_payment_id: UUID | None
    lago_invoice_id: UUID | None
    detail: str | None


class ProcessorFeeObject(Output):
    payment_provider_code: str
    currency: str
    fee_amount_cents: int


class ProcessorPayoutObject(Output):
    payment_provider_code: str
    payout_id: str
    amount_cents: int
    currency: str
    status: str
    created_at: str
    arrival_date: str | None


class ProcessorReconciliationObject(Output):
    items: list[ProcessorItemObject]
    fees: list[ProcessorFeeObject]
    payouts: list[ProcessorPayoutObject]


class ProcessorReconciliationResponse(Output):
    processor_reconciliation: ProcessorReconciliationObject


REVENUE_FIELDS = {"customer": "external_customer_id"}


class ReportController(Controller):
    path = "/reports"
    tags = ("Reports",)
    dependencies = _DEPENDENCIES

    @get("/receivables_ageing", operation_id="findReceivablesAgeing", sync_to_thread=True)
    def receivables_ageing(
        self,
        request: Request[Any, Any, Any],
        journal: NamedDependency[Journal],
        organization_id: NamedDependency[UUID],
        at: FromQuery[str | None] = None,
        group_by: FromQuery[str | None] = None,
        format: FromQuery[str | None] = None,
    ) -> Response[Any]:
        """Tally extension: receivables at a date (default today) by days past due, per
        customer (default) or per invoice (`group_by=invoice`)."""
        day = _date(at, "at") or journal.billing.now().date()
        grouping = group_by or "customer"
        lines = journal.receivables_ageing(organization_id, day, grouping)
        objects = []
        for line in lines:
            buckets = dict(line.buckets)
            objects.append(
                ReceivablesAgeingObject(
                    external_customer_id=line.external_customer_id,
                    invoice_number=line.key if grouping == "invoice" else None,
                    currency=line.currency,
                    current_amount_cents=buckets["current"],
                    days_1_30_amount_cents=buckets["days_1_30"],
                    days_31_60_amount_cents=buckets["days_31_60"],
                    days_61_90_amount_cents=buckets["days_61_90"],
                    days_over_90_amount_cents=buckets["days_over_90"],
                    total_amount_cents=line.total_cents,
                )
            )
        if _wants_csv(request, format):
            return _csv_objects(objects, ReceivablesAgeingObject)
        return Response(ReceivablesAgeingResponse(receivables_ageing=objects))

    @get("/wallet_liability", operation_id="findWalletLiability", sync_to_thread=True)
    def wallet_liability(
        self,
        request: Request[Any, Any, Any],
        journal: NamedDependency[Journal],
        organization_id: NamedDependency[UUID],
        at: FromQuery[str | None] = None,
        group_by: FromQuery[str | None] = None,
        format: FromQuery[str | None] = None,
    ) -> Response[Any]:
        """Tally extension: prepaid credits owed at a date (default today), paid (deferred
        revenue) and granted, per customer (default) or per wallet (`group_by=wallet`)."""
        day = _date(at, "at") or journal.billing.now().date()
        grouping = group_by or "customer"
        objects = [
            WalletLiabilityObject(
                external_customer_id=line.external_customer_id,
                lago_wallet_id=UUID(line.key) if grouping == "wallet" else None,
                currency=line.currency,
                paid_amount_cents=line.paid_cents,
                granted_amount_cents=line.granted_cents,
                total_amount_cents=line.total_cents,
                awaiting_payment_amount_cents=line.awaiting_payment_cents,
            )
            for line in journal.wallet_liability(organization_id, day, grouping)
        ]
        if _wants_csv(request, format):
            return _csv_objects(objects, WalletLiabilityObject)
        return Response(WalletLiabilityResponse(wallet_liability=objects))

    @get("/revenue", operation_id="findRevenue", sync_to_thread=True)
    def revenue(
        self,
        request: Request[Any, Any, Any],
        journal: NamedDependency[Journal],
        organization_id: NamedDependency[UUID],
        date_from: FromParam = None,
        to: FromQuery[str | None] = None,
        group_by: FromQuery[str | None] = None,
        format: FromQuery[str | None] = None,
    ) -> Response[Any]:
        """Tally extension: revenue posted from `from` to `to` (both included), net of credit
        notes and voids, grouped by `month` (default), `product_line`, `customer` and/or
        `country` (comma-separated)."""
        start, end = _period(date_from, to)
        dimensions = [d.strip() for d in (group_by or "month").split(",") if d.strip()]
        objects = [
            RevenueObject(
                **{REVENUE_FIELDS.get(name, name): value for name, value in line.group},
                currency=line.currency,
                amount_cents=line.amount_cents,
            )
            for line in journal.revenue(organization_id, start, end, dimensions)
        ]
        if _wants_csv(request, format):
            columns = [REVENUE_FIELDS.get(d, d) for d in dimensions] + ["currency", "amount_cents"]
            return _csv(
                columns, ([msgspec.to_builtins(o).get(c) for c in columns] for o in objects)
            )
        return Response(RevenueResponse(revenue=objects))

    @get("/vat", operation_id="findVat", sync_to_thread=True)
    def vat(
        self,
        request: Request[Any, Any, Any],
        journal: NamedDependency[Journal],
        organization_id: NamedDependency[UUID],
        date_from: FromParam = None,
        to: FromQuery[str | None] = None,
        format: FromQuery[str | None] = None,
    ) -> Response[Any]:
        """Tally extension: VAT by country and rate for a period (both dates included): the
        taxable base and the tax, net of credit notes and voids (an OSS return's figures)."""
        start, end = _period(date_from, to)
        objects = [
            VatObject(
                country=line.country,
                tax_code=line.tax_code,
                tax_rate=decimal_string(line.tax_rate),
                currency=line.currency,
                taxable_base_amount_cents=line.taxable_base_cents,
                taxes_amount_cents=line.tax_cents,
            )
            for line in journal.vat(organization_id, start, end)
        ]
        if _wants_csv(request, format):
            return _csv_objects(objects, VatObject)
        return Response(VatResponse(vat=objects))

    @get(
        "/processor_reconciliation",
        operation_id="findProcessorReconciliation",
        sync_to_thread=True,
    )
    def processor_reconciliation(
        self,
        request: Request[Any, Any, Any],
        organization_id: NamedDependency[UUID],
        date_from: FromParam = None,
        to: FromQuery[str | None] = None,
        format: FromQuery[str | None] = None,
    ) -> Response[Any]:
        """Tally extension: each payment processor's balance transactions from `from` to `to`
        (both included) matched to the payments recorded through it: differences (unknown or
        missing payments, other amounts, adjustments), the processor's fees and its payouts.
        Bank transfers are matched from an imported statement (`tally reconcile --statement`).
        As CSV: the items."""
        start, end = _period(date_from, to)
        payments: Payments = request.app.state.ledger.payments
        report = payments.reconcile_processors(organization_id, start, end)
        items = [
            ProcessorItemObject(
                payment_provider_code=item.connection_code,
                result=item.result,
                difference=item.is_difference,
                transaction_id=item.transaction_id,
                kind=item.kind,
                date=item.on.isoformat() if item.on else None,
                currency=item.currency,
                processor_amount_cents=item.processor_cents,
                recorded_amount_cents=item.recorded_cents,
                fee_amount_cents=item.fee_cents,
                lago_payment_id=item.payment_id,
                lago_invoice_id=item.invoice_id,
                detail=item.detail,
            )
            for item in report.items
        ]
        if _wants_csv(request, format):
            return _csv_objects(items, ProcessorItemObject)
        return Response(
            ProcessorReconciliationResponse(
                processor_reconciliation=ProcessorReconciliationObject(
                    items=items,
                    fees=[
                        ProcessorFeeObject(
                            payment_provider_code=code, currency=currency, fee_amount_cents=cents
                        )
                        for code, currency, cents in report.fees
                    ],
                    payouts=[
                        ProcessorPayoutObject(
                            payment_provider_code=code,
                            payout_id=payout.payout_id,
                            amount_cents=payout.amount_cents,
                            currency=payout.currency,
                            status=payout.status,
                            created_at=iso(payout.created_at) or "",
                            arrival_date=payout.arrival_on.isoformat()
                            if payout.arrival_on
                            else None,
                        )
                        for code, payout in report.payouts
                    ],
                )
            )
        )


# Lago's analytics: plural roots, no meta (lago-api.md §2.16).


class GrossRevenueObject(Output):
    month: str
    invoices_count: int
    amount_cents: int
    currency: str


class InvoicedUsageObject(Output):
    amount_cents: int
    currency: str
    month: str
    code: str


class MrrObject(Output):
    month: str
    amount_cents: int
    currency: str


class OverdueBalanceObject(Output):
    amount_cents: int
    currency: str
    month: str
    lago_invoice_ids: list[UUID]


class InvoiceCollectionObject(Output):
    amount_cents: int
    month: str
    invoices_count: int
    currency: str
    payment_status: str


class GrossRevenuesResponse(Output):
    gross_revenues: list[GrossRevenueObject]


class InvoicedUsagesResponse(Output):
    invoiced_usages: list[InvoicedUsageObject]


class MrrsResponse(Output):
    mrrs: list[MrrObject]


class OverdueBalancesResponse(Output):
    overdue_balances: list[OverdueBalanceObject]


class InvoiceCollectionsResponse(Output):
    invoice_collections: list[InvoiceCollectionObject]


class AnalyticsController(Controller):
    path = "/analytics"
    tags = ("Analytics",)
    dependencies = _DEPENDENCIES

    @get("/gross_revenue", operation_id="findAllGrossRevenues", sync_to_thread=True)
    def gross_revenue(
        self,
        journal: NamedDependency[Journal],
        organization_id: NamedDependency[UUID],
        currency: FromQuery[str | None] = None,
        external_customer_id: FromQuery[str | None] = None,
        months: FromQuery[str | None] = None,
    ) -> GrossRevenuesResponse:
        """Lago's gross revenue: finalized invoices' totals by issuing month, less refunds."""
        found = journal.gross_revenues(
            organization_id,
            currency=currency,
            external_customer_id=external_customer_id,
            months=_months(months),
        )
        return GrossRevenuesResponse(
            gross_revenues=[
                GrossRevenueObject(
                    month=_lago_month(r.month),
                    invoices_count=r.invoices_count,
                    amount_cents=r.amount_cents,
                    currency=r.currency,
                )
                for r in found
            ]
        )

    @get("/invoiced_usage", operation_id="findAllInvoicedUsages", sync_to_thread=True)
    def invoiced_usage(
        self,
        journal: NamedDependency[Journal],
        organization_id: NamedDependency[UUID],
        currency: FromQuery[str | None] = None,
        months: FromQuery[str | None] = None,
    ) -> InvoicedUsagesResponse:
        """Lago's invoiced usage: usage fees of finalized invoices per metric and month."""
        found = journal.invoiced_usages(organization_id, currency=currency, months=_months(months))
        return InvoicedUsagesResponse(
            invoiced_usages=[
                InvoicedUsageObject(
                    amount_cents=u.amount_cents,
                    currency=u.currency,
                    month=_lago_month(u.month),
                    code=u.code,
                )
                for u in found
            ]
        )

    @get("/mrr", operation_id="findAllMrrs", sync_to_thread=True)
    def mrr(
        self,
        journal: NamedDependency[Journal],
        organization_id: NamedDependency[UUID],
        currency: FromQuery[str | None] = None,
        months: FromQuery[str | None] = None,
    ) -> MrrsResponse:
        """Lago's MRR: subscription fees, taxes included, spread over the months they cover."""
        found = journal.mrrs(organization_id, currency=currency, months=_months(months))
        return MrrsResponse(
            mrrs=[
                MrrObject(
                    month=_lago_month(m.month), amount_cents=m.amount_cents, currency=m.currency
                )
                for m in found
            ]
        )

    @get("/overdue_balance", operation_id="findAllOverdueBalances", sync_to_thread=True)
    def overdue_balance(
        self,
        journal: NamedDependency[Journal],
        organization_id: NamedDependency[UUID],
        currency: FromQuery[str | None] = None,
        external_customer_id: FromQuery[str | None] = None,
        months: FromQuery[str | None] = None,
    ) -> OverdueBalancesResponse:
        """Lago's overdue balance: what invoices past their due date still owe, by due month."""
        found = journal.overdue_balances(
            organization_id,
            currency=currency,
            external_customer_id=external_customer_id,
            months=_months(months),
        )
        return OverdueBalancesResponse(
            overdue_balances=[
                OverdueBalanceObject(
                    amount_cents=o.amount_cents,
                    currency=o.currency,
                    month=_lago_month(o.month),
                    lago_invoice_ids=list(o.lago_invoice_ids),
                )
                for o in found
            ]
        )

    @get("/invoice_collection", operation_id="findAllInvoiceCollections", sync_to_thread=True)
    def invoice_collection(
        self,
        journal: NamedDependency[Journal],
        organization_id: NamedDependency[UUID],
        currency: FromQuery[str | None] = None,
        months: FromQuery[str | None] = None,
    ) -> InvoiceCollectionsResponse:
        """Lago's invoice collection: finalized invoices per month and payment status."""
        found = journal.invoice_collections(
            organization_id, currency=currency, months=_months(months)
        )
        return InvoiceCollectionsResponse(
            invoice_collections=[
                InvoiceCollectionObject(
                    amount_cents=c.amount_cents,
                    month=_lago_month(c.month),
                    invoices_count=c.invoices_count,
                    currency=c.currency,
                    payment_status=c.payment_status,
                )
                for c in found
            ]
        )


# Helpers, shared with `tally journal export`.


def major_units(cents: int, currency: str) -> str:
    """Minor units as a decimal string in major units: 1234 EUR → "12.34", 5 JPY → "5"."""
    exponent = CURRENCY_EXPONENTS[currency]
    return format(Decimal(cents).scaleb(-exponent), "f") if exponent else str(cents)


def export_lines(rows: Iterable[JournalRow]) -> Iterable[list[str]]:
    """Journal rows in EXPORT_COLUMNS: amounts in major units, as accounting software reads."""
    for row in rows:
        yield [
            row.account,
            major_units(row.debit_cents, row.currency),
            major_units(row.credit_cents, row.currency),
            row.currency,
            row.reference,
            row.posted_on.isoformat(),
        ]


def csv_text(columns: Sequence[str], lines: Iterable[Sequence[Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")
    writer.writerow(columns)
    for line in lines:
        writer.writerow(["" if value is None else value for value in line])
    return buffer.getvalue()


def _csv(columns: Sequence[str], lines: Iterable[Sequence[Any]]) -> Response[Any]:
    return Response(content=csv_text(columns, lines).encode(), media_type=CSV_MEDIA_TYPE)


def _csv_objects(objects: Sequence[Output], cls: type[Output]) -> Response[Any]:
    columns = cls.__struct_fields__
    builtins = [msgspec.to_builtins(o) for o in objects]
    return _csv(columns, ([b.get(c) for c in columns] for b in builtins))


def _wants_csv(request: Request[Any, Any, Any], format: str | None) -> bool:
    if format is not None:
        if format not in ("csv", "json"):
            raise BadQueryError("format")
        return format == "csv"
    return "text/csv" in request.headers.get("accept", "")


def _date(value: str | None, field: str) -> date | None:
    if value is None:
        return None
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise InvalidValueError(field, "invalid_date", value) from None


def _period(date_from: str | None, date_to: str | None) -> tuple[date, date]:
    start, end = _date(date_from, "from"), _date(date_to, "to")
    if start is None:
        raise InvalidValueError("from", "value_is_mandatory")
    if end is None:
        raise InvalidValueError("to", "value_is_mandatory")
    return start, end


def _uuid(value: str | None, field: str) -> UUID | None:
    if value is None:
        return None
    try:
        return UUID(value)
    except ValueError:
        raise InvalidValueError(field, "value_is_invalid", value) from None


def _months(value: str | None) -> int | None:
    if value is None or value == "":
        return None
    if not value.isdigit() or not 0 < int(value) <= 1200:
        raise InvalidValueError("months", "value_is_invalid", value)
    return int(value)


def _lago_month(month: date) -> str:
    """Lago's month: the ISO timestamp of its first instant, with milliseconds."""
    return f"{month.isoformat()}T00:00:00.000Z"
