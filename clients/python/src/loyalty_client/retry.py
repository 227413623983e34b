"""When and how long to wait before trying a request again."""

from __future__ import annotations

import random
from dataclasses import dataclass

from loyalty_client.errors import LoyaltyError

# The service's answer to a request whose Idempotency-Key is held by one still running: the
# only 409 worth retrying (a duplicate reference or email stays a duplicate). The service
# gives both the type `conflict`, so this one is told apart by its message.
KEY_IN_FLIGHT = "A request with this Idempotency-Key is still being processed"


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """At most `max_retries` retries after the first attempt; the n-th waits a random time
    in [0, min(backoff_max_s, backoff_s * 2**n)] ("full jitter", so many clients that failed
    together do not come back together), or the server's Retry-After when that is longer.
    A Retry-After beyond `retry_after_max_s` is not waited for: the error is raised."""

    max_retries: int = 4
    backoff_s: float = 0.5
    backoff_max_s: float = 30.0
    retry_after_max_s: float = 120.0

    def __post_init__(self) -> None:
        if not 0 <= self.max_retries <= 20:
            raise ValueError("max_retries must be between 0 and 20")
        if self.backoff_s < 0 or self.backoff_max_s < 0:
            raise ValueError("backoff must not be negative")

    def delay_s(self, retry: int, retry_after_s: float | None) -> float | None:
        """How long to wait before retry number `retry` (0-based); None: do not retry."""
        if retry >= self.max_retries:
            return None
        if retry_after_s is not None and retry_after_s > self.retry_after_max_s:
            return None
        jitter = random.uniform(0, min(self.backoff_max_s, self.backoff_s * 2**retry))
        return max(jitter, retry_after_s or 0.0)


def retryable(error: LoyaltyError) -> bool:
    """Worth another attempt with the same request and key: throttled, the service failing,
    or the same key still in flight. Any other 4xx would fail the same way again."""
    if error.status == 429 or error.status >= 500 or error.status == 0:
        return True
    return error.status == 409 and error.message == KEY_IN_FLIGHT


def parse_retry_after(value: str | None) -> float | None:
    """Retry-After in seconds (the HTTP-date form is not used by this service)."""
    if value is None:
        return None
    try:
        seconds = float(value.strip())
    except ValueError:
        return None
    return seconds if seconds >= 0 else None
