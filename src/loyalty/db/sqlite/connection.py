"""One sqlite3 connection with a thread of its own, and the settings every connection gets.

Durability: WAL with synchronous=FULL, so a transaction that committed survives a crash of
the process or the machine.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from loyalty.db import Record, T, UniqueViolation
from loyalty.db.sqlite.dialect import bind, translate
from loyalty.errors import DatabaseUnavailable

BUSY_TIMEOUT_MS = 5000
# The database holds password hashes and the generated JWT secret: only its owner may read
# it. SQLite gives the -wal and -shm files the database file's own mode.
PRIVATE_FILE_MODE = 0o600
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


def create_private_file(path: str) -> None:
    """Creates the database file (and its folder) readable by its owner alone, unless it
    exists; SQLite would create it with the process's umask, usually world-readable."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, PRIVATE_FILE_MODE)
    except FileExistsError:
        return
    os.close(fd)


def connect(path: str) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = FULL")
    conn.execute("PRAGMA foreign_keys = ON")
    # SQLite's own lower() folds only ASCII; PostgreSQL's folds every letter. Match it.
    conn.create_function("lower", 1, _lower, deterministic=True)
    return conn


def _lower(value: str | None) -> str | None:
    return None if value is None else str(value).lower()


def rollback(conn: sqlite3.Connection) -> None:
    if conn.in_transaction:
        conn.execute("ROLLBACK")


class ThreadConnection:
    """One sqlite3 connection with a thread of its own, used by one caller at a time.

    With `inline_statements`, statements run on the caller's thread: for the writer, whose
    statements run only inside a transaction that already holds the write lock, so they
    never wait for a lock and touch only indexed rows. A hop to the thread costs about as
    much as such a statement; BEGIN IMMEDIATE (which may wait) and COMMIT (which syncs to
    disk) still take it.
    """

    dialect = "sqlite"

    def __init__(self, path: str, inline_statements: bool = False) -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite")
        self._path = path
        self._conn: sqlite3.Connection | None = None
        self._inline = inline_statements

    async def run(self, work: Callable[[sqlite3.Connection], T]) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self.call, work)

    def call(self, work: Callable[[sqlite3.Connection], T]) -> T:
        """`work` on this thread, with SQLite's errors turned into the service's."""
        try:
            if self._conn is None:
                self._conn = connect(self._path)
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
        return self.call(work) if self._inline else await self.run(work)

    async def fetch(self, sql: str, *args: Any) -> list[Record]:
        text = translate(sql)
        bound = bind(args)
        return await self._statement(lambda c: c.execute(text, bound).fetchall())

    async def fetchrow(self, sql: str, *args: Any) -> Record | None:
        text = translate(sql)
        bound = bind(args)
        return await self._statement(lambda c: c.execute(text, bound).fetchone())

    async def fetchval(self, sql: str, *args: Any) -> Any:
        row = await self.fetchrow(sql, *args)
        return None if row is None else row[0]

    async def execute(self, sql: str, *args: Any) -> None:
        text = translate(sql)
        bound = bind(args)
        await self._statement(lambda c: c.execute(text, bound))

    async def executemany(self, sql: str, args: Iterable[Sequence[Any]]) -> None:
        text = translate(sql)
        rows = list(args)
        await self._statement(lambda c: c.executemany(text, rows))

    async def close(self) -> None:
        await self.run(lambda c: c.close())
        self._conn = None
        self._executor.shutdown(wait=True)
