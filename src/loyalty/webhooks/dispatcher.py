"""Sends each committed event to every matching enabled endpoint, at least once, and retries
what failed on the schedule; one relay of all servers does it at a time (lease `webhooks`).

A round of first attempts: read the events after the smallest endpoint position, send each
to each endpoint whose position it passed and whose types it matches (over up to
IN_FLIGHT_MAX connections at once, pipelined on those that stayed open), then, in one short
transaction, record a delivery per (endpoint, event) with its outcome and move the
endpoints' positions past the events. No transaction is open while a request is in flight:
SQLite has one writer, and adjustments must never wait on a receiver.
A crash between the sends and that transaction sends those events again after the restart,
under the same `webhook-id` (the event's id), which is how receivers drop repeats.

Retries are rounds of their own beside the first attempts, so a receiver that is down or
slow does not hold up the fresh events: the due pending deliveries are claimed (their
lease_until_ms) in one transaction, sent, and their outcomes recorded in another.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Sequence
from decimal import Decimal

from loyalty import metrics
from loyalty.db import Database
from loyalty.errors import DatabaseUnavailable
from loyalty.events import leases
from loyalty.events.schemas import event_json
from loyalty.events.tail import Pending, Tail
from loyalty.ids import new_id
from loyalty.timestamps import now_ms
from loyalty.webhooks import repository
from loyalty.webhooks.repository import DeliveryRow, Outcome, WebhookRow
from loyalty.webhooks.sender import PIPELINE_MAX, Sender
from loyalty.webhooks.signing import signed_headers

log = logging.getLogger("loyalty.webhooks")

LEASE_NAME = "webhooks"
LEASE_TTL_MS = 15_000
# Renewed this often; a relay without the lease asks as often, so after a crash another
# takes over within LEASE_TTL_MS and one renewal.
LEASE_RENEW_S = 3.0
POLL_S = 0.1  # the relay finds new commits by polling (every worker and server writes them)
# Rounds start at most this often: under load each gathers the events of many ledger batches,
# so the dispatcher's own write transactions stay few beside the ledger's.
ROUND_MIN_S = 0.1
EVENTS_PER_ROUND = 500
SENDS_PER_ROUND_MAX = 1000
RETRIES_PER_ROUND = 500
# Connections in use at once by a round; the first attempts' and the retries' rounds run side
# by side.
IN_FLIGHT_MAX = 32
ATTEMPT_TIMEOUT_S = 10.0  # SPEC 8.2: no answer within 10 s is a failed attempt
# A claimed retry is left alone this long: an attempt and its recording fit well within it.
RETRY_CLAIM_MS = 60_000
JITTER = 0.2  # each delay is drawn from ±20% of its scheduled value
ERROR_PAUSE_S = 1.0
USER_AGENT = "loyalty-webhooks/1"


def _delivered(status: int | None) -> bool:
    return status is not None and 200 <= status < 300


def _count(statuses: Sequence[int | None]) -> None:
    delivered = sum(1 for status in statuses if _delivered(status))
    metrics.webhook_attempts(delivered, len(statuses) - delivered)


class Dispatcher:
    def __init__(self, db: Database, tail: Tail, retry_schedule_s: Sequence[Decimal]) -> None:
        self._db = db
        self._tail = tail
        self._schedule_s = tuple(float(delay) for delay in retry_schedule_s)
        self._owner = leases.new_owner()
        self._held_until = 0.0  # time.monotonic() until which this relay holds the lease

    @property
    def holding(self) -> bool:
        return time.monotonic() < self._held_until

    async def run(self) -> None:
        """Until cancelled; then gives the lease up so another relay takes over at once."""
        client = Sender(USER_AGENT, ATTEMPT_TIMEOUT_S)
        try:
            await asyncio.gather(
                self._keep_lease(), self._first_attempts(client), self._retries(client)
            )
        finally:
            await client.close()
            if self._held_until:
                try:
                    await asyncio.wait_for(leases.release(self._db, LEASE_NAME, self._owner), 2)
                except Exception:  # the database may be gone already; the lease runs out
                    log.warning("could not give up the webhooks lease")

    async def _keep_lease(self) -> None:
        while True:
            asked = time.monotonic()
            try:
                position = await leases.hold(self._db, LEASE_NAME, self._owner, LEASE_TTL_MS)
            except DatabaseUnavailable:
                position = None
            except Exception:
                log.exception("webhooks: taking the lease failed")
                position = None
            if position is not None:
                # Counted from before the request, and with a renewal to spare.
                self._held_until = asked + LEASE_TTL_MS / 1000 - LEASE_RENEW_S
            await asyncio.sleep(LEASE_RENEW_S * random.uniform(0.8, 1.0))

    async def _first_attempts(self, client: Sender) -> None:
        while True:
            started = time.monotonic()
            busy = False
            try:
                busy = self.holding and await self.first_attempts_round(client)
            except DatabaseUnavailable:
                await asyncio.sleep(ERROR_PAUSE_S)
            except Exception:
                log.exception("webhooks: a round of deliveries failed")
                await asyncio.sleep(ERROR_PAUSE_S)
            if not busy:
                await asyncio.sleep(POLL_S)
            await asyncio.sleep(max(0.0, ROUND_MIN_S - (time.monotonic() - started)))

    async def _retries(self, client: Sender) -> None:
        while True:
            busy = False
            try:
                busy = self.holding and await self.retries_round(client)
            except DatabaseUnavailable:
                await asyncio.sleep(ERROR_PAUSE_S)
            except Exception:
                log.exception("webhooks: a round of retries failed")
                await asyncio.sleep(ERROR_PAUSE_S)
            if not busy:
                await asyncio.sleep(POLL_S)

    async def first_attempts_round(self, client: Sender) -> bool:
        """Sends the next events to the endpoints; False when there were none."""
        async with self._db.read() as conn:
            endpoints = await repository.enabled_webhooks(conn)
        if not endpoints:
            return False
        start = min(endpoint.position for endpoint in endpoints)
        pending = await self._tail.after(start, EVENTS_PER_ROUND)
        if not pending:
            return False
        # Each endpoint with the event types it wants (None: all of them).
        targets = [
            (e, None if e.event_types is None else set(e.event_types.split())) for e in endpoints
        ]
        sends: list[tuple[WebhookRow, Pending]] = []
        handed = start  # the last event position this round deals with
        for event in pending:
            position, event_type = event.row.position, event.row.type
            due = [
                e
                for e, types in targets
                if e.position < position and (types is None or event_type in types)
            ]
            if sends and len(sends) + len(due) > SENDS_PER_ROUND_MAX:
                break
            sends += [(endpoint, event) for endpoint in due]
            handed = position
        statuses = await _send_all(
            client, [(e.url, e.secret, event.row.id, event.body) for e, event in sends]
        )
        at_ms = now_ms()
        deliveries = []
        for (endpoint, (row, _)), status in zip(sends, statuses, strict=True):
            state, next_at_ms = self._outcome(1, status, at_ms)
            deliveries.append(
                DeliveryRow(
                    new_id("msg", at_ms),
                    endpoint.id,
                    row.id,
                    row.position,
                    state,
                    1,
                    status,
                    next_at_ms,
                    0,
                    at_ms,
                    at_ms,
                )
            )
        positions = {e.id: handed for e in endpoints if e.position < handed}
        async with self._db.write() as conn:
            await repository.insert_deliveries(conn, deliveries)
            await repository.advance(conn, positions)
        return True

    async def retries_round(self, client: Sender) -> bool:
        """Sends the due retries once more; False when none was due."""
        now = now_ms()
        async with self._db.read() as conn:
            ids = await repository.due_ids(conn, now, RETRIES_PER_ROUND)
        if not ids:
            return False
        async with self._db.write() as conn:
            due = await repository.claim(conn, ids, now, now + RETRY_CLAIM_MS)
        # One request at a time: retries go to receivers that failed, where a pipeline
        # would risk more of them waiting out a timeout.
        statuses = await _send_all(
            client, [(d.url, d.secret, d.event.id, event_json(d.event)) for d in due], 1
        )
        at_ms = now_ms()
        outcomes = []
        for delivery, status in zip(due, statuses, strict=True):
            attempt = delivery.attempt + 1
            state, next_at_ms = self._outcome(attempt, status, at_ms)
            outcomes.append(Outcome(delivery.id, state, attempt, status, next_at_ms))
        async with self._db.write() as conn:
            await repository.record_outcomes(conn, outcomes, at_ms)
        return True

    def _outcome(self, attempt: int, status: int | None, at_ms: int) -> tuple[str, int | None]:
        """What the delivery becomes after its `attempt`-th attempt got `status` (None: no
        answer): delivered, pending until the next attempt, or failed after the last."""
        if _delivered(status):
            return "delivered", None
        if attempt > len(self._schedule_s):
            return "failed", None
        delay_s = self._schedule_s[attempt - 1] * random.uniform(1 - JITTER, 1 + JITTER)
        return "pending", at_ms + max(0, round(delay_s * 1000))


_Send = tuple[str, str, str, bytes]  # url, secret, event id, body


async def _send_all(
    client: Sender, sends: Sequence[_Send], pipelined: int = PIPELINE_MAX
) -> list[int | None]:
    """Each signed POST's status, or None where none came in time. Lanes, not a task per
    delivery: each lane takes the next `pipelined` deliveries to one endpoint, in order, and
    sends them on one connection (pipelined once it has stayed open)."""
    statuses: list[int | None] = [None] * len(sends)
    by_url: dict[str, list[int]] = {}
    for index, (url, _, _, _) in enumerate(sends):
        by_url.setdefault(url, []).append(index)
    chunks = iter(
        (url, indexes[start : start + pipelined])
        for url, indexes in by_url.items()
        for start in range(0, len(indexes), pipelined)
    )

    async def lane() -> None:
        for url, indexes in chunks:
            now_s = time.time()
            messages = []
            for index in indexes:
                _, secret, event_id, body = sends[index]
                messages.append((signed_headers(secret, event_id, body, now_s), body))
            outcomes = await client.post_many(url, messages)
            for index, outcome in zip(indexes, outcomes, strict=True):
                if isinstance(outcome, Exception):
                    log.debug("webhook to %s: %s", url, type(outcome).__name__)
                else:
                    statuses[index] = outcome

    lanes = min(IN_FLIGHT_MAX, -(-len(sends) // pipelined))
    await asyncio.gather(*(lane() for _ in range(lanes)))
    _count(statuses)
    return statuses
