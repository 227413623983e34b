"""The access log: one JSON line per request, with its id, route, status and user; the same
place counts each request in the metrics (metrics/instruments.py), by route template.

RequestLog is a pure ASGI middleware (BaseHTTPMiddleware would put every request through an
extra task and a memory stream). It wraps the whole application, error handling included, so
every response, a 500 too, carries an X-Request-Id and gets exactly one line.
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Iterable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from loyalty.logs import current_request_id, emit
from loyalty.metrics.instruments import observe_request

ACCESS_LOGGER = "loyalty.access"
REQUEST_ID_HEADER = "X-Request-Id"
# Where the guard puts the id of the caller it authenticated, for the access line.
USER_SCOPE_KEY = "loyalty.user_id"
# An unmatched path is logged as sent, cut to this many characters.
PATH_LOGGED_MAX = 200

_REQUEST_ID_HEADER = REQUEST_ID_HEADER.lower().encode("ascii")
# A client's request id is kept when it is 1 to 128 visible ASCII characters.
_CLIENT_REQUEST_ID = re.compile(rb"[\x21-\x7e]{1,128}")
_access = logging.getLogger(ACCESS_LOGGER)


def note_user(scope: Scope, user_id: str) -> None:
    """Records the authenticated user of a request for its access line."""
    scope[USER_SCOPE_KEY] = user_id


def _request_id_of(headers: Iterable[tuple[bytes, bytes]]) -> str:
    for name, value in headers:
        if name == _REQUEST_ID_HEADER:
            if _CLIENT_REQUEST_ID.fullmatch(value):
                return value.decode("ascii")
            break
    return os.urandom(16).hex()  # as random as uuid4().hex, at half the cost


class RequestLog:
    """Gives each HTTP request an id (the client's X-Request-Id when it is valid, else a new
    one), returns it in the response headers and logs one line when the request ends."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        request_id = _request_id_of(scope["headers"])
        id_header = (_REQUEST_ID_HEADER, request_id.encode("ascii"))
        # What an exception that escapes everything becomes (uvicorn answers it with a 500).
        status = 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message = {**message, "headers": [*message.get("headers", ()), id_header]}
            await send(message)

        token = current_request_id.set(request_id)
        try:
            await self.app(scope, receive, send_with_id)
        finally:
            current_request_id.reset(token)
            duration_s = time.perf_counter() - started
            # The matched route's template (None when no route matched): what the metrics
            # count by, so their label values stay as few as the routes.
            route = getattr(scope.get("route"), "path", None)
            observe_request(scope["method"], route, status, duration_s)
            if _access.isEnabledFor(logging.INFO):
                client = scope.get("client")
                fields = {
                    "request_id": request_id,
                    "method": scope["method"],
                    "route": route or scope["path"][:PATH_LOGGED_MAX],
                    "status": status,
                    "duration_ms": round(duration_s * 1000, 3),
                    "user": scope.get(USER_SCOPE_KEY),
                    "client": client[0] if client else None,
                }
                emit(_access, "request", fields)
