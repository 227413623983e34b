"""`loyalty export`: every adjustment, oldest first, as CSV or JSON Lines, page by page in
one consistent snapshot (constant memory whatever the ledger's size), exact decimals.

The CSV's columns are the adjustment object's fields; those an import reads (customer_id,
delta, reason, reference, metadata, expires_at) keep their names, and the others are ignored
by `loyalty import`, so an export can be imported again.
"""

from __future__ import annotations

import csv
import io
from collections.abc import AsyncIterator
from typing import BinaryIO

import msgspec

from loyalty.db import Database
from loyalty.ids import id_floor
from loyalty.ledger import points, repository, schemas
from loyalty.ledger.repository import AdjustmentRow
from loyalty.timestamps import render, render_optional

PAGE_ROWS = 1000
FORMATS = ("csv", "jsonl")
CSV_COLUMNS = (
    "id",
    "customer_id",
    "type",
    "delta",
    "balance_after",
    "reason",
    "reference",
    "metadata",
    "expires_at",
    "reverses",
    "pending_id",
    "created_by",
    "created_at",
    "hash",
)
_encoder = msgspec.json.Encoder()


async def pages(db: Database, since_ms: int | None) -> AsyncIterator[list[AdjustmentRow]]:
    """Every adjustment created at or after `since_ms` (all when None), a page at a time."""
    min_id = id_floor("adj", since_ms) if since_ms is not None else None
    after: str | None = None
    async with db.read(snapshot=True) as conn:
        while True:
            rows = await repository.adjustments_from(conn, after, min_id, PAGE_ROWS)
            if not rows:
                return
            yield rows
            after = rows[-1].id


async def export(db: Database, output: BinaryIO, kind: str, since_ms: int | None) -> int:
    """Writes the adjustments to `output`; how many."""
    count = 0
    text = io.TextIOWrapper(output, encoding="utf-8", newline="", write_through=True)
    writer = csv.writer(text, lineterminator="\n")
    try:
        if kind == "csv":
            writer.writerow(CSV_COLUMNS)
        async for rows in pages(db, since_ms):
            if kind == "csv":
                writer.writerows(csv_row(row) for row in rows)
            else:
                text.write(
                    b"".join(_encoder.encode(schemas.adjustment(r)) + b"\n" for r in rows).decode()
                )
            count += len(rows)
        text.flush()
    finally:
        text.detach()  # the caller's stream stays open
    return count


def csv_row(row: AdjustmentRow) -> tuple[str, ...]:
    """An adjustment as CSV fields: points exact, null as an empty field."""
    return (
        row.id,
        row.customer_id,
        row.type,
        points.render(row.delta_hundredths).decode(),
        points.render(row.balance_after_hundredths).decode(),
        row.reason or "",
        row.reference or "",
        row.metadata or "",
        render_optional(row.expires_at_ms) or "",
        row.reverses or "",
        row.pending_id or "",
        row.created_by or "",
        render(row.created_at_ms),
        row.hash or "",
    )
