"""The harness's helpers for the machine and its commands: progress lines, tools, processes.

`say` prints a progress line stamped with the time since the harness started;
`ensure_tools` installs wrk and the PostgreSQL client tools with apt-get when they are
missing; `ensure_nats` starts nats-server (JetStream) for S8 when nothing answers; the
rest run the `loyalty` command with a clean environment, run a measuring tool with a
deadline, read a tool's version, find a free port, and sample how busy the machine is
while the harness does nothing.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit

BENCH_DIR = Path(__file__).resolve().parent
STARTED = time.monotonic()
CORES = len(os.sched_getaffinity(0))

# On top of a measuring tool's duration: starting, connecting, writing its logs.
TOOL_GRACE_S = 120
BACKGROUND_SAMPLE_S = 1.0
NATS_ANSWER_S = 2.0
NATS_START_WAIT_S = 30.0


def say(message: str) -> None:
    tenths = round((time.monotonic() - STARTED) * 10)
    minutes, tenths = divmod(tenths, 600)
    print(f"[{minutes:3d}:{tenths // 10:02d}.{tenths % 10}] {message}", flush=True)


def ensure_tools(need_postgresql: bool) -> None:
    """Installs wrk (and pgbench / psql) from Debian's packages when they are missing."""
    packages = []
    if shutil.which("wrk") is None:
        packages.append("wrk")
    if need_postgresql and not all(shutil.which(t) for t in ("pgbench", "psql", "pg_isready")):
        packages.append("postgresql-client")
    if packages:
        apt_install(packages)


def apt_install(packages: list[str]) -> None:
    sudo = [] if os.geteuid() == 0 else ["sudo"]
    if sudo and shutil.which("sudo") is None:
        raise RuntimeError(f"missing {', '.join(packages)}: install them with apt-get")
    say(f"installing {', '.join(packages)} with apt-get ...")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run([*sudo, "apt-get", "update", "-qq"], check=True, env=env)
    subprocess.run([*sudo, "apt-get", "install", "-y", "-qq", *packages], check=True, env=env)


def nats_answers(host: str, port: int) -> bool:
    """A NATS server greets every new connection with its INFO line."""
    try:
        with socket.create_connection((host, port), timeout=NATS_ANSWER_S) as sock:
            sock.settimeout(NATS_ANSWER_S)
            return sock.recv(4) == b"INFO"
    except OSError:
        return False


def ensure_nats(url: str) -> None:
    """Starts nats-server with JetStream at `url` (a loopback address) when nothing answers
    there, as .ci/run does, with the same store directory; it is left running, like the
    PostgreSQL cluster the harness starts."""
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 4222
    if nats_answers(host, port):
        return
    if shutil.which("nats-server") is None:
        apt_install(["nats-server"])
    store = Path(tempfile.gettempdir()) / "loyalty-ci-nats"
    store.mkdir(parents=True, exist_ok=True)
    say(f"starting nats-server with JetStream on {host}:{port} (store {store})")
    subprocess.Popen(
        [
            *("nats-server", "-js", "-a", host, "-p", str(port)),
            *("-sd", str(store), "-l", str(store / "nats-server.log")),
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + NATS_START_WAIT_S
    while not nats_answers(host, port):
        if time.monotonic() > deadline:
            raise RuntimeError(f"nats-server did not start on {host}:{port}; see {store}")
        time.sleep(0.5)


def loyalty_command() -> str:
    beside = Path(sys.executable).parent / "loyalty"
    if beside.exists():
        return str(beside)
    found = shutil.which("loyalty")
    if found is None:
        raise RuntimeError("the `loyalty` command is not installed (run `make bench`)")
    return found


def loyalty_env(**settings: str) -> dict[str, str]:
    """This environment without any LOYALTY_* variable, plus `settings` (LOYALTY_… = value),
    so that the service runs with its defaults but for what the harness sets."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOYALTY_")}
    env.update(settings)
    return env


def run_loyalty(
    env: dict[str, str], *command: str, timeout_s: float
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [loyalty_command(), *command],
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=timeout_s,
    )


def run_measuring_tool(args: list[str], name: str, duration_s: float) -> str:
    """Runs a tool that measures for `duration_s` (wrk, pgbench, sqlite_loop.py) and returns
    its standard output; raises with the end of its standard error when it fails."""
    done = subprocess.run(
        args, capture_output=True, text=True, check=False, timeout=duration_s + TOOL_GRACE_S
    )
    if done.returncode != 0:
        raise RuntimeError(f"{name} failed ({done.returncode}): {done.stderr.strip()[-2000:]}")
    return done.stdout


def first_line(args: list[str]) -> str:
    done = subprocess.run(args, capture_output=True, text=True, check=False, timeout=30)
    return (done.stdout or done.stderr).strip().splitlines()[0]


def background_cpu_percent() -> float:
    """How busy all cores are over one second (call it while the harness runs nothing)."""

    def counters() -> tuple[int, int]:
        values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
        idle = values[3] + values[4]  # idle + iowait
        return sum(values[:8]), idle

    total_0, idle_0 = counters()
    time.sleep(BACKGROUND_SAMPLE_S)
    total_1, idle_1 = counters()
    total = total_1 - total_0
    return round(100.0 * (1 - (idle_1 - idle_0) / total), 1) if total > 0 else 0.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port
