"""Structured logs: one JSON object per line on stderr; one access line per request and one
line per adjustment.

RequestLog is a pure ASGI middleware (BaseHTTPMiddleware would put every request through an
extra task and a memory stream). It wraps the whole application, error handling included, so
every response, a 500 too, carries an X-Request-Id and gets exactly one line. A line holds
what identifies the request and nothing it carried: never a header value other than the
request id, never a query string, a body, a token, a password or the JWT secret.
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Iterable
from contextvars import ContextVar
from typing import Any

import msgspec
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from loyalty.timestamps import render

ACCESS_LOGGER = "loyalty.access"
ADJUSTMENT_LOGGER = "loyalty.adjustments"
REQUEST_ID_HEADER = "X-Request-Id"
# Where a route puts the id of the user it authenticated, for the access line.
USER_SCOPE_KEY = "loyalty.user_id"
# An unmatched path is logged as sent, cut to this many characters.
PATH_LOGGED_MAX = 200

_REQUEST_ID_HEADER = REQUEST_ID_HEADER.lower().encode("ascii")
# A client's request id is kept when it is 1 to 128 visible ASCII characters.
_CLIENT_REQUEST_ID = re.compile(rb"[\x21-\x7e]{1,128}")
_DELTA = re.compile(r"-?(?:0|[1-9][0-9]{0,17})(?:\.[0-9]{1,2})?")
_encoder = msgspec.json.Encoder()
_access = logging.getLogger(ACCESS_LOGGER)
_adjustments = logging.getLogger(ADJUSTMENT_LOGGER)
_request_id: ContextVar[str | None] = ContextVar("loyalty_request_id", default=None)


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

        token = _request_id.set(request_id)
        try:
            await self.app(scope, receive, send_with_id)
        finally:
            _request_id.reset(token)
            if _access.isEnabledFor(logging.INFO):
                route = scope.get("route")
                template = getattr(route, "path", None) or scope["path"][:PATH_LOGGED_MAX]
                client = scope.get("client")
                fields = {
                    "request_id": request_id,
                    "method": scope["method"],
                    "route": template,
                    "status": status,
                    "duration_ms": round((time.perf_counter() - started) * 1000, 3),
                    "user": scope.get(USER_SCOPE_KEY),
                    "client": client[0] if client else None,
                }
                _emit(_access, "request", fields)


def log_adjustment(
    adjustment_id: str,
    customer_id: str,
    delta_text: str,
    actor: str,
    request_id: str | None = None,
) -> None:
    """One line for a committed adjustment: its id, customer, delta (the points as the API
    renders them, e.g. "-50" or "100.01") and the id of the user who made it.

    The request id defaults to the one of the request the calling task is handling.
    """
    if not _adjustments.isEnabledFor(logging.INFO):
        return
    # A well-formed delta is logged as the JSON number it is; anything else as a string.
    delta: object = msgspec.Raw(delta_text.encode()) if _DELTA.fullmatch(delta_text) else delta_text
    fields = {
        "request_id": request_id or _request_id.get(),
        "adjustment_id": adjustment_id,
        "customer_id": customer_id,
        "delta": delta,
        "actor": actor,
    }
    _emit(_adjustments, "adjustment", fields)


def _emit(logger: logging.Logger, message: str, fields: dict[str, Any]) -> None:
    """logger.info(message) with `fields`, minus the search of the caller's frame that
    Logger.info makes for every record (a tenth of this module's cost per request)."""
    record = logger.makeRecord(
        logger.name, logging.INFO, __file__, 0, message, (), None, extra={"fields": fields}
    )
    logger.handle(record)


class JsonFormatter(logging.Formatter):
    """A record as one JSON object: time, level, logger, message, then the record's `fields`
    (passed as `extra={"fields": {...}}`), the request id and any traceback."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": render(int(record.created * 1000)),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            line.update(fields)
        if line.get("request_id") is None:
            request_id = _request_id.get()
            if request_id is not None:
                line["request_id"] = request_id
        if record.exc_info:
            line["error"] = self.formatException(record.exc_info)
        if record.stack_info:
            line["stack"] = self.formatStack(record.stack_info)
        return _encoder.encode(line).decode()


def logging_config(level: str) -> dict[str, Any]:
    """The `logging.config.dictConfig` of a server process: every logger, uvicorn's
    included, as JSON lines on stderr at `level` and above."""
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": f"{__name__}.JsonFormatter"}},
        "handlers": {
            "stderr": {
                "class": "logging.StreamHandler",
                "formatter": "json",
                "stream": "ext://sys.stderr",
            }
        },
        "root": {"handlers": ["stderr"], "level": level},
        "loggers": {
            "uvicorn": {"level": level},
            "uvicorn.error": {"level": level},
            # Replaced by the loyalty.access lines.
            "uvicorn.access": {"handlers": [], "propagate": False},
        },
    }
