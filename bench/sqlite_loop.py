"""SQLite's raw limit: a tight in-process loop, one transaction per adjustment.

The same work the service does for one adjustment, with none of the service around it: no
HTTP, no JSON, no event loop, no thread hand-off. One connection with the service's pragmas
and durability (WAL, synchronous=FULL, busy_timeout, foreign keys), and each iteration

    BEGIN IMMEDIATE; SELECT the balance row; UPDATE it; INSERT the ledger row; COMMIT

(`adjust_history` also reads the last 20 adjustments before COMMIT; `balance` only reads
the balance row). `adjust_bulk` is S6's: one transaction per bulk of 1,000 adjustments on
customers drawn at random (one can come up more than once),

    BEGIN IMMEDIATE; SELECT the bulk's balance rows; INSERT the 1,000 ledger rows (one
    executemany) with every column the service writes (type, reference, the NULL metadata,
    expires_at, reverses and pending_id, and each row's SHA-256 hash of its customer's
    previous hash and its fields); UPDATE each balance row to its new tip; COMMIT

SQLite has one writer at a time, so one loop is the most the file can do.

    python bench/sqlite_loop.py --db PATH --work adjust --customers 1000 --duration 20

prints one JSON object: transactions, seconds, tps, p50_ms, p99_ms.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import sqlite3
import time
from array import array

from common import BULK_ITEMS, customer_id, percentile, sqlite_connect

DELTA_HUNDREDTHS = 100
HISTORY_LIMIT = 20
WORKS = ("adjust", "adjust_history", "balance", "adjust_bulk")
GENESIS = "0" * 64
IN_LIST_MAX = 500  # ids per SELECT … IN (…), under SQLite's bound on parameters
BULK_INSERT = (
    "INSERT INTO loyalty_adjustments (id, customer_id, seq, type, delta_hundredths,"
    " balance_after_hundredths, reason, reference, metadata, expires_at_ms, reverses,"
    " pending_id, created_at_ms, created_by, hash)"
    " VALUES (?, ?, ?, 'adjustment', ?, ?, 'bench', ?, NULL, NULL, NULL, NULL, ?, 'user_bench', ?)"
)
BULK_TIP = (
    "UPDATE loyalty_balances SET balance_hundredths = ?, last_seq = ?, last_adjustment_id = ?,"
    " updated_at_ms = ?, last_hash = ? WHERE customer_id = ?"
)


def bulk(conn: sqlite3.Connection, ids: list[str]) -> None:
    """One bulk of BULK_ITEMS adjustments on random customers, in one transaction."""
    items = [random.randrange(len(ids)) for _ in range(BULK_ITEMS)]
    conn.execute("BEGIN IMMEDIATE")
    distinct = sorted({ids[index] for index in items})
    # customer → (balance, last_seq, last id, time, last hash)
    tips: dict[str, tuple[int, int, str | None, int, str]] = {}
    for start in range(0, len(distinct), IN_LIST_MAX):
        part = distinct[start : start + IN_LIST_MAX]
        for cid, balance, last_seq, last_id, updated_at_ms, last_hash in conn.execute(
            "SELECT customer_id, balance_hundredths, last_seq, last_adjustment_id,"
            " updated_at_ms, last_hash FROM loyalty_balances"
            f" WHERE customer_id IN ({', '.join('?' for _ in part)})",
            part,
        ):
            tips[cid] = (balance, last_seq, last_id, updated_at_ms or 0, last_hash or GENESIS)
    now_ms = time.time_ns() // 1_000_000
    rows = []
    for index in items:
        cid = ids[index]
        previous_balance, previous_seq, _, previous_ms, previous_hash = tips[cid]
        balance = previous_balance + DELTA_HUNDREDTHS
        seq = previous_seq + 1
        created_at_ms = max(now_ms, previous_ms)
        adjustment_id = f"adj_{created_at_ms:013d}{index:05d}{seq:08d}"
        reference = f"bench-{seq}"
        fields = (
            f'{{"balance_after":"{balance // 100}","created_at":"{created_at_ms}",'
            f'"created_by":"user_bench","customer_id":"{cid}","delta":"1","expires_at":null,'
            f'"id":"{adjustment_id}","metadata":null,"pending_id":null,"reason":"bench",'
            f'"reference":"{reference}","reverses":null,"type":"adjustment"}}'
        )
        digest = hashlib.sha256(f"{previous_hash}{fields}".encode()).hexdigest()
        tips[cid] = (balance, seq, adjustment_id, created_at_ms, digest)
        rows.append(
            (adjustment_id, cid, seq, DELTA_HUNDREDTHS, balance, reference, created_at_ms, digest)
        )
    conn.executemany(BULK_INSERT, rows)
    conn.executemany(BULK_TIP, [(*tips[cid], cid) for cid in distinct])
    conn.execute("COMMIT")


def run(path: str, work: str, customers: int, duration_s: float) -> dict[str, float]:
    conn = sqlite_connect(path)
    ids = [customer_id(index) for index in range(customers)]
    with_history = work == "adjust_history"
    latencies_ns = array("q")
    deadline = time.perf_counter() + duration_s
    started = time.perf_counter()
    execute = conn.execute
    while True:
        begin = time.perf_counter_ns()
        index = random.randrange(customers)
        cid = ids[index]
        if work == "adjust_bulk":
            bulk(conn, ids)
        elif work == "balance":
            execute(
                "SELECT balance_hundredths, last_seq, updated_at_ms FROM loyalty_balances"
                " WHERE customer_id = ?",
                (cid,),
            ).fetchone()
        else:
            execute("BEGIN IMMEDIATE")
            balance, last_seq, _last_id, updated_at_ms = execute(
                "SELECT balance_hundredths, last_seq, last_adjustment_id, updated_at_ms"
                " FROM loyalty_balances WHERE customer_id = ?",
                (cid,),
            ).fetchone()
            seq = last_seq + 1
            balance_after = balance + DELTA_HUNDREDTHS
            created_at_ms = max(time.time_ns() // 1_000_000, updated_at_ms or 0)
            # 26 characters after the prefix, time first, unique per (customer, seq): the
            # shape of the service's ULIDs without their encoding cost.
            adjustment_id = f"adj_{created_at_ms:013d}{index:05d}{seq:08d}"
            execute(
                "UPDATE loyalty_balances SET balance_hundredths = ?, last_seq = ?,"
                " last_adjustment_id = ?, updated_at_ms = ? WHERE customer_id = ?",
                (balance_after, seq, adjustment_id, created_at_ms, cid),
            )
            execute(
                "INSERT INTO loyalty_adjustments (id, customer_id, seq, delta_hundredths,"
                " balance_after_hundredths, reason, created_at_ms, created_by)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    adjustment_id,
                    cid,
                    seq,
                    DELTA_HUNDREDTHS,
                    balance_after,
                    "bench",
                    created_at_ms,
                    "user_bench",
                ),
            )
            if with_history:
                execute(
                    "SELECT id, delta_hundredths, reason, balance_after_hundredths,"
                    " created_at_ms FROM loyalty_adjustments WHERE customer_id = ?"
                    " ORDER BY seq DESC LIMIT ?",
                    (cid, HISTORY_LIMIT),
                ).fetchall()
            execute("COMMIT")
        end = time.perf_counter_ns()
        latencies_ns.append(end - begin)
        if end / 1e9 >= deadline:
            break
    elapsed = time.perf_counter() - started
    conn.close()
    ordered = sorted(latencies_ns)
    return {
        "transactions": len(latencies_ns),
        "seconds": round(elapsed, 3),
        "tps": round(len(latencies_ns) / elapsed, 1),
        "p50_ms": round(percentile(ordered, 0.50) / 1e6, 3),
        "p99_ms": round(percentile(ordered, 0.99) / 1e6, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", required=True, help="path of a migrated SQLite file")
    parser.add_argument("--work", choices=WORKS, default="adjust")
    parser.add_argument("--customers", type=int, default=1000, help="1 puts all on one row")
    parser.add_argument("--duration", type=float, default=20.0, help="seconds")
    args = parser.parse_args()
    print(json.dumps(run(args.db, args.work, args.customers, args.duration)))


if __name__ == "__main__":
    main()
