"""create_app(settings): the routes, the lifespan and the one error handler."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Mount, Route, Router
from starlette.staticfiles import StaticFiles

from loyalty import openapi
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

log = logging.getLogger("loyalty")

_HTTP_ERROR_TYPES = {404: "not_found", 405: "not_allowed", 413: "invalid_data"}


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
        cleanup = None
        try:
            ctx.jwt_secret = await auth.ensure_jwt_secret(ctx.db, ctx.settings)
            ctx.ledger.start()
            cleanup = asyncio.create_task(idempotency_cleanup.run_periodically(ctx.db))
            yield
        finally:
            if cleanup is not None:
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
    app = Starlette(
        routes=routes,
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
