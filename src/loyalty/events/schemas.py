"""Events as the feed, webhooks and NATS send them: `{"id", "type", "created_at", "data"}`."""

from __future__ import annotations

from typing import Annotated

import msgspec
from msgspec import Meta, Struct

from loyalty.events.catalogue import EventType
from loyalty.events.repository import EventRow
from loyalty.timestamps import render

EVENTS_PAGE_DEFAULT = 20
EVENTS_PAGE_MAX = 100
EVENT_ID_MAX = 64

_encoder = msgspec.json.Encoder()


class Event(Struct):
    id: str
    type: EventType
    created_at: str
    data: Annotated[
        msgspec.Raw, Meta(description="the adjustment, pending points or customer object")
    ]


class EventsQuery(Struct):
    after: (
        Annotated[str, Meta(max_length=EVENT_ID_MAX, description="the last event id you have")]
        | None
    ) = None
    limit: Annotated[int, Meta(ge=1, le=EVENTS_PAGE_MAX)] = EVENTS_PAGE_DEFAULT


class EventsPage(Struct):
    events: list[Event]
    has_more: bool


def event(row: EventRow) -> Event:
    return Event(
        row.id,
        row.type,  # type: ignore[arg-type]
        render(row.created_at_ms),
        msgspec.Raw(row.data.encode()),
    )


def event_json(row: EventRow) -> bytes:
    """The event's JSON, exactly as every channel sends it."""
    return _encoder.encode(event(row))
