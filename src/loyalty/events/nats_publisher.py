"""Publishes the outbox to NATS JetStream (SPEC 8.2), from the one relay of all servers that
holds the lease `nats`.

Each event goes to subject `<prefix>.<type>` with header `Nats-Msg-Id` = the event id and the
event's JSON as the body, in position (commit) order, on one connection. A window of events is
sent pipelined and its acks awaited; only then may the consumer's position move past it (it is
stored every 0.5 s under load). A crash in between sends those events again, and JetStream's
duplicate window drops what it already holds.

Order: messages of one connection reach the stream in the order they were sent, so each
publisher stores events in commit order. Two publishers at once (a lease that ran out under a
stalled worker) both send in commit order from positions the outbox stored, and JetStream keeps
the first copy of each, so an event is still stored after every event before it.

NATS down: adjustments never wait for NATS (this runs beside them, never in their
transaction); events wait in the outbox, the publisher retries with backoff and warns once
per outage.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
from collections.abc import Sequence
from dataclasses import dataclass

import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client as Nats
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import StorageType

from loyalty.db import Database
from loyalty.errors import DatabaseUnavailable
from loyalty.events import leases
from loyalty.events.tail import Pending, Tail

log = logging.getLogger("loyalty.nats")

LEASE = "nats"
LEASE_TTL_MS = 10_000
# Renewing on every round would be a write five times a second per deployment; every 2 s
# keeps the lease with room to spare, and `advance` checks the owner whenever it stores.
LEASE_RENEW_S = 2.0
LEASE_RETRY_S = 2.0  # how often a relay without the lease tries to take it
POLL_S = 0.1  # the relay finds new commits by polling (every worker and server writes them)
STORE_EVERY_S = 0.5  # under load, how often the position is stored
WINDOW_MAX = 500  # events sent before their acks are awaited
# Under load, windows start at most this often (unless the last was full): each gathers the
# events of many commits, so reads of the outbox and writes to NATS stay few per event.
WINDOW_EVERY_S = 0.1
ACK_TIMEOUT_S = 5.0  # well under the lease's ttl, so a window ends before the lease does
CONNECT_TIMEOUT_S = 2
CLOSE_TIMEOUT_S = 2.0
HAND_OVER_S = 2.0
BACKOFF_FIRST_S = 0.5
BACKOFF_MAX_S = 10.0
# JetStream drops a message whose Nats-Msg-Id it stored within this window: longer than a
# restart after a crash takes, so the window sent again then is dropped.
DUPLICATE_WINDOW_S = 120.0
MSG_ID_HEADER = "Nats-Msg-Id"
EXPECTED_STREAM_HEADER = "Nats-Expected-Stream"  # refused unless the subject is the stream's
NO_RESPONDERS = "503"  # the status of the answer when no stream takes the subject

# What a NATS server that is down, unreachable or refusing raises.
NATS_ERRORS = (OSError, TimeoutError, nats.errors.Error)


@dataclass(frozen=True, slots=True)
class Target:
    """Where events go: the servers, the stream, and the subjects' first tokens."""

    servers: tuple[str, ...]
    stream: str
    subject_prefix: str

    def subject(self, event_type: str) -> str:
        return f"{self.subject_prefix}.{event_type}"


class _Unpublished(Exception):
    """A window was not wholly acknowledged: `cause` says why, `position` how far it was."""

    def __init__(self, cause: BaseException, position: int) -> None:
        super().__init__(str(cause) or type(cause).__name__)
        self.cause = cause
        self.position = position


class _Acks:
    """What JetStream answered for one window of messages, by each message's index.

    Messages are published with a reply subject of their own rather than through the client's
    publish_async, which spends a future, a semaphore, a random inbox token and a parsed ack
    object on each: the relay's largest cost per event (measured with py-spy)."""

    def __init__(self, window: str, size: int) -> None:
        self.window = window
        self.acked = bytearray(size)  # 1 once the message's ack came
        self.errors: dict[int, nats.errors.Error] = {}
        self.answered = 0
        self.all_in: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def take(self, subject: str, data: bytes, headers: dict[str, str] | None) -> None:
        _, window, number = subject.rsplit(".", 2)
        index = int(number) if window == self.window and number.isdigit() else -1
        if not 0 <= index < len(self.acked) or self.acked[index] or index in self.errors:
            return  # an earlier window's, or a repeat
        if headers and headers.get("Status") == NO_RESPONDERS:
            self.errors[index] = nats.js.errors.NoStreamResponseError()
        elif b'"error"' in data and "error" in (answer := json.loads(data)):
            try:
                nats.js.errors.APIError.from_error(answer["error"])
            except nats.js.errors.APIError as error:
                self.errors[index] = error
        else:
            self.acked[index] = 1  # stored, or a duplicate JetStream already holds
        self.answered += 1
        if self.answered == len(self.acked) and not self.all_in.done():
            self.all_in.set_result(None)

    def first_missing(self) -> int:
        """The index of the first message not acknowledged (the size when none is)."""
        missing = self.acked.find(0)
        return len(self.acked) if missing < 0 else missing


class Publisher:
    """The loop of one relay: take the lease, then publish what follows its position."""

    def __init__(self, db: Database, tail: Tail, target: Target) -> None:
        self._db = db
        self._tail = tail
        self._target = target
        self._owner = leases.new_owner()
        self._nc: Nats | None = None
        # Each window's acks come to `<inbox>.<window>.<index>`: a late ack of an earlier
        # window is told apart and ignored.
        self._inbox = ""
        self._windows = 0
        self._acks: _Acks | None = None
        self._outage_since: float | None = None
        self._client_failure: Exception | None = None  # what the client met last
        # How far JetStream has acknowledged (None: not holding the lease), and how far the
        # outbox has stored that: storing is a write, so under load it is done every
        # STORE_EVERY_S rather than after every window; a crash sends what was not stored
        # again, and JetStream drops it.
        self._position: int | None = None
        self._stored = 0

    async def run(self) -> None:
        try:
            await self._loop()
        finally:
            await self._close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._hand_over(), HAND_OVER_S)

    async def _hand_over(self) -> None:
        """Stores what was acknowledged and gives the lease up (a relay stopping), so that
        another relay takes over at once, where this one stopped."""
        if self._position is not None and self._position > self._stored:
            await leases.advance(self._db, LEASE, self._owner, self._position)
        await leases.release(self._db, LEASE, self._owner)

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        renew_at = store_at = 0.0
        backoff_s = BACKOFF_FIRST_S
        while True:
            try:
                if self._position is None or loop.time() >= renew_at:
                    held = await leases.hold(self._db, LEASE, self._owner, LEASE_TTL_MS)
                    renew_at = loop.time() + LEASE_RENEW_S
                    if held is None:
                        self._position = None
                        await self._close()  # another relay publishes
                        await asyncio.sleep(LEASE_RETRY_S * random.uniform(0.75, 1.25))
                        continue
                    self._position, self._stored = max(held, self._position or 0), held
                started = loop.time()
                rows = await self._tail.after(self._position, WINDOW_MAX)
                if rows:
                    self._position = await self._publish(rows)
                    self._recovered(loop.time())
                    backoff_s = BACKOFF_FIRST_S
                    if len(rows) < WINDOW_MAX:  # caught up: let the next window fill a while
                        await asyncio.sleep(max(0.0, started + WINDOW_EVERY_S - loop.time()))
                if self._position > self._stored and (not rows or loop.time() >= store_at):
                    if not await leases.advance(self._db, LEASE, self._owner, self._position):
                        self._position = None  # the lease went to another relay meanwhile
                        continue
                    self._stored, store_at = self._position, loop.time() + STORE_EVERY_S
                if not rows:
                    await asyncio.sleep(POLL_S)
            except _Unpublished as error:
                # What JetStream did acknowledge is stored, so that it is not sent again.
                if error.position > self._stored:
                    with contextlib.suppress(DatabaseUnavailable):
                        await leases.advance(self._db, LEASE, self._owner, error.position)
                self._position = None  # read again from the outbox, with the lease
                self._outage(loop.time(), error)
                await self._close()
                await asyncio.sleep(backoff_s * random.uniform(0.5, 1.0))
                backoff_s = min(backoff_s * 2, BACKOFF_MAX_S)
            except DatabaseUnavailable:
                await asyncio.sleep(backoff_s)
                backoff_s = min(backoff_s * 2, BACKOFF_MAX_S)
            except Exception:
                log.exception("NATS publishing failed; retrying")
                self._position = None
                await self._close()
                await asyncio.sleep(backoff_s)
                backoff_s = min(backoff_s * 2, BACKOFF_MAX_S)

    async def _publish(self, rows: Sequence[Pending]) -> int:
        """Sends `rows` in order on the one connection (so JetStream stores them in this
        order) and waits for their acks: the position of the last. Raises _Unpublished, with
        the position of the last event acknowledged after all those before it, when some
        were not acknowledged within ACK_TIMEOUT_S."""
        self._windows += 1
        acks = self._acks = _Acks(str(self._windows), len(rows))
        try:
            nc = await self._connected()
            headers = {EXPECTED_STREAM_HEADER: self._target.stream}
            for index, (row, body) in enumerate(rows):
                headers[MSG_ID_HEADER] = row.id
                await nc.publish(
                    self._target.subject(row.type),
                    body,
                    reply=f"{self._inbox}.{acks.window}.{index}",
                    headers=headers,
                )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(acks.all_in), ACK_TIMEOUT_S)
            missing = acks.first_missing()
            if missing < len(rows):
                raise acks.errors.get(missing) or TimeoutError(
                    f"no ack from JetStream within {ACK_TIMEOUT_S:g} s"
                )
        except NATS_ERRORS as error:
            missing = acks.first_missing()
            position = rows[missing - 1].row.position if missing else rows[0].row.position - 1
            raise _Unpublished(error, position) from error
        finally:
            self._acks = None
        return rows[-1].row.position

    async def _on_ack(self, msg: Msg) -> None:
        """The subscription's callback, for each answer JetStream sends to a reply subject."""
        if self._acks is not None:
            self._acks.take(msg.subject, msg.data, msg.headers)

    async def _connected(self) -> Nats:
        if self._nc is not None and self._nc.is_connected:
            return self._nc
        await self._close()
        nc = await nats.connect(
            servers=list(self._target.servers),
            connect_timeout=CONNECT_TIMEOUT_S,
            # Each server is tried twice, then connect gives up (left to itself, the client
            # tries for ever); reconnecting is this loop's job, with its backoff and its one
            # warning, where the client's own would buffer publishes while NATS is away.
            max_reconnect_attempts=1,
            reconnect_time_wait=0.1,
            allow_reconnect=False,
            error_cb=self._client_error,
            name="loyalty",
        )
        try:
            await ensure_stream(nc.jetstream(timeout=ACK_TIMEOUT_S), self._target)
            self._inbox = nc.new_inbox()
            await nc.subscribe(f"{self._inbox}.*.*", cb=self._on_ack)
        except BaseException:
            await _close_quietly(nc)
            raise
        self._nc = nc
        return nc

    async def _close(self) -> None:
        nc, self._nc = self._nc, None
        if nc is not None:
            await _close_quietly(nc)

    async def _client_error(self, error: Exception) -> None:
        """The client's error callback: kept to explain the outage (the loop reports each
        outage once, where the client would log every failed attempt)."""
        self._client_failure = error

    def _outage(self, now: float, error: _Unpublished) -> None:
        if self._outage_since is None:
            self._outage_since = now
            cause = f"{error}"
            if isinstance(error.cause, nats.errors.NoServersError) and self._client_failure:
                cause += f": {self._client_failure!r}"
            log.warning(
                "NATS publishing paused (%s); events wait in the outbox and are published"
                " when NATS answers again",
                cause,
            )
        self._client_failure = None

    def _recovered(self, now: float) -> None:
        if self._outage_since is not None:
            log.info("NATS publishing resumed after %.1f s", now - self._outage_since)
            self._outage_since = None


async def ensure_stream(js: JetStreamContext, target: Target) -> None:
    """Creates the stream if it is missing. An existing stream is left as it is, whatever its
    configuration: its data is never touched."""
    try:
        info = await js.stream_info(target.stream)
    except nats.js.errors.NotFoundError:
        try:
            await js.add_stream(
                name=target.stream,
                subjects=[f"{target.subject_prefix}.>"],
                duplicate_window=DUPLICATE_WINDOW_S,
                storage=StorageType.FILE,
            )
            log.info("created the JetStream stream %s", target.stream)
            return
        except nats.js.errors.BadRequestError:
            info = await js.stream_info(target.stream)  # another worker created it first
    subjects = info.config.subjects or []
    wanted = f"{target.subject_prefix}.>"
    if wanted not in subjects and ">" not in subjects:
        log.info("the stream %s exists with subjects %s; left as it is", target.stream, subjects)


async def _close_quietly(nc: Nats) -> None:
    with contextlib.suppress(*NATS_ERRORS, asyncio.TimeoutError):
        await asyncio.wait_for(nc.close(), CLOSE_TIMEOUT_S)


async def run(db: Database, tail: Tail, url: str, stream: str, subject_prefix: str) -> None:
    """The publisher of one relay, until cancelled."""
    target = Target(tuple(url.split(",")), stream, subject_prefix)
    await Publisher(db, tail, target).run()
