"""The `loyalty serve` process under test, started and stopped the way production runs it.

The server runs with `--workers <cores>` and the service's defaults (only the database URL,
the admin's email and password and the JWT secret set; every other LOYALTY_* variable
removed; S8 adds its NATS settings), on a free loopback port, in a process group of its own
so that stopping it always takes its workers and helpers along. It also finds its worker
processes and reads their peak memory, logs in, creates the bench customers through the
API, makes S7's few adjustments, reads a balance at a point in time and creates S8's webhook
endpoint.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import suppress
from pathlib import Path

import httpx
from tools import CORES, free_port, loyalty_command, loyalty_env, say

ADMIN_EMAIL = "bench@example.com"
STARTUP_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 45.0
CUSTOMER_CREATORS = 8
SEED_GAP_S = 0.003  # between S7's few adjustments, so that each has a millisecond of its own


class Server:
    """`loyalty serve` in its production configuration, in a process group of its own."""

    running: list[Server] = []  # noqa: RUF012  (stopped on any exit)

    def __init__(
        self,
        database_url: str,
        workdir: Path,
        label: str,
        secret: str,
        password: str,
        settings: dict[str, str] | None = None,  # more LOYALTY_* variables (S8's NATS)
    ):
        self.env = loyalty_env(
            LOYALTY_DATABASE_URL=database_url,
            LOYALTY_ADMIN_EMAIL=ADMIN_EMAIL,
            LOYALTY_ADMIN_PASSWORD=password,
            LOYALTY_JWT_SECRET=secret,
            **(settings or {}),
        )
        self.log_path = workdir / f"serve-{label}.log"
        self.password = password
        self.process: subprocess.Popen[bytes] | None = None
        self.port = 0

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.port = free_port()
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [
                    *(loyalty_command(), "serve", "--host", "127.0.0.1"),
                    *("--port", str(self.port), "--workers", str(CORES)),
                ],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        Server.running.append(self)
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"loyalty serve exited early:\n{self.log_tail()}")
            with suppress(httpx.HTTPError):
                healthy = httpx.get(f"{self.base_url}/health", timeout=2).status_code == 200
                if healthy and len(self.workers()) == CORES:
                    return
            time.sleep(0.2)
        raise RuntimeError(f"loyalty serve did not become healthy:\n{self.log_tail()}")

    def log_tail(self) -> str:
        with suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-30:])
        return ""

    def workers(self) -> list[int]:
        """The worker processes: children of `loyalty serve` started by multiprocessing."""
        if self.process is None:
            return []
        found = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                stat = (entry / "stat").read_text()
                cmdline = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            parent = int(stat.rsplit(")", 1)[1].split()[1])
            if parent == self.process.pid and b"spawn_main" in cmdline:
                found.append(int(entry.name))
        return sorted(found)

    def worker_peak_mb(self) -> dict[str, float]:
        """Each worker's peak resident memory so far (VmHWM), in MB (10^6 bytes)."""
        peaks = {}
        for pid in self.workers():
            with suppress(OSError):
                for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                    if line.startswith("VmHWM:"):
                        peaks[str(pid)] = round(int(line.split()[1]) * 1024 / 1e6, 1)
        return peaks

    def login(self) -> str:
        response = httpx.post(
            f"{self.base_url}/admin/auth/token",
            json={"email": ADMIN_EMAIL, "password": self.password},
            timeout=30,
        )
        response.raise_for_status()
        token: str = response.json()["token"]
        return token

    def create_customers(self, token: str, ids: list[str]) -> None:
        headers = {"Authorization": f"Bearer {token}"}
        with httpx.Client(base_url=self.base_url, headers=headers, timeout=30) as client:

            def create(cid: str) -> None:
                response = client.post(
                    "/admin/customers", json={"id": cid, "email": f"{cid}@example.com"}
                )
                if response.status_code != 200:
                    raise RuntimeError(f"creating {cid}: {response.status_code} {response.text}")

            with ThreadPoolExecutor(CUSTOMER_CREATORS) as pool:
                list(pool.map(create, ids))

    def adjust_several(self, token: str, customer: str, count: int) -> None:
        """`count` adjustments of +1 point on `customer`, one after the other."""
        headers = {"Authorization": f"Bearer {token}"}
        with httpx.Client(base_url=self.base_url, headers=headers, timeout=30) as client:
            for _ in range(count):
                response = client.post(
                    "/admin/loyalty/points/adjust",
                    json={"customer_id": customer, "delta": 1, "reason": "bench"},
                )
                if response.status_code != 200:
                    raise RuntimeError(
                        f"adjusting {customer}: {response.status_code} {response.text}"
                    )
                time.sleep(SEED_GAP_S)

    def balance_as_of(self, token: str, customer: str, as_of: str) -> httpx.Response:
        return httpx.get(
            f"{self.base_url}/admin/loyalty/points/{customer}",
            params={"as_of": as_of},
            headers={"Authorization": f"Bearer {token}"},
            timeout=30,
        )

    def create_webhook(self, token: str, url: str) -> tuple[str, str]:
        """A webhook endpoint for every event type at `url`; returns its id and secret."""
        response = httpx.post(
            f"{self.base_url}/admin/webhooks",
            json={"url": url, "description": "bench S8"},
            headers={"Authorization": f"Bearer {token}"},
            timeout=30,
        )
        if not response.is_success:
            raise RuntimeError(f"creating a webhook: {response.status_code} {response.text}")
        webhook = response.json()["webhook"]
        return str(webhook["id"]), str(webhook["secret"])

    def stop(self) -> None:
        if self.process is None:
            return
        process, self.process = self.process, None
        if process.poll() is None:
            with suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                say("loyalty serve did not stop in time: killing its process group")
        # The group is this server's own (start_new_session): its workers and helpers.
        with suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)
        if self in Server.running:
            Server.running.remove(self)


def stop_all() -> None:
    """Stops every server still running (on any exit of a phase or of the harness)."""
    for server in list(Server.running):
        server.stop()
