"""GET /metrics: the Prometheus scrape, open like /health unless LOYALTY_METRICS_TOKEN is set,
then only for `Authorization: Bearer <that token>`."""

from __future__ import annotations

import hmac

from starlette.requests import Request
from starlette.responses import Response

from loyalty.context import AppContext
from loyalty.errors import Unauthorized
from loyalty.http.routing import Endpoint, Operation, public
from loyalty.metrics.exposition import CONTENT_TYPE, scrape

PATH = "/metrics"


def endpoints(ctx: AppContext) -> list[Endpoint]:
    token = ctx.settings.metrics_token
    expected = None if token is None else token.encode("ascii")

    async def metrics(request: Request) -> Response:
        if expected is not None:
            _check_token(request.headers.get("authorization"), expected)
        return Response(await scrape(ctx.db), media_type=CONTENT_TYPE)

    return [
        Endpoint(
            "GET",
            PATH,
            public(metrics),
            Operation(
                "Prometheus metrics of every worker of this server, and the event backlog",
                "Service",
                ok_description="The metrics in Prometheus text format 0.0.4",
                ok_media_types=("text/plain",),
                errors={401: "LOYALTY_METRICS_TOKEN is set and was not sent as a Bearer token"},
                uses_database=False,
            ),
        )
    ]


def _check_token(header: str | None, expected: bytes) -> None:
    if header is None:
        raise Unauthorized(
            "GET /metrics needs the metrics token: Authorization: Bearer <LOYALTY_METRICS_TOKEN>"
        )
    scheme, _, credentials = header.partition(" ")
    # Compared in constant time, so the answer's timing does not tell how much was right.
    given = credentials.strip().encode("latin-1")
    if scheme.lower() != "bearer" or not hmac.compare_digest(given, expected):
        raise Unauthorized("The metrics token is not valid")
