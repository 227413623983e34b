"""create_app(settings): the route table, the lifespan and the one error handler."""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from starlette.applications import Starlette
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Router
from starlette.types import ASGIApp

from loyalty import health
from loyalty.api_keys import routes as api_key_routes
from loyalty.api_keys import usage as api_key_usage
from loyalty.auth import rate_limit
from loyalty.auth import routes as auth_routes
from loyalty.auth import service as auth
from loyalty.config import Settings
from loyalty.context import AppContext
from loyalty.customers import routes as customer_routes
from loyalty.db import open_database
from loyalty.errors import LoyaltyError, NotFound
from loyalty.events import routes as event_routes
from loyalty.http import docs, openapi
from loyalty.http.access_log import REQUEST_ID_HEADER, RequestLog
from loyalty.http.responses import PATH_SHOWN_MAX, error_response, json_response
from loyalty.http.routing import Endpoint, build_routes
from loyalty.http.schemas import Error
from loyalty.idempotency import cleanup as idempotency_cleanup
from loyalty.idempotency.keys import HEADER as IDEMPOTENCY_KEY_HEADER
from loyalty.idempotency.keys import REPLAYED_HEADER
from loyalty.ledger import routes as ledger_routes
from loyalty.ledger import scheduler
from loyalty.ledger.service import Ledger
from loyalty.metrics import exposition as metrics_exposition
from loyalty.metrics import routes as metrics_routes
from loyalty.webhooks import routes as webhook_routes
from loyalty.webhooks.dispatcher import Dispatcher

log = logging.getLogger("loyalty")

CORS_MAX_AGE_S = 600


class _Service(Starlette):
    """Starlette with the request log outermost, outside even the handler of unexpected
    errors, so that every response carries its X-Request-Id and is logged once."""

    def build_middleware_stack(self) -> ASGIApp:
        return RequestLog(super().build_middleware_stack())


class _Cors(CORSMiddleware):
    """Starlette's CORS, answering a preflight with 204 and no body, or a refused one in our
    error envelope, rather than in plain text."""

    def preflight_response(self, request_headers: Headers) -> Response:
        response = super().preflight_response(request_headers)
        headers = {
            name: value
            for name, value in response.headers.items()
            if name not in ("content-type", "content-length")
        }
        if response.status_code == 200:
            return Response(status_code=204, headers=headers)
        # "Disallowed CORS origin", "... method" or "... headers": nothing but what was asked.
        body = Error("invalid_data", bytes(response.body).decode())
        return json_response(body, response.status_code, headers)


def _cors(settings: Settings) -> list[Middleware]:
    """Closed unless LOYALTY_CORS_ORIGINS lists origins: then for exactly those. Tokens are
    sent as headers, never cookies, so credentials stay off."""
    if not settings.cors_origins:
        return []
    return [
        Middleware(
            _Cors,
            allow_origins=list(settings.cors_origins),
            allow_methods=["GET", "POST"],
            allow_headers=[
                "Authorization",
                "Content-Type",
                IDEMPOTENCY_KEY_HEADER,
                REQUEST_ID_HEADER,
            ],
            expose_headers=[REQUEST_ID_HEADER, REPLAYED_HEADER, "Retry-After"],
            max_age=CORS_MAX_AGE_S,
        )
    ]


async def _on_loyalty_error(request: Request, error: Exception) -> Response:
    if not isinstance(error, LoyaltyError):
        raise TypeError("the handler of LoyaltyError got another exception") from error
    return error_response(error)


async def _on_http_exception(request: Request, error: Exception) -> Response:
    # Raised by the router itself, for a path no route has (each route answers its own 405).
    path = request.url.path[:PATH_SHOWN_MAX]
    return error_response(NotFound(f"Route {request.method} {path} was not found"))


async def _on_unexpected(request: Request, error: Exception) -> Response:
    log.error("unexpected error on %s %s", request.method, request.url.path, exc_info=error)
    return json_response(Error("unexpected_state", "An unexpected error occurred"), 500)


def route_table(ctx: AppContext) -> list[Endpoint]:
    """Every endpoint of the service: the router and the OpenAPI document are built from it."""
    table: list[Endpoint] = []
    table += health.endpoints(ctx)
    table += metrics_routes.endpoints(ctx)
    table += docs.endpoints(lambda: openapi.document(table))
    table += auth_routes.endpoints(ctx)
    table += customer_routes.endpoints(ctx)
    table += api_key_routes.endpoints(ctx)
    table += ledger_routes.endpoints(ctx)
    table += event_routes.endpoints(ctx)
    table += webhook_routes.endpoints(ctx)
    return table


def create_app(settings: Settings | None = None) -> Starlette:
    ctx = AppContext(settings or Settings.from_env())

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        ctx.db = await open_database(ctx.settings.database_url, ctx.settings.db_pool_size)
        ctx.ledger = Ledger(
            ctx.db, ctx.settings.allow_negative_balance, ctx.settings.points_expire_after_ms
        )
        cleanups: list[asyncio.Task[None]] = []
        try:
            ctx.guard.open(ctx.db, await auth.ensure_jwt_secret(ctx.db, ctx.settings))
            ctx.ledger.start()
            metrics_exposition.worker_started()
            cleanups.append(asyncio.create_task(idempotency_cleanup.run_periodically(ctx.db)))
            interval_s = float(ctx.settings.scheduler_interval_seconds)
            cleanups.append(
                asyncio.create_task(scheduler.run_periodically(ctx.db, ctx.ledger, interval_s))
            )
            cleanups.append(
                asyncio.create_task(api_key_usage.run_periodically(ctx.db, ctx.guard.key_uses))
            )
            window_ms = ctx.settings.login_window_seconds * 1000
            cleanups.append(
                asyncio.create_task(rate_limit.run_cleanup_periodically(ctx.db, window_ms))
            )
            # What exists now (modules, the app, the pools) lives as long as the worker. Out
            # of the collector's reach, a full collection no longer walks those ~90,000
            # objects: that walk took ~50 ms, stalled every request in flight, and was
            # most of the p99 of the busy routes.
            # Beside the requests, never inside their transactions (webhooks/dispatcher.py).
            dispatcher = Dispatcher(ctx.db, ctx.settings.webhook_retry_schedule_s)
            cleanups.append(asyncio.create_task(dispatcher.run()))
            gc.collect()
            gc.freeze()
            yield
        finally:
            for cleanup in cleanups:
                cleanup.cancel()
            # The dispatcher gives its lease up as it stops, while the database is open.
            await asyncio.gather(*cleanups, return_exceptions=True)
            # In-flight adjustments finish and are answered before the database closes.
            await ctx.ledger.stop()
            try:
                await ctx.guard.key_uses.flush(ctx.db)
            except Exception:
                log.exception("recording API keys' last use at shutdown failed")
            await ctx.db.close()
            metrics_exposition.worker_stopping()

    table = route_table(ctx)
    app = _Service(
        routes=build_routes(table),
        middleware=_cors(ctx.settings),
        lifespan=lifespan,
        exception_handlers={
            LoyaltyError: _on_loyalty_error,
            HTTPException: _on_http_exception,
            Exception: _on_unexpected,
        },
    )
    app.state.route_table = table
    router = app.router
    if not isinstance(router, Router):
        raise TypeError("Starlette's router is not a Router")
    router.redirect_slashes = False
    return app
