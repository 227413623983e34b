"""SQL for idempotency keys. Never commits."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from loyalty.db import Connection, Row

CLEANUP_CHUNK = 500


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


async def find_keys(conn: Connection, user_id: str, keys: list[str]) -> list[Row]:
    return await conn.fetch(
        "SELECT key, request_hash, status, response FROM idempotency_keys"
        " WHERE user_id = $1 AND key = ANY($2)",
        user_id,
        keys,
    )


async def insert_keys(conn: Connection, rows: Iterable[Sequence[object]]) -> None:
    """Rows of (user_id, key, request_hash, status, response, created_at_ms)."""
    await conn.executemany(
        "INSERT INTO idempotency_keys (user_id, key, request_hash, status, response,"
        " created_at_ms) VALUES ($1, $2, $3, $4, $5, $6)",
        rows,
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
