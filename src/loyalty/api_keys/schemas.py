"""Secret API keys' request and response bodies, as msgspec Structs (the OpenAPI document is
generated from them)."""

from __future__ import annotations

from typing import Annotated

from msgspec import Meta, Struct

from loyalty.api_keys.repository import ApiKeyRow
from loyalty.auth.scopes import ALL_SCOPES, parse_scopes
from loyalty.http.schemas import PageCount, PageLimit, PageOffset, PageQuery, Timestamp
from loyalty.timestamps import render

TITLE_MAX = 255
KEY_ID_MAX = 64
SCOPES_MAX = 16

Scope = Annotated[str, Meta(extra_json_schema={"enum": list(ALL_SCOPES)})]


class ApiKeyCreate(Struct, forbid_unknown_fields=True):
    title: Annotated[str, Meta(min_length=1, max_length=TITLE_MAX)]
    scopes: (
        Annotated[
            list[Scope],
            Meta(
                min_length=1,
                max_length=SCOPES_MAX,
                description="At most the creator's own scopes; default: all of them",
            ),
        ]
        | None
    ) = None


class ApiKey(Struct):
    id: str
    title: str
    token: Annotated[
        str | None,
        Meta(
            description="The secret, in the creation's response only; null in lists and in an"
            " Idempotency-Key replay (it is never stored)"
        ),
    ]
    redacted: str
    scopes: list[Scope]
    created_by: Annotated[str, Meta(description="The user the key acts for; it dies with them")]
    created_at: Timestamp
    last_used_at: Timestamp | None
    revoked_at: Timestamp | None


class ApiKeyResponse(Struct):
    api_key: ApiKey


class ApiKeyPage(Struct):
    api_keys: list[ApiKey]
    count: PageCount
    offset: PageOffset
    limit: PageLimit


class ApiKeyQuery(PageQuery):
    pass


CREATE_FIELDS = frozenset(ApiKeyCreate.__struct_fields__)
KeyIdPath = Annotated[str, Meta(min_length=1, max_length=KEY_ID_MAX)]


def api_key(row: ApiKeyRow, token: str | None = None) -> ApiKey:
    return ApiKey(
        row.id,
        row.title,
        token,
        row.redacted,
        sorted(parse_scopes(row.scopes)),
        row.created_by,
        render(row.created_at_ms),
        None if row.last_used_at_ms is None else render(row.last_used_at_ms),
        None if row.revoked_at_ms is None else render(row.revoked_at_ms),
    )
