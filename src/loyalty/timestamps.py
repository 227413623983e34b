"""Time as integer milliseconds since the Unix epoch (UTC), and its ISO 8601 form."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from functools import lru_cache

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
ISO_TEXT_MAX = 64


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def render(ms: int) -> str:
    """`2026-02-18T12:34:56.789Z`."""
    seconds, millis = divmod(ms, 1000)
    return f"{_render_second(seconds)}.{millis:03d}Z"


@lru_cache(maxsize=256)
def _render_second(seconds: int) -> str:
    # Adjustments of one batch, and of one busy second, share their second's text.
    moment = _EPOCH + timedelta(seconds=seconds)
    # %Y drops leading zeros before the year 1000 on some platforms: ISO 8601 wants four.
    return f"{moment.year:04d}-{moment:%m-%dT%H:%M:%S}"


def render_optional(ms: int | None) -> str | None:
    return None if ms is None else render(ms)


def parse(text: str) -> int:
    """Milliseconds for an ISO 8601 date or date-time; naive values are taken as UTC.

    Raises ValueError for anything else. Sub-millisecond digits are truncated.
    """
    if len(text) > ISO_TEXT_MAX:
        raise ValueError("timestamp too long")
    moment = datetime.fromisoformat(text)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    delta = moment - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1000 + delta.microseconds // 1000
