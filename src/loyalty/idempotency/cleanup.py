"""Removes idempotency keys past their retention, a small chunk per transaction, so the
cleanup never holds a lock long enough to delay an adjustment."""

from __future__ import annotations

import asyncio
import logging
import random

from loyalty.db import Database
from loyalty.errors import DatabaseUnavailable
from loyalty.idempotency import repository
from loyalty.idempotency.keys import RETENTION_MS
from loyalty.timestamps import now_ms

log = logging.getLogger("loyalty.idempotency")

INTERVAL_S = 600.0
CHUNKS_PER_RUN_MAX = 1000


async def delete_expired_keys(db: Database) -> int:
    """One pass: deletes keys older than the retention period; returns how many."""
    before_ms = now_ms() - RETENTION_MS
    deleted = 0
    for _ in range(CHUNKS_PER_RUN_MAX):
        async with db.write() as conn:
            count = await repository.delete_expired(conn, before_ms)
        deleted += count
        if count < repository.CLEANUP_CHUNK:
            break
        await asyncio.sleep(0)  # let requests in between chunks
    return deleted


async def run_periodically(db: Database, interval_s: float = INTERVAL_S) -> None:
    while True:
        # Jitter keeps the workers of one deployment from cleaning at the same instant.
        await asyncio.sleep(interval_s * random.uniform(0.5, 1.5))
        try:
            deleted = await delete_expired_keys(db)
        except DatabaseUnavailable:
            continue
        except Exception:
            log.exception("idempotency key cleanup failed")
            continue
        if deleted:
            log.info("deleted %d expired idempotency keys", deleted)
