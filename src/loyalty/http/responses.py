"""JSON responses, and the one shape of every error: {"type", "message", "errors"?}."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import msgspec
from starlette.responses import Response

from loyalty.errors import LoyaltyError
from loyalty.http.schemas import Error, FieldProblem

# Paths quoted back in a 404 or 405 message are cut to this many characters.
PATH_SHOWN_MAX = 200

_encoder = msgspec.json.Encoder()


def json_response(
    body: Any, status: int = 200, headers: Mapping[str, str] | None = None
) -> Response:
    return Response(_encoder.encode(body), status, headers, media_type="application/json")


def error_body(error: LoyaltyError) -> Error:
    if not error.errors:
        return Error(error.type, error.message)
    problems = [FieldProblem(e.field, e.message) for e in error.errors]
    return Error(error.type, error.message, problems)


def error_response(error: LoyaltyError) -> Response:
    return json_response(error_body(error), error.status, error.headers)
