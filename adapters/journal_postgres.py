"""The journal on PostgreSQL: entries, invoice records and countries written with the tracking
position in one transaction (application/journal.py)."""

from decimal import Decimal
from typing import Any
from uuid import UUID

from eventsourcing.persistence import Tracking
from eventsourcing.postgres import PostgresDatastore, PostgresTrackingRecorder
from psycopg.sql import SQL, Composable, Identifier

from application.journal import (
    RECORD_FIELDS,
    ROW_FIELDS,
    InvoiceRecord,
    JournalChange,
    JournalRow,
    JournalView,
    RowFilter,
)


class PostgresJournalView(PostgresTrackingRecorder, JournalView):
    def __init__(self, datastore: PostgresDatastore, **kwargs: Any) -> None:
        super().__init__(datastore, **kwargs)
        schema = Identifier(self.datastore.schema)
        self.entries_table = SQL("{0}.journal_entries").format(schema)
        self.invoices_table = SQL("{0}.journal_invoices").format(schema)
        self.customers_table = SQL("{0}.journal_customers").format(schema)
        self.tracking_table = SQL("{0}.{1}").format(schema, Identifier(self.tracking_table_name))
        self.row_columns = SQL(", ").join(Identifier(name) for name in ROW_FIELDS)
        self.record_columns = SQL(", ").join(Identifier(name) for name in RECORD_FIELDS)
        self.sql_create_statements.extend(
            [
                SQL(
                    "CREATE TABLE IF NOT EXISTS {0} (position bigint NOT NULL, "
                    "line integer NOT NULL, transaction_id text NOT NULL, kind text NOT NULL, "
                    "organization_id uuid NOT NULL, customer_id uuid NOT NULL, "
                    "external_customer_id text NOT NULL, currency text NOT NULL, "
                    "posted_on date NOT NULL, account text NOT NULL, "
                    "debit_cents bigint NOT NULL CHECK (debit_cents >= 0), "
                    "credit_cents bigint NOT NULL CHECK (credit_cents >= 0), "
                    "reference text NOT NULL, invoice_id uuid, credit_note_id uuid, "
                    "wallet_id uuid, product_line text, metric_code text, fee_type text, "
                    "country text, tax_code text, tax_rate text, base_cents bigint, "
                    "line_tax_cents bigint, period_from date, period_to date, due_on date, "
                    "PRIMARY KEY (position, line))"
                ).format(self.entries_table),
                SQL(
                    "CREATE INDEX IF NOT EXISTS journal_entries_by_date ON {0} "
                    "(organization_id, posted_on)"
                ).format(self.entries_table),
                SQL(
                    "CREATE INDEX IF NOT EXISTS journal_entries_by_invoice ON {0} (invoice_id)"
                ).format(self.entries_table),
                SQL(
                    "CREATE TABLE IF NOT EXISTS {0} (invoice_id uuid PRIMARY KEY, "
                    "organization_id uuid NOT NULL, customer_id uuid NOT NULL, "
                    "external_customer_id text NOT NULL, number text NOT NULL, "
                    "invoice_type text NOT NULL, currency text NOT NULL, "
                    "issuing_date date NOT NULL, payment_due_date date NOT NULL, "
                    "status text NOT NULL, payment_status text NOT NULL, "
                    "total_amount_cents bigint NOT NULL, country text)"
                ).format(self.invoices_table),
                SQL(
                    "CREATE INDEX IF NOT EXISTS journal_invoices_by_organization ON {0} "
                    "(organization_id, issuing_date)"
                ).format(self.invoices_table),
                SQL(
                    "CREATE TABLE IF NOT EXISTS {0} (customer_id uuid PRIMARY KEY, country text)"
                ).format(self.customers_table),
            ]
        )

    def record(self, change: JournalChange, tracking: Tracking) -> None:
        with self.datastore.transaction(commit=True) as curs:
            # The position first: a position already applied fails before any row is written.
            self._insert_tracking(curs, tracking)
            if change.rows:
                curs.executemany(
                    SQL("INSERT INTO {0} ({1}) VALUES ({2})").format(
                        self.entries_table,
                        self.row_columns,
                        SQL(", ").join(SQL("%s") for _ in ROW_FIELDS),
                    ),
                    [_params(row, ROW_FIELDS) for row in change.rows],
                )
            if change.invoice is not None:
                updates = SQL(", ").join(
                    SQL("{0} = excluded.{0}").format(Identifier(name))
                    for name in RECORD_FIELDS
                    if name != "invoice_id"
                )
                curs.execute(
                    SQL(
                        "INSERT INTO {0} ({1}) VALUES ({2}) "
                        "ON CONFLICT (invoice_id) DO UPDATE SET {3}"
                    ).format(
                        self.invoices_table,
                        self.record_columns,
                        SQL(", ").join(SQL("%s") for _ in RECORD_FIELDS),
                        updates,
                    ),
                    _params(change.invoice, RECORD_FIELDS),
                )
            if change.customer_country is not None:
                curs.execute(
                    SQL(
                        "INSERT INTO {0} VALUES (%s, %s) ON CONFLICT (customer_id) "
                        "DO UPDATE SET country = excluded.country"
                    ).format(self.customers_table),
                    change.customer_country,
                )

    def customer_country(self, customer_id: UUID) -> str | None:
        with self.datastore.transaction(commit=False) as curs:
            curs.execute(
                SQL("SELECT country FROM {0} WHERE customer_id = %s").format(self.customers_table),
                (customer_id,),
            )
            row = curs.fetchone()
            return None if row is None else row["country"]

    def invoice(self, invoice_id: UUID) -> InvoiceRecord | None:
        with self.datastore.transaction(commit=False) as curs:
            curs.execute(
                SQL("SELECT {0} FROM {1} WHERE invoice_id = %s").format(
                    self.record_columns, self.invoices_table
                ),
                (invoice_id,),
            )
            row = curs.fetchone()
            return None if row is None else InvoiceRecord(**row)

    def invoices(self, organization_id: UUID | None) -> list[InvoiceRecord]:
        where: Composable = SQL("")
        params: list[Any] = []
        if organization_id is not None:
            where, params = SQL("WHERE organization_id = %s"), [organization_id]
        with self.datastore.transaction(commit=False) as curs:
            curs.execute(
                SQL("SELECT {0} FROM {1} {2} ORDER BY issuing_date, number").format(
                    self.record_columns, self.invoices_table, where
                ),
                params,
            )
            return [InvoiceRecord(**row) for row in curs.fetchall()]

    def rows(self, row_filter: RowFilter) -> list[JournalRow]:
        where, params = _where(row_filter)
        with self.datastore.transaction(commit=False) as curs:
            curs.execute(
                SQL("SELECT {0} FROM {1} {2} ORDER BY position, line").format(
                    self.row_columns, self.entries_table, where
                ),
                params,
            )
            return [_row(row) for row in curs.fetchall()]

    def page(self, row_filter: RowFilter, page: int, per_page: int) -> tuple[list[JournalRow], int]:
        where, params = _where(row_filter)
        with self.datastore.transaction(commit=False) as curs:
            curs.execute(
                SQL("SELECT COUNT(*) AS n FROM {0} {1}").format(self.entries_table, where), params
            )
            counted = curs.fetchone()
            assert counted is not None
            curs.execute(
                SQL("SELECT {0} FROM {1} {2} ORDER BY position, line LIMIT %s OFFSET %s").format(
                    self.row_columns, self.entries_table, where
                ),
                [*params, per_page, (page - 1) * per_page],
            )
            return [_row(row) for row in curs.fetchall()], int(counted["n"])

    def clear(self, tracking_name: str) -> None:
        with self.datastore.transaction(commit=True) as curs:
            for table in (self.entries_table, self.invoices_table, self.customers_table):
                curs.execute(SQL("DELETE FROM {0}").format(table))
            curs.execute(
                SQL("DELETE FROM {0} WHERE application_name = %s").format(self.tracking_table),
                (tracking_name,),
            )


def _where(row_filter: RowFilter) -> tuple[Composable, list[Any]]:
    clauses: list[Composable] = []
    params: list[Any] = []
    for column, operator, value in (
        ("organization_id", "=", row_filter.organization_id),
        ("posted_on", ">=", row_filter.posted_from),
        ("posted_on", "<=", row_filter.posted_to),
        ("currency", "=", row_filter.currency),
        ("external_customer_id", "=", row_filter.external_customer_id),
        ("kind", "=", row_filter.kind),
        ("invoice_id", "=", row_filter.invoice_id),
        ("reference", "=", row_filter.reference),
    ):
        if value is not None:
            clauses.append(SQL("{0} " + operator + " %s").format(Identifier(column)))
            params.append(value)
    if row_filter.accounts:
        clauses.append(SQL("account = ANY(%s)"))
        params.append(list(row_filter.accounts))
    if not clauses:
        return SQL(""), params
    return SQL("WHERE ") + SQL(" AND ").join(clauses), params


def _params(item: Any, names: tuple[str, ...]) -> list[Any]:
    return [
        str(value) if isinstance(value, Decimal) else value
        for value in (getattr(item, name) for name in names)
    ]


def _row(row: Any) -> JournalRow:
    values = dict(row)
    if values["tax_rate"] is not None:
        values["tax_rate"] = Decimal(values["tax_rate"])
    return JournalRow(**values)
