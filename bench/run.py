"""The benchmark harness behind `make bench` and `make bench-quick` (see bench/README.md).

For each database (SQLite, PostgreSQL) it measures the raw limit of the database itself
(pgbench, or a tight sqlite3 loop), then starts `loyalty serve` in its production
configuration on a fresh database, creates customers through the API, drives it with wrk
for a fixed duration per scenario, records each worker's peak memory, stops it and runs
`loyalty verify`. S5 repeats the adjust scenarios on a database bulk-loaded with 5,000,000
adjustments and on a fresh one. Results: a Markdown table and a JSON file per database in
bench/results/, and the same table on standard output.

Only the standard library and httpx; wrk, pgbench and psql are run as commands.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import secrets
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import bulk_load
from backends import DEFAULT_PG_URL, LOOPBACK_HOSTS, Backend, create_backend
from results import DatabaseRun, Measurement
from scenarios import (
    FULL_DURATION_S,
    ID_LISTS,
    MANY,
    QUICK_DURATION_S,
    RAW_WARMUP,
    S5_SCENARIOS,
    WARMUP,
    Phase,
    Scenario,
    phases,
    raw_clients,
    raw_specs,
    warmup_s,
)
from server import Server, stop_all
from tools import (
    BENCH_DIR,
    CORES,
    background_cpu_percent,
    ensure_tools,
    first_line,
    loyalty_env,
    run_loyalty,
    say,
)
from wrk import WRK_THREADS, run_wrk

RESULTS_DIR = BENCH_DIR / "results"

VERIFY_TIMEOUT_S = 3600
LOYALTY_TIMEOUT_S = 600
VERIFY_ATTEMPTS = 3
VERIFY_UNAVAILABLE_EXIT = 2


# The targets of the issue, as ratios measured in the same run.
RATIO_MIN = 0.5
P99_OVER_P50_MAX = 4.0
S5_P50_RATIO_MAX = 1.2
WORKER_PEAK_MB_MAX = 150.0

BACKGROUND_CPU_WARN_PERCENT = 10.0

# --------------------------------------------------------------------------- the run


class Run:
    def __init__(self, args: argparse.Namespace, backend: Backend, workdir: Path, stamp: str):
        self.args = args
        self.backend = backend
        self.workdir = workdir
        self.secret = secrets.token_hex(32)
        self.password = secrets.token_urlsafe(18)
        self.result = DatabaseRun(
            database=backend.kind,
            mode="quick" if args.quick else "full",
            duration_s=args.duration,
            started_at=stamp,
            workers=CORES,
        )
        self.files = self._write_id_files()

    def _write_id_files(self) -> dict[str, Path]:
        files = {"token": self.workdir / f"token-{self.backend.kind}.txt"}
        for name, ids in ID_LISTS.items():
            files[name] = self.workdir / f"ids-{name}.txt"
            files[name].write_text("".join(f"{cid}\n" for cid in ids))
        return files

    @property
    def warmup_s(self) -> int:
        return warmup_s(self.args.quick, self.args.duration)

    def loyalty(
        self, url: str, *command: str, timeout_s: float = LOYALTY_TIMEOUT_S
    ) -> subprocess.CompletedProcess[str]:
        env = loyalty_env(LOYALTY_DATABASE_URL=url, LOYALTY_JWT_SECRET=self.secret)
        return run_loyalty(env, *command, timeout_s=timeout_s)

    def sample_background(self, moment: str) -> None:
        busy = background_cpu_percent()
        self.result.background_cpu_percent[moment] = busy
        if busy > BACKGROUND_CPU_WARN_PERCENT:
            say(f"{self.backend.kind}: warning: the machine was {busy:.0f}% busy before {moment}")

    @contextmanager
    def timed(self, phase: str) -> Iterator[None]:
        """Adds the time the block takes to the phase's entry in the results."""
        started = time.monotonic()
        try:
            yield
        finally:
            phases_s = self.result.phases_s
            phases_s[phase] = round(phases_s.get(phase, 0.0) + time.monotonic() - started, 1)

    def verify(self, url: str, phase: str) -> bool:
        """`loyalty verify` must exit 0. Exit 2 ("the database is unavailable") is not a
        broken invariant: on PostgreSQL it is what a check query that outlasts the service's
        statement timeout looks like (5,000,000 rows on a busy machine), so it is retried;
        every attempt is recorded."""
        done = None
        lines: list[str] = []
        for attempt in range(1, VERIFY_ATTEMPTS + 1):
            say(f"{self.backend.kind}: loyalty verify ({phase}), attempt {attempt} ...")
            started = time.monotonic()
            done = self.loyalty(url, "verify", timeout_s=VERIFY_TIMEOUT_S)
            elapsed = round(time.monotonic() - started, 1)
            lines = (done.stdout + done.stderr).strip().splitlines()
            self.result.verify.append(
                {
                    "phase": phase,
                    "attempt": attempt,
                    "ok": done.returncode == 0,
                    "exit_code": done.returncode,
                    "seconds": elapsed,
                    "summary": lines[-1] if lines else "",
                }
            )
            say(
                f"{self.backend.kind}: loyalty verify ({phase}): exit {done.returncode},"
                f" {elapsed}s — {lines[-1] if lines else ''}"
            )
            if done.returncode != VERIFY_UNAVAILABLE_EXIT:
                break
        if done is not None and done.returncode == 0:
            return True
        (self.workdir / f"verify-{phase}.txt").write_text("\n".join(lines))
        self.result.errors.append(f"loyalty verify failed after {phase}:\n" + "\n".join(lines))
        return False

    # ---- raw limit

    def raw_limits(self) -> None:
        kind = self.backend.kind
        self.sample_background("raw limit")
        with self.timed("raw limit"):
            url = self.backend.new_database("raw")
            migrated = self.loyalty(url, "db", "migrate")
            if migrated.returncode != 0:
                raise RuntimeError(f"loyalty db migrate failed: {migrated.stderr[-2000:]}")
            self.backend.seed_customers(url)
            say(f"{kind}: raw limit warm-up ({self.warmup_s}s)")
            self.backend.raw(url, RAW_WARMUP, self.warmup_s, self.workdir)
            for spec in raw_specs(kind, self.args.quick):
                raw = self.backend.raw(url, spec, self.args.duration, self.workdir)
                self.result.raw_limits.append(raw)
                say(
                    f"{kind}: raw {raw.tool} {spec.work} clients={spec.clients}:"
                    f" {raw.tps:,.0f} tx/s, p50 {raw.p50_ms:.2f} ms, p99 {raw.p99_ms:.2f} ms"
                )
            self.backend.drop(url)

    # ---- service phases

    def measure(
        self, server: Server, scenario: Scenario, duration_s: int, phase: str
    ) -> Measurement:
        """One scenario with wrk, then every worker's peak memory so far."""
        files = self.files
        result = run_wrk(
            server.base_url, scenario, files["token"], files[scenario.customers], duration_s
        )
        return Measurement(
            phase=phase,
            scenario=scenario.name,
            title=scenario.title,
            connections=scenario.connections,
            seconds=round(result.seconds, 2),
            requests=result.requests,
            rps=round(result.rps, 1),
            p50_ms=round(result.p50_ms, 3),
            p99_ms=round(result.p99_ms, 3),
            non2xx=result.non2xx,
            socket_errors=result.socket_errors,
            raw_work=scenario.raw_work,
            worker_peak_mb=server.worker_peak_mb(),
        )

    def service_phase(self, spec: Phase) -> None:
        kind = self.backend.kind
        phase = spec.name
        url = self.backend.new_database(phase)
        service = Server(url, self.workdir, f"{kind}-{phase}", self.secret, self.password)
        answered = 0  # 2xx answers to adjustments, counted by wrk
        in_flight_max = 0  # requests that may have been served after wrk stopped counting
        try:
            with self.timed(f"{phase}: start and create customers"):
                service.start()
                token = service.login()
                ids = [*ID_LISTS["random"], *spec.extra_customers]
                service.create_customers(token, ids)
                say(f"{kind} {phase}: service up on {service.base_url}, {len(ids)} customers")
            preloaded = 0
            if spec.bulk_load:
                service.stop()
                with self.timed(f"{phase}: bulk load"):
                    say(f"{kind} {phase}: bulk-loading {bulk_load.TOTAL_ADJUSTMENTS:,} adjustments")
                    self.backend.bulk_load(url)
                    preloaded = bulk_load.TOTAL_ADJUSTMENTS
                with self.timed(f"{phase}: verify after load"):
                    if not self.verify(url, f"{phase} after bulk load"):
                        raise RuntimeError("the bulk-loaded database does not pass loyalty verify")
                with self.timed(f"{phase}: start and create customers"):
                    service.start()
                    token = service.login()
            self.files["token"].write_text(token + "\n")
            self.sample_background(phase)
            with self.timed(f"{phase}: scenarios"):
                warm = self.measure(service, WARMUP, self.warmup_s, phase)
                self.result.warmups.append(warm)
                answered += (warm.requests - warm.non2xx) * WARMUP.adjustments_per_request
                in_flight_max += warm.connections * WARMUP.adjustments_per_request
                for scenario in spec.scenarios:
                    m = self.measure(service, scenario, self.args.duration, phase)
                    self.result.measurements.append(m)
                    answered += (m.requests - m.non2xx) * scenario.adjustments_per_request
                    in_flight_max += m.connections * scenario.adjustments_per_request
                    say(
                        f"{kind} {phase}: {m.scenario} {m.title}, c={m.connections}:"
                        f" {m.rps:,.0f} req/s, p50 {m.p50_ms:.2f} ms, p99 {m.p99_ms:.2f} ms,"
                        f" non-2xx {m.non2xx}, socket errors {m.socket_errors},"
                        f" workers {m.worker_peak_mb} MB"
                    )
        except Exception as error:
            tail = service.log_tail()
            raise RuntimeError(
                f"{phase}: {type(error).__name__}: {error}\n--- end of the service's log:\n{tail}"
            ) from error
        finally:
            service.stop()
        with self.timed(f"{phase}: verify"):
            self.verify(url, phase)
            recorded = self.backend.count_adjustments(url) - preloaded
        # Every 2xx must be recorded; at most the requests in flight when wrk stopped may be
        # recorded without wrk having counted their answer.
        counts_ok = answered <= recorded <= answered + in_flight_max
        self.result.ledger_counts.append(
            {
                "phase": phase,
                "answered_2xx": answered,
                "recorded": recorded,
                "in_flight_max": in_flight_max,
                "ok": counts_ok,
            }
        )
        if not counts_ok:
            self.result.errors.append(
                f"{phase}: {recorded} adjustments recorded for {answered} 2xx answers"
                f" (at most {in_flight_max} more may have been in flight)"
            )
        if not self.args.keep:
            self.backend.drop(url)

    def run(self) -> None:
        self.backend.ensure_running()
        self.result.versions = {
            "database": self.backend.server_version(),
            "wrk": first_line(["wrk", "--version"]).split(" [")[0].removeprefix("wrk "),
            "python": platform.python_version(),
            "sqlite3 module": sqlite3.sqlite_version,
        }
        self.result.versions.update(self.backend.tool_versions())
        self.raw_limits()
        for phase in phases(self.args.quick, self.args.skip_s5):
            self.service_phase(phase)


# --------------------------------------------------------------------------- analysis


def analyse(result: DatabaseRun) -> None:
    """Fills in the ratios to the raw limit, the S5 comparison and the targets' verdicts."""
    raw = {(r.work, r.clients): r for r in result.raw_limits}
    for m in result.measurements:
        match = raw.get((m.raw_work, raw_clients(result.database, m.connections)))
        if match is not None and match.tps > 0:
            m.raw_rps = match.tps
            m.ratio = round(m.rps / match.tps, 3)

    def find(
        phase: str, scenario: str, connections: int, title: str | None = None
    ) -> Measurement | None:
        for m in result.measurements:
            if (m.phase, m.scenario, m.connections) == (phase, scenario, connections) and (
                title is None or m.title == title
            ):
                return m
        return None

    targets: list[dict[str, Any]] = []

    def target(name: str, measured: str, verdict: bool | None) -> None:
        targets.append(
            {
                "target": name,
                "measured": measured,
                "verdict": "not measured" if verdict is None else ("PASS" if verdict else "FAIL"),
            }
        )

    tool = "pgbench" if result.database == "postgresql" else "the in-process loop"
    s1_many = find("main", "S1", MANY)
    target(
        f"S1 at {MANY} connections ≥ {RATIO_MIN}x {tool}",
        f"{s1_many.ratio}x" if s1_many and s1_many.ratio is not None else "—",
        None if s1_many is None or s1_many.ratio is None else s1_many.ratio >= RATIO_MIN,
    )
    if result.database == "postgresql":
        s3 = find("main", "S3", MANY)
        target(
            f"S3 ≥ {RATIO_MIN}x pgbench with all {MANY} clients on one row",
            f"{s3.ratio}x" if s3 and s3.ratio is not None else "—",
            None if s3 is None or s3.ratio is None else s3.ratio >= RATIO_MIN,
        )
    many = [m for m in result.measurements if m.connections == MANY]
    if many:
        spreads = [(m, m.p99_ms / m.p50_ms if m.p50_ms else float("inf")) for m in many]
        target(
            f"p99 ≤ {P99_OVER_P50_MAX:g}x p50 at {MANY} connections",
            ", ".join(f"{label(m)} {s:.1f}x" for m, s in spreads),
            all(s <= P99_OVER_P50_MAX for _, s in spreads),
        )
    else:
        target(f"p99 ≤ {P99_OVER_P50_MAX:g}x p50 at {MANY} connections", "—", None)
    everything = result.measurements + result.warmups
    bad = sum(m.non2xx for m in everything)
    socket_errors = sum(m.socket_errors for m in everything)
    target(
        "no non-2xx (nor socket error)",
        f"{bad} non-2xx, {socket_errors} socket errors in {sum(m.requests for m in everything):,}"
        " requests",
        bad == 0 and socket_errors == 0 and bool(everything),
    )
    result.s5 = []
    for scenario in S5_SCENARIOS:
        fresh = find("s5-fresh", "S5", scenario.connections, scenario.title)
        loaded = find("s5-loaded", "S5", scenario.connections, scenario.title)
        if fresh is None or loaded is None:
            continue
        ratio = round(loaded.p50_ms / fresh.p50_ms, 3) if fresh.p50_ms else None
        prior = "1,000,000" if scenario.customers == "big" else "4,000"
        result.s5.append(
            {
                "title": scenario.title,
                "connections": scenario.connections,
                "prior_adjustments": prior,
                "fresh_rps": fresh.rps,
                "fresh_p50_ms": fresh.p50_ms,
                "loaded_rps": loaded.rps,
                "loaded_p50_ms": loaded.p50_ms,
                "p50_ratio": ratio,
                "target": scenario.customers == "big",
            }
        )
    judged = [row for row in result.s5 if row["target"]]
    target(
        f"S5 p50 with 1,000,000 prior adjustments ≤ {S5_P50_RATIO_MAX}x fresh",
        ", ".join(f"{row['title']} {row['p50_ratio']}x" for row in judged) or "—",
        None
        if not judged
        else all(r["p50_ratio"] is not None and r["p50_ratio"] <= S5_P50_RATIO_MAX for r in judged),
    )
    peaks = [mb for m in everything for mb in m.worker_peak_mb.values()]
    target(
        f"peak memory per worker ≤ {WORKER_PEAK_MB_MAX:g} MB",
        f"max {max(peaks):.1f} MB over {len(peaks)} samples" if peaks else "—",
        None if not peaks else max(peaks) <= WORKER_PEAK_MB_MAX,
    )
    result.targets = targets


def label(m: Measurement) -> str:
    phase = {"main": "", "s5-fresh": " fresh", "s5-loaded": " 5M"}.get(m.phase, f" {m.phase}")
    return f"{m.scenario}{phase}"


def worker_peaks(result: DatabaseRun) -> dict[str, dict[str, float]]:
    """phase → worker pid → the highest VmHWM seen."""
    peaks: dict[str, dict[str, float]] = {}
    for m in result.measurements + result.warmups:
        phase = peaks.setdefault(m.phase, {})
        for pid, mb in m.worker_peak_mb.items():
            phase[pid] = max(phase.get(pid, 0.0), mb)
    return peaks


# --------------------------------------------------------------------------- output


def fmt(value: float | None, digits: int = 2) -> str:
    return "—" if value is None else f"{value:,.{digits}f}"


def render_markdown(result: DatabaseRun) -> str:
    tool = "pgbench" if result.database == "postgresql" else "sqlite3 loop"
    where = "database server" if result.database == "postgresql" else "disk and pragmas"
    lines = [
        f"## {result.database}: {result.mode} run, {result.started_at}",
        "",
        f"`loyalty serve --workers {result.workers}` on {CORES} cores; {result.duration_s} s per"
        f" scenario; wrk with {WRK_THREADS} thread. Versions: "
        + "; ".join(f"{k} {v}" for k, v in result.versions.items()),
        "",
        "| scenario | connections | req/s | p50 ms | p99 ms | non-2xx | raw limit req/s | ratio |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for m in result.measurements:
        errors = str(m.non2xx) + (f" (+{m.socket_errors} socket)" if m.socket_errors else "")
        lines.append(
            f"| {label(m)} {m.title} | {m.connections} | {fmt(m.rps, 0)} | {fmt(m.p50_ms)} |"
            f" {fmt(m.p99_ms)} | {errors} | {fmt(m.raw_rps, 0)} | {fmt(m.ratio)} |"
        )
    lines += [
        "",
        f"Raw limit ({tool}, same run, same {where}):",
        "",
        "| work | clients | customers | tx/s | p50 ms | p99 ms | failed |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in result.raw_limits:
        lines.append(
            f"| {r.work} | {r.clients} | {r.customers:,} | {fmt(r.tps, 0)} | {fmt(r.p50_ms)} |"
            f" {fmt(r.p99_ms)} | {r.failed} |"
        )
    if result.s5:
        lines += [
            "",
            "S5, ledger size: the same work on a fresh database and on one of 5,000,000"
            " adjustments:",
            "",
            "| work | connections | prior adjustments each | fresh req/s | fresh p50 ms"
            " | loaded req/s | loaded p50 ms | p50 ratio |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        for row in result.s5:
            lines.append(
                f"| {row['title']} | {row['connections']} | {row['prior_adjustments']} |"
                f" {fmt(row['fresh_rps'], 0)} | {fmt(row['fresh_p50_ms'])} |"
                f" {fmt(row['loaded_rps'], 0)} | {fmt(row['loaded_p50_ms'])} |"
                f" {fmt(row['p50_ratio'])} |"
            )
    lines += ["", "| target | measured | verdict |", "| --- | --- | --- |"]
    lines += [f"| {t['target']} | {t['measured']} | **{t['verdict']}** |" for t in result.targets]
    peaks = worker_peaks(result)
    verifies = [
        f"`loyalty verify` {v['phase']}"
        + (f" (attempt {v['attempt']})" if v["attempt"] > 1 else "")
        + f": {'ok' if v['ok'] else 'exit ' + str(v['exit_code'])} ({v['seconds']} s)"
        for v in result.verify
    ]
    counts = [
        f"{c['phase']}: {c['recorded']:,} adjustments recorded for {c['answered_2xx']:,} 2xx"
        f" answers (at most {c['in_flight_max']} more in flight) {'ok' if c['ok'] else 'FAILED'}"
        for c in result.ledger_counts
    ]
    notes = {
        "Peak memory per worker (VmHWM, MB)": "; ".join(
            f"{phase}: " + ", ".join(f"pid {pid} {mb:.1f}" for pid, mb in sorted(pids.items()))
            for phase, pids in peaks.items()
        ),
        "Checks": "; ".join(verifies + counts),
        "Background CPU use before each phase (1 s, harness idle; other processes' load"
        " skews every number)": ", ".join(
            f"{k} {v:.0f}%" for k, v in result.background_cpu_percent.items()
        ),
        "Phases": ", ".join(f"{name} {seconds:.0f} s" for name, seconds in result.phases_s.items()),
    }
    lines.append("")
    lines += [f"- {name}: {text}" for name, text in notes.items() if text]
    if result.errors:
        lines += ["", "**Errors:**", "", *(f"- {e.splitlines()[0]}" for e in result.errors)]
    return "\n".join(lines) + "\n"


def write_results(result: DatabaseRun, stamp: str) -> Path:
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    base = RESULTS_DIR / f"{stamp}-{result.database}"
    payload = asdict(result)
    payload["worker_peak_mb"] = worker_peaks(result)
    base.with_suffix(".json").write_text(json.dumps(payload, indent=2) + "\n")
    base.with_suffix(".md").write_text(render_markdown(result))
    return base


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Benchmark the Loyalty Points API.")
    parser.add_argument("--db", choices=("sqlite", "postgresql", "both"), default="both")
    parser.add_argument("--duration", type=int, help="seconds per scenario (default 20; quick 8)")
    parser.add_argument(
        "--quick", action="store_true", help="S1 at 64, S3, S4, the raw limits of S1 and S3; no S5"
    )
    parser.add_argument("--skip-s5", action="store_true", help="leave out S5 (the bulk load)")
    parser.add_argument(
        "--pg-url",
        default=os.environ.get("LOYALTY_BENCH_PG_URL", DEFAULT_PG_URL),
        help="maintenance database on a loopback address (default %(default)s)",
    )
    parser.add_argument(
        "--strict", action="store_true", help="exit 1 when a target is missed as well"
    )
    parser.add_argument(
        "--keep", action="store_true", help="keep the SQLite files of the run (not PostgreSQL's)"
    )
    args = parser.parse_args(argv)
    if args.duration is None:
        args.duration = QUICK_DURATION_S if args.quick else FULL_DURATION_S
    if args.duration < 1:
        parser.error("--duration must be at least 1 second")
    if urlsplit(args.pg_url).hostname not in LOOPBACK_HOSTS:
        parser.error("--pg-url must name a loopback address (127.0.0.1, localhost, ::1)")
    return args


def _terminate(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _terminate)
    kinds = ["sqlite", "postgresql"] if args.db == "both" else [args.db]
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    ensure_tools("postgresql" in kinds)
    workdir = Path(tempfile.mkdtemp(prefix="loyalty-bench-"))
    say(f"bench: {', '.join(kinds)}; {args.duration} s per scenario; work files in {workdir}")
    failed = False
    missed = False
    rendered = []
    try:
        for kind in kinds:
            backend = create_backend(kind, workdir, args.pg_url, stamp.lower())
            run = Run(args, backend, workdir, stamp)
            try:
                run.run()
            except Exception as error:  # record it, still write what was measured
                run.result.errors.append(f"{type(error).__name__}: {error}")
                say(f"{kind}: FAILED: {type(error).__name__}: {error}")
                print(traceback.format_exc(), flush=True)
            finally:
                stop_all()
                if kind == "postgresql" or not args.keep:
                    backend.drop_all()
            analyse(run.result)
            base = write_results(run.result, stamp)
            rendered.append(render_markdown(run.result))
            say(f"{kind}: results in {base}.md and {base}.json")
            if run.result.errors or any(
                t["verdict"] == "FAIL" and t["target"].startswith("no non-2xx")
                for t in run.result.targets
            ):
                failed = True
            if any(t["verdict"] == "FAIL" for t in run.result.targets):
                missed = True
    except (KeyboardInterrupt, SystemExit):
        say("bench: interrupted: stopping the server and dropping the scratch databases")
        raise
    finally:
        stop_all()
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    print()
    print("\n".join(rendered))
    if failed:
        print("bench: FAILED (see the errors and checks above)")
        return 1
    if missed and args.strict:
        print("bench: a target was missed (--strict)")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
