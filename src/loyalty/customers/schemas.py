"""Customers' request and response bodies, as msgspec Structs (the OpenAPI document is
generated from them)."""

from __future__ import annotations

from typing import Annotated

from msgspec import Meta, Struct

from loyalty.customers.repository import CustomerRow
from loyalty.emails import EMAIL_MAX
from loyalty.http.schemas import PageCount, PageLimit, PageOffset, PageQuery, Timestamp
from loyalty.metadata import Metadata, StoredMetadata, stored_metadata
from loyalty.timestamps import render

CUSTOMER_ID_MAX = 64
CUSTOMER_ID_PATTERN = f"^[A-Za-z0-9_-]{{1,{CUSTOMER_ID_MAX}}}$"
NAME_MAX = 255
PHONE_MAX = 32
COMPANY_NAME_MAX = 255
QUERY_MAX = 255

Name = Annotated[str, Meta(max_length=NAME_MAX)]
Phone = Annotated[str, Meta(max_length=PHONE_MAX)]
CompanyName = Annotated[str, Meta(max_length=COMPANY_NAME_MAX)]


class CustomerCreate(Struct, forbid_unknown_fields=True):
    email: Annotated[
        str, Meta(min_length=1, max_length=EMAIL_MAX, extra_json_schema={"format": "email"})
    ]
    first_name: Name | None = None
    last_name: Name | None = None
    phone: Phone | None = None
    company_name: CompanyName | None = None
    metadata: Metadata | None = None
    id: (
        Annotated[
            str,
            Meta(
                pattern=CUSTOMER_ID_PATTERN,
                description="Your own id for the customer (a store's cus_… id), else generated",
            ),
        ]
        | None
    ) = None


class CustomerQuery(PageQuery):
    q: (
        Annotated[
            str,
            Meta(max_length=QUERY_MAX, description="Matches email, first or last name (substring)"),
        ]
        | None
    ) = None


class Customer(Struct):
    id: str
    email: str
    first_name: str | None
    last_name: str | None
    phone: str | None
    company_name: str | None
    metadata: StoredMetadata | None
    created_at: Timestamp
    updated_at: Timestamp


class CustomerResponse(Struct):
    customer: Customer


class CustomerPage(Struct):
    customers: list[Customer]
    count: PageCount
    offset: PageOffset
    limit: PageLimit


CREATE_FIELDS = frozenset(CustomerCreate.__struct_fields__)
CustomerIdPath = Annotated[str, Meta(min_length=1, max_length=CUSTOMER_ID_MAX)]


def customer(row: CustomerRow) -> Customer:
    return Customer(
        row.id,
        row.email,
        row.first_name,
        row.last_name,
        row.phone,
        row.company_name,
        stored_metadata(row.metadata),
        render(row.created_at_ms),
        render(row.updated_at_ms),
    )
