"""SQL for the events outbox. Never commits.

An event's `position` is its place in commit order. `record` takes the positions from the one
row of loyalty_event_sequence, as the last statement of the change's transaction: that row
stays locked until COMMIT, so a transaction that takes positions after another has committed
first, and a reader never sees a position while an earlier one may still appear.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

from loyalty.db import Connection

_COLUMNS = "position, id, type, subject_id, customer_id, created_at_ms, data"


class NewEvent(NamedTuple):
    id: str
    type: str
    subject_id: str  # the id of what changed
    customer_id: str | None
    created_at_ms: int
    data: bytes  # the JSON object of the change


class EventRow(NamedTuple):
    position: int
    id: str
    type: str
    subject_id: str
    customer_id: str | None
    created_at_ms: int
    data: str


async def record(conn: Connection, events: Sequence[NewEvent]) -> None:
    """Writes `events` in this order; call it last, just before the transaction commits."""
    if not events:
        return
    last = await conn.fetchval(
        "UPDATE loyalty_event_sequence SET last_position = last_position + $1"
        " WHERE id = 1 RETURNING last_position",
        len(events),
    )
    first = int(last) - len(events) + 1
    await conn.executemany(
        f"INSERT INTO loyalty_events ({_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7)",
        [
            (
                first + i,
                event.id,
                event.type,
                event.subject_id,
                event.customer_id,
                event.created_at_ms,
                event.data.decode(),
            )
            for i, event in enumerate(events)
        ],
    )


async def events_after(
    conn: Connection, position: int, limit: int, types: Sequence[str] | None = None
) -> list[EventRow]:
    """Up to `limit` events after `position`, in commit order (of `types` only, if given)."""
    if types is None:
        rows = await conn.fetch(
            f"SELECT {_COLUMNS} FROM loyalty_events WHERE position > $1 ORDER BY position LIMIT $2",
            position,
            limit,
        )
    else:
        rows = await conn.fetch(
            f"SELECT {_COLUMNS} FROM loyalty_events WHERE position > $1 AND type = ANY($3)"
            " ORDER BY position LIMIT $2",
            position,
            limit,
            list(types),
        )
    return [EventRow._make(row) for row in rows]


async def position_of(conn: Connection, event_id: str) -> int | None:
    value = await conn.fetchval("SELECT position FROM loyalty_events WHERE id = $1", event_id)
    return None if value is None else int(value)


async def last_position(conn: Connection) -> int:
    value = await conn.fetchval("SELECT last_position FROM loyalty_event_sequence WHERE id = 1")
    return int(value)


async def backlog(conn: Connection) -> dict[str, int]:
    """For each consumer of the outbox, how many events it has not yet handled."""
    rows = await conn.fetch(
        "SELECT c.name, s.last_position - c.position FROM loyalty_event_consumers c"
        " CROSS JOIN loyalty_event_sequence s WHERE s.id = 1 ORDER BY c.name"
    )
    return {str(row[0]): int(row[1]) for row in rows}
