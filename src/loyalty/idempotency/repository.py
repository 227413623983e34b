"""SQL for idempotency keys. Never commits."""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

from loyalty.db import Connection

CLEANUP_CHUNK = 500


class KeptResponse(NamedTuple):
    """A kept response; the fields are the columns, in this order."""

    user_id: str  # the actor the key belongs to
    key: str
    request_hash: str
    status: int
    response: bytes
    created_at_ms: int


class FoundKey(NamedTuple):
    key: str
    request_hash: str
    status: int
    response: bytes


_FOUND_COLUMNS = ", ".join(FoundKey._fields)
_KEPT_COLUMNS = ", ".join(KeptResponse._fields)
_KEPT_VALUES = ", ".join(f"${n}" for n in range(1, len(KeptResponse._fields) + 1))


async def try_lock_keys(conn: Connection, lock_names: list[str]) -> set[str]:
    """PostgreSQL only: of the names, those whose transaction-scoped advisory lock we now hold.

    A name another transaction holds is a request with the same key still in flight.
    """
    rows = await conn.fetch(
        "SELECT name FROM unnest($1::text[]) AS name"
        " WHERE pg_try_advisory_xact_lock(hashtextextended(name, 0))",
        lock_names,
    )
    return {row[0] for row in rows}


async def find_keys(conn: Connection, user_id: str, keys: list[str]) -> list[FoundKey]:
    rows = await conn.fetch(
        f"SELECT {_FOUND_COLUMNS} FROM idempotency_keys WHERE user_id = $1 AND key = ANY($2)",
        user_id,
        keys,
    )
    return [FoundKey._make(row) for row in rows]


async def insert_keys(conn: Connection, rows: Sequence[KeptResponse]) -> None:
    await conn.executemany(
        f"INSERT INTO idempotency_keys ({_KEPT_COLUMNS}) VALUES ({_KEPT_VALUES})", rows
    )


async def delete_expired(conn: Connection, before_ms: int) -> int:
    """Deletes up to CLEANUP_CHUNK keys created before `before_ms`; returns how many."""
    rows = await conn.fetch(
        "DELETE FROM idempotency_keys WHERE (user_id, key) IN ("
        " SELECT user_id, key FROM idempotency_keys WHERE created_at_ms < $1"
        f" LIMIT {CLEANUP_CHUNK}) RETURNING 1",
        before_ms,
    )
    return len(rows)
