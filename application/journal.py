"""The double-entry journal: a projection of every money event, its reports, the reconciliation
with the aggregates, and Lago's analytics (ADR 0019).

The projection follows the notification log with its own tracking name (`tally.journal`) and
writes each event's posting (domain/journal.py), the invoice it concerns and its position in one
transaction, so every event posts exactly once, in whichever process catches up first. Reports
catch up first (lazily), then read the view. Nothing here changes an aggregate.
"""

import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, fields
from datetime import date
from decimal import Decimal
from typing import Any, Final
from uuid import UUID

from eventsourcing.application import AggregateNotFoundError
from eventsourcing.persistence import Tracking, TrackingRecorder
from eventsourcing.popo import POPOTrackingRecorder
from eventsourcing.projection import Projection
from eventsourcing.utils import get_topic

from application.base import BillingBase
from application.projections import CatchUp
from domain import ids, journal
from domain.credit_note import CreditNote
from domain.customer import Customer
from domain.errors import InvalidValueError
from domain.invoice import Invoice
from domain.journal import CHART, Posting
from domain.money import allocate_cents
from domain.payment import Collection, Payment
from domain.wallet import Wallet

# Receivables ageing: days past the due date, as (label, first day, last day).
AGEING_BUCKETS: Final = (
    ("current", None, 0),
    ("days_1_30", 1, 30),
    ("days_31_60", 31, 60),
    ("days_61_90", 61, 90),
    ("days_over_90", 91, None),
)
REVENUE_GROUPS: Final = ("month", "product_line", "customer", "country")
AGEING_GROUPS: Final = ("customer", "invoice")
WALLET_GROUPS: Final = ("customer", "wallet")
USAGE_FEE_TYPES: Final = ("charge", "adjustment")
# Lago's MRR: a fee's months are its days / 30.44 (app/models/analytics/mrr.rb).
DAYS_PER_MONTH_HUNDREDTHS: Final = 3044


# Rows and records: what the view stores.


@dataclass(frozen=True)
class JournalRow:
    """One stored entry with its posting's header; `position` is the event's notification id."""

    position: int
    line: int
    transaction_id: str
    kind: str
    organization_id: UUID
    customer_id: UUID
    external_customer_id: str
    currency: str
    posted_on: date
    account: str
    debit_cents: int
    credit_cents: int
    reference: str
    invoice_id: UUID | None = None
    credit_note_id: UUID | None = None
    wallet_id: UUID | None = None
    product_line: str | None = None
    metric_code: str | None = None
    fee_type: str | None = None
    country: str | None = None
    tax_code: str | None = None
    tax_rate: Decimal | None = None
    base_cents: int | None = None
    line_tax_cents: int | None = None
    period_from: date | None = None
    period_to: date | None = None
    due_on: date | None = None

    @property
    def balance_cents(self) -> int:
        return self.debit_cents - self.credit_cents


ROW_FIELDS: Final = tuple(f.name for f in fields(JournalRow))
UUID_FIELDS: Final = frozenset(
    {"organization_id", "customer_id", "invoice_id", "credit_note_id", "wallet_id"}
)
DATE_FIELDS: Final = frozenset({"posted_on", "period_from", "period_to", "due_on"})


def rows_of(posting: Posting, position: int) -> tuple[JournalRow, ...]:
    return tuple(
        JournalRow(
            position=position,
            line=line,
            transaction_id=posting.transaction_id,
            kind=posting.kind,
            organization_id=posting.organization_id,
            customer_id=posting.customer_id,
            external_customer_id=posting.external_customer_id,
            currency=posting.currency,
            posted_on=posting.posted_on,
            account=entry.account,
            debit_cents=entry.debit_cents,
            credit_cents=entry.credit_cents,
            reference=entry.reference,
            invoice_id=entry.invoice_id,
            credit_note_id=entry.credit_note_id,
            wallet_id=entry.wallet_id,
            product_line=entry.product_line,
            metric_code=entry.metric_code,
            fee_type=entry.fee_type,
            country=entry.country,
            tax_code=entry.tax_code,
            tax_rate=entry.tax_rate,
            base_cents=entry.base_cents,
            line_tax_cents=entry.line_tax_cents,
            period_from=entry.period_from,
            period_to=entry.period_to,
            due_on=entry.due_on,
        )
        for line, entry in enumerate(posting.entries, start=1)
    )


@dataclass(frozen=True)
class InvoiceRecord:
    """A finalized (or voided) invoice as the analytics need it; `country` is the one its
    finalization posted, which its credit notes and its void post again."""

    invoice_id: UUID
    organization_id: UUID
    customer_id: UUID
    external_customer_id: str
    number: str
    invoice_type: str
    currency: str
    issuing_date: date
    payment_due_date: date
    status: str
    payment_status: str
    total_amount_cents: int
    country: str | None


RECORD_FIELDS: Final = tuple(f.name for f in fields(InvoiceRecord))


@dataclass(frozen=True)
class JournalChange:
    """What one event changes in the view, written with its position in one transaction."""

    rows: tuple[JournalRow, ...] = ()
    invoice: InvoiceRecord | None = None
    customer_country: tuple[UUID, str | None] | None = None


@dataclass(frozen=True)
class RowFilter:
    """Which rows a query reads; dates are posting dates, both included."""

    organization_id: UUID | None = None
    posted_from: date | None = None
    posted_to: date | None = None
    accounts: tuple[str, ...] = ()
    currency: str | None = None
    external_customer_id: str | None = None
    kind: str | None = None
    invoice_id: UUID | None = None
    reference: str | None = None

    def matches(self, row: JournalRow) -> bool:
        return (
            (self.organization_id is None or row.organization_id == self.organization_id)
            and (self.posted_from is None or row.posted_on >= self.posted_from)
            and (self.posted_to is None or row.posted_on <= self.posted_to)
            and (not self.accounts or row.account in self.accounts)
            and (self.currency is None or row.currency == self.currency)
            and (
                self.external_customer_id is None
                or row.external_customer_id == self.external_customer_id
            )
            and (self.kind is None or row.kind == self.kind)
            and (self.invoice_id is None or row.invoice_id == self.invoice_id)
            and (self.reference is None or row.reference == self.reference)
        )


class JournalView(TrackingRecorder, ABC):
    """The journal's tables: entries, finalized invoices, customers' countries."""

    @abstractmethod
    def record(self, change: JournalChange, tracking: Tracking) -> None:
        """Store one event's rows, invoice record and customer country with its position."""

    @abstractmethod
    def customer_country(self, customer_id: UUID) -> str | None: ...

    @abstractmethod
    def invoice(self, invoice_id: UUID) -> InvoiceRecord | None: ...

    @abstractmethod
    def invoices(self, organization_id: UUID | None) -> list[InvoiceRecord]:
        """Every recorded invoice (of one organization), by issuing date then number."""

    @abstractmethod
    def rows(self, row_filter: RowFilter) -> list[JournalRow]:
        """Matching rows in journal order (position, then line)."""

    @abstractmethod
    def page(self, row_filter: RowFilter, page: int, per_page: int) -> tuple[list[JournalRow], int]:
        """One page (1-based) of matching rows in journal order, and their count."""

    @abstractmethod
    def clear(self, tracking_name: str) -> None:
        """Forget everything, the position included: the next catch-up rebuilds from scratch."""


class MemoryJournalView(POPOTrackingRecorder, JournalView):
    """The journal of the in-memory store (unit, property and API tests)."""

    def __init__(self) -> None:
        super().__init__()
        self._rows: list[JournalRow] = []
        self._invoices: dict[UUID, InvoiceRecord] = {}
        self._countries: dict[UUID, str | None] = {}

    def record(self, change: JournalChange, tracking: Tracking) -> None:
        with self._database_lock:
            self._assert_tracking_uniqueness(tracking)
            self._rows.extend(change.rows)
            if change.invoice is not None:
                self._invoices[change.invoice.invoice_id] = change.invoice
            if change.customer_country is not None:
                customer_id, country = change.customer_country
                self._countries[customer_id] = country
            self._insert_tracking(tracking)

    def customer_country(self, customer_id: UUID) -> str | None:
        with self._database_lock:
            return self._countries.get(customer_id)

    def invoice(self, invoice_id: UUID) -> InvoiceRecord | None:
        with self._database_lock:
            return self._invoices.get(invoice_id)

    def invoices(self, organization_id: UUID | None) -> list[InvoiceRecord]:
        with self._database_lock:
            found = [
                r
                for r in self._invoices.values()
                if organization_id is None or r.organization_id == organization_id
            ]
        return sorted(found, key=lambda r: (r.issuing_date, r.number))

    def rows(self, row_filter: RowFilter) -> list[JournalRow]:
        with self._database_lock:
            return [row for row in self._rows if row_filter.matches(row)]

    def page(self, row_filter: RowFilter, page: int, per_page: int) -> tuple[list[JournalRow], int]:
        found = self.rows(row_filter)
        start = (page - 1) * per_page
        return found[start : start + per_page], len(found)

    def clear(self, tracking_name: str) -> None:
        with self._database_lock:
            self._rows.clear()
            self._invoices.clear()
            self._countries.clear()
            self._max_tracking_ids[tracking_name] = None


# The projection.

CUSTOMER_EVENTS: Final = (Customer.Created, Customer.Updated, Customer.Recreated)
INVOICE_EVENTS: Final = (Invoice.Finalized, Invoice.Voided, Invoice.PaymentStatusChanged)
CREDIT_NOTE_EVENTS: Final = (
    CreditNote.Created,
    CreditNote.Consumed,
    CreditNote.Voided,
    CreditNote.RefundStatusChanged,
)
PAYMENT_EVENTS: Final = (Payment.Succeeded,)
WALLET_EVENTS: Final = (
    Wallet.Granted,
    Wallet.PurchaseSettled,
    Wallet.Voided,
    Wallet.Invoiced,
    Wallet.Forfeited,
    Wallet.Recredited,
)


class JournalProjection(Projection[JournalView]):
    """Posts every money event; reads each aggregate as it was right after its event, so a
    rebuild from scratch posts exactly what the live journal did."""

    name = "journal"
    topics = tuple(
        get_topic(cls)
        for cls in (
            *CUSTOMER_EVENTS,
            *INVOICE_EVENTS,
            *CREDIT_NOTE_EVENTS,
            *WALLET_EVENTS,
            *PAYMENT_EVENTS,
        )
    )

    def __init__(self, view: JournalView, billing: BillingBase) -> None:
        super().__init__(view)
        self.billing = billing

    def process_event(self, domain_event: Any, tracking: Tracking) -> None:
        change = self._change(domain_event, tracking.notification_id)
        if change is None:
            self.view.insert_tracking(tracking)  # An event we ignore still advances the position.
        else:
            self.view.record(change, tracking)

    def _change(self, event: Any, position: int) -> JournalChange | None:
        if isinstance(event, CUSTOMER_EVENTS):
            return self._customer(event)
        if isinstance(event, INVOICE_EVENTS):
            return self._invoice(event, position)
        if isinstance(event, CREDIT_NOTE_EVENTS):
            return self._credit_note(event, position)
        if isinstance(event, PAYMENT_EVENTS):
            payment = self._at_version(event)
            assert isinstance(payment, Payment), payment
            # The invoice's number and type are fixed at finalization, before any payment.
            invoice = self._latest(payment.invoice_id)
            return _posted(journal.payment_received(payment, invoice), position)
        if isinstance(event, WALLET_EVENTS):
            wallet = self._at_version(event)
            assert isinstance(wallet, Wallet), wallet
            if isinstance(event, Wallet.Granted):
                return _posted(journal.credits_granted(wallet, event.transaction_id), position)
            if isinstance(event, Wallet.PurchaseSettled):
                return _posted(journal.top_up_settled(wallet, event.transaction_id), position)
            if isinstance(event, Wallet.Recredited):
                return _posted(journal.credits_recredited(wallet, event.transaction_id), position)
            on = None
            if isinstance(event, Wallet.Invoiced):
                # Dated like the invoice it pays, whose finalization saved it.
                on = self._latest(event.invoice_id).issuing_date
            return _posted(journal.credits_debited(wallet, event.transaction_id, on), position)
        raise AssertionError(type(event))  # pragma: no cover (topics list every class)

    def _customer(self, event: Any) -> JournalChange | None:
        if isinstance(event, Customer.Updated):
            if "country" not in event.changes:
                return None
            country = event.changes["country"]
        else:
            country = event.fields.get("country")
        return JournalChange(customer_country=(event.originator_id, country))

    def _invoice(self, event: Any, position: int) -> JournalChange:
        invoice = self._at_version(event)
        assert isinstance(invoice, Invoice), invoice
        if isinstance(event, Invoice.Finalized):
            country = self._country(invoice)
            posting = journal.invoice_finalized(invoice, country)
        else:
            known = self.view.invoice(invoice.id)
            country = known.country if known else self._country(invoice)
            if isinstance(event, Invoice.Voided):
                posting = journal.invoice_voided(invoice, country)
            else:
                previous = self._at_version(event, before=True)
                assert isinstance(previous, Invoice), previous
                payments_cents, marked_cents = self._cash_posted(invoice.id)
                posting = journal.payment_status_changed(
                    invoice,
                    previous.payment_status,
                    event.timestamp.date(),
                    payments_cents=payments_cents,
                    marked_cents=marked_cents,
                )
        rows = rows_of(posting, position) if posting else ()
        return JournalChange(rows=rows, invoice=_record(invoice, country))

    def _credit_note(self, event: Any, position: int) -> JournalChange | None:
        note = self._at_version(event)
        assert isinstance(note, CreditNote), note
        posting: Posting | None
        if isinstance(event, CreditNote.Created):
            invoice = self._latest(note.invoice_id)
            known = self.view.invoice(invoice.id)
            country = known.country if known else self._country(invoice)
            posting = journal.credit_note_issued(note, invoice, country)
        elif isinstance(event, CreditNote.Consumed):
            # Dated like the invoice it pays, whose finalization saved it.
            on = self._latest(event.invoice_id).issuing_date
            posting = journal.credit_note_consumed(note, event.invoice_id, event.amount_cents, on)
        elif isinstance(event, CreditNote.Voided):
            posting = journal.credit_note_voided(note, event.amount_cents, event.voided_at.date())
        else:
            previous = self._at_version(event, before=True)
            assert isinstance(previous, CreditNote), previous
            posting = journal.refund_status_changed(
                note, previous.refund_status, event.timestamp.date()
            )
        return _posted(posting, position)

    def _cash_posted(self, invoice_id: UUID) -> tuple[int, int]:
        """The cash the journal holds so far for an invoice: from recorded payments, and from
        the invoice marked paid (its own postings). Read from the view, which holds exactly
        the events before this one, live and on a rebuild alike."""
        payments_cents = marked_cents = 0
        own = f"{invoice_id}:"
        for row in self.view.rows(RowFilter(invoice_id=invoice_id, accounts=(journal.CASH,))):
            if row.kind not in ("payment_received", "payment_reversed"):
                continue  # Refunds paid out are the credit notes' business.
            if row.transaction_id.startswith(own):
                marked_cents += row.balance_cents
            else:
                payments_cents += row.balance_cents
        return payments_cents, marked_cents

    def _country(self, invoice: Invoice) -> str | None:
        """Where the VAT applies (the invoice's EU VAT decision), else the customer's country."""
        decision = invoice.tax_decision or {}
        country = decision.get("country")
        if isinstance(country, str) and country:
            return country
        return self.view.customer_country(invoice.customer_id)

    def _at_version(self, event: Any, before: bool = False) -> Any:
        version = event.originator_version - (1 if before else 0)
        return self.billing.repository.get(event.originator_id, version=version)

    def _latest(self, invoice_id: UUID) -> Invoice:
        invoice: Invoice = self.billing.repository.get(invoice_id)
        return invoice


def _posted(posting: Posting | None, position: int) -> JournalChange | None:
    return None if posting is None else JournalChange(rows=rows_of(posting, position))


def _record(invoice: Invoice, country: str | None) -> InvoiceRecord:
    assert invoice.number is not None and invoice.payment_due_date is not None, invoice.id
    return InvoiceRecord(
        invoice_id=invoice.id,
        organization_id=invoice.organization_id,
        customer_id=invoice.customer_id,
        external_customer_id=invoice.external_customer_id,
        number=invoice.number,
        invoice_type=invoice.invoice_type,
        currency=invoice.currency,
        issuing_date=invoice.issuing_date,
        payment_due_date=invoice.payment_due_date,
        status=invoice.status,
        payment_status=invoice.payment_status,
        total_amount_cents=invoice.totals.total_amount_cents,
        country=country,
    )


# Reports.


@dataclass(frozen=True)
class BalanceLine:
    account: str
    name: str
    type: str
    currency: str
    debit_cents: int
    credit_cents: int

    @property
    def balance_cents(self) -> int:
        """Debit minus credit: positive for assets and expenses, negative for the others."""
        return self.debit_cents - self.credit_cents


@dataclass(frozen=True)
class CurrencyTotal:
    currency: str
    debit_cents: int
    credit_cents: int


@dataclass(frozen=True)
class TrialBalance:
    at: date
    lines: tuple[BalanceLine, ...]
    totals: tuple[CurrencyTotal, ...]

    @property
    def balanced(self) -> bool:
        return all(total.debit_cents == total.credit_cents for total in self.totals)


@dataclass(frozen=True)
class AgeingLine:
    """Receivables by days past due; `key` is the customer's external id or an invoice number."""

    key: str
    external_customer_id: str
    currency: str
    buckets: tuple[tuple[str, int], ...]  # (label, cents) in AGEING_BUCKETS order

    @property
    def total_cents(self) -> int:
        return sum(cents for _, cents in self.buckets)


@dataclass(frozen=True)
class WalletLiabilityLine:
    """Credits owed at a date; `key` is the customer's external id or a wallet id."""

    key: str
    external_customer_id: str
    currency: str
    paid_cents: int
    granted_cents: int
    awaiting_payment_cents: int  # Paid top-ups invoiced, not paid yet: not in the balance.

    @property
    def total_cents(self) -> int:
        return self.paid_cents + self.granted_cents


@dataclass(frozen=True)
class RevenueLine:
    group: tuple[tuple[str, str], ...]  # (dimension, value) in the order asked
    currency: str
    amount_cents: int


@dataclass(frozen=True)
class VatLine:
    country: str | None
    tax_code: str | None
    tax_rate: Decimal | None
    currency: str
    taxable_base_cents: int
    tax_cents: int


@dataclass(frozen=True)
class Difference:
    """One way the journal does not tie out: what it says and what the aggregates say, both as
    debit minus credit on the account (or totals, for a balance check)."""

    check: str
    reference: str
    account: str | None
    currency: str
    journal_cents: int
    expected_cents: int

    def __str__(self) -> str:
        account = self.account or "-"
        return (
            f"{self.check} {self.reference} account {account} {self.currency}: "
            f"journal {self.journal_cents}, expected {self.expected_cents}"
        )


# Lago's analytics (lago-api.md §2.16).


@dataclass(frozen=True)
class GrossRevenue:
    month: date
    currency: str
    amount_cents: int
    invoices_count: int


@dataclass(frozen=True)
class InvoicedUsage:
    month: date
    code: str
    currency: str
    amount_cents: int


@dataclass(frozen=True)
class Mrr:
    month: date
    currency: str
    amount_cents: int


@dataclass(frozen=True)
class OverdueBalance:
    month: date
    currency: str
    amount_cents: int
    lago_invoice_ids: tuple[UUID, ...]


@dataclass(frozen=True)
class InvoiceCollection:
    month: date
    payment_status: str
    currency: str
    invoices_count: int
    amount_cents: int


class Journal:
    """The journal's projection, its catch-up, and every query on it."""

    def __init__(self, billing: BillingBase, view: JournalView) -> None:
        self.billing = billing
        self.view = view
        self.projection = JournalProjection(view, billing)
        self.catch_up = CatchUp(billing, self.projection)
        self._rebuild_lock = threading.Lock()

    def rebuild(self) -> int:
        """Forget the journal and post every event again; returns the number of rows."""
        with self._rebuild_lock:
            self.view.clear(self.catch_up.tracking_name)
            self.catch_up()
        return len(self.view.rows(RowFilter()))

    # Entries.

    def entries(
        self, row_filter: RowFilter, page: int, per_page: int
    ) -> tuple[list[JournalRow], int]:
        self.catch_up()
        return self.view.page(row_filter, page, per_page)

    def rows(self, row_filter: RowFilter) -> list[JournalRow]:
        self.catch_up()
        return self.view.rows(row_filter)

    # Reports.

    def trial_balance(self, organization_id: UUID | None, at: date) -> TrialBalance:
        """Every account's debits and credits up to a date (included), per currency."""
        rows = self.rows(RowFilter(organization_id=organization_id, posted_to=at))
        sums: dict[tuple[str, str], list[int]] = {}
        for row in rows:
            pair = sums.setdefault((row.account, row.currency), [0, 0])
            pair[0] += row.debit_cents
            pair[1] += row.credit_cents
        lines = tuple(
            BalanceLine(
                account,
                CHART[account].name,
                CHART[account].type,
                currency,
                debit_cents,
                credit_cents,
            )
            for (account, currency), (debit_cents, credit_cents) in sorted(sums.items())
        )
        totals: dict[str, list[int]] = {}
        for line in lines:
            total = totals.setdefault(line.currency, [0, 0])
            total[0] += line.debit_cents
            total[1] += line.credit_cents
        return TrialBalance(
            at,
            lines,
            tuple(CurrencyTotal(c, d, k) for c, (d, k) in sorted(totals.items())),
        )

    def receivables_ageing(
        self, organization_id: UUID, at: date, group_by: str = "customer"
    ) -> list[AgeingLine]:
        """What customers owe at a date, by days past each invoice's due date."""
        _check_choice(group_by, AGEING_GROUPS, "group_by")
        rows = self.rows(
            RowFilter(
                organization_id=organization_id, posted_to=at, accounts=(journal.RECEIVABLES,)
            )
        )
        outstanding: dict[UUID, int] = {}
        for row in rows:
            assert row.invoice_id is not None, row
            outstanding[row.invoice_id] = outstanding.get(row.invoice_id, 0) + row.balance_cents
        records = {r.invoice_id: r for r in self.view.invoices(organization_id)}
        grouped: dict[tuple[str, str, str], dict[str, int]] = {}
        for invoice_id, cents in outstanding.items():
            record = records.get(invoice_id)
            if cents == 0 or record is None:
                continue
            key = record.external_customer_id if group_by == "customer" else record.number
            buckets = grouped.setdefault(
                (key, record.external_customer_id, record.currency),
                {label: 0 for label, _, _ in AGEING_BUCKETS},
            )
            buckets[_ageing_bucket((at - record.payment_due_date).days)] += cents
        return [
            AgeingLine(key, customer, currency, tuple(buckets.items()))
            for (key, customer, currency), buckets in sorted(grouped.items())
        ]

    def wallet_liability(
        self, organization_id: UUID, at: date, group_by: str = "customer"
    ) -> list[WalletLiabilityLine]:
        """Credits owed to customers at a date: paid (deferred revenue) and granted."""
        _check_choice(group_by, WALLET_GROUPS, "group_by")
        accounts = (journal.WALLET_PAID, journal.WALLET_GRANTED, journal.TOP_UPS_AWAITING_PAYMENT)
        rows = self.rows(
            RowFilter(organization_id=organization_id, posted_to=at, accounts=accounts)
        )
        grouped: dict[tuple[str, str, str], dict[str, int]] = {}
        for row in rows:
            key = row.external_customer_id if group_by == "customer" else str(row.wallet_id)
            sums = grouped.setdefault(
                (key, row.external_customer_id, row.currency), dict.fromkeys(accounts, 0)
            )
            sums[row.account] -= row.balance_cents  # Liabilities: credit minus debit.
        return [
            WalletLiabilityLine(
                key,
                customer,
                currency,
                sums[journal.WALLET_PAID],
                sums[journal.WALLET_GRANTED],
                sums[journal.TOP_UPS_AWAITING_PAYMENT],
            )
            for (key, customer, currency), sums in sorted(grouped.items())
            if any(sums.values())
        ]

    def revenue(
        self,
        organization_id: UUID,
        date_from: date,
        date_to: date,
        group_by: Sequence[str] = ("month",),
    ) -> list[RevenueLine]:
        """Revenue posted in a period (both dates included), net of credit notes and voids,
        grouped by month, product line, customer and/or country."""
        _check_period(date_from, date_to)
        if not group_by:
            raise InvalidValueError("group_by", "value_is_invalid", "")
        for dimension in group_by:
            _check_choice(dimension, REVENUE_GROUPS, "group_by")
        rows = self.rows(
            RowFilter(
                organization_id=organization_id,
                posted_from=date_from,
                posted_to=date_to,
                accounts=(journal.REVENUE,),
            )
        )
        sums: dict[tuple[tuple[tuple[str, str], ...], str], int] = {}
        for row in rows:
            group = tuple((dimension, _dimension(row, dimension)) for dimension in group_by)
            sums[(group, row.currency)] = sums.get((group, row.currency), 0) - row.balance_cents
        return [
            RevenueLine(group, currency, cents) for (group, currency), cents in sorted(sums.items())
        ]

    def vat(self, organization_id: UUID, date_from: date, date_to: date) -> list[VatLine]:
        """VAT by country and rate for a period (an OSS return's figures): taxable base and tax,
        net of credit notes and voids."""
        _check_period(date_from, date_to)
        rows = self.rows(
            RowFilter(
                organization_id=organization_id,
                posted_from=date_from,
                posted_to=date_to,
                accounts=(journal.VAT_PAYABLE,),
            )
        )
        sums: dict[tuple[str, str, str, str], list[Any]] = {}
        for row in rows:
            key = (row.country or "", row.tax_code or "", str(row.tax_rate or ""), row.currency)
            line = sums.setdefault(key, [row.country, row.tax_code, row.tax_rate, 0, 0])
            line[3] += row.base_cents or 0
            line[4] -= row.balance_cents
        return [
            VatLine(country, code, rate, key[3], base, tax)
            for key, (country, code, rate, base, tax) in sorted(sums.items())
        ]

    # Reconciliation.

    def reconcile(
        self, date_from: date, date_to: date, organization_id: UUID | None = None
    ) -> list[Difference]:
        """Tie the journal out to the aggregates for a period, listing every difference:
        balanced transactions and trial balance; for each invoice and credit note issued in
        the period, its receivable, cash, revenue, VAT, credit and refund balances; every
        wallet's paid, granted and awaiting balances; the period's revenue and VAT."""
        _check_period(date_from, date_to)
        self.catch_up()
        organizations = [organization_id] if organization_id else self._organization_ids()
        differences: list[Difference] = []
        for org in organizations:
            differences += _Reconciliation(self, org, date_from, date_to).run()
        return differences

    def _organization_ids(self) -> list[UUID]:
        self.billing.catch_up()
        return self.billing.index.view.aggregate_ids_of_kind("organization")

    # Lago's analytics.

    def gross_revenues(
        self,
        organization_id: UUID,
        *,
        currency: str | None = None,
        external_customer_id: str | None = None,
        months: int | None = None,
    ) -> list[GrossRevenue]:
        """Σ total_amount_cents of finalized invoices by issuing month, minus their credit
        notes' refunds (Lago's Analytics::GrossRevenue)."""
        self.catch_up()
        refunds: dict[UUID, int] = {}
        for row in self.view.rows(
            RowFilter(
                organization_id=organization_id,
                accounts=(journal.REFUNDS_PAYABLE,),
                kind="credit_note_issued",
            )
        ):
            assert row.invoice_id is not None, row
            refunds[row.invoice_id] = refunds.get(row.invoice_id, 0) + row.credit_cents
        sums: dict[tuple[date, str], list[int]] = {}
        for record in self._finalized(organization_id, currency, external_customer_id):
            pair = sums.setdefault((_month(record.issuing_date), record.currency), [0, 0])
            pair[0] += record.total_amount_cents - refunds.get(record.invoice_id, 0)
            pair[1] += 1
        window = self._window(months)
        return [
            GrossRevenue(month, cur, cents, count)
            for (month, cur), (cents, count) in sorted(sums.items())
            if window(month)
        ]

    def invoiced_usages(
        self, organization_id: UUID, *, currency: str | None = None, months: int | None = None
    ) -> list[InvoicedUsage]:
        """Usage fees of finalized invoices per billable metric and issuing month, newest month
        first, largest first (Lago's Analytics::InvoicedUsage)."""
        self.catch_up()
        live = {r.invoice_id for r in self._finalized(organization_id, currency, None)}
        sums: dict[tuple[date, str, str], int] = {}
        for row in self.view.rows(
            RowFilter(
                organization_id=organization_id,
                accounts=(journal.REVENUE,),
                kind="invoice_finalized",
                currency=currency,
            )
        ):
            if row.invoice_id not in live or row.fee_type not in USAGE_FEE_TYPES:
                continue
            key = (_month(row.posted_on), row.metric_code or "", row.currency)
            sums[key] = sums.get(key, 0) + row.credit_cents
        window = self._window(months)
        found = [InvoicedUsage(*key, cents) for key, cents in sums.items() if window(key[0])]
        found.sort(key=lambda u: (u.code, u.currency))
        found.sort(key=lambda u: (u.month, u.amount_cents), reverse=True)
        return found

    def mrrs(
        self, organization_id: UUID, *, currency: str | None = None, months: int | None = None
    ) -> list[Mrr]:
        """Subscription fees of finalized invoices (taxes included), spread evenly over the
        months their period covers: days / 30.44, at least one (Lago's Analytics::Mrr)."""
        self.catch_up()
        live = {r.invoice_id for r in self._finalized(organization_id, currency, None)}
        sums: dict[tuple[date, str], int] = {}
        for row in self.view.rows(
            RowFilter(
                organization_id=organization_id,
                accounts=(journal.REVENUE,),
                kind="invoice_finalized",
                currency=currency,
            )
        ):
            if row.invoice_id not in live or row.fee_type != "subscription":
                continue
            assert row.period_from is not None and row.period_to is not None, row
            days = (row.period_to - row.period_from).days
            count = max(
                1, (days * 100 + DAYS_PER_MONTH_HUNDREDTHS // 2) // DAYS_PER_MONTH_HUNDREDTHS
            )
            cents = row.credit_cents + (row.line_tax_cents or 0)
            for index, part in enumerate(allocate_cents(cents, [1] * count)):
                key = (_add_months(_month(row.period_from), index), row.currency)
                sums[key] = sums.get(key, 0) + part
        window = self._window(months)
        return [
            Mrr(month, cur, cents) for (month, cur), cents in sorted(sums.items()) if window(month)
        ]

    def overdue_balances(
        self,
        organization_id: UUID,
        *,
        currency: str | None = None,
        external_customer_id: str | None = None,
        months: int | None = None,
    ) -> list[OverdueBalance]:
        """What finalized invoices past their due date still owe (total − paid − credit-note
        offsets: their receivable), by month of the due date (Lago's Analytics::OverdueBalance,
        with "past due and unpaid" for Lago's payment_overdue flag)."""
        self.catch_up()
        today = self.billing.now().date()
        outstanding: dict[UUID, int] = {}
        for row in self.view.rows(
            RowFilter(organization_id=organization_id, accounts=(journal.RECEIVABLES,))
        ):
            assert row.invoice_id is not None, row
            outstanding[row.invoice_id] = outstanding.get(row.invoice_id, 0) + row.balance_cents
        sums: dict[tuple[date, str], tuple[int, list[UUID]]] = {}
        for record in self._finalized(organization_id, currency, external_customer_id):
            cents = outstanding.get(record.invoice_id, 0)
            if record.payment_status == "succeeded" or cents <= 0:
                continue
            if record.payment_due_date >= today:
                continue
            key = (_month(record.payment_due_date), record.currency)
            total, invoice_ids = sums.get(key, (0, []))
            sums[key] = (total + cents, [*invoice_ids, record.invoice_id])
        window = self._window(months)
        return [
            OverdueBalance(month, cur, cents, tuple(invoice_ids))
            for (month, cur), (cents, invoice_ids) in sorted(sums.items())
            if window(month)
        ]

    def invoice_collections(
        self, organization_id: UUID, *, currency: str | None = None, months: int | None = None
    ) -> list[InvoiceCollection]:
        """Finalized invoices per issuing month and payment status: count and Σ total_amount
        (Lago's Analytics::InvoiceCollection)."""
        self.catch_up()
        sums: dict[tuple[date, str, str], list[int]] = {}
        for record in self._finalized(organization_id, currency, None):
            key = (_month(record.issuing_date), record.payment_status, record.currency)
            pair = sums.setdefault(key, [0, 0])
            pair[0] += 1
            pair[1] += record.total_amount_cents
        window = self._window(months)
        return [
            InvoiceCollection(month, status, cur, count, cents)
            for (month, status, cur), (count, cents) in sorted(sums.items())
            if window(month)
        ]

    def _finalized(
        self, organization_id: UUID, currency: str | None, external_customer_id: str | None
    ) -> list[InvoiceRecord]:
        return [
            record
            for record in self.view.invoices(organization_id)
            if record.status == "finalized"
            and (currency is None or record.currency == currency)
            and (
                external_customer_id is None or record.external_customer_id == external_customer_id
            )
        ]

    def _window(self, months: int | None) -> Callable[[date], bool]:
        """Lago's months: the last N months up to this one (this one included); none: all
        months up to this one."""
        if months is not None and months < 0:
            raise InvalidValueError("months", "value_is_invalid", months)
        this_month = _month(self.billing.now().date())
        first = _add_months(this_month, -(max(months, 1) - 1)) if months else None
        return lambda month: month <= this_month and (first is None or month >= first)


class _Reconciliation:
    """One organization's reconciliation for a period (Journal.reconcile)."""

    def __init__(self, journal_: Journal, organization_id: UUID, start: date, end: date) -> None:
        self.journal = journal_
        self.billing = journal_.billing
        self.organization_id = organization_id
        self.start = start
        self.end = end
        self.rows = journal_.view.rows(RowFilter(organization_id=organization_id))
        self.differences: list[Difference] = []

    def run(self) -> list[Difference]:
        self._transactions()
        self._trial_balance()
        invoices = self._all(Invoice, "invoice")
        notes = self._all(CreditNote, "credit_note")
        wallets = self._all(Wallet, "wallet")
        notes_by_invoice: dict[UUID, list[CreditNote]] = {}
        for note in notes:
            notes_by_invoice.setdefault(note.invoice_id, []).append(note)
        wallets_by_id = {wallet.id: wallet for wallet in wallets}
        by_invoice = self._sums(lambda row: row.invoice_id)
        for invoice in invoices:
            if invoice.status != "draft" and self.start <= invoice.issuing_date <= self.end:
                expected = _expected_invoice(
                    invoice,
                    notes_by_invoice.get(invoice.id, []),
                    wallets_by_id,
                    paid_by_payments_cents(self.billing, invoice.id),
                )
                reference = invoice.number or str(invoice.id)
                self._compare(
                    "invoice", reference, invoice.currency, by_invoice, invoice.id, expected
                )
        by_note = self._sums(lambda row: row.credit_note_id)
        for note in notes:
            if self.start <= note.issuing_date <= self.end:
                refund_due = note.refund_amount_cents if note.refund_status != "succeeded" else 0
                expected = {
                    journal.CUSTOMER_CREDIT: -note.balance_amount_cents,
                    journal.REFUNDS_PAYABLE: -refund_due,
                }
                self._compare("credit_note", note.number, note.currency, by_note, note.id, expected)
        by_wallet = self._sums(lambda row: row.wallet_id)
        for wallet in wallets:
            expected = _expected_wallet(wallet, self.billing)
            self._compare("wallet", str(wallet.id), wallet.currency, by_wallet, wallet.id, expected)
        self._period_totals(invoices, notes)
        return self.differences

    def _all(self, cls: type[Any], kind: str) -> list[Any]:
        return self.billing._all(cls, kind, self.organization_id)

    def _sums(self, key: Callable[[JournalRow], UUID | None]) -> dict[tuple[UUID, str], int]:
        sums: dict[tuple[UUID, str], int] = {}
        for row in self.rows:
            owner = key(row)
            if owner is not None:
                sums[(owner, row.account)] = sums.get((owner, row.account), 0) + row.balance_cents
        return sums

    def _compare(
        self,
        check: str,
        reference: str,
        currency: str,
        sums: dict[tuple[UUID, str], int],
        owner: UUID,
        expected: dict[str, int],
    ) -> None:
        # Only the accounts the document answers for: the same rows also carry other owners'
        # dimensions (a wallet's debit names the invoice it pays).
        for account in sorted(expected):
            found = sums.get((owner, account), 0)
            wanted = expected.get(account, 0)
            if found != wanted:
                self.differences.append(
                    Difference(check, reference, account, currency, found, wanted)
                )

    def _transactions(self) -> None:
        totals: dict[str, list[Any]] = {}
        for row in self.rows:
            if self.start <= row.posted_on <= self.end:
                total = totals.setdefault(row.transaction_id, [row.currency, 0, 0])
                total[1] += row.debit_cents
                total[2] += row.credit_cents
        for transaction, (currency, debit, credit) in sorted(totals.items()):
            if debit != credit:
                self.differences.append(
                    Difference("transaction", transaction, None, currency, debit, credit)
                )

    def _trial_balance(self) -> None:
        balance = self.journal.trial_balance(self.organization_id, self.end)
        for total in balance.totals:
            if total.debit_cents != total.credit_cents:
                self.differences.append(
                    Difference(
                        "trial_balance",
                        self.end.isoformat(),
                        None,
                        total.currency,
                        total.debit_cents,
                        total.credit_cents,
                    )
                )

    def _period_totals(self, invoices: list[Invoice], notes: list[CreditNote]) -> None:
        """Revenue and VAT posted in the period against the documents dated in it."""
        expected: dict[tuple[str, str], int] = {}

        def add(account: str, currency: str, cents: int) -> None:
            expected[(account, currency)] = expected.get((account, currency), 0) + cents

        for invoice in invoices:
            if invoice.status == "draft" or invoice.invoice_type == "credit":
                continue
            fees_cents = sum(fee.amount_cents for fee in invoice.fees)
            taxes_cents = invoice.totals.taxes_amount_cents
            if self.start <= invoice.issuing_date <= self.end:
                add(journal.REVENUE, invoice.currency, -fees_cents)
                add(journal.VAT_PAYABLE, invoice.currency, -taxes_cents)
            voided_at = invoice.voided_at
            if voided_at is not None and self.start <= voided_at.date() <= self.end:
                own = notes_of(notes, invoice.id)
                credited = sum(invoice.credited_fee_cents.values())
                credited_tax = sum(note.taxes_amount_cents for note in own)
                add(journal.REVENUE, invoice.currency, fees_cents - credited)
                add(journal.VAT_PAYABLE, invoice.currency, taxes_cents - credited_tax)
        for note in notes:
            if self.start <= note.issuing_date <= self.end:
                add(journal.REVENUE, note.currency, note.sub_total_excluding_taxes_amount_cents)
                add(journal.VAT_PAYABLE, note.currency, note.taxes_amount_cents)
        found: dict[tuple[str, str], int] = {}
        for row in self.rows:
            if row.account in (journal.REVENUE, journal.VAT_PAYABLE) and (
                self.start <= row.posted_on <= self.end
            ):
                key = (row.account, row.currency)
                found[key] = found.get(key, 0) + row.balance_cents
        period = f"{self.start.isoformat()}..{self.end.isoformat()}"
        for account, currency in sorted(set(expected) | set(found)):
            journal_cents = found.get((account, currency), 0)
            expected_cents = expected.get((account, currency), 0)
            if journal_cents != expected_cents:
                self.differences.append(
                    Difference("period", period, account, currency, journal_cents, expected_cents)
                )


def notes_of(notes: Iterable[CreditNote], invoice_id: UUID) -> list[CreditNote]:
    return [note for note in notes if note.invoice_id == invoice_id]


def paid_by_payments_cents(billing: BillingBase, invoice_id: UUID) -> int:
    """Σ the invoice's recorded payments that succeeded (refunded ones included: a refund is
    its credit note's business)."""
    try:
        collection: Collection = billing.repository.get(ids.collection_id(invoice_id))
    except AggregateNotFoundError:
        return 0
    total = 0
    for payment_id in collection.payment_ids:
        payment: Payment = billing.repository.get(payment_id)
        if payment.settled_status == "succeeded":
            total += payment.amount_cents
    return total


def _expected_invoice(
    invoice: Invoice,
    notes: Sequence[CreditNote],
    wallets: dict[UUID, Wallet],
    payments_cents: int = 0,
) -> dict[str, int]:
    """An invoice's balances (debit − credit) by account, from the invoice, its credit notes,
    its recorded payments and, for a top-up, its wallet: what the journal must say about it.

    Cash is what the payments brought, plus, when the invoice is marked paid, what they left
    due then. A payment that succeeds after its invoice was already marked paid (paid twice)
    is therefore reported as a difference: finance must look at it."""
    totals = invoice.totals
    gross = totals.sub_total_including_taxes_amount_cents
    voided = invoice.status == "voided"
    paid = invoice.payment_status == "succeeded"
    offsets = invoice.total_offsetted_credit_note_amount_cents
    marked = max(0, journal.cash_received_cents(invoice) - payments_cents) if paid else 0
    cash_in = payments_cents + marked
    refunds_paid = sum(n.refund_amount_cents for n in notes if n.refund_status == "succeeded")
    credited_total = sum(n.total_amount_cents for n in notes)
    # Credits a void gave back to the wallets reopen what they had paid (§8.8).
    recredited = sum(
        t.amount_cents
        for wallet in wallets.values()
        for t in wallet.transactions.values()
        if t.kind == "recredited" and t.invoice_id == invoice.id
    )
    receivable = (
        gross
        - totals.credit_notes_amount_cents
        - totals.prepaid_credit_amount_cents
        + recredited
        - offsets
        - cash_in
        - (gross - credited_total if voided else 0)
    )
    expected = {journal.RECEIVABLES: receivable, journal.CASH: cash_in - refunds_paid}
    top_up = journal.credit_top_up(invoice)
    if top_up is not None:
        wallet = wallets.get(top_up[0])
        transaction = wallet.transactions.get(top_up[1]) if wallet else None
        settled = transaction is not None and transaction.status == "settled"
        settled_cents = transaction.amount_cents if settled and transaction else 0
        expected[journal.TOP_UPS_AWAITING_PAYMENT] = (
            -gross + (gross if voided else 0) + settled_cents
        )
        return expected
    if voided:
        expected[journal.REVENUE] = 0
        expected[journal.VAT_PAYABLE] = 0
    else:
        fees_cents = sum(fee.amount_cents for fee in invoice.fees)
        expected[journal.REVENUE] = -(fees_cents - sum(invoice.credited_fee_cents.values()))
        expected[journal.VAT_PAYABLE] = -(
            totals.taxes_amount_cents - sum(n.taxes_amount_cents for n in notes)
        )
    return expected


def _expected_wallet(wallet: Wallet, billing: BillingBase) -> dict[str, int]:
    """A wallet's liabilities (debit − credit): its lots' remainders by kind, and its paid
    top-ups whose invoice is out but not paid."""
    paid = granted = awaiting = 0
    for transaction in wallet.entries():
        if transaction.transaction_type == "inbound" and transaction.status == "settled":
            if transaction.kind == "granted":
                granted += transaction.remaining_cents
            else:
                paid += transaction.remaining_cents
        if transaction.kind == "purchased" and transaction.invoice_id is not None:
            invoice: Invoice = billing.repository.get(transaction.invoice_id)
            if invoice.status == "finalized" and transaction.status != "settled":
                awaiting += transaction.amount_cents
            if invoice.status == "voided" and transaction.status == "settled":
                awaiting -= transaction.amount_cents
    return {
        journal.WALLET_PAID: -paid,
        journal.WALLET_GRANTED: -granted,
        journal.TOP_UPS_AWAITING_PAYMENT: -awaiting,
    }


# Small helpers.


def _check_choice(value: str, choices: Sequence[str], field_name: str) -> None:
    if value not in choices:
        raise InvalidValueError(field_name, "value_is_invalid", value)


def _check_period(date_from: date, date_to: date) -> None:
    if date_to < date_from:
        raise InvalidValueError("to", "invalid_date", date_to.isoformat())


def _ageing_bucket(days_past_due: int) -> str:
    for label, first, last in AGEING_BUCKETS:
        if (first is None or days_past_due >= first) and (last is None or days_past_due <= last):
            return label
    raise AssertionError(days_past_due)  # pragma: no cover (the buckets cover every integer)


def _dimension(row: JournalRow, dimension: str) -> str:
    if dimension == "month":
        return f"{row.posted_on:%Y-%m}"
    if dimension == "product_line":
        return row.product_line or ""
    if dimension == "customer":
        return row.external_customer_id
    return row.country or ""


def _month(day: date) -> date:
    return day.replace(day=1)


def _add_months(month: date, count: int) -> date:
    year, month0 = divmod(month.month - 1 + count, 12)
    return date(month.year + year, month0 + 1, 1)


def period_of(month: str) -> tuple[date, date]:
    """`YYYY-MM` → its first and last days."""
    try:
        first = date.fromisoformat(f"{month}-01")
    except ValueError:
        raise InvalidValueError("period", "value_is_invalid", month) from None
    return first, date.fromordinal(_add_months(first, 1).toordinal() - 1)
