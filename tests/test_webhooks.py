"""Webhooks (SPEC 8.2): endpoints, their signed deliveries of every committed change, event
types, disabling, retries on the schedule, `failed` after it, the deliveries log and the
manual retry. On SQLite and PostgreSQL.

Each test has its own receiver (tests/receiver.py, a real HTTP server in the test) behind its
own endpoint, disabled when the test ends. The file's server retries after 0.3, 1 and 3
seconds (each ±20%), so a delivery's attempts are a few seconds apart at most; its
scheduler ticks every 0.2 s so that expirations happen within the test. Every wait polls and
is bounded.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import os
import re
import signal
import subprocess
import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import httpx
import pytest

from loyalty.config import ConfigError, Settings
from tests.conftest import backend_fixture
from tests.receiver import Received, Receiver, bad_signatures, receiving
from tests.support import (
    ADJUSTMENTS_PATH,
    PENDING_PATH,
    REPLAYED_HEADER,
    TIMESTAMP,
    Backend,
    Server,
    adjust_with,
    assert_error,
    eventually,
    iso_in,
    new_customer,
    ok,
    post_json,
    reverse,
)

SCHEDULE = "0.3,1,3"
ATTEMPTS = 1 + len(SCHEDULE.split(","))
WAIT_S = 30.0  # the most a delivery may take, on a very busy machine
WEBHOOKS = "/admin/webhooks"
WHK_ID = re.compile(r"^whk_[0-9A-HJKMNP-TV-Z]{26}$")
MSG_ID = re.compile(r"^msg_[0-9A-HJKMNP-TV-Z]{26}$")
EVT_ID = re.compile(r"^evt_[0-9A-HJKMNP-TV-Z]{26}$")
WEBHOOK_FIELDS = {"id", "url", "event_types", "description", "enabled", "created_at", "updated_at"}
DELIVERY_FIELDS = {
    "id",
    "event_id",
    "status",
    "response_status",
    "attempt",
    "next_attempt_at",
    "created_at",
    "updated_at",
}
UNKNOWN_WEBHOOK = "whk_01ARZ3NDEKTSV4RRFFQ69G5FAV"
UNKNOWN_DELIVERY = "msg_01ARZ3NDEKTSV4RRFFQ69G5FAV"

hooked = backend_fixture(
    "hooked",
    "A server on a fresh database of each kind, retrying webhooks after 0.3, 1 and 3 s, its"
    " scheduler ticking every 0.2 s.",
    LOYALTY_WEBHOOK_RETRY_SCHEDULE=SCHEDULE,
    LOYALTY_SCHEDULER_INTERVAL_SECONDS="0.2",
)


@pytest.fixture
def api(hooked: Backend) -> Iterator[httpx.Client]:
    with hooked.client() as client:
        yield client


Endpoint = tuple[dict[str, Any], Receiver]
EndpointFactory = Callable[..., AbstractContextManager[Endpoint]]


@pytest.fixture
def endpoint(api: httpx.Client) -> EndpointFactory:
    """`with endpoint(statuses=[...], event_types=[...]) as (webhook, receiver):` a receiver
    and an endpoint sending to it (the creation's body, with its secret), disabled after."""

    @contextmanager
    def make(
        statuses: list[int] | None = None, default_status: int = 200, **fields: Any
    ) -> Iterator[Endpoint]:
        with receiving(statuses, default_status) as receiver:
            webhook = create(api, {"url": receiver.url, **fields})
            try:
                yield webhook, receiver
            finally:
                ok(api.post(f"{WEBHOOKS}/{webhook['id']}/disable"))

    return make


def create(api: httpx.Client, body: dict[str, Any], key: str | None = None) -> Any:
    response = ok(post_json(api, WEBHOOKS, body, key))
    assert set(response) == {"webhook"}, response
    return response["webhook"]


def arrival(receiver: Receiver, event_type: str, object_id: str) -> Received:
    """The first request carrying the event of this type about the object `object_id`."""

    def probe() -> Received | None:
        for request in receiver.received():
            event = request.event
            if event["type"] == event_type and event["data"]["id"] == object_id:
                return request
        return None

    return eventually(probe, WAIT_S, f"the {event_type} event of {object_id}")


def attempts(receiver: Receiver, event_id: str, count: int) -> list[Received]:
    """The first `count` requests carrying `event_id`, once that many came."""
    return eventually(
        lambda: (
            receiver.of_event(event_id)[:count]
            if len(receiver.of_event(event_id)) >= count
            else None
        ),
        WAIT_S,
        f"{count} attempts of {event_id}",
    )


def deliveries(api: httpx.Client, webhook_id: str, **params: str) -> Any:
    page = ok(api.get(f"{WEBHOOKS}/{webhook_id}/deliveries", params=params))
    assert set(page) == {"deliveries", "next_cursor"}, page
    for item in page["deliveries"]:
        assert set(item) == DELIVERY_FIELDS, item
    return page


def delivery_of(api: httpx.Client, webhook_id: str, event_id: str) -> Any:
    found = [d for d in deliveries(api, webhook_id, limit="100")["deliveries"]]
    matching = [d for d in found if d["event_id"] == event_id]
    assert len(matching) <= 1, matching
    return matching[0] if matching else None


def settled(api: httpx.Client, webhook_id: str, event_id: str, status: str, attempt: int) -> Any:
    """The event's delivery once the log shows it with this status after `attempt` attempts."""

    def probe() -> Any:
        found = delivery_of(api, webhook_id, event_id)
        if found and found["status"] == status and found["attempt"] == attempt:
            return found
        return None

    return eventually(probe, WAIT_S, f"the delivery of {event_id} {status} at attempt {attempt}")


# --- the routes ----------------------------------------------------------------------------


def test_creation_answers_the_endpoint_with_its_secret_once(api: httpx.Client) -> None:
    """The new endpoint has every field and a whsec_ secret of 24 to 32 random bytes in
    base64, which no list or get shows again; event_types null means every type."""
    webhook = create(api, {"url": "http://127.0.0.1:9/hook", "description": "CRM"})
    assert set(webhook) == WEBHOOK_FIELDS | {"secret"}
    assert WHK_ID.match(webhook["id"])
    assert webhook["url"] == "http://127.0.0.1:9/hook"
    assert webhook["event_types"] is None
    assert webhook["description"] == "CRM"
    assert webhook["enabled"] is True
    assert TIMESTAMP.match(webhook["created_at"])
    assert webhook["secret"].startswith("whsec_")
    assert 24 <= len(base64.b64decode(webhook["secret"].removeprefix("whsec_"))) <= 32
    try:
        shown = ok(api.get(f"{WEBHOOKS}/{webhook['id']}"))["webhook"]
        assert shown == {k: v for k, v in webhook.items() if k != "secret"}
        listed = ok(api.get(WEBHOOKS))
        assert set(listed) == {"webhooks"}
        (item,) = [w for w in listed["webhooks"] if w["id"] == webhook["id"]]
        assert item == shown
        other = create(api, {"url": "https://hooks.example/x", "event_types": ["points.adjusted"]})
        assert other["secret"] != webhook["secret"]
        assert other["event_types"] == ["points.adjusted"]
        assert other["description"] is None
        ok(api.post(f"{WEBHOOKS}/{other['id']}/disable"))
    finally:
        ok(api.post(f"{WEBHOOKS}/{webhook['id']}/disable"))


def test_creation_takes_an_idempotency_key(api: httpx.Client) -> None:
    """The same key and body again answers the kept response (with its secret) and creates
    nothing more; the same key with another body is a 422."""
    key = f"whk-{uuid.uuid4().hex}"
    body = {"url": f"http://127.0.0.1:9/{uuid.uuid4().hex}"}
    first = post_json(api, WEBHOOKS, body, key)
    again = post_json(api, WEBHOOKS, body, key)
    assert first.status_code == again.status_code == 200, again.text
    assert again.json() == first.json()
    assert again.headers.get(REPLAYED_HEADER) == "true"
    listed = ok(api.get(WEBHOOKS))["webhooks"]
    assert [w["url"] for w in listed].count(body["url"]) == 1
    assert_error(
        post_json(api, WEBHOOKS, {"url": body["url"] + "x"}, key), 422, "idempotency_error"
    )
    ok(api.post(f"{WEBHOOKS}/{first.json()['webhook']['id']}/disable"))


@pytest.mark.parametrize(
    ("body", "field", "words"),
    [
        ({"url": "ftp://files.example/hook"}, "url", "http or https"),
        ({"url": "javascript:alert(1)"}, "url", "http or https"),
        ({"url": "mailto:a@example.com"}, "url", "http or https"),
        ({"url": "http://"}, "url", "host"),
        ({"url": "https://hooks.example/" + "a" * 2027}, "url", "2048"),
        ({"url": "http://hooks.example/a b"}, "url", "spaces"),
        ({"url": 42}, "url", "string"),
        ({"url": None}, "url", "string"),
        ({}, "url", "required"),
        (
            {"url": "http://x.example", "event_types": ["points.gifted"]},
            "event_types",
            "points.gifted",
        ),
        ({"url": "http://x.example", "event_types": []}, "event_types", "at least one"),
        ({"url": "http://x.example", "event_types": "points.adjusted"}, "event_types", "list"),
        ({"url": "http://x.example", "description": 7}, "description", "string"),
        ({"url": "http://x.example", "description": "d" * 1025}, "description", "1024"),
    ],
    ids=lambda value: str(value)[:40],
)
def test_bad_input_is_400_naming_the_field(
    api: httpx.Client, body: dict[str, Any], field: str, words: str
) -> None:
    """A URL that is not http(s), has no host or passes 2,048 characters, an event type
    that does not exist (named in the message): each a 400 naming its field, nothing made."""
    before = len(ok(api.get(WEBHOOKS))["webhooks"])
    error = assert_error(api.post(WEBHOOKS, json=body), 400, "invalid_data", field)
    assert words in error["message"], error
    assert len(ok(api.get(WEBHOOKS))["webhooks"]) == before


def test_a_url_of_2048_characters_and_private_addresses_are_accepted(api: httpx.Client) -> None:
    """The limit is inclusive, and the merchant's own systems on loopback or private
    networks may receive."""
    long_url = "https://hooks.example/" + "a" * (2048 - len("https://hooks.example/"))
    for url in (long_url, "http://10.1.2.3:8080/hook", "http://[::1]:9/hook", "http://localhost/"):
        webhook = create(api, {"url": url})
        assert webhook["url"] == url
        ok(api.post(f"{WEBHOOKS}/{webhook['id']}/disable"))


def test_unknown_fields_are_refused(api: httpx.Client) -> None:
    assert_error(
        api.post(WEBHOOKS, json={"url": "http://x.example", "secret": "s"}), 400, "invalid_data"
    )


def test_the_routes_need_credentials_and_webhooks_write(hooked: Backend) -> None:
    """No credentials: 401; a user without webhooks:write (loyalty:read and
    customers:write here): 403 naming the scope, on every route, reads included."""
    calls = [
        ("POST", WEBHOOKS),
        ("GET", WEBHOOKS),
        ("GET", f"{WEBHOOKS}/{UNKNOWN_WEBHOOK}"),
        ("POST", f"{WEBHOOKS}/{UNKNOWN_WEBHOOK}/disable"),
        ("POST", f"{WEBHOOKS}/{UNKNOWN_WEBHOOK}/enable"),
        ("GET", f"{WEBHOOKS}/{UNKNOWN_WEBHOOK}/deliveries"),
        ("POST", f"{WEBHOOKS}/{UNKNOWN_WEBHOOK}/deliveries/{UNKNOWN_DELIVERY}/retry"),
    ]
    token = hooked.user_token("loyalty:read", "customers:write")
    with (
        httpx.Client(base_url=hooked.server.base_url, timeout=30) as anon,
        hooked.client(token) as narrow,
    ):
        for method, path in calls:
            body = {"url": "http://x.example"} if path == WEBHOOKS else None
            assert_error(anon.request(method, path, json=body), 401, "unauthorized")
            refused = assert_error(narrow.request(method, path, json=body), 403, "forbidden")
            assert "webhooks:write" in refused["message"]


def test_unknown_endpoints_and_deliveries_are_404_naming_them(api: httpx.Client) -> None:
    for method, path in [
        ("GET", f"{WEBHOOKS}/{UNKNOWN_WEBHOOK}"),
        ("POST", f"{WEBHOOKS}/{UNKNOWN_WEBHOOK}/disable"),
        ("POST", f"{WEBHOOKS}/{UNKNOWN_WEBHOOK}/enable"),
        ("GET", f"{WEBHOOKS}/{UNKNOWN_WEBHOOK}/deliveries"),
        ("POST", f"{WEBHOOKS}/{UNKNOWN_WEBHOOK}/deliveries/{UNKNOWN_DELIVERY}/retry"),
    ]:
        error = assert_error(api.request(method, path), 404, "not_found")
        assert UNKNOWN_WEBHOOK in error["message"]
    webhook = create(api, {"url": "http://127.0.0.1:9/hook"})
    path = f"{WEBHOOKS}/{webhook['id']}/deliveries/{UNKNOWN_DELIVERY}/retry"
    error = assert_error(api.post(path), 404, "not_found")
    assert UNKNOWN_DELIVERY in error["message"]
    ok(api.post(f"{WEBHOOKS}/{webhook['id']}/disable"))


@pytest.mark.parametrize(
    "params",
    [{"limit": "0"}, {"limit": "101"}, {"status": "lost"}, {"cursor": "c" * 65}, {"page": "2"}],
    ids=str,
)
def test_bad_deliveries_queries_are_400(api: httpx.Client, params: dict[str, str]) -> None:
    webhook = create(api, {"url": "http://127.0.0.1:9/hook"})
    ok(api.post(f"{WEBHOOKS}/{webhook['id']}/disable"))
    response = api.get(f"{WEBHOOKS}/{webhook['id']}/deliveries", params=params)
    assert_error(response, 400, "invalid_data")


# --- deliveries ----------------------------------------------------------------------------


def test_every_change_is_delivered_signed_as_the_feed_has_it(
    api: httpx.Client, endpoint: EndpointFactory
) -> None:
    """Customer creation, adjust, reverse, pending created, voided and released, and an
    expiration each reach a matching endpoint as a POST of the event JSON, exactly as the
    feed has it, with a valid Standard Webhooks signature whose webhook-id is the event id."""
    with endpoint() as (webhook, receiver):
        customer = new_customer(api)
        credit = adjust_with(api, customer["id"], 100)
        reversal = ok(reverse(api, credit["id"], points=10))
        later = iso_in(86400)
        voided = ok(
            post_json(
                api, PENDING_PATH, {"customer_id": customer["id"], "points": 5, "release_at": later}
            )
        )
        ok(post_json(api, f"{PENDING_PATH}/{voided['pending']['id']}/void", {}))
        held = ok(
            post_json(
                api, PENDING_PATH, {"customer_id": customer["id"], "points": 7, "release_at": later}
            )
        )
        released = ok(post_json(api, f"{PENDING_PATH}/{held['pending']['id']}/release", {}))
        expiring = adjust_with(api, customer["id"], 3, expires_at=iso_in(0.5))

        expected = [
            ("customer.created", customer["id"]),
            ("points.adjusted", credit["id"]),
            ("points.reversed", reversal["id"]),
            ("pending.created", voided["pending"]["id"]),
            ("pending.voided", voided["pending"]["id"]),
            ("pending.created", held["pending"]["id"]),
            ("points.released", released["pending"]["adjustment_id"]),
            ("points.adjusted", expiring["id"]),
        ]
        got = [arrival(receiver, kind, object_id) for kind, object_id in expected]
        expiry = eventually(
            lambda: next(
                (
                    r
                    for r in receiver.received()
                    if r.event["type"] == "points.expired"
                    and r.event["data"]["customer_id"] == customer["id"]
                ),
                None,
            ),
            WAIT_S,
            "the points.expired event",
        )
        got.append(expiry)
        assert bad_signatures(receiver.received(), webhook["secret"]) == []
        feed = ok(api.get("/admin/loyalty/events", params={"limit": "100"}))
        while feed["has_more"]:
            after = feed["events"][-1]["id"]
            more = ok(api.get("/admin/loyalty/events", params={"limit": "100", "after": after}))
            feed = {"events": feed["events"] + more["events"], "has_more": more["has_more"]}
        by_id = {event["id"]: event for event in feed["events"]}
        for request in got:
            assert request.path == "/hook"
            assert request.headers["content-type"] == "application/json"
            assert EVT_ID.match(request.headers["webhook-id"])
            assert request.headers["webhook-signature"].startswith("v1,")
            assert request.headers["webhook-timestamp"].isdigit()
            event = request.event
            assert set(event) == {"id", "type", "created_at", "data"}
            assert event == by_id[event["id"]]
        adjusted = got[1].event["data"]
        whole = ok(api.get(f"{ADJUSTMENTS_PATH}/{credit['id']}"))["adjustment"]
        assert adjusted == {k: v for k, v in whole.items() if k != "reversed_points"}


def test_event_types_choose_what_an_endpoint_gets(
    api: httpx.Client, endpoint: EndpointFactory
) -> None:
    """An endpoint of points.reversed gets the reversal and nothing else, while one of every
    type gets all three events of the same round."""
    with (
        endpoint(event_types=["points.reversed"]) as (_, only_reversals),
        endpoint() as (_, everything),
    ):
        customer = new_customer(api)
        credit = adjust_with(api, customer["id"], 50)
        reversal = ok(reverse(api, credit["id"]))
        arrival(everything, "customer.created", customer["id"])
        arrival(everything, "points.adjusted", credit["id"])
        arrival(everything, "points.reversed", reversal["id"])
        arrival(only_reversals, "points.reversed", reversal["id"])
        assert {r.event["type"] for r in only_reversals.received()} == {"points.reversed"}


def test_a_disabled_endpoint_gets_nothing_until_enabled(
    api: httpx.Client, endpoint: EndpointFactory
) -> None:
    """While disabled an endpoint is sent nothing (another endpoint gets the same event);
    enabled again, it gets the events committed from then on, not those it missed."""
    with endpoint() as (paused, receiver), endpoint() as (_, witness):
        customer = new_customer(api)
        arrival(receiver, "customer.created", customer["id"])
        disabled = ok(api.post(f"{WEBHOOKS}/{paused['id']}/disable"))["webhook"]
        assert disabled["enabled"] is False
        assert disabled["updated_at"] >= paused["updated_at"]
        assert ok(api.post(f"{WEBHOOKS}/{paused['id']}/disable"))["webhook"] == disabled
        missed = adjust_with(api, customer["id"], 5)
        arrival(witness, "points.adjusted", missed["id"])
        seen = adjust_with(api, customer["id"], 6)
        arrival(witness, "points.adjusted", seen["id"])
        assert {r.event["data"]["id"] for r in receiver.received()} == {customer["id"]}

        enabled = ok(api.post(f"{WEBHOOKS}/{paused['id']}/enable"))["webhook"]
        assert enabled["enabled"] is True
        after = adjust_with(api, customer["id"], 7)
        arrival(receiver, "points.adjusted", after["id"])
        assert missed["id"] not in {r.event["data"]["id"] for r in receiver.received()}


def test_500_three_times_then_200_is_retried_with_growing_delays(
    api: httpx.Client, endpoint: EndpointFactory
) -> None:
    """A receiver answering 500 three times then 200 gets the same event (same webhook-id,
    each attempt signed anew) four times, each gap longer than the one before; the log shows
    the delivery pending with its next attempt in between, then delivered at attempt 4."""
    with endpoint(statuses=[500, 500, 500], event_types=["points.adjusted"]) as (
        webhook,
        receiver,
    ):
        credit = adjust_with(api, new_customer(api)["id"], 1)
        first = arrival(receiver, "points.adjusted", credit["id"])
        event_id = first.headers["webhook-id"]
        waiting = eventually(
            lambda: (
                (d := delivery_of(api, webhook["id"], event_id))
                and d["status"] == "pending"
                and d["attempt"] >= 1
                and d
            ),
            WAIT_S,
            "the delivery pending after its first attempt",
        )
        assert MSG_ID.match(waiting["id"])
        assert waiting["response_status"] == 500
        assert waiting["next_attempt_at"] is not None
        tries = attempts(receiver, event_id, 4)
        assert [t.status for t in tries] == [500, 500, 500, 200]
        gaps = [later.at - earlier.at for earlier, later in itertools.pairwise(tries)]
        assert gaps[0] < gaps[1] < gaps[2], gaps
        assert bad_signatures(tries, webhook["secret"]) == []
        done = settled(api, webhook["id"], event_id, "delivered", 4)
        assert done["id"] == waiting["id"]
        assert done["response_status"] == 200
        assert done["next_attempt_at"] is None
        assert len(receiver.of_event(event_id)) == 4


def test_after_the_schedule_a_delivery_fails_and_a_manual_retry_delivers_it(
    api: httpx.Client, endpoint: EndpointFactory
) -> None:
    """A receiver that always answers 503 gets the first attempt and one per delay of the
    schedule, then the delivery is failed; retried by hand (while the receiver answers 200
    again) it is pending and due at once, then delivered on the next attempt."""
    with endpoint(default_status=503, event_types=["points.adjusted"]) as (webhook, receiver):
        credit = adjust_with(api, new_customer(api)["id"], 2)
        event_id = arrival(receiver, "points.adjusted", credit["id"]).headers["webhook-id"]
        failed = settled(api, webhook["id"], event_id, "failed", ATTEMPTS)
        assert failed["response_status"] == 503
        assert failed["next_attempt_at"] is None
        assert len(receiver.of_event(event_id)) == ATTEMPTS

        receiver.default_status = 200
        path = f"{WEBHOOKS}/{webhook['id']}/deliveries/{failed['id']}/retry"
        retried = ok(api.post(path))
        assert set(retried) == {"delivery"}
        assert retried["delivery"]["status"] == "pending"
        assert retried["delivery"]["id"] == failed["id"]
        assert retried["delivery"]["next_attempt_at"] is not None
        done = settled(api, webhook["id"], event_id, "delivered", ATTEMPTS + 1)
        assert done["response_status"] == 200
        assert len(receiver.of_event(event_id)) == ATTEMPTS + 1
        assert bad_signatures(receiver.received(), webhook["secret"]) == []


def test_the_deliveries_log_pages_newest_first(
    api: httpx.Client, endpoint: EndpointFactory
) -> None:
    """Three deliveries in pages of two: newest first, the cursor leading to the last one,
    then null; ?status= filters."""
    with endpoint(event_types=["points.adjusted"]) as (webhook, receiver):
        customer_id = new_customer(api)["id"]
        credits = [adjust_with(api, customer_id, n + 1) for n in range(3)]
        for credit in credits:
            arrival(receiver, "points.adjusted", credit["id"])
        eventually(
            lambda: (
                len(deliveries(api, webhook["id"], status="delivered")["deliveries"]) == 3 or None
            ),
            WAIT_S,
            "three delivered deliveries in the log",
        )
        first = deliveries(api, webhook["id"], limit="2")
        assert len(first["deliveries"]) == 2 and first["next_cursor"] is not None
        rest = deliveries(api, webhook["id"], limit="2", cursor=first["next_cursor"])
        assert len(rest["deliveries"]) == 1 and rest["next_cursor"] is None
        items = first["deliveries"] + rest["deliveries"]
        assert [d["id"] for d in items] == sorted((d["id"] for d in items), reverse=True)
        assert all(d["status"] == "delivered" and d["attempt"] == 1 for d in items)
        assert all(MSG_ID.match(d["id"]) and EVT_ID.match(d["event_id"]) for d in items)
        assert deliveries(api, webhook["id"], status="failed")["deliveries"] == []


# --- the setting ---------------------------------------------------------------------------


def test_the_retry_schedule_setting() -> None:
    """Unset: the default schedule, over 24 hours in all; seconds with decimals otherwise;
    anything else refuses to start."""
    default = Settings.from_env({}).webhook_retry_schedule_s
    assert sum(default) > 24 * 3600
    assert list(default) == sorted(default)
    parsed = Settings.from_env({"LOYALTY_WEBHOOK_RETRY_SCHEDULE": "0.2, 0.4,1"})
    assert parsed.webhook_retry_schedule_s == (Decimal("0.2"), Decimal("0.4"), Decimal(1))
    for bad in ("a,1", "-1", "1,,2", "nan", "1e9", ",".join(["1"] * 33)):
        with pytest.raises(ConfigError, match="LOYALTY_WEBHOOK_RETRY_SCHEDULE"):
            Settings.from_env({"LOYALTY_WEBHOOK_RETRY_SCHEDULE": bad})


# --- the sender's HTTP, against receivers that answer in each way HTTP/1.x allows -----------


async def _serve_answers(
    answers: list[bytes], connections: list[int] | None = None
) -> tuple[asyncio.Server, list[bytes]]:
    """A server that reads each request whole and writes the next of `answers` (closing the
    connection after an answer that ends in b"<close>"); returns it and the requests. Each
    connection it accepts appends to `connections`."""
    requests: list[bytes] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if connections is not None:
            connections.append(len(requests))
        try:
            while answers:
                head = await reader.readuntil(b"\r\n\r\n")
                length = int(re.search(rb"content-length: (\d+)", head).group(1))  # type: ignore[union-attr]
                requests.append(head + await reader.readexactly(length))
                answer = answers.pop(0)
                closing = answer.endswith(b"<close>")
                writer.write(answer.removesuffix(b"<close>"))
                await writer.drain()
                if closing:
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    return await asyncio.start_server(handle, "127.0.0.1", 0), requests


@pytest.mark.parametrize(
    ("answers", "statuses", "connections"),
    [
        ([b"HTTP/1.1 204 No Content\r\n\r\n"] * 3, [204, 204, 204], 1),
        (
            [b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"] * 2,
            [200, 200],
            1,
        ),
        (
            [b"HTTP/1.1 500 Oops\r\ncontent-length: 4\r\n\r\nboom", b"HTTP/1.1 200 OK\r\n\r\n"],
            [500, 200],
            1,
        ),
        (
            [b"HTTP/1.0 202 Accepted\r\n\r\nbody<close>", b"HTTP/1.1 200 OK\r\n\r\n"],
            [202, 200],
            2,
        ),
        (
            [b"HTTP/1.1 410 Gone\r\nconnection: close\r\n\r\n<close>", b"HTTP/1.1 200 OK\r\n\r\n"],
            [410, 200],
            2,
        ),
    ],
    ids=["no-body", "chunked", "length", "http1.0-close", "connection-close"],
)
def test_the_sender_reads_each_kind_of_answer(
    answers: list[bytes], statuses: list[int], connections: int
) -> None:
    """Statuses come back whatever the answer's framing, also for the request after the
    receiver closed the connection; every request carries its headers and its length; a
    connection is kept for the next request whenever the answer's end is known (a 204 has
    no body), and only then."""
    from loyalty.webhooks.sender import Sender

    accepted: list[int] = []

    async def main() -> tuple[list[int], list[bytes]]:
        server, requests = await _serve_answers(list(answers), accepted)
        port = server.sockets[0].getsockname()[1]
        sender = Sender("test", 10)
        try:
            got = []
            for _ in statuses:
                headers = {"webhook-id": "evt_1", "content-type": "application/json"}
                got.append(
                    await asyncio.wait_for(
                        sender.post(f"http://127.0.0.1:{port}/in?x=1", headers, b'{"a":1}'), 10
                    )
                )
            return got, requests
        finally:
            await sender.close()
            server.close()

    got, requests = asyncio.run(main())
    assert got == statuses
    assert len(accepted) == connections, accepted
    for request in requests:
        assert request.startswith(b"POST /in?x=1 HTTP/1.1\r\n")
        assert b"webhook-id: evt_1\r\n" in request
        assert b"content-length: 7\r\n" in request
        assert request.endswith(b'\r\n\r\n{"a":1}')


@pytest.mark.parametrize(
    "body",
    [
        b"{}",
        '{"reason":"caf\u00e9 \u2615","delta":"1.50"}'.encode(),
        b'{"a":"' + b"x" * 5000 + b'"}',
    ],
    ids=["empty", "non-ascii", "large"],
)
def test_signatures_are_those_the_standardwebhooks_package_makes_and_accepts(body: bytes) -> None:
    from standardwebhooks import Webhook

    from loyalty.webhooks.signing import new_secret, signed_headers

    secret = new_secret()
    headers = signed_headers(secret, "evt_01JABCDEF", body, 1_790_000_000.75)
    moment = datetime.fromtimestamp(1_790_000_000, tz=UTC)
    assert headers["webhook-timestamp"] == "1790000000"
    assert headers["webhook-signature"] == Webhook(secret).sign(
        "evt_01JABCDEF", moment, body.decode()
    )
    other = new_secret()
    assert (
        signed_headers(other, "evt_01JABCDEF", body, 1_790_000_000)["webhook-signature"]
        != (headers["webhook-signature"])
    )


def _message(number: int) -> tuple[dict[str, str], bytes]:
    return {"webhook-id": f"evt_{number}"}, b'{"n":%d}' % number


def _ids(requests: list[bytes]) -> list[str]:
    return [re.search(rb"webhook-id: (\S+)", r).group(1).decode() for r in requests]  # type: ignore[union-attr]


def test_the_sender_pipelines_on_a_kept_connection_and_sends_again_what_a_close_left() -> None:
    """A new connection carries one request; once it has answered, the rest go pipelined on
    it. When the receiver closes it with requests unanswered, those go again on a new one:
    every message is answered, each received once (the receiver read no further)."""
    from loyalty.webhooks.sender import Sender

    no_content = b"HTTP/1.1 204 No Content\r\n\r\n"
    answers = [no_content] * 5 + [no_content + b"<close>"] + [no_content] * 6
    accepted: list[int] = []

    async def main() -> tuple[list[int | Exception], list[bytes]]:
        server, requests = await _serve_answers(answers, accepted)
        port = server.sockets[0].getsockname()[1]
        sender = Sender("test", 10, pipeline_max=16)
        try:
            outcomes = await asyncio.wait_for(
                sender.post_many(f"http://127.0.0.1:{port}/", [_message(n) for n in range(12)]),
                20,
            )
            return outcomes, requests
        finally:
            await sender.close()
            server.close()

    outcomes, requests = asyncio.run(main())
    assert outcomes == [204] * 12
    assert accepted == [0, 6]  # the second connection came after six requests were read
    assert _ids(requests) == [f"evt_{n}" for n in range(12)]


def test_a_receiver_that_leaves_pipelined_requests_unanswered_gets_one_at_a_time() -> None:
    """A naive receiver that answers each read of its socket once, whatever it held, leaves
    pipelined requests unanswered: the one it was awaited for times out (a failed attempt,
    retried on the schedule), the others go again, and from then on that origin gets one
    request at a time, all answered."""
    from loyalty.webhooks.sender import Sender

    async def naive(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while await reader.read(65536):
                writer.write(b"HTTP/1.1 204 No Content\r\ncontent-length: 0\r\n\r\n")
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    async def main() -> tuple[list[int | Exception], list[int | Exception]]:
        server = await asyncio.start_server(naive, "127.0.0.1", 0)
        url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/"
        sender = Sender("test", 0.5, pipeline_max=8)
        try:
            first = await asyncio.wait_for(
                sender.post_many(url, [_message(n) for n in range(9)]), 20
            )
            then = await asyncio.wait_for(
                sender.post_many(url, [_message(n) for n in range(9)]), 20
            )
            return first, then
        finally:
            await sender.close()
            server.close()

    first, then = asyncio.run(main())
    assert first[0] == 204
    timed_out = [n for n, outcome in enumerate(first) if isinstance(outcome, TimeoutError)]
    assert len(timed_out) == 1 and timed_out[0] > 1, first
    assert all(outcome == 204 for n, outcome in enumerate(first) if n not in timed_out), first
    assert then == [204] * 9


def test_the_sender_refuses_what_is_not_http() -> None:
    from loyalty.webhooks.sender import Sender, SendError

    async def main() -> None:
        server, _ = await _serve_answers([b"SSH-2.0-OpenSSH\r\n\r\n<close>"])
        port = server.sockets[0].getsockname()[1]
        sender = Sender("test", 10)
        try:
            with pytest.raises(SendError):
                await asyncio.wait_for(sender.post(f"http://127.0.0.1:{port}/", {}, b"{}"), 10)
        finally:
            await sender.close()
            server.close()

    asyncio.run(main())


# --- the relay -------------------------------------------------------------------------------


def relay_pid(server: Server) -> int | None:
    """The pid of the server's relay process (`loyalty relay`), if one is running."""
    found = subprocess.run(
        ["pgrep", "-P", str(server.process.pid), "-f", "loyalty relay"],
        capture_output=True,
        text=True,
        check=False,
    )
    pids = found.stdout.split()
    return int(pids[0]) if len(pids) == 1 else None


def test_a_relay_that_dies_is_started_again_and_delivers(
    hooked: Backend, api: httpx.Client, endpoint: EndpointFactory
) -> None:
    """Delivery runs in a process of its own beside the workers; killed, the server starts
    another, which takes the lease over and delivers what is committed meanwhile."""
    first = eventually(lambda: relay_pid(hooked.server), WAIT_S, "the server's relay")
    os.kill(first, signal.SIGKILL)
    eventually(
        lambda: True if relay_pid(hooked.server) not in (None, first) else None,
        WAIT_S,
        "a new relay",
    )
    with endpoint() as (_, receiver):
        customer = new_customer(api)
        credit = adjust_with(api, customer["id"], 5)
        arrival(receiver, "points.adjusted", credit["id"])
