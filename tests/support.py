"""Helpers for the tests: running `loyalty` processes, logging in, making customers."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx

ADMIN_EMAIL = "admin@example.com"
ADMIN_PASSWORD = "correct horse battery staple"
JWT_SECRET = "test-secret-that-is-long-enough-for-hs256-0123456789"
LOYALTY = [sys.executable, "-m", "loyalty"]
STARTUP_TIMEOUT_S = 60.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def service_env(database_url: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOYALTY_")}
    env.update(
        LOYALTY_DATABASE_URL=database_url,
        LOYALTY_ADMIN_EMAIL=ADMIN_EMAIL,
        LOYALTY_ADMIN_PASSWORD=ADMIN_PASSWORD,
        LOYALTY_JWT_SECRET=JWT_SECRET,
    )
    env.update(extra)
    return env


def run_cli(
    database_url: str, *args: str, stdin: str | None = None, env: Mapping[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*LOYALTY, *args],
        input=stdin,
        capture_output=True,
        text=True,
        env=service_env(database_url, **(env or {})),
        timeout=300,
        check=False,
    )


@dataclass
class Server:
    """A real `loyalty serve` process (in its own process group, workers included)."""

    process: subprocess.Popen[bytes]
    port: int
    log_path: Path

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @classmethod
    @contextmanager
    def start(
        cls,
        database_url: str,
        workdir: Path,
        workers: int = 1,
        port: int | None = None,
        **env: str,
    ) -> Iterator[Server]:
        server = cls.launch(database_url, workdir, workers, port, **env)
        try:
            yield server
        finally:
            server.stop()

    @classmethod
    def launch(
        cls,
        database_url: str,
        workdir: Path,
        workers: int = 1,
        port: int | None = None,
        **env: str,
    ) -> Server:
        port = port or free_port()
        log_path = workdir / f"server-{port}-{uuid.uuid4().hex[:6]}.log"
        with open(log_path, "wb") as log:
            process = subprocess.Popen(
                [*LOYALTY, "serve", "--port", str(port), "--workers", str(workers)],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=service_env(database_url, **env),
                cwd=workdir,
                start_new_session=True,
            )
        server = cls(process, port, log_path)
        server.wait_ready()
        return server

    def wait_ready(self) -> None:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited early:\n{self.log()}")
            try:
                if httpx.get(f"{self.base_url}/health", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        self.kill()
        raise RuntimeError(f"server did not become ready:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def kill(self) -> None:
        """SIGKILL to the whole process group: the supervisor and every worker die at once."""
        with suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=30)

    def stop(self) -> None:
        if self.process.poll() is not None:
            return
        try:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.kill()
        except ProcessLookupError:
            pass


def login(server: Server, email: str, password: str) -> str:
    response = httpx.post(
        f"{server.base_url}/admin/auth/token",
        json={"email": email, "password": password},
        timeout=30,
    )
    response.raise_for_status()
    token: str = response.json()["token"]
    return token


@dataclass
class Backend:
    """One database kind with a running server and an admin token."""

    kind: str
    database_url: str
    server: Server
    token: str

    def client(self, token: str | None = None) -> httpx.Client:
        return httpx.Client(
            base_url=self.server.base_url,
            headers={"Authorization": f"Bearer {token or self.token}"},
            timeout=30,
        )

    def user_token(self, *scopes: str) -> str:
        """A token for a new admin user holding exactly `scopes`."""
        email = f"user-{uuid.uuid4().hex[:10]}@example.com"
        scope_args = [arg for scope in scopes for arg in ("--scope", scope)]
        result = run_cli(
            self.database_url,
            "user",
            "create",
            "--email",
            email,
            "--password",
            ADMIN_PASSWORD,
            *scope_args,
        )
        assert result.returncode == 0, result.stderr
        return login(self.server, email, ADMIN_PASSWORD)


@dataclass
class Cluster:
    """A fresh database of one kind with a `loyalty serve --workers N` on it."""

    kind: str
    url: str
    server: Server
    token: str
    workdir: Path

    @classmethod
    @contextmanager
    def start(cls, kind: str, url: str, workdir: Path, workers: int) -> Iterator[Cluster]:
        with Server.start(url, workdir, workers=workers) as server:
            yield cls(kind, url, server, login(server, ADMIN_EMAIL, ADMIN_PASSWORD), workdir)


def decoded(response: httpx.Response) -> Any:
    """A JSON body with every fractional number as an exact Decimal."""
    return json.loads(response.text, parse_float=Decimal)


async def full_history(
    client: httpx.AsyncClient, customer_id: str, base_url: str = ""
) -> list[Any]:
    """The customer's whole history, oldest first, in pages of 100."""
    items: list[Any] = []
    for _ in range(10_000):
        response = await client.get(
            f"{base_url}/admin/loyalty/points/{customer_id}/history",
            params={"order": "created_at", "limit": "100", "offset": str(len(items))},
        )
        assert response.status_code == 200, response.text
        page = decoded(response)
        items.extend(page["adjustments"])
        if not page["adjustments"] or len(items) >= page["count"]:
            assert len(items) == page["count"]
            break
    return items


def routed_operations() -> set[str]:
    """Every "METHOD /path" the service's router answers, read from the router of an app
    built in this process (no database is opened). HEAD, which every GET route also answers,
    is left out as the document leaves it out. A route that answers any method, such as a
    plain Starlette Mount, shows as "* /path", which no document lists."""
    from loyalty.app import create_app
    from loyalty.config import Settings
    from loyalty.http.routing import PathRoute

    app = create_app(Settings(database_url="sqlite:///unused.db"))
    operations = set()
    for route in app.routes:
        path = getattr(route, "path", "?")
        if isinstance(route, PathRoute):
            operations |= {f"{method} {path}" for method in route.declared_methods}
        else:
            methods = getattr(route, "methods", None) or {"*"}
            operations |= {f"{method} {path}" for method in methods - {"HEAD"}}
    return operations


def new_customer(client: httpx.Client, **fields: Any) -> dict[str, Any]:
    body = {"email": f"c-{uuid.uuid4().hex[:12]}@example.com", **fields}
    response = client.post("/admin/customers", json=body)
    assert response.status_code == 200, response.text
    customer: dict[str, Any] = response.json()["customer"]
    return customer


def adjust(
    client: httpx.Client, customer_id: str, delta: Any, reason: str | None = None, **params: str
) -> httpx.Response:
    body: dict[str, Any] = {"customer_id": customer_id, "delta": delta}
    if reason is not None:
        body["reason"] = reason
    return client.post("/admin/loyalty/points/adjust", json=body, params=params)


def adjust_raw(client: httpx.Client, body: str, **params: str) -> httpx.Response:
    """An adjust request with a body written by hand, for exact JSON numbers."""
    return client.post(
        "/admin/loyalty/points/adjust",
        content=body.encode(),
        headers={"Content-Type": "application/json"},
        params=params,
    )
