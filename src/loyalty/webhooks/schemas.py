"""Webhook endpoints' and deliveries' request and response bodies, as msgspec Structs (the
OpenAPI document is generated from them)."""

from __future__ import annotations

from typing import Annotated, Literal

from msgspec import Meta, Struct

from loyalty.events.catalogue import EVENT_TYPES, EventType
from loyalty.http.schemas import PageLimit, Timestamp
from loyalty.timestamps import render, render_optional
from loyalty.webhooks.repository import DeliveryRow, WebhookRow

URL_MAX = 2048
DESCRIPTION_MAX = 1024
ID_MAX = 64
DELIVERY_STATUSES = ("pending", "delivered", "failed")

DeliveryStatus = Literal["pending", "delivered", "failed"]
EventTypes = Annotated[
    list[EventType],
    Meta(
        min_length=1,
        max_length=len(EVENT_TYPES),
        description="The event types sent to this endpoint; omitted or null: every type",
    ),
]
WebhookIdPath = Annotated[str, Meta(min_length=1, max_length=ID_MAX)]


class WebhookCreate(Struct, forbid_unknown_fields=True):
    url: Annotated[
        str,
        Meta(
            min_length=1,
            max_length=URL_MAX,
            extra_json_schema={"format": "uri"},
            description="http or https; loopback and private addresses are allowed",
        ),
    ]
    event_types: EventTypes | None = None
    description: Annotated[str, Meta(max_length=DESCRIPTION_MAX)] | None = None


class Webhook(Struct):
    id: str
    url: str
    event_types: list[EventType] | None
    description: str | None
    enabled: bool
    created_at: Timestamp
    updated_at: Timestamp


class NewWebhook(Struct):
    """An endpoint as its creation answers it: with the secret that signs its deliveries,
    shown this once."""

    id: str
    url: str
    event_types: list[EventType] | None
    description: str | None
    secret: Annotated[str, Meta(description="whsec_ and base64: verify signatures with it")]
    enabled: bool
    created_at: Timestamp
    updated_at: Timestamp


class NewWebhookResponse(Struct):
    webhook: NewWebhook


class WebhookResponse(Struct):
    webhook: Webhook


class WebhookList(Struct):
    webhooks: list[Webhook]


class Delivery(Struct):
    """One event's delivery to one endpoint, as its latest attempt left it."""

    id: Annotated[str, Meta(description="msg_…: this delivery (webhook-id is the event's id)")]
    event_id: str
    status: DeliveryStatus
    response_status: int | None
    attempt: Annotated[int, Meta(ge=0, description="attempts made so far")]
    next_attempt_at: Timestamp | None
    created_at: Timestamp
    updated_at: Timestamp


class DeliveryResponse(Struct):
    delivery: Delivery


class DeliveryPage(Struct):
    deliveries: list[Delivery]
    next_cursor: Annotated[
        str | None, Meta(description="pass as ?cursor= for the next (older) page; null at the end")
    ]


class DeliveryQuery(Struct):
    limit: PageLimit = 20
    cursor: Annotated[str, Meta(max_length=ID_MAX)] | None = None
    status: DeliveryStatus | None = None


DeliveryIdPath = Annotated[str, Meta(min_length=1, max_length=ID_MAX)]
CREATE_FIELDS = frozenset(WebhookCreate.__struct_fields__)


def event_types(stored: str | None) -> list[EventType] | None:
    return None if stored is None else stored.split()  # type: ignore[return-value]


def webhook(row: WebhookRow) -> Webhook:
    return Webhook(
        row.id,
        row.url,
        event_types(row.event_types),
        row.description,
        row.enabled,
        render(row.created_at_ms),
        render(row.updated_at_ms),
    )


def new_webhook(row: WebhookRow) -> NewWebhook:
    return NewWebhook(
        row.id,
        row.url,
        event_types(row.event_types),
        row.description,
        row.secret,
        row.enabled,
        render(row.created_at_ms),
        render(row.updated_at_ms),
    )


def delivery(row: DeliveryRow) -> Delivery:
    return Delivery(
        row.id,
        row.event_id,
        row.status,  # type: ignore[arg-type]
        row.response_status,
        row.attempt,
        render_optional(row.next_attempt_at_ms),
        render(row.created_at_ms),
        render(row.updated_at_ms),
    )
