"""The benchmark harness behind `make bench` and `make bench-quick` (see bench/README.md).

For each database (SQLite, PostgreSQL) it measures the raw limit of the database itself
(pgbench, or a tight sqlite3 loop), then starts `loyalty serve` in its production
configuration on a fresh database, creates customers through the API, drives it with wrk
for a fixed duration per scenario, records each worker's peak memory, stops it and runs
`loyalty verify`. S5 repeats the adjust scenarios on a database bulk-loaded with 5,000,000
adjustments and on a fresh one; S7 reads a balance as_of the middle of a customer's history
on a fresh database and on a bulk-loaded one; S8 is S1 on a server that also publishes its
events to NATS and delivers them to a webhook endpoint, and measures their lag. Results: a
Markdown table and a JSON file per database in bench/results/, and the same table on
standard output. This module is the entry point
(options, signals, the loop over the databases, the exit code); the work is in the modules
beside it (bench/README.md, "Layout").

The standard library and httpx (S8: the service's own nats-py, standardwebhooks and uvloop);
wrk, pgbench and psql are run as commands.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit

from backends import DEFAULT_PG_URL, LOOPBACK_HOSTS, create_backend
from deliveries import stop_receivers
from report import analyse, checks_failed, render_markdown, targets_missed, write_results
from runner import RunOptions, run_database
from scenarios import FULL_DURATION_S, QUICK_DURATION_S, SCENARIO_NAMES, phases
from server import stop_all
from tools import ensure_nats, ensure_tools, say

DEFAULT_NATS_URL = "nats://127.0.0.1:4222"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Benchmark the Loyalty Points API.")
    parser.add_argument("--db", choices=("sqlite", "postgresql", "both"), default="both")
    parser.add_argument("--duration", type=int, help="seconds per scenario (default 20; quick 8)")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="S1 at 64, S3, S4, a short S6 and S7, the raw limits of S1, S3 and S6; no S5",
    )
    parser.add_argument(
        "--skip-s5", action="store_true", help="leave out S5 (and its 5,000,000-row bulk load)"
    )
    parser.add_argument(
        "--pg-url",
        default=os.environ.get("LOYALTY_BENCH_PG_URL", DEFAULT_PG_URL),
        help="maintenance database on a loopback address (default %(default)s)",
    )
    parser.add_argument(
        "--nats-url",
        default=os.environ.get("LOYALTY_BENCH_NATS_URL", DEFAULT_NATS_URL),
        help="S8's NATS server with JetStream, on a loopback address (default %(default)s)",
    )
    parser.add_argument(
        "--only",
        type=_scenario_names,
        help="just these scenarios, comma-separated (e.g. S1,S8), and the raw limits they need",
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
    if args.only is not None and not phases(args.quick, args.skip_s5, args.only):
        parser.error("--only names no scenario that this mode runs (--quick: no S2 or S5)")
    if urlsplit(args.nats_url).hostname not in LOOPBACK_HOSTS:
        parser.error("--nats-url must name a loopback address (127.0.0.1, localhost, ::1)")
    return args


def _scenario_names(text: str) -> frozenset[str]:
    names = frozenset(name.strip().upper() for name in text.split(",") if name.strip())
    unknown = sorted(names - set(SCENARIO_NAMES))
    if not names or unknown:
        raise argparse.ArgumentTypeError(
            f"expected scenario names among {', '.join(SCENARIO_NAMES)}"
            + (f"; unknown: {', '.join(unknown)}" if unknown else "")
        )
    return names


def _terminate(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _terminate)
    kinds = ["sqlite", "postgresql"] if args.db == "both" else [args.db]
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    options = RunOptions(
        quick=args.quick,
        duration_s=args.duration,
        skip_s5=args.skip_s5,
        keep=args.keep,
        nats_url=args.nats_url,
        only=args.only,
    )
    ensure_tools("postgresql" in kinds)
    if any(p.integrations for p in phases(args.quick, args.skip_s5, args.only)):
        ensure_nats(args.nats_url)
    workdir = Path(tempfile.mkdtemp(prefix="loyalty-bench-"))
    say(f"bench: {', '.join(kinds)}; {args.duration} s per scenario; work files in {workdir}")
    failed = False
    missed = False
    rendered = []
    try:
        for kind in kinds:
            backend = create_backend(kind, workdir, args.pg_url, stamp.lower())
            result = run_database(backend, workdir, stamp, options)
            analyse(result)
            base = write_results(result, stamp)
            rendered.append(render_markdown(result))
            say(f"{kind}: results in {base}.md and {base}.json")
            failed = failed or checks_failed(result)
            missed = missed or targets_missed(result)
    except (KeyboardInterrupt, SystemExit):
        say("bench: interrupted: stopping the server and dropping the scratch databases")
        raise
    finally:
        stop_all()
        stop_receivers()
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
