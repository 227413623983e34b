"""Query and path parameters: bounded, single-valued, and only those a route knows."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from functools import cache
from typing import TypeVar

import msgspec
from starlette.requests import Request

from loyalty.errors import FieldError, InvalidData

QUERY_VALUE_MAX = 1024
PAGE_LIMIT_DEFAULT = 20
PAGE_LIMIT_MAX = 100
PAGE_OFFSET_MAX = 2**31 - 1

T = TypeVar("T")


def path_param(request: Request, name: str, length_max: int) -> str:
    """A path parameter, bounded and free of NUL (which PostgreSQL's text cannot hold)."""
    value: str = request.path_params[name]
    message = None
    if len(value) > length_max:
        message = f"{name} must be at most {length_max} characters"
    elif "\x00" in value:
        message = f"{name} must not contain a NUL character"
    if message is not None:
        raise InvalidData(message, [FieldError(name, message)])
    return value


def query_params(request: Request, query: type | None = None) -> dict[str, str]:
    """Single-valued query parameters, those that the `query` Struct describes (its fields'
    names as sent); unknown, repeated or overlong ones are a 400."""
    allowed = parameter_names(query)
    params: dict[str, str] = {}
    for key, value in request.query_params.multi_items():
        if key not in allowed:
            raise InvalidData(f"Unrecognized query parameter: {key[:64]!r}")
        if key in params:
            raise InvalidData(f"Query parameter {key!r} must be given at most once")
        if len(value) > QUERY_VALUE_MAX:
            message = f"Query parameter {key!r} must be at most {QUERY_VALUE_MAX} characters"
            raise InvalidData(message)
        if "\x00" in value:
            raise InvalidData(f"Query parameter {key!r} must not contain a NUL character")
        params[key] = value
    return params


def parse_bool(params: Mapping[str, str], name: str, default: bool) -> bool:
    value = params.get(name)
    if value is None:
        return default
    if value in ("true", "1"):
        return True
    if value in ("false", "0"):
        return False
    raise InvalidData(f"{name} must be true or false", [FieldError(name, "must be true or false")])


def parse_int(params: Mapping[str, str], name: str, default: int, low: int, high: int) -> int:
    value = params.get(name)
    if value is None:
        return default
    if not (value.isascii() and value.isdigit()) or not low <= int(value) <= high:
        message = f"{name} must be an integer between {low} and {high}"
        raise InvalidData(message, [FieldError(name, message)])
    return int(value)


def parse_page(params: Mapping[str, str]) -> tuple[int, int]:
    """`(limit, offset)` from `?limit=` (1..100, default 20) and `?offset=` (default 0)."""
    limit = parse_int(params, "limit", PAGE_LIMIT_DEFAULT, 1, PAGE_LIMIT_MAX)
    offset = parse_int(params, "offset", 0, 0, PAGE_OFFSET_MAX)
    return limit, offset


def parse_with(
    params: Mapping[str, str], name: str, parse: Callable[[str], T], rule: str
) -> T | None:
    """An optional parameter through `parse`, whose ValueError becomes a 400 saying `rule`
    ("must be …") of it."""
    value = params.get(name)
    if value is None:
        return None
    try:
        return parse(value)
    except ValueError:
        message = f"{name} {rule}"
        raise InvalidData(message, [FieldError(name, message)]) from None


@cache
def parameter_names(query: type | None) -> frozenset[str]:
    """The names a query Struct's fields take in the URL (`created_at[gte]`, say)."""
    if query is None:
        return frozenset()
    return frozenset(field.encode_name for field in msgspec.structs.fields(query))
