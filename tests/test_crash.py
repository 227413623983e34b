"""Crashes and shutdowns under load (SPEC section 6, invariant 5): SIGKILL of the whole
`loyalty serve --workers 2` process group while requests are in flight, restart, check;
and a SIGTERM that must let in-flight requests finish and exit 0. On SQLite and PostgreSQL.

A request that got a 200 is "acknowledged" and must be in the ledger. A request that was
sent but got no response (the connection died) is "unknown": it may or may not be recorded.
A request whose connection was refused was never sent and cannot be recorded.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest

from loyalty.db import Connection, open_database
from tests.support import (
    ADMIN_EMAIL,
    ADMIN_PASSWORD,
    Backend,
    Server,
    assert_verify,
    decoded,
    full_history_async,
    log_tail,
    login,
)

if TYPE_CHECKING:
    from tests.conftest import DatabaseFactory

WORKERS = 2
CLIENTS = 16
CUSTOMERS = 3
LOAD_S = 1.5
KILL_ROUNDS = 3
ADJUST_PATH = "/admin/loyalty/points/adjust"
REQUEST_TIMEOUT_S = 60.0
SHUTDOWN_LIMIT_S = 30.0


@dataclass
class Tally:
    """What the clients saw, per customer; accumulated over every round of a test."""

    acked: dict[str, dict[str, Decimal]] = field(default_factory=dict)  # customer → id → after
    unknown: Counter[str] = field(default_factory=Counter)
    refused: Counter[str] = field(default_factory=Counter)
    statuses: Counter[int] = field(default_factory=Counter)
    bad_responses: list[str] = field(default_factory=list)
    # Transport errors with the monotonic time they happened, to tell them from the kill.
    errors: list[tuple[float, str]] = field(default_factory=list)
    # When each 200 arrived (monotonic), to count those that finished after the signal.
    acked_at: list[float] = field(default_factory=list)

    def acked_count(self, customer_id: str) -> int:
        return len(self.acked.get(customer_id, {}))


@dataclass
class Site:
    kind: str
    url: str
    workdir: Path


@pytest.fixture
def site(databases: DatabaseFactory, tmp_path: Path) -> Site:
    """A fresh database of each kind, for one test."""
    return Site(databases.kind, databases.new_url(), tmp_path)


# --- helpers -------------------------------------------------------------------------------


def launch(site: Site) -> Server:
    return Server.launch(site.url, site.workdir, workers=WORKERS)


def new_customers(server: Server, token: str, count: int) -> list[str]:
    ids = []
    with httpx.Client(
        base_url=server.base_url, headers={"Authorization": f"Bearer {token}"}, timeout=30
    ) as client:
        for _ in range(count):
            body = {"email": f"crash-{uuid.uuid4().hex[:12]}@example.com"}
            response = client.post("/admin/customers", json=body)
            assert response.status_code == 200, response.text
            ids.append(response.json()["customer"]["id"])
    return ids


async def client_loop(
    client: httpx.AsyncClient,
    number: int,
    customers: Sequence[str],
    tally: Tally,
    stop: asyncio.Event,
) -> None:
    """Adjust +1 on the customers in turn until `stop`, or until the server goes away."""
    turn = number
    while not stop.is_set():
        customer_id = customers[turn % len(customers)]
        turn += 1
        body = f'{{"customer_id": {json.dumps(customer_id)}, "delta": 1}}'
        try:
            response = await client.post(
                ADJUST_PATH, content=body.encode(), headers={"Content-Type": "application/json"}
            )
        except (httpx.ConnectError, httpx.ConnectTimeout) as error:
            # No connection, so no request was sent: it cannot have been recorded.
            tally.refused[customer_id] += 1
            tally.errors.append((time.monotonic(), f"{type(error).__name__}: {error}"))
            return
        except httpx.TransportError as error:
            # Sent, but no response: the outcome is unknown.
            tally.unknown[customer_id] += 1
            tally.errors.append((time.monotonic(), f"{type(error).__name__}: {error}"))
            return
        tally.statuses[response.status_code] += 1
        if response.status_code != 200:
            tally.bad_responses.append(f"{response.status_code} {response.text[:300]}")
            continue
        tally.acked_at.append(time.monotonic())
        body_json = decoded(response)
        assert body_json["customer_id"] == customer_id
        tally.acked.setdefault(customer_id, {})[body_json["id"]] = Decimal(
            body_json["balance_after"]
        )


async def load_then(
    server: Server,
    token: str,
    customers: Sequence[str],
    tally: Tally,
    action: str,
) -> tuple[float, float]:
    """16 clients adjusting for LOAD_S seconds, then `server.kill()` or `server.stop()` while
    their requests are in flight. Returns (when the action began, how long it took)."""
    stop = asyncio.Event()
    async with httpx.AsyncClient(
        base_url=server.base_url,
        headers={"Authorization": f"Bearer {token}"},
        timeout=httpx.Timeout(REQUEST_TIMEOUT_S),
        limits=httpx.Limits(max_connections=CLIENTS, max_keepalive_connections=CLIENTS),
    ) as client:
        tasks = [
            asyncio.create_task(client_loop(client, n, customers, tally, stop))
            for n in range(CLIENTS)
        ]
        await asyncio.sleep(LOAD_S)
        began = time.monotonic()
        await asyncio.to_thread(server.kill if action == "kill" else server.stop)
        took = time.monotonic() - began
        stop.set()
        await asyncio.wait_for(asyncio.gather(*tasks), timeout=REQUEST_TIMEOUT_S + 10)
    return began, took


def check_after_restart(server: Server, token: str, customers: Sequence[str], tally: Tally) -> str:
    """Every acknowledged adjustment is in the ledger as acknowledged; each balance counts its
    history and lies within [acknowledged, acknowledged + unknown]. Returns the figures."""

    async def main() -> list[str]:
        figures = []
        async with httpx.AsyncClient(
            base_url=server.base_url, headers={"Authorization": f"Bearer {token}"}, timeout=30
        ) as client:
            for customer_id in customers:
                history = await full_history_async(client, customer_id)
                response = await client.get(f"/admin/loyalty/points/{customer_id}")
                assert response.status_code == 200, response.text
                balance = Decimal(decoded(response)["balance"])
                recorded = {item["id"]: Decimal(item["balance_after"]) for item in history}
                acked = tally.acked.get(customer_id, {})
                missing = sorted(set(acked) - set(recorded))
                assert not missing, f"{len(missing)} acknowledged adjustments lost: {missing[:5]}"
                for adjustment_id, balance_after in acked.items():
                    assert recorded[adjustment_id] == balance_after, adjustment_id
                previous = Decimal(0)
                for item in history:
                    assert Decimal(item["delta"]) == 1
                    assert Decimal(item["balance_after"]) == previous + 1
                    previous += 1
                assert [item["id"] for item in history] == sorted(recorded)
                assert balance == len(history)
                low = len(acked)
                high = low + tally.unknown[customer_id]
                assert low <= balance <= high, (customer_id, low, balance, high)
                figures.append(
                    f"{customer_id[-6:]}: acked {low}, unknown {tally.unknown[customer_id]},"
                    f" refused {tally.refused[customer_id]}, balance {balance}"
                )
        return figures

    return "; ".join(asyncio.run(main()))


# --- tests ---------------------------------------------------------------------------------


def test_sigkill_under_load_loses_no_acknowledged_adjustment(
    site: Site, launched: list[Server]
) -> None:
    """SIGKILL of every server process mid-load, 3 times: no 200 is lost, nothing is invented."""
    launched.append(launch(site))
    token = login(launched[-1], ADMIN_EMAIL, ADMIN_PASSWORD)
    customers = new_customers(launched[-1], token, CUSTOMERS)
    tally = Tally()
    print()
    for round_number in range(1, KILL_ROUNDS + 1):
        server = launched[-1]
        before = sum(tally.statuses.values())
        errors_before = len(tally.errors)
        killed_at, _took = asyncio.run(load_then(server, token, customers, tally, "kill"))
        assert server.process.returncode is not None
        assert not tally.bad_responses, (tally.bad_responses[:5], log_tail(server))
        early = [message for at, message in tally.errors[errors_before:] if at < killed_at]
        assert not early, (f"transport errors before the kill: {early[:5]}", log_tail(server))

        launched.append(launch(site))  # the restart: same database, a new process group
        figures = check_after_restart(launched[-1], token, customers, tally)
        print(
            f"[{site.kind}] kill round {round_number}:"
            f" {sum(tally.statuses.values()) - before} responses this round,"
            f" totals acked {sum(len(a) for a in tally.acked.values())},"
            f" unknown {sum(tally.unknown.values())}, refused {sum(tally.refused.values())}"
            f" | {figures}"
        )
        assert_verify(site.url)
    assert sum(len(a) for a in tally.acked.values()) > 0, "the load never got a 200"


def test_sigterm_under_load_finishes_in_flight_requests_and_exits_0(
    site: Site, launched: list[Server]
) -> None:
    """SIGTERM mid-load: the server exits 0 by itself, every response it sent was a 200."""
    server = launch(site)
    launched.append(server)
    token = login(server, ADMIN_EMAIL, ADMIN_PASSWORD)
    customers = new_customers(server, token, CUSTOMERS)
    tally = Tally()
    began, took = asyncio.run(load_then(server, token, customers, tally, "stop"))
    error_kinds = Counter(message.split(":", 1)[0] for _at, message in tally.errors)
    print(
        f"\n[{site.kind}] SIGTERM: exited in {took:.2f}s with code {server.process.returncode};"
        f" statuses {dict(tally.statuses)}, 200s after the signal"
        f" {sum(at > began for at in tally.acked_at)}, unknown {sum(tally.unknown.values())},"
        f" refused {sum(tally.refused.values())}, errors {dict(error_kinds)}"
    )
    assert server.process.returncode == 0, (
        f"exit code {server.process.returncode} after {took:.1f}s",
        log_tail(server),
    )
    assert took < SHUTDOWN_LIMIT_S
    assert tally.statuses[200] > 0
    assert set(tally.statuses) == {200}, (tally.bad_responses[:5], log_tail(server))
    assert "Traceback" not in server.log(), log_tail(server)

    launched.append(launch(site))
    figures = check_after_restart(launched[-1], token, customers, tally)
    print(f"[{site.kind}] after SIGTERM and restart: {figures}")
    assert_verify(site.url)


# --- what makes a commit durable ------------------------------------------------------------

# What each kind of database must say on every connection the service writes or reads with:
# SQLite in WAL mode syncing the WAL at every commit (FULL; NORMAL may lose the last commits
# on a power cut, which no SIGKILL shows); PostgreSQL flushing its WAL before a commit returns.
DURABILITY: dict[str, list[tuple[str, set[Any]]]] = {
    "sqlite": [("PRAGMA synchronous", {2}), ("PRAGMA journal_mode", {"wal"})],
    "postgresql": [
        ("SHOW synchronous_commit", {"on", "local", "remote_write", "remote_apply"}),
        ("SHOW fsync", {"on"}),
    ],
}


def test_every_connection_of_the_service_commits_durably(backend: Backend) -> None:
    """The database opened as the service opens it (loyalty.db.open_database) syncs every
    commit to disk on its write path (write() and the hot path's transact()) and on its read
    connections: a setting that a crash of the process cannot reveal, only a crash of the
    machine."""

    async def ask(conn: Connection) -> list[Any]:
        return [await conn.fetchval(query) for query, _ in DURABILITY[backend.kind]]

    async def main() -> dict[str, list[Any]]:
        db = await open_database(backend.database_url)
        try:
            async with db.write() as conn:
                write = await ask(conn)
            transact = await db.transact(ask)
            async with db.read() as conn:
                read = await ask(conn)
            async with db.read(snapshot=True) as conn:
                snapshot = await ask(conn)
        finally:
            await db.close()
        return {"write": write, "transact": transact, "read": read, "snapshot": snapshot}

    for path, answers in asyncio.run(main()).items():
        for (query, allowed), answer in zip(DURABILITY[backend.kind], answers, strict=True):
            value = answer.lower() if isinstance(answer, str) else answer
            assert value in allowed, f"{path}: {query} is {answer!r}, not one of {allowed}"
