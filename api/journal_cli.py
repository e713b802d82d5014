"""`tally reconcile | journal export | project rebuild journal`: the journal from the command line
(ADR 0019)."""

import argparse
import sys
from datetime import date
from pathlib import Path
from uuid import UUID

from adapters.bank_transfer import amount_string, read_statement
from adapters.settings import settings_from_env
from adapters.stores import Ledger, open_ledger
from api.controllers.journal import EXPORT_COLUMNS, csv_text, export_lines
from application.journal import RowFilter, period_of
from application.payments import ProcessorReconciliation, TransferReceived
from domain.errors import InvalidValueError


def add_journal_commands(
    commands: "argparse._SubParsersAction[argparse.ArgumentParser]",
) -> None:
    reconcile = commands.add_parser(
        "reconcile",
        help="tie the journal out to the invoices, credit notes, payments and wallets of a "
        "month, and match each payment processor's balance transactions of the month to the "
        "payments recorded; prints every difference and exits 1 if there is any",
    )
    reconcile.add_argument("--period", required=True, help="the month, YYYY-MM")
    reconcile.add_argument("--org", default=None, help="one organization's name (default: all)")
    reconcile.add_argument(
        "--statement",
        action="append",
        default=[],
        metavar="CODE=FILE.csv",
        help="a bank statement (CSV: reference, amount, currency, received_at) for the "
        "bank-transfer connection CODE; may be repeated",
    )
    reconcile.set_defaults(run=reconcile_command)

    journal = commands.add_parser("journal", help="the double-entry journal")
    journal_commands = journal.add_subparsers(title="journal commands")
    export = journal_commands.add_parser(
        "export",
        help="write the entries posted from --from to --to (both included) as CSV: account, "
        "debit, credit, currency, reference, date (amounts in major units)",
    )
    export.add_argument("--from", dest="date_from", type=date.fromisoformat, required=True)
    export.add_argument("--to", dest="date_to", type=date.fromisoformat, required=True)
    export.add_argument("--org", default=None, help="one organization's name (default: all)")
    export.add_argument("file", type=Path, help="the CSV file to write")
    export.set_defaults(run=journal_export_command)

    project = commands.add_parser("project", help="maintain projections")
    project_commands = project.add_subparsers(title="project commands")
    rebuild = project_commands.add_parser(
        "rebuild",
        help="forget a projection and rebuild it from the event log; stop `tally serve` and "
        "`tally worker` first, or a catch-up racing the reset may skip events",
    )
    rebuild.add_argument("projection", choices=["journal"], help="the projection to rebuild")
    rebuild.set_defaults(run=project_rebuild_command)


def reconcile_command(args: argparse.Namespace) -> int:
    try:
        date_from, date_to = period_of(args.period)
    except InvalidValueError:
        print(f"tally: --period {args.period!r} is not a month (YYYY-MM)", file=sys.stderr)
        return 2
    try:
        statements = _statements(args.statement)
    except (OSError, ValueError, InvalidValueError) as error:
        print(f"tally: --statement: {error}", file=sys.stderr)
        return 2
    ledger = open_ledger(settings_from_env())
    try:
        organization_id = _organization(ledger, args.org)
        differences = ledger.journal.reconcile(date_from, date_to, organization_id)
        processors = ledger.payments.reconcile_processors(
            organization_id, date_from, date_to, statements
        )
    except LookupError as error:
        print(f"tally: {error}", file=sys.stderr)
        return 2
    finally:
        ledger.close()
    for difference in differences:
        print(difference)
    for item in processors.differences:
        print(item)
    for line in _processor_summary(processors):
        print(line)
    count = len(differences) + len(processors.differences)
    print(f"Reconciled {args.period}: {count} differences.")
    return 1 if count else 0


def _statements(values: list[str]) -> dict[str, list[TransferReceived]]:
    """`CODE=FILE.csv` → the statement's lines by connection code."""
    statements: dict[str, list[TransferReceived]] = {}
    for value in values:
        code, separator, path = value.partition("=")
        if not separator or not code or not path:
            raise ValueError(f"{value!r} is not CODE=FILE.csv")
        statements.setdefault(code, []).extend(read_statement(Path(path).read_text()))
    return statements


def _processor_summary(report: ProcessorReconciliation) -> list[str]:
    """Per connection: what matched, the fees the processor kept (not in the journal: ADR
    0021) and its payouts."""
    lines = []
    codes = sorted(
        {i.connection_code for i in report.items}
        | {code for code, _, _ in report.fees}
        | {code for code, _ in report.payouts}
    )
    for code in codes:
        matched = sum(1 for i in report.matched if i.connection_code == code)
        parts = [f"Processor {code}: {matched} matched"]
        parts += [
            f"fees {currency} {amount_string(cents, currency)}"
            for fee_code, currency, cents in report.fees
            if fee_code == code
        ]
        parts += [
            f"payout {p.payout_id} {p.currency} {amount_string(p.amount_cents, p.currency)}"
            + (f" arriving {p.arrival_on.isoformat()}" if p.arrival_on else "")
            for payout_code, p in report.payouts
            if payout_code == code
        ]
        lines.append("; ".join(parts) + ".")
    return lines


def journal_export_command(args: argparse.Namespace) -> int:
    if args.date_to < args.date_from:
        print("tally: --to is before --from", file=sys.stderr)
        return 2
    ledger = open_ledger(settings_from_env())
    try:
        organization_id = _organization(ledger, args.org)
        rows = ledger.journal.rows(
            RowFilter(
                organization_id=organization_id, posted_from=args.date_from, posted_to=args.date_to
            )
        )
    except LookupError as error:
        print(f"tally: {error}", file=sys.stderr)
        return 2
    finally:
        ledger.close()
    args.file.write_text(csv_text(EXPORT_COLUMNS, export_lines(rows)), newline="")
    print(f"Wrote {len(rows)} journal lines to {args.file}.")
    return 0


def project_rebuild_command(args: argparse.Namespace) -> int:
    ledger = open_ledger(settings_from_env())
    try:
        rows = ledger.journal.rebuild()
    finally:
        ledger.close()
    print(f"Rebuilt the {args.projection}: {rows} lines.")
    return 0


def _organization(ledger: Ledger, name: str | None) -> UUID | None:
    if name is None:
        return None
    organization = ledger.billing.find_organization(name)
    if organization is None:
        raise LookupError(f"no organization {name!r}")
    return organization.id
