"""The service's error types. One handler in app.py renders all of them."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class FieldError:
    field: str
    message: str


class LoyaltyError(Exception):
    """Base of every error a client may see; status and type come from the subclass."""

    status = 500
    type = "unexpected_state"

    def __init__(self, message: str, errors: list[FieldError] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.errors = errors or []
        self.headers: dict[str, str] = {}


class InvalidData(LoyaltyError):
    status = 400
    type = "invalid_data"


class NotAllowed(LoyaltyError):
    """A valid request that a business rule forbids."""

    status = 400
    type = "not_allowed"


class Unauthorized(LoyaltyError):
    status = 401
    type = "unauthorized"

    def __init__(self, message: str = "Authentication required") -> None:
        super().__init__(message)


class Forbidden(LoyaltyError):
    status = 403
    type = "forbidden"


class NotFound(LoyaltyError):
    status = 404
    type = "not_found"


class MethodNotAllowed(LoyaltyError):
    status = 405
    type = "not_allowed"

    def __init__(self, message: str, allow: str) -> None:
        super().__init__(message)
        self.headers["Allow"] = allow


class Conflict(LoyaltyError):
    status = 409
    type = "conflict"


class IdempotencyMismatch(LoyaltyError):
    """An Idempotency-Key reused with a different request."""

    status = 422
    type = "idempotency_error"


class TooManyRequests(LoyaltyError):
    """Too many failed logins for one email or one client address within the window."""

    status = 429
    type = "not_allowed"

    def __init__(self, message: str, retry_after_s: int) -> None:
        super().__init__(message)
        self.headers["Retry-After"] = str(retry_after_s)


class PayloadTooLarge(LoyaltyError):
    status = 413
    type = "invalid_data"


class ClientDisconnected(LoyaltyError):
    """The client went away before its request was whole. No answer will reach it, and it is
    no fault of the service's: the access line records it, nothing else does."""

    status = 400
    type = "invalid_data"

    def __init__(self) -> None:
        super().__init__("The client closed the connection before the request was complete")


class RequestTimeout(LoyaltyError):
    """The request's head or body did not arrive within the read deadline."""

    status = 408
    type = "invalid_data"


class RequestHeadTooLarge(LoyaltyError):
    status = 431
    type = "invalid_data"


class DatabaseUnavailable(LoyaltyError):
    status = 503
    type = "unexpected_state"

    def __init__(self, message: str = "The database is unavailable; try again shortly") -> None:
        super().__init__(message)


class InvariantViolation(Exception):
    """A ledger invariant does not hold: a bug, never a client error, never swallowed."""


def validation_error(errors: list[FieldError]) -> InvalidData:
    """One 400 for all the field errors; the message is the first one's."""
    return InvalidData(errors[0].message, errors)
