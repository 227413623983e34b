"""SQLite through the standard sqlite3 module, each connection on a thread of its own.

Durability: WAL with synchronous=FULL, so a transaction that committed survives a crash of
the process or the machine. Writers serialize with BEGIN IMMEDIATE, which takes SQLite's one
write lock up front: across threads of one worker, across workers, across server processes.
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import os
import re
import sqlite3
import threading
from collections.abc import AsyncIterator, Callable, Coroutine, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager, suppress
from functools import lru_cache, partial
from typing import Any

from loyalty.db import Connection, Row, T, UniqueViolation
from loyalty.errors import DatabaseUnavailable

BUSY_TIMEOUT_MS = 5000
# /health waits at most this long for the write lock: long enough for a busy service's
# batches to come and go, short enough to answer well before a client or a balancer gives up.
HEALTH_BUSY_TIMEOUT_MS = 1000
READERS = 4
_PARAMETER = re.compile(r"\$(\d+)")
_ANY = re.compile(r"= ANY\(\$(\d+)\)")
# Primary result codes that mean "the database cannot be used right now", not a bug.
_UNAVAILABLE_CODES = {
    sqlite3.SQLITE_BUSY,
    sqlite3.SQLITE_LOCKED,
    sqlite3.SQLITE_READONLY,
    sqlite3.SQLITE_IOERR,
    sqlite3.SQLITE_CORRUPT,
    sqlite3.SQLITE_FULL,
    sqlite3.SQLITE_CANTOPEN,
    sqlite3.SQLITE_PROTOCOL,
    sqlite3.SQLITE_NOTADB,
}
_UNIQUE_CODES = {sqlite3.SQLITE_CONSTRAINT_UNIQUE, sqlite3.SQLITE_CONSTRAINT_PRIMARYKEY}


@lru_cache(maxsize=512)
def translate(sql: str) -> str:
    """PostgreSQL's dialect to SQLite's: `$1` → `?1`; `= ANY($1)` with a list → membership in
    the list passed as a JSON array; row locks are implied by BEGIN IMMEDIATE."""
    sql = _ANY.sub(r"IN (SELECT value FROM json_each($\1))", sql)
    return _PARAMETER.sub(r"?\1", sql).replace(" FOR UPDATE", "")


def _bind(args: Sequence[Any]) -> tuple[Any, ...]:
    # Lists are the arrays of `= ANY($n)`: SQLite receives them as JSON arrays.
    return tuple(json.dumps(arg) if isinstance(arg, list) else arg for arg in args)


def _connect(path: str) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.row_factory = sqlite3.Row
    conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = FULL")
    conn.execute("PRAGMA foreign_keys = ON")
    # SQLite's own lower() folds only ASCII; PostgreSQL's folds every letter. Match it.
    conn.create_function("lower", 1, _lower, deterministic=True)
    return conn


def _lower(value: str | None) -> str | None:
    return None if value is None else str(value).lower()


class _ThreadConnection:
    """One sqlite3 connection with a thread of its own, used by one caller at a time.

    With `inline_statements`, statements run on the caller's thread: for the writer, whose
    statements run only inside a transaction that already holds the write lock, so they
    never wait for a lock and touch only indexed rows. A hop to the thread costs about as
    much as such a statement; BEGIN IMMEDIATE (which may wait) and COMMIT (which syncs to
    disk) still take it.
    """

    def __init__(self, path: str, inline_statements: bool = False) -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite")
        self._path = path
        self._conn: sqlite3.Connection | None = None
        self._inline = inline_statements

    async def run(self, work: Callable[[sqlite3.Connection], T]) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._call, work)

    def _call(self, work: Callable[[sqlite3.Connection], T]) -> T:
        try:
            if self._conn is None:
                self._conn = _connect(self._path)
            return work(self._conn)
        except sqlite3.IntegrityError as error:
            if error.sqlite_errorcode in _UNIQUE_CODES:
                raise UniqueViolation(str(error)) from error
            raise
        except (sqlite3.OperationalError, sqlite3.DatabaseError) as error:
            code = getattr(error, "sqlite_errorcode", None)
            if code is not None and code & 0xFF in _UNAVAILABLE_CODES:
                self._drop()
                raise DatabaseUnavailable() from error
            raise

    def _drop(self) -> None:
        # A connection that saw the file vanish or turn read-only is reopened next time.
        if self._conn is not None:
            try:
                self._conn.close()
            finally:
                self._conn = None

    async def _statement(self, work: Callable[[sqlite3.Connection], T]) -> T:
        return self._call(work) if self._inline else await self.run(work)

    async def fetch(self, sql: str, *args: Any) -> list[Row]:
        text = translate(sql)
        bound = _bind(args)
        return await self._statement(lambda c: c.execute(text, bound).fetchall())

    async def fetchrow(self, sql: str, *args: Any) -> Row | None:
        text = translate(sql)
        bound = _bind(args)
        return await self._statement(lambda c: c.execute(text, bound).fetchone())

    async def fetchval(self, sql: str, *args: Any) -> Any:
        row = await self.fetchrow(sql, *args)
        return None if row is None else row[0]

    async def execute(self, sql: str, *args: Any) -> None:
        text = translate(sql)
        bound = _bind(args)
        await self._statement(lambda c: c.execute(text, bound))

    async def executemany(self, sql: str, args: Iterable[Sequence[Any]]) -> None:
        text = translate(sql)
        rows = list(args)
        await self._statement(lambda c: c.executemany(text, rows))

    async def close(self) -> None:
        await self.run(lambda c: c.close())
        self._conn = None
        self._executor.shutdown(wait=True)


def _make_parent_dir(path: str) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)


def _rollback(conn: sqlite3.Connection) -> None:
    if conn.in_transaction:
        conn.execute("ROLLBACK")


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


class WriterTurn:
    """Takes turns at writing among the processes that share a database file.

    SQLite's own busy handler sleeps up to 100 ms between tries, and polling a lock is no
    better: a writer that lets go and comes straight back often finds the lock still free
    and takes it again, so another worker's batch waits several rounds. A blocking
    advisory lock on a file beside the database is handed over by the kernel the moment it
    is let go. BEGIN IMMEDIATE still guards against writers that do not take turns.

    The wait blocks a thread, so its deadline is kept by the caller, who gives up with
    `give_up`; a turn that comes after that is let go at once.
    """

    def __init__(self, path: str) -> None:
        self._path = path
        self._fd: int | None = None
        self._held = False
        self._mutex = threading.Lock()  # orders a late turn against the caller giving up

    def acquire(self, gave_up: threading.Event) -> bool:
        """Waits for the turn; False when the caller gave up waiting in the meantime."""
        if self._fd is None:
            self._fd = os.open(self._path, os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        with self._mutex:
            if gave_up.is_set():
                fcntl.flock(self._fd, fcntl.LOCK_UN)
                return False
            self._held = True
            return True

    def give_up(self, gave_up: threading.Event) -> bool:
        """Ends a wait from the caller's side; False when the turn was already taken."""
        with self._mutex:
            if self._held:
                return False
            gave_up.set()
            return True

    def release(self) -> None:
        with self._mutex:
            if self._held and self._fd is not None:
                self._held = False
                fcntl.flock(self._fd, fcntl.LOCK_UN)


class SqliteDatabase:
    dialect = "sqlite"

    def __init__(self, path: str) -> None:
        self._path = path
        self._turn = WriterTurn(path + "-writer.lock")
        self._writer = _ThreadConnection(path, inline_statements=True)
        self._write_lock = asyncio.Lock()
        self._readers: asyncio.Queue[_ThreadConnection] = asyncio.Queue()
        for _ in range(READERS):
            self._readers.put_nowait(_ThreadConnection(path))

    @classmethod
    async def open(cls, path: str) -> SqliteDatabase:
        await asyncio.to_thread(_make_parent_dir, path)
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
                    _rollback(conn)
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

    async def _in_turn(self, conn: _ThreadConnection, work: Callable[[sqlite3.Connection], T]) -> T:
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
    running: asyncio.Future[Any], conn: _ThreadConnection, release: Callable[[], None]
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
    conn: _ThreadConnection, after: Callable[[], None] | None = None
) -> None:
    try:
        with suppress(DatabaseUnavailable):
            await conn.run(_rollback)
    finally:
        # Not on the connection's thread: letting go of the turn must not wait for, or
        # depend on, a connection that may be reopening.
        if after is not None:
            after()
