"""The `tally` command: serve the API, manage organizations. `tally --help` lists everything."""

import argparse
import sys
from collections.abc import Sequence

from adapters.settings import SettingsError, settings_from_env
from adapters.stores import open_ledger
from application.errors import AlreadyExistsError
from domain.errors import InvalidValueError

DEFAULT_ORGANIZATION = "default"


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

    usage = commands.add_parser("usage", help="maintain the usage log")
    usage_commands = usage.add_subparsers(title="usage commands")
    rebuild = usage_commands.add_parser(
        "rebuild-rollups", help="recompute every usage rollup from the log; prints the row count"
    )
    rebuild.set_defaults(run=usage_rebuild_rollups_command)
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
    uvicorn.run(
        "api.app:create_app_from_env",
        factory=True,
        host=args.host,
        port=args.port,
        workers=args.workers,
        log_level="warning",
    )
    return 0


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


def usage_rebuild_rollups_command(args: argparse.Namespace) -> int:
    ledger = open_ledger(settings_from_env())
    try:
        rows = ledger.usage.rebuild_rollups()
    finally:
        ledger.close()
    print(f"Rebuilt {rows} usage rollup rows.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
