"""HTTP plumbing shared by every route: bounded JSON bodies, query parameters, responses."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from loyalty.errors import FieldError, InvalidData, PayloadTooLarge

BODY_MAX_BYTES = 64 * 1024
QUERY_VALUE_MAX = 1024

T = TypeVar("T")

_encoder = msgspec.json.Encoder()
_object_decoder = msgspec.json.Decoder(dict[str, msgspec.Raw])


def json_response(
    body: Any, status: int = 200, headers: Mapping[str, str] | None = None
) -> Response:
    return Response(_encoder.encode(body), status, headers, media_type="application/json")


async def read_body(request: Request) -> bytes:
    """The raw body, refused with 413 as soon as it passes BODY_MAX_BYTES."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > BODY_MAX_BYTES:
        raise PayloadTooLarge(f"Request body must be at most {BODY_MAX_BYTES} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > BODY_MAX_BYTES:
            raise PayloadTooLarge(f"Request body must be at most {BODY_MAX_BYTES} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def read_json_object(request: Request, allowed: frozenset[str]) -> dict[str, msgspec.Raw]:
    """The body as a JSON object whose values are still raw JSON, for exact field parsing."""
    return parse_json_object(request, await read_body(request), allowed)


def parse_json_object(
    request: Request, body: bytes, allowed: frozenset[str]
) -> dict[str, msgspec.Raw]:
    """`body` (already read) as a JSON object with only `allowed` fields."""
    media_type = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if media_type != "application/json":
        raise InvalidData("Content-Type must be application/json")
    try:
        fields = _object_decoder.decode(body)
    except (msgspec.DecodeError, RecursionError):
        raise InvalidData("Request body must be a JSON object") from None
    if b"\\u0000" in body and _has_nul_escape(body):
        # PostgreSQL's text cannot hold NUL; refuse it everywhere, so both databases agree.
        raise InvalidData("Strings must not contain NUL characters")
    unknown = sorted(set(fields) - allowed)
    if unknown:
        names = [name[:64] for name in unknown[:10]]
        raise InvalidData(
            "Unrecognized fields: " + ", ".join(repr(name) for name in names),
            [FieldError(name, "Unrecognized field") for name in names],
        )
    return fields


def _has_nul_escape(body: bytes) -> bool:
    """Whether a JSON text holds the escape `\\u0000` (and not an escaped backslash before
    the letters u0000)."""
    start = body.find(b"\\u0000")
    while start != -1:
        backslashes = len(body[:start]) - len(body[:start].rstrip(b"\\"))
        if backslashes % 2 == 0:
            return True
        start = body.find(b"\\u0000", start + 1)
    return False


def decode_field(raw: msgspec.Raw, kind: type[T]) -> T:
    """A raw JSON value as `kind`; raises msgspec.ValidationError if it is not one (numbers
    out of range included)."""
    return msgspec.json.decode(raw, type=kind)


def path_param(request: Request, name: str, length_max: int) -> str:
    """A path parameter, bounded and free of NUL (which PostgreSQL's text cannot hold)."""
    value: str = request.path_params[name]
    if len(value) > length_max or "\x00" in value:
        message = f"{name} must be at most {length_max} characters, without NUL"
        raise InvalidData(message, [FieldError(name, message)])
    return value


def query_params(request: Request, allowed: frozenset[str]) -> dict[str, str]:
    """Single-valued query parameters; unknown, repeated or overlong ones are a 400."""
    params: dict[str, str] = {}
    for key, value in request.query_params.multi_items():
        if key not in allowed:
            raise InvalidData(f"Unrecognized query parameter: {key[:64]!r}")
        if key in params:
            raise InvalidData(f"Query parameter {key!r} must be given at most once")
        if len(value) > QUERY_VALUE_MAX or "\x00" in value:
            raise InvalidData(f"Query parameter {key!r} is too long or holds a NUL character")
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


PAGE_LIMIT_DEFAULT = 20
PAGE_LIMIT_MAX = 100
PAGE_OFFSET_MAX = 2**31 - 1


def parse_page(params: Mapping[str, str]) -> tuple[int, int]:
    """`(limit, offset)` from `?limit=` (1..100, default 20) and `?offset=` (default 0)."""
    limit = parse_int(params, "limit", PAGE_LIMIT_DEFAULT, 1, PAGE_LIMIT_MAX)
    offset = parse_int(params, "offset", 0, 0, PAGE_OFFSET_MAX)
    return limit, offset


def parse_with(params: Mapping[str, str], name: str, parse: Callable[[str], T]) -> T | None:
    """An optional parameter through `parse`, whose ValueError becomes a 400 naming it."""
    value = params.get(name)
    if value is None:
        return None
    try:
        return parse(value)
    except ValueError:
        message = f"{name} is not valid"
        raise InvalidData(message, [FieldError(name, message)]) from None
