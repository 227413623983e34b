"""Request bodies: bounded, JSON objects only, read field by field from their raw JSON.

A body is refused before any field is read when it is too large (413), not sent as
application/json, not UTF-8, not one JSON object, holds a key twice at any depth (a proxy or
a log that keeps the first would see another request than the one applied) or a NUL
character (PostgreSQL's text cannot hold it, so both databases refuse it alike).
"""

from __future__ import annotations

import re
from typing import Any, TypeVar

import msgspec
from starlette.requests import ClientDisconnect, Request

from loyalty.errors import ClientDisconnected, FieldError, InvalidData, PayloadTooLarge

BODY_MAX_BYTES = 64 * 1024
UNKNOWN_FIELDS_NAMED_MAX = 10

T = TypeVar("T")

_object_decoder = msgspec.json.Decoder(dict[str, msgspec.Raw])
_any_decoder = msgspec.json.Decoder()
# A JSON string followed by a colon is always an object's key, whatever its depth.
_KEY = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"\s*:')


async def read_body(request: Request, size_max: int = BODY_MAX_BYTES) -> bytes:
    """The raw body, refused with 413 as soon as it passes `size_max` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > size_max:
        raise PayloadTooLarge(f"Request body must be at most {size_max} bytes")
    chunks: list[bytes] = []
    size = 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > size_max:
                raise PayloadTooLarge(f"Request body must be at most {size_max} bytes")
            chunks.append(chunk)
    except ClientDisconnect:
        raise ClientDisconnected() from None
    return b"".join(chunks)


def parse_json_object(
    request: Request, body: bytes, allowed: frozenset[str]
) -> dict[str, msgspec.Raw]:
    """`body` (already read) as a JSON object with only `allowed` fields, each value still
    its raw JSON text, for exact parsing by the caller."""
    media_type = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if media_type != "application/json":
        raise InvalidData("Content-Type must be application/json")
    try:
        body.decode()
    except UnicodeDecodeError:
        raise InvalidData("Request body must be UTF-8") from None
    try:
        fields = _object_decoder.decode(body)
    except msgspec.ValidationError as error:
        raise InvalidData(f"Request body must be a JSON object, not {_kind(error)}") from None
    except msgspec.DecodeError as error:
        reason = _malformed(body, error)
        raise InvalidData(f"Request body must be a JSON object; {reason}") from None
    except RecursionError:
        raise InvalidData("Request body must be a JSON object; it nests too deeply") from None
    if b"\\u0000" in body and _has_nul_escape(body):
        raise InvalidData("Strings must not contain NUL characters")
    if _has_duplicate_key(body, fields):
        raise InvalidData("Request body must not name a field twice")
    refuse_unknown_fields(fields, allowed)
    return fields


# msgspec's words for a JSON value's type, in "Expected `object`, got `array`".
_KINDS = {
    "array": "an array",
    "str": "a string",
    "int": "a number",
    "float": "a number",
    "bool": "a boolean",
    "null": "null",
}
_NOT_FINITE = (b"NaN", b"Infinity", b"-Infinity")


def _kind(error: msgspec.ValidationError) -> str:
    got = str(error).rpartition("got `")[2].rstrip("`")
    return _KINDS.get(got, "another JSON value")


def _malformed(body: bytes, error: msgspec.DecodeError) -> str:
    """Why a body is not JSON, said precisely: where it breaks, and the usual cause there."""
    text = str(error)
    if not body.strip():
        return "the body is empty"
    if "truncated" in text:
        return "the JSON text ends before it is complete"
    byte = text.rpartition("(byte ")[2].rstrip(")")
    if byte.isdigit():
        at = int(byte)
        if any(body.startswith(word, at) or body.startswith(word, at - 1) for word in _NOT_FINITE):
            return f"NaN and Infinity are not JSON numbers (at byte {at})"
        return f"the JSON text is malformed at byte {at}"
    return "the JSON text is malformed"


def refuse_unknown_fields(fields: dict[str, msgspec.Raw], allowed: frozenset[str]) -> None:
    """A 400 naming the fields of a JSON object that are not `allowed`."""
    unknown = sorted(set(fields) - allowed)
    if unknown:
        names = [name[:64] for name in unknown[:UNKNOWN_FIELDS_NAMED_MAX]]
        raise InvalidData(
            "Unrecognized fields: " + ", ".join(repr(name) for name in names),
            [FieldError(name, "Unrecognized field") for name in names],
        )


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


def _has_duplicate_key(body: bytes, fields: dict[str, msgspec.Raw]) -> bool:
    """Whether an object in the JSON text names a key twice: the text holds more keys than
    its decoded objects, where a repeated key collapses into one."""
    written = len(_KEY.findall(body))
    if written == len(fields):
        # Only the top level has keys (the usual flat body): nothing collapsed.
        return False
    return written != _count_keys(_any_decoder.decode(body))


def _count_keys(value: Any) -> int:
    if isinstance(value, dict):
        return len(value) + sum(_count_keys(item) for item in value.values())
    if isinstance(value, list):
        return sum(_count_keys(item) for item in value)
    return 0


def decode_field(raw: msgspec.Raw, kind: type[T]) -> T:
    """A raw JSON value as `kind`; raises msgspec.ValidationError if it is not one (numbers
    out of range included)."""
    return msgspec.json.decode(raw, type=kind)
