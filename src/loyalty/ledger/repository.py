"""SQL for balances and the append-only adjustments ledger. Never commits.

Rows travel as named tuples whose fields are the columns in the order the SQL names them, so
a column is added in one place: its row type (and the migration that creates it).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

from loyalty.db import Connection


class BalanceRow(NamedTuple):
    """A customer's balance row: the balance and the tip of its ledger."""

    customer_id: str
    balance_hundredths: int
    last_seq: int
    last_adjustment_id: str | None
    updated_at_ms: int | None


class AdjustmentRow(NamedTuple):
    """An adjustment, as it is written and read."""

    id: str
    customer_id: str
    seq: int
    delta_hundredths: int
    balance_after_hundredths: int
    reason: str | None
    created_at_ms: int
    created_by: str | None


_BALANCE_COLUMNS = ", ".join(BalanceRow._fields)
_ADJUSTMENT_COLUMNS = ", ".join(AdjustmentRow._fields)
_ADJUSTMENT_VALUES = ", ".join(f"${n}" for n in range(1, len(AdjustmentRow._fields) + 1))
_BALANCE_UPDATE = ", ".join(
    f"{name} = ${n}" for n, name in enumerate(BalanceRow._fields[1:], start=2)
)


async def lock_balances(conn: Connection, customer_ids: list[str]) -> list[BalanceRow]:
    """The customers' balance rows, locked until the transaction ends.

    Locked in customer_id order, the same in every transaction, so that two batches sharing
    customers wait for each other instead of deadlocking.
    """
    rows = await conn.fetch(
        f"SELECT {_BALANCE_COLUMNS} FROM loyalty_balances"
        " WHERE customer_id = ANY($1) ORDER BY customer_id FOR UPDATE",
        customer_ids,
    )
    return [BalanceRow._make(row) for row in rows]


async def update_balances(conn: Connection, rows: Sequence[BalanceRow]) -> None:
    await conn.executemany(
        f"UPDATE loyalty_balances SET {_BALANCE_UPDATE} WHERE customer_id = $1", rows
    )


async def insert_adjustments(conn: Connection, rows: Sequence[AdjustmentRow]) -> None:
    await conn.executemany(
        f"INSERT INTO loyalty_adjustments ({_ADJUSTMENT_COLUMNS}) VALUES ({_ADJUSTMENT_VALUES})",
        rows,
    )


async def adjustment_exists(conn: Connection, adjustment_id: str) -> bool:
    found = await conn.fetchval("SELECT 1 FROM loyalty_adjustments WHERE id = $1", adjustment_id)
    return found is not None


async def find_balances(conn: Connection, customer_ids: list[str]) -> dict[str, BalanceRow]:
    rows = await conn.fetch(
        f"SELECT {_BALANCE_COLUMNS} FROM loyalty_balances WHERE customer_id = ANY($1)",
        customer_ids,
    )
    return {row[0]: BalanceRow._make(row) for row in rows}


async def find_balance(conn: Connection, customer_id: str) -> BalanceRow | None:
    row = await conn.fetchrow(
        f"SELECT {_BALANCE_COLUMNS} FROM loyalty_balances WHERE customer_id = $1", customer_id
    )
    return None if row is None else BalanceRow._make(row)


async def latest_adjustments(
    conn: Connection, customer_id: str, up_to_seq: int, limit: int
) -> list[AdjustmentRow]:
    """The newest `limit` adjustments up to `up_to_seq`: a walk down the (customer_id, seq)
    index, whatever the ledger's length."""
    rows = await conn.fetch(
        f"SELECT {_ADJUSTMENT_COLUMNS} FROM loyalty_adjustments WHERE customer_id = $1"
        " AND seq <= $2 ORDER BY seq DESC LIMIT $3",
        customer_id,
        up_to_seq,
        limit,
    )
    return [AdjustmentRow._make(row) for row in rows]


async def latest_adjustments_many(
    conn: Connection, wanted: list[tuple[str, int]], limit: int
) -> dict[tuple[str, int], list[AdjustmentRow]]:
    """`latest_adjustments` for many (customer_id, up_to_seq) pairs: on PostgreSQL one query
    (an index walk per pair, side by side), on SQLite one in-process query per pair."""
    if not wanted:
        return {}
    if conn.dialect != "postgresql":
        return {
            (customer_id, seq): await latest_adjustments(conn, customer_id, seq, limit)
            for customer_id, seq in wanted
        }
    rows = await conn.fetch(
        f"SELECT p.up_to, {_columns_of('h')}"
        " FROM unnest($1::text[], $2::bigint[]) AS p(customer_id, up_to)"
        f" CROSS JOIN LATERAL (SELECT {_ADJUSTMENT_COLUMNS} FROM loyalty_adjustments a"
        "  WHERE a.customer_id = p.customer_id AND a.seq <= p.up_to"
        "  ORDER BY a.seq DESC LIMIT $3) h"
        " ORDER BY p.customer_id, p.up_to, h.seq DESC",
        [customer_id for customer_id, _ in wanted],
        [seq for _, seq in wanted],
        limit,
    )
    found: dict[tuple[str, int], list[AdjustmentRow]] = {pair: [] for pair in wanted}
    for row in rows:
        adjustment = AdjustmentRow._make(tuple(row)[1:])
        found[(adjustment.customer_id, row[0])].append(adjustment)
    return found


def _columns_of(alias: str) -> str:
    return ", ".join(f"{alias}.{name}" for name in AdjustmentRow._fields)


@dataclass(frozen=True, slots=True)
class HistoryPage:
    """Which of a customer's adjustments a history page holds."""

    customer_id: str
    newest_first: bool = True
    created_gte_ms: int | None = None
    created_lte_ms: int | None = None
    limit: int = 20
    offset: int = 0


async def page_adjustments(conn: Connection, query: HistoryPage) -> list[AdjustmentRow]:
    where, args = _history_filter(query)
    order = "DESC" if query.newest_first else "ASC"
    n = len(args)
    rows = await conn.fetch(
        f"SELECT {_ADJUSTMENT_COLUMNS} FROM loyalty_adjustments WHERE {where}"
        f" ORDER BY seq {order} LIMIT ${n + 1} OFFSET ${n + 2}",
        *args,
        query.limit,
        query.offset,
    )
    return [AdjustmentRow._make(row) for row in rows]


async def count_adjustments(conn: Connection, query: HistoryPage) -> int:
    """How many adjustments the query's filters select, over all its pages."""
    where, args = _history_filter(query)
    return int(
        await conn.fetchval(f"SELECT count(*) FROM loyalty_adjustments WHERE {where}", *args)
    )


def _history_filter(query: HistoryPage) -> tuple[str, list[object]]:
    clauses = ["customer_id = $1"]
    args: list[object] = [query.customer_id]
    if query.created_gte_ms is not None:
        args.append(query.created_gte_ms)
        clauses.append(f"created_at_ms >= ${len(args)}")
    if query.created_lte_ms is not None:
        args.append(query.created_lte_ms)
        clauses.append(f"created_at_ms <= ${len(args)}")
    return " AND ".join(clauses), args
