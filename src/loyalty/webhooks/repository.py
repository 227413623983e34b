"""SQL for webhook endpoints and their deliveries. Never commits."""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

from loyalty.db import Connection
from loyalty.events import repository as events
from loyalty.events.repository import EventRow


class WebhookRow(NamedTuple):
    """An endpoint as it is read; the fields are the columns, in this order."""

    id: str
    url: str
    event_types: str | None  # space-separated; None: every type
    description: str | None
    secret: str
    enabled: bool
    created_by: str | None
    created_at_ms: int
    updated_at_ms: int
    position: int


class DeliveryRow(NamedTuple):
    """A delivery of one event to one endpoint: its latest attempt's outcome."""

    id: str
    webhook_id: str
    event_id: str
    event_position: int
    status: str  # pending, delivered, failed
    attempt: int
    response_status: int | None
    next_attempt_at_ms: int | None
    lease_until_ms: int
    created_at_ms: int
    updated_at_ms: int


class Outcome(NamedTuple):
    """What one attempt came to, as the delivery row records it."""

    delivery_id: str
    status: str
    attempt: int
    response_status: int | None
    next_attempt_at_ms: int | None


class DueDelivery(NamedTuple):
    """A pending delivery whose next attempt is due, with what is needed to send it."""

    id: str
    attempt: int
    url: str
    secret: str
    event: EventRow


_WEBHOOK_COLUMNS = ", ".join(WebhookRow._fields)
_DELIVERY_COLUMNS = ", ".join(DeliveryRow._fields)


def _webhook(row: Sequence[object]) -> WebhookRow:
    found = WebhookRow._make(row)
    # SQLite keeps booleans as 0 and 1.
    return found._replace(enabled=bool(found.enabled))


async def insert_webhook(conn: Connection, row: WebhookRow) -> None:
    placeholders = ", ".join(f"${i}" for i in range(1, len(WebhookRow._fields) + 1))
    await conn.execute(f"INSERT INTO webhooks ({_WEBHOOK_COLUMNS}) VALUES ({placeholders})", *row)


async def count_webhooks(conn: Connection) -> int:
    return int(await conn.fetchval("SELECT count(*) FROM webhooks"))


async def find_webhook(conn: Connection, webhook_id: str) -> WebhookRow | None:
    row = await conn.fetchrow(f"SELECT {_WEBHOOK_COLUMNS} FROM webhooks WHERE id = $1", webhook_id)
    return None if row is None else _webhook(row)


async def list_webhooks(conn: Connection) -> list[WebhookRow]:
    rows = await conn.fetch(f"SELECT {_WEBHOOK_COLUMNS} FROM webhooks ORDER BY id")
    return [_webhook(row) for row in rows]


async def enabled_webhooks(conn: Connection) -> list[WebhookRow]:
    rows = await conn.fetch(f"SELECT {_WEBHOOK_COLUMNS} FROM webhooks WHERE enabled ORDER BY id")
    return [_webhook(row) for row in rows]


async def set_enabled(
    conn: Connection, webhook_id: str, enabled: bool, position: int | None, now_ms: int
) -> None:
    """Enables or disables an endpoint; `position`, when given, is where it starts again."""
    await conn.execute(
        "UPDATE webhooks SET enabled = $2, updated_at_ms = $3,"
        " position = coalesce($4, position) WHERE id = $1",
        webhook_id,
        enabled,
        now_ms,
        position,
    )


# PostgreSQL's type of each DeliveryRow field, for inserting a round's rows as arrays.
_DELIVERY_TYPES: tuple[str, ...] = ("text", "text", "text", "bigint", "text", "int", "int")
_DELIVERY_TYPES += ("bigint", "bigint", "bigint", "bigint")
assert len(_DELIVERY_TYPES) == len(DeliveryRow._fields)


async def insert_deliveries(conn: Connection, rows: Sequence[DeliveryRow]) -> None:
    """On PostgreSQL one statement over arrays, one per column (a statement per row costs
    the database several times as much); on SQLite, in process, a statement per row."""
    if not rows:
        return
    if conn.dialect == "postgresql":
        arrays = ", ".join(f"${i}::{t}[]" for i, t in enumerate(_DELIVERY_TYPES, start=1))
        await conn.execute(
            f"INSERT INTO webhook_deliveries ({_DELIVERY_COLUMNS}) SELECT * FROM unnest({arrays})",
            *(list(column) for column in zip(*rows, strict=True)),
        )
        return
    placeholders = ", ".join(f"${i}" for i in range(1, len(DeliveryRow._fields) + 1))
    await conn.executemany(
        f"INSERT INTO webhook_deliveries ({_DELIVERY_COLUMNS}) VALUES ({placeholders})", rows
    )


async def advance(conn: Connection, positions: dict[str, int]) -> None:
    """Moves each endpoint's position forward (never back) to the last event handed to it."""
    await conn.executemany(
        "UPDATE webhooks SET position = $2 WHERE id = $1 AND position < $2",
        sorted(positions.items()),
    )


async def find_delivery(conn: Connection, webhook_id: str, delivery_id: str) -> DeliveryRow | None:
    row = await conn.fetchrow(
        f"SELECT {_DELIVERY_COLUMNS} FROM webhook_deliveries WHERE webhook_id = $1 AND id = $2",
        webhook_id,
        delivery_id,
    )
    return None if row is None else DeliveryRow._make(row)


async def list_deliveries(
    conn: Connection, webhook_id: str, before_id: str | None, status: str | None, limit: int
) -> list[DeliveryRow]:
    """Newest first (msg_ ids sort by creation), after the cursor `before_id`."""
    conditions = ["webhook_id = $1"]
    args: list[object] = [webhook_id, limit]
    if before_id is not None:
        args.append(before_id)
        conditions.append(f"id < ${len(args)}")
    if status is not None:
        args.append(status)
        conditions.append(f"status = ${len(args)}")
    rows = await conn.fetch(
        f"SELECT {_DELIVERY_COLUMNS} FROM webhook_deliveries WHERE {' AND '.join(conditions)}"
        " ORDER BY id DESC LIMIT $2",
        *args,
    )
    return [DeliveryRow._make(row) for row in rows]


async def make_due(conn: Connection, delivery_id: str, now_ms: int) -> None:
    """A manual retry: the delivery is pending again, due now."""
    await conn.execute(
        "UPDATE webhook_deliveries SET status = 'pending', next_attempt_at_ms = $2,"
        " updated_at_ms = $2 WHERE id = $1",
        delivery_id,
        now_ms,
    )


async def due_ids(conn: Connection, now_ms: int, limit: int) -> list[str]:
    """Up to `limit` pending deliveries of enabled endpoints whose next attempt is due and
    which no round of retries holds (index webhook_deliveries_due), soonest first."""
    rows = await conn.fetch(
        "SELECT d.id FROM webhook_deliveries d JOIN webhooks w ON w.id = d.webhook_id"
        " WHERE d.status = 'pending' AND d.next_attempt_at_ms <= $1 AND d.lease_until_ms < $1"
        " AND w.enabled ORDER BY d.next_attempt_at_ms LIMIT $2",
        now_ms,
        limit,
    )
    return [str(row[0]) for row in rows]


async def claim(
    conn: Connection, ids: Sequence[str], now_ms: int, lease_until_ms: int
) -> list[DueDelivery]:
    """Takes those of `ids` still due and free until `lease_until_ms`, so that a second round
    (after the dispatcher's lease passed to another worker) leaves them alone; with each,
    its endpoint and its event."""
    claimed = await conn.fetch(
        "UPDATE webhook_deliveries SET lease_until_ms = $2 WHERE id = ANY($1)"
        " AND status = 'pending' AND lease_until_ms < $3 RETURNING id",
        list(ids),
        lease_until_ms,
        now_ms,
    )
    if not claimed:
        return []
    rows = await conn.fetch(
        f"SELECT d.id, d.attempt, w.url, w.secret, {events.EVENT_COLUMNS}"
        " FROM webhook_deliveries d"
        " JOIN webhooks w ON w.id = d.webhook_id"
        " JOIN loyalty_events e ON e.position = d.event_position"
        f" {events.EVENT_ADJUSTMENT_JOIN}"
        " WHERE d.id = ANY($1) ORDER BY d.next_attempt_at_ms",
        [str(row[0]) for row in claimed],
    )
    return [
        DueDelivery(row[0], int(row[1]), row[2], row[3], events.event_row(row[4:])) for row in rows
    ]


async def record_outcomes(conn: Connection, outcomes: Sequence[Outcome], now_ms: int) -> None:
    await conn.executemany(
        "UPDATE webhook_deliveries SET status = $2, attempt = $3, response_status = $4,"
        " next_attempt_at_ms = $5, lease_until_ms = 0, updated_at_ms = $6 WHERE id = $1",
        [(*outcome, now_ms) for outcome in outcomes],
    )
