"""The `loyalty` command: serve, db migrate, user create / delete / disable / enable,
api-key create, verify, import, export, relay.

Thin: each subcommand reads the settings, opens the database and calls the same services
the HTTP routes use.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import subprocess
import sys
import threading
from collections.abc import Awaitable, Callable
from typing import TypeVar

from loyalty import logs, metrics_dir, migrate, relay
from loyalty.api_keys import service as api_keys
from loyalty.api_keys.schemas import TITLE_MAX
from loyalty.auth import service as auth
from loyalty.auth.scopes import ALL_SCOPES
from loyalty.config import ConfigError, Settings
from loyalty.db import Database, open_database
from loyalty.errors import LoyaltyError
from loyalty.ledger.verify import verify
from loyalty.transfer import cli as transfer_cli

T = TypeVar("T")

# A whole-ledger check reads every adjustment: minutes for tens of millions of rows.
VERIFY_TIMEOUT_S = 3600.0
RELAY_STOP_S = 10.0
RELAY_CHECK_S = 1.0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="loyalty", description="Loyalty Points API service")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="apply migrations, then serve the HTTP API")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=9000)
    serve.add_argument("--workers", type=int, default=1, help="worker processes (default 1)")

    db = commands.add_parser("db", help="database maintenance")
    db_commands = db.add_subparsers(dest="db_command", required=True)
    db_commands.add_parser("migrate", help="apply pending migrations")

    user = commands.add_parser("user", help="admin users")
    user_commands = user.add_subparsers(dest="user_command", required=True)
    create = user_commands.add_parser("create", help="create an admin user; prints its id")
    create.add_argument("--email", required=True)
    secret = create.add_mutually_exclusive_group(required=True)
    secret.add_argument("--password")
    secret.add_argument(
        "--password-stdin", action="store_true", help="read the password from standard input"
    )
    create.add_argument(
        "--scope",
        action="append",
        dest="scopes",
        metavar="SCOPE",
        help=f"repeatable; default: every scope ({', '.join(ALL_SCOPES)})",
    )
    create.add_argument("--first-name")
    create.add_argument("--last-name")
    delete = user_commands.add_parser(
        "delete", help="delete an admin user; its tokens stop working"
    )
    delete.add_argument("--email", required=True)
    disable = user_commands.add_parser(
        "disable", help="disable an admin user: no login, and its tokens stop working at once"
    )
    disable.add_argument("--email", required=True)
    enable = user_commands.add_parser("enable", help="enable a disabled admin user again")
    enable.add_argument("--email", required=True)

    api_key = commands.add_parser("api-key", help="secret API keys")
    api_key_commands = api_key.add_subparsers(dest="api_key_command", required=True)
    key_create = api_key_commands.add_parser(
        "create", help="create a secret API key for a user; prints its token (shown only once)"
    )
    key_create.add_argument("--email", required=True, help="the user the key acts for")
    key_create.add_argument("--title", required=True)
    key_create.add_argument(
        "--scope",
        action="append",
        dest="scopes",
        metavar="SCOPE",
        help="repeatable; default: every scope the user holds (and never more)",
    )

    commands.add_parser("verify", help="check every ledger invariant; exit 1 if any fails")
    commands.add_parser(
        "relay",
        help="hand committed events to webhooks and NATS (serve runs one; this runs one alone)",
    )
    transfer_cli.add_commands(commands)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    try:
        settings = Settings.from_env()
        if args.command == "serve":
            _serve(settings, args.host, args.port, args.workers)
        elif args.command == "db":
            migrate.upgrade(settings.database_url)
            print("migrations applied")
        elif args.command == "user" and args.user_command == "create":
            _user_create(settings, args)
        elif args.command == "user" and args.user_command in ("disable", "enable"):
            _user_set_disabled(settings, args.email, args.user_command == "disable")
        elif args.command == "user":
            _user_delete(settings, args.email)
        elif args.command == "api-key":
            _api_key_create(settings, args)
        elif args.command == "relay":
            migrate.upgrade(settings.database_url)
            relay.main(settings)
        elif args.command == "verify":
            migrate.upgrade(settings.database_url)
            ok = _with_db(settings, lambda db: verify(db, print), VERIFY_TIMEOUT_S)
            sys.exit(0 if ok else 1)
        elif args.command == "import":
            sys.exit(transfer_cli.run_import(settings, args))
        elif args.command == "export":
            transfer_cli.run_export(settings, args)
    except (ConfigError, ValueError, *transfer_cli.ERRORS) as error:
        _fail(str(error))
    except LoyaltyError as error:
        _fail(error.message)


def _fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def _with_db(
    settings: Settings,
    work: Callable[[Database], Awaitable[T]],
    command_timeout_s: float | None = None,
) -> T:
    async def run() -> T:
        db = await open_database(settings.database_url, 2, command_timeout_s)
        try:
            return await work(db)
        finally:
            await db.close()

    return asyncio.run(run())


def _user_create(settings: Settings, args: argparse.Namespace) -> None:
    password = sys.stdin.readline().rstrip("\r\n") if args.password_stdin else args.password
    scopes = tuple(args.scopes) if args.scopes else ALL_SCOPES
    migrate.upgrade(settings.database_url)
    user = _with_db(
        settings,
        lambda db: auth.create_user(
            db, args.email, password, scopes, args.first_name, args.last_name
        ),
    )
    print(user.id)


def _api_key_create(settings: Settings, args: argparse.Namespace) -> None:
    if not 1 <= len(args.title) <= TITLE_MAX:
        raise ValueError(f"--title must be 1 to {TITLE_MAX} characters")
    migrate.upgrade(settings.database_url)
    token = _with_db(
        settings,
        lambda db: api_keys.create_key_for_email(db, args.email, args.title, args.scopes),
    )
    print(token)


def _user_delete(settings: Settings, email: str) -> None:
    user_id = _with_db(settings, lambda db: auth.delete_user(db, email))
    if user_id is None:
        _fail(f"no user with email {email}")
    print(user_id)


def _user_set_disabled(settings: Settings, email: str, disabled: bool) -> None:
    migrate.upgrade(settings.database_url)
    user_id = _with_db(settings, lambda db: auth.set_user_disabled(db, email, disabled))
    if user_id is None:
        _fail(f"no user with email {email}")
    print(user_id)


def _serve(settings: Settings, host: str, port: int, workers: int) -> None:
    if not 1 <= workers <= 64:
        raise ValueError("--workers must be between 1 and 64")
    if not 0 < port < 65536:
        raise ValueError("--port must be between 1 and 65535")
    migrate.upgrade(settings.database_url)

    async def prepare(db: Database) -> tuple[str, str] | None:
        await auth.ensure_jwt_secret(db, settings)
        return await auth.ensure_first_admin(db, settings)

    credentials = _with_db(settings, prepare)
    if credentials is not None:
        _announce_admin(*credentials)
    # Before anything imports prometheus_client, so that it and every worker see it.
    directory = metrics_dir.fresh()
    # With one worker, uvicorn shuts down on SIGTERM and then raises the signal again once
    # its own handler is gone; as an exception here, the directory is still removed, and the
    # exit is 0 as with several workers.
    signal.signal(signal.SIGTERM, _exit_after_shutdown)
    # Webhooks and NATS are fed by a process beside the workers (relay.py); it inherits the
    # metrics directory, and it is in the server's process group.
    relay_process = _Relay()
    try:
        _run_uvicorn(settings, host, port, workers)
    finally:
        relay_process.stop()
        metrics_dir.remove(directory)


class _Relay:
    """This server's relay process, started again should it ever stop on its own."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._process = self._spawn()
        threading.Thread(target=self._watch, name="relay-watch", daemon=True).start()

    @staticmethod
    def _spawn() -> subprocess.Popen[bytes]:
        return subprocess.Popen([sys.executable, "-m", "loyalty", "relay"])

    def _watch(self) -> None:
        while not self._stopping.wait(RELAY_CHECK_S):
            with self._lock:
                if self._stopping.is_set() or self._process.poll() is None:
                    continue
                logging.getLogger("loyalty").warning(
                    "the relay stopped (exit %s); starting another", self._process.returncode
                )
                self._process = self._spawn()

    def stop(self) -> None:
        """SIGTERM, then time to store positions and give leases up, then SIGKILL."""
        with self._lock:
            self._stopping.set()
            self._process.terminate()
            try:
                self._process.wait(RELAY_STOP_S)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()


def _exit_after_shutdown(signum: int, frame: object) -> None:
    raise SystemExit(0)


def _run_uvicorn(settings: Settings, host: str, port: int, workers: int) -> None:
    import uvicorn

    uvicorn.run(
        "loyalty.app:create_app",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        loop="uvloop",
        # httptools, with a read deadline per request and a bound on its headers.
        http="loyalty.http.protocol:BoundedHttpToolsProtocol",
        # One JSON line per request comes from loyalty.request_log instead.
        access_log=False,
        log_config=logs.logging_config(settings.log_level),
        # X-Forwarded-For is believed only from the proxies LOYALTY_TRUST_PROXY names
        # (uvicorn would otherwise believe any local process that sends it).
        proxy_headers=bool(settings.trust_proxy),
        forwarded_allow_ips=list(settings.trust_proxy) or None,
        timeout_graceful_shutdown=30,
    )


def _announce_admin(email: str, password: str) -> None:
    rule = "=" * 72
    print(
        f"{rule}\n"
        "  First start: an admin user was created. Save this password now;\n"
        "  it is shown only this once.\n"
        f"    email:    {email}\n"
        f"    password: {password}\n"
        f"{rule}",
        flush=True,
    )
