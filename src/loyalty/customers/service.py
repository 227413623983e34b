"""Customers: the accounts that hold points, possibly mirroring another system's ids."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import msgspec

from loyalty.customers import repository, schemas
from loyalty.customers.schemas import CUSTOMER_ID_PATTERN, NAME_MAX, Customer
from loyalty.db import Database, UniqueViolation
from loyalty.emails import email_key, is_valid_email
from loyalty.errors import Conflict, FieldError, NotFound, validation_error
from loyalty.events import notify
from loyalty.events import repository as events
from loyalty.events.repository import NewEvent
from loyalty.ids import new_id
from loyalty.timestamps import now_ms

_encoder = msgspec.json.Encoder()
CUSTOMER_ID = re.compile(CUSTOMER_ID_PATTERN.strip("^$"))


@dataclass(frozen=True, slots=True)
class NewCustomer:
    email: Any = None
    first_name: Any = None
    last_name: Any = None
    id: Any = None


def _validate(new: NewCustomer) -> None:
    errors = []
    if not isinstance(new.email, str) or not is_valid_email(new.email):
        errors.append(FieldError("email", "email must be a valid email address"))
    for field, value in (("first_name", new.first_name), ("last_name", new.last_name)):
        if value is not None and (not isinstance(value, str) or len(value) > NAME_MAX):
            message = f"{field} must be a string of at most {NAME_MAX} characters, or null"
            errors.append(FieldError(field, message))
    if new.id is not None and (not isinstance(new.id, str) or not CUSTOMER_ID.fullmatch(new.id)):
        errors.append(FieldError("id", f"id must match {CUSTOMER_ID_PATTERN}"))
    if errors:
        raise validation_error(errors)


async def create_customer(db: Database, new: NewCustomer) -> Customer:
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
            if row is None:
                raise RuntimeError("a customer just inserted was not found")
            customer = schemas.customer(row)
            event = NewEvent(
                new_id("evt", created_ms),
                "customer.created",
                customer_id,
                customer_id,
                created_ms,
                _encoder.encode(customer),
            )
            await events.record(conn, [event])
    except UniqueViolation:
        raise Conflict("A customer with this id or email already exists") from None
    notify.changed()
    return customer


async def get_customer(db: Database, customer_id: str) -> Customer:
    async with db.read() as conn:
        row = await repository.find_customer(conn, customer_id)
    if row is None:
        raise NotFound(f"Customer with id: {customer_id} was not found")
    return schemas.customer(row)


def like_pattern(query: str) -> str:
    escaped = query.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


async def list_customers(
    db: Database, query: str | None, limit: int, offset: int
) -> tuple[list[Customer], int]:
    pattern = like_pattern(query) if query else None
    async with db.read(snapshot=True) as conn:
        rows = await repository.list_customers(conn, pattern, limit, offset)
        count = await repository.count_customers(conn, pattern)
    return [schemas.customer(row) for row in rows], count
