"""Webhooks across a crash (SPEC 8.2: at least once, also across restarts and crashes): the
whole `loyalty serve --workers 2` process group is SIGKILLed while adjustments stream in and
their events stream out to a live receiver in the test; after a restart on the same
database, every committed change's event reaches the receiver at least once, each request
signed validly. On SQLite and PostgreSQL.

Events sent but not yet recorded when the server died are sent again (same webhook-id, the
event's id): repeats are allowed, a missing event is not. The worker that held the
dispatcher's lease died holding it, so the restarted server takes over once it runs out
(15 s); the waits allow for that and stay bounded.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import httpx

from tests.receiver import Receiver, bad_signatures, receiving
from tests.support import (
    ADJUST_PATH,
    ADMIN_EMAIL,
    ADMIN_PASSWORD,
    Server,
    eventually,
    log_tail,
    login,
    table_rows,
)

if TYPE_CHECKING:
    from tests.conftest import DatabaseFactory

WORKERS = 2
CLIENTS = 8
CUSTOMERS = 3
LOAD_BEFORE_KILL_S = 1.0
# The receiver answers each request this late, so that at the kill some are sent and not yet
# recorded: those are the ones a restart must send again.
ANSWER_DELAY_S = 0.2
DELIVERY_WAIT_S = 90.0  # the lease of the dead worker (15 s) plus a very busy machine


@dataclass
class Acked:
    """The adjustments the clients saw answered 200, by id."""

    ids: set[str] = field(default_factory=set)
    failures: list[str] = field(default_factory=list)


async def adjust_until_gone(
    client: httpx.AsyncClient, number: int, customers: Sequence[str], acked: Acked
) -> None:
    """Adjust +1 on the customers in turn until the server stops answering."""
    turn = number
    while True:
        customer_id = customers[turn % len(customers)]
        turn += 1
        body = json.dumps({"customer_id": customer_id, "delta": 1})
        try:
            response = await client.post(
                ADJUST_PATH, content=body.encode(), headers={"Content-Type": "application/json"}
            )
        except httpx.TransportError:
            return  # the server is gone: this request's outcome is unknown
        if response.status_code != 200:
            acked.failures.append(f"{response.status_code} {response.text[:200]}")
            continue
        acked.ids.add(response.json()["id"])


async def stream_then_kill(
    server: Server, token: str, customers: Sequence[str], receiver: Receiver
) -> tuple[Acked, set[str]]:
    """CLIENTS adjusting for a while, then SIGKILL of the process group while they go on;
    also returns the ids of the events the receiver had got when the signal went."""
    acked = Acked()
    async with httpx.AsyncClient(
        base_url=server.base_url,
        headers={"Authorization": f"Bearer {token}"},
        timeout=30,
        limits=httpx.Limits(max_connections=CLIENTS),
    ) as client:
        tasks = [
            asyncio.create_task(adjust_until_gone(client, n, customers, acked))
            for n in range(CLIENTS)
        ]
        await asyncio.sleep(LOAD_BEFORE_KILL_S)
        received_at_kill = receiver.event_ids()
        await asyncio.to_thread(server.kill)
        await asyncio.wait_for(asyncio.gather(*tasks), timeout=60)
    return acked, received_at_kill


def test_every_committed_event_arrives_after_sigkill_mid_stream(
    databases: DatabaseFactory, tmp_path: Path, launched: list[Server]
) -> None:
    """Kill -9 while events are being delivered, restart: every committed event (read from
    the database) arrives at least once, with a valid signature; every acknowledged
    adjustment is among them."""
    url = databases.new_url()
    with receiving(delay_s=ANSWER_DELAY_S) as receiver:
        server = Server.launch(url, tmp_path, workers=WORKERS)
        launched.append(server)
        token = login(server, ADMIN_EMAIL, ADMIN_PASSWORD)
        with httpx.Client(
            base_url=server.base_url, headers={"Authorization": f"Bearer {token}"}, timeout=30
        ) as client:
            response = client.post("/admin/webhooks", json={"url": receiver.url})
            assert response.status_code == 200, response.text
            secret = response.json()["webhook"]["secret"]
            customers = []
            for _ in range(CUSTOMERS):
                body = {"email": f"hook-{uuid.uuid4().hex[:12]}@example.com"}
                created = client.post("/admin/customers", json=body)
                assert created.status_code == 200, created.text
                customers.append(created.json()["customer"]["id"])

        acked, received_at_kill = asyncio.run(stream_then_kill(server, token, customers, receiver))
        assert not acked.failures, acked.failures[:5]
        assert acked.ids, "no adjustment was acknowledged before the kill"
        assert received_at_kill, "nothing was being delivered when the server died"

        restarted = Server.launch(url, tmp_path, workers=WORKERS)
        launched.append(restarted)
        committed = table_rows(url, "loyalty_events", order="position")
        event_ids = {row["id"] for row in committed}
        adjusted = {row["subject_id"] for row in committed if row["type"] == "points.adjusted"}
        assert event_ids - received_at_kill, "the kill left nothing to deliver: it proves nothing"
        missing_acked = acked.ids - adjusted
        assert not missing_acked, f"acknowledged adjustments without an event: {missing_acked}"

        started = time.monotonic()
        try:
            eventually(
                lambda: True if event_ids <= receiver.event_ids() else None,
                DELIVERY_WAIT_S,
                f"all {len(event_ids)} committed events at the receiver",
            )
        except AssertionError:
            missing = event_ids - receiver.event_ids()
            raise AssertionError(
                f"{len(missing)} of {len(event_ids)} events never arrived\n"
                + log_tail(server, restarted)
            ) from None
        took = time.monotonic() - started
        requests = receiver.received()
        assert bad_signatures(requests, secret) == []
        repeats = len(requests) - len(receiver.event_ids())
        print(
            f"{databases.kind}: {len(event_ids)} events, {len(received_at_kill)} received before"
            f" the kill, {repeats} sent again, {len(receiver.incomplete)} cut short by the kill,"
            f" all in within {took:.1f}s of the restart"
        )
