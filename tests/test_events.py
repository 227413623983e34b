"""The events outbox (SPEC 8.2): every committed change has its event, written in the change's
own transaction; a refused request has none; the feed pages in commit order and a reader who
pages from the start while writers are busy on several servers sees each event exactly once."""

from __future__ import annotations

import asyncio
import re
import threading
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack
from typing import Any

import httpx
import pytest

from tests.conftest import DatabaseFactory, backend_fixture
from tests.support import (
    ADJUST_PATH,
    Backend,
    adjust,
    adjust_with,
    adjustment_of,
    assert_error,
    at_once,
    iso_in,
    new_customer,
    ok,
    post_json,
    reverse,
    sleep_until,
    sql,
    verify_report,
)

EVENTS_PATH = "/admin/loyalty/events"
EVT_ID = re.compile(r"^evt_[0-9A-HJKMNP-TV-Z]{26}$")

events_backend = backend_fixture(
    "events_backend", "A server on a fresh database of each kind, for this file's events."
)


@pytest.fixture
def client(events_backend: Backend) -> Iterator[httpx.Client]:
    with events_backend.client() as client:
        yield client


def feed_page(client: httpx.Client, **params: Any) -> Any:
    return ok(client.get(EVENTS_PATH, params=params))


def all_events(client: httpx.Client, after: str | None = None) -> list[Any]:
    """The feed from `after` (or the start) to its end, page by page."""
    events: list[Any] = []
    while True:
        params: dict[str, Any] = {"limit": 100}
        if after is not None:
            params["after"] = after
        page = feed_page(client, **params)
        events += page["events"]
        if not page["has_more"]:
            return events
        after = page["events"][-1]["id"]


def last_event_id(client: httpx.Client) -> str | None:
    events = all_events(client)
    return events[-1]["id"] if events else None


def test_each_change_has_its_event_with_the_object(client: httpx.Client) -> None:
    start = last_event_id(client)
    customer = new_customer(client, first_name="Ev")
    credit = adjust_with(client, customer["id"], 100, reason="welcome", reference="o-1")
    reversal = ok(reverse(client, credit["id"], points=30))
    created = ok(
        post_json(
            client,
            "/admin/loyalty/pending",
            {"customer_id": customer["id"], "points": 5, "release_at": "2099-01-01T00:00:00Z"},
        )
    )["pending"]
    released = ok(client.post(f"/admin/loyalty/pending/{created['id']}/release"))["pending"]
    other = ok(
        post_json(
            client,
            "/admin/loyalty/pending",
            {"customer_id": customer["id"], "points": 7, "release_at": "2099-01-01T00:00:00Z"},
        )
    )["pending"]
    voided = ok(client.post(f"/admin/loyalty/pending/{other['id']}/void"))["pending"]

    events = all_events(client, start)
    assert [e["type"] for e in events] == [
        "customer.created",
        "points.adjusted",
        "points.reversed",
        "pending.created",
        "points.released",
        "pending.created",
        "pending.voided",
    ]
    assert all(EVT_ID.match(e["id"]) for e in events), events
    assert all(set(e) == {"id", "type", "created_at", "data"} for e in events)
    assert events[0]["data"] == ok(client.get(f"/admin/customers/{customer['id']}"))["customer"]
    for event, adjustment_id in (
        (events[1], credit["id"]),
        (events[2], reversal["id"]),
        (events[4], released["adjustment_id"]),
    ):
        expected = adjustment_of(client, adjustment_id)
        del expected["reversed_points"]
        assert event["data"] == expected
        assert event["created_at"] == expected["created_at"]
    assert events[3]["data"]["id"] == created["id"]
    assert events[3]["data"]["status"] == "pending"
    assert (events[5]["data"]["id"], events[5]["data"]["status"]) == (other["id"], "pending")
    assert events[6]["data"] == voided


def test_an_expiration_has_its_event(client: httpx.Client) -> None:
    customer = new_customer(client)
    start = last_event_id(client)
    expires_at = iso_in(1)
    credit = adjust_with(client, customer["id"], 40, expires_at=expires_at)
    sleep_until(expires_at, margin_s=0.1)
    debit = ok(adjust(client, customer["id"], 0.01))  # records the due expiration first
    types = [(e["type"], e["data"]["id"]) for e in all_events(client, start)]
    assert types[0] == ("points.adjusted", credit["id"])
    assert types[1][0] == "points.expired"
    assert types[2] == ("points.adjusted", debit["id"])
    expired = adjustment_of(client, types[1][1])
    assert expired["type"] == "expiration" and expired["delta"] == -40


def test_a_refused_request_has_no_event(client: httpx.Client) -> None:
    customer = new_customer(client)
    start = last_event_id(client)
    assert_error(adjust(client, customer["id"], -1), 400, "not_allowed")
    assert_error(adjust(client, "cus_nobody", 5), 404, "not_found")
    atomic = {
        "atomic": True,
        "adjustments": [
            {"customer_id": customer["id"], "delta": 10},
            {"customer_id": customer["id"], "delta": -50},
        ],
    }
    assert_error(
        post_json(client, "/admin/loyalty/points/bulk-adjust", atomic), 400, "invalid_data"
    )
    duplicate = {"email": customer["email"]}
    assert_error(client.post("/admin/customers", json=duplicate), 409, "conflict")
    assert all_events(client, start) == []


def test_a_replayed_request_makes_no_second_event(client: httpx.Client) -> None:
    customer = new_customer(client)
    start = last_event_id(client)
    key = uuid.uuid4().hex
    body = {"customer_id": customer["id"], "delta": 3}
    first = post_json(client, ADJUST_PATH, body, key)
    again = post_json(client, ADJUST_PATH, body, key)
    assert first.status_code == again.status_code == 200
    assert again.headers["Idempotent-Replayed"] == "true"
    events = all_events(client, start)
    assert [e["data"]["id"] for e in events] == [first.json()["id"]]


def test_a_bulk_has_one_event_per_recorded_item_in_order(client: httpx.Client) -> None:
    customer = new_customer(client)
    start = last_event_id(client)
    items = [{"customer_id": customer["id"], "delta": n} for n in (5, -100, 7, 9)]
    results = ok(post_json(client, "/admin/loyalty/points/bulk-adjust", {"adjustments": items}))[
        "results"
    ]
    recorded = [r["adjustment"]["id"] for r in results if r["status"] == 200]
    assert len(recorded) == 3
    assert [e["data"]["id"] for e in all_events(client, start)] == recorded


def test_the_feed_pages_with_after_and_limit(client: httpx.Client) -> None:
    customer = new_customer(client)
    start = last_event_id(client)
    made = [ok(adjust(client, customer["id"], n + 1))["id"] for n in range(5)]
    first = feed_page(client, after=start, limit=2)
    assert [e["data"]["id"] for e in first["events"]] == made[:2]
    assert first["has_more"] is True
    rest = feed_page(client, after=first["events"][-1]["id"], limit=100)
    assert [e["data"]["id"] for e in rest["events"]] == made[2:]
    assert rest["has_more"] is False
    last = feed_page(client, after=rest["events"][-1]["id"])
    assert last == {"events": [], "has_more": False}


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"after": "evt_01ARZ3NDEKTSV4RRFFQ69G5FAV"}, "after"),
        ({"after": "x" * 65}, "after"),
        ({"limit": "0"}, "limit"),
        ({"limit": "101"}, "limit"),
        ({"limit": "ten"}, "limit"),
    ],
)
def test_bad_feed_parameters_are_refused(
    client: httpx.Client, params: dict[str, str], field: str
) -> None:
    body = assert_error(client.get(EVENTS_PATH, params=params), 400, "invalid_data", field)
    assert field in body["message"]


def test_an_unknown_query_parameter_is_refused(client: httpx.Client) -> None:
    assert_error(client.get(EVENTS_PATH, params={"before": "x"}), 400, "invalid_data")


def test_the_feed_needs_loyalty_read(events_backend: Backend) -> None:
    with httpx.Client(base_url=events_backend.server.base_url, timeout=30) as anon:
        assert_error(anon.get(EVENTS_PATH), 401, "unauthorized")
    token = events_backend.user_token("customers:read")
    with events_backend.client(token) as narrow:
        body = assert_error(narrow.get(EVENTS_PATH), 403, "forbidden")
        assert "loyalty:read" in body["message"]


def test_every_event_is_in_the_outbox_table_once(events_backend: Backend) -> None:
    """The table behind the feed: one row per event, positions without gaps from 1, and the
    sequence's last position equal to the last row's."""
    rows = sql(events_backend.database_url, "SELECT position, id FROM loyalty_events")
    positions = sorted(int(row[0]) for row in rows)
    assert positions == list(range(1, len(positions) + 1))
    assert len({row[1] for row in rows}) == len(rows)
    last = sql(events_backend.database_url, "SELECT last_position FROM loyalty_event_sequence")
    assert [int(last[0][0])] == [positions[-1]]


# --- commit order while writers are busy ---------------------------------------------------

WRITERS_PER_SERVER = 24
ADJUSTS_PER_WRITER = 15


def test_a_reader_paging_while_several_servers_write_sees_each_event_once(
    databases: DatabaseFactory, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Two servers of two workers each write on one database while a reader pages the feed
    with `after`, never waiting for the writers: what the reader collected is exactly the
    final feed (nothing skipped, nothing twice), every adjustment has one event, and each
    customer's events follow its ledger's order."""
    url = databases.new_url()
    workdir = tmp_path_factory.mktemp(f"events-busy-{databases.kind}")
    with ExitStack() as stack:
        servers = [
            stack.enter_context(Backend.start(databases.kind, url, workdir, workers=2))
            for _ in range(2)
        ]
        with servers[0].client() as client:
            customers = [new_customer(client)["id"] for _ in range(8)]
            for customer_id in customers:
                ok(adjust(client, customer_id, 1000))
        seen: list[str] = []
        done = threading.Event()
        errors: list[BaseException] = []

        def read_along() -> None:
            try:
                with servers[1].client() as reader:
                    after: str | None = None
                    while True:
                        finished = done.is_set()
                        params: dict[str, Any] = {"limit": 37}
                        if after is not None:
                            params["after"] = after
                        page = ok(reader.get(EVENTS_PATH, params=params))
                        seen.extend(e["id"] for e in page["events"])
                        if page["events"]:
                            after = page["events"][-1]["id"]
                        if finished and not page["has_more"]:
                            return
            except BaseException as error:
                errors.append(error)

        reader = threading.Thread(target=read_along)
        reader.start()

        def calls(clients: list[httpx.AsyncClient]) -> Iterator[Any]:
            for index in range(WRITERS_PER_SERVER * len(clients)):
                yield write_stream(clients[index % len(clients)], customers, index)

        try:
            at_once(servers, calls)
        finally:
            done.set()
            reader.join(timeout=120)
        assert not reader.is_alive() and not errors, errors

        with servers[0].client() as client:
            final = all_events(client)
    assert Counter(seen) == Counter(e["id"] for e in final), "the reader skipped or repeated"
    assert seen == [e["id"] for e in final], "the reader saw another order than the feed"

    adjustments = sql(url, "SELECT id, customer_id, seq FROM loyalty_adjustments")
    events_by_adjustment = Counter(
        e["data"]["id"] for e in final if e["type"].startswith("points.")
    )
    assert events_by_adjustment == Counter(row[0] for row in adjustments)
    seq_of = {row[0]: int(row[2]) for row in adjustments}
    for customer_id in customers:
        in_feed = [
            seq_of[e["data"]["id"]]
            for e in final
            if e["type"].startswith("points.") and e["data"]["customer_id"] == customer_id
        ]
        assert in_feed == sorted(in_feed), f"{customer_id}'s events out of ledger order"
        assert len(in_feed) == 1 + sum(
            1 for row in adjustments if row[1] == customer_id and int(row[2]) > 1
        )


async def write_stream(client: httpx.AsyncClient, customers: list[str], index: int) -> None:
    for n in range(ADJUSTS_PER_WRITER):
        customer_id = customers[(index + n) % len(customers)]
        delta = 1 if (index + n) % 3 else -1
        response = await client.post(ADJUST_PATH, json={"customer_id": customer_id, "delta": delta})
        assert response.status_code == 200, response.text
        if n % 5 == 0:
            await asyncio.sleep(0)


# --- loyalty verify ------------------------------------------------------------------------


def test_verify_finds_a_lost_or_doubled_event(events_backend: Backend) -> None:
    """An adjustment whose event is missing, or doubled, fails verify's events check naming
    its customer; restored, verify passes."""
    url = events_backend.database_url
    with events_backend.client() as client:
        customer = new_customer(client)
        made = ok(adjust(client, customer["id"], 12))
    assert verify_report(url).returncode == 0
    row = sql(url, "SELECT * FROM loyalty_events WHERE subject_id = $1", made["id"])[0]
    columns = [
        "position",
        "id",
        "type",
        "subject_id",
        "customer_id",
        "created_at_ms",
        "data",
    ]
    insert = (
        f"INSERT INTO loyalty_events ({', '.join(columns)}) VALUES ($1, $2, $3, $4, $5, $6, $7)"
    )
    by_name = dict(zip(columns, row, strict=True))
    sql(url, "DELETE FROM loyalty_events WHERE id = $1", by_name["id"])
    try:
        report = verify_report(url)
        assert report.returncode == 1
        check = report.failed_check("exactly one event")
        assert customer["id"] in report.failed[check]
    finally:
        sql(url, insert, *by_name.values())
    assert verify_report(url).returncode == 0

    last = int(sql(url, "SELECT last_position FROM loyalty_event_sequence")[0][0])
    doubled = {**by_name, "position": last + 1, "id": f"{by_name['id'][:-1]}Z"}
    sql(url, insert, *doubled.values())
    sql(url, "UPDATE loyalty_event_sequence SET last_position = $1", last + 1)
    try:
        report = verify_report(url)
        assert report.returncode == 1
        assert customer["id"] in report.failed[report.failed_check("exactly one event")]
    finally:
        sql(url, "DELETE FROM loyalty_events WHERE position = $1", last + 1)
        sql(url, "UPDATE loyalty_event_sequence SET last_position = $1", last)
    assert verify_report(url).returncode == 0


# --- the relay's reader of the newest events -------------------------------------------------


def test_the_relays_tail_gives_each_consumer_what_the_outbox_holds(
    databases: DatabaseFactory,
) -> None:
    """Two consumers reading through one Tail, at their own positions and paces (ahead, at
    the newest, behind what it keeps, past the end), get exactly what a direct read of the
    outbox gives, each event with its JSON as the channels send it."""
    from loyalty import migrate
    from loyalty.db import open_database
    from loyalty.events import repository, tail
    from loyalty.events.schemas import event_json

    url = databases.new_url()
    migrate.upgrade(url)

    async def append(db: Any, count: int) -> None:
        async with db.write() as conn:
            await repository.record(
                conn,
                [
                    repository.NewEvent(
                        f"evt_{uuid.uuid4().hex}",
                        "customer.created",
                        f"cus_{uuid.uuid4().hex[:8]}",
                        None,
                        1_790_000_000_000 + i,
                        b'{"id":"cus_x","n":%d}' % i,
                    )
                    for i in range(count)
                ],
            )

    async def direct(db: Any, position: int, limit: int) -> list[tuple[int, bytes]]:
        async with db.read() as conn:
            rows = await repository.events_after(conn, position, limit)
        return [(row.position, event_json(row)) for row in rows]

    async def scenario() -> None:
        db = await open_database(url)
        try:
            reader = tail.Tail(db)

            async def check(position: int, limit: int) -> int:
                got = [(p.row.position, p.body) for p in await reader.after(position, limit)]
                assert got == await direct(db, position, limit), (position, limit)
                return got[-1][0] if got else position

            assert await reader.after(0, 10) == []
            await append(db, 30)
            fast = await check(0, 7)  # the first read keeps 1..30
            slow = await check(0, 3)  # served from what is kept
            fast = await check(fast, 100)  # to the newest
            await append(db, 20)
            fast = await check(fast, 100)  # new rows, contiguous with those kept
            slow = await check(slow, 5)
            assert fast == 50 and slow == 8
            await check(1_000, 10)  # past the end: nothing
            await check(40, 100)
            # More than it keeps: a consumer far behind reads past it, and still in order.
            await append(db, tail.KEEP + 10)
            newest = await check(50, tail.KEEP + 10)
            while newest < 60 + tail.KEEP:
                newest = await check(newest, 1_000)
            await check(2, 20)
        finally:
            await db.close()

    asyncio.run(scenario())
