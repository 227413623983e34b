"""NATS publisher lag under S1's load, and what publishing costs S1.

For each database: S1 (wrk adjust.lua, 1,000 random customers, 64 connections) against a
`loyalty serve` without NATS, then against one with LOYALTY_NATS_URL set, on a fresh database
each. During the second, a NATS subscriber on the run's subjects notes when each
`points.adjusted` event arrives: its lag is that moment minus the event's `created_at` (the
commit's time, to the millisecond, on this machine's clock). Prints the two rates, their
ratio and the lag's p50, p90, p99 and max.

    .venv/bin/python bench/nats_lag.py [--db sqlite|postgresql|both] [--duration 20]

Needs NATS with JetStream at --nats-url (default nats://127.0.0.1:4222); the run's stream
(LOYALTY_BENCH_<id>, subjects loyaltybench<id>.>) is deleted at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import nats
import nats.js.errors
from common import percentile, psql
from nats.aio.msg import Msg
from scenarios import ID_LISTS, s1
from server import Server, stop_all
from tools import say
from wrk import WrkResult, run_wrk

CONNECTIONS = 64
WARMUP_S = 3
DRAIN_S = 60.0  # the most the subscriber waits for the last events after the load
QUIET_S = 3.0  # no event for this long after the load: the backlog is drained


@dataclass
class Arrivals:
    """What the subscriber saw: per points.adjusted event, its lag in milliseconds."""

    lags_ms: list[int] = field(default_factory=list)
    last_arrival: float = 0.0
    ready: threading.Event = field(default_factory=threading.Event)
    stop: threading.Event = field(default_factory=threading.Event)


def _created_at_ms(text: str) -> int:
    return int(datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp() * 1000)


def subscribe(nats_url: str, prefix: str, arrivals: Arrivals) -> None:
    """Runs in a thread: notes each event's lag until told to stop."""

    async def main() -> None:
        nc = await nats.connect(nats_url, connect_timeout=5)

        async def on_message(msg: Msg) -> None:
            now_ms = time.time() * 1000
            event = json.loads(msg.data)
            if event["type"] == "points.adjusted":
                arrivals.lags_ms.append(round(now_ms - _created_at_ms(event["created_at"])))
            arrivals.last_arrival = time.monotonic()

        await nc.subscribe(f"{prefix}.>", cb=on_message)
        await nc.flush()
        arrivals.ready.set()
        await asyncio.to_thread(arrivals.stop.wait)
        await nc.drain()

    asyncio.run(main())


def delete_stream(nats_url: str, stream: str) -> None:
    async def main() -> None:
        nc = await nats.connect(nats_url, connect_timeout=5)
        try:
            await nc.jetstream().delete_stream(stream)
        except nats.js.errors.NotFoundError:
            pass
        finally:
            await nc.close()

    asyncio.run(main())


def new_database(kind: str, workdir: Path, pg_url: str, label: str) -> str:
    if kind == "sqlite":
        return f"sqlite:///{workdir / label}.db"
    name = f"loyalty_bench_nats_{label}_{uuid.uuid4().hex[:8]}"
    psql(pg_url, f'CREATE DATABASE "{name}"')
    return f"{pg_url.rsplit('/', 1)[0]}/{name}"


def s1_run(server: Server, workdir: Path, duration_s: int) -> WrkResult:
    token = server.login()
    ids = list(ID_LISTS["random"])
    server.create_customers(token, ids)
    token_file, ids_file = workdir / "token", workdir / "ids"
    token_file.write_text(token)
    ids_file.write_text("\n".join(ids) + "\n")
    run_wrk(server.base_url, s1(16), token_file, ids_file, WARMUP_S)
    return run_wrk(server.base_url, s1(CONNECTIONS), token_file, ids_file, duration_s)


def measure(kind: str, args: argparse.Namespace, workdir: Path) -> None:
    secret, password = secrets.token_urlsafe(48), secrets.token_urlsafe(16)
    plain = Server(
        new_database(kind, workdir, args.pg_url, "plain"), workdir, "plain", secret, password
    )
    plain.start()
    try:
        without = s1_run(plain, workdir, args.duration)
    finally:
        plain.stop()

    tag = uuid.uuid4().hex[:8]
    stream, prefix = f"LOYALTY_BENCH_{tag}", f"loyaltybench{tag}"
    url = new_database(kind, workdir, args.pg_url, "nats")
    published = Server(url, workdir, "nats", secret, password)
    published.env.update(
        LOYALTY_NATS_URL=args.nats_url,
        LOYALTY_NATS_STREAM=stream,
        LOYALTY_NATS_SUBJECT_PREFIX=prefix,
    )
    arrivals = Arrivals()
    listener = threading.Thread(target=subscribe, args=(args.nats_url, prefix, arrivals))
    listener.start()
    try:
        if not arrivals.ready.wait(30):
            raise RuntimeError("the NATS subscriber did not start")
        published.start()
        with_nats = s1_run(published, workdir, args.duration)
        deadline = time.monotonic() + DRAIN_S
        while time.monotonic() < deadline and time.monotonic() - arrivals.last_arrival < QUIET_S:
            time.sleep(0.2)
    finally:
        published.stop()
        arrivals.stop.set()
        listener.join(timeout=30)
        delete_stream(args.nats_url, stream)

    lags = sorted(arrivals.lags_ms)
    say(
        f"{kind}: S1 at {CONNECTIONS} connections: {without.rps:.0f} req/s without NATS,"
        f" {with_nats.rps:.0f} with ({with_nats.rps / without.rps:.2f}x)"
    )
    say(
        f"{kind}: {len(lags)} points.adjusted events received; lag from created_at:"
        f" p50 {percentile(lags, 0.5)} ms, p90 {percentile(lags, 0.9)} ms,"
        f" p99 {percentile(lags, 0.99)} ms, max {lags[-1] if lags else 0} ms"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--db", choices=["sqlite", "postgresql", "both"], default="both")
    parser.add_argument("--duration", type=int, default=20, help="seconds of S1 per run")
    parser.add_argument("--nats-url", default="nats://127.0.0.1:4222")
    parser.add_argument("--pg-url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    args = parser.parse_args()
    kinds = ["sqlite", "postgresql"] if args.db == "both" else [args.db]
    try:
        with tempfile.TemporaryDirectory(prefix="loyalty-bench-nats-") as tmp:
            for kind in kinds:
                measure(kind, args, Path(tmp))
    finally:
        stop_all()
    return 0


if __name__ == "__main__":
    sys.exit(main())
