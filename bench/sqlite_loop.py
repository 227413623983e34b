"""SQLite's raw limit: a tight in-process loop, one transaction per adjustment.

The same work the service does for one adjustment, with none of the service around it: no
HTTP, no JSON, no event loop, no thread hand-off. One connection with the service's pragmas
and durability (WAL, synchronous=FULL, busy_timeout, foreign keys), and each iteration

    BEGIN IMMEDIATE; SELECT the balance row; UPDATE it; INSERT the ledger row; COMMIT

(`adjust_history` also reads the last 20 adjustments before COMMIT; `balance` only reads
the balance row). SQLite has one writer at a time, so one loop is the most the file can do.

    python bench/sqlite_loop.py --db PATH --work adjust --customers 1000 --duration 20

prints one JSON object: transactions, seconds, tps, p50_ms, p99_ms.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from array import array

from common import customer_id, percentile, sqlite_connect

DELTA_HUNDREDTHS = 100
HISTORY_LIMIT = 20
WORKS = ("adjust", "adjust_history", "balance")


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
        if work == "balance":
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
