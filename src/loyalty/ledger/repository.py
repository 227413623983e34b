"""SQL for balances and the append-only adjustments ledger. Never commits.

Rows travel as named tuples whose fields are the columns in the order the SQL names them, so
a column is added in one place: its row type (and the migration that creates it).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, TypeVar

from loyalty.db import Connection, Record


class BalanceRow(NamedTuple):
    """A customer's balance row: the balance, the tip of its ledger, its pending points and
    its soonest unexpired lot."""

    customer_id: str
    balance_hundredths: int
    last_seq: int
    last_adjustment_id: str | None
    updated_at_ms: int | None
    last_hash: str | None
    pending_hundredths: int
    next_expiration_ms: int | None
    next_expiration_hundredths: int | None


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
    type: str
    reference: str | None
    metadata: str | None  # a JSON object
    expires_at_ms: int | None
    reverses: str | None
    pending_id: str | None
    hash: str | None


class LotRow(NamedTuple):
    """What is left of a credit that expires."""

    adjustment_id: str
    customer_id: str
    expires_at_ms: int
    remaining_hundredths: int


class PendingRow(NamedTuple):
    id: str
    customer_id: str
    points_hundredths: int
    reason: str | None
    reference: str | None
    metadata: str | None
    expires_at_ms: int | None
    release_at_ms: int
    status: str
    adjustment_id: str | None
    created_by: str | None
    created_at_ms: int
    updated_at_ms: int


R = TypeVar("R")


async def _rows(conn: Connection, make: Callable[[Record], R], sql: str, *args: Any) -> list[R]:
    """The query's rows, each made into its named row type."""
    return [make(row) for row in await conn.fetch(sql, *args)]


_BALANCE_COLUMNS = ", ".join(BalanceRow._fields)
_ADJUSTMENT_COLUMNS = ", ".join(AdjustmentRow._fields)
_ADJUSTMENT_VALUES = ", ".join(f"${n}" for n in range(1, len(AdjustmentRow._fields) + 1))
_LOT_COLUMNS = ", ".join(LotRow._fields)
_PENDING_COLUMNS = ", ".join(PendingRow._fields)
# The balance and the ledger's tip: the leading fields of BalanceRow, up to last_hash.
_TIP_FIELDS = BalanceRow._fields[: BalanceRow._fields.index("last_hash") + 1]
_TIP_UPDATE = ", ".join(f"{name} = ${n}" for n, name in enumerate(_TIP_FIELDS[1:], start=2))
_PLAIN_COLUMNS = ", ".join((*AdjustmentRow._fields[:8], "hash"))
_PLAIN_VALUES = ", ".join(f"${n}" for n in range(1, 10))
_BALANCE_UPDATE = ", ".join(
    f"{name} = ${n}" for n, name in enumerate(BalanceRow._fields[1:], start=2)
)


async def lock_balances(conn: Connection, customer_ids: list[str]) -> list[BalanceRow]:
    """The customers' balance rows, locked until the transaction ends.

    Locked in customer_id order, the same in every transaction, so that two batches sharing
    customers wait for each other instead of deadlocking.
    """
    return await _rows(
        conn,
        BalanceRow._make,
        f"SELECT {_BALANCE_COLUMNS} FROM loyalty_balances"
        " WHERE customer_id = ANY($1) ORDER BY customer_id FOR UPDATE",
        customer_ids,
    )


async def update_balances(
    conn: Connection, rows: Sequence[BalanceRow], tips_only: bool = False
) -> None:
    """Writes the balance rows; with `tips_only`, only the balance and the ledger's tip (the
    usual adjustment, which changes no pending sum and no lot: fewer values to bind)."""
    if tips_only:
        await conn.executemany(
            f"UPDATE loyalty_balances SET {_TIP_UPDATE} WHERE customer_id = $1",
            [row[: len(_TIP_FIELDS)] for row in rows],
        )
        return
    await conn.executemany(
        f"UPDATE loyalty_balances SET {_BALANCE_UPDATE} WHERE customer_id = $1", rows
    )


async def insert_adjustments(conn: Connection, rows: Sequence[AdjustmentRow]) -> None:
    # The usual adjustment leaves the feature columns NULL (and type at its default): written
    # apart, it binds 9 values instead of 15, a measurable share of the hot path on SQLite.
    plain = [row for row in rows if _is_plain(row)]
    if len(plain) < len(rows):
        await conn.executemany(
            f"INSERT INTO loyalty_adjustments ({_ADJUSTMENT_COLUMNS})"
            f" VALUES ({_ADJUSTMENT_VALUES})",
            [row for row in rows if not _is_plain(row)],
        )
    if plain:
        await conn.executemany(
            f"INSERT INTO loyalty_adjustments ({_PLAIN_COLUMNS}) VALUES ({_PLAIN_VALUES})",
            [(*row[:8], row.hash) for row in plain],
        )


def _is_plain(row: AdjustmentRow) -> bool:
    return (
        row.type == "adjustment"
        and row.reference is None
        and row.metadata is None
        and row.expires_at_ms is None
        and row.reverses is None
        and row.pending_id is None
    )


async def find_adjustments(conn: Connection, ids: list[str]) -> dict[str, AdjustmentRow]:
    rows = await conn.fetch(
        f"SELECT {_ADJUSTMENT_COLUMNS} FROM loyalty_adjustments WHERE id = ANY($1)", ids
    )
    return {row[0]: AdjustmentRow._make(row) for row in rows}


async def reversed_totals(conn: Connection, ids: list[str]) -> dict[str, int]:
    """For each adjustment, the sum of its reversals' deltas (0 when none): an index walk
    over the reversals of each."""
    rows = await conn.fetch(
        "SELECT reverses, sum(delta_hundredths) FROM loyalty_adjustments"
        " WHERE reverses = ANY($1) GROUP BY reverses",
        ids,
    )
    totals = dict.fromkeys(ids, 0)
    totals.update({row[0]: int(row[1]) for row in rows})
    return totals


async def find_references(
    conn: Connection, customer_ids: list[str], references: list[str]
) -> dict[tuple[str, str], str]:
    """The id of the adjustment or pending points that already use each (customer,
    reference) among those given.

    Looked up by reference alone (an index walk per reference, and references rarely repeat
    across customers), then kept for the customers given: asking for every pair of the
    lists would probe the index once per customer per reference.
    """
    wanted = set(customer_ids)
    found: dict[tuple[str, str], str] = {}
    for table in ("loyalty_pending", "loyalty_adjustments"):
        rows = await conn.fetch(
            f"SELECT customer_id, reference, id FROM {table}"
            " WHERE reference = ANY($1) AND reference IS NOT NULL",
            references,
        )
        for customer_id, reference, owner in rows:
            # A release carries its pending points' reference: the pending object owns it.
            if customer_id in wanted and (customer_id, reference) not in found:
                found[(customer_id, reference)] = owner
    return found


async def lots_of(conn: Connection, customer_ids: list[str]) -> list[LotRow]:
    """The customers' unexpired lots, each customer's soonest first."""
    return await _rows(
        conn,
        LotRow._make,
        f"SELECT {_LOT_COLUMNS} FROM loyalty_lots WHERE customer_id = ANY($1)"
        " ORDER BY customer_id, expires_at_ms, adjustment_id",
        customer_ids,
    )


async def write_lots(
    conn: Connection, inserted: Sequence[LotRow], updated: Sequence[LotRow], deleted: list[str]
) -> None:
    if deleted:
        await conn.execute("DELETE FROM loyalty_lots WHERE adjustment_id = ANY($1)", deleted)
    if updated:
        await conn.executemany(
            "UPDATE loyalty_lots SET remaining_hundredths = $2 WHERE adjustment_id = $1",
            [(lot.adjustment_id, lot.remaining_hundredths) for lot in updated],
        )
    if inserted:
        await conn.executemany(
            f"INSERT INTO loyalty_lots ({_LOT_COLUMNS}) VALUES ($1, $2, $3, $4)", inserted
        )


async def page_lots(
    conn: Connection, customer_id: str, limit: int, offset: int
) -> tuple[list[LotRow], int]:
    rows = await conn.fetch(
        f"SELECT {_LOT_COLUMNS} FROM loyalty_lots WHERE customer_id = $1"
        " ORDER BY expires_at_ms, adjustment_id LIMIT $2 OFFSET $3",
        customer_id,
        limit,
        offset,
    )
    count = await conn.fetchval(
        "SELECT count(*) FROM loyalty_lots WHERE customer_id = $1", customer_id
    )
    return [LotRow._make(row) for row in rows], int(count)


async def customers_with_due_lots(conn: Connection, now_ms: int, limit: int) -> list[str]:
    rows = await conn.fetch(
        "SELECT DISTINCT customer_id FROM"
        " (SELECT customer_id FROM loyalty_lots WHERE expires_at_ms <= $1"
        "  ORDER BY expires_at_ms LIMIT $2) due",
        now_ms,
        limit,
    )
    return [row[0] for row in rows]


async def due_pending(conn: Connection, now_ms: int, limit: int) -> list[str]:
    rows = await conn.fetch(
        "SELECT id FROM loyalty_pending WHERE status = 'pending' AND release_at_ms <= $1"
        " ORDER BY release_at_ms LIMIT $2",
        now_ms,
        limit,
    )
    return [row[0] for row in rows]


async def find_pending(conn: Connection, ids: list[str]) -> dict[str, PendingRow]:
    rows = await conn.fetch(
        f"SELECT {_PENDING_COLUMNS} FROM loyalty_pending WHERE id = ANY($1)", ids
    )
    return {row[0]: PendingRow._make(row) for row in rows}


async def insert_pending(conn: Connection, rows: Sequence[PendingRow]) -> None:
    values = ", ".join(f"${n}" for n in range(1, len(PendingRow._fields) + 1))
    await conn.executemany(
        f"INSERT INTO loyalty_pending ({_PENDING_COLUMNS}) VALUES ({values})", rows
    )


async def settle_pending(conn: Connection, rows: Sequence[PendingRow]) -> None:
    """Writes the new status (released or voided) of pending points."""
    await conn.executemany(
        "UPDATE loyalty_pending SET status = $2, adjustment_id = $3, updated_at_ms = $4"
        " WHERE id = $1",
        [(row.id, row.status, row.adjustment_id, row.updated_at_ms) for row in rows],
    )


async def page_pending(
    conn: Connection, customer_id: str, status: str | None, limit: int, offset: int
) -> tuple[list[PendingRow], int]:
    where = "customer_id = $1" + ("" if status is None else " AND status = $2")
    args: list[object] = [customer_id] if status is None else [customer_id, status]
    n = len(args)
    rows = await conn.fetch(
        f"SELECT {_PENDING_COLUMNS} FROM loyalty_pending WHERE {where}"
        f" ORDER BY id DESC LIMIT ${n + 1} OFFSET ${n + 2}",
        *args,
        limit,
        offset,
    )
    count = await conn.fetchval(f"SELECT count(*) FROM loyalty_pending WHERE {where}", *args)
    return [PendingRow._make(row) for row in rows], int(count)


async def balance_as_of(conn: Connection, customer_id: str, at_ms: int) -> tuple[int, int] | None:
    """(balance_after, created_at_ms) of the customer's last adjustment at or before `at_ms`:
    one walk down the (customer_id, created_at_ms, seq) index."""
    row = await conn.fetchrow(
        "SELECT balance_after_hundredths, created_at_ms FROM loyalty_adjustments"
        " WHERE customer_id = $1 AND created_at_ms <= $2"
        " ORDER BY created_at_ms DESC, seq DESC LIMIT 1",
        customer_id,
        at_ms,
    )
    return None if row is None else (int(row[0]), int(row[1]))


@dataclass(frozen=True, slots=True)
class LedgerQuery:
    """A page of the whole ledger, newest first: ids below `before_id`, with filters."""

    limit: int
    before_id: str | None = None
    customer_id: str | None = None
    type: str | None = None
    reference: str | None = None
    min_id: str | None = None  # created_at[gte], as the smallest id of that millisecond
    max_id: str | None = None  # created_at[lte], as the largest id of that millisecond


async def page_ledger(conn: Connection, query: LedgerQuery) -> list[AdjustmentRow]:
    """Newest first by id: an adjustment's id starts with its created_at, so id order is time
    order and each bound is an index range."""
    clauses: list[str] = []
    args: list[object] = []
    order = "id"
    if query.customer_id is not None:
        # One customer's adjustments: its (customer_id, seq) index is in id order too.
        order = "seq"
        if query.before_id is not None:
            args.append(query.before_id)
            clauses.append(f"seq < (SELECT seq FROM loyalty_adjustments WHERE id = ${len(args)})")
            query = dataclasses.replace(query, before_id=None)
    for column, operator, value in (
        ("id", "<", query.before_id),
        ("id", ">=", query.min_id),
        ("id", "<=", query.max_id),
        ("customer_id", "=", query.customer_id),
        ("type", "=", query.type),
        ("reference", "=", query.reference),
    ):
        if value is not None:
            args.append(value)
            clauses.append(f"{column} {operator} ${len(args)}")
    where = " AND ".join(clauses) or "TRUE"
    args.append(query.limit)
    return await _rows(
        conn,
        AdjustmentRow._make,
        f"SELECT {_ADJUSTMENT_COLUMNS} FROM loyalty_adjustments WHERE {where}"
        f" ORDER BY {order} DESC LIMIT ${len(args)}",
        *args,
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
    return await _rows(
        conn,
        AdjustmentRow._make,
        f"SELECT {_ADJUSTMENT_COLUMNS} FROM loyalty_adjustments WHERE customer_id = $1"
        " AND seq <= $2 ORDER BY seq DESC LIMIT $3",
        customer_id,
        up_to_seq,
        limit,
    )


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
    return await _rows(
        conn,
        AdjustmentRow._make,
        f"SELECT {_ADJUSTMENT_COLUMNS} FROM loyalty_adjustments WHERE {where}"
        f" ORDER BY seq {order} LIMIT ${n + 1} OFFSET ${n + 2}",
        *args,
        query.limit,
        query.offset,
    )


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


async def adjustments_from(
    conn: Connection, after_id: str | None, min_id: str | None, limit: int
) -> list[AdjustmentRow]:
    """Oldest first by id (an id starts with its created_at): the next `limit` adjustments
    after `after_id`, or from `min_id` on. One index range of the primary key per page, so
    an export walks any ledger in constant memory."""
    if after_id is not None:
        where, bound = "id > $1", after_id
    else:
        where, bound = "id >= $1", min_id or ""
    return await _rows(
        conn,
        AdjustmentRow._make,
        f"SELECT {_ADJUSTMENT_COLUMNS} FROM loyalty_adjustments WHERE {where} ORDER BY id LIMIT $2",
        bound,
        limit,
    )
