"""Metadata: a small JSON object of strings that a caller attaches to an adjustment, pending
points or a customer (SPEC 7.1, 8.4), with the same limits wherever it appears. Stored as the
object's JSON text and returned as is."""

from __future__ import annotations

from typing import Annotated

import msgspec
from msgspec import Meta

from loyalty.errors import FieldError
from loyalty.http.body import decode_field

METADATA_KEYS_MAX = 16
METADATA_KEY_MAX = 40
METADATA_VALUE_MAX = 500

# The request's form, for the OpenAPI document (the parser below enforces the same limits).
Metadata = Annotated[
    dict[
        Annotated[str, Meta(min_length=1, max_length=METADATA_KEY_MAX)],
        Annotated[str, Meta(max_length=METADATA_VALUE_MAX)],
    ],
    Meta(max_length=METADATA_KEYS_MAX),
]
# Metadata as stored (a JSON object's text), handed to msgspec as is.
StoredMetadata = Annotated[
    msgspec.Raw,
    Meta(
        extra_json_schema={
            "type": ["object", "null"],
            "additionalProperties": {"type": "string"},
        }
    ),
]

_encoder = msgspec.json.Encoder()


def parse_metadata(raw: msgspec.Raw | None, errors: list[FieldError]) -> dict[str, str] | None:
    """The metadata object of a raw JSON value (absent or null: None); when it breaks a rule,
    a FieldError naming that rule is appended and None returned. Each message says what is
    wrong on its own, as Medusa's SDK shows only the message."""
    if raw is None or bytes(raw) == b"null":
        return None
    message = _problem(raw)
    if message is not None:
        errors.append(FieldError("metadata", message))
        return None
    value: dict[str, str] = decode_field(raw, dict[str, str])
    return value


def _problem(raw: msgspec.Raw) -> str | None:
    try:
        value = decode_field(raw, dict[str, object])
    except msgspec.ValidationError:
        return "metadata must be a JSON object whose values are strings, or null"
    if len(value) > METADATA_KEYS_MAX:
        return f"metadata must have at most {METADATA_KEYS_MAX} keys, not {len(value)}"
    for key, item in value.items():
        if not 1 <= len(key) <= METADATA_KEY_MAX:
            return f"metadata keys must be 1 to {METADATA_KEY_MAX} characters long"
        if not isinstance(item, str):
            return f"metadata values must be strings (the value of {key!r} is not)"
        if len(item) > METADATA_VALUE_MAX:
            return (
                f"metadata values must be at most {METADATA_VALUE_MAX} characters"
                f" (the value of {key!r} is longer)"
            )
    return None


def encode_metadata(value: dict[str, str] | None) -> str | None:
    """The text to store for a parsed metadata object."""
    return None if value is None else _encoder.encode(value).decode()


def stored_metadata(text: str | None) -> msgspec.Raw | None:
    """Stored metadata as the raw JSON to put in a response."""
    return None if text is None else msgspec.Raw(text.encode())
