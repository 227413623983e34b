"""The database: one interface over SQLite (embedded default) and PostgreSQL.

Repositories write SQL once, in PostgreSQL's dialect with `$1` parameters; the SQLite
connection translates it. Rows come back as plain sequences in the order the SQL names the
columns, and each repository turns them into its own named rows. Transactions are begun and
ended here and nowhere else.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine, Iterable, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any, Protocol, TypeVar

T = TypeVar("T")
# A row as the driver returns it (asyncpg.Record or a tuple): values by position only.
Record = Sequence[Any]


class UniqueViolation(Exception):
    """An INSERT or UPDATE hit a unique constraint (the caller decides what it means)."""


class RetryableConflict(Exception):
    """The transaction lost a race (a deadlock or serialization failure); it may be retried."""


class Connection(Protocol):
    # "sqlite" or "postgresql", for the few statements that differ (advisory locks, LATERAL).
    dialect: str

    async def fetch(self, sql: str, *args: Any) -> list[Record]: ...
    async def fetchrow(self, sql: str, *args: Any) -> Record | None: ...
    async def fetchval(self, sql: str, *args: Any) -> Any: ...
    async def execute(self, sql: str, *args: Any) -> None: ...
    async def executemany(self, sql: str, args: Iterable[Sequence[Any]]) -> None: ...


class Database(Protocol):
    dialect: str

    def write(self) -> AbstractAsyncContextManager[Connection]:
        """A write transaction: committed when the block ends, rolled back if it raises."""
        ...

    async def transact(self, work: Callable[[Connection], Coroutine[Any, Any, T]]) -> T:
        """`work(conn)` as one write transaction, like `write()`, for the hot path. `work` may
        await nothing but the connection's statements: on SQLite it runs whole on the
        writer's thread, so the write lock is held only while it works."""
        ...

    def read(self, snapshot: bool = False) -> AbstractAsyncContextManager[Connection]:
        """A connection for reads; with snapshot=True all reads see one consistent state."""
        ...

    async def ping(self) -> None:
        """Raises DatabaseUnavailable unless the database answers."""
        ...

    async def close(self) -> None: ...


async def open_database(
    url: str, pool_size: int = 16, command_timeout_s: float | None = None
) -> Database:
    """The database at `url`. `command_timeout_s` bounds each PostgreSQL statement (default
    15 s, for requests); a whole-ledger check such as `loyalty verify` needs longer."""
    if url.startswith("sqlite:///"):
        from loyalty.db.sqlite import SqliteDatabase

        return await SqliteDatabase.open(sqlite_path(url))
    if url.startswith(("postgresql://", "postgres://")):
        from loyalty.db.postgres import PostgresDatabase

        if command_timeout_s is None:
            return await PostgresDatabase.open(url, pool_size)
        return await PostgresDatabase.open(url, pool_size, command_timeout_s)
    raise ValueError("LOYALTY_DATABASE_URL must start with sqlite:/// or postgresql://")


def sqlite_path(url: str) -> str:
    """`sqlite:///./data/x.db` → `./data/x.db`; `sqlite:////abs/x.db` → `/abs/x.db`."""
    path = url.removeprefix("sqlite:///")
    if not path:
        raise ValueError("the sqlite URL names no file")
    return path


def sqlalchemy_url(url: str) -> str:
    """The same database as a SQLAlchemy URL, for migrations."""
    if url.startswith("sqlite:///"):
        return url
    _scheme, rest = url.split("://", 1)
    return f"postgresql+asyncpg://{rest}"
