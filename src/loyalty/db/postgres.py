"""PostgreSQL through an asyncpg pool (prepared statements are cached per connection)."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable, Coroutine, Iterable, Sequence
from contextlib import asynccontextmanager, suppress
from typing import Any

import asyncpg

from loyalty.db import Connection, Record, RetryableConflict, T, UniqueViolation
from loyalty.errors import DatabaseUnavailable

log = logging.getLogger("loyalty.db")

ACQUIRE_TIMEOUT_S = 5.0
COMMAND_TIMEOUT_S = 15.0
CONNECT_TIMEOUT_S = 5.0

# Errors that mean the database is unreachable or going away, rather than a bug in a query.
_UNAVAILABLE = (
    OSError,
    TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.exceptions.OperatorInterventionError,
    asyncpg.exceptions.InsufficientResourcesError,
    asyncpg.exceptions.CannotConnectNowError,
)


class _PgConnection:
    dialect = "postgresql"

    def __init__(self, conn: asyncpg.Connection) -> None:
        self._conn = conn

    async def fetch(self, sql: str, *args: Any) -> list[Record]:
        return list(await self._conn.fetch(sql, *args))

    async def fetchrow(self, sql: str, *args: Any) -> Record | None:
        row: Record | None = await self._conn.fetchrow(sql, *args)
        return row

    async def fetchval(self, sql: str, *args: Any) -> Any:
        return await self._conn.fetchval(sql, *args)

    async def execute(self, sql: str, *args: Any) -> None:
        await self._conn.execute(sql, *args)

    async def executemany(self, sql: str, args: Iterable[Sequence[Any]]) -> None:
        await self._conn.executemany(sql, list(args))


async def _keep_session(conn: asyncpg.Connection) -> None:
    """A connection going back to the pool keeps its session: the service never changes it
    (no SET, LISTEN or session-level advisory lock; the idempotency keys' locks end with
    their transaction), so the reset query asyncpg would otherwise run, a round trip on
    every release, has nothing to undo. asyncpg still rolls back an open transaction."""


class PostgresDatabase:
    dialect = "postgresql"

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    @classmethod
    async def open(
        cls, url: str, pool_size: int, command_timeout_s: float = COMMAND_TIMEOUT_S
    ) -> PostgresDatabase:
        try:
            pool = await asyncpg.create_pool(
                url,
                min_size=1,
                max_size=pool_size,
                command_timeout=command_timeout_s,
                timeout=CONNECT_TIMEOUT_S,
                reset=_keep_session,
            )
        except _UNAVAILABLE as error:
            raise DatabaseUnavailable() from error
        return cls(pool)

    @asynccontextmanager
    async def _connection(self) -> AsyncIterator[asyncpg.Connection]:
        try:
            conn = await self._pool.acquire(timeout=ACQUIRE_TIMEOUT_S)
        except _UNAVAILABLE as error:
            raise DatabaseUnavailable() from error
        try:
            yield conn
        except asyncpg.UniqueViolationError as error:
            raise UniqueViolation(str(error)) from error
        except (asyncpg.DeadlockDetectedError, asyncpg.SerializationError) as error:
            raise RetryableConflict(str(error)) from error
        except _UNAVAILABLE as error:
            raise DatabaseUnavailable() from error
        except asyncpg.exceptions.InternalClientError as error:
            # Its protocol lost step ("cannot switch to state ..."), as when the server ends
            # the session just as a query starts (a shutdown). The connection must never
            # serve again, so it leaves the pool now.
            conn.terminate()
            log.warning("a database connection failed and was dropped: %s", error)
            raise DatabaseUnavailable() from error
        finally:
            await self._release(conn)

    async def _release(self, conn: asyncpg.Connection) -> None:
        # The block's outcome is settled by now: committed, or failed with its own error. A
        # connection that cannot be reset for reuse (the server is going away) must not change
        # it: a COMMIT that succeeded is a success, not a 503. The pool drops such a connection.
        with suppress(Exception):
            await self._pool.release(conn)

    @asynccontextmanager
    async def write(self) -> AsyncIterator[Connection]:
        async with self._connection() as conn, conn.transaction():
            yield _PgConnection(conn)

    async def transact(self, work: Callable[[Connection], Coroutine[Any, Any, T]]) -> T:
        async with self.write() as conn:
            return await work(conn)

    @asynccontextmanager
    async def read(self, snapshot: bool = False) -> AsyncIterator[Connection]:
        async with self._connection() as conn:
            if not snapshot:
                yield _PgConnection(conn)
                return
            async with conn.transaction(isolation="repeatable_read", readonly=True):
                yield _PgConnection(conn)

    async def ping(self) -> None:
        async with self.read() as conn:
            await conn.fetchval("SELECT 1")

    async def close(self) -> None:
        await self._pool.close()
