"""The ledger under real concurrency (SPEC section 6): many requests in flight at once on
one customer or many, against `loyalty serve --workers 2`, on SQLite and PostgreSQL, and
against two server processes sharing one PostgreSQL database.

Every expected amount is a Decimal; responses are decoded with parse_float=Decimal.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
import uuid
from collections import Counter
from collections.abc import Sequence
from decimal import Decimal
from typing import TYPE_CHECKING, Any

import httpx

from tests.support import (
    Backend,
    Server,
    assert_verify,
    decoded,
    full_history_async,
    log_tail,
    statuses,
)

if TYPE_CHECKING:
    from tests.conftest import ServerPair

IN_FLIGHT = 64
DELTAS = ("1", "2.5", "0.01", "10")
ADJUST_PATH = "/admin/loyalty/points/adjust"
REQUEST_TIMEOUT_S = 60.0
LOAD_TIMEOUT_S = 120.0


# --- helpers -------------------------------------------------------------------------------


def async_client(server: Server, token: str, connections: int = IN_FLIGHT) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        base_url=server.base_url,
        headers={"Authorization": f"Bearer {token}"},
        timeout=httpx.Timeout(REQUEST_TIMEOUT_S),
        limits=httpx.Limits(max_connections=connections, max_keepalive_connections=connections),
    )


async def create_customers(client: httpx.AsyncClient, count: int) -> list[str]:
    ids = []
    for _ in range(count):
        body = {"email": f"conc-{uuid.uuid4().hex[:12]}@example.com"}
        response = await client.post("/admin/customers", json=body)
        assert response.status_code == 200, response.text
        ids.append(response.json()["customer"]["id"])
    return ids


async def post_adjust(
    client: httpx.AsyncClient, gate: asyncio.Semaphore, customer_id: str, delta: str
) -> httpx.Response:
    """One adjustment with the delta written by hand, so the JSON number is exactly `delta`."""
    body = f'{{"customer_id": {json.dumps(customer_id)}, "delta": {delta}}}'
    async with gate:
        return await client.post(
            ADJUST_PATH, content=body.encode(), headers={"Content-Type": "application/json"}
        )


async def fire(
    jobs: Sequence[tuple[httpx.AsyncClient, str, str]], in_flight: int = IN_FLIGHT
) -> list[httpx.Response | httpx.TransportError]:
    """All `(client, customer_id, delta)` adjustments at once, `in_flight` at a time; a request
    that got no response is returned as its transport error."""
    gate = asyncio.Semaphore(in_flight)

    async def one(client: httpx.AsyncClient, cid: str, delta: str) -> Any:
        try:
            return await post_adjust(client, gate, cid, delta)
        except httpx.TransportError as error:
            return error

    return await asyncio.wait_for(
        asyncio.gather(*(one(client, cid, delta) for client, cid, delta in jobs)),
        timeout=LOAD_TIMEOUT_S,
    )


async def balance_of(client: httpx.AsyncClient, customer_id: str) -> Decimal:
    response = await client.get(f"/admin/loyalty/points/{customer_id}")
    assert response.status_code == 200, response.text
    return Decimal(decoded(response)["balance"])


def assert_chain(items: Sequence[Any]) -> None:
    """Invariants 1 and 3 over a history read oldest first."""
    previous_balance = Decimal(0)
    previous_id = ""
    previous_created = ""
    for position, item in enumerate(items):
        where = f"item {position} ({item['id']})"
        assert Decimal(item["balance_after"]) == previous_balance + Decimal(item["delta"]), where
        assert item["id"] > previous_id, f"{where}: id does not increase"
        assert item["created_at"] >= previous_created, f"{where}: created_at decreases"
        previous_balance = Decimal(item["balance_after"])
        previous_id = item["id"]
        previous_created = item["created_at"]


def non_200_samples(
    responses: Sequence[httpx.Response | httpx.TransportError], n: int = 5
) -> list[str]:
    samples = []
    for r in responses:
        if not isinstance(r, httpx.Response):
            samples.append(f"no response: {type(r).__name__}: {r}")
        elif r.status_code != 200:
            samples.append(f"{r.status_code} {r.text[:200]}")
    return samples[:n]


async def fire_expecting(
    jobs: Sequence[tuple[httpx.AsyncClient, str, str]],
    servers: Sequence[Server],
    what: str,
    expected: Counter[object],
) -> list[httpx.Response | httpx.TransportError]:
    """`fire(jobs)`, printing `what` was sent, how long it took and the statuses, which must
    be `expected` (else the failure shows samples of the others and the servers' logs)."""
    started = time.monotonic()
    responses = await fire(jobs)
    elapsed = time.monotonic() - started
    print(
        f"\n{what}: {elapsed:.2f}s ({len(jobs) / elapsed:.0f}/s),"
        f" statuses {dict(statuses(responses))}"
    )
    assert statuses(responses) == expected, (non_200_samples(responses), log_tail(*servers))
    return responses


async def one_customer_load(
    clients: Sequence[httpx.AsyncClient], servers: Sequence[Server], total: int, seed: int
) -> None:
    """`total` concurrent adjustments on one fresh customer, spread over `clients`; then the
    whole ledger of that customer is checked against the exact sum."""
    rng = random.Random(seed)
    (customer_id,) = await create_customers(clients[0], 1)
    deltas = [rng.choice(DELTAS) for _ in range(total)]
    jobs = [(clients[i % len(clients)], customer_id, d) for i, d in enumerate(deltas)]
    what = f"{total} adjustments on one customer over {len(servers)} server(s)"
    responses = await fire_expecting(jobs, servers, what, Counter({200: total}))

    bodies = [decoded(r) for r in responses]
    expected = sum((Decimal(d) for d in deltas), Decimal(0))
    balances_after = [Decimal(b["balance_after"]) for b in bodies]
    assert len(set(balances_after)) == total, "two adjustments saw the same balance"
    assert max(balances_after) == expected
    assert len({b["id"] for b in bodies}) == total

    history = await full_history_async(clients[0], customer_id)
    assert len(history) == total
    assert_chain(history)
    assert Decimal(history[-1]["balance_after"]) == expected
    assert await balance_of(clients[0], customer_id) == expected
    # Each response is exactly the ledger's record of it.
    recorded = {item["id"]: Decimal(item["balance_after"]) for item in history}
    assert {b["id"]: Decimal(b["balance_after"]) for b in bodies} == recorded
    # The deltas recorded are the deltas sent (as a multiset).
    assert Counter(Decimal(item["delta"]) for item in history) == Counter(
        Decimal(d) for d in deltas
    )
    print(f"final balance {expected} (exact), {len(history)} items in the history")


# --- tests ---------------------------------------------------------------------------------


def test_400_concurrent_adjustments_on_one_customer(cluster: Backend) -> None:
    """400 concurrent decimal adjustments on one customer: all 200, exact sum, one chain."""

    async def main() -> None:
        async with async_client(cluster.server, cluster.token) as client:
            await one_customer_load([client], [cluster.server], 400, seed=400)

    asyncio.run(main())
    assert_verify(cluster.database_url)


def test_concurrent_redemptions_never_overdraw(cluster: Backend) -> None:
    """300 concurrent -1 redemptions on a balance of 100: exactly 100 succeed, never negative."""

    async def main() -> None:
        async with async_client(cluster.server, cluster.token) as client:
            (customer_id,) = await create_customers(client, 1)
            gate = asyncio.Semaphore(1)
            credit = await post_adjust(client, gate, customer_id, "100")
            assert credit.status_code == 200, credit.text

            responses = await fire_expecting(
                [(client, customer_id, "-1")] * 300,
                [cluster.server],
                "300 redemptions of -1 on 100 points",
                Counter({200: 100, 400: 200}),
            )
            refusals = [decoded(r) for r in responses if r.status_code == 400]
            assert {body["type"] for body in refusals} == {"not_allowed"}
            accepted = sorted(
                Decimal(decoded(r)["balance_after"]) for r in responses if r.is_success
            )
            assert accepted == [Decimal(n) for n in range(100)]

            assert await balance_of(client, customer_id) == 0
            history = await full_history_async(client, customer_id)
            assert len(history) == 101
            assert_chain(history)
            assert min(Decimal(item["balance_after"]) for item in history) >= 0
            assert Decimal(history[-1]["balance_after"]) == 0

    asyncio.run(main())
    assert_verify(cluster.database_url)


def test_many_customers_interleaved(cluster: Backend) -> None:
    """20 customers x 20 adjustments, shuffled and concurrent: each balance is exact."""
    rng = random.Random(2020)

    async def main() -> None:
        async with async_client(cluster.server, cluster.token) as client:
            customers = await create_customers(client, 20)
            jobs = [(client, cid, rng.choice(DELTAS)) for cid in customers for _ in range(20)]
            rng.shuffle(jobs)
            responses = await fire_expecting(
                jobs, [cluster.server], "20 customers x 20 adjustments", Counter({200: len(jobs)})
            )
            expected: dict[str, Decimal] = dict.fromkeys(customers, Decimal(0))
            for _client, cid, delta in jobs:
                expected[cid] += Decimal(delta)
            for response, (_client, cid, _delta) in zip(responses, jobs, strict=True):
                assert decoded(response)["customer_id"] == cid
            for cid in customers:
                assert await balance_of(client, cid) == expected[cid], cid
                history = await full_history_async(client, cid)
                assert len(history) == 20
                assert_chain(history)
                assert Decimal(history[-1]["balance_after"]) == expected[cid]
            print(f"balances: {sorted(str(v) for v in expected.values())}")

    asyncio.run(main())
    assert_verify(cluster.database_url)


def test_two_server_processes_on_one_postgresql_database(pg_server_pair: ServerPair) -> None:
    """Two `loyalty serve --workers 2` on one PostgreSQL database: 400 adjustments stay exact."""
    first, second = pg_server_pair.first, pg_server_pair.second

    async def main() -> None:
        half = IN_FLIGHT // 2
        async with (
            async_client(first, pg_server_pair.token, half) as a,
            async_client(second, pg_server_pair.token, half) as b,
        ):
            await one_customer_load([a, b], [first, second], 400, seed=2)

    asyncio.run(main())
    assert_verify(pg_server_pair.url)
