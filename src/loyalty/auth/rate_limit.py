"""Login throttling: fixed windows of failed logins per email and per client address.

The counters live in the database, so every worker and every instance sharing it enforces one
limit. An attempt is counted before its password is checked and taken back when the login
succeeds: concurrent guesses cannot slip past the limit while their hashes are computed, and
a successful login does not count. The email's counter is kept whether or not a user has that
email, so a 429 tells nothing about which emails exist.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
from dataclasses import dataclass

from loyalty.auth import repository
from loyalty.config import Settings
from loyalty.db import Connection, Database, RetryableConflict
from loyalty.errors import DatabaseUnavailable, TooManyRequests
from loyalty.timestamps import now_ms

log = logging.getLogger("loyalty.auth")

TOO_MANY = "Too many failed login attempts; try again in {seconds} seconds"
# A key holds a client address; anything longer than an IPv6 address with a zone is cut.
ADDRESS_KEY_MAX = 64
CLEANUP_INTERVAL_S = 300.0
CLEANUP_CHUNKS_PER_RUN_MAX = 1000


@dataclass(frozen=True, slots=True)
class LoginLimits:
    window_ms: int
    failures_per_email: int
    failures_per_address: int

    @classmethod
    def from_settings(cls, settings: Settings) -> LoginLimits:
        return cls(
            settings.login_window_seconds * 1000,
            settings.login_max_failures_per_email,
            settings.login_max_failures_per_address,
        )


@dataclass(frozen=True, slots=True)
class CountedAttempt:
    """The windows an attempt was counted in, as (key, window_start_ms)."""

    windows: tuple[tuple[str, int], ...]


async def count_attempt(
    conn: Connection, limits: LoginLimits, email_key: str, client: str | None
) -> CountedAttempt:
    """Counts a login attempt as failed, in the email's and the client address's windows.

    Over either limit it raises TooManyRequests (429 with Retry-After), and the caller's
    transaction must roll back, so that a refused attempt is not counted.
    """
    now = now_ms()
    counters = [(f"email:{email_key}", limits.failures_per_email)]
    if client:
        counters.append((f"ip:{client[:ADDRESS_KEY_MAX]}", limits.failures_per_address))
    windows = []
    refused_until_ms: int | None = None
    for key, limit in counters:
        failures, window_start_ms = await repository.count_login_failure(
            conn, key, now, now - limits.window_ms
        )
        windows.append((key, window_start_ms))
        if failures > limit:
            ends_ms = window_start_ms + limits.window_ms
            refused_until_ms = max(refused_until_ms or ends_ms, ends_ms)
    if refused_until_ms is not None:
        seconds = max(1, math.ceil((refused_until_ms - now) / 1000))
        raise TooManyRequests(TOO_MANY.format(seconds=seconds), seconds)
    return CountedAttempt(tuple(windows))


async def uncount_attempt(db: Database, attempt: CountedAttempt) -> None:
    """Takes back an attempt that turned out to be a successful login."""
    async with db.write() as conn:
        await repository.uncount_login_failures(conn, attempt.windows)


async def delete_expired_windows(db: Database, window_ms: int) -> int:
    """One pass: deletes the windows that have ended, a small chunk per transaction."""
    deleted = 0
    for _ in range(CLEANUP_CHUNKS_PER_RUN_MAX):
        async with db.write() as conn:
            count = await repository.delete_expired_login_failures(conn, now_ms() - window_ms)
        deleted += count
        if count < repository.LOGIN_FAILURES_CLEANUP_CHUNK:
            break
        await asyncio.sleep(0)  # let requests in between chunks
    return deleted


async def run_cleanup_periodically(
    db: Database, window_ms: int, interval_s: float = CLEANUP_INTERVAL_S
) -> None:
    """Keeps the table as small as the logins of one window, however many emails are tried."""
    while True:
        # Jitter keeps the workers of one deployment from cleaning at the same instant.
        await asyncio.sleep(interval_s * random.uniform(0.5, 1.5))
        try:
            await delete_expired_windows(db, window_ms)
        except (DatabaseUnavailable, RetryableConflict):
            continue  # the next run will do it
        except Exception:
            log.exception("login throttle cleanup failed")
