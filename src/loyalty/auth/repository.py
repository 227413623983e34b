"""SQL for admin users and the service's own settings. Never commits."""

from __future__ import annotations

from loyalty.db import Connection, Row


async def insert_user(
    conn: Connection,
    user_id: str,
    email: str,
    email_key: str,
    password_hash: str,
    first_name: str | None,
    last_name: str | None,
    scopes: str,
    now_ms: int,
) -> None:
    await conn.execute(
        "INSERT INTO users (id, email, email_key, password_hash, first_name, last_name,"
        " scopes, created_at_ms, updated_at_ms) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $8)",
        user_id,
        email,
        email_key,
        password_hash,
        first_name,
        last_name,
        scopes,
        now_ms,
    )


_USER_COLUMNS = "id, email, password_hash, first_name, last_name, scopes"


async def find_user_by_email_key(conn: Connection, email_key: str) -> Row | None:
    return await conn.fetchrow(f"SELECT {_USER_COLUMNS} FROM users WHERE email_key = $1", email_key)


async def find_user_scopes(conn: Connection, user_id: str) -> str | None:
    value: str | None = await conn.fetchval("SELECT scopes FROM users WHERE id = $1", user_id)
    return value


async def find_users_scopes(conn: Connection, user_ids: list[str]) -> dict[str, str]:
    rows = await conn.fetch("SELECT id, scopes FROM users WHERE id = ANY($1)", user_ids)
    return {row[0]: row[1] for row in rows}


async def delete_user_by_email_key(conn: Connection, email_key: str) -> str | None:
    value: str | None = await conn.fetchval(
        "DELETE FROM users WHERE email_key = $1 RETURNING id", email_key
    )
    return value


async def count_users(conn: Connection) -> int:
    return int(await conn.fetchval("SELECT count(*) FROM users"))


async def get_setting(conn: Connection, key: str) -> str | None:
    value: str | None = await conn.fetchval(
        "SELECT value FROM service_settings WHERE key = $1", key
    )
    return value


async def insert_setting_if_absent(conn: Connection, key: str, value: str) -> None:
    await conn.execute(
        "INSERT INTO service_settings (key, value) VALUES ($1, $2) ON CONFLICT (key) DO NOTHING",
        key,
        value,
    )
