"""S5's bulk load: 5,000,000 adjustments straight into the database, every invariant kept.

1,000,000 go to one customer (cus_bench_big) and 4,000,000 to the 1,000 others (4,000
each), all written by SQL from arithmetic on a row number n, with no window function and
nothing disabled (constraints, foreign keys, triggers and indexes all stay on):

    the big customer:  n in [0, 1,000,000)          seq = n + 1
    the others:        n in [1,000,000, 5,000,000)  m = n - 1,000,000,
                                                    customer m / 4,000, seq = m % 4,000 + 1
    every row:         delta = 1 point, so balance_after = seq x delta
                       created_at = base + n / 1,000 (ms, never decreasing along a sequence)
                       id = "adj_" + a ULID: created_at's 10 characters, then 8 zeros and n
                            in 8 characters (so ids strictly increase along a sequence and
                            are unique)

One customer after the other, and time with n: each of the three indexes and the table
grow at their end, so the load does not slow down as they grow.

`base` is one millisecond after the newest of these customers was created, and the loader
waits until the whole history (5 s) lies in the past. The rows go in chunks, one
transaction each; in each chunk's transaction the balance rows of the customers it
touched are set to their new tip (balance, last_seq, last adjustment id and time), so every
commit leaves a ledger that `loyalty verify` accepts. The customers must exist already
(made through the API) and have no adjustment yet.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from common import BIG_CUSTOMER, CUSTOMER_COUNT, customer_id, psql, sqlite_connect

BIG_ADJUSTMENTS = 1_000_000
OTHER_ADJUSTMENTS = 4_000_000
TOTAL_ADJUSTMENTS = BIG_ADJUSTMENTS + OTHER_ADJUSTMENTS
BIG_CHUNK = 250_000
PER_OTHER = OTHER_ADJUSTMENTS // CUSTOMER_COUNT
OTHER_CHUNK = 500_000  # a multiple of PER_OTHER: each chunk completes whole customers
DELTA_HUNDREDTHS = 100
ROWS_PER_MS = 1000
SPAN_MS = TOTAL_ADJUSTMENTS // ROWS_PER_MS
CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
REASON = "bench bulk load"

Progress = Callable[[str], None]


def _base32(expression: str, characters: int) -> str:
    """SQL (both dialects) for `expression`, an integer, in `characters` Crockford digits."""
    digits = [
        f"substr('{CROCKFORD}',"
        f" CAST(((CAST({expression} AS BIGINT) >> {5 * shift}) & 31) AS INTEGER) + 1, 1)"
        for shift in reversed(range(characters))
    ]
    return " || ".join(digits)


def _select_rows(numbers: str, dialect: str, base_ms: int, created_by: str) -> str:
    """SELECT of the rows for every n that `numbers` (a FROM item with column n) yields."""
    if dialect == "postgresql":
        other = f"'cus_bench_' || lpad(((n - {BIG_ADJUSTMENTS}) / {PER_OTHER})::text, 4, '0')"
    else:
        other = f"'cus_bench_' || printf('%04d', (n - {BIG_ADJUSTMENTS}) / {PER_OTHER})"
    adjustment_id = f"'adj_' || {_base32('ts', 10)} || '00000000' || {_base32('n', 8)}"
    return f"""
SELECT {adjustment_id}, customer_id, seq, {DELTA_HUNDREDTHS}, seq * {DELTA_HUNDREDTHS},
       '{REASON}', ts, '{created_by}'
FROM (
    SELECT n,
           {base_ms} + n / {ROWS_PER_MS} AS ts,
           CASE WHEN n < {BIG_ADJUSTMENTS} THEN '{BIG_CUSTOMER}' ELSE {other} END AS customer_id,
           CASE WHEN n < {BIG_ADJUSTMENTS} THEN n + 1
                ELSE (n - {BIG_ADJUSTMENTS}) % {PER_OTHER} + 1 END AS seq
    FROM {numbers}
) t
"""


_INSERT = (
    "INSERT INTO loyalty_adjustments (id, customer_id, seq, delta_hundredths,"
    " balance_after_hundredths, reason, created_at_ms, created_by)"
)


def _tip_update(tip_seq: int, customers: tuple[int, int] | None) -> str:
    """UPDATE of balance rows to their adjustment number `tip_seq` (both dialects): the big
    customer's (None), or those of the others numbered [first, last)."""
    if customers is None:
        which = f"loyalty_balances.customer_id = '{BIG_CUSTOMER}'"
    else:
        which = (
            f"loyalty_balances.customer_id BETWEEN '{customer_id(customers[0])}'"
            f" AND '{customer_id(customers[1] - 1)}'"
        )
    return f"""
UPDATE loyalty_balances
   SET balance_hundredths = a.balance_after_hundredths, last_seq = a.seq,
       last_adjustment_id = a.id, updated_at_ms = a.created_at_ms
  FROM loyalty_adjustments a
 WHERE a.customer_id = loyalty_balances.customer_id AND a.seq = {tip_seq} AND {which}
"""


Chunk = tuple[int, int, int, tuple[int, int] | None]


def _chunks() -> list[Chunk]:
    """(first n, last n + 1, the touched customers' new last_seq, which customers)."""
    chunks: list[Chunk] = []
    for low in range(0, BIG_ADJUSTMENTS, BIG_CHUNK):
        high = min(low + BIG_CHUNK, BIG_ADJUSTMENTS)
        chunks.append((low, high, high, None))
    for low in range(BIG_ADJUSTMENTS, TOTAL_ADJUSTMENTS, OTHER_CHUNK):
        high = min(low + OTHER_CHUNK, TOTAL_ADJUSTMENTS)
        first = (low - BIG_ADJUSTMENTS) // PER_OTHER
        chunks.append((low, high, PER_OTHER, (first, (high - BIG_ADJUSTMENTS) // PER_OTHER)))
    return chunks


_PRECONDITION = f"""
SELECT (SELECT count(*) FROM loyalty_balances
         WHERE last_seq = 0 AND (customer_id = '{BIG_CUSTOMER}' OR customer_id
               BETWEEN '{customer_id(0)}' AND '{customer_id(CUSTOMER_COUNT - 1)}')),
       (SELECT count(*) FROM loyalty_adjustments),
       (SELECT max(created_at_ms) FROM customers),
       (SELECT id FROM users ORDER BY created_at_ms, id LIMIT 1)
"""


def _base_ms(newest_customer_ms: int, say: Progress) -> int:
    base_ms = newest_customer_ms + 1
    wait_s = (base_ms + SPAN_MS + 1 - time.time() * 1000) / 1000
    if wait_s > 0:
        say(f"waiting {wait_s:.1f}s so that the loaded history lies in the past")
        time.sleep(wait_s)
    return base_ms


def _check_precondition(customers: int, adjustments: int) -> None:
    if customers != CUSTOMER_COUNT + 1 or adjustments != 0:
        raise RuntimeError(
            f"bulk load needs {CUSTOMER_COUNT + 1} bench customers without adjustments;"
            f" found {customers} such customers and {adjustments} adjustments"
        )


def load_postgresql(url: str, say: Progress) -> None:
    customers, adjustments, newest, created_by = psql(url, _PRECONDITION).split("|")
    _check_precondition(int(customers), int(adjustments))
    base_ms = _base_ms(int(newest), say)
    started = time.monotonic()
    for low, high, tip, touched in _chunks():
        numbers = f"generate_series({low}::bigint, {high - 1}::bigint) AS g(n)"
        sql = (
            f"{_INSERT}\n{_select_rows(numbers, 'postgresql', base_ms, created_by)};\n"
            f"{_tip_update(tip, touched)};\n"
        )
        psql(url, sql, single_transaction=True)
        say(f"loaded {high:,} of {TOTAL_ADJUSTMENTS:,} ({time.monotonic() - started:.0f}s)")
    # What autovacuum would do soon after such a load, done now so that it does not run in
    # the middle of a measurement: visibility map, hint bits and planner statistics.
    psql(url, "VACUUM (ANALYZE) loyalty_adjustments;")
    psql(url, "VACUUM (ANALYZE) loyalty_balances;")
    say(f"vacuumed and analyzed ({time.monotonic() - started:.0f}s)")


def load_sqlite(path: str, say: Progress) -> None:
    conn = sqlite_connect(path)
    try:
        customers, adjustments, newest, created_by = conn.execute(_PRECONDITION).fetchone()
        _check_precondition(customers, adjustments)
        base_ms = _base_ms(newest, say)
        started = time.monotonic()
        for low, high, tip, touched in _chunks():
            numbers = (
                f"(WITH RECURSIVE g(n) AS (SELECT {low} UNION ALL SELECT n + 1 FROM g"
                f" WHERE n < {high - 1}) SELECT n FROM g)"
            )
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.execute(f"{_INSERT}\n{_select_rows(numbers, 'sqlite', base_ms, created_by)}")
                conn.execute(_tip_update(tip, touched))
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            say(f"loaded {high:,} of {TOTAL_ADJUSTMENTS:,} ({time.monotonic() - started:.0f}s)")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()
