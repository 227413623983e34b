"""/admin/loyalty/events: the feed of committed changes."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from loyalty.auth.guard import Caller
from loyalty.auth.scopes import LOYALTY_READ
from loyalty.context import AppContext
from loyalty.errors import FieldError, InvalidData
from loyalty.events import service
from loyalty.events.schemas import (
    EVENT_ID_MAX,
    EVENTS_PAGE_DEFAULT,
    EVENTS_PAGE_MAX,
    EventsPage,
    EventsQuery,
)
from loyalty.http.params import parse_int, query_params
from loyalty.http.responses import json_response
from loyalty.http.routing import Endpoint, Operation

EVENTS_TAG = "Events"


def endpoints(ctx: AppContext) -> list[Endpoint]:
    async def feed(request: Request, caller: Caller) -> Response:
        params = query_params(request, EventsQuery)
        limit = parse_int(params, "limit", EVENTS_PAGE_DEFAULT, 1, EVENTS_PAGE_MAX)
        after = params.get("after")
        if after is not None and not 1 <= len(after) <= EVENT_ID_MAX:
            message = f"after must be an event id of 1 to {EVENT_ID_MAX} characters"
            raise InvalidData(message, [FieldError("after", message)])
        return json_response(await service.feed(ctx.db, after, limit))

    return [
        Endpoint(
            "GET",
            "/admin/loyalty/events",
            ctx.guard.confirmed(LOYALTY_READ, feed),
            Operation(
                "Every committed change, in commit order",
                EVENTS_TAG,
                ok=EventsPage,
                ok_description="The events after `after`, oldest first",
                query=EventsQuery,
            ),
        )
    ]
