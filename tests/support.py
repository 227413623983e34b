"""Helpers for the tests: running `loyalty` processes, logging in, making customers, reading
whole histories, reaching the database behind the service's back, and holding its write path
so that requests land in one batch."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Iterable,
    Iterator,
    Mapping,
    Sequence,
)
from contextlib import ExitStack, asynccontextmanager, contextmanager, suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any, TypeVar

import asyncpg
import httpx

T = TypeVar("T")

ADMIN_EMAIL = "admin@example.com"
ADMIN_PASSWORD = "correct horse battery staple"
JWT_SECRET = "test-secret-that-is-long-enough-for-hs256-0123456789"
LOYALTY = [sys.executable, "-m", "loyalty"]
STARTUP_TIMEOUT_S = 60.0
ADJUST_PATH = "/admin/loyalty/points/adjust"
# The API's timestamps (UTC, to the millisecond) and ids.
TIMESTAMP = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")
ADJ_ID = re.compile(r"^adj_[0-9A-HJKMNP-TV-Z]{26}$")
USER_ID = re.compile(r"^user_[0-9A-HJKMNP-TV-Z]{26}$")
# Paging parameters that a paged list refuses with 400: limit outside 1..100, offset below 0,
# and numbers that are not integers.
BAD_PAGING = [
    {"limit": "0"},
    {"limit": "101"},
    {"limit": "-1"},
    {"limit": "abc"},
    {"limit": "1.5"},
    {"offset": "-1"},
    {"offset": "abc"},
    {"offset": "1.5"},
]


def paging_id(params: Mapping[str, str]) -> str:
    """A test id for paging parameters: their query string."""
    return "&".join(f"{k}={v}" for k, v in params.items())


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def service_env(database_url: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOYALTY_")}
    env.update(
        LOYALTY_DATABASE_URL=database_url,
        LOYALTY_ADMIN_EMAIL=ADMIN_EMAIL,
        LOYALTY_ADMIN_PASSWORD=ADMIN_PASSWORD,
        LOYALTY_JWT_SECRET=JWT_SECRET,
    )
    env.update(extra)
    return env


def run_cli(
    database_url: str, *args: str, stdin: str | None = None, env: Mapping[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*LOYALTY, *args],
        input=stdin,
        capture_output=True,
        text=True,
        env=service_env(database_url, **(env or {})),
        timeout=300,
        check=False,
    )


def user_create(
    database_url: str,
    email: str,
    password: str | None = ADMIN_PASSWORD,
    *,
    scopes: Sequence[str] = (),
    first_name: str | None = None,
    last_name: str | None = None,
    stdin: str | None = None,
) -> subprocess.CompletedProcess[str]:
    """`loyalty user create --email EMAIL --password PASSWORD` (`--password-stdin` when
    `password` is None), then a `--scope` for each of `scopes`, then the names given."""
    args = ["--email", email]
    args += ["--password-stdin"] if password is None else ["--password", password]
    args += [arg for scope in scopes for arg in ("--scope", scope)]
    args += ["--first-name", first_name] if first_name is not None else []
    args += ["--last-name", last_name] if last_name is not None else []
    return run_cli(database_url, "user", "create", *args, stdin=stdin)


def assert_verify(database_url: str) -> None:
    """`loyalty verify` finds every ledger invariant holding."""
    result = run_cli(database_url, "verify")
    assert result.returncode == 0, result.stdout + result.stderr


@dataclass
class Server:
    """A real `loyalty serve` process (in its own process group, workers included).

    Its stdout and stderr go to `log_path`; with `separate_stdout`, stdout goes to
    `stdout_path` alone (what the service prints for a person, such as the first-start
    banner) and stderr stays in `log_path`.
    """

    process: subprocess.Popen[bytes]
    port: int
    log_path: Path
    stdout_path: Path | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @classmethod
    def launch(
        cls,
        database_url: str,
        workdir: Path,
        workers: int = 1,
        port: int | None = None,
        *,
        separate_stdout: bool = False,
        without_env: Sequence[str] = (),
        **env: str,
    ) -> Server:
        """Starts the server and waits until /health answers 200. `without_env` names
        variables of the tests' usual environment to leave unset (such as the admin's)."""
        port = port or free_port()
        tag = f"{port}-{uuid.uuid4().hex[:6]}"
        log_path = workdir / f"server-{tag}.log"
        stdout_path = workdir / f"server-{tag}.stdout" if separate_stdout else None
        process_env = service_env(database_url, **env)
        for name in without_env:
            process_env.pop(name, None)
        with open(log_path, "wb") as log, open(stdout_path or os.devnull, "wb") as out:
            process = subprocess.Popen(
                [*LOYALTY, "serve", "--port", str(port), "--workers", str(workers)],
                stdout=out if separate_stdout else log,
                stderr=subprocess.STDOUT if not separate_stdout else log,
                env=process_env,
                cwd=workdir,
                start_new_session=True,
            )
        server = cls(process, port, log_path, stdout_path)
        server.wait_ready()
        return server

    # `with Server.start(...) as server:` stops the server (workers included) at the end.
    start = launch

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def wait_ready(self) -> None:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited early:\n{self.log()}")
            try:
                if httpx.get(f"{self.base_url}/health", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        self.kill()
        raise RuntimeError(f"server did not become ready:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stdout(self) -> str:
        """What the server printed on stdout (only with `separate_stdout`)."""
        assert self.stdout_path is not None, "started without separate_stdout"
        return self.stdout_path.read_text(errors="replace")

    def kill(self) -> None:
        """SIGKILL to the whole process group: the supervisor and every worker die at once."""
        with suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=30)

    def stop(self) -> None:
        if self.process.poll() is not None:
            return
        try:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.kill()
        except ProcessLookupError:
            pass


def log_tail(*servers: Server, chars: int = 4000) -> str:
    return "\n".join(f"--- {s.log_path} ---\n{s.log()[-chars:]}" for s in servers)


def login(server: Server, email: str, password: str) -> str:
    response = httpx.post(
        f"{server.base_url}/admin/auth/token",
        json={"email": email, "password": password},
        timeout=30,
    )
    response.raise_for_status()
    token: str = response.json()["token"]
    return token


@dataclass
class Backend:
    """One database kind with a running server and an admin token."""

    kind: str
    database_url: str
    server: Server
    token: str

    @classmethod
    @contextmanager
    def start(
        cls, kind: str, database_url: str, workdir: Path, workers: int = 1, **env: str
    ) -> Iterator[Backend]:
        """A `loyalty serve --workers N` on the database, and the admin's token for it."""
        with Server.start(database_url, workdir, workers=workers, **env) as server:
            yield cls(kind, database_url, server, login(server, ADMIN_EMAIL, ADMIN_PASSWORD))

    def client(self, token: str | None = None) -> httpx.Client:
        return httpx.Client(
            base_url=self.server.base_url,
            headers={"Authorization": f"Bearer {token or self.token}"},
            timeout=30,
        )

    def new_user(self, *scopes: str) -> tuple[str, str]:
        """A new admin user holding exactly `scopes` (every scope if none): its email and a
        token."""
        email = f"user-{uuid.uuid4().hex[:10]}@example.com"
        result = user_create(self.database_url, email, scopes=scopes)
        assert result.returncode == 0, result.stderr
        return email, login(self.server, email, ADMIN_PASSWORD)

    def user_token(self, *scopes: str) -> str:
        """A token for a new admin user holding exactly `scopes`."""
        return self.new_user(*scopes)[1]


def at_once(
    backends: Sequence[Backend],
    calls: Callable[[list[httpx.AsyncClient]], Iterable[Awaitable[T]]],
) -> list[T]:
    """The requests that `calls` makes, given one async client a backend (its admin token, 60 s
    a request), sent all at once: their answers in order, within 120 s in all."""

    async def main() -> list[T]:
        clients = [
            httpx.AsyncClient(
                base_url=backend.server.base_url,
                headers={"Authorization": f"Bearer {backend.token}"},
                timeout=60,
            )
            for backend in backends
        ]
        try:
            return await asyncio.wait_for(asyncio.gather(*calls(clients)), timeout=120)
        finally:
            for client in clients:
                await client.aclose()

    return asyncio.run(main())


def decoded(response: httpx.Response) -> Any:
    """A JSON body with every fractional number as an exact Decimal."""
    return json.loads(response.text, parse_float=Decimal)


def statuses(responses: Sequence[httpx.Response | httpx.TransportError]) -> Counter[object]:
    """Status codes, and the names of transport errors for requests that got no response."""
    return Counter(
        r.status_code if isinstance(r, httpx.Response) else type(r).__name__ for r in responses
    )


# --- whole histories ---------------------------------------------------------------------


HISTORY_PAGE = 100


@dataclass
class _HistoryPages:
    """The page logic of reading a whole history oldest first, shared by the sync and the
    async reader: each page must continue where the last one ended, and the count must not
    change between pages."""

    customer_id: str
    items: list[Any] = field(default_factory=list)
    count: int | None = None

    def path(self, base_url: str) -> str:
        return f"{base_url}/admin/loyalty/points/{self.customer_id}/history"

    def params(self) -> dict[str, str]:
        return {"order": "created_at", "limit": str(HISTORY_PAGE), "offset": str(len(self.items))}

    def add(self, response: httpx.Response) -> bool:
        """Takes one page; True when the history is complete."""
        assert response.status_code == 200, response.text
        page = decoded(response)
        assert page["limit"] == HISTORY_PAGE
        assert page["offset"] == len(self.items)
        self.count = page["count"] if self.count is None else self.count
        assert page["count"] == self.count, "the count changed between pages"
        self.items.extend(page["adjustments"])
        if not page["adjustments"] or len(self.items) >= self.count:
            assert len(self.items) == self.count
            return True
        return False


def full_history(client: httpx.Client, customer_id: str, base_url: str = "") -> list[Any]:
    """The customer's whole history, oldest first, in pages of 100 (amounts as Decimal)."""
    pages = _HistoryPages(customer_id)
    while not pages.add(client.get(pages.path(base_url), params=pages.params())):
        pass
    return pages.items


async def full_history_async(
    client: httpx.AsyncClient, customer_id: str, base_url: str = ""
) -> list[Any]:
    """`full_history` over an async client."""
    pages = _HistoryPages(customer_id)
    while not pages.add(await client.get(pages.path(base_url), params=pages.params())):
        pass
    return pages.items


# --- customers and adjustments -----------------------------------------------------------


def routed_operations() -> set[str]:
    """Every "METHOD /path" the service's router answers, read from the router of an app
    built in this process (no database is opened). HEAD, which every GET route also answers,
    is left out as the document leaves it out. A route that answers any method, such as a
    plain Starlette Mount, shows as "* /path", which no document lists."""
    from loyalty.app import create_app
    from loyalty.config import Settings
    from loyalty.http.routing import PathRoute

    app = create_app(Settings(database_url="sqlite:///unused.db"))
    operations = set()
    for route in app.routes:
        path = getattr(route, "path", "?")
        if isinstance(route, PathRoute):
            operations |= {f"{method} {path}" for method in route.declared_methods}
        else:
            methods = getattr(route, "methods", None) or {"*"}
            operations |= {f"{method} {path}" for method in methods - {"HEAD"}}
    return operations


def new_customer(client: httpx.Client, **fields: Any) -> dict[str, Any]:
    body = {"email": f"c-{uuid.uuid4().hex[:12]}@example.com", **fields}
    response = client.post("/admin/customers", json=body)
    assert response.status_code == 200, response.text
    customer: dict[str, Any] = response.json()["customer"]
    return customer


def adjust(
    client: httpx.Client, customer_id: str, delta: Any, reason: str | None = None, **params: str
) -> httpx.Response:
    body: dict[str, Any] = {"customer_id": customer_id, "delta": delta}
    if reason is not None:
        body["reason"] = reason
    return client.post(ADJUST_PATH, json=body, params=params)


def adjust_raw(client: httpx.Client, body: str, **params: str) -> httpx.Response:
    """An adjust request with a body written by hand, for exact JSON numbers."""
    return client.post(
        ADJUST_PATH,
        content=body.encode(),
        headers={"Content-Type": "application/json"},
        params=params,
    )


# --- references, reversals, expirations, pending points, bulk, the whole ledger ----------

ADJUSTMENTS_PATH = "/admin/loyalty/adjustments"
BULK_PATH = "/admin/loyalty/points/bulk-adjust"
PENDING_PATH = "/admin/loyalty/pending"
KEY_HEADER = "Idempotency-Key"
REPLAYED_HEADER = "Idempotent-Replayed"
ADJUSTMENT_FIELDS = frozenset(
    {
        "id",
        "customer_id",
        "type",
        "delta",
        "reason",
        "balance_after",
        "reference",
        "metadata",
        "expires_at",
        "reverses",
        "pending_id",
        "created_by",
        "created_at",
        "hash",
    }
)
PENDING_FIELDS = frozenset(
    {
        "id",
        "customer_id",
        "points",
        "reason",
        "reference",
        "metadata",
        "expires_at",
        "release_at",
        "status",
        "adjustment_id",
        "created_at",
        "updated_at",
    }
)
HASH = re.compile(r"^[0-9a-f]{64}$")
PND_ID = re.compile(r"^pnd_[0-9A-HJKMNP-TV-Z]{26}$")
UNKNOWN_ADJUSTMENT = "adj_01ARZ3NDEKTSV4RRFFQ69G5FAV"
UNKNOWN_PENDING = "pnd_01ARZ3NDEKTSV4RRFFQ69G5FAV"


def iso(moment: datetime) -> str:
    """A UTC time in the service's format (milliseconds, Z)."""
    utc = moment.astimezone(UTC)
    return utc.strftime("%Y-%m-%dT%H:%M:%S.") + f"{utc.microsecond // 1000:03d}Z"


def parse_time(text: str) -> datetime:
    """A timestamp the service wrote, as an aware UTC datetime."""
    assert TIMESTAMP.match(text), text
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)


def sleep_until(moment: str, margin_s: float = 0.0) -> None:
    """Sleeps until the service's time `moment` (plus a margin) has passed on this machine."""
    left = (parse_time(moment) - datetime.now(UTC)).total_seconds() + margin_s
    if left > 0:
        time.sleep(left)


def eventually(probe: Callable[[], T | None], timeout_s: float, what: str) -> T:
    """Polls `probe` until it returns something other than None; fails after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = probe()
        if value is not None:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout_s}s: {what}")
        time.sleep(0.1)


def post_json(
    client: httpx.Client,
    path: str,
    body: Any,
    key: str | None = None,
    **params: str,
) -> httpx.Response:
    """A POST with a JSON body (and an Idempotency-Key when given)."""
    headers = {KEY_HEADER: key} if key is not None else {}
    return client.post(path, json=body, headers=headers, params=params)


def assert_error(
    response: httpx.Response, status: int, kind: str, field: str | None = None
) -> dict[str, Any]:
    """An error in the envelope with this status and type; with `field`, an errors list
    naming it."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body: dict[str, Any] = response.json()
    assert body["type"] == kind, body
    assert isinstance(body["message"], str) and body["message"]
    assert set(body) <= {"type", "message", "errors"}, body
    if field is not None:
        assert field in {e["field"] for e in body.get("errors", [])}, body
    return body


def ok(response: httpx.Response) -> Any:
    """A 200's body, amounts as Decimal."""
    assert response.status_code == 200, response.text
    return decoded(response)


def balance_body(client: httpx.Client, customer_id: str, **params: str) -> Any:
    return ok(client.get(f"/admin/loyalty/points/{customer_id}", params=params))


def adjustment_of(client: httpx.Client, adjustment_id: str) -> Any:
    """GET /admin/loyalty/adjustments/{id}'s object (with reversed_points)."""
    body = ok(client.get(f"{ADJUSTMENTS_PATH}/{adjustment_id}"))
    assert set(body) == {"adjustment"}, body
    return body["adjustment"]


def reverse(
    client: httpx.Client,
    adjustment_id: str,
    points: Any = None,
    reason: str | None = None,
    key: str | None = None,
) -> httpx.Response:
    body: dict[str, Any] = {}
    if points is not None:
        body["points"] = points
    if reason is not None:
        body["reason"] = reason
    return post_json(client, f"{ADJUSTMENTS_PATH}/{adjustment_id}/reverse", body, key)


def adjust_with(client: httpx.Client, customer_id: str, delta: Any, **fields: Any) -> Any:
    """An adjustment with optional fields (reference, metadata, expires_at, reason) that
    must succeed; its response body."""
    body = {"customer_id": customer_id, "delta": delta, **fields}
    return ok(post_json(client, ADJUST_PATH, body))


def whole_ledger(
    client: httpx.Client, filters: Mapping[str, str] | None = None, limit: int = 100
) -> list[Any]:
    """Every page of GET /admin/loyalty/adjustments with these filters, newest first."""
    items: list[Any] = []
    params = {"limit": str(limit), **(filters or {})}
    for _ in range(10_000):
        page = ok(client.get(ADJUSTMENTS_PATH, params=params))
        assert set(page) == {"adjustments", "next_cursor"}, page
        assert len(page["adjustments"]) <= limit
        items.extend(page["adjustments"])
        if page["next_cursor"] is None:
            return items
        params = {**params, "cursor": page["next_cursor"]}
    raise AssertionError("the cursor never reached the end")


def user_id(server: Server, email: str = ADMIN_EMAIL, password: str = ADMIN_PASSWORD) -> str:
    """The id of a user, as the token route reports it."""
    response = httpx.post(
        f"{server.base_url}/admin/auth/token",
        json={"email": email, "password": password},
        timeout=30,
    )
    assert response.status_code == 200, response.text
    value: str = response.json()["user"]["id"]
    return value


@contextmanager
def backends_on_one_database(
    kind: str, database_url: str, workdir: Path, count: int = 2, **env: str
) -> Iterator[list[Backend]]:
    """`count` server processes (one worker each) on one database, each with the admin's
    token; on SQLite they share the file as workers do."""
    with ExitStack() as stack:
        yield [
            stack.enter_context(Backend.start(kind, database_url, workdir, workers=1, **env))
            for _ in range(count)
        ]


# --- the database behind the service's back ----------------------------------------------


def sql(database_url: str, statement: str, *args: Any) -> list[tuple[Any, ...]]:
    """Runs one statement (PostgreSQL's `$1` parameters) straight on the database, committed,
    and returns its rows."""
    if database_url.startswith("sqlite:///"):
        conn = sqlite3.connect(database_url.removeprefix("sqlite:///"), timeout=10)
        try:
            with conn:
                text = re.sub(r"\$(\d+)", r"?\1", statement)
                return [tuple(row) for row in conn.execute(text, args)]
        finally:
            conn.close()

    async def run() -> list[tuple[Any, ...]]:
        pg = await asyncpg.connect(database_url, timeout=10)
        try:
            return [tuple(row) for row in await pg.fetch(statement, *args)]
        finally:
            await pg.close()

    return asyncio.run(run())


@contextmanager
def append_only_lifted(database_url: str) -> Iterator[None]:
    """Lets UPDATE and DELETE reach loyalty_adjustments for the block, as someone with
    direct access to the database could, and puts the append-only guard back after.

    SQLite: the table's triggers are dropped and recreated from their own SQL. PostgreSQL:
    the table's user triggers are disabled and enabled again."""
    if database_url.startswith("sqlite:///"):
        triggers = sql(
            database_url,
            "SELECT name, sql FROM sqlite_master"
            " WHERE type = 'trigger' AND tbl_name = 'loyalty_adjustments'",
        )
        for name, _ in triggers:
            sql(database_url, f'DROP TRIGGER "{name}"')
        try:
            yield
        finally:
            for _, text in triggers:
                sql(database_url, text)
        return
    sql(database_url, "ALTER TABLE loyalty_adjustments DISABLE TRIGGER USER")
    try:
        yield
    finally:
        sql(database_url, "ALTER TABLE loyalty_adjustments ENABLE TRIGGER USER")


def table_rows(
    database_url: str, table: str, where: str = "", *args: Any, order: str = ""
) -> list[dict[str, Any]]:
    """Rows of a table straight from the database, each with every column by name;
    `where` and `order` are SQL after WHERE and ORDER BY, `args` its `$n` parameters."""
    if database_url.startswith("sqlite:///"):
        found = sql(database_url, f"SELECT name FROM pragma_table_info('{table}') ORDER BY cid")
    else:
        found = sql(
            database_url,
            "SELECT column_name::text FROM information_schema.columns"
            " WHERE table_name = $1 ORDER BY ordinal_position",
            table,
        )
    names = [name for (name,) in found]
    quoted = ", ".join(f'"{name}"' for name in names)
    statement = f"SELECT {quoted} FROM {table}"
    statement += f" WHERE {where}" if where else ""
    statement += f" ORDER BY {order}" if order else ""
    return [dict(zip(names, values, strict=True)) for values in sql(database_url, statement, *args)]


@dataclass
class VerifyReport:
    """What `loyalty verify` printed: its exit code, its output, and each failed check's
    line by the check's own words."""

    returncode: int
    output: str
    failed: dict[str, str]

    def failed_check(self, *words: str) -> str:
        """The one failed check whose name holds every word (case-insensitive)."""
        found = [name for name in self.failed if all(w.lower() in name.lower() for w in words)]
        assert len(found) == 1, f"no single failed check names {words}:\n{self.output}"
        return found[0]


def verify_report(database_url: str) -> VerifyReport:
    """Runs `loyalty verify` and reads its `FAIL  <check>: ...` lines."""
    result = run_cli(database_url, "verify")
    output = result.stdout + result.stderr
    assert "Traceback" not in output, output
    failed: dict[str, str] = {}
    for line in result.stdout.splitlines():
        match = re.match(r"FAIL\s+(.+?):\s+(.*)$", line)
        if match:
            failed[match.group(1)] = match.group(2)
    return VerifyReport(result.returncode, output, failed)


def chained_hash(previous_hash: str, item: Mapping[str, Any]) -> str:
    """An adjustment's hash recomputed from its API object (amounts as the JSON numbers the
    API wrote, read with `decoded`) and its customer's previous hash, with the service's own
    canonical encoding (SPEC section 6, invariant 8)."""
    from loyalty.ledger import chain

    fields = {name: item[name] for name in chain.HASHED_FIELDS}
    for name in ("delta", "balance_after"):
        fields[name] = str(item[name])
    hashed: str = chain.link(previous_hash, fields)
    return hashed


def iso_in(seconds: float) -> str:
    """The time `seconds` from now (negative: ago) in the API's format, to the millisecond."""
    from datetime import UTC, datetime

    moment = datetime.now(UTC) + timedelta(seconds=seconds)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


@asynccontextmanager
async def write_gate(database_url: str) -> AsyncIterator[None]:
    """Holds the database's write path until the block ends, so that the service's next
    adjustment batch waits in the database and the requests after it queue up together.

    SQLite: another connection holds the write lock (BEGIN IMMEDIATE; the service's writer
    waits up to its 5 s busy timeout). PostgreSQL: another session holds
    `loyalty_balances` in EXCLUSIVE mode, which the batch's SELECT ... FOR UPDATE waits for
    (plain reads go on). Hold it well under a second."""
    if database_url.startswith("sqlite:///"):
        conn = sqlite3.connect(
            database_url.removeprefix("sqlite:///"), isolation_level=None, timeout=10
        )
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield
            finally:
                conn.execute("ROLLBACK")
        finally:
            conn.close()
        return
    pg = await asyncpg.connect(database_url, timeout=10)
    try:
        transaction = pg.transaction()
        await transaction.start()
        try:
            await pg.execute("LOCK TABLE loyalty_balances IN EXCLUSIVE MODE")
            yield
        finally:
            await transaction.rollback()
    finally:
        await pg.close()


@dataclass(frozen=True)
class Call:
    """One adjust request of a batch: the body exactly as sent, and its headers' options."""

    body: str
    key: str | None = None
    token: str | None = None  # None: the batch's default token
    params: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def of(cls, customer_id: str, delta: str, key: str | None = None, **fields: Any) -> Call:
        parts = [f'"customer_id": {json.dumps(customer_id)}', f'"delta": {delta}']
        parts += [f"{json.dumps(name)}: {json.dumps(value)}" for name, value in fields.items()]
        return cls("{" + ", ".join(parts) + "}", key)


PLUG_WAIT_S = 0.2  # from the plug to the first request of the batch
ARRIVAL_GAP_S = 0.05  # between the batch's requests, so their order of arrival is known
QUEUE_WAIT_S = 0.5  # from the last request to letting the database go


async def send_as_one_batch(
    base_url: str, database_url: str, token: str, plug: Call, calls: Sequence[Call]
) -> tuple[httpx.Response, list[httpx.Response]]:
    """Sends `calls` so that a one-worker service applies them as one batch, in this order.

    With the write path held (write_gate), the `plug` is sent first: it becomes a batch of
    its own, which waits in the database. Then each call goes on a connection of its own,
    ARRIVAL_GAP_S apart; they queue behind the plug, and when the database is let go they
    are taken together as the next batch. Returns the plug's response and the calls' in
    order."""

    async def send(call: Call) -> httpx.Response:
        headers = {
            "Authorization": f"Bearer {call.token or token}",
            "Content-Type": "application/json",
        }
        if call.key is not None:
            headers["Idempotency-Key"] = call.key
        async with httpx.AsyncClient(base_url=base_url, timeout=60) as client:
            return await client.post(
                ADJUST_PATH, content=call.body.encode(), headers=headers, params=call.params
            )

    async with write_gate(database_url):
        plugged = asyncio.create_task(send(plug))
        await asyncio.sleep(PLUG_WAIT_S)
        tasks = []
        for call in calls:
            tasks.append(asyncio.create_task(send(call)))
            await asyncio.sleep(ARRIVAL_GAP_S)
        await asyncio.sleep(QUEUE_WAIT_S)
        assert not plugged.done(), f"the plug was not held: {plugged.result().text}"
    responses = await asyncio.wait_for(asyncio.gather(*tasks), timeout=60)
    return await plugged, list(responses)


def assert_one_batch(responses: Sequence[httpx.Response]) -> None:
    """The adjustments answered 200 were made in one transaction: a batch takes its time
    once, so they all carry one `updated_at` (to the millisecond)."""
    times = {r.json()["updated_at"] for r in responses if r.status_code == 200}
    assert len(times) == 1, f"the requests were not applied as one batch: {sorted(times)}"


# An adjustment's stored fields as `loyalty.ledger.chain.api_fields` takes them: a plain
# adjustment, to be overridden field by field.
PLAIN_ADJUSTMENT: dict[str, Any] = {
    "id": "adj_01ARZ3NDEKTSV4RRFFQ69G5FAV",
    "customer_id": "cus_1",
    "type": "adjustment",
    "delta_hundredths": 100,
    "balance_after_hundredths": 100,
    "reason": None,
    "reference": None,
    "metadata": None,
    "expires_at_ms": None,
    "reverses": None,
    "pending_id": None,
    "created_by": None,
    "created_at_ms": 1_700_000_000_000,
}


def adjustment_hash(previous_hash: str | None, **fields: Any) -> str:
    """The hash of an adjustment made of PLAIN_ADJUSTMENT and `fields`, after
    `previous_hash` (None for a customer's first)."""
    from loyalty.ledger import chain

    return chain.link(previous_hash, chain.api_fields(**{**PLAIN_ADJUSTMENT, **fields}))
