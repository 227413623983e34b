"""What the harness and its helper scripts (sqlite_loop.py, bulk_load.py) share.

The bench customers' ids, the service's own SQLite connection settings, a psql runner, and
the percentile rule every raw limit uses, so that the raw limits and the harness agree on
them. The helper scripts run as their own processes from bench/, so this module imports
nothing from the harness.
"""

from __future__ import annotations

import sqlite3
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass

# The customers every scenario works on: cus_bench_0000 … cus_bench_0999.
CUSTOMER_COUNT = 1000
HOT_CUSTOMER = "cus_bench_hot"  # S3: every connection on this one
BIG_CUSTOMER = "cus_bench_big"  # S5 and S7: the one that gets 1,000,000 prior adjustments
BULK_ITEMS = 1000  # S6: adjustments per bulk-adjust request, and per raw-limit transaction

# The service's own SQLite settings (src/loyalty/db/sqlite.py): WAL, synchronous=FULL.
SQLITE_BUSY_TIMEOUT_MS = 5000

PSQL_TIMEOUT_S = 3600


@dataclass(frozen=True)
class LoadPlan:
    """What bulk_load.py writes: `big` adjustments for BIG_CUSTOMER, then `per_other` for each
    of the CUSTOMER_COUNT others (0: none)."""

    big: int
    per_other: int

    @property
    def others(self) -> int:
        return self.per_other * CUSTOMER_COUNT

    @property
    def total(self) -> int:
        return self.big + self.others


def customer_id(index: int) -> str:
    return f"cus_bench_{index:04d}"


def percentile(ordered: Sequence[int], fraction: float) -> int:
    """The value at `fraction` (0.5 for p50) of values sorted in ascending order; 0 for none."""
    if not ordered:
        return 0
    return ordered[min(len(ordered) - 1, max(0, round(fraction * len(ordered)) - 1))]


def sqlite_connect(path: str) -> sqlite3.Connection:
    """A connection with exactly the pragmas and durability the service uses."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = FULL")
    conn.execute("PRAGMA foreign_keys = ON")
    return conn


def psql(url: str, sql: str, *, single_transaction: bool = False) -> str:
    """Runs SQL through psql (stops at the first error); returns its unaligned output."""
    args = ["psql", "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-d", url, "-f", "-"]
    if single_transaction:
        args.insert(1, "--single-transaction")
    done = subprocess.run(
        args, input=sql, capture_output=True, text=True, timeout=PSQL_TIMEOUT_S, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"psql failed ({done.returncode}): {done.stderr.strip()[:2000]}")
    return done.stdout.strip()
