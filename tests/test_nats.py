"""NATS JetStream (SPEC 8.2), against the real NATS server: every committed event is
published to subject `<prefix>.<type>` with `Nats-Msg-Id` = its id and the feed's event as
the body, in commit order; JetStream holds each exactly once, also when a publisher sends a
window again (a rewound position, a SIGKILL between publishing and storing the position); an
unreachable NATS never fails an adjustment, and the backlog goes out once NATS is back.
On SQLite and PostgreSQL.

Each test publishes to a stream and subjects of its own (LOYALTY_NATS_STREAM and
LOYALTY_NATS_SUBJECT_PREFIX), so concurrent runs on one NATS never meet, and deletes its
stream at the end. Waits poll and are bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import nats
import nats.errors
import nats.js.errors
import pytest
from nats.js.api import StreamConfig

from loyalty.config import ConfigError, Settings
from loyalty.events.catalogue import EVENT_TYPES
from tests.conftest import IN_CI
from tests.support import (
    ADJUST_PATH,
    ADJUSTMENTS_PATH,
    PENDING_PATH,
    Backend,
    Server,
    adjust_with,
    backends_on_one_database,
    eventually,
    free_port,
    iso_in,
    log_tail,
    login,
    new_customer,
    ok,
    post_json,
    run_cli,
    sql,
)

if TYPE_CHECKING:
    from tests.conftest import DatabaseFactory

NATS_URL = os.environ.get("LOYALTY_TEST_NATS_URL", "nats://127.0.0.1:4222")
WAIT_S = 60.0  # the most publishing may take to catch up, on a very busy machine
FEED_PAGE = 100


# --- NATS from the test's side -------------------------------------------------------------


@dataclass(frozen=True)
class Stored:
    """One message as the stream holds it."""

    seq: int
    subject: str
    msg_id: str | None
    body: bytes

    def event(self) -> Any:
        return json.loads(self.body, parse_float=Decimal)


def _nats(work: Callable[[Any], Any], url: str = NATS_URL) -> Any:
    """`work(js)` on a fresh connection to the NATS at `url` (a JetStream context)."""

    async def run() -> Any:
        nc = await nats.connect(
            url,
            connect_timeout=5,
            allow_reconnect=False,
            max_reconnect_attempts=1,  # else it tries for two minutes before giving up
            reconnect_time_wait=0.1,
        )
        try:
            return await work(nc.jetstream(timeout=10))
        finally:
            await nc.close()

    return asyncio.run(run())


@dataclass
class Stream:
    """The stream and subject prefix of one test."""

    name: str
    prefix: str
    url: str = NATS_URL  # the NATS that holds it

    def env(self, url: str | None = None) -> dict[str, str]:
        """The service's settings to publish to this stream (at `url`, if given)."""
        return {
            "LOYALTY_NATS_URL": url or self.url,
            "LOYALTY_NATS_STREAM": self.name,
            "LOYALTY_NATS_SUBJECT_PREFIX": self.prefix,
        }

    def messages(self) -> list[Stored]:
        """Every message the stream holds, in stream order (none if it does not exist)."""

        async def read(js: Any) -> list[Stored]:
            try:
                info = await js.stream_info(self.name)
            except nats.js.errors.NotFoundError:
                return []
            stored = []
            for seq in range(info.state.first_seq, info.state.last_seq + 1):
                msg = await js.get_msg(self.name, seq)
                headers = msg.headers or {}
                stored.append(Stored(seq, msg.subject, headers.get("Nats-Msg-Id"), msg.data or b""))
            return stored

        result: list[Stored] = _nats(read, self.url)
        return result

    def config(self) -> Any:
        async def read(js: Any) -> Any:
            return (await js.stream_info(self.name)).config

        return _nats(read, self.url)

    def delete(self) -> None:
        async def delete(js: Any) -> None:
            with contextlib.suppress(nats.js.errors.NotFoundError):
                await js.delete_stream(self.name)

        _nats(delete, self.url)


@pytest.fixture(scope="session")
def nats_available() -> None:
    async def probe(js: Any) -> None:
        await js.account_info()

    try:
        _nats(probe)
    except (OSError, TimeoutError, nats.errors.Error) as error:
        if IN_CI:
            pytest.fail(f"NATS JetStream is unreachable under CI at {NATS_URL}: {error!r}")
        pytest.skip(f"NATS JetStream is not reachable at {NATS_URL} (CI=true makes this fail)")


@pytest.fixture
def stream(nats_available: None) -> Iterator[Stream]:
    """A stream and subject prefix for this test alone, deleted at the end."""
    tag = uuid.uuid4().hex[:10]
    made = Stream(f"LOYALTY_TEST_{tag}", f"loyaltytest{tag}")
    yield made
    made.delete()


@contextmanager
def own_nats(store: Path, port: int) -> Iterator[subprocess.Popen[bytes]]:
    """A nats-server with JetStream of the test's own on `port`, its data in `store`, so
    that the test may kill it; stopped at the end."""
    server = shutil.which("nats-server") or "/usr/sbin/nats-server"
    args = [server, "-js", "-a", "127.0.0.1", "-p", str(port), "-sd", str(store)]
    process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:

        def answers() -> bool | None:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
                return True
            return None

        eventually(answers, WAIT_S, f"nats-server on port {port}")
        yield process
    finally:
        process.kill()
        process.wait(timeout=30)


# --- the service's side --------------------------------------------------------------------


def feed(client: httpx.Client) -> list[Any]:
    """The whole events feed, oldest first (amounts as Decimal)."""
    events: list[Any] = []
    params = {"limit": str(FEED_PAGE)}
    for _ in range(10_000):
        page = ok(client.get("/admin/loyalty/events", params=params))
        events.extend(page["events"])
        if not page["has_more"]:
            return events
        params["after"] = events[-1]["id"]
    raise AssertionError("the feed never ended")


def consumer_position(database_url: str) -> int | None:
    rows = sql(database_url, "SELECT position FROM loyalty_event_consumers WHERE name = 'nats'")
    return int(rows[0][0]) if rows else None


def last_position(database_url: str) -> int:
    return int(sql(database_url, "SELECT last_position FROM loyalty_event_sequence")[0][0])


def wait_published(database_url: str, stream: Stream, servers: list[Server]) -> list[Stored]:
    """Waits until the publisher's position reaches the outbox's last event; the stream then."""

    def probe() -> bool | None:
        last = last_position(database_url)
        return True if last and consumer_position(database_url) == last else None

    try:
        eventually(probe, WAIT_S, "the publisher reaching the last event")
    except AssertionError as error:
        raise AssertionError(f"{error}\n{log_tail(*servers)}") from None
    return stream.messages()


def assert_published_once(events: list[Any], stored: list[Stored], stream: Stream) -> None:
    """The stream holds exactly the feed's events, each once, each on its type's subject,
    with its id as Nats-Msg-Id and the feed's event as the body, and each customer's events
    in feed order."""
    counts = Counter(message.msg_id for message in stored)
    assert [msg_id for msg_id, count in counts.items() if count > 1] == []
    assert set(counts) == {event["id"] for event in events}
    by_id = {event["id"]: event for event in events}
    for message in stored:
        event = by_id[message.msg_id]
        assert message.subject == f"{stream.prefix}.{event['type']}"
        assert message.event() == event
    feed_order = [event["id"] for event in events]
    stream_order = [message.msg_id for message in stored]
    for customer in {customer_of(event) for event in events}:
        of_customer = {event["id"] for event in events if customer_of(event) == customer}
        assert [i for i in stream_order if i in of_customer] == [
            i for i in feed_order if i in of_customer
        ], f"the events of {customer} are out of order"


def customer_of(event: Any) -> str:
    data = event["data"]
    return str(data["id"] if event["type"] == "customer.created" else data["customer_id"])


def all_event_types(client: httpx.Client) -> None:
    """One change of each kind: a customer, an adjustment, a reversal, an expiration, pending
    points released and pending points voided."""
    customer = new_customer(client)["id"]
    kept = adjust_with(client, customer, 500, reason="kept")
    ok(post_json(client, f"{ADJUSTMENTS_PATH}/{kept['id']}/reverse", {"points": 100}))
    # After the reversal, which would otherwise spend these soonest-expiring points first.
    credit = adjust_with(client, customer, 50, expires_at=iso_in(1.0))
    for action in ("release", "void"):
        body = {"customer_id": customer, "points": 25, "release_at": iso_in(86400)}
        pending = ok(post_json(client, PENDING_PATH, body))["pending"]
        ok(post_json(client, f"{PENDING_PATH}/{pending['id']}/{action}", {}))

    def expired() -> bool | None:
        history = client.get(f"/admin/loyalty/points/{customer}/history").json()
        types = {item["type"] for item in history["adjustments"]}
        return True if "expiration" in types else None

    eventually(expired, WAIT_S, f"the expiration of {credit['id']}")


# --- the tests -----------------------------------------------------------------------------


def test_settings_are_checked() -> None:
    """LOYALTY_NATS_URL takes nats:// (and tls, ws, wss) URLs, comma-separated; the stream
    and prefix must be names JetStream accepts; unset, there is no NATS at all."""
    assert Settings.from_env({}).nats_url is None
    settings = Settings.from_env(
        {"LOYALTY_NATS_URL": "nats://127.0.0.1:4222, tls://u:p@nats.example:4443"}
    )
    assert settings.nats_url == "nats://127.0.0.1:4222,tls://u:p@nats.example:4443"
    assert (settings.nats_stream, settings.nats_subject_prefix) == ("LOYALTY", "loyalty")
    assert "u:p" not in repr(settings)
    for name, value in [
        ("LOYALTY_NATS_URL", "http://127.0.0.1:4222"),
        ("LOYALTY_NATS_URL", "nats://" + "a" * 2050),
        ("LOYALTY_NATS_STREAM", "LOYALTY.X"),
        ("LOYALTY_NATS_STREAM", "x" * 65),
        ("LOYALTY_NATS_SUBJECT_PREFIX", "loyalty.>"),
        ("LOYALTY_NATS_SUBJECT_PREFIX", "a..b"),
    ]:
        with pytest.raises(ConfigError, match=name):
            Settings.from_env({name: value})


def test_without_nats_url_the_client_is_never_loaded(tmp_path: Path) -> None:
    """A worker started without LOYALTY_NATS_URL runs without importing the NATS client."""
    url = f"sqlite:///{tmp_path / 'plain.db'}"
    assert run_cli(url, "db", "migrate").returncode == 0
    script = (
        "import asyncio, sys\n"
        "from loyalty.app import create_app\n"
        "from loyalty.config import Settings\n"
        "app = create_app(Settings(database_url=sys.argv[1]))\n"
        "async def main():\n"
        "    async with app.router.lifespan_context(app):\n"
        "        await asyncio.sleep(0.3)\n"
        "        print(sorted(m for m in sys.modules if m == 'nats' or m.startswith('nats.')))\n"
        "asyncio.run(main())\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script, url],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={k: v for k, v in os.environ.items() if not k.startswith("LOYALTY_")},
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_every_event_type_is_published_as_the_feed_has_it(
    databases: DatabaseFactory, tmp_path: Path, stream: Stream
) -> None:
    """Each type of event reaches JetStream on `<prefix>.<type>`, with Nats-Msg-Id = its id
    and the feed's event as its body, each once and in the feed's order; the stream is created
    with the subjects and a duplicate window."""
    url = databases.new_url()
    env = {**stream.env(), "LOYALTY_SCHEDULER_INTERVAL_SECONDS": "0.2"}
    with Backend.start(databases.kind, url, tmp_path, **env) as backend:
        with backend.client() as client:
            all_event_types(client)
            events = feed(client)
        stored = wait_published(url, stream, [backend.server])
    assert {event["type"] for event in events} == set(EVENT_TYPES)
    assert_published_once(events, stored, stream)
    assert [message.msg_id for message in stored] == [event["id"] for event in events]
    config = stream.config()
    assert config.subjects == [f"{stream.prefix}.>"]
    assert config.duplicate_window >= 60


def test_an_existing_stream_is_left_as_it_is(
    databases: DatabaseFactory, tmp_path: Path, stream: Stream
) -> None:
    """A stream that exists already, with a configuration of its own and messages, keeps
    both: the publisher adds to it and changes nothing else."""

    async def create(js: Any) -> None:
        config = StreamConfig(
            name=stream.name,
            subjects=[f"{stream.prefix}.>", "elsewhere.>"],
            duplicate_window=90,
            max_msgs=100_000,
        )
        await js.add_stream(config)
        await js.publish("elsewhere.before", b"kept")

    _nats(create)
    url = databases.new_url()
    with Backend.start(databases.kind, url, tmp_path, **stream.env()) as backend:
        with backend.client() as client:
            customer = new_customer(client)["id"]
            adjust_with(client, customer, 10)
            events = feed(client)
        stored = wait_published(url, stream, [backend.server])
    assert stored[0].subject == "elsewhere.before" and stored[0].body == b"kept"
    assert_published_once(events, stored[1:], stream)
    config = stream.config()
    assert config.subjects == [f"{stream.prefix}.>", "elsewhere.>"]
    assert (config.duplicate_window, config.max_msgs) == (90, 100_000)


def test_a_window_sent_again_is_dropped_by_the_duplicate_window(
    databases: DatabaseFactory, tmp_path: Path, stream: Stream
) -> None:
    """The crash window: events published, their position not stored. With the position set
    back to the start and the service restarted, every event is sent again and acknowledged
    (the position reaches the end again), and JetStream keeps one copy of each."""
    url = databases.new_url()
    with Backend.start(databases.kind, url, tmp_path, **stream.env()) as backend:
        with backend.client() as client:
            customers = [new_customer(client)["id"] for _ in range(3)]
            for i in range(30):
                adjust_with(client, customers[i % 3], i + 1)
            events = feed(client)
        before = wait_published(url, stream, [backend.server])
    assert_published_once(events, before, stream)

    sql(url, "UPDATE loyalty_event_consumers SET position = 0 WHERE name = 'nats'")
    with Server.start(url, tmp_path, **stream.env()) as server:
        after = wait_published(url, stream, [server])
        with httpx.Client(base_url=server.base_url, timeout=30) as client:
            client.headers["Authorization"] = f"Bearer {backend.token}"
            again = feed(client)
    assert again == events
    assert after == before


@dataclass
class Load:
    """Adjustments sent without pause by a thread until told to stop: the ids of those
    answered 200."""

    base_url: str
    token: str
    customers: list[str]
    acked: list[str] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    clients: int = 8

    def run(self) -> None:
        asyncio.run(self._main())

    async def _main(self) -> None:
        headers = {"Authorization": f"Bearer {self.token}"}
        async with httpx.AsyncClient(base_url=self.base_url, headers=headers, timeout=30) as c:
            await asyncio.gather(*(self._client(c, n) for n in range(self.clients)))

    async def _client(self, client: httpx.AsyncClient, n: int) -> None:
        i = 0
        while not self.stop.is_set():
            i += 1
            body = {"customer_id": self.customers[(n + i) % len(self.customers)], "delta": 1}
            try:
                response = await client.post(ADJUST_PATH, json=body)
            except httpx.TransportError:
                await asyncio.sleep(0.05)  # the server is down: nothing is recorded now
                continue
            if response.status_code == 200:
                self.acked.append(response.json()["id"])


def test_sigkill_while_publishing_loses_and_repeats_nothing(
    databases: DatabaseFactory, tmp_path: Path, stream: Stream
) -> None:
    """SIGKILL of the whole `loyalty serve --workers 2` while adjustments stream in and are
    being published; restarted on the same database, every committed change's event is in
    the stream exactly once and in the feed exactly once, each customer's in commit order,
    and every adjustment answered 200 is among them."""
    url = databases.new_url()
    env = stream.env()
    first = Server.launch(url, tmp_path, workers=2, **env)
    servers = [first]
    try:
        token = login(first, "admin@example.com", "correct horse battery staple")
        with httpx.Client(base_url=first.base_url, timeout=30) as client:
            client.headers["Authorization"] = f"Bearer {token}"
            customers = [new_customer(client)["id"] for _ in range(4)]
        load = Load(first.base_url, token, customers)
        thread = threading.Thread(target=load.run)
        thread.start()
        try:
            eventually(
                lambda: True if len(load.acked) >= 150 and len(stream.messages()) >= 50 else None,
                WAIT_S,
                "adjustments being made and published",
            )
            first.kill()
            time.sleep(0.3)  # the clients meet a dead server for a moment
        finally:
            load.stop.set()
            thread.join(timeout=60)
        assert not thread.is_alive()
        second = Server.launch(url, tmp_path, workers=2, **env)
        servers.append(second)
        stored = wait_published(url, stream, servers)
        with httpx.Client(base_url=second.base_url, timeout=30) as client:
            client.headers["Authorization"] = f"Bearer {token}"
            events = feed(client)
    finally:
        for server in servers:
            server.stop()
    ids = [event["id"] for event in events]
    assert len(ids) == len(set(ids)), "the feed repeats an event"
    assert_published_once(events, stored, stream)
    adjusted = {event["data"]["id"] for event in events if event["type"] == "points.adjusted"}
    assert set(load.acked) <= adjusted


def test_unreachable_nats_never_fails_an_adjustment_and_the_backlog_follows(
    databases: DatabaseFactory, tmp_path: Path, stream: Stream
) -> None:
    """With LOYALTY_NATS_URL naming a closed port, adjustments succeed and the events wait in
    the outbox; the outage is logged once, not on every retry. Restarted with the real NATS,
    the service publishes the whole backlog."""
    url = databases.new_url()
    closed = stream.env(f"nats://127.0.0.1:{free_port()}")
    with Backend.start(databases.kind, url, tmp_path, **closed) as backend:
        with backend.client() as client:
            customer = new_customer(client)["id"]
            for i in range(20):
                adjust_with(client, customer, i + 1)
        server = backend.server
        eventually(
            lambda: True if "NATS publishing paused" in server.log() else None,
            WAIT_S,
            "the warning of the outage",
        )
        time.sleep(3.0)  # several retries, each refused
        assert server.log().count("NATS publishing paused") == 1, server.log()
        assert consumer_position(url) == 0
    assert stream.messages() == []

    with Server.start(url, tmp_path, **stream.env()) as server:
        stored = wait_published(url, stream, [server])
        with httpx.Client(base_url=server.base_url, timeout=30) as client:
            client.headers["Authorization"] = f"Bearer {backend.token}"
            events = feed(client)
    assert len(events) == 21
    assert_published_once(events, stored, stream)


def test_a_nats_outage_is_waited_out_and_the_backlog_follows(
    databases: DatabaseFactory, tmp_path: Path, nats_available: None
) -> None:
    """NATS killed under a running service: adjustments still succeed, the outage is logged
    once; NATS back on the same port and data: the backlog goes out without a restart of the
    service, and the stream holds every event once, in order."""
    port, store = free_port(), tmp_path / "nats-store"
    stream = Stream(
        f"LOYALTY_TEST_{uuid.uuid4().hex[:10]}", "loyaltyoutage", f"nats://127.0.0.1:{port}"
    )
    url = databases.new_url()
    with Backend.start(databases.kind, url, tmp_path, **stream.env()) as backend:
        server = backend.server
        with backend.client() as client:
            customer = new_customer(client)["id"]
            with own_nats(store, port):
                for i in range(10):
                    adjust_with(client, customer, i + 1)
                wait_published(url, stream, [server])
            for _ in range(10):
                adjust_with(client, customer, -1)
            eventually(
                lambda: True if "NATS publishing paused" in server.log() else None,
                WAIT_S,
                "the warning of the outage",
            )
            with own_nats(store, port):
                stored = wait_published(url, stream, [server])
                events = feed(client)
        assert server.log().count("NATS publishing paused") == 1, log_tail(server)
        assert "NATS publishing resumed" in server.log()
    assert len(events) == 21
    assert_published_once(events, stored, stream)
    assert [message.msg_id for message in stored] == [event["id"] for event in events]


def test_two_servers_publish_each_event_once_and_hand_over_on_stop(
    databases: DatabaseFactory, tmp_path: Path, stream: Stream
) -> None:
    """Two server processes on one database, adjusting the same customers: one publishes at a
    time (the lease), so the stream holds each event once and in commit order. The first
    stopped, the second goes on publishing from where the publisher stopped."""
    url = databases.new_url()
    with backends_on_one_database(databases.kind, url, tmp_path, **stream.env()) as backends:
        first, second = backends
        with first.client() as one, second.client() as two:
            customers = [new_customer(one)["id"] for _ in range(2)]
            for i in range(20):
                adjust_with((one, two)[i % 2], customers[(i // 2) % 2], i + 1)
            wait_published(url, stream, [first.server, second.server])
            first.server.stop()
            for i in range(10):
                adjust_with(two, customers[i % 2], 1)
            stored = wait_published(url, stream, [second.server])
            events = feed(two)
    assert len(events) == 32
    assert_published_once(events, stored, stream)
    assert [message.msg_id for message in stored] == [event["id"] for event in events]


def test_a_windows_acks_are_read_by_index_and_errors_kept() -> None:
    """What JetStream answers to each message's own reply subject: a stored or duplicate ack
    counts, an error or a no-responders status is kept for its message, and an answer of an
    earlier window, a repeat or a stray subject changes nothing."""
    import nats.js.errors

    from loyalty.events.nats_publisher import _Acks

    async def main() -> None:
        acks = _Acks("7", 4)
        inbox = "_INBOX.abc"
        acks.take(f"{inbox}.7.0", b'{"stream":"LOYALTY","seq":10}', None)
        acks.take(f"{inbox}.6.1", b'{"stream":"LOYALTY","seq":11}', None)  # an earlier window
        acks.take(f"{inbox}.7.x", b'{"stream":"LOYALTY","seq":11}', None)  # not an index
        acks.take(f"{inbox}.7.9", b'{"stream":"LOYALTY","seq":11}', None)  # out of range
        acks.take(f"{inbox}.7.1", b'{"stream":"LOYALTY","seq":9,"duplicate": true}', None)
        acks.take(f"{inbox}.7.1", b'{"stream":"LOYALTY","seq":9}', None)  # a repeat
        assert acks.first_missing() == 2 and not acks.all_in.done()
        error = b'{"error":{"code":400,"err_code":10060,"description":"expected stream does not'
        error += b' match"}}'
        acks.take(f"{inbox}.7.2", error, None)
        acks.take(f"{inbox}.7.3", b"", {"Status": "503"})
        assert acks.all_in.done()
        assert acks.first_missing() == 2
        assert isinstance(acks.errors[2], nats.js.errors.BadRequestError)
        assert "expected stream does not match" in str(acks.errors[2])
        assert isinstance(acks.errors[3], nats.js.errors.NoStreamResponseError)
        named = _Acks("1", 1)
        named.take(f"{inbox}.1.0", b'{"stream":"error","seq":1}', None)  # a stream named error
        assert named.first_missing() == 1 and not named.errors

    asyncio.run(main())
