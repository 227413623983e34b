"""Customers: the accounts that hold points, possibly mirroring another system's ids."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from loyalty.customers import repository
from loyalty.db import Database, Row, UniqueViolation
from loyalty.emails import email_key, is_valid_email
from loyalty.errors import Conflict, FieldError, NotFound, validation_error
from loyalty.ids import new_id
from loyalty.timestamps import now_ms, render

CUSTOMER_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
CUSTOMER_ID_MAX = 64
NAME_MAX = 255
QUERY_MAX = 255


@dataclass(frozen=True, slots=True)
class NewCustomer:
    email: Any = None
    first_name: Any = None
    last_name: Any = None
    id: Any = None


def customer_json(row: Row) -> dict[str, Any]:
    return {
        "id": row["id"],
        "email": row["email"],
        "first_name": row["first_name"],
        "last_name": row["last_name"],
        "created_at": render(row["created_at_ms"]),
        "updated_at": render(row["updated_at_ms"]),
    }


def _validate(new: NewCustomer) -> None:
    errors = []
    if not isinstance(new.email, str) or not is_valid_email(new.email):
        errors.append(FieldError("email", "email must be a valid email address"))
    for field, value in (("first_name", new.first_name), ("last_name", new.last_name)):
        if value is not None and (not isinstance(value, str) or len(value) > NAME_MAX):
            message = f"{field} must be a string of at most {NAME_MAX} characters, or null"
            errors.append(FieldError(field, message))
    if new.id is not None and (not isinstance(new.id, str) or not CUSTOMER_ID.fullmatch(new.id)):
        errors.append(FieldError("id", "id must match ^[A-Za-z0-9_-]{1,64}$"))
    if errors:
        raise validation_error(errors)


async def create_customer(db: Database, new: NewCustomer) -> dict[str, Any]:
    _validate(new)
    created_ms = now_ms()
    customer_id = new.id or new_id("cus", created_ms)
    try:
        async with db.write() as conn:
            await repository.insert_customer(
                conn,
                customer_id,
                new.email,
                email_key(new.email),
                new.first_name,
                new.last_name,
                created_ms,
            )
            row = await repository.find_customer(conn, customer_id)
    except UniqueViolation:
        raise Conflict("A customer with this id or email already exists") from None
    return customer_json(row)


async def get_customer(db: Database, customer_id: str) -> dict[str, Any]:
    async with db.read() as conn:
        row = await repository.find_customer(conn, customer_id)
    if row is None:
        raise NotFound(f"Customer with id: {customer_id} was not found")
    return customer_json(row)


def like_pattern(query: str) -> str:
    escaped = query.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


async def list_customers(
    db: Database, query: str | None, limit: int, offset: int
) -> tuple[list[dict[str, Any]], int]:
    pattern = like_pattern(query) if query else None
    async with db.read(snapshot=True) as conn:
        rows = await repository.list_customers(conn, pattern, limit, offset)
        count = await repository.count_customers(conn, pattern)
    return [customer_json(row) for row in rows], count
