"""The journal on SQLite: entries, invoice records and countries written with the tracking
position in one transaction (application/journal.py)."""

from datetime import date
from decimal import Decimal
from typing import Any, Final
from uuid import UUID

from eventsourcing.persistence import Tracking
from eventsourcing.sqlite import SQLiteTrackingRecorder

from application.journal import (
    DATE_FIELDS,
    RECORD_FIELDS,
    ROW_FIELDS,
    UUID_FIELDS,
    InvoiceRecord,
    JournalChange,
    JournalRow,
    JournalView,
    RowFilter,
)

_ROW_COLUMNS: Final = ", ".join(ROW_FIELDS)
_RECORD_COLUMNS: Final = ", ".join(RECORD_FIELDS)
_INSERT_ROW: Final = (
    f"INSERT INTO journal_entries ({_ROW_COLUMNS}) VALUES ({', '.join('?' for _ in ROW_FIELDS)})"
)
_UPSERT_RECORD: Final = (
    f"INSERT INTO journal_invoices ({_RECORD_COLUMNS}) "
    f"VALUES ({', '.join('?' for _ in RECORD_FIELDS)}) ON CONFLICT (invoice_id) DO UPDATE SET "
    + ", ".join(f"{name} = excluded.{name}" for name in RECORD_FIELDS if name != "invoice_id")
)


class SQLiteJournalView(SQLiteTrackingRecorder, JournalView):
    def construct_create_table_statements(self) -> list[str]:
        return [
            *super().construct_create_table_statements(),
            "CREATE TABLE IF NOT EXISTS journal_entries ("
            "position INTEGER NOT NULL, line INTEGER NOT NULL, transaction_id TEXT NOT NULL, "
            "kind TEXT NOT NULL, organization_id TEXT NOT NULL, customer_id TEXT NOT NULL, "
            "external_customer_id TEXT NOT NULL, currency TEXT NOT NULL, "
            "posted_on TEXT NOT NULL, account TEXT NOT NULL, "
            "debit_cents INTEGER NOT NULL CHECK (debit_cents >= 0), "
            "credit_cents INTEGER NOT NULL CHECK (credit_cents >= 0), reference TEXT NOT NULL, "
            "invoice_id TEXT, credit_note_id TEXT, wallet_id TEXT, product_line TEXT, "
            "metric_code TEXT, fee_type TEXT, country TEXT, tax_code TEXT, tax_rate TEXT, "
            "base_cents INTEGER, line_tax_cents INTEGER, period_from TEXT, period_to TEXT, "
            "due_on TEXT, PRIMARY KEY (position, line))",
            "CREATE INDEX IF NOT EXISTS journal_entries_by_date ON journal_entries "
            "(organization_id, posted_on)",
            "CREATE INDEX IF NOT EXISTS journal_entries_by_invoice ON journal_entries (invoice_id)",
            "CREATE TABLE IF NOT EXISTS journal_invoices (invoice_id TEXT PRIMARY KEY, "
            "organization_id TEXT NOT NULL, customer_id TEXT NOT NULL, "
            "external_customer_id TEXT NOT NULL, number TEXT NOT NULL, "
            "invoice_type TEXT NOT NULL, currency TEXT NOT NULL, issuing_date TEXT NOT NULL, "
            "payment_due_date TEXT NOT NULL, status TEXT NOT NULL, "
            "payment_status TEXT NOT NULL, total_amount_cents INTEGER NOT NULL, country TEXT)",
            "CREATE INDEX IF NOT EXISTS journal_invoices_by_organization ON journal_invoices "
            "(organization_id, issuing_date)",
            "CREATE TABLE IF NOT EXISTS journal_customers (customer_id TEXT PRIMARY KEY, "
            "country TEXT)",
        ]

    def record(self, change: JournalChange, tracking: Tracking) -> None:
        with self.datastore.transaction(commit=True) as c:
            # The position first: a position already applied fails before any row is written.
            self._insert_tracking(c, tracking)
            if change.rows:
                c.executemany(_INSERT_ROW, [_row_params(row) for row in change.rows])
            if change.invoice is not None:
                record = change.invoice
                c.execute(
                    _UPSERT_RECORD, [_to_sql(getattr(record, name)) for name in RECORD_FIELDS]
                )
            if change.customer_country is not None:
                customer_id, country = change.customer_country
                c.execute(
                    "INSERT INTO journal_customers VALUES (?, ?) ON CONFLICT (customer_id) "
                    "DO UPDATE SET country = excluded.country",
                    (str(customer_id), country),
                )

    def customer_country(self, customer_id: UUID) -> str | None:
        with self.datastore.transaction(commit=False) as c:
            c.execute(
                "SELECT country FROM journal_customers WHERE customer_id = ?", (str(customer_id),)
            )
            row = c.fetchone()
            return None if row is None else row["country"]

    def invoice(self, invoice_id: UUID) -> InvoiceRecord | None:
        with self.datastore.transaction(commit=False) as c:
            c.execute(
                f"SELECT {_RECORD_COLUMNS} FROM journal_invoices WHERE invoice_id = ?",
                (str(invoice_id),),
            )
            row = c.fetchone()
            return None if row is None else _record(row)

    def invoices(self, organization_id: UUID | None) -> list[InvoiceRecord]:
        where, params = (
            ("", [])
            if organization_id is None
            else (
                "WHERE organization_id = ?",
                [str(organization_id)],
            )
        )
        with self.datastore.transaction(commit=False) as c:
            c.execute(
                f"SELECT {_RECORD_COLUMNS} FROM journal_invoices {where} "
                "ORDER BY issuing_date, number",
                params,
            )
            return [_record(row) for row in c.fetchall()]

    def rows(self, row_filter: RowFilter) -> list[JournalRow]:
        where, params = _where(row_filter)
        with self.datastore.transaction(commit=False) as c:
            c.execute(
                f"SELECT {_ROW_COLUMNS} FROM journal_entries {where} ORDER BY position, line",
                params,
            )
            return [_row(row) for row in c.fetchall()]

    def page(self, row_filter: RowFilter, page: int, per_page: int) -> tuple[list[JournalRow], int]:
        where, params = _where(row_filter)
        with self.datastore.transaction(commit=False) as c:
            c.execute(f"SELECT COUNT(*) AS n FROM journal_entries {where}", params)
            total = int(c.fetchone()["n"])
            c.execute(
                f"SELECT {_ROW_COLUMNS} FROM journal_entries {where} "
                "ORDER BY position, line LIMIT ? OFFSET ?",
                [*params, per_page, (page - 1) * per_page],
            )
            return [_row(row) for row in c.fetchall()], total

    def clear(self, tracking_name: str) -> None:
        with self.datastore.transaction(commit=True) as c:
            c.execute("DELETE FROM journal_entries")
            c.execute("DELETE FROM journal_invoices")
            c.execute("DELETE FROM journal_customers")
            c.execute("DELETE FROM tracking WHERE application_name = ?", (tracking_name,))


def _where(row_filter: RowFilter) -> tuple[str, list[Any]]:
    clauses: list[str] = []
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
            clauses.append(f"{column} {operator} ?")
            params.append(_to_sql(value))
    if row_filter.accounts:
        clauses.append(f"account IN ({', '.join('?' for _ in row_filter.accounts)})")
        params.extend(row_filter.accounts)
    return ("WHERE " + " AND ".join(clauses) if clauses else ""), params


def _to_sql(value: Any) -> Any:
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, UUID | Decimal):
        return str(value)
    return value


def _row_params(row: JournalRow) -> list[Any]:
    return [_to_sql(getattr(row, name)) for name in ROW_FIELDS]


def _from_sql(name: str, value: Any) -> Any:
    if value is None:
        return None
    if name in UUID_FIELDS:
        return UUID(value)
    if name in DATE_FIELDS or name in ("issuing_date", "payment_due_date"):
        return date.fromisoformat(value)
    if name == "tax_rate":
        return Decimal(value)
    return value


def _row(row: Any) -> JournalRow:
    return JournalRow(**{name: _from_sql(name, row[name]) for name in ROW_FIELDS})


def _record(row: Any) -> InvoiceRecord:
    return InvoiceRecord(**{name: _from_sql(name, row[name]) for name in RECORD_FIELDS})
