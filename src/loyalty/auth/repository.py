"""SQL for admin users and the service's own settings. Never commits."""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

from loyalty.db import Connection

LOGIN_FAILURES_CLEANUP_CHUNK = 500


class UserRow(NamedTuple):
    """A user as a login needs it; the fields are the columns, in this order."""

    id: str
    email: str
    password_hash: str
    first_name: str | None
    last_name: str | None
    scopes: str  # space-separated
    disabled_at_ms: int | None


_USER_COLUMNS = ", ".join(UserRow._fields)


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


async def find_user_by_email_key(conn: Connection, email_key: str) -> UserRow | None:
    row = await conn.fetchrow(f"SELECT {_USER_COLUMNS} FROM users WHERE email_key = $1", email_key)
    return None if row is None else UserRow._make(row)


async def find_user(conn: Connection, user_id: str) -> UserRow | None:
    row = await conn.fetchrow(f"SELECT {_USER_COLUMNS} FROM users WHERE id = $1", user_id)
    return None if row is None else UserRow._make(row)


async def find_user_scopes(conn: Connection, user_id: str) -> str | None:
    """The scopes of an active user; None for a user that is deleted or disabled."""
    value: str | None = await conn.fetchval(
        "SELECT scopes FROM users WHERE id = $1 AND disabled_at_ms IS NULL", user_id
    )
    return value


async def find_users_scopes(conn: Connection, user_ids: list[str]) -> dict[str, str]:
    """The scopes of those of the users that exist and are not disabled."""
    rows = await conn.fetch(
        "SELECT id, scopes FROM users WHERE id = ANY($1) AND disabled_at_ms IS NULL", user_ids
    )
    return {row[0]: row[1] for row in rows}


async def disable_user_by_email_key(conn: Connection, email_key: str, now_ms: int) -> str | None:
    """Marks the user disabled (keeping the first time it was); returns its id."""
    value: str | None = await conn.fetchval(
        "UPDATE users SET disabled_at_ms = coalesce(disabled_at_ms, $2), updated_at_ms = $2"
        " WHERE email_key = $1 RETURNING id",
        email_key,
        now_ms,
    )
    return value


async def enable_user_by_email_key(conn: Connection, email_key: str, now_ms: int) -> str | None:
    value: str | None = await conn.fetchval(
        "UPDATE users SET disabled_at_ms = NULL, updated_at_ms = $2"
        " WHERE email_key = $1 RETURNING id",
        email_key,
        now_ms,
    )
    return value


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


async def count_login_failure(
    conn: Connection, key: str, now_ms: int, expired_before_ms: int
) -> tuple[int, int]:
    """Adds one failure to the key's window, first starting a new window at `now_ms` when the
    current one began before `expired_before_ms`; returns (failures, window_start_ms)."""
    # In DO UPDATE, login_failures.* are the row's values before this statement.
    row = await conn.fetchrow(
        "INSERT INTO login_failures (key, window_start_ms, failures) VALUES ($1, $2, 1)"
        " ON CONFLICT (key) DO UPDATE SET"
        " failures = CASE WHEN login_failures.window_start_ms < $3 THEN 1"
        " ELSE login_failures.failures + 1 END,"
        " window_start_ms = CASE WHEN login_failures.window_start_ms < $3 THEN $2"
        " ELSE login_failures.window_start_ms END"
        " RETURNING failures, window_start_ms",
        key,
        now_ms,
        expired_before_ms,
    )
    if row is None:
        raise RuntimeError("an upsert returned no row")
    return int(row[0]), int(row[1])


async def uncount_login_failures(conn: Connection, counted: Sequence[tuple[str, int]]) -> None:
    """Takes back one failure from each (key, window_start_ms), if that window still runs."""
    await conn.executemany(
        "UPDATE login_failures SET failures = failures - 1"
        " WHERE key = $1 AND window_start_ms = $2 AND failures > 0",
        counted,
    )


async def delete_expired_login_failures(conn: Connection, expired_before_ms: int) -> int:
    """Deletes up to LOGIN_FAILURES_CLEANUP_CHUNK windows that began before
    `expired_before_ms`; returns how many."""
    rows = await conn.fetch(
        "DELETE FROM login_failures WHERE key IN ("
        " SELECT key FROM login_failures WHERE window_start_ms < $1"
        f" LIMIT {LOGIN_FAILURES_CLEANUP_CHUNK}) RETURNING 1",
        expired_before_ms,
    )
    return len(rows)
