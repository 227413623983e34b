"""Which worker runs each consumer of the outbox (the NATS publisher, the webhook dispatcher).

A consumer runs in one worker of all servers at a time: the one holding its lease, renewed
on every round. A worker that dies stops renewing, and another takes over once the lease
runs out, from the position the consumer last stored. What the dead worker sent after that
position is sent again: delivery is at least once.
"""

from __future__ import annotations

import os
import secrets
import socket

from loyalty.db import Database
from loyalty.timestamps import now_ms


def new_owner() -> str:
    """A name for this worker that no other worker, here or on another host, will have."""
    return f"{socket.gethostname()[:64]}:{os.getpid()}:{secrets.token_hex(4)}"


async def hold(db: Database, name: str, owner: str, ttl_ms: int) -> int | None:
    """Takes or renews the lease of consumer `name` for `owner` until `ttl_ms` from now; the
    consumer's position, or None while another owner holds it. A new consumer starts at 0,
    so it handles every event ever committed."""
    now = now_ms()
    async with db.write() as conn:
        position = await conn.fetchval(
            "UPDATE loyalty_event_consumers SET owner = $2, lease_until_ms = $3"
            " WHERE name = $1 AND (owner = $2 OR lease_until_ms < $4) RETURNING position",
            name,
            owner,
            now + ttl_ms,
            now,
        )
        if position is not None:
            return int(position)
        created = await conn.fetchval(
            "INSERT INTO loyalty_event_consumers (name, position, owner, lease_until_ms)"
            " VALUES ($1, 0, $2, $3) ON CONFLICT (name) DO NOTHING RETURNING position",
            name,
            owner,
            now + ttl_ms,
        )
    return None if created is None else int(created)


async def advance(db: Database, name: str, owner: str, position: int) -> bool:
    """Stores how far consumer `name` has got, if `owner` still holds its lease."""
    async with db.write() as conn:
        stored = await conn.fetchval(
            "UPDATE loyalty_event_consumers SET position = $3"
            " WHERE name = $1 AND owner = $2 AND position <= $3 RETURNING position",
            name,
            owner,
            position,
        )
    return stored is not None


async def release(db: Database, name: str, owner: str) -> None:
    """Gives the lease up (a worker stopping), so another may take over at once."""
    async with db.write() as conn:
        await conn.execute(
            "UPDATE loyalty_event_consumers SET lease_until_ms = 0 WHERE name = $1 AND owner = $2",
            name,
            owner,
        )
