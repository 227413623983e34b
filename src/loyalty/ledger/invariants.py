"""The ledger's invariants (SPEC section 6) as SQL, for `loyalty verify`. Never commits.

Each check counts the rows that break one invariant, and names up to 10 of the customers
concerned. They read the whole ledger: they belong to verify, never to a request.
"""

from __future__ import annotations

from loyalty.db import Connection

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

# Checks of the ledger's features (SPEC 7), each a query naming the customers that break it.
_FEATURE_CHECKS = {
    "types": """
SELECT customer_id FROM loyalty_adjustments
WHERE type NOT IN ('adjustment', 'reversal', 'expiration', 'release')
   OR (type = 'reversal') <> (reverses IS NOT NULL)
   OR (type = 'release') <> (pending_id IS NOT NULL)
   OR (type = 'expiration' AND (delta_hundredths > 0 OR balance_after_hundredths < 0
                                OR created_by IS NOT NULL))
   OR hash IS NULL
""",
    "reversals": """
SELECT o.customer_id FROM loyalty_adjustments o
JOIN loyalty_adjustments r ON r.reverses = o.id
GROUP BY o.id, o.customer_id, o.type, o.delta_hundredths
HAVING o.type IN ('reversal', 'expiration')
    OR sum(CASE WHEN r.customer_id <> o.customer_id THEN 1 ELSE 0 END) > 0
    OR sum(CASE WHEN (r.delta_hundredths > 0) = (o.delta_hundredths > 0) THEN 1 ELSE 0 END) > 0
    OR abs(sum(r.delta_hundredths)) > abs(o.delta_hundredths)
UNION ALL
SELECT r.customer_id FROM loyalty_adjustments r
LEFT JOIN loyalty_adjustments o ON o.id = r.reverses
WHERE r.reverses IS NOT NULL AND o.id IS NULL
""",
    "pending": """
SELECT p.customer_id FROM loyalty_pending p
LEFT JOIN loyalty_adjustments a ON a.pending_id = p.id
GROUP BY p.id, p.customer_id, p.status, p.adjustment_id, p.points_hundredths
HAVING (p.status = 'released' AND (count(a.id) <> 1 OR max(a.id) <> p.adjustment_id
                                   OR max(a.delta_hundredths) <> p.points_hundredths))
    OR (p.status <> 'released' AND (count(a.id) <> 0 OR p.adjustment_id IS NOT NULL))
UNION ALL
SELECT a.customer_id FROM loyalty_adjustments a
LEFT JOIN loyalty_pending p ON p.id = a.pending_id
WHERE a.pending_id IS NOT NULL AND (p.id IS NULL OR p.customer_id <> a.customer_id)
UNION ALL
SELECT b.customer_id FROM loyalty_balances b
LEFT JOIN (SELECT customer_id, sum(points_hundredths) AS total FROM loyalty_pending
           WHERE status = 'pending' GROUP BY customer_id) t ON t.customer_id = b.customer_id
WHERE b.pending_hundredths <> coalesce(t.total, 0)
""",
    # Adjustments made since the outbox began have one event each, of their type; every
    # event names something that exists, and the feed's positions run 1..last.
    "events": """
SELECT a.customer_id FROM loyalty_adjustments a
JOIN loyalty_event_sequence s ON s.id = 1 AND a.created_at_ms >= s.started_at_ms
LEFT JOIN loyalty_events e ON e.subject_id = a.id
GROUP BY a.id, a.customer_id, a.type
HAVING count(e.position) <> 1
    OR max(e.type) <> CASE a.type WHEN 'adjustment' THEN 'points.adjusted'
                                  WHEN 'reversal' THEN 'points.reversed'
                                  WHEN 'expiration' THEN 'points.expired'
                                  ELSE 'points.released' END
UNION ALL
SELECT e.customer_id FROM loyalty_events e
LEFT JOIN loyalty_adjustments a ON a.id = e.subject_id
LEFT JOIN loyalty_pending p ON p.id = e.subject_id
LEFT JOIN customers c ON c.id = e.subject_id
WHERE (e.type LIKE 'points.%' AND a.id IS NULL)
   OR (e.type LIKE 'pending.%' AND p.id IS NULL)
   OR (e.type = 'customer.created' AND c.id IS NULL)
UNION ALL
SELECT 'the feed' FROM loyalty_event_sequence s
WHERE s.last_position <> (SELECT count(*) FROM loyalty_events)
   OR s.last_position <> (SELECT coalesce(max(position), 0) FROM loyalty_events)
""",
}
FEATURE_CHECK_NAMES = {
    "events": "each adjustment since events began has exactly one event of its type, each"
    " event names what it is about, and the feed's positions run 1, 2, 3, ... without gaps",
    "types": "each adjustment's type matches its fields (reverses, pending_id, expirations)",
    "reversals": "each credit or debit is reversed at most by its own amount, and only once"
    " reversible",
    "pending": "pending points are released at most once, by one matching adjustment, and"
    " balances hold the sum of those still pending",
}

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


async def invariant_violations(conn: Connection) -> dict[str, tuple[int, list[str]]]:
    """For each check: how many rows break it, and some of the customers concerned.

    One pass over the ledger for the sequence checks and one for the balance checks; the
    customers are looked up only for checks that failed.
    """
    collate = 'COLLATE "C"' if conn.dialect == "postgresql" else ""
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
    for name, query in _FEATURE_CHECKS.items():
        rows = await conn.fetch(query)
        customers = sorted({row[0] for row in rows})
        found[name] = (len(rows), customers[:_SAMPLE_MAX])
    orphans = await conn.fetch(_ORPHAN_CHECKS)
    found["orphans"] = (len(orphans), [f"{row[0]} ({row[1]})" for row in orphans[:_SAMPLE_MAX]])
    return found
