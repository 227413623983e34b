"""SQL for secret API keys. Never commits."""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

from loyalty.db import Connection


class ApiKeyRow(NamedTuple):
    """A key as lists show it (never its hash); the fields are the columns, in this order."""

    id: str
    title: str
    redacted: str
    scopes: str  # space-separated
    created_by: str
    created_at_ms: int
    last_used_at_ms: int | None
    revoked_at_ms: int | None


class KeyStanding(NamedTuple):
    """What decides whether a key may act now: its own scopes, whether it is revoked, and its
    creator's scopes (None when the creator is deleted or disabled)."""

    id: str
    scopes: str
    revoked_at_ms: int | None
    created_by: str
    creator_scopes: str | None


_COLUMNS = ", ".join(ApiKeyRow._fields)


async def insert_key(conn: Connection, row: ApiKeyRow, token_hash: str) -> None:
    await conn.execute(
        f"INSERT INTO api_keys ({_COLUMNS}, token_hash)"
        " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        *row,
        token_hash,
    )


async def find_key(conn: Connection, key_id: str) -> ApiKeyRow | None:
    row = await conn.fetchrow(f"SELECT {_COLUMNS} FROM api_keys WHERE id = $1", key_id)
    return None if row is None else ApiKeyRow._make(row)


async def list_keys(conn: Connection, limit: int, offset: int) -> list[ApiKeyRow]:
    """Newest first."""
    rows = await conn.fetch(
        f"SELECT {_COLUMNS} FROM api_keys ORDER BY created_at_ms DESC, id DESC LIMIT $1 OFFSET $2",
        limit,
        offset,
    )
    return [ApiKeyRow._make(row) for row in rows]


async def count_keys(conn: Connection) -> int:
    return int(await conn.fetchval("SELECT count(*) FROM api_keys"))


async def revoke_key(conn: Connection, key_id: str, now_ms: int) -> bool:
    """Revokes the key if it is not revoked yet; whether it did."""
    revoked = await conn.fetchval(
        "UPDATE api_keys SET revoked_at_ms = $2 WHERE id = $1 AND revoked_at_ms IS NULL"
        " RETURNING id",
        key_id,
        now_ms,
    )
    return revoked is not None


async def revoke_keys_of(conn: Connection, user_id: str, now_ms: int) -> None:
    await conn.execute(
        "UPDATE api_keys SET revoked_at_ms = $2 WHERE created_by = $1 AND revoked_at_ms IS NULL",
        user_id,
        now_ms,
    )


async def find_by_token_hash(conn: Connection, token_hash: str) -> tuple[str, str] | None:
    """The id and scopes of the key with this token hash, revoked or not."""
    row = await conn.fetchrow("SELECT id, scopes FROM api_keys WHERE token_hash = $1", token_hash)
    return None if row is None else (row[0], row[1])


async def find_standings(conn: Connection, key_ids: list[str]) -> dict[str, KeyStanding]:
    """The standing of each of the keys that exist."""
    rows = await conn.fetch(
        "SELECT k.id, k.scopes, k.revoked_at_ms, k.created_by, u.scopes FROM api_keys k"
        " LEFT JOIN users u ON u.id = k.created_by AND u.disabled_at_ms IS NULL"
        " WHERE k.id = ANY($1)",
        key_ids,
    )
    return {row[0]: KeyStanding._make(row) for row in rows}


async def record_uses(conn: Connection, uses: Sequence[tuple[str, int]]) -> None:
    """Moves each key's last_used_at_ms forward to its (key id, used at ms), never back, and
    not past its revocation."""
    await conn.executemany(
        "UPDATE api_keys SET last_used_at_ms = $2 WHERE id = $1"
        " AND (last_used_at_ms IS NULL OR last_used_at_ms < $2)"
        " AND (revoked_at_ms IS NULL OR revoked_at_ms >= $2)",
        uses,
    )
