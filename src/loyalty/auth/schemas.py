"""Login's request and response bodies, as msgspec Structs (the OpenAPI document is generated
from them)."""

from __future__ import annotations

from typing import Annotated

from msgspec import Meta, Struct

from loyalty.auth.passwords import PASSWORD_MAX
from loyalty.auth.scopes import ALL_SCOPES
from loyalty.emails import EMAIL_MAX


class Credentials(Struct, forbid_unknown_fields=True):
    email: Annotated[str, Meta(min_length=1, max_length=EMAIL_MAX)]
    password: Annotated[str, Meta(min_length=1, max_length=PASSWORD_MAX)]


class UserBody(Struct):
    id: str
    email: str
    first_name: str | None
    last_name: str | None
    scopes: list[Annotated[str, Meta(extra_json_schema={"enum": list(ALL_SCOPES)})]]


class TokenWithUser(Struct):
    token: str
    user: UserBody


class UserResponse(Struct):
    user: UserBody


class Token(Struct):
    token: str


LOGIN_FIELDS = frozenset(Credentials.__struct_fields__)
# Each field's length limit, as the document states it.
LOGIN_LIMITS = {"email": EMAIL_MAX, "password": PASSWORD_MAX}
