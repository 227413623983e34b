"""create_app(settings): the routes, the lifespan and the one error handler."""

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
from starlette.responses import HTMLResponse, Response
from starlette.routing import Mount, Route, Router
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp

from loyalty import openapi
from loyalty.auth import rate_limit
from loyalty.auth import routes as auth_routes
from loyalty.auth import service as auth
from loyalty.config import Settings
from loyalty.context import AppContext
from loyalty.customers import routes as customer_routes
from loyalty.db import open_database
from loyalty.errors import LoyaltyError
from loyalty.http import json_response
from loyalty.idempotency import cleanup as idempotency_cleanup
from loyalty.ledger import routes as ledger_routes
from loyalty.ledger.service import Ledger
from loyalty.request_log import REQUEST_ID_HEADER, RequestLog

log = logging.getLogger("loyalty")

_HTTP_ERROR_TYPES = {404: "not_found", 405: "not_allowed", 413: "invalid_data"}
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
        body = {"type": "invalid_data", "message": bytes(response.body).decode()}
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
            allow_headers=["Authorization", "Content-Type", "Idempotency-Key", REQUEST_ID_HEADER],
            expose_headers=[REQUEST_ID_HEADER, "Idempotent-Replayed", "Retry-After"],
            max_age=CORS_MAX_AGE_S,
        )
    ]


def error_response(error: LoyaltyError) -> Response:
    body: dict[str, object] = {"type": error.type, "message": error.message}
    if error.errors:
        body["errors"] = [{"field": e.field, "message": e.message} for e in error.errors]
    return json_response(body, error.status, error.headers)


async def _on_loyalty_error(request: Request, error: Exception) -> Response:
    assert isinstance(error, LoyaltyError)
    return error_response(error)


async def _on_http_exception(request: Request, error: Exception) -> Response:
    # Raised by the router itself: unknown routes and wrong methods.
    assert isinstance(error, HTTPException)
    kind = _HTTP_ERROR_TYPES.get(error.status_code, "invalid_data")
    if error.status_code == 404:
        message = f"Route {request.method} {request.url.path[:200]} was not found"
    elif error.status_code == 405:
        message = f"Method {request.method} is not allowed on {request.url.path[:200]}"
    else:
        message = str(error.detail)
    body = {"type": kind, "message": message}
    return json_response(body, error.status_code, error.headers)


async def _on_unexpected(request: Request, error: Exception) -> Response:
    log.error("unexpected error on %s %s", request.method, request.url.path, exc_info=error)
    body = {"type": "unexpected_state", "message": "An unexpected error occurred"}
    return json_response(body, 500)


def create_app(settings: Settings | None = None) -> Starlette:
    ctx = AppContext(settings or Settings.from_env())

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        ctx.db = await open_database(ctx.settings.database_url, ctx.settings.db_pool_size)
        ctx.ledger = Ledger(ctx.db, ctx.settings.allow_negative_balance)
        cleanups: list[asyncio.Task[None]] = []
        try:
            ctx.jwt_secret = await auth.ensure_jwt_secret(ctx.db, ctx.settings)
            ctx.ledger.start()
            cleanups.append(asyncio.create_task(idempotency_cleanup.run_periodically(ctx.db)))
            window_ms = ctx.settings.login_window_seconds * 1000
            cleanups.append(
                asyncio.create_task(rate_limit.run_cleanup_periodically(ctx.db, window_ms))
            )
            # What exists now (modules, the app, the pools) lives as long as the worker. Out
            # of the collector's reach, a full collection no longer walks those ~90,000
            # objects: that walk took ~50 ms, stalled every request in flight, and was
            # most of the p99 of the busy routes.
            gc.collect()
            gc.freeze()
            yield
        finally:
            for cleanup in cleanups:
                cleanup.cancel()
            # In-flight adjustments finish and are answered before the database closes.
            await ctx.ledger.stop()
            await ctx.db.close()

    async def health(request: Request) -> Response:
        await ctx.db.ping()
        return json_response({"status": "ok"})

    async def openapi_json(request: Request) -> Response:
        return json_response(openapi.document())

    async def docs(request: Request) -> Response:
        return HTMLResponse(openapi.DOCS_HTML)

    routes = [
        Route("/health", health, methods=["GET"]),
        Route("/openapi.json", openapi_json, methods=["GET"]),
        Route("/docs", docs, methods=["GET"]),
        Mount("/docs/assets", StaticFiles(directory=openapi.DOCS_ASSETS_DIR)),
        *auth_routes.routes(ctx),
        *customer_routes.routes(ctx),
        *ledger_routes.routes(ctx),
    ]
    app = _Service(
        routes=routes,
        middleware=_cors(ctx.settings),
        lifespan=lifespan,
        exception_handlers={
            LoyaltyError: _on_loyalty_error,
            HTTPException: _on_http_exception,
            Exception: _on_unexpected,
        },
    )
    router = app.router
    assert isinstance(router, Router)
    router.redirect_slashes = False
    return app
