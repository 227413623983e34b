"""Structured logs: one JSON object per line on stderr.

Every line logged while a request is handled carries that request's id (set by the access
log, http/access_log.py). A line holds what identifies the request and nothing it carried:
never a header value other than the request id, never a query string, a body, a token, a
password or the JWT secret.
"""

from __future__ import annotations

import logging
from contextvars import ContextVar
from typing import Any

import msgspec

from loyalty.timestamps import render

_encoder = msgspec.json.Encoder()
# The id of the request the current task is handling, if any.
current_request_id: ContextVar[str | None] = ContextVar("loyalty_request_id", default=None)


def emit(logger: logging.Logger, message: str, fields: dict[str, Any]) -> None:
    """logger.info(message) with `fields`, minus the search of the caller's frame that
    Logger.info makes for every record (a tenth of the access log's cost per request)."""
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
            request_id = current_request_id.get()
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
