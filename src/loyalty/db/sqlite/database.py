"""SQLite through the standard sqlite3 module: one writer connection and a few readers per
process, each on a thread of its own.

Writers serialize with BEGIN IMMEDIATE, which takes SQLite's one write lock up front: across
threads of one worker, across workers, across server processes. Processes sharing the file
take turns at that lock through WriterTurn, which the kernel hands over promptly.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import threading
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager, suppress
from functools import partial
from typing import Any

from loyalty.db import Connection, T
from loyalty.db.sqlite.connection import (
    BUSY_TIMEOUT_MS,
    ThreadConnection,
    create_private_file,
    rollback,
)
from loyalty.db.sqlite.writer_turn import WriterTurn
from loyalty.errors import DatabaseUnavailable

# /health waits at most this long for the write lock: long enough for a busy service's
# batches to come and go, short enough to answer well before a client or a balancer gives up.
HEALTH_BUSY_TIMEOUT_MS = 1000
READERS = 4


def _files_writable(path: str) -> bool:
    """Whether this process may write the database file and, where they exist, its -wal and
    -shm files. access(2) is the kernel's own answer, so it holds for root too, which ignores
    file modes but not the immutable flag or a read-only mount."""
    if not os.access(path, os.W_OK):
        return False
    return all(
        os.access(name, os.W_OK) or not os.path.exists(name)
        for name in (f"{path}-wal", f"{path}-shm")
    )


def _probe_write_lock(conn: sqlite3.Connection) -> None:
    # Takes the write lock and gives it back at once: nothing is written. Another process
    # holding the lock is seen within HEALTH_BUSY_TIMEOUT_MS, not the writers' 5 s.
    conn.execute(f"PRAGMA busy_timeout = {HEALTH_BUSY_TIMEOUT_MS}")
    try:
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.execute("SELECT count(*) FROM alembic_version").fetchone()
        finally:
            conn.execute("ROLLBACK")
    finally:
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")


class SqliteDatabase:
    dialect = "sqlite"

    def __init__(self, path: str) -> None:
        self._path = path
        self._turn = WriterTurn(path + "-writer.lock")
        self._writer = ThreadConnection(path, inline_statements=True)
        self._write_lock = asyncio.Lock()
        self._readers: asyncio.Queue[ThreadConnection] = asyncio.Queue()
        for _ in range(READERS):
            self._readers.put_nowait(ThreadConnection(path))

    @classmethod
    async def open(cls, path: str) -> SqliteDatabase:
        await asyncio.to_thread(create_private_file, path)
        return cls(path)

    @asynccontextmanager
    async def write(self) -> AsyncIterator[Connection]:
        async with self._write_lock:
            conn = self._writer
            await self._in_turn(conn, self._begin)
            try:
                yield conn
                await conn.run(self._commit)
            except BaseException:
                await asyncio.shield(_guarded_rollback(conn, self._turn.release))
                raise

    async def transact(self, work: Callable[[Connection], Coroutine[Any, Any, T]]) -> T:
        async with self._write_lock:
            return await self._in_turn(self._writer, partial(self._transact_here, work))

    def _transact_here(
        self, work: Callable[[Connection], Coroutine[Any, Any, T]], conn: sqlite3.Connection
    ) -> T:
        # On the writer's thread, with the turn. The statements run inline (on this thread
        # too), so `work` never suspends and is driven to its end here: the write lock is
        # held while the transaction works, not while the event loop gets round to it.
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                result = _run_to_end(work(self._writer))
                conn.execute("COMMIT")
            except BaseException:
                with suppress(sqlite3.Error):
                    rollback(conn)
                raise
            return result
        finally:
            self._turn.release()

    def _begin(self, conn: sqlite3.Connection) -> None:
        try:
            conn.execute("BEGIN IMMEDIATE")
        except BaseException:
            self._turn.release()
            raise

    async def _in_turn(self, conn: ThreadConnection, work: Callable[[sqlite3.Connection], T]) -> T:
        """`work` on the connection's thread once this process has the writer's turn (which
        `work` then owns), or DatabaseUnavailable after BUSY_TIMEOUT_MS, as when SQLite's
        own lock stays taken."""
        gave_up = threading.Event()
        running = asyncio.ensure_future(conn.run(partial(self._after_turn, gave_up, work)))
        try:
            await asyncio.wait({running}, timeout=BUSY_TIMEOUT_MS / 1000)
        except asyncio.CancelledError:
            if not self._turn.give_up(gave_up):
                # The turn came as the wait was cancelled: end what `work` began.
                await asyncio.shield(_end_late_turn(running, conn, self._turn.release))
            else:
                running.add_done_callback(_ignore_outcome)
            raise
        if not running.done() and self._turn.give_up(gave_up):
            running.add_done_callback(_ignore_outcome)
            raise DatabaseUnavailable()
        result = await running  # done, or the turn came just as the wait ended
        if isinstance(result, _GaveUp):  # only a wait given up returns it
            raise DatabaseUnavailable()
        return result

    def _after_turn(
        self,
        gave_up: threading.Event,
        work: Callable[[sqlite3.Connection], T],
        conn: sqlite3.Connection,
    ) -> T | _GaveUp:
        if not self._turn.acquire(gave_up):
            return _GAVE_UP  # the caller has given up and gone; nothing was begun
        return work(conn)

    def _commit(self, conn: sqlite3.Connection) -> None:
        conn.execute("COMMIT")
        self._turn.release()

    @asynccontextmanager
    async def read(self, snapshot: bool = False) -> AsyncIterator[Connection]:
        conn = await self._readers.get()
        try:
            if not snapshot:
                yield conn
                return
            await conn.run(lambda c: c.execute("BEGIN"))
            try:
                yield conn
            finally:
                await asyncio.shield(_guarded_rollback(conn))
        finally:
            self._readers.put_nowait(conn)

    async def ping(self) -> None:
        """Proves the database can be written, not only read: in WAL mode reads go on while
        another process holds the write lock or the files have turned read-only, and then
        every adjustment would fail while a read-only ping said all was well."""
        conn = await self._readers.get()
        try:
            if not await conn.run(lambda c: _files_writable(self._path)):
                raise DatabaseUnavailable()
            await conn.run(_probe_write_lock)
        finally:
            self._readers.put_nowait(conn)

    async def close(self) -> None:
        await self._writer.close()
        while not self._readers.empty():
            await self._readers.get_nowait().close()


def _ignore_outcome(future: asyncio.Future[Any]) -> None:
    # A wait given up: whatever it ended with has been dealt with, and is not news.
    if not future.cancelled():
        future.exception()


async def _end_late_turn(
    running: asyncio.Future[Any], conn: ThreadConnection, release: Callable[[], None]
) -> None:
    with suppress(Exception):
        await running
    await _guarded_rollback(conn, release)


class _GaveUp:
    """What a wait for the turn returns when its caller gave up before the turn came."""


_GAVE_UP = _GaveUp()


def _run_to_end(work: Coroutine[Any, Any, T]) -> T:
    """Runs a coroutine that never suspends (its awaits finish at once) on this thread."""
    try:
        work.send(None)
    except StopIteration as finished:
        result: T = finished.value
        return result
    work.close()
    raise RuntimeError("a transaction's work waited for something besides its statements")


async def _guarded_rollback(
    conn: ThreadConnection, after: Callable[[], None] | None = None
) -> None:
    try:
        with suppress(DatabaseUnavailable):
            await conn.run(rollback)
    finally:
        # Not on the connection's thread: letting go of the turn must not wait for, or
        # depend on, a connection that may be reopening.
        if after is not None:
            after()
