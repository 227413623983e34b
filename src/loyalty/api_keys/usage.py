"""last_used_at without a write per request: each worker notes its keys' latest use in memory
and writes them every FLUSH_INTERVAL_S seconds (and when it stops), so a key's last_used_at
is at most ~2 seconds behind its last use."""

from __future__ import annotations

import asyncio
import logging

from loyalty.api_keys import repository
from loyalty.db import Database
from loyalty.errors import DatabaseUnavailable

log = logging.getLogger("loyalty.api_keys")

FLUSH_INTERVAL_S = 2.0


class KeyUses:
    """The latest use of each key this worker saw since the last flush (one entry per key:
    bounded by the keys that exist)."""

    def __init__(self) -> None:
        self._latest: dict[str, int] = {}

    def note(self, key_id: str, at_ms: int) -> None:
        if self._latest.get(key_id, -1) < at_ms:
            self._latest[key_id] = at_ms

    async def flush(self, db: Database) -> int:
        """Writes the uses noted so far; returns how many keys. On failure they are kept for
        the next flush."""
        if not self._latest:
            return 0
        taken, self._latest = self._latest, {}
        try:
            async with db.write() as conn:
                await repository.record_uses(conn, sorted(taken.items()))
        except BaseException:
            for key_id, at_ms in taken.items():
                self.note(key_id, at_ms)
            raise
        return len(taken)


async def run_periodically(
    db: Database, uses: KeyUses, interval_s: float = FLUSH_INTERVAL_S
) -> None:
    while True:
        await asyncio.sleep(interval_s)
        try:
            await uses.flush(db)
        except DatabaseUnavailable:
            continue
        except Exception:
            log.exception("recording API keys' last use failed")
