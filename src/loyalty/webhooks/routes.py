"""/admin/webhooks: endpoints that are sent every committed change, and their deliveries.

Every route needs `webhooks:write`, the reads too: an endpoint's URL and its deliveries say
where the merchant's systems are and what they answered, which is an integrator's business,
not that of every holder of `loyalty:read`."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from loyalty.auth.guard import Caller
from loyalty.auth.scopes import WEBHOOKS_WRITE
from loyalty.context import AppContext
from loyalty.errors import FieldError, InvalidData
from loyalty.http.body import decode_field, parse_json_object, read_body
from loyalty.http.params import parse_int, path_param, query_params
from loyalty.http.responses import json_response
from loyalty.http.routing import Endpoint, Operation
from loyalty.idempotency.keys import keyed_request, read_key, replay_headers
from loyalty.idempotency.policy import KeyedRequest
from loyalty.webhooks import service
from loyalty.webhooks.schemas import (
    CREATE_FIELDS,
    DELIVERY_STATUSES,
    ID_MAX,
    DeliveryIdPath,
    DeliveryPage,
    DeliveryQuery,
    DeliveryResponse,
    NewWebhookResponse,
    WebhookCreate,
    WebhookIdPath,
    WebhookList,
    WebhookResponse,
)

TAG = "Webhooks"
_WEBHOOK_PATH = {"webhook_id": WebhookIdPath}
_NOT_FOUND = {404: "Unknown webhook"}
_NO_FIELDS: frozenset[str] = frozenset()


def _answer(answer: service.Answer) -> Response:
    return Response(
        answer.body, 200, replay_headers(answer.replayed), media_type="application/json"
    )


async def _keyed_body(
    request: Request, caller: Caller, allowed: frozenset[str]
) -> tuple[dict[str, msgspec.Raw], KeyedRequest | None]:
    """A writing POST's fields (none at all is allowed when `allowed` is empty) and its key."""
    key = read_key(request)
    raw = await read_body(request)
    fields = {} if not allowed and not raw else parse_json_object(request, raw, allowed)
    return fields, keyed_request(request, key, caller.actor_id, raw)


def _optional_text(fields: dict[str, msgspec.Raw], name: str) -> str | None:
    if name not in fields:
        return None
    try:
        return decode_field(fields[name], str | None)  # type: ignore[arg-type]
    except msgspec.ValidationError:
        message = f"{name} must be a string or null"
        raise InvalidData(message, [FieldError(name, message)]) from None


def _new_endpoint(fields: dict[str, msgspec.Raw]) -> service.NewEndpoint:
    if "url" not in fields:
        raise InvalidData("url is required", [FieldError("url", "url is required")])
    url = _optional_text(fields, "url")
    if url is None:
        raise InvalidData("url must be a string", [FieldError("url", "url must be a string")])
    types: list[str] | None = None
    if "event_types" in fields:
        try:
            types = decode_field(fields["event_types"], list[str] | None)  # type: ignore[arg-type]
        except msgspec.ValidationError:
            message = "event_types must be a list of event type names, or null"
            raise InvalidData(message, [FieldError("event_types", message)]) from None
    return service.NewEndpoint(url, types, _optional_text(fields, "description"))


def endpoints(ctx: AppContext) -> list[Endpoint]:
    def webhook_id(request: Request) -> str:
        return path_param(request, "webhook_id", ID_MAX)

    async def create(request: Request, caller: Caller) -> Response:
        query_params(request)
        fields, keyed = await _keyed_body(request, caller, CREATE_FIELDS)
        new = _new_endpoint(fields)
        return _answer(await service.create(ctx.db, new, caller.actor_id, keyed))

    async def list_(request: Request, caller: Caller) -> Response:
        query_params(request)
        return json_response(WebhookList(await service.list_all(ctx.db)))

    async def get(request: Request, caller: Caller) -> Response:
        query_params(request)
        return json_response(WebhookResponse(await service.get(ctx.db, webhook_id(request))))

    def switch(enabled: bool) -> Callable[[Request, Caller], Awaitable[Response]]:
        async def handler(request: Request, caller: Caller) -> Response:
            query_params(request)
            _, keyed = await _keyed_body(request, caller, _NO_FIELDS)
            answer = await service.set_enabled(ctx.db, webhook_id(request), enabled, keyed)
            return _answer(answer)

        return handler

    async def deliveries(request: Request, caller: Caller) -> Response:
        params = query_params(request, DeliveryQuery)
        limit = parse_int(params, "limit", 20, 1, 100)
        status = params.get("status")
        if status is not None and status not in DELIVERY_STATUSES:
            message = f"status must be one of {', '.join(DELIVERY_STATUSES)}"
            raise InvalidData(message, [FieldError("status", message)])
        cursor = params.get("cursor")
        if cursor is not None and len(cursor) > ID_MAX:
            message = f"cursor must be at most {ID_MAX} characters"
            raise InvalidData(message, [FieldError("cursor", message)])
        page = await service.deliveries(ctx.db, webhook_id(request), cursor, status, limit)
        return json_response(page)

    async def retry(request: Request, caller: Caller) -> Response:
        query_params(request)
        delivery_id = path_param(request, "delivery_id", ID_MAX)
        _, keyed = await _keyed_body(request, caller, _NO_FIELDS)
        answer = await service.retry(ctx.db, webhook_id(request), delivery_id, keyed)
        return _answer(answer)

    guard = ctx.guard
    return [
        Endpoint(
            "POST",
            "/admin/webhooks",
            guard.confirmed(WEBHOOKS_WRITE, create),
            Operation(
                "Create a webhook endpoint",
                TAG,
                ok=NewWebhookResponse,
                ok_description="The endpoint, with its signing secret (shown this once)",
                body=WebhookCreate,
                errors={400: "Invalid input, or too many endpoints (not_allowed)"},
                idempotent=True,
            ),
        ),
        Endpoint(
            "GET",
            "/admin/webhooks",
            guard.confirmed(WEBHOOKS_WRITE, list_),
            Operation("List webhook endpoints", TAG, ok=WebhookList, ok_description="Every one"),
        ),
        Endpoint(
            "GET",
            "/admin/webhooks/{webhook_id}",
            guard.confirmed(WEBHOOKS_WRITE, get),
            Operation(
                "Get a webhook endpoint",
                TAG,
                ok=WebhookResponse,
                ok_description="The endpoint (without its secret)",
                path_params=_WEBHOOK_PATH,
                errors=_NOT_FOUND,
            ),
        ),
        Endpoint(
            "POST",
            "/admin/webhooks/{webhook_id}/disable",
            guard.confirmed(WEBHOOKS_WRITE, switch(False)),
            Operation(
                "Stop sending to an endpoint (retries included)",
                TAG,
                ok=WebhookResponse,
                ok_description="The endpoint",
                path_params=_WEBHOOK_PATH,
                errors=_NOT_FOUND,
                idempotent=True,
            ),
        ),
        Endpoint(
            "POST",
            "/admin/webhooks/{webhook_id}/enable",
            guard.confirmed(WEBHOOKS_WRITE, switch(True)),
            Operation(
                "Send to an endpoint again, from the events committed from now on",
                TAG,
                ok=WebhookResponse,
                ok_description="The endpoint",
                path_params=_WEBHOOK_PATH,
                errors=_NOT_FOUND,
                idempotent=True,
            ),
        ),
        Endpoint(
            "GET",
            "/admin/webhooks/{webhook_id}/deliveries",
            guard.confirmed(WEBHOOKS_WRITE, deliveries),
            Operation(
                "An endpoint's deliveries, newest first",
                TAG,
                ok=DeliveryPage,
                ok_description="A page of deliveries",
                query=DeliveryQuery,
                path_params=_WEBHOOK_PATH,
                errors=_NOT_FOUND,
            ),
        ),
        Endpoint(
            "POST",
            "/admin/webhooks/{webhook_id}/deliveries/{delivery_id}/retry",
            guard.confirmed(WEBHOOKS_WRITE, retry),
            Operation(
                "Send a delivery again now",
                TAG,
                ok=DeliveryResponse,
                ok_description="The delivery, pending and due now",
                path_params={**_WEBHOOK_PATH, "delivery_id": DeliveryIdPath},
                errors={404: "Unknown webhook or delivery"},
                idempotent=True,
            ),
        ),
    ]
