"""SQL for the events outbox. Never commits.

An event's `position` is its place in commit order. `record` takes the positions from the one
row of loyalty_event_sequence, as the last statement of the change's transaction: that row
stays locked until COMMIT, so a transaction that takes positions after another has committed
first, and a reader never sees a position while an earlier one may still appear.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import msgspec

from loyalty.db import Connection, Record
from loyalty.ledger.repository import AdjustmentRow
from loyalty.ledger.schemas import adjustment

_encoder = msgspec.json.Encoder()


class NewEvent(NamedTuple):
    id: str
    type: str
    subject_id: str  # the id of what changed
    customer_id: str | None
    created_at_ms: int
    # The JSON object of the change; None for an adjustment's event, whose data is the
    # adjustment's own row (it never changes): half the bytes each adjustment writes.
    data: bytes | None


class EventRow(NamedTuple):
    position: int
    id: str
    type: str
    subject_id: str
    customer_id: str | None
    created_at_ms: int
    data: str


_COLUMNS = ", ".join(EventRow._fields)
_VALUES = ", ".join(f"${n}" for n in range(1, len(EventRow._fields) + 1))


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
        f"INSERT INTO loyalty_events ({_COLUMNS}) VALUES ({_VALUES})",
        [
            (
                first + i,
                event.id,
                event.type,
                event.subject_id,
                event.customer_id,
                event.created_at_ms,
                None if event.data is None else event.data.decode(),
            )
            for i, event in enumerate(events)
        ],
    )


# An event with its data: its own, or else the adjustment it is about, read beside it.
EVENT_COLUMNS = ", ".join(
    [*(f"e.{name}" for name in EventRow._fields), *(f"a.{f}" for f in AdjustmentRow._fields)]
)
EVENT_ADJUSTMENT_JOIN = "LEFT JOIN loyalty_adjustments a ON e.data IS NULL AND a.id = e.subject_id"
_EVENT_FIELDS = len(EventRow._fields)


def event_row(record: Record) -> EventRow:
    """An EventRow from a record of EVENT_COLUMNS."""
    event = EventRow._make(record[:_EVENT_FIELDS])
    if event.data is not None:
        return event
    row = AdjustmentRow._make(record[_EVENT_FIELDS:])
    return event._replace(data=_encoder.encode(adjustment(row)).decode())


async def events_after(
    conn: Connection, position: int, limit: int, types: Sequence[str] | None = None
) -> list[EventRow]:
    """Up to `limit` events after `position`, in commit order (of `types` only, if given)."""
    select = f"SELECT {EVENT_COLUMNS} FROM loyalty_events e {EVENT_ADJUSTMENT_JOIN}"
    if types is None:
        rows = await conn.fetch(
            f"{select} WHERE e.position > $1 ORDER BY e.position LIMIT $2", position, limit
        )
    else:
        rows = await conn.fetch(
            f"{select} WHERE e.position > $1 AND e.type = ANY($3) ORDER BY e.position LIMIT $2",
            position,
            limit,
            list(types),
        )
    return [event_row(row) for row in rows]


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
