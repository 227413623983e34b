"""The service's error envelope `{"type", "message", "errors"?}` as exceptions, one class per
`type`, so callers can catch what they expect and still read the precise message."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class FieldProblem:
    field: str
    message: str


class LoyaltyError(Exception):
    """An error answer of the service (or, with status 0, no answer at all)."""

    def __init__(
        self,
        status: int,
        type: str,
        message: str,
        errors: list[FieldProblem] | None = None,
        retry_after_s: float | None = None,
    ) -> None:
        super().__init__(f"{status} {type}: {message}")
        self.status = status
        self.type = type
        self.message = message
        self.errors = errors or []
        self.retry_after_s = retry_after_s


class InvalidData(LoyaltyError):
    """400 invalid_data (also 413)."""


class NotAllowed(LoyaltyError):
    """400 not_allowed: a business rule forbids it (insufficient points), or 405."""


class Unauthorized(LoyaltyError):
    """401: missing, wrong, expired or revoked credentials."""


class Forbidden(LoyaltyError):
    """403: the credentials lack the scope."""


class NotFound(LoyaltyError):
    """404: unknown customer, adjustment or route."""


class Conflict(LoyaltyError):
    """409: a duplicate (email, id, reference), or an Idempotency-Key still in flight."""


class IdempotencyError(LoyaltyError):
    """422: an Idempotency-Key reused with a different request."""


class TooManyRequests(NotAllowed):
    """429 (type not_allowed): throttled; retry_after_s says when to come back."""


class Unexpected(LoyaltyError):
    """5xx unexpected_state, an answer that is not the service's envelope, or no answer."""


_BY_TYPE: dict[str, type[LoyaltyError]] = {
    "invalid_data": InvalidData,
    "not_allowed": NotAllowed,
    "unauthorized": Unauthorized,
    "forbidden": Forbidden,
    "not_found": NotFound,
    "conflict": Conflict,
    "idempotency_error": IdempotencyError,
    "unexpected_state": Unexpected,
}


def error_from(status: int, body: Any, retry_after_s: float | None = None) -> LoyaltyError:
    """The exception for an error answer; an unknown or missing envelope is Unexpected."""
    if not isinstance(body, Mapping) or not isinstance(body.get("message"), str):
        return Unexpected(status, "unexpected_state", f"HTTP {status}", None, retry_after_s)
    kind = body.get("type")
    kind = kind if isinstance(kind, str) else "unexpected_state"
    problems = [
        FieldProblem(str(item.get("field", "")), str(item.get("message", "")))
        for item in body.get("errors") or []
        if isinstance(item, Mapping)
    ]
    if status == 429:
        cls: type[LoyaltyError] = TooManyRequests
    elif status >= 500:
        cls = Unexpected
    else:
        cls = _BY_TYPE.get(kind, Unexpected)
    return cls(status, kind, body["message"], problems, retry_after_s)
