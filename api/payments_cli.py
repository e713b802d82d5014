"""`tally payments collect | reconcile`: payment collection on demand, and bank statements."""

import argparse
import sys
from datetime import UTC, datetime
from pathlib import Path

from adapters.bank_transfer import amount_string, read_statement
from adapters.settings import settings_from_env
from adapters.stores import open_ledger
from domain.errors import InvalidValueError

DEFAULT_ORGANIZATION = "default"


def add_payments_commands(
    commands: "argparse._SubParsersAction[argparse.ArgumentParser]",
) -> None:
    payments = commands.add_parser("payments", help="collect payments, reconcile transfers")
    payments_commands = payments.add_subparsers(title="payments commands")
    collect = payments_commands.add_parser(
        "collect",
        help="one collection round now (`tally serve` and `tally worker` run one after every "
        "billing run): webhooks left in the inbox, attempts due, retries, refunds, overdue "
        "invoices; prints one line per attempt started",
    )
    collect.add_argument("--at", type=_instant, default=None, help="ISO 8601 with an offset")
    collect.set_defaults(run=collect_command)
    reconcile = payments_commands.add_parser(
        "reconcile",
        help="match a bank statement (CSV: reference,amount,currency[,received_at]) to pending "
        "bank-transfer payments; prints one line per statement line",
    )
    reconcile.add_argument("file", type=Path, help="the statement, CSV with a header line")
    reconcile.add_argument(
        "--org", default=DEFAULT_ORGANIZATION, help="the organization's name (default: default)"
    )
    reconcile.set_defaults(run=reconcile_command)


def collect_command(args: argparse.Namespace) -> int:
    ledger = open_ledger(settings_from_env())
    try:
        now = args.at or datetime.now(UTC)
        ledger.billing.now = lambda: now
        started = ledger.payments.collect(now) + ledger.payments.dunning(now)
    finally:
        ledger.close()
    for payment in started:
        amount = amount_string(payment.amount_cents, payment.currency)
        print(
            f"{payment.id} invoice {payment.invoice_id} attempt {payment.number} "
            f"{payment.connection_code} {amount} {payment.currency} {payment.status}"
        )
    return 0


def reconcile_command(args: argparse.Namespace) -> int:
    ledger = open_ledger(settings_from_env())
    try:
        organization = ledger.billing.find_organization(args.org)
        if organization is None:
            print(f"tally: no organization {args.org!r}", file=sys.stderr)
            return 1
        try:
            transfers = list(read_statement(args.file.read_text()))
        except InvalidValueError as error:
            print(f"tally: {args.file}: {error}", file=sys.stderr)
            return 1
        results = ledger.payments.reconcile_transfers(organization.id, transfers)
    finally:
        ledger.close()
    for result in results:
        transfer = result.transfer
        amount = amount_string(transfer.amount_cents, transfer.currency)
        print(
            f"{transfer.reference} {amount} {transfer.currency} {result.result} "
            f"{result.payment_id or '-'}"
        )
    return 0 if all(r.result in ("matched", "already_matched") for r in results) else 1


def _instant(value: str) -> datetime:
    instant = datetime.fromisoformat(value)
    if instant.tzinfo is None:
        raise argparse.ArgumentTypeError(f"{value!r} needs an offset, e.g. 2026-04-01T00:00:00Z")
    return instant.astimezone(UTC)
