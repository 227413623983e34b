"""GET /health: whether the service and its database answer, for balancers and monitors."""

from __future__ import annotations

from typing import Literal

from msgspec import Struct
from starlette.requests import Request
from starlette.responses import Response

from loyalty.context import AppContext
from loyalty.http.responses import json_response
from loyalty.http.routing import Endpoint, Operation, public


class Health(Struct):
    status: Literal["ok"]


def endpoints(ctx: AppContext) -> list[Endpoint]:
    async def health(request: Request) -> Response:
        await ctx.db.ping()
        return json_response(Health("ok"))

    return [
        Endpoint(
            "GET",
            "/health",
            public(health),
            Operation(
                "Whether the service and its database answer",
                "Service",
                ok=Health,
                ok_description="Healthy",
            ),
        )
    ]
