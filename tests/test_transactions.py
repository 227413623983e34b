"""Database.transact, the hot path's write transaction, on both databases: it commits what
its work did, rolls all of it back when the work fails, and leaves the writer free for the
next one. On SQLite the work runs whole on the writer's thread, so work that waits for
anything but its statements is refused (and rolled back) instead of holding the lock."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path

import pytest

from loyalty import migrate
from loyalty.db import Connection, Database, open_database
from tests.conftest import DatabaseFactory


class WorkFailed(Exception):
    pass


async def put(conn: Connection, key: str) -> str:
    await conn.execute("INSERT INTO service_settings (key, value) VALUES ($1, 'v')", key)
    return key


async def stored(db: Database) -> set[str]:
    async with db.read() as conn:
        rows = await conn.fetch("SELECT key FROM service_settings WHERE key LIKE 'test.%'")
    return {row[0] for row in rows}


def with_database(url: str, scenario: Callable[[Database], Awaitable[None]]) -> None:
    migrate.upgrade(url)

    async def run() -> None:
        db = await open_database(url)
        try:
            await scenario(db)
        finally:
            await db.close()

    asyncio.run(run())


def test_transact_commits_and_rolls_back(databases: DatabaseFactory) -> None:
    async def scenario(db: Database) -> None:
        assert await db.transact(lambda conn: put(conn, "test.kept")) == "test.kept"

        async def half_then_fail(conn: Connection) -> None:
            await put(conn, "test.dropped")
            raise WorkFailed

        with pytest.raises(WorkFailed):
            await db.transact(half_then_fail)
        # Several at once, queued behind one another: the writer was left free.
        keys = [f"test.after.{i}" for i in range(5)]
        done = await asyncio.gather(*(db.transact(partial(put, key=k)) for k in keys))
        assert done == keys
        assert await stored(db) == {"test.kept", *keys}

    with_database(databases.new_url(), scenario)


def test_sqlite_transact_refuses_work_that_waits(tmp_path: Path) -> None:
    async def scenario(db: Database) -> None:
        async def waits(conn: Connection) -> None:
            await put(conn, "test.waited")
            await asyncio.sleep(0)

        with pytest.raises(RuntimeError, match="waited"):
            await db.transact(waits)
        await db.transact(lambda conn: put(conn, "test.next"))
        assert await stored(db) == {"test.next"}

    with_database(f"sqlite:///{tmp_path / 'transact.db'}", scenario)
