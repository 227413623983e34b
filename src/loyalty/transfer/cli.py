"""The `loyalty import` and `loyalty export` subcommands: arguments, the target, the output."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path
from typing import Any

from loyalty import migrate, timestamps
from loyalty.config import Settings
from loyalty.db import open_database
from loyalty.errors import LoyaltyError
from loyalty.transfer import export, rows
from loyalty.transfer.importer import IN_FLIGHT, Importer
from loyalty.transfer.progress import Progress
from loyalty.transfer.targets import DatabaseTarget, ServiceTarget, Target

API_KEY_ENV = "LOYALTY_API_KEY"
# A whole-ledger export reads every adjustment in one snapshot.
EXPORT_TIMEOUT_S = 3600.0


class CommandError(Exception):
    """A usage or file error: one line on stderr, exit status 2."""


ERRORS = (CommandError, rows.FileRejected)


def add_commands(commands: Any) -> None:
    load = commands.add_parser(
        "import",
        help="apply adjustments from a CSV or JSON Lines file; exit 1 if any row is refused",
        description="Columns: customer_id, delta (required), reason, reference, email,"
        " expires_at, metadata. Rerun-safe: a row's reference (derived from its content when"
        " it has none) is never applied twice for a customer.",
    )
    load.add_argument("file", type=Path, metavar="FILE", help="a .csv or .jsonl/.ndjson file")
    load.add_argument("--dry-run", action="store_true", help="check and report; change nothing")
    load.add_argument(
        "--create-customers",
        action="store_true",
        help="create a missing customer with its row's email (else the row is refused)",
    )
    load.add_argument("--url", help="a running service (else LOYALTY_DATABASE_URL directly)")
    load.add_argument("--api-key", help=f"an sk_ key for --url (default: ${API_KEY_ENV})")
    load.add_argument("--token", help="a JWT for --url, instead of --api-key")
    load.add_argument(
        "--as",
        dest="as_email",
        metavar="EMAIL",
        help="without --url: the admin user the adjustments are recorded by (created_by)",
    )

    dump = commands.add_parser(
        "export", help="write every adjustment, oldest first, as CSV or JSON Lines"
    )
    dump.add_argument("--format", choices=export.FORMATS, default="csv")
    dump.add_argument("--since", metavar="T", help="only adjustments created at or after T")
    dump.add_argument("--output", type=Path, metavar="FILE", help="default: standard output")


def run_import(settings: Settings, args: argparse.Namespace) -> int:
    """Runs the import; its exit status (0 all applied or skipped, 1 some refused)."""
    kind = rows.file_format(args.file)
    target = _target(settings, args)
    progress = Progress(rows.count_lines(args.file) if sys.stderr.isatty() else 0)
    importer = Importer(target, args.create_customers, args.dry_run, progress.update)
    try:
        importer.run(rows.read_rows(args.file, kind))
    except Exception as error:
        # What was applied stays applied (and is skipped by a rerun): say how far it got.
        progress.finish(importer.summary.rows)
        if importer.summary.rows:
            for line in importer.summary.lines():
                print(line)
        if isinstance(error, rows.FileRejected):
            raise
        if isinstance(error, _stopping_errors()):
            done = importer.summary.applied + importer.summary.skipped
            resume = "; a rerun skips the rows already applied" if done else ""
            raise CommandError(f"{_said(error)}{resume}") from None
        raise
    finally:
        target.close()
    progress.finish(importer.summary.rows)
    for line in importer.summary.lines():
        print(line)
    return 1 if importer.summary.refused else 0


def _stopping_errors() -> tuple[type[Exception], ...]:
    """The failures that stop an import with a message (the service or database refusing
    or gone); anything else is a bug and keeps its traceback."""
    kinds: list[type[Exception]] = [LoyaltyError, OSError]
    try:
        from loyalty_client import LoyaltyError as ClientError
    except ImportError:
        return tuple(kinds)
    return (*kinds, ClientError)


def _target(settings: Settings, args: argparse.Namespace) -> Target:
    if args.url is None:
        if args.as_email is None:
            raise CommandError("give --url (a running service) or --as EMAIL (the database)")
        if args.api_key or args.token:
            raise CommandError("--api-key and --token go with --url")
        migrate.upgrade(settings.database_url)
        return DatabaseTarget(settings, args.as_email, args.create_customers)
    if args.as_email is not None:
        raise CommandError("--as is for the database directly; with --url the key decides")
    api_key = args.api_key or (None if args.token else os.environ.get(API_KEY_ENV))
    if bool(api_key) == bool(args.token):
        raise CommandError(f"--url needs --api-key (or ${API_KEY_ENV}) or --token, not both")
    try:
        from loyalty_client import LoyaltyClient
    except ImportError:
        raise CommandError(
            "--url needs the loyalty-client package: pip install ./clients/python"
        ) from None
    client = LoyaltyClient(args.url, api_key=api_key, token=args.token, timeout=120)
    return ServiceTarget(client, IN_FLIGHT)


def _said(error: Exception) -> str:
    message = getattr(error, "message", None)
    return message if isinstance(message, str) else str(error) or type(error).__name__


def run_export(settings: Settings, args: argparse.Namespace) -> None:
    since_ms = None
    if args.since is not None:
        try:
            since_ms = timestamps.parse(args.since)
        except ValueError:
            raise CommandError("--since must be an ISO 8601 date or date-time") from None

    async def write(output: Any) -> int:
        db = await open_database(settings.database_url, 2, EXPORT_TIMEOUT_S)
        try:
            return await export.export(db, output, args.format, since_ms)
        finally:
            await db.close()

    if args.output is None:
        count = asyncio.run(write(sys.stdout.buffer))
    else:
        # Written aside, then renamed: a failed export never leaves a file that looks whole.
        partial = args.output.with_name(args.output.name + ".partial")
        try:
            with partial.open("wb") as file:
                count = asyncio.run(write(file))
            os.replace(partial, args.output)
        except OSError as error:
            partial.unlink(missing_ok=True)
            raise CommandError(f"cannot write {args.output}: {error.strerror}") from None
    print(f"exported {count:,} adjustments", file=sys.stderr)
