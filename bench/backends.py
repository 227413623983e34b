"""The two databases under test, SQLite and PostgreSQL, behind one interface.

A backend makes and drops scratch databases (SQLite files under the run's work directory,
PostgreSQL databases named `loyalty_bench_<stamp>_<label>`), seeds the raw limit's
customers, measures a raw limit (sqlite_loop.py, or pgbench with the scripts in pgbench/),
counts the ledger's rows, finds S7's point in time and S8's events, and bulk-loads S5's and
S7's databases with bulk_load.py. What both do the same way (running the measuring tool,
building its result, reporting the bulk load's progress, S7's point in time, S8's events)
lives in the base class.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import time
from abc import ABC, abstractmethod
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar
from urllib.parse import urlsplit, urlunsplit

import bulk_load
from common import CUSTOMER_COUNT, LoadPlan, customer_id, percentile, psql, sqlite_connect
from records import RawResult
from scenarios import RawSpec
from tools import BENCH_DIR, first_line, run_measuring_tool, say

DEFAULT_PG_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
LOOPBACK_HOSTS = {"127.0.0.1", "localhost", "::1", "[::1]"}
PGBENCH_JOBS = 1
PG_START_WAIT_S = 30


@dataclass(frozen=True)
class AsOfPoint:
    """S7's point in time: the created_at of the adjustment in the middle of a customer's
    history, and what its balance was then (after the last adjustment at or before it)."""

    as_of_ms: int
    balance_hundredths: int  # the balance at as_of_ms
    seq: int  # of the last adjustment at or before as_of_ms
    last_seq: int  # the customer's whole history
    tip_hundredths: int  # the balance now


class Backend(ABC):
    kind: ClassVar[str]  # sqlite, postgresql: the results' `database`
    raw_tool: ClassVar[str]  # what measures the raw limit, as the results name it

    @abstractmethod
    def ensure_running(self) -> None:
        """Makes sure the database answers before anything is measured."""

    def tool_versions(self) -> dict[str, str]:
        """The versions of the tools this database's raw limit uses, for the results."""
        return {}

    @abstractmethod
    def server_version(self) -> str: ...

    @abstractmethod
    def new_database(self, label: str) -> str:
        """An empty scratch database (dropped first if it exists); returns its URL."""

    @abstractmethod
    def drop(self, url: str) -> None: ...

    @abstractmethod
    def drop_all(self) -> None:
        """Drops every scratch database this backend made."""

    @abstractmethod
    def seed_customers(self, url: str) -> None:
        """The raw limit's customers, balance rows at zero, written directly."""

    @abstractmethod
    def count_adjustments(self, url: str) -> int: ...

    @abstractmethod
    def query_ints(self, url: str, sql: str) -> tuple[int, ...]:
        """The first row of `sql`'s answer, every column an integer (empty: no row)."""

    @abstractmethod
    def query_texts(self, url: str, sql: str) -> list[str]:
        """The first column of every row of `sql`'s answer, as text."""

    def last_event_position(self, url: str) -> int:
        """The outbox's last position (positions follow commit order, without gaps)."""
        return self.query_ints(url, "SELECT last_position FROM loyalty_event_sequence")[0]

    def event_ids(self, url: str, after: int, through: int) -> list[str]:
        """The ids of the events at positions after `after` up to `through`."""
        return self.query_texts(
            url,
            f"SELECT id FROM loyalty_events WHERE position > {after} AND position <= {through}"
            " ORDER BY position",
        )

    def as_of_point(self, url: str, customer: str) -> AsOfPoint:
        """The created_at of `customer`'s adjustment number last_seq / 2, and the balance
        after the last adjustment at or before it (ties within a millisecond: the last)."""
        row = self.query_ints(
            url,
            "SELECT b.last_seq, b.balance_hundredths, a.created_at_ms"
            " FROM loyalty_balances b JOIN loyalty_adjustments a"
            " ON a.customer_id = b.customer_id AND a.seq = b.last_seq / 2"
            f" WHERE b.customer_id = '{customer}'",
        )
        if not row:
            raise RuntimeError(f"{customer} has fewer than 2 adjustments: no middle to ask for")
        last_seq, tip, as_of_ms = row
        balance, seq = self.query_ints(
            url,
            "SELECT balance_after_hundredths, seq FROM loyalty_adjustments"
            f" WHERE customer_id = '{customer}' AND created_at_ms <= {as_of_ms}"
            " ORDER BY created_at_ms DESC, seq DESC LIMIT 1",
        )
        return AsOfPoint(as_of_ms, balance, seq, last_seq, tip)

    @abstractmethod
    def raw(self, url: str, spec: RawSpec, duration_s: int, workdir: Path) -> RawResult:
        """The raw limit of `spec`'s work, measured for `duration_s` on a seeded database."""

    @abstractmethod
    def bulk_load(self, url: str, plan: LoadPlan) -> None:
        """`plan`'s adjustments (bulk_load.py) into a database with its customers."""

    def _raw_result(
        self,
        spec: RawSpec,
        *,
        seconds: float,
        transactions: int,
        failed: int,
        tps: float,
        p50_ms: float,
        p99_ms: float,
    ) -> RawResult:
        return RawResult(
            self.raw_tool,
            spec.work,
            spec.clients,
            spec.customers,
            seconds,
            transactions,
            failed,
            tps,
            p50_ms,
            p99_ms,
        )

    @staticmethod
    def _bulk_load_progress(line: str) -> None:
        say(f"  {line}")


class SqliteBackend(Backend):
    kind = "sqlite"
    raw_tool = "sqlite3 loop"

    def __init__(self, workdir: Path) -> None:
        self.dir = workdir / "sqlite"
        self.dir.mkdir(parents=True, exist_ok=True)

    @staticmethod
    def _path(url: str) -> str:
        return url.removeprefix("sqlite:///")

    def ensure_running(self) -> None:
        """A file needs no server."""

    def server_version(self) -> str:
        return f"SQLite {sqlite3.sqlite_version}"

    def new_database(self, label: str) -> str:
        url = f"sqlite:///{self.dir / f'{label}.db'}"
        self.drop(url)
        return url

    def drop(self, url: str) -> None:
        path = self._path(url)
        for suffix in ("", "-wal", "-shm", ".migrate-lock"):
            with suppress(FileNotFoundError):
                os.remove(path + suffix)

    def drop_all(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)

    def seed_customers(self, url: str) -> None:
        conn = sqlite_connect(self._path(url))
        try:
            conn.execute("BEGIN IMMEDIATE")
            for index in range(CUSTOMER_COUNT):
                cid = customer_id(index)
                conn.execute(
                    "INSERT INTO customers (id, email, email_key, created_at_ms, updated_at_ms)"
                    " VALUES (?, ?, ?, 0, 0)",
                    (cid, f"{cid}@example.com", f"{cid}@example.com"),
                )
                conn.execute(
                    "INSERT INTO loyalty_balances (customer_id, balance_hundredths, last_seq)"
                    " VALUES (?, 0, 0)",
                    (cid,),
                )
            conn.execute("COMMIT")
        finally:
            conn.close()

    def count_adjustments(self, url: str) -> int:
        conn = sqlite_connect(self._path(url))
        try:
            return int(conn.execute("SELECT count(*) FROM loyalty_adjustments").fetchone()[0])
        finally:
            conn.close()

    def query_ints(self, url: str, sql: str) -> tuple[int, ...]:
        conn = sqlite_connect(self._path(url))
        try:
            row = conn.execute(sql).fetchone()
            return () if row is None else tuple(int(value) for value in row)
        finally:
            conn.close()

    def query_texts(self, url: str, sql: str) -> list[str]:
        conn = sqlite_connect(self._path(url))
        try:
            return [str(row[0]) for row in conn.execute(sql)]
        finally:
            conn.close()

    def raw(self, url: str, spec: RawSpec, duration_s: int, workdir: Path) -> RawResult:
        output = run_measuring_tool(
            [
                sys.executable,
                str(BENCH_DIR / "sqlite_loop.py"),
                *("--db", self._path(url)),
                *("--work", spec.script),
                *("--customers", str(spec.customers)),
                *("--duration", str(duration_s)),
            ],
            "sqlite_loop.py",
            duration_s,
        )
        out = json.loads(output.strip().splitlines()[-1])
        return self._raw_result(
            spec,
            seconds=out["seconds"],
            transactions=out["transactions"],
            failed=0,
            tps=out["tps"],
            p50_ms=out["p50_ms"],
            p99_ms=out["p99_ms"],
        )

    def bulk_load(self, url: str, plan: LoadPlan) -> None:
        bulk_load.load_sqlite(self._path(url), plan, self._bulk_load_progress)


class PostgresBackend(Backend):
    kind = "postgresql"
    raw_tool = "pgbench"

    def __init__(self, admin_url: str, run_id: str) -> None:
        parts = urlsplit(admin_url)
        if parts.hostname not in LOOPBACK_HOSTS:
            raise RuntimeError(f"PostgreSQL must be on a loopback address, not {parts.hostname}")
        self.admin_url = admin_url
        self.run_id = run_id
        self.names: list[str] = []

    def _url(self, name: str) -> str:
        parts = urlsplit(self.admin_url)
        return urlunsplit((parts.scheme, parts.netloc, f"/{name}", parts.query, ""))

    def ensure_running(self) -> None:
        """Starts the local cluster when it is down (as .ci/run does), then waits for it."""
        parts = urlsplit(self.admin_url)
        ready = ["pg_isready", "-q", "-h", parts.hostname or "127.0.0.1", "-p"]
        ready.append(str(parts.port or 5432))
        if subprocess.run(ready, check=False).returncode == 0:
            return
        clusters = Path("/etc/postgresql")
        local_default = (parts.port or 5432) == 5432
        if (
            local_default
            and shutil.which("pg_ctlcluster")
            and clusters.is_dir()
            and not os.geteuid()
        ):
            version = sorted(p.name for p in clusters.iterdir())[-1]
            say(f"PostgreSQL is down: starting cluster {version}/main")
            subprocess.run(
                ["pg_ctlcluster", "--skip-systemctl-redirect", version, "main", "start"],
                check=False,
            )
            for _ in range(PG_START_WAIT_S):
                if subprocess.run(ready, check=False).returncode == 0:
                    return
                time.sleep(1)
        raise RuntimeError(f"PostgreSQL does not answer at {parts.hostname}:{parts.port}")

    def tool_versions(self) -> dict[str, str]:
        return {"pgbench": first_line(["pgbench", "--version"])}

    def server_version(self) -> str:
        return psql(self.admin_url, "SHOW server_version;").strip()

    def _drop_named(self, name: str) -> None:
        psql(self.admin_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE);')

    def new_database(self, label: str) -> str:
        name = f"loyalty_bench_{self.run_id}_{label.replace('-', '_')}"
        self._drop_named(name)
        psql(self.admin_url, f'CREATE DATABASE "{name}";')
        self.names.append(name)
        return self._url(name)

    def drop(self, url: str) -> None:
        name = urlsplit(url).path.lstrip("/")
        self._drop_named(name)
        if name in self.names:
            self.names.remove(name)

    def drop_all(self) -> None:
        for name in list(self.names):
            try:
                self.drop(self._url(name))
            except (RuntimeError, OSError, subprocess.SubprocessError) as error:
                say(f"could not drop database {name}: {error}")

    def seed_customers(self, url: str) -> None:
        psql(
            url,
            f"""
INSERT INTO customers (id, email, email_key, created_at_ms, updated_at_ms)
SELECT 'cus_bench_' || lpad(k::text, 4, '0'), 'cus_bench_' || lpad(k::text, 4, '0')
       || '@example.com', 'cus_bench_' || lpad(k::text, 4, '0') || '@example.com', 0, 0
  FROM generate_series(0, {CUSTOMER_COUNT - 1}) AS k;
INSERT INTO loyalty_balances (customer_id, balance_hundredths, last_seq)
SELECT id, 0, 0 FROM customers;
VACUUM ANALYZE;
""",
        )

    def count_adjustments(self, url: str) -> int:
        return int(psql(url, "SELECT count(*) FROM loyalty_adjustments;"))

    def query_ints(self, url: str, sql: str) -> tuple[int, ...]:
        lines = psql(url, sql + ";").splitlines()
        return tuple(int(value) for value in lines[0].split("|")) if lines else ()

    def query_texts(self, url: str, sql: str) -> list[str]:
        return [line.split("|")[0] for line in psql(url, sql + ";").splitlines()]

    def raw(self, url: str, spec: RawSpec, duration_s: int, workdir: Path) -> RawResult:
        prefix = workdir / f"pgbench-{spec.work}-{spec.clients}"
        args = [
            "pgbench",
            "--no-vacuum",
            "--protocol=prepared",
            f"--client={spec.clients}",
            f"--jobs={PGBENCH_JOBS}",
            f"--time={duration_s}",
            f"--file={BENCH_DIR / 'pgbench' / (spec.script + '.sql')}",
            f"--define=customers={spec.customers}",
            "--log",
            f"--log-prefix={prefix}",
            url,
        ]
        output = run_measuring_tool(args, "pgbench", duration_s)
        tps = re.search(r"tps = ([\d.]+) \(without initial connection time\)", output)
        if tps is None:
            raise RuntimeError(f"pgbench printed no tps:\n{output[-2000:]}")
        # pgbench's log has a line per transaction whose third field is its latency in µs,
        # or a word instead when the transaction did not complete.
        latencies_us: list[int] = []
        failed = 0
        for log in workdir.glob(f"{prefix.name}.*"):
            for line in log.read_text().splitlines():
                fields = line.split()
                if len(fields) >= 3 and fields[2].isdigit():
                    latencies_us.append(int(fields[2]))
                elif fields:
                    failed += 1
            log.unlink()
        latencies_us.sort()
        return self._raw_result(
            spec,
            seconds=float(duration_s),
            transactions=len(latencies_us),
            failed=failed,
            tps=round(float(tps.group(1)), 1),
            p50_ms=round(percentile(latencies_us, 0.50) / 1000, 3),
            p99_ms=round(percentile(latencies_us, 0.99) / 1000, 3),
        )

    def bulk_load(self, url: str, plan: LoadPlan) -> None:
        bulk_load.load_postgresql(url, plan, self._bulk_load_progress)


def create_backend(kind: str, workdir: Path, pg_url: str, run_id: str) -> Backend:
    if kind == "sqlite":
        return SqliteBackend(workdir)
    return PostgresBackend(pg_url, run_id)
