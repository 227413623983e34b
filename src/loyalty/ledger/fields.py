"""The rules of the ledger's optional fields (SPEC 7.1, 7.4): reference, the timestamps and
points, checked from raw JSON values (metadata's rules, shared with customers, are in
loyalty.metadata). Each parser appends its FieldError and returns None when the value is
wrong."""

from __future__ import annotations

import re
from typing import Any

import msgspec

from loyalty import timestamps
from loyalty.errors import FieldError
from loyalty.http.body import decode_field
from loyalty.ledger import points
from loyalty.ledger.points import (
    DELTA_MAX_HUNDREDTHS,
    HUNDREDTHS_PER_POINT,
    PointsError,
    PointsTooLarge,
)

REFERENCE_MAX = 128
POINTS_MAX = DELTA_MAX_HUNDREDTHS // HUNDREDTHS_PER_POINT
# Visible ASCII: no spaces, no control characters, nothing a log or a URL would mangle.
_REFERENCE = re.compile(f"[\\x21-\\x7e]{{1,{REFERENCE_MAX}}}")
_REFERENCE_CHARACTERS = (
    "reference must be visible ASCII characters only: no spaces, no control or non-ASCII characters"
)
_REFERENCE_RULE = (
    f"reference must be a string of 1 to {REFERENCE_MAX} visible ASCII characters, or null"
)


def is_null(raw: msgspec.Raw | None) -> bool:
    return raw is None or bytes(raw) == b"null"


def reference(raw: msgspec.Raw | None, errors: list[FieldError]) -> str | None:
    if is_null(raw):
        return None
    assert raw is not None
    value: str | None = _decoded(raw, str)
    message = None
    if value is None:
        message = _REFERENCE_RULE
    elif not value:
        message = "reference must not be empty (send null for none)"
    elif len(value) > REFERENCE_MAX:
        message = f"reference must be at most {REFERENCE_MAX} characters"
    elif not _REFERENCE.fullmatch(value):
        message = _REFERENCE_CHARACTERS
    if message is not None:
        errors.append(FieldError("reference", message))
        return None
    return value


def timestamp(
    raw: msgspec.Raw | None, name: str, errors: list[FieldError], after_ms: int | None = None
) -> int | None:
    """An ISO 8601 date-time in a JSON string; with `after_ms`, it must be later than that."""
    if is_null(raw):
        return None
    assert raw is not None
    text = _decoded(raw, str)
    try:
        if text is None:
            raise ValueError(text)
        value = timestamps.parse(text)
    except ValueError:
        errors.append(FieldError(name, f"{name} must be an ISO 8601 date-time"))
        return None
    if after_ms is not None and value <= after_ms:
        errors.append(FieldError(name, f"{name} must be in the future"))
        return None
    return value


def positive_points(raw: msgspec.Raw | None, name: str, errors: list[FieldError]) -> int | None:
    """A number of points above zero with at most 2 decimal places."""
    if raw is None:
        errors.append(FieldError(name, f"{name} is required"))
        return None
    text = bytes(raw)
    too_large = f"{name} must be at most {POINTS_MAX}; {text.decode()[:64]} is too large"
    try:
        value = points.parse_json_number(text)
    except PointsTooLarge:
        errors.append(FieldError(name, too_large))
        return None
    except PointsError as error:
        errors.append(FieldError(name, f"{name} {error}"))
        return None
    if value <= 0:
        errors.append(FieldError(name, f"{name} must be above 0"))
        return None
    if value > DELTA_MAX_HUNDREDTHS:
        errors.append(FieldError(name, too_large))
        return None
    return value


def optional_string(
    raw: msgspec.Raw | None, name: str, maximum: int, errors: list[FieldError]
) -> str | None:
    if is_null(raw):
        return None
    assert raw is not None
    value: str | None = _decoded(raw, str)
    if value is None or len(value) > maximum:
        errors.append(
            FieldError(name, f"{name} must be a string of at most {maximum} characters, or null")
        )
        return None
    return value


def _decoded(raw: msgspec.Raw, kind: Any) -> Any:
    try:
        return decode_field(raw, kind)
    except msgspec.ValidationError:
        return None
