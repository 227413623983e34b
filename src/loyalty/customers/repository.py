"""SQL for customers. Never commits."""

from __future__ import annotations

from loyalty.db import Connection, Row

_COLUMNS = "id, email, first_name, last_name, created_at_ms, updated_at_ms"
# `q` matches email or names as a case-insensitive substring; \ escapes LIKE's wildcards.
_SEARCH = (
    "(lower(email) LIKE $1 ESCAPE '\\'"
    " OR lower(coalesce(first_name, '')) LIKE $1 ESCAPE '\\'"
    " OR lower(coalesce(last_name, '')) LIKE $1 ESCAPE '\\')"
)


async def insert_customer(
    conn: Connection,
    customer_id: str,
    email: str,
    email_key: str,
    first_name: str | None,
    last_name: str | None,
    now_ms: int,
) -> None:
    await conn.execute(
        "INSERT INTO customers (id, email, email_key, first_name, last_name,"
        " created_at_ms, updated_at_ms) VALUES ($1, $2, $3, $4, $5, $6, $6)",
        customer_id,
        email,
        email_key,
        first_name,
        last_name,
        now_ms,
    )
    # Every customer has a balance row from the start: adjustments lock it.
    await conn.execute(
        "INSERT INTO loyalty_balances (customer_id, balance_hundredths, last_seq)"
        " VALUES ($1, 0, 0)",
        customer_id,
    )


async def find_customer(conn: Connection, customer_id: str) -> Row | None:
    return await conn.fetchrow(f"SELECT {_COLUMNS} FROM customers WHERE id = $1", customer_id)


async def list_customers(
    conn: Connection, pattern: str | None, limit: int, offset: int
) -> list[Row]:
    order = "ORDER BY created_at_ms DESC, id DESC"
    if pattern is None:
        sql = f"SELECT {_COLUMNS} FROM customers {order} LIMIT $1 OFFSET $2"
        return await conn.fetch(sql, limit, offset)
    sql = f"SELECT {_COLUMNS} FROM customers WHERE {_SEARCH} {order} LIMIT $2 OFFSET $3"
    return await conn.fetch(sql, pattern, limit, offset)


async def count_customers(conn: Connection, pattern: str | None) -> int:
    if pattern is None:
        return int(await conn.fetchval("SELECT count(*) FROM customers"))
    return int(await conn.fetchval(f"SELECT count(*) FROM customers WHERE {_SEARCH}", pattern))
