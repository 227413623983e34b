"""The shapes every feature shares, as msgspec Structs and annotated types: exact points,
timestamps, the error body and paging. The OpenAPI document is generated from these."""

from __future__ import annotations

from typing import Annotated

import msgspec
from msgspec import Meta, Struct

from loyalty.http.params import PAGE_LIMIT_DEFAULT, PAGE_LIMIT_MAX, PAGE_OFFSET_MAX

# An exact amount, written as the shortest JSON number (150, 100.01, 0.3): the service renders
# it from integer hundredths and hands msgspec the text.
Points = Annotated[
    msgspec.Raw,
    Meta(
        description="Exact points, at most 2 fractional digits (150, 100.01, 0.3)",
        extra_json_schema={"type": "number"},
    ),
]
Timestamp = Annotated[
    str,
    Meta(extra_json_schema={"format": "date-time", "example": "2026-02-18T12:34:56.789Z"}),
]
ERROR_TYPES = (
    "invalid_data",
    "not_allowed",
    "unauthorized",
    "forbidden",
    "not_found",
    "conflict",
    "idempotency_error",
    "unexpected_state",
)


class FieldProblem(Struct):
    field: str
    message: str


class Error(Struct, omit_defaults=True):
    """Every error: `type` says which kind, `message` says what is wrong on its own."""

    type: Annotated[str, Meta(extra_json_schema={"enum": list(ERROR_TYPES)})]
    message: str
    errors: list[FieldProblem] | msgspec.UnsetType = msgspec.UNSET


class PageQuery(Struct):
    limit: Annotated[int, Meta(ge=1, le=PAGE_LIMIT_MAX)] = PAGE_LIMIT_DEFAULT
    offset: Annotated[int, Meta(ge=0, le=PAGE_OFFSET_MAX)] = 0


PageLimit = Annotated[int, Meta(ge=1, le=PAGE_LIMIT_MAX)]
PageCount = Annotated[int, Meta(ge=0)]
PageOffset = Annotated[int, Meta(ge=0)]
