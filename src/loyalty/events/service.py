"""The events feed: every committed change, in commit order, paged by the last id seen."""

from __future__ import annotations

from loyalty.db import Database
from loyalty.errors import FieldError, InvalidData
from loyalty.events import repository, schemas
from loyalty.events.schemas import EventsPage


async def feed(db: Database, after: str | None, limit: int) -> EventsPage:
    async with db.read(snapshot=True) as conn:
        position = 0
        if after is not None:
            found = await repository.position_of(conn, after)
            if found is None:
                message = f"after names no event: {after}"
                raise InvalidData(message, [FieldError("after", message)])
            position = found
        rows = await repository.events_after(conn, position, limit + 1)
    return EventsPage([schemas.event(row) for row in rows[:limit]], len(rows) > limit)
