"""Webhook endpoints: create (with the secret that signs their deliveries), list, enable,
disable; their deliveries log and the manual retry of a delivery."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import httpx
import msgspec

from loyalty.db import Connection, Database
from loyalty.errors import FieldError, InvalidData, LoyaltyError, NotAllowed, NotFound
from loyalty.events import repository as events
from loyalty.events.catalogue import EVENT_TYPES
from loyalty.idempotency import policy
from loyalty.idempotency.policy import KeyedRequest, Replay
from loyalty.ids import new_id
from loyalty.timestamps import now_ms
from loyalty.webhooks import repository, schemas
from loyalty.webhooks.repository import WebhookRow
from loyalty.webhooks.schemas import (
    DESCRIPTION_MAX,
    URL_MAX,
    Delivery,
    DeliveryPage,
    NewWebhookResponse,
    Webhook,
)
from loyalty.webhooks.signing import new_secret

# Every endpoint is sent every matching event: the number of them bounds the fan-out.
WEBHOOKS_MAX = 100
_encoder = msgspec.json.Encoder()
# Whitespace and control characters have no place in a URL (and would split a request line).
_UNSAFE = re.compile(r"[\x00-\x20\x7f]")


@dataclass(frozen=True, slots=True)
class NewEndpoint:
    url: str
    event_types: list[str] | None
    description: str | None


@dataclass(frozen=True, slots=True)
class Answer:
    """A writing route's JSON body, and whether it is the replay of a kept response."""

    body: bytes
    replayed: bool = False


def _url_error(url: str) -> str | None:
    if len(url) > URL_MAX:
        return f"url must be at most {URL_MAX} characters"
    if _UNSAFE.search(url):
        return "url must not contain spaces or control characters"
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, ValueError):
        return "url is not a valid URL"
    if parsed.scheme not in ("http", "https"):
        return "url must be an http or https URL"
    if not parsed.host:
        return "url must name a host"
    return None


def validate(new: NewEndpoint) -> None:
    errors = []
    problem = _url_error(new.url)
    if problem is not None:
        errors.append(FieldError("url", problem))
    if new.event_types is not None:
        unknown = [name for name in new.event_types if name not in EVENT_TYPES]
        if unknown:
            message = (
                f"event_types: {unknown[0][:64]!r} is not an event type"
                f" (known: {', '.join(EVENT_TYPES)})"
            )
            errors.append(FieldError("event_types", message))
        elif not new.event_types:
            message = "event_types must name at least one event type, or be left out for all"
            errors.append(FieldError("event_types", message))
    if new.description is not None and len(new.description) > DESCRIPTION_MAX:
        message = f"description must be at most {DESCRIPTION_MAX} characters"
        errors.append(FieldError("description", message))
    if errors:
        raise InvalidData(errors[0].message, errors)


async def _keyed(
    db: Database, keyed: KeyedRequest | None, work: Callable[[Connection, int], Awaitable[bytes]]
) -> Answer:
    """`work` in one write transaction under the request's Idempotency-Key (SPEC section 5):
    a replay answers the kept response, and a success is kept with what it wrote."""
    async with db.write() as conn:
        decision = (await policy.claim(conn, [keyed]))[0]
        if isinstance(decision, Replay):
            return Answer(decision.body, replayed=True)
        if isinstance(decision, LoyaltyError):
            raise decision
        at_ms = now_ms()
        body = await work(conn, at_ms)
        if keyed is not None:
            await policy.remember(conn, [(keyed, 200, body)], at_ms)
    return Answer(body)


async def create(
    db: Database, new: NewEndpoint, actor_id: str, keyed: KeyedRequest | None
) -> Answer:
    validate(new)
    types = None if new.event_types is None else " ".join(dict.fromkeys(new.event_types))

    async def work(conn: Connection, at_ms: int) -> bytes:
        if await repository.count_webhooks(conn) >= WEBHOOKS_MAX:
            raise NotAllowed(f"There are already {WEBHOOKS_MAX} webhooks, the most allowed")
        row = WebhookRow(
            id=new_id("whk", at_ms),
            url=new.url,
            event_types=types,
            description=new.description,
            secret=new_secret(),
            enabled=True,
            created_by=actor_id,
            created_at_ms=at_ms,
            updated_at_ms=at_ms,
            # It is sent the events committed after it exists, not the whole history.
            position=await events.last_position(conn),
        )
        await repository.insert_webhook(conn, row)
        return _encoder.encode(NewWebhookResponse(schemas.new_webhook(row)))

    return await _keyed(db, keyed, work)


def _missing_webhook(webhook_id: str) -> NotFound:
    return NotFound(f"Webhook with id: {webhook_id} was not found")


async def get(db: Database, webhook_id: str) -> Webhook:
    async with db.read() as conn:
        row = await repository.find_webhook(conn, webhook_id)
    if row is None:
        raise _missing_webhook(webhook_id)
    return schemas.webhook(row)


async def list_all(db: Database) -> list[Webhook]:
    async with db.read() as conn:
        rows = await repository.list_webhooks(conn)
    return [schemas.webhook(row) for row in rows]


async def set_enabled(
    db: Database, webhook_id: str, enabled: bool, keyed: KeyedRequest | None
) -> Answer:
    """Disabling stops its deliveries, retries included; enabling sends it the events
    committed from then on (those of the time it was disabled are not sent), and its pending
    retries go on."""

    async def work(conn: Connection, at_ms: int) -> bytes:
        row = await repository.find_webhook(conn, webhook_id)
        if row is None:
            raise _missing_webhook(webhook_id)
        if row.enabled != enabled:
            position = await events.last_position(conn) if enabled else None
            await repository.set_enabled(conn, webhook_id, enabled, position, at_ms)
            row = row._replace(enabled=enabled, updated_at_ms=at_ms)
        return _encoder.encode(schemas.WebhookResponse(schemas.webhook(row)))

    return await _keyed(db, keyed, work)


async def deliveries(
    db: Database, webhook_id: str, cursor: str | None, status: str | None, limit: int
) -> DeliveryPage:
    async with db.read(snapshot=True) as conn:
        if await repository.find_webhook(conn, webhook_id) is None:
            raise _missing_webhook(webhook_id)
        rows = await repository.list_deliveries(conn, webhook_id, cursor, status, limit + 1)
    page = [schemas.delivery(row) for row in rows[:limit]]
    return DeliveryPage(page, page[-1].id if len(rows) > limit else None)


async def retry(
    db: Database, webhook_id: str, delivery_id: str, keyed: KeyedRequest | None
) -> Answer:
    """The delivery is pending again and due now, whatever its status: one more attempt (a
    failed one that fails again is failed again; a delivered one is sent again)."""

    async def work(conn: Connection, at_ms: int) -> bytes:
        if await repository.find_webhook(conn, webhook_id) is None:
            raise _missing_webhook(webhook_id)
        row = await repository.find_delivery(conn, webhook_id, delivery_id)
        if row is None:
            raise NotFound(f"Delivery with id: {delivery_id} of webhook {webhook_id} was not found")
        await repository.make_due(conn, delivery_id, at_ms)
        row = row._replace(status="pending", next_attempt_at_ms=at_ms, updated_at_ms=at_ms)
        return _encoder.encode(schemas.DeliveryResponse(schemas.delivery(row)))

    return await _keyed(db, keyed, work)


__all__ = ["Delivery", "NewEndpoint", "create", "deliveries", "get", "list_all", "retry"]
