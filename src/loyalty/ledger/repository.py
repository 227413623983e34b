"""SQL for balances and the append-only adjustments ledger. Never commits."""

from __future__ import annotations

from loyalty.db import Connection, Row

HISTORY_COLUMNS = (
    "id, delta_hundredths, reason, balance_after_hundredths, created_at_ms, created_by"
)


async def lock_balances(conn: Connection, customer_ids: list[str]) -> list[Row]:
    """The customers' balance rows, locked until the transaction ends.

    Locked in customer_id order, the same in every transaction, so that two batches sharing
    customers wait for each other instead of deadlocking.
    """
    return await conn.fetch(
        "SELECT customer_id, balance_hundredths, last_seq, last_adjustment_id, updated_at_ms"
        " FROM loyalty_balances WHERE customer_id = ANY($1) ORDER BY customer_id FOR UPDATE",
        customer_ids,
    )


async def update_balances(conn: Connection, rows: list[tuple[str, int, int, str, int]]) -> None:
    """Rows of (customer_id, balance_hundredths, last_seq, last_adjustment_id, updated_at_ms)."""
    await conn.executemany(
        "UPDATE loyalty_balances SET balance_hundredths = $2, last_seq = $3,"
        " last_adjustment_id = $4, updated_at_ms = $5 WHERE customer_id = $1",
        rows,
    )


async def insert_adjustments(conn: Connection, rows: list[tuple[object, ...]]) -> None:
    """Rows of (id, customer_id, seq, delta_hundredths, balance_after_hundredths, reason,
    created_at_ms, created_by)."""
    await conn.executemany(
        "INSERT INTO loyalty_adjustments (id, customer_id, seq, delta_hundredths,"
        " balance_after_hundredths, reason, created_at_ms, created_by)"
        " VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        rows,
    )


async def adjustment_exists(conn: Connection, adjustment_id: str) -> bool:
    found = await conn.fetchval("SELECT 1 FROM loyalty_adjustments WHERE id = $1", adjustment_id)
    return found is not None


async def find_balances(conn: Connection, customer_ids: list[str]) -> dict[str, Row]:
    """Rows of (customer_id, balance_hundredths, updated_at_ms) by customer id."""
    rows = await conn.fetch(
        "SELECT customer_id, balance_hundredths, updated_at_ms FROM loyalty_balances"
        " WHERE customer_id = ANY($1)",
        customer_ids,
    )
    return {row[0]: row for row in rows}


async def find_balance(conn: Connection, customer_id: str) -> Row | None:
    return await conn.fetchrow(
        "SELECT balance_hundredths, last_seq, updated_at_ms FROM loyalty_balances"
        " WHERE customer_id = $1",
        customer_id,
    )


async def latest_adjustments(
    conn: Connection, customer_id: str, up_to_seq: int, limit: int
) -> list[Row]:
    """The newest `limit` adjustments up to `up_to_seq`: a walk down the (customer_id, seq)
    index, whatever the ledger's length."""
    return await conn.fetch(
        f"SELECT {HISTORY_COLUMNS} FROM loyalty_adjustments WHERE customer_id = $1"
        " AND seq <= $2 ORDER BY seq DESC LIMIT $3",
        customer_id,
        up_to_seq,
        limit,
    )


async def latest_adjustments_many(
    conn: Connection, dialect: str, wanted: list[tuple[str, int]], limit: int
) -> dict[tuple[str, int], list[Row]]:
    """`latest_adjustments` for many (customer_id, up_to_seq) pairs: on PostgreSQL one query
    (an index walk per pair, side by side), on SQLite one in-process query per pair."""
    if not wanted:
        return {}
    if dialect != "postgresql":
        return {
            (customer_id, seq): await latest_adjustments(conn, customer_id, seq, limit)
            for customer_id, seq in wanted
        }
    rows = await conn.fetch(
        f"SELECT p.customer_id, p.up_to, {HISTORY_COLUMNS}"
        " FROM unnest($1::text[], $2::bigint[]) AS p(customer_id, up_to)"
        f" CROSS JOIN LATERAL (SELECT seq, {HISTORY_COLUMNS} FROM loyalty_adjustments a"
        "  WHERE a.customer_id = p.customer_id AND a.seq <= p.up_to"
        "  ORDER BY a.seq DESC LIMIT $3) h"
        " ORDER BY p.customer_id, p.up_to, h.seq DESC",
        [customer_id for customer_id, _ in wanted],
        [seq for _, seq in wanted],
        limit,
    )
    found: dict[tuple[str, int], list[Row]] = {pair: [] for pair in wanted}
    for row in rows:
        found[(row[0], row[1])].append(tuple(row)[2:])
    return found


async def page_adjustments(
    conn: Connection,
    customer_id: str,
    newest_first: bool,
    created_gte_ms: int | None,
    created_lte_ms: int | None,
    limit: int,
    offset: int,
) -> list[Row]:
    where, args = _history_filter(customer_id, created_gte_ms, created_lte_ms)
    order = "DESC" if newest_first else "ASC"
    n = len(args)
    return await conn.fetch(
        f"SELECT {HISTORY_COLUMNS} FROM loyalty_adjustments WHERE {where}"
        f" ORDER BY seq {order} LIMIT ${n + 1} OFFSET ${n + 2}",
        *args,
        limit,
        offset,
    )


async def count_adjustments(
    conn: Connection, customer_id: str, created_gte_ms: int | None, created_lte_ms: int | None
) -> int:
    where, args = _history_filter(customer_id, created_gte_ms, created_lte_ms)
    return int(
        await conn.fetchval(f"SELECT count(*) FROM loyalty_adjustments WHERE {where}", *args)
    )


def _history_filter(
    customer_id: str, created_gte_ms: int | None, created_lte_ms: int | None
) -> tuple[str, list[object]]:
    clauses = ["customer_id = $1"]
    args: list[object] = [customer_id]
    if created_gte_ms is not None:
        args.append(created_gte_ms)
        clauses.append(f"created_at_ms >= ${len(args)}")
    if created_lte_ms is not None:
        args.append(created_lte_ms)
        clauses.append(f"created_at_ms <= ${len(args)}")
    return " AND ".join(clauses), args


# The ledger's invariants (SPEC section 6) as queries: each counts the rows that break one,
# and names up to 10 of the customers concerned.
_SEQUENCE_CHECKS = """
WITH walk AS (
    SELECT customer_id, seq, delta_hundredths AS delta, balance_after_hundredths AS after,
           created_at_ms AS created, id {collate} AS id,
           LAG(balance_after_hundredths, 1, 0) OVER w AS previous_after,
           LAG(created_at_ms) OVER w AS previous_created,
           LAG(id {collate}) OVER w AS previous_id,
           ROW_NUMBER() OVER w AS position
    FROM loyalty_adjustments
    WINDOW w AS (PARTITION BY customer_id ORDER BY seq)
)
SELECT customer_id,
       CASE WHEN after <> previous_after + delta THEN 1 ELSE 0 END AS broken_chain,
       CASE WHEN seq <> position THEN 1 ELSE 0 END AS broken_seq,
       CASE WHEN created < previous_created THEN 1 ELSE 0 END AS created_decreases,
       CASE WHEN id <= previous_id THEN 1 ELSE 0 END AS id_not_increasing,
       CASE WHEN delta = 0 THEN 1 ELSE 0 END AS zero_delta
FROM walk
"""

_BALANCE_CHECKS = """
SELECT b.customer_id,
       CASE WHEN b.balance_hundredths <> coalesce(t.total, 0) THEN 1 ELSE 0 END AS sum_differs,
       CASE WHEN b.last_seq <> coalesce(t.n, 0) OR coalesce(t.max_seq, 0) <> b.last_seq
            THEN 1 ELSE 0 END AS count_differs,
       CASE WHEN b.last_seq = 0 AND (b.balance_hundredths <> 0
                  OR b.last_adjustment_id IS NOT NULL OR b.updated_at_ms IS NOT NULL)
            THEN 1
            WHEN b.last_seq > 0 AND (last.id IS NULL
                  OR last.balance_after_hundredths <> b.balance_hundredths
                  OR last.id <> b.last_adjustment_id
                  OR last.created_at_ms <> b.updated_at_ms)
            THEN 1 ELSE 0 END AS tip_differs
FROM loyalty_balances b
LEFT JOIN (
    SELECT customer_id, count(*) AS n, sum(delta_hundredths) AS total, max(seq) AS max_seq
    FROM loyalty_adjustments GROUP BY customer_id
) t ON t.customer_id = b.customer_id
LEFT JOIN loyalty_adjustments last
       ON last.customer_id = b.customer_id AND last.seq = b.last_seq
"""

_ORPHAN_CHECKS = """
SELECT c.id AS customer_id, 'customer without a balance row' AS problem
FROM customers c LEFT JOIN loyalty_balances b ON b.customer_id = c.id
WHERE b.customer_id IS NULL
UNION ALL
SELECT DISTINCT a.customer_id, 'adjustments without a balance row'
FROM loyalty_adjustments a LEFT JOIN loyalty_balances b ON b.customer_id = a.customer_id
WHERE b.customer_id IS NULL
"""

# Each check's name, and what holds when no row breaks it.
SEQUENCE_CHECK_NAMES = {
    "broken_chain": "each balance_after is the previous balance_after plus its delta",
    "broken_seq": "each customer's sequence runs 1, 2, 3, ... without gaps",
    "created_decreases": "created_at never decreases along a sequence",
    "id_not_increasing": "ids strictly increase along a sequence",
    "zero_delta": "no delta is zero",
}
BALANCE_CHECK_NAMES = {
    "sum_differs": "each balance equals the exact sum of its deltas",
    "count_differs": "each balance row counts its customer's adjustments",
    "tip_differs": "each balance row matches its last adjustment (balance, id, time)",
}
_SAMPLE_MAX = 10


async def count_ledger(conn: Connection) -> tuple[int, int]:
    customers = await conn.fetchval("SELECT count(*) FROM customers")
    adjustments = await conn.fetchval("SELECT count(*) FROM loyalty_adjustments")
    return int(customers), int(adjustments)


async def invariant_violations(conn: Connection, dialect: str) -> dict[str, tuple[int, list[str]]]:
    """For each check: how many rows break it, and some of the customers concerned.

    One pass over the ledger for the sequence checks and one for the balance checks; the
    customers are looked up only for checks that failed.
    """
    collate = 'COLLATE "C"' if dialect == "postgresql" else ""
    found: dict[str, tuple[int, list[str]]] = {}
    for query, names in (
        (_SEQUENCE_CHECKS.format(collate=collate), list(SEQUENCE_CHECK_NAMES)),
        (_BALANCE_CHECKS, list(BALANCE_CHECK_NAMES)),
    ):
        sums = ", ".join(f"coalesce(sum({name}), 0)" for name in names)
        totals = await conn.fetchrow(f"SELECT {sums} FROM ({query}) q")
        for index, name in enumerate(names):
            count = int(totals[index]) if totals is not None else 0
            samples: list[str] = []
            if count:
                rows = await conn.fetch(
                    f"SELECT DISTINCT customer_id FROM ({query}) q WHERE {name} = 1"
                    f" ORDER BY customer_id LIMIT {_SAMPLE_MAX}"
                )
                samples = [row[0] for row in rows]
            found[name] = (count, samples)
    orphans = await conn.fetch(_ORPHAN_CHECKS)
    found["orphans"] = (len(orphans), [f"{row[0]} ({row[1]})" for row in orphans[:_SAMPLE_MAX]])
    return found
