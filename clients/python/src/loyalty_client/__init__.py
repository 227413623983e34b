"""A typed client for the Loyalty Points API: exact Decimal points, an Idempotency-Key on
every write kept across retries, backoff with full jitter honouring Retry-After, and typed
errors."""

from loyalty_client.client import BULK_MAX, JSONObject, LoyaltyClient, adjust_body
from loyalty_client.errors import (
    Conflict,
    FieldProblem,
    Forbidden,
    IdempotencyError,
    InvalidData,
    LoyaltyError,
    NotAllowed,
    NotFound,
    TooManyRequests,
    Unauthorized,
    Unexpected,
)
from loyalty_client.retry import RetryPolicy

__all__ = [
    "BULK_MAX",
    "Conflict",
    "FieldProblem",
    "Forbidden",
    "IdempotencyError",
    "InvalidData",
    "JSONObject",
    "LoyaltyClient",
    "LoyaltyError",
    "NotAllowed",
    "NotFound",
    "RetryPolicy",
    "TooManyRequests",
    "Unauthorized",
    "Unexpected",
    "adjust_body",
]
