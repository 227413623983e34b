"""The OpenAPI 3.1 document, generated from the route table (routing.py) and the Structs each
endpoint names, so that a route, a field or a limit is described where it is enforced.

Each operation gets: its path parameters, query parameters and body from their types; the
200 response; the errors every route of its kind can answer (400 for input, 401 and 403 for a
scope, 405 for a wrong method, 413 for a body, 500 and 503 always) and those particular to
it; and, for a route that takes an Idempotency-Key, the header, 409, 422 and the
Idempotent-Replayed response header.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import msgspec

from loyalty.http.body import BODY_MAX_BYTES
from loyalty.http.routing import Endpoint, Operation
from loyalty.http.schemas import Error
from loyalty.idempotency.keys import HEADER, KEY_PATTERN, REPLAYED_HEADER

_REF = "#/components/schemas/{name}"
_COMMON_ERRORS = {
    405: "The route does not take this method (not_allowed; Allow lists those it takes)",
    500: "Unexpected error",
}
_SCOPED_ERRORS = {
    401: "Missing, malformed, forged or expired credentials",
    403: "The caller lacks the scope this route needs",
}
_IDEMPOTENT_ERRORS = {
    409: "A request with the same Idempotency-Key is still in flight",
    422: "The Idempotency-Key was used with a different request",
}
_ERROR_HEADERS: dict[int, dict[str, Any]] = {
    405: {
        "Allow": {
            "description": "The methods the route takes",
            "schema": {"type": "string"},
        }
    },
    429: {
        "Retry-After": {
            "description": "Seconds until the request may be tried again",
            "schema": {"type": "integer", "minimum": 1},
        }
    },
}


def document(endpoints: Sequence[Endpoint]) -> dict[str, Any]:
    structs: set[type] = {Error}
    for endpoint in endpoints:
        operation = endpoint.operation
        structs.update(t for t in (operation.ok, operation.body) if t is not None)
    _, components = msgspec.json.schema_components(sorted(structs, key=_name), ref_template=_REF)
    paths: dict[str, dict[str, Any]] = {}
    for endpoint in endpoints:
        paths.setdefault(endpoint.path, {})[endpoint.method.lower()] = _operation(endpoint)
    security = {
        "bearer": {
            "type": "http",
            "scheme": "bearer",
            "description": "A user's JWT (from /admin/auth/token) or a secret API key (sk_…)",
        },
        "basic": {
            "type": "http",
            "scheme": "basic",
            "description": 'A secret API key as the username or the password: "sk_…:" or ":sk_…"',
        },
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Loyalty Points API",
            "version": "1.0.0",
            "description": "Customers' loyalty point balances, adjustments and history.",
        },
        "paths": paths,
        "components": {"schemas": components, "securitySchemes": security},
    }


def _name(kind: type) -> str:
    return kind.__name__


def _ref(kind: type) -> dict[str, str]:
    return {"$ref": _REF.format(name=_name(kind))}


def _operation(endpoint: Endpoint) -> dict[str, Any]:
    operation = endpoint.operation
    scope = endpoint.handler.scope
    # An empty scope: any authenticated caller.
    summary = f"{operation.summary} ({scope})" if scope else operation.summary
    document: dict[str, Any] = {"summary": summary, "tags": [operation.tag]}
    if scope is not None:
        document["security"] = [{"bearer": []}, {"basic": []}]
    parameters = _parameters(operation)
    if parameters:
        document["parameters"] = parameters
    if operation.body is not None:
        document["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": _ref(operation.body)}},
        }
    document["responses"] = {"200": _success(operation), **_errors(endpoint)}
    return document


def _parameters(operation: Operation) -> list[dict[str, Any]]:
    parameters = [
        {"name": name, "in": "path", "required": True, "schema": msgspec.json.schema(kind)}
        for name, kind in operation.path_params.items()
    ]
    if operation.query is not None:
        _, components = msgspec.json.schema_components([operation.query], ref_template=_REF)
        for name, field in components[_name(operation.query)]["properties"].items():
            parameters.append({"name": name, "in": "query", "schema": _not_null(field)})
    if operation.idempotent:
        parameters.append(
            {
                "name": HEADER,
                "in": "header",
                "description": (
                    "Makes a retry safe: a later request by the same user with the same key and"
                    " the same method, path, query and body gets the first response again, with"
                    f" {REPLAYED_HEADER}: true, and records nothing"
                ),
                "schema": {"type": "string", "pattern": KEY_PATTERN},
            }
        )
    return parameters


def _not_null(schema: dict[str, Any]) -> dict[str, Any]:
    """A query parameter's schema: an absent parameter is how a query says "none", so the
    `null` of an optional field does not apply."""
    options = schema.get("anyOf")
    if options is not None:
        kept = [option for option in options if option != {"type": "null"}]
        rest = {key: value for key, value in schema.items() if key != "anyOf"}
        schema = {**kept[0], **rest} if len(kept) == 1 else {**rest, "anyOf": kept}
    if schema.get("default", 0) is None:
        schema = {key: value for key, value in schema.items() if key != "default"}
    return schema


def _success(operation: Operation) -> dict[str, Any]:
    response: dict[str, Any] = {"description": operation.ok_description}
    if operation.ok is not None:
        schema: dict[str, Any] = _ref(operation.ok)
    elif operation.ok_media_types == ("application/json",):
        schema = {"type": "object"}
    else:
        schema = {"type": "string"}
    response["content"] = {media: {"schema": schema} for media in operation.ok_media_types}
    if operation.idempotent:
        response["headers"] = {
            REPLAYED_HEADER: {
                "description": "`true` when this is the kept response of an earlier request"
                f" with the same {HEADER}",
                "schema": {"type": "string", "enum": ["true"]},
            }
        }
    return response


def _errors(endpoint: Endpoint) -> dict[str, Any]:
    operation = endpoint.operation
    described = dict(_COMMON_ERRORS)
    if operation.uses_database:
        described[503] = "The database cannot be reached"
    scope = endpoint.handler.scope
    if scope is not None:
        # Every authenticated route also refuses unknown query parameters.
        described[400] = "Invalid input"
        described.update(_SCOPED_ERRORS if scope else {401: _SCOPED_ERRORS[401]})
    if operation.body is not None or operation.query is not None or operation.path_params:
        described[400] = "Invalid input"
    if operation.body is not None:
        limit = operation.body_max_bytes or BODY_MAX_BYTES
        described[413] = f"Body larger than {limit} bytes"
    if operation.idempotent:
        described.update(_IDEMPOTENT_ERRORS)
    described.update(operation.errors)
    responses: dict[str, Any] = {}
    for status in sorted(described):
        response: dict[str, Any] = {
            "description": described[status],
            "content": {"application/json": {"schema": _ref(Error)}},
        }
        if status in _ERROR_HEADERS:
            response["headers"] = _ERROR_HEADERS[status]
        responses[str(status)] = response
    return responses
