"""The journal on SQLite and PostgreSQL: a seeded month whose report matches figures computed by
hand, `tally reconcile` finding nothing to report, then the one corrupted row it must report; a
rebuild from scratch that equals the live journal; the CSV export."""

import csv
import hashlib
import sqlite3
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path
from uuid import UUID

import psycopg
import pytest

from adapters.settings import Settings
from adapters.stores import Ledger
from api.cli import main
from application.journal import RowFilter
from application.metering import EventInput
from application.wallets import WalletValues
from domain.invoice import Invoice
from tests.conftest import postgres_url

MARCH_1 = datetime(2026, 3, 1, tzinfo=UTC)
APRIL_1 = datetime(2026, 4, 1, tzinfo=UTC)
APRIL = (date(2026, 4, 1), date(2026, 4, 30))


def at(ledger: Ledger, instant: datetime) -> None:
    ledger.billing.now = lambda: instant


def seed(ledger: Ledger) -> tuple[UUID, dict[str, Invoice]]:
    """March for two customers: FR (VAT 20 %) and DE (VAT 19 %), a 10.00 monthly base fee in
    arrears and tokens at 0.001 (model large: 0.002); FR holds 10.00 of granted credits, DE
    bought 50.00 and paid for them. Billed April 1; a credit note on FR's tokens April 10."""
    billing = ledger.billing
    at(ledger, MARCH_1)
    organization, _ = billing.create_organization("acme")
    org = organization.id
    billing.create_tax(org, "vat_fr", {"name": "TVA", "rate": "20"})
    billing.create_tax(org, "vat_de", {"name": "MwSt", "rate": "19"})
    metric = billing.create_billable_metric(
        org,
        "tokens",
        {
            "name": "Tokens",
            "aggregation_type": "sum_agg",
            "field_name": "tokens",
            "filters": [{"key": "model", "values": ["small", "large"]}],
        },
    )
    billing.create_plan(
        org,
        "api",
        {
            "name": "API",
            "interval": "monthly",
            "amount_cents": 1_000,
            "amount_currency": "EUR",
            "pay_in_advance": False,
            "charges": [
                {
                    "billable_metric_id": str(metric.id),
                    "charge_model": "standard",
                    "properties": {"amount": "0.001"},
                    "filters": [
                        {"values": {"model": ["large"]}, "properties": {"amount": "0.002"}}
                    ],
                }
            ],
        },
    )
    for customer, country, tax in (("fr_co", "FR", "vat_fr"), ("de_co", "DE", "vat_de")):
        billing.upsert_customer(
            org, customer, {"country": country, "currency": "EUR", "tax_codes": [tax]}
        )
        billing.create_subscription(
            org,
            f"sub_{customer}",
            external_customer_id=customer,
            plan_code="api",
            subscription_at=MARCH_1,
        )
    at(ledger, datetime(2026, 3, 10, tzinfo=UTC))
    for number, (subscription, tokens, model) in enumerate(
        (
            ("sub_fr_co", 10_000, "large"),
            ("sub_fr_co", 5_000, "small"),
            ("sub_de_co", 3_000, "large"),
        )
    ):
        ledger.metering.ingest(
            org,
            [
                EventInput(
                    f"t{number}",
                    subscription,
                    "tokens",
                    int(datetime(2026, 3, 9, tzinfo=UTC).timestamp()),
                    {"tokens": tokens, "model": model},
                    None,
                )
            ],
            batch=False,
        )
    ledger.wallets.create_wallet(
        org,
        WalletValues(
            external_customer_id="fr_co",
            currency="EUR",
            rate_amount=Decimal(1),
            code="promo",
            granted_credits=Decimal(10),
        ),
    )
    wallet = ledger.wallets.create_wallet(
        org,
        WalletValues(
            external_customer_id="de_co",
            currency="EUR",
            rate_amount=Decimal(1),
            code="prepaid",
            paid_credits=Decimal(50),
        ),
    )
    [top_up] = [t for t in wallet.entries() if t.kind == "purchased"]
    assert top_up.invoice_id is not None
    ledger.invoicing.set_payment_status(org, top_up.invoice_id, "succeeded")
    at(ledger, APRIL_1)
    invoices = {i.external_customer_id: i for i in ledger.invoicing.run(APRIL_1)}
    fr = invoices["fr_co"]
    [large] = [f for f in fr.fees if (f.filter_values or {}).get("model") == ["large"]]
    at(ledger, datetime(2026, 4, 10, tzinfo=UTC))
    ledger.credit_notes.create(
        org, fr.id, [(large.key, 500)], reason="other", credit_amount_cents=600
    )
    return org, invoices


def test_a_seeded_month_matches_hand_computed_figures_and_reconciles(
    store_ledger: Ledger,
    store_settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    org, invoices = seed(store_ledger)
    journal = store_ledger.journal
    # FR: 10.00 + tokens large 20.00 + other tokens 5.00 = 35.00, VAT 7.00; the wallet pays 10.00.
    # DE: 10.00 + tokens large 6.00 = 16.00, VAT 3.04; the wallet pays all 19.04.
    assert invoices["fr_co"].totals.total_amount_cents == 3_200
    assert invoices["de_co"].totals.total_amount_cents == 0
    # April's revenue: the invoices issued April 1, less the note's 5.00 on tokens large.
    revenue = journal.revenue(org, *APRIL, ["product_line"])
    assert [(dict(line.group)["product_line"], line.amount_cents) for line in revenue] == [
        ("subscription", 2_000),
        ("tokens", 500),
        ("tokens[model=large]", 2_100),
    ]
    by_customer = journal.revenue(org, *APRIL, ["customer", "country"])
    assert [(line.group, line.amount_cents) for line in by_customer] == [
        ((("customer", "de_co"), ("country", "DE")), 1_600),
        ((("customer", "fr_co"), ("country", "FR")), 3_000),
    ]
    assert journal.revenue(org, date(2026, 3, 1), date(2026, 3, 31)) == []  # A top-up is no sale.
    vat = journal.vat(org, *APRIL)
    assert [
        (v.country, v.tax_code, v.tax_rate, v.taxable_base_cents, v.tax_cents) for v in vat
    ] == [
        ("DE", "vat_de", Decimal("19"), 1_600, 304),
        ("FR", "vat_fr", Decimal("20"), 3_000, 600),
    ]
    # At the end of April: FR owes 32.00, due April 1; DE's top-up invoice is unpaid too, as
    # far as April knows: a payment is dated when it is recorded (today, long after April).
    ageing = journal.receivables_ageing(org, APRIL[1])
    assert [(a.key, a.total_cents, [b for b in a.buckets if b[1]]) for a in ageing] == [
        ("de_co", 5_000, [("days_31_60", 5_000)]),
        ("fr_co", 3_200, [("days_1_30", 3_200)]),
    ]
    # DE's prepaid credits keep 30.96; FR's granted 10.00 are spent.
    [liability] = journal.wallet_liability(org, APRIL[1])
    assert (liability.key, liability.paid_cents, liability.granted_cents) == ("de_co", 3_096, 0)
    balance = journal.trial_balance(org, APRIL[1])
    assert balance.balanced
    assert {line.account: line.balance_cents for line in balance.lines} == {
        "1100": 8_200,
        "2200": -904,
        "2300": -3_096,
        "2310": 0,
        "2350": 0,
        "2400": -600,
        "4000": -4_600,
        "6100": 1_000,
    }
    # tally reconcile finds nothing to report.
    store_ledger.invoicing.set_payment_status(org, invoices["fr_co"].id, "succeeded")
    monkeypatch.setenv("TALLY_DATABASE_URL", store_settings.database_url)
    assert main(["reconcile", "--period", "2026-04"]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == "Reconciled 2026-04: 0 differences."
    assert main(["reconcile", "--period", "2026-03", "--org", "acme"]) == 0
    capsys.readouterr()
    # After one revenue row is corrupted behind the journal's back, it reports the difference.
    corrupt(
        store_settings,
        "UPDATE {entries} SET credit_cents = credit_cents + 100 WHERE account = '4000' "
        "AND kind = 'invoice_finalized' AND product_line = 'subscription' AND reference = %s",
        invoices["fr_co"].number,
    )
    assert main(["reconcile", "--period", "2026-04"]) == 1
    out = capsys.readouterr().out
    number = invoices["fr_co"].number
    assert f"invoice {number} account 4000 EUR: journal -3100, expected -3000" in out
    assert "period 2026-04-01..2026-04-30 account 4000 EUR: journal -4700, expected -4600" in out
    assert "trial_balance 2026-04-30 account - EUR" in out
    assert f"transaction {invoices['fr_co'].id}:" in out
    assert out.strip().splitlines()[-1] == "Reconciled 2026-04: 4 differences."


def corrupt(settings: Settings, statement: str, *params: object) -> None:
    """Change a journal row directly in the database, as a bug or a hand edit would."""
    if settings.store == "sqlite":
        assert settings.sqlite_path is not None
        with sqlite3.connect(settings.sqlite_path) as connection:
            sql = statement.format(entries="journal_entries").replace("%s", "?")
            assert connection.execute(sql, params).rowcount == 1
        return
    url = postgres_url()
    assert url is not None and settings.postgres_schema is not None
    with psycopg.connect(url, autocommit=True) as connection:
        sql = statement.format(entries=f"{settings.postgres_schema}.journal_entries")
        assert connection.execute(sql, params).rowcount == 1  # type: ignore[arg-type]


def digest(ledger: Ledger) -> str:
    """An ordered digest of every journal row and invoice record."""
    ledger.journal.catch_up()
    rows = ledger.journal.view.rows(RowFilter())
    records = ledger.journal.view.invoices(None)
    assert rows and records
    return hashlib.sha256(repr((rows, records)).encode()).hexdigest()


def test_the_journal_rebuilt_from_scratch_equals_the_live_one(
    store_ledger: Ledger,
    store_settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    org, invoices = seed(store_ledger)
    store_ledger.invoicing.set_payment_status(org, invoices["fr_co"].id, "succeeded")
    live = digest(store_ledger)
    count = len(store_ledger.journal.view.rows(RowFilter()))
    assert store_ledger.journal.rebuild() == count
    assert digest(store_ledger) == live
    # The command line rebuilds the same journal, in another process's ledger.
    monkeypatch.setenv("TALLY_DATABASE_URL", store_settings.database_url)
    assert main(["project", "rebuild", "journal"]) == 0
    assert capsys.readouterr().out.strip() == f"Rebuilt the journal: {count} lines."
    assert digest(store_ledger) == live
    # Catching up again posts nothing twice.
    store_ledger.journal.catch_up()
    assert digest(store_ledger) == live


def test_the_export_writes_accounting_columns_in_major_units(
    store_ledger: Ledger,
    store_settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    _, invoices = seed(store_ledger)
    monkeypatch.setenv("TALLY_DATABASE_URL", store_settings.database_url)
    target = tmp_path / "april.csv"
    assert (
        main(["journal", "export", "--from", "2026-04-01", "--to", "2026-04-30", str(target)]) == 0
    )
    with target.open(newline="") as file:
        lines = list(csv.reader(file))
    assert lines[0] == ["account", "debit", "credit", "currency", "reference", "date"]
    number = invoices["fr_co"].number
    assert ["1100", "42.00", "0.00", "EUR", number, "2026-04-01"] in lines
    assert ["2200", "0.00", "7.00", "EUR", number, "2026-04-01"] in lines
    debit = sum(Decimal(line[1]) for line in lines[1:])
    credit = sum(Decimal(line[2]) for line in lines[1:])
    assert debit == credit > 0
    assert capsys.readouterr().out.strip() == f"Wrote {len(lines) - 1} journal lines to {target}."


def test_each_payment_posts_its_own_amount_on_the_day_it_was_recorded(
    store_ledger: Ledger,
) -> None:
    org, invoices = seed(store_ledger)
    de = invoices["fr_co"]  # 42.00 EUR less 10.00 of granted credits.
    due = de.total_due_amount_cents
    assert due > 1_000
    # Given a partial manual payment recorded April 12, the rest April 20
    at(store_ledger, datetime(2026, 4, 12, 15, tzinfo=UTC))
    store_ledger.payments.create_manual_payment(org, de.id, 1_000, "wire 1", None)
    at(store_ledger, datetime(2026, 4, 20, 9, tzinfo=UTC))
    store_ledger.payments.create_manual_payment(org, de.id, due - 1_000, "wire 2", None)
    assert store_ledger.invoicing.invoice(org, de.id).payment_status == "succeeded"
    # Then the journal has one cash posting per payment, dated when each was recorded
    cash = store_ledger.journal.rows(
        RowFilter(organization_id=org, invoice_id=de.id, accounts=("1200",))
    )
    assert [(r.kind, r.posted_on, r.debit_cents) for r in cash] == [
        ("payment_received", date(2026, 4, 12), 1_000),
        ("payment_received", date(2026, 4, 20), due - 1_000),
    ]
    # The invoice's status change to succeeded posts nothing more: the payments covered it.
    ageing_mid = store_ledger.journal.receivables_ageing(org, date(2026, 4, 15), "invoice")
    [line] = [a for a in ageing_mid if a.key == de.number]
    assert line.total_cents == due - 1_000
    assert store_ledger.journal.trial_balance(org, date(2026, 4, 30)).balanced
    assert store_ledger.journal.reconcile(*APRIL) == []
    # A rebuild posts the same rows.
    before = [(r.transaction_id, r.posted_on, r.debit_cents) for r in cash]
    store_ledger.journal.rebuild()
    again = store_ledger.journal.rows(
        RowFilter(organization_id=org, invoice_id=de.id, accounts=("1200",))
    )
    assert [(r.transaction_id, r.posted_on, r.debit_cents) for r in again] == before


def test_marking_paid_posts_only_what_payments_left_and_unmarking_takes_back_only_that(
    store_ledger: Ledger,
) -> None:
    org, invoices = seed(store_ledger)
    fr = invoices["fr_co"]
    at(store_ledger, datetime(2026, 4, 11, tzinfo=UTC))
    due = store_ledger.invoicing.invoice(org, fr.id).total_due_amount_cents
    store_ledger.payments.create_manual_payment(org, fr.id, 700, "cheque", None)
    at(store_ledger, datetime(2026, 4, 13, tzinfo=UTC))
    store_ledger.invoicing.set_payment_status(org, fr.id, "succeeded")
    at(store_ledger, datetime(2026, 4, 14, tzinfo=UTC))
    store_ledger.invoicing.set_payment_status(org, fr.id, "failed")
    cash = store_ledger.journal.rows(
        RowFilter(organization_id=org, invoice_id=fr.id, accounts=("1200",))
    )
    # (A status change carries no business date: it posts on the day the event was stored.)
    assert [(r.kind, r.balance_cents) for r in cash] == [
        ("payment_received", 700),
        ("payment_received", due - 700),
        ("payment_reversed", -(due - 700)),
    ]
    assert cash[0].posted_on == date(2026, 4, 11)
    assert store_ledger.journal.reconcile(*APRIL) == []
