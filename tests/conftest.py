"""Fixtures: real databases (a fresh SQLite file, a fresh PostgreSQL database) and real
`loyalty serve` processes on loopback ports. Every test that takes `backend` runs on both.

`--shuffle[=SEED]` runs the test files in a random order and the tests of each file in a
random order (the seed is printed), to prove that no test depends on what another left.
"""

from __future__ import annotations

import asyncio
import os
import random
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import asyncpg
import httpx
import pytest

from tests.support import (
    ADMIN_EMAIL,
    ADMIN_PASSWORD,
    Backend,
    Server,
    assert_verify,
    backends_on_one_database,
    login,
)

PG_ADMIN_URL = os.environ.get(
    "LOYALTY_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)
IN_CI = os.environ.get("CI", "").lower() == "true"


def _pg_admin(sql: str) -> None:
    async def run() -> None:
        conn = await asyncpg.connect(PG_ADMIN_URL, timeout=5)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(run())


@pytest.fixture(scope="session")
def pg_available() -> bool:
    try:
        _pg_admin("SELECT 1")
    except (OSError, asyncpg.PostgresError) as error:
        if IN_CI:
            pytest.fail(f"PostgreSQL is unreachable under CI: {error}")
        return False
    return True


class DatabaseFactory:
    """Makes fresh databases of one kind and drops them all at the end of the session."""

    def __init__(self, kind: str, tmp: Path) -> None:
        self.kind = kind
        self._tmp = tmp
        self._pg_names: list[str] = []

    def new_url(self) -> str:
        name = f"loyalty_test_{uuid.uuid4().hex[:12]}"
        if self.kind == "sqlite":
            return f"sqlite:///{self._tmp / name}.db"
        _pg_admin(f'CREATE DATABASE "{name}"')
        self._pg_names.append(name)
        base = PG_ADMIN_URL.rsplit("/", 1)[0]
        return f"{base}/{name}"

    def drop_all(self) -> None:
        for name in self._pg_names:
            _pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session", params=["sqlite", "postgresql"])
def databases(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, pg_available: bool
) -> Iterator[DatabaseFactory]:
    if request.param == "postgresql" and not pg_available:
        pytest.skip("PostgreSQL is not reachable (set CI=true to make this a failure)")
    factory = DatabaseFactory(request.param, tmp_path_factory.mktemp(request.param))
    yield factory
    factory.drop_all()


def backend_fixture(
    name: str, doc: str, scope: Literal["session", "module"] = "module", **env: str
) -> Any:
    """A fixture `name` of `scope`: a `loyalty serve` (one worker, `env` added to its
    environment) on a fresh database of each kind, and the admin's token; `doc` says what
    it is for."""

    def fixture(
        databases: DatabaseFactory, tmp_path_factory: pytest.TempPathFactory
    ) -> Iterator[Backend]:
        workdir = tmp_path_factory.mktemp(name)
        with Backend.start(databases.kind, databases.new_url(), workdir, **env) as backend:
            yield backend

    fixture.__doc__ = doc
    return pytest.fixture(scope=scope, name=name)(fixture)


backend = backend_fixture(
    "backend",
    "A server (one worker) on a fresh database of each kind, shared by the session's tests.",
    scope="session",
)


CLUSTER_WORKERS = 2


@pytest.fixture(scope="module")
def cluster(
    databases: DatabaseFactory, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Backend]:
    """A `loyalty serve --workers 2` on a fresh database of each kind, for one test file.
    Whatever its tests did, every ledger invariant holds over the whole database after."""
    url = databases.new_url()
    workdir = tmp_path_factory.mktemp(f"cluster-{databases.kind}")
    with Backend.start(databases.kind, url, workdir, workers=CLUSTER_WORKERS) as cluster:
        yield cluster
    assert_verify(url)


@dataclass
class ServerPair:
    """Two server processes on one PostgreSQL database, and the admin's token."""

    url: str
    first: Server
    second: Server
    token: str


@pytest.fixture
def pg_server_pair(
    databases: DatabaseFactory, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerPair]:
    """Two `loyalty serve --workers 2` on one fresh PostgreSQL database (the deployment of
    several instances); skipped on SQLite."""
    if databases.kind != "postgresql":
        pytest.skip("two server processes on one database: the PostgreSQL deployment")
    url = databases.new_url()
    workdir = tmp_path_factory.mktemp("two-servers")
    with (
        Server.start(url, workdir, workers=CLUSTER_WORKERS) as first,
        Server.start(url, workdir, workers=CLUSTER_WORKERS) as second,
    ):
        yield ServerPair(url, first, second, login(first, ADMIN_EMAIL, ADMIN_PASSWORD))


@pytest.fixture
def launched() -> Iterator[list[Server]]:
    """Every server a test launches; whatever is still running at the end is stopped."""
    servers: list[Server] = []
    yield servers
    for server in servers:
        server.stop()


TICK = "0.2"  # how often the ticking servers' schedulers run, in seconds


@pytest.fixture(scope="module")
def ticking(
    databases: DatabaseFactory, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[list[Backend]]:
    """Two server processes on one fresh database, each with its scheduler ticking every
    0.2 s. Whatever the file's tests did, every ledger invariant holds after."""
    url = databases.new_url()
    workdir = tmp_path_factory.mktemp(f"ticking-{databases.kind}")
    with backends_on_one_database(
        databases.kind, url, workdir, LOYALTY_SCHEDULER_INTERVAL_SECONDS=TICK
    ) as servers:
        yield servers
    assert_verify(url)


@pytest.fixture
def api(backend: Backend) -> Iterator[httpx.Client]:
    """An HTTP client authenticated as the admin (every scope)."""
    with backend.client() as client:
        yield client


@pytest.fixture
def anon(backend: Backend) -> Iterator[httpx.Client]:
    """An HTTP client without credentials."""
    with httpx.Client(base_url=backend.server.base_url, timeout=30) as client:
        yield client


# --- --shuffle ------------------------------------------------------------------------------


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--shuffle",
        nargs="?",
        const="random",
        default=None,
        metavar="SEED",
        help="run the test files, and the tests within each, in a random order (a new seed"
        " unless one is given; the seed is printed)",
    )


_SEED = pytest.StashKey[int]()


def pytest_configure(config: pytest.Config) -> None:
    value = config.getoption("shuffle")
    if value is not None:
        config.stash[_SEED] = random.randrange(2**32) if value == "random" else int(value)


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Shuffles before pytest groups the tests by the parameters of session fixtures (the
    database kind), so each server still starts once; a file's tests stay together, so
    each file's own servers start once too."""
    seed = config.stash.get(_SEED, None)
    if seed is None:
        return
    rng = random.Random(seed)
    by_file: dict[Path, list[pytest.Item]] = {}
    for item in items:
        by_file.setdefault(item.path, []).append(item)
    files = list(by_file.values())
    rng.shuffle(files)
    for tests in files:
        rng.shuffle(tests)
    items[:] = [item for tests in files for item in tests]
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:  # shown even with -q, before the first test runs
        reporter.write_line(f"shuffled with seed {seed} (repeat: --shuffle={seed})")


def pytest_terminal_summary(
    terminalreporter: pytest.TerminalReporter, config: pytest.Config
) -> None:
    seed = config.stash.get(_SEED, None)
    if seed is not None:
        terminalreporter.write_line(f"shuffled with seed {seed} (repeat: --shuffle={seed})")


__all__ = ["ADMIN_EMAIL", "ADMIN_PASSWORD"]
