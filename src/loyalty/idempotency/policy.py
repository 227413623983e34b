"""The rules of Idempotency-Key (SPEC section 5), for any route that writes, applied inside
that route's own transaction.

The first request with a key runs; its response is kept, with a fingerprint of the request,
in the same transaction as what it wrote: a crash keeps both or neither. A later request by
the same actor with the same key and fingerprint gets the kept response again and records
nothing; with another fingerprint it is a 422. While the first is still running (the same key
twice in one batch or, on PostgreSQL, held by another transaction's advisory lock, which spans
workers and servers) it is a 409. Only successes are kept, so a request that failed leaves its
key free for the retry. On SQLite, writers take turns at the whole database, so a request
always sees whether an earlier one with its key committed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from loyalty.db import Connection
from loyalty.errors import Conflict, IdempotencyMismatch, LoyaltyError
from loyalty.idempotency import repository

KEY_IN_FLIGHT = "A request with this Idempotency-Key is still being processed"
KEY_REUSED = "This Idempotency-Key was already used with a different request"


@dataclass(frozen=True, slots=True)
class KeyedRequest:
    """A request that came with an Idempotency-Key, and the fingerprint a replay must match."""

    actor_id: str
    key: str
    request_hash: str


@dataclass(frozen=True, slots=True)
class Replay:
    """The kept response of the first request with a key."""

    status: int
    body: bytes


KeyDecision = Replay | LoyaltyError | None


async def claim(conn: Connection, requests: Sequence[KeyedRequest | None]) -> list[KeyDecision]:
    """What each request's key decides, in order: None to run it (also when it has no key),
    the Replay to answer it with, or its refusal (409 in flight, 422 reused)."""
    decisions: list[KeyDecision] = [None] * len(requests)
    claimed: dict[tuple[str, str], int] = {}
    for i, request in enumerate(requests):
        if request is None:
            continue
        name = (request.actor_id, request.key)
        if name in claimed:  # the same key twice at once: the first is in flight
            decisions[i] = Conflict(KEY_IN_FLIGHT)
        else:
            claimed[name] = i
    if not claimed:
        return decisions
    if conn.dialect == "postgresql":
        # Another transaction (another worker's, another server's) holding the key's lock is
        # a request with this key in flight.
        lock_names = {f"{actor}\x1f{key}": (actor, key) for actor, key in claimed}
        held = await repository.try_lock_keys(conn, sorted(lock_names))
        for lock_name, name in lock_names.items():
            if lock_name not in held:
                decisions[claimed.pop(name)] = Conflict(KEY_IN_FLIGHT)
    by_actor: dict[str, list[str]] = {}
    for actor, key in claimed:
        by_actor.setdefault(actor, []).append(key)
    for actor, keys in by_actor.items():
        for kept in await repository.find_keys(conn, actor, keys):
            i = claimed[(actor, kept.key)]
            request = requests[i]
            if request is not None and kept.request_hash == request.request_hash:
                decisions[i] = Replay(kept.status, bytes(kept.response))
            else:
                decisions[i] = IdempotencyMismatch(KEY_REUSED)
    return decisions


async def remember(
    conn: Connection, answered: Sequence[tuple[KeyedRequest, int, bytes]], at_ms: int
) -> None:
    """Keeps the response (status, body) of each keyed request that succeeded, in the
    transaction of what it wrote."""
    if answered:
        await repository.insert_keys(
            conn,
            [
                repository.KeptResponse(
                    request.actor_id, request.key, request.request_hash, status, body, at_ms
                )
                for request, status, body in answered
            ],
        )
