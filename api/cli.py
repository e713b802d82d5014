"""The `tally` command: serve the API, manage organizations. `tally --help` lists everything."""

import argparse
import logging
import os
import signal
import sys
import threading
from collections.abc import Mapping, Sequence
from datetime import UTC, date, datetime
from types import FrameType
from uuid import UUID

from adapters.settings import SettingsError, settings_from_env
from adapters.stores import Ledger, open_ledger
from api.journal_cli import add_journal_commands
from api.payments_cli import add_payments_commands
from api.pdf import money
from api.webhook_payloads import WebhookPayloads
from application.audit_log import verify
from application.errors import AlreadyExistsError, NotFoundError
from application.invoicing import AuditReport
from application.webhooks import DeliveryWorker
from application.worker import BILLING_INTERVAL_S_DEFAULT, BillingWorker
from domain.errors import InvalidValueError
from domain.invoice import Invoice
from domain.organization import API_KEY_SCOPES, IssuedApiKey

DEFAULT_ORGANIZATION = "default"
# The billing worker's period; 0 keeps `tally serve` from billing (a `tally worker` does it).
BILLING_INTERVAL_ENV = "TALLY_BILLING_INTERVAL_S"
WORKER_STOP_TIMEOUT_S = 30.0  # How long `tally serve` waits for a billing run to finish.


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "run"):
        parser.print_help()
        return 2
    try:
        return int(args.run(args))
    except SettingsError as error:
        print(f"tally: {error}", file=sys.stderr)
        return 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tally",
        description="Tally: an event-sourced usage-billing ledger with Lago's v1 API. "
        "The store is chosen by TALLY_DATABASE_URL (unset: SQLite at ./.tally/tally.db).",
    )
    commands = parser.add_subparsers(title="commands")

    serve = commands.add_parser("serve", help="serve the HTTP API")
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=8000, help="port to bind (default 8000)")
    serve.add_argument("--workers", type=int, default=1, help="worker processes (default 1)")
    serve.set_defaults(run=serve_command)

    org = commands.add_parser("org", help="manage organizations")
    org_commands = org.add_subparsers(title="organization commands")
    create = org_commands.add_parser(
        "create", help="create an organization; its API key is printed alone on the last line"
    )
    create.add_argument("name", help="the organization's unique name")
    create.set_defaults(run=org_create_command)

    worker = commands.add_parser(
        "worker",
        help=f"run the billing run every {BILLING_INTERVAL_ENV} seconds (default "
        f"{BILLING_INTERVAL_S_DEFAULT:g}) in the foreground, until interrupted",
    )
    worker.set_defaults(run=worker_command)

    bill = commands.add_parser(
        "bill", help="run the billing run once; prints id, number, status and total per invoice"
    )
    bill.add_argument(
        "--at",
        type=_instant,
        default=None,
        help="the instant to bill at, ISO 8601 with an offset (default: now), for backfills",
    )
    bill.set_defaults(run=bill_command)

    audit = commands.add_parser("audit", help="recompute invoices from their recorded inputs")
    audit_commands = audit.add_subparsers(title="audit commands")
    audit_invoice = audit_commands.add_parser(
        "invoice", help="audit one invoice; exits 1 when it does not match"
    )
    audit_invoice.add_argument("invoice_id", type=UUID, help="the invoice's lago_id")
    audit_invoice.set_defaults(run=audit_invoice_command)
    audit_invoices = audit_commands.add_parser(
        "invoices",
        help="audit every finalized or voided invoice issued in a date range (both included); "
        "exits 1 when any does not match",
    )
    audit_invoices.add_argument("--from", dest="date_from", type=date.fromisoformat, required=True)
    audit_invoices.add_argument("--to", dest="date_to", type=date.fromisoformat, required=True)
    audit_invoices.set_defaults(run=audit_invoices_command)
    verify_log = audit_commands.add_parser(
        "verify-log",
        help="walk the audit log's hash chain; exits 1 naming the first broken entry",
    )
    verify_log.set_defaults(run=audit_verify_log_command)

    keys = commands.add_parser("keys", help="manage API keys (rotate: create, then revoke)")
    keys_commands = keys.add_subparsers(title="keys commands")
    keys_create = keys_commands.add_parser(
        "create", help="issue an API key; the key is printed alone on the last line, once"
    )
    keys_create.add_argument("organization", help="the organization's name")
    keys_create.add_argument(
        "--scope",
        choices=API_KEY_SCOPES,
        default="full",
        help="full (default), read_only, or ingest_only (POST /events, /events/batch and "
        "GET /events only)",
    )
    keys_create.add_argument(
        "--expires-at",
        type=_instant,
        default=None,
        help="when the key stops working, ISO 8601 with an offset (default: never)",
    )
    keys_create.set_defaults(run=keys_create_command)
    keys_list = keys_commands.add_parser(
        "list", help="the organization's keys: id, scope, expiry, status (never the keys)"
    )
    keys_list.add_argument("organization", help="the organization's name")
    keys_list.set_defaults(run=keys_list_command)
    keys_revoke = keys_commands.add_parser(
        "revoke", help="revoke a key by its id; every server refuses it from its next request"
    )
    keys_revoke.add_argument("key_id", type=UUID, help="the key's id (from `tally keys list`)")
    keys_revoke.set_defaults(run=keys_revoke_command)

    usage = commands.add_parser("usage", help="maintain the usage log")
    usage_commands = usage.add_subparsers(title="usage commands")
    rebuild = usage_commands.add_parser(
        "rebuild-rollups", help="recompute every usage rollup from the log; prints the row count"
    )
    rebuild.set_defaults(run=usage_rebuild_rollups_command)

    add_payments_commands(commands)
    add_journal_commands(commands)

    webhooks = commands.add_parser(
        "webhooks", help="deliver webhooks, show and rotate signing keys"
    )
    webhooks_commands = webhooks.add_subparsers(title="webhooks commands")
    deliver = webhooks_commands.add_parser(
        "deliver",
        help="deliver due webhooks in the foreground until interrupted (`tally serve` does it "
        "too); --once: one round, then print how many attempts it made",
    )
    deliver.add_argument("--once", action="store_true", help="one round, then exit")
    deliver.set_defaults(run=webhooks_deliver_command)
    hmac_key = webhooks_commands.add_parser(
        "hmac-key", help="print the organization's HMAC key, which signs its hmac webhooks"
    )
    hmac_key.add_argument("name", help="the organization's name")
    hmac_key.add_argument(
        "--rotate",
        action="store_true",
        help="issue a new key, which signs from now on, and print it (ADR 0022)",
    )
    hmac_key.add_argument(
        "--all", action="store_true", help="print every key it had, newest first, with dates"
    )
    hmac_key.set_defaults(run=webhooks_hmac_key_command)
    rotate_key = webhooks_commands.add_parser(
        "rotate-key",
        help="make a new RSA key pair that signs jwt webhooks from now on; the old public key "
        "stays listed by GET /api/v1/webhooks/public_keys for TALLY_WEBHOOK_KEY_GRACE_S",
    )
    rotate_key.set_defaults(run=webhooks_rotate_key_command)
    return parser


def serve_command(args: argparse.Namespace) -> int:
    import uvicorn  # Imported here: the other commands do not need a server.

    settings = settings_from_env()
    ledger = open_ledger(settings)
    try:
        if ledger.billing.find_organization(DEFAULT_ORGANIZATION) is None:
            _, api_key = ledger.billing.create_organization(DEFAULT_ORGANIZATION)
            base = f"http://{args.host}:{args.port}"
            print(
                f"Created the organization '{DEFAULT_ORGANIZATION}'. Its API key, shown only "
                f"this once:\n\n    {api_key}\n\nTry it:\n\n"
                f"    curl -s -X POST {base}/api/v1/customers \\\n"
                f"      -H 'Authorization: Bearer {api_key}' \\\n"
                "      -H 'Content-Type: application/json' \\\n"
                """      -d '{"customer": {"external_id": "cus_1", "name": "First customer"}}'\n""",
                flush=True,
            )
    finally:
        ledger.close()
    print(f"Tally serves {settings.store} ({settings.database_url}) on {args.host}:{args.port}")
    # One billing worker per `tally serve`, in this process: with --workers N it is uvicorn's
    # supervisor, which serves nothing, so N server processes still bill once, not N times.
    interval_s = billing_interval_s()
    worker_ledger = open_ledger(settings) if interval_s > 0 else None
    worker = (
        BillingWorker(
            worker_ledger.invoicing,
            interval_s,
            before=[worker_ledger.vat.run],
            after=[
                worker_ledger.payments.collect,
                worker_ledger.payments.dunning,
                lambda now: worker_ledger.journal.catch_up(),  # Reports then find it current.
            ],
        )
        if worker_ledger
        else None
    )
    if worker is not None:
        worker.start()
    try:
        if args.workers > 1:
            run_workers(args.host, args.port, args.workers)
        else:
            uvicorn.run(
                "api.app:create_app_from_env",
                factory=True,
                host=args.host,
                port=args.port,
                log_level="warning",
            )
    finally:
        if worker is not None and worker_ledger is not None:
            worker.stop(WORKER_STOP_TIMEOUT_S)
            worker_ledger.close()
    return 0


def run_workers(host: str, port: int, workers: int) -> None:
    """uvicorn's supervisor and N server processes, on a listening socket made here.

    uvicorn makes its shared socket without IPPROTO_TCP, so asyncio leaves Nagle's algorithm
    on for the accepted connections, and a keep-alive client waits ~40 ms (its delayed ACK)
    for the body of every response. A TCP socket here keeps TCP_NODELAY on, as with 1 worker.
    """
    import socket

    import uvicorn
    from uvicorn.supervisors import Multiprocess

    config = uvicorn.Config(
        "api.app:create_app_from_env",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        log_level="warning",
    )
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.bind((host, port))
    sock.set_inheritable(True)
    try:
        Multiprocess(config, sockets=[sock]).run()
    finally:
        sock.close()


def billing_interval_s(environ: Mapping[str, str] | None = None) -> float:
    """TALLY_BILLING_INTERVAL_S: seconds between billing runs (0: `tally serve` does not bill)."""
    environ = os.environ if environ is None else environ
    value = environ.get(BILLING_INTERVAL_ENV, "").strip()
    if not value:
        return BILLING_INTERVAL_S_DEFAULT
    try:
        interval_s = float(value)
    except ValueError:
        interval_s = -1.0
    if not 0 <= interval_s <= 86_400:
        raise SettingsError(
            f"{BILLING_INTERVAL_ENV}={value!r}: seconds from 0 (no billing in `tally serve`) "
            "to 86400."
        )
    return interval_s


def worker_command(args: argparse.Namespace) -> int:
    interval_s = billing_interval_s()
    if interval_s <= 0:
        raise SettingsError(f"{BILLING_INTERVAL_ENV}=0: `tally worker` needs a period.")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    ledger = open_ledger(settings_from_env())
    worker = BillingWorker(
        ledger.invoicing,
        interval_s,
        before=[ledger.vat.run],
        after=[
            ledger.payments.collect,
            ledger.payments.dunning,
            lambda now: ledger.journal.catch_up(),  # Reports then find it current.
        ],
    )

    def stop(signum: int, frame: FrameType | None) -> None:
        worker.stop()  # The run in progress finishes; the loop ends after it.

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    print(f"Tally bills every {interval_s:g} s; stop with Ctrl-C.", flush=True)
    try:
        worker.run_forever()
    finally:
        ledger.close()
    return 0


def bill_command(args: argparse.Namespace) -> int:
    ledger = open_ledger(settings_from_env())
    try:
        now = args.at or datetime.now(UTC)
        ledger.billing.now = lambda: now  # The whole run sees the same instant.
        ledger.vat.run(now)  # VAT-number checks first: a decision they unblock is used now.
        for invoice in ledger.invoicing.run(now):
            print(invoice_line(invoice))
    finally:
        ledger.close()
    return 0


def invoice_line(invoice: Invoice) -> str:
    total = money(invoice.totals.total_amount_cents, invoice.currency).replace(",", "")
    return f"{invoice.id} {invoice.number or '-'} {invoice.status} {total}"


def audit_invoice_command(args: argparse.Namespace) -> int:
    ledger = open_ledger(settings_from_env())
    try:
        found = _find_invoice(ledger, args.invoice_id)
        if found is None:
            print(f"tally: no invoice {args.invoice_id}", file=sys.stderr)
            return 2
        organization_id, invoice = found
        report = ledger.invoicing.audit(organization_id, invoice.id)
    finally:
        ledger.close()
    for line in audit_lines(invoice, report):
        print(line)
    return 0 if report.matches else 1


def audit_invoices_command(args: argparse.Namespace) -> int:
    ledger = open_ledger(settings_from_env())
    audited = mismatched = 0
    try:
        for organization_id in ledger.billing.organization_ids():
            invoices, _ = ledger.invoicing.invoices(organization_id, 1, 10**9)
            for invoice in sorted(invoices, key=lambda i: (i.issuing_date, str(i.number))):
                if invoice.status == "draft" or not (
                    args.date_from <= invoice.issuing_date <= args.date_to
                ):
                    continue
                report = ledger.invoicing.audit(organization_id, invoice.id)
                audited += 1
                if not report.matches:
                    mismatched += 1
                    for line in audit_lines(invoice, report):
                        print(line)
    finally:
        ledger.close()
    print(f"Audited {audited} invoices: {audited - mismatched} match, {mismatched} mismatch.")
    return 1 if mismatched else 0


def audit_lines(invoice: Invoice, report: AuditReport) -> list[str]:
    result = "match" if report.matches else "MISMATCH"
    lines = [
        f"invoice {invoice.id} {invoice.number or '-'} {invoice.status}: {result}",
        f"  content hash {report.content_hash}",
        f"  usage watermark {report.watermark}",
    ]
    lines.extend(
        f"  plan {p['lago_plan_id']} version {p['plan_version']} "
        f"(subscription {p['external_subscription_id']})"
        for p in report.plan_versions
    )
    stored = sum(fee.amount_cents for fee in report.stored)
    recomputed = sum(fee.amount_cents for fee in report.recomputed)
    lines.append(f"  fees {stored} cents stored, {recomputed} cents recomputed")
    for difference in report.differences:
        before, after = difference["stored"] or {}, difference["recomputed"] or {}
        changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
        lines.append(f"  differs: {difference['key']}")
        lines.extend(
            f"    {key}: stored {before.get(key)!r}, recomputed {after.get(key)!r}"
            for key in changed
        )
    return lines


def _find_invoice(ledger: Ledger, invoice_id: UUID) -> tuple[UUID, Invoice] | None:
    """The invoice and its organization: the command line has no API key to name one."""
    for organization_id in ledger.billing.organization_ids():
        try:
            return organization_id, ledger.invoicing.invoice(organization_id, invoice_id)
        except NotFoundError:
            continue
    return None


def _instant(value: str) -> datetime:
    instant = datetime.fromisoformat(value)
    if instant.tzinfo is None:
        raise argparse.ArgumentTypeError(f"{value!r} needs an offset, e.g. 2026-04-01T00:00:00Z")
    return instant.astimezone(UTC)


def org_create_command(args: argparse.Namespace) -> int:
    ledger = open_ledger(settings_from_env())
    try:
        organization, api_key = ledger.billing.create_organization(args.name)
    except (AlreadyExistsError, InvalidValueError) as error:
        print(f"tally: {error}", file=sys.stderr)
        return 1
    finally:
        ledger.close()
    print(f"Created organization '{organization.name}' ({organization.id}). API key:")
    print(api_key)
    return 0


def audit_verify_log_command(args: argparse.Namespace) -> int:
    ledger = open_ledger(settings_from_env())
    try:
        checked, broken = verify(ledger.audit_log)
        head_sequence, head_hash = ledger.audit_log.head()
    finally:
        ledger.close()
    if broken is not None:
        entry = f" ({broken.entry_id})" if broken.entry_id else ""
        print(
            f"Audit log BROKEN at entry {broken.sequence}{entry}: {broken.reason}. "
            f"{checked} entries before it are intact."
        )
        return 1
    print(f"Audit log intact: {checked} entries, head {head_sequence} {head_hash}.")
    return 0


def keys_create_command(args: argparse.Namespace) -> int:
    ledger = open_ledger(settings_from_env())
    try:
        organization = ledger.billing.find_organization(args.organization)
        if organization is None:
            print(f"tally: no organization {args.organization!r}", file=sys.stderr)
            return 1
        try:
            issued, api_key = ledger.billing.create_api_key(
                organization.id, scope=args.scope, expires_at=args.expires_at
            )
        except InvalidValueError as error:
            print(f"tally: {error}", file=sys.stderr)
            return 1
    finally:
        ledger.close()
    print(f"Issued API key {key_line(issued)} for '{organization.name}'. The key, shown once:")
    print(api_key)
    return 0


def keys_list_command(args: argparse.Namespace) -> int:
    ledger = open_ledger(settings_from_env())
    try:
        organization = ledger.billing.find_organization(args.organization)
        if organization is None:
            print(f"tally: no organization {args.organization!r}", file=sys.stderr)
            return 1
        issued = ledger.billing.api_keys(organization.id)
        now = ledger.billing.now()
    finally:
        ledger.close()
    for key in issued:
        print(key_line(key, now))
    return 0


def keys_revoke_command(args: argparse.Namespace) -> int:
    ledger = open_ledger(settings_from_env())
    try:
        revoked = ledger.billing.revoke_api_key(args.key_id)
    except NotFoundError:
        print(f"tally: no API key {args.key_id}", file=sys.stderr)
        return 1
    finally:
        ledger.close()
    print(f"Revoked API key {revoked.id}.")
    return 0


def key_line(key: IssuedApiKey, now: datetime | None = None) -> str:
    """id, scope, expiry and status: never the key."""
    expires = f"{key.expires_at.astimezone(UTC):%Y-%m-%dT%H:%M:%SZ}" if key.expires_at else "never"
    if key.revoked_at is not None:
        status = "revoked"
    elif now is not None and not key.is_valid_at(now):
        status = "expired"
    else:
        status = "active"
    return f"{key.id} scope={key.scope} expires={expires} status={status}"


def usage_rebuild_rollups_command(args: argparse.Namespace) -> int:
    ledger = open_ledger(settings_from_env())
    try:
        rows = ledger.usage.rebuild_rollups()
    finally:
        ledger.close()
    print(f"Rebuilt {rows} usage rollup rows.")
    return 0


def webhooks_deliver_command(args: argparse.Namespace) -> int:
    ledger = open_ledger(settings_from_env())
    webhooks = ledger.open_webhooks(WebhookPayloads(ledger.webhook_settings.api_url))
    try:
        if args.once:
            print(f"Made {webhooks.run_once()} delivery attempts.")
            return 0
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
        worker = DeliveryWorker(webhooks)
        stopped = threading.Event()
        signal.signal(signal.SIGTERM, lambda signum, frame: stopped.set())
        signal.signal(signal.SIGINT, lambda signum, frame: stopped.set())
        print("Tally delivers webhooks; stop with Ctrl-C.", flush=True)
        worker.start()
        stopped.wait()
        worker.stop()
    finally:
        ledger.close()
    return 0


def webhooks_hmac_key_command(args: argparse.Namespace) -> int:
    ledger = open_ledger(settings_from_env())
    try:
        organization = ledger.billing.find_organization(args.name)
        if organization is None:
            print(f"tally: no organization {args.name!r}", file=sys.stderr)
            return 1
        webhooks = ledger.open_webhooks(WebhookPayloads(ledger.webhook_settings.api_url))
        if args.rotate:
            print(webhooks.rotate_hmac_key(organization.id))
        elif args.all:
            for key, issued_at in webhooks.hmac_keys(organization.id):
                print(f"{key} {issued_at.isoformat()}")
        else:
            print(webhooks.hmac_key(organization.id))
    finally:
        ledger.close()
    return 0


def webhooks_rotate_key_command(args: argparse.Namespace) -> int:
    ledger = open_ledger(settings_from_env())
    try:
        webhooks = ledger.open_webhooks(WebhookPayloads(ledger.webhook_settings.api_url))
        key = webhooks.rotate_signing_key()
    finally:
        ledger.close()
    print(f"New signing key {key.kid}; the previous one stays listed for the grace period.")
    print(key.public_key_pem.decode(), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
