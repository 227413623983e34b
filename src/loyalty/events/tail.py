"""The relay's one reader of the outbox's newest events, for all of its consumers.

The webhook dispatcher and the NATS publisher follow the same commits a moment apart; read
separately, each event would be read from the database and encoded twice. The tail keeps what
its latest reads brought, each event with its JSON, and serves a consumer from there when its
position falls inside; a consumer further behind (catching up after an outage) reads past it.

Positions run 1, 2, 3... in commit order without a gap, and a reader never sees one while an
earlier one may still appear (events/repository.py): rows after the newest kept can only be
new rows, so the kept ones are always a complete run of positions.
"""

from __future__ import annotations

import asyncio
from typing import NamedTuple

from loyalty.db import Database
from loyalty.events import repository
from loyalty.events.repository import EventRow
from loyalty.events.schemas import event_json

READ_MAX = 500  # events per read of the database
KEEP = 5_000  # events kept: more than the consumers drift apart under load


class Pending(NamedTuple):
    """An event to hand on, with the JSON every channel sends."""

    row: EventRow
    body: bytes


class Tail:
    def __init__(self, db: Database) -> None:
        self._db = db
        self._kept: list[Pending] = []  # a run of consecutive positions
        self._reading = asyncio.Lock()

    async def after(self, position: int, limit: int) -> list[Pending]:
        """Up to `limit` events after `position`, in commit order."""
        found = self._from_kept(position, limit)
        if found is not None:
            return found
        async with self._reading:
            found = self._from_kept(position, limit)  # read meanwhile by another consumer
            if found is not None:
                return found
            async with self._db.read() as conn:
                rows = await repository.events_after(conn, position, max(limit, READ_MAX))
            read = [Pending(row, event_json(row)) for row in rows]
            if not read or (self._kept and position < self._kept[0].row.position - 1):
                return read[:limit]  # nothing new, or behind what is kept: not kept
            if read[-1].row.position - position != len(read):
                self._kept = []  # not a run of consecutive positions after `position`
                return read[:limit]
            if not self._kept or self._kept[-1].row.position != position:
                self._kept = []  # not contiguous with what was kept: start again from here
            self._kept += read
            del self._kept[:-KEEP]
            return read[:limit]

    def _from_kept(self, position: int, limit: int) -> list[Pending] | None:
        """The kept events after `position`; None when those are not kept (the position is
        behind them, or at or past the newest)."""
        if not self._kept:
            return None
        first = self._kept[0].row.position
        start = position + 1 - first
        if start < 0 or start >= len(self._kept):
            return None
        return self._kept[start : start + limit]
