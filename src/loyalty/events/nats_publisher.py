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
import logging
import random
from collections.abc import Sequence
from dataclasses import dataclass

import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client as Nats
from nats.js import JetStreamContext
from nats.js.api import PubAck, StorageType

from loyalty.db import Database
from loyalty.errors import DatabaseUnavailable
from loyalty.events import leases, repository
from loyalty.events.repository import EventRow
from loyalty.events.schemas import event_json

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


class Publisher:
    """The loop of one relay: take the lease, then publish what follows its position."""

    def __init__(self, db: Database, target: Target) -> None:
        self._db = db
        self._target = target
        self._owner = leases.new_owner()
        self._nc: Nats | None = None
        self._js: JetStreamContext | None = None
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
                async with self._db.read() as conn:
                    rows = await repository.events_after(conn, self._position, WINDOW_MAX)
                if rows:
                    self._position = await self._publish(rows)
                    self._recovered(loop.time())
                    backoff_s = BACKOFF_FIRST_S
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

    async def _publish(self, rows: Sequence[EventRow]) -> int:
        """Sends `rows` in order on the one connection (so JetStream stores them in this
        order) and waits for their acks: the position of the last. Raises _Unpublished, with
        the position of the last event acknowledged after all those before it, when some
        were not acknowledged within ACK_TIMEOUT_S."""
        acked = 0
        futures: list[asyncio.Future[PubAck]] = []
        try:
            js = await self._connected()
            for row in rows:
                # No wait_stall: the window is far below the client's limit of pending acks,
                # and waiting on that limit through wait_for doubles the client's cost.
                future = await js.publish_async(
                    self._target.subject(row.type),
                    event_json(row),
                    stream=self._target.stream,
                    headers={MSG_ID_HEADER: row.id},
                )
                futures.append(future)
            await asyncio.wait(futures, timeout=ACK_TIMEOUT_S)
            for future in futures:
                if not future.done():
                    raise TimeoutError(f"no ack from JetStream within {ACK_TIMEOUT_S:g} s")
                future.result()  # raises what JetStream answered instead of an ack
                acked += 1
        except NATS_ERRORS as error:
            position = rows[acked - 1].position if acked else rows[0].position - 1
            raise _Unpublished(error, position) from error
        finally:
            # A future still waiting holds a place in the client's window of pending acks.
            for future in futures:
                future.cancel()
        return rows[-1].position

    async def _connected(self) -> JetStreamContext:
        if self._js is not None and self._nc is not None and self._nc.is_connected:
            return self._js
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
            js = nc.jetstream(timeout=ACK_TIMEOUT_S)
            await ensure_stream(js, self._target)
        except BaseException:
            await _close_quietly(nc)
            raise
        self._nc, self._js = nc, js
        return js

    async def _close(self) -> None:
        nc, self._nc, self._js = self._nc, None, None
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


async def run(db: Database, url: str, stream: str, subject_prefix: str) -> None:
    """The publisher of one relay, until cancelled."""
    target = Target(tuple(url.split(",")), stream, subject_prefix)
    await Publisher(db, target).run()
