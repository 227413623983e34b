"""POST /admin/loyalty/points/bulk-adjust (SPEC 7.5): one outcome per item, in order, each
as its own adjust would have answered; atomic bulks all-or-nothing, also across a SIGKILL of
the server; the 1..1000 bound; Idempotency-Key over the whole bulk. On SQLite and
PostgreSQL."""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest

from tests.support import (
    ADMIN_EMAIL,
    ADMIN_PASSWORD,
    BULK_PATH,
    REPLAYED_HEADER,
    Backend,
    Server,
    adjust_with,
    assert_error,
    assert_verify,
    balance_body,
    full_history,
    log_tail,
    login,
    new_customer,
    ok,
    post_json,
)

if TYPE_CHECKING:
    from tests.conftest import DatabaseFactory

RESULT_ADJUSTMENT_FIELDS = {"id", "customer_id", "balance_after", "updated_at"}


def bulk(
    api: httpx.Client, items: list[Any], atomic: bool | None = None, key: str | None = None
) -> httpx.Response:
    body: dict[str, Any] = {"adjustments": items}
    if atomic is not None:
        body["atomic"] = atomic
    return post_json(api, BULK_PATH, body, key)


def item(customer_id: str, delta: Any, **fields: Any) -> dict[str, Any]:
    return {"customer_id": customer_id, "delta": delta, **fields}


def results_of(response: httpx.Response, count: int) -> list[Any]:
    """The results of a 200 bulk: one per item, indexed in order, each with either an
    adjustment of the adjust response's shape or an error in the envelope."""
    body = ok(response)
    assert set(body) == {"results"}, body
    results: list[Any] = body["results"]
    assert [r["index"] for r in results] == list(range(count))
    for result in results:
        if result["status"] == 200:
            assert set(result) == {"index", "status", "adjustment"}, result
            assert set(result["adjustment"]) == RESULT_ADJUSTMENT_FIELDS, result
        else:
            assert set(result) == {"index", "status", "error"}, result
            assert set(result["error"]) <= {"type", "message", "errors"}, result
            assert result["error"]["message"], result
    return results


def state(api: httpx.Client, *customers: str) -> list[Any]:
    return [(balance_body(api, c)["balance"], full_history(api, c)) for c in customers]


def test_each_item_gets_its_own_outcome_in_order(api: httpx.Client) -> None:
    """A good item, an unknown customer (404), an overdraw (400 not_allowed), an invalid
    delta and an unknown field (400 invalid_data), and a debit that only the first item made
    possible: each result is what its own adjust would have answered, and only the good
    items are recorded."""
    funded = new_customer(api)["id"]
    adjust_with(api, funded, 10)
    items = [
        item(funded, 5, reason="earned"),
        item("nobody-here", 1),
        item(funded, -100),
        item(funded, 0),
        {"customer_id": funded, "delta": 1, "bonus": True},
        item(funded, -15, reason="spent"),
    ]
    results = results_of(bulk(api, items), len(items))
    assert [r["status"] for r in results] == [200, 404, 400, 400, 400, 200]
    assert [r["error"]["type"] for r in results if "error" in r] == [
        "not_found",
        "not_allowed",
        "invalid_data",
        "invalid_data",
    ]
    assert results[1]["error"]["message"] == "Customer with id: nobody-here was not found"
    for position, name in ((3, "delta"), (4, "bonus")):
        error = results[position]["error"]
        assert name in {e["field"] for e in error.get("errors", [])}, error
    made = [r["adjustment"] for r in results if "adjustment" in r]
    assert [(a["customer_id"], a["balance_after"]) for a in made] == [(funded, 15), (funded, 0)]
    history = full_history(api, funded)
    assert [(h["delta"], h["reason"]) for h in history] == [
        (10, None),
        (5, "earned"),
        (-15, "spent"),
    ]
    assert [h["id"] for h in history[1:]] == [a["id"] for a in made]
    assert [h["created_at"] for h in history[1:]] == [a["updated_at"] for a in made]


def test_one_customers_items_apply_in_order(api: httpx.Client) -> None:
    """+10, -10, +3, -3, -1 on an empty balance: each item sees the ones before it, so the
    last is refused and the balance is 0; other customers' items interleave freely."""
    one, two = new_customer(api)["id"], new_customer(api)["id"]
    items = [
        item(one, 10),
        item(two, 1),
        item(one, -10),
        item(one, 3),
        item(two, -1),
        item(one, -3),
        item(one, -1),
    ]
    results = results_of(bulk(api, items, atomic=False), len(items))
    assert [r["status"] for r in results] == [200, 200, 200, 200, 200, 200, 400]
    assert [r["adjustment"]["balance_after"] for r in results[:6]] == [10, 1, 0, 3, 0, 0]
    assert [h["delta"] for h in full_history(api, one)] == [10, -10, 3, -3]
    assert balance_body(api, one)["balance"] == 0
    assert balance_body(api, two)["balance"] == 0


def test_new_fields_and_references_apply_per_item(api: httpx.Client) -> None:
    """Items take reference and metadata; a reference repeated within the bulk is 409 for
    the later item, naming the earlier one's adjustment."""
    customer_id = new_customer(api)["id"]
    reference = f"bulk-{uuid.uuid4().hex[:10]}"
    items = [
        item(customer_id, 4, reference=reference, metadata={"batch": "a"}),
        item(customer_id, 4, reference=reference),
    ]
    results = results_of(bulk(api, items), 2)
    assert [r["status"] for r in results] == [200, 409]
    assert results[1]["error"]["type"] == "conflict"
    assert results[0]["adjustment"]["id"] in results[1]["error"]["message"]
    (only,) = full_history(api, customer_id)
    assert (only["reference"], only["metadata"]) == (reference, {"batch": "a"})


def test_an_atomic_bulk_records_all(api: httpx.Client) -> None:
    customers = [new_customer(api)["id"] for _ in range(3)]
    items = [item(c, n) for n in (1, 2, 3) for c in customers]
    results = results_of(bulk(api, items, atomic=True), len(items))
    assert {r["status"] for r in results} == {200}
    for customer_id in customers:
        assert [h["delta"] for h in full_history(api, customer_id)] == [1, 2, 3]
        assert balance_body(api, customer_id)["balance"] == 6


def test_an_atomic_bulk_with_a_failing_item_records_nothing(api: httpx.Client) -> None:
    """Good items around an unknown customer, an overdraw and an invalid delta: 400
    invalid_data naming exactly the failing items as adjustments[i]; no item is recorded."""
    one, two = new_customer(api)["id"], new_customer(api)["id"]
    adjust_with(api, one, 5)
    before = state(api, one, two)
    items = [
        item(one, 1),
        item("nobody-here", 1),
        item(two, 2),
        item(one, -50),
        item(two, "3"),
        item(two, 2),
    ]
    error = assert_error(bulk(api, items, atomic=True), 400, "invalid_data")
    fields = sorted(e["field"] for e in error["errors"])
    assert fields == ["adjustments[1]", "adjustments[3]", "adjustments[4]"], error
    assert all(e["message"] for e in error["errors"])
    assert state(api, one, two) == before


def test_an_atomic_bulk_judges_items_in_order(api: httpx.Client) -> None:
    """Atomic items also see the ones before them: +5 then -5 on an empty balance is
    recorded; -5 then +5 fails on its first item."""
    customer_id = new_customer(api)["id"]
    results_of(bulk(api, [item(customer_id, 5), item(customer_id, -5)], atomic=True), 2)
    before = state(api, customer_id)
    error = assert_error(
        bulk(api, [item(customer_id, -5), item(customer_id, 5)], atomic=True),
        400,
        "invalid_data",
    )
    assert [e["field"] for e in error["errors"]] == ["adjustments[0]"]
    assert state(api, customer_id) == before


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"adjustments": []}, "adjustments"),
        ({}, "adjustments"),
        ({"adjustments": "all"}, "adjustments"),
        ({"adjustments": [{"customer_id": "x", "delta": 1}], "atomic": "yes"}, "atomic"),
        ({"adjustments": [{"customer_id": "x", "delta": 1}], "extra": 1}, "extra"),
    ],
    ids=["empty", "missing", "not a list", "atomic not a boolean", "unknown field"],
)
def test_a_malformed_bulk_is_400(api: httpx.Client, body: Any, field: str) -> None:
    assert_error(post_json(api, BULK_PATH, body), 400, "invalid_data", field)


def test_1001_items_are_400_and_1000_are_fine(api: httpx.Client) -> None:
    """1,001 items: 400 naming adjustments, nothing recorded. 1,000 items with 100-character
    reasons (a body far over the usual 64 KiB): all recorded, results in order."""
    customers = [new_customer(api)["id"] for _ in range(10)]
    reason = "r" * 100
    items = [item(customers[n % 10], 1, reason=reason) for n in range(1001)]
    for atomic in (False, True):
        assert_error(bulk(api, items, atomic=atomic), 400, "invalid_data", "adjustments")
    assert all(balance_body(api, c)["updated_at"] is None for c in customers)

    results = results_of(bulk(api, items[:1000]), 1000)
    assert {r["status"] for r in results} == {200}
    for n, result in enumerate(results):
        assert result["adjustment"]["customer_id"] == customers[n % 10]
        assert result["adjustment"]["balance_after"] == n // 10 + 1
    for customer_id in customers:
        assert balance_body(api, customer_id)["balance"] == 100


def test_an_idempotency_key_replays_the_whole_bulk(api: httpx.Client) -> None:
    """A bulk retried with its key gets the same results again, marked replayed, and records
    nothing; the key with another bulk is 422."""
    customer_id = new_customer(api)["id"]
    items = [item(customer_id, 2), item("nobody-here", 1), item(customer_id, 3)]
    key = f"bulk-{uuid.uuid4().hex}"
    first = bulk(api, items, key=key)
    assert [r["status"] for r in results_of(first, 3)] == [200, 404, 200]
    after = state(api, customer_id)
    again = bulk(api, items, key=key)
    assert again.status_code == 200
    assert again.content == first.content
    assert again.headers.get(REPLAYED_HEADER) == "true"
    assert state(api, customer_id) == after
    assert_error(bulk(api, items[:2], key=key), 422, "idempotency_error")
    assert state(api, customer_id) == after


# --- SIGKILL during atomic bulks ----------------------------------------------------------

BULK_ITEMS = 300
CLIENTS = 4
CUSTOMERS = 3
LOAD_S = 1.5
KILL_ROUNDS = 2


@dataclass
class Sent:
    """What each bulk's client saw, by the bulk's reference prefix."""

    acked: set[str] = field(default_factory=set)
    unknown: set[str] = field(default_factory=set)
    refused: set[str] = field(default_factory=set)
    statuses: Counter[object] = field(default_factory=Counter)
    bad: list[str] = field(default_factory=list)


def bulk_body(tag: str, customers: list[str]) -> dict[str, Any]:
    return {
        "adjustments": [
            {"customer_id": customers[n % len(customers)], "delta": 1, "reference": f"{tag}-{n}"}
            for n in range(BULK_ITEMS)
        ],
        "atomic": True,
    }


async def bulk_loop(
    client: httpx.AsyncClient, number: int, customers: list[str], sent: Sent, stop: asyncio.Event
) -> None:
    """Atomic bulks, one after another, until `stop` or until the server goes away."""
    round_tag = uuid.uuid4().hex[:6]
    count = 0
    while not stop.is_set():
        tag = f"k{round_tag}{number}x{count}"
        count += 1
        try:
            response = await client.post(BULK_PATH, json=bulk_body(tag, customers))
        except (httpx.ConnectError, httpx.ConnectTimeout):
            sent.refused.add(tag)
            return
        except httpx.TransportError:
            sent.unknown.add(tag)
            return
        sent.statuses[response.status_code] += 1
        if response.status_code != 200:
            sent.bad.append(f"{response.status_code} {response.text[:300]}")
            return
        sent.acked.add(tag)


async def load_then_kill(server: Server, token: str, customers: list[str], sent: Sent) -> None:
    stop = asyncio.Event()
    async with httpx.AsyncClient(
        base_url=server.base_url, headers={"Authorization": f"Bearer {token}"}, timeout=60
    ) as client:
        tasks = [
            asyncio.create_task(bulk_loop(client, n, customers, sent, stop)) for n in range(CLIENTS)
        ]
        await asyncio.sleep(LOAD_S)
        await asyncio.to_thread(server.kill)
        stop.set()
        await asyncio.wait_for(asyncio.gather(*tasks), timeout=90)


def test_sigkill_during_atomic_bulks_leaves_each_all_or_nothing(
    databases: DatabaseFactory, tmp_path: Path, launched: list[Server]
) -> None:
    """Four clients send atomic bulks of 300 items while the server (two workers) is
    SIGKILLed, twice: after each restart every bulk is in the ledger whole or not at all,
    every acknowledged bulk whole, every bulk never sent not at all, and verify holds."""
    url = databases.new_url()
    launched.append(Server.launch(url, tmp_path, workers=2))
    token = login(launched[-1], ADMIN_EMAIL, ADMIN_PASSWORD)
    backend = Backend(databases.kind, url, launched[-1], token)
    with backend.client() as api:
        customers = [new_customer(api)["id"] for _ in range(CUSTOMERS)]
    sent = Sent()
    print()
    for round_number in range(1, KILL_ROUNDS + 1):
        asyncio.run(load_then_kill(launched[-1], token, customers, sent))
        assert not sent.bad, (sent.bad[:3], log_tail(launched[-1]))
        launched.append(Server.launch(url, tmp_path, workers=2))
        with Backend(databases.kind, url, launched[-1], token).client() as api:
            per_bulk: Counter[str] = Counter()
            total = Decimal(0)
            for customer_id in customers:
                history = full_history(api, customer_id)
                for entry in history:
                    per_bulk[entry["reference"].rsplit("-", 1)[0]] += 1
                total += balance_body(api, customer_id)["balance"]
        partial = {tag: n for tag, n in per_bulk.items() if n != BULK_ITEMS}
        assert not partial, f"bulks recorded in part: {partial}"
        missing = sent.acked - set(per_bulk)
        assert not missing, f"acknowledged bulks lost: {sorted(missing)[:5]}"
        invented = set(per_bulk) - sent.acked - sent.unknown
        assert not invented, f"bulks recorded that were never sent: {sorted(invented)[:5]}"
        assert total == BULK_ITEMS * len(per_bulk)
        print(
            f"[{databases.kind}] kill round {round_number}: acked {len(sent.acked)},"
            f" unknown {len(sent.unknown)}, refused {len(sent.refused)},"
            f" recorded {len(per_bulk)} bulks"
        )
        assert_verify(url)
    assert sent.acked, "no bulk was ever acknowledged"
