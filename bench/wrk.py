"""Running wrk against the server for one scenario, and reading what it printed.

wrk runs with one thread (the service gets the cores), `--timeout 10s` (S6: 60 s) and
`--latency`, whose 50% and 99% lines give p50 and p99. The Lua scripts (adjust.lua,
balance.lua, bulk.lua) count every status outside 2xx themselves, because wrk counts only
some of them, and print one `BENCH_RESULT` line with the requests, the non-2xx answers and
the duration.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from scenarios import Scenario
from tools import BENCH_DIR, run_measuring_tool

WRK_THREADS = 1  # leaves the cores to the service; one wrk thread drives 64 connections

_WRK_LATENCY = re.compile(r"^\s*(50|99)%\s+([\d.]+)(us|ms|s|m|h)\s*$", re.M)
_WRK_RPS = re.compile(r"^Requests/sec:\s+([\d.]+)", re.M)
_WRK_NON2XX = re.compile(r"Non-2xx or 3xx responses: (\d+)")
_WRK_SOCKET = re.compile(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)")
_UNIT_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0, "h": 3_600_000.0}


@dataclass(frozen=True)
class WrkResult:
    rps: float
    p50_ms: float
    p99_ms: float
    requests: int
    seconds: float
    non2xx: int
    socket_errors: int  # connect, read and write errors and timeouts
    item_errors: int  # bulk.lua: items of 2xx bulks that failed, or were not answered


def parse_wrk(output: str) -> WrkResult:
    """Requests/sec and the p50 / p99 of `--latency`, and the BENCH_RESULT of the Lua script."""
    marker = next((line for line in output.splitlines() if line.startswith("BENCH_RESULT ")), None)
    rps = _WRK_RPS.search(output)
    percentiles = {
        m.group(1): float(m.group(2)) * _UNIT_MS[m.group(3)] for m in _WRK_LATENCY.finditer(output)
    }
    if marker is None or rps is None or set(percentiles) != {"50", "99"}:
        raise RuntimeError(f"could not read wrk's output:\n{output[-3000:]}")
    lua = json.loads(marker.removeprefix("BENCH_RESULT "))
    socket_errors = _WRK_SOCKET.search(output)
    wrk_non2xx = _WRK_NON2XX.search(output)
    return WrkResult(
        rps=float(rps.group(1)),
        p50_ms=percentiles["50"],
        p99_ms=percentiles["99"],
        requests=lua["requests"],
        seconds=lua["duration_us"] / 1e6,
        # wrk's own count misses 1xx and 3xx; the script counts every status outside 2xx.
        non2xx=max(lua["non2xx"], int(wrk_non2xx.group(1)) if wrk_non2xx else 0),
        socket_errors=sum(int(g) for g in socket_errors.groups()) if socket_errors else 0,
        item_errors=int(lua.get("item_errors", 0)),
    )


def run_wrk(
    base_url: str,
    scenario: Scenario,
    token_file: Path,
    ids_file: Path,
    duration_s: int,
    script_args: Sequence[str] = (),
) -> WrkResult:
    """Drives the server at `base_url` with `scenario` for `duration_s`; `script_args` follow
    the token and id files on the script's command line (bulk.lua's items and nonce,
    balance.lua's query)."""
    args = [
        "wrk",
        f"--threads={min(WRK_THREADS, scenario.connections)}",
        f"--connections={scenario.connections}",
        f"--duration={duration_s}s",
        f"--timeout={scenario.timeout_s}s",
        "--latency",
        f"--script={BENCH_DIR / scenario.script}",
        base_url,
        "--",
        str(token_file),
        str(ids_file),
    ]
    if scenario.history:
        args.append("history")
    args += script_args
    return parse_wrk(run_measuring_tool(args, "wrk", duration_s))
