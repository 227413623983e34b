"""Customers: the accounts that hold points, possibly mirroring another system's ids."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import msgspec

from loyalty.customers import repository, schemas
from loyalty.customers.repository import NewCustomerRow
from loyalty.customers.schemas import (
    COMPANY_NAME_MAX,
    CUSTOMER_ID_PATTERN,
    NAME_MAX,
    PHONE_MAX,
    Customer,
)
from loyalty.db import Database, UniqueViolation
from loyalty.emails import email_key, is_valid_email
from loyalty.errors import Conflict, FieldError, NotFound, validation_error
from loyalty.events import notify
from loyalty.events import repository as events
from loyalty.events.repository import NewEvent
from loyalty.ids import new_id
from loyalty.metadata import encode_metadata, parse_metadata
from loyalty.timestamps import now_ms

_encoder = msgspec.json.Encoder()
CUSTOMER_ID = re.compile(CUSTOMER_ID_PATTERN.strip("^$"))


@dataclass(frozen=True, slots=True)
class NewCustomer:
    """A create request's fields as decoded JSON values, not yet checked; `metadata` is still
    its raw JSON text, for the exact rules of loyalty.metadata."""

    email: Any = None
    first_name: Any = None
    last_name: Any = None
    phone: Any = None
    company_name: Any = None
    metadata: Any = None  # msgspec.Raw | None
    id: Any = None


# Optional strings and their length limits, in the order their errors are reported.
_STRING_LIMITS = (
    ("first_name", NAME_MAX),
    ("last_name", NAME_MAX),
    ("phone", PHONE_MAX),
    ("company_name", COMPANY_NAME_MAX),
)


def _checked(new: NewCustomer, customer_id: str) -> NewCustomerRow:
    errors = []
    if not isinstance(new.email, str) or not is_valid_email(new.email):
        errors.append(FieldError("email", "email must be a valid email address"))
    for field, limit in _STRING_LIMITS:
        value = getattr(new, field)
        if value is not None and (not isinstance(value, str) or len(value) > limit):
            message = f"{field} must be a string of at most {limit} characters, or null"
            errors.append(FieldError(field, message))
    metadata = parse_metadata(new.metadata, errors)
    if new.id is not None and (not isinstance(new.id, str) or not CUSTOMER_ID.fullmatch(new.id)):
        errors.append(FieldError("id", f"id must match {CUSTOMER_ID_PATTERN}"))
    if errors:
        raise validation_error(errors)
    return NewCustomerRow(
        customer_id,
        new.email,
        email_key(new.email),
        new.first_name,
        new.last_name,
        new.phone,
        new.company_name,
        encode_metadata(metadata),
    )


async def create_customer(db: Database, new: NewCustomer) -> Customer:
    created_ms = now_ms()
    checked = _checked(new, new.id or new_id("cus", created_ms))
    customer_id = checked.id
    try:
        async with db.write() as conn:
            await repository.insert_customer(conn, checked, created_ms)
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
        raise await _taken(db, checked) from None
    notify.changed()
    return customer


async def _taken(db: Database, new: NewCustomerRow) -> Conflict:
    """The 409 for a create that broke a unique rule, naming which: the id or the email."""
    async with db.read() as conn:
        same_id = await repository.find_customer(conn, new.id)
    if same_id is not None:
        return Conflict(f"A customer with id {new.id} already exists")
    return Conflict(f"A customer with email {new.email} already exists")


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
