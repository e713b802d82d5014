"""`tally reconcile | journal export | project rebuild journal`: the journal from the command line
(ADR 0019)."""

import argparse
import sys
from datetime import date
from pathlib import Path
from uuid import UUID

from adapters.settings import settings_from_env
from adapters.stores import Ledger, open_ledger
from api.controllers.journal import EXPORT_COLUMNS, csv_text, export_lines
from application.journal import RowFilter, period_of
from domain.errors import InvalidValueError


def add_journal_commands(
    commands: "argparse._SubParsersAction[argparse.ArgumentParser]",
) -> None:
    reconcile = commands.add_parser(
        "reconcile",
        help="tie the journal out to the invoices, credit notes, payments and wallets of a "
        "month; prints every difference and exits 1 if there is any",
    )
    reconcile.add_argument("--period", required=True, help="the month, YYYY-MM")
    reconcile.add_argument("--org", default=None, help="one organization's name (default: all)")
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
    ledger = open_ledger(settings_from_env())
    try:
        organization_id = _organization(ledger, args.org)
        differences = ledger.journal.reconcile(date_from, date_to, organization_id)
    except LookupError as error:
        print(f"tally: {error}", file=sys.stderr)
        return 2
    finally:
        ledger.close()
    for difference in differences:
        print(difference)
    print(f"Reconciled {args.period}: {len(differences)} differences.")
    return 1 if differences else 0


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
