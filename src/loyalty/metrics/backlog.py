"""The events outbox's backlog per consumer, read from the database at scrape time, so every
worker and every server reports the same figure.

Stands in for events.repository.backlog until the events core lands on main; the two
compute the same thing from the tables of migration 0005.
"""

from __future__ import annotations

from loyalty.db import Connection


async def backlog(conn: Connection) -> dict[str, int]:
    """Per consumer name: how many events it has still to handle (the last event's position
    minus the consumer's own)."""
    rows = await conn.fetch(
        "SELECT c.name, s.last_position - c.position"
        " FROM loyalty_event_consumers c, loyalty_event_sequence s"
        " WHERE s.id = 1 ORDER BY c.name"
    )
    return {row[0]: int(row[1]) for row in rows}
