"""SQL for customers. Never commits."""

from __future__ import annotations

from typing import NamedTuple

from loyalty.db import Connection


class CustomerRow(NamedTuple):
    """A customer as it is read; the fields are the columns, in this order."""

    id: str
    email: str
    first_name: str | None
    last_name: str | None
    phone: str | None
    company_name: str | None
    metadata: str | None  # a JSON object
    created_at_ms: int
    updated_at_ms: int


_COLUMNS = ", ".join(CustomerRow._fields)
# `q` matches email or names as a case-insensitive substring; \ escapes LIKE's wildcards.
_SEARCH = (
    "(lower(email) LIKE $1 ESCAPE '\\'"
    " OR lower(coalesce(first_name, '')) LIKE $1 ESCAPE '\\'"
    " OR lower(coalesce(last_name, '')) LIKE $1 ESCAPE '\\')"
)


class NewCustomerRow(NamedTuple):
    """What a new customer is inserted with, checked."""

    id: str
    email: str
    email_key: str
    first_name: str | None
    last_name: str | None
    phone: str | None
    company_name: str | None
    metadata: str | None  # a JSON object


async def insert_customer(conn: Connection, new: NewCustomerRow, now_ms: int) -> None:
    await conn.execute(
        "INSERT INTO customers (id, email, email_key, first_name, last_name, phone,"
        " company_name, metadata, created_at_ms, updated_at_ms)"
        " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $9)",
        *new,
        now_ms,
    )
    # Every customer has a balance row from the start: adjustments lock it.
    await conn.execute(
        "INSERT INTO loyalty_balances (customer_id, balance_hundredths, last_seq)"
        " VALUES ($1, 0, 0)",
        new.id,
    )


async def find_customer(conn: Connection, customer_id: str) -> CustomerRow | None:
    row = await conn.fetchrow(f"SELECT {_COLUMNS} FROM customers WHERE id = $1", customer_id)
    return None if row is None else CustomerRow._make(row)


async def list_customers(
    conn: Connection, pattern: str | None, limit: int, offset: int
) -> list[CustomerRow]:
    order = "ORDER BY created_at_ms DESC, id DESC"
    if pattern is None:
        sql = f"SELECT {_COLUMNS} FROM customers {order} LIMIT $1 OFFSET $2"
        rows = await conn.fetch(sql, limit, offset)
    else:
        sql = f"SELECT {_COLUMNS} FROM customers WHERE {_SEARCH} {order} LIMIT $2 OFFSET $3"
        rows = await conn.fetch(sql, pattern, limit, offset)
    return [CustomerRow._make(row) for row in rows]


async def count_customers(conn: Connection, pattern: str | None) -> int:
    if pattern is None:
        return int(await conn.fetchval("SELECT count(*) FROM customers"))
    return int(await conn.fetchval(f"SELECT count(*) FROM customers WHERE {_SEARCH}", pattern))
