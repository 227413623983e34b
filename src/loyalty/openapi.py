"""The OpenAPI 3 document served at /openapi.json, and the /docs page that renders it."""

from __future__ import annotations

from functools import cache
from typing import Any

from swagger_ui_bundle import swagger_ui_path  # type: ignore[import-untyped]

from loyalty.auth.scopes import ALL_SCOPES

_ref = "#/components/schemas/"


def _schema(name: str) -> dict[str, str]:
    return {"$ref": _ref + name}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _error(description: str) -> dict[str, Any]:
    return _json(_schema("Error"), description)


_POINTS = {
    "type": "number",
    "description": "Exact points, at most 2 fractional digits (150, 100.01, 0.3)",
}
_TIMESTAMP = {"type": "string", "format": "date-time", "example": "2026-02-18T12:34:56.789Z"}
_NULLABLE_STRING = {"type": ["string", "null"]}

_ADMIN_ERRORS = {
    "400": _error("Invalid input"),
    "401": _error("Missing, malformed, forged or expired credentials"),
    "403": _error("The user lacks the scope this route needs"),
    "500": _error("Unexpected error"),
    "503": _error("The database cannot be reached"),
}


_LOGIN_ERRORS = {
    "400": _error("Invalid input"),
    "401": _error("Wrong email or password"),
    "413": _error("Body too large"),
    "429": {
        **_error("Too many failed logins for this email or client address (not_allowed)"),
        "headers": {
            "Retry-After": {
                "description": "Seconds until logins are accepted again",
                "schema": {"type": "integer", "minimum": 1},
            }
        },
    },
    "500": _error("Unexpected error"),
    "503": _error("The database cannot be reached"),
}


def _page_params(extra: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    return [
        {
            "name": "limit",
            "in": "query",
            "schema": {"type": "integer", "minimum": 1, "maximum": 100, "default": 20},
        },
        {
            "name": "offset",
            "in": "query",
            "schema": {"type": "integer", "minimum": 0, "maximum": 2**31 - 1, "default": 0},
        },
        *(extra or []),
    ]


_CUSTOMER_ID_PATH = {
    "name": "customer_id",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "minLength": 1, "maxLength": 64},
}


def _login_body() -> dict[str, Any]:
    return {
        "required": True,
        "content": {"application/json": {"schema": _schema("Credentials")}},
    }


_PATHS: dict[str, Any] = {
    "/health": {
        "get": {
            "summary": "Whether the service and its database answer",
            "tags": ["Service"],
            "responses": {
                "200": _json(
                    {
                        "type": "object",
                        "required": ["status"],
                        "properties": {"status": {"type": "string", "enum": ["ok"]}},
                    },
                    "Healthy",
                ),
                "503": _error("The database cannot be reached"),
            },
        }
    },
    "/admin/auth/token": {
        "post": {
            "summary": "Exchange an admin's email and password for a JWT",
            "tags": ["Auth"],
            "requestBody": _login_body(),
            "responses": {
                "200": _json(_schema("TokenWithUser"), "A token and its user"),
                **_LOGIN_ERRORS,
            },
        }
    },
    "/auth/user/emailpass": {
        "post": {
            "summary": "Medusa v2's login route: a JWT for an admin's email and password",
            "tags": ["Auth"],
            "requestBody": _login_body(),
            "responses": {
                "200": _json(
                    {
                        "type": "object",
                        "required": ["token"],
                        "properties": {"token": {"type": "string"}},
                    },
                    "A token",
                ),
                **_LOGIN_ERRORS,
            },
        }
    },
    "/admin/customers": {
        "post": {
            "summary": "Create a customer (customers:write)",
            "tags": ["Customers"],
            "security": [{"bearer": []}],
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": _schema("CustomerCreate")}},
            },
            "responses": {
                "200": _json(_schema("CustomerResponse"), "The new customer"),
                **_ADMIN_ERRORS,
                "409": _error("A customer with this email or id exists"),
                "413": _error("Body too large"),
            },
        },
        "get": {
            "summary": "List customers (customers:read)",
            "tags": ["Customers"],
            "security": [{"bearer": []}],
            "parameters": _page_params(
                [
                    {
                        "name": "q",
                        "in": "query",
                        "description": "Matches email, first or last name (substring)",
                        "schema": {"type": "string", "maxLength": 255},
                    }
                ]
            ),
            "responses": {
                "200": _json(_schema("CustomerList"), "A page of customers"),
                **_ADMIN_ERRORS,
            },
        },
    },
    "/admin/customers/{customer_id}": {
        "get": {
            "summary": "Get a customer (customers:read)",
            "tags": ["Customers"],
            "security": [{"bearer": []}],
            "parameters": [_CUSTOMER_ID_PATH],
            "responses": {
                "200": _json(_schema("CustomerResponse"), "The customer"),
                **_ADMIN_ERRORS,
                "404": _error("Unknown customer"),
            },
        }
    },
    "/admin/loyalty/points/adjust": {
        "post": {
            "summary": "Add points to or take points from a customer (loyalty:write)",
            "tags": ["Loyalty points"],
            "security": [{"bearer": []}],
            "parameters": [
                {
                    "name": "include_history",
                    "in": "query",
                    "description": "Also return the last 20 adjustments, newest first",
                    "schema": {"type": "string", "enum": ["true", "false", "1", "0"]},
                },
                {
                    "name": "Idempotency-Key",
                    "in": "header",
                    "description": (
                        "Makes a retry safe: a later request by the same user with the same"
                        " key and the same method, path, query and body gets the first"
                        " response again, with Idempotent-Replayed: true, and records nothing"
                    ),
                    "schema": {"type": "string", "pattern": "^[\\x21-\\x7e]{1,255}$"},
                },
            ],
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": _schema("AdjustRequest")}},
            },
            "responses": {
                "200": {
                    **_json(_schema("AdjustResponse"), "The adjustment and the new balance"),
                    "headers": {
                        "Idempotent-Replayed": {
                            "description": "`true` when this is the kept response of an"
                            " earlier request with the same Idempotency-Key",
                            "schema": {"type": "string", "enum": ["true"]},
                        }
                    },
                },
                **_ADMIN_ERRORS,
                "400": _error("Invalid input, or insufficient points (not_allowed)"),
                "404": _error("Unknown customer"),
                "409": _error("A request with the same Idempotency-Key is still in flight"),
                "413": _error("Body too large"),
                "422": _error("The Idempotency-Key was used with a different request"),
            },
        }
    },
    "/admin/loyalty/points/{customer_id}": {
        "get": {
            "summary": "A customer's balance (loyalty:read)",
            "tags": ["Loyalty points"],
            "security": [{"bearer": []}],
            "parameters": [_CUSTOMER_ID_PATH],
            "responses": {
                "200": _json(_schema("Balance"), "The balance"),
                **_ADMIN_ERRORS,
                "404": _error("Unknown customer"),
            },
        }
    },
    "/admin/loyalty/points/{customer_id}/history": {
        "get": {
            "summary": "A customer's adjustments, newest first by default (loyalty:read)",
            "tags": ["Loyalty points"],
            "security": [{"bearer": []}],
            "parameters": [
                _CUSTOMER_ID_PATH,
                *_page_params(
                    [
                        {
                            "name": "order",
                            "in": "query",
                            "schema": {
                                "type": "string",
                                "enum": ["-created_at", "created_at"],
                                "default": "-created_at",
                            },
                        },
                        {
                            "name": "created_at[gte]",
                            "in": "query",
                            "schema": {"type": "string", "format": "date-time"},
                        },
                        {
                            "name": "created_at[lte]",
                            "in": "query",
                            "schema": {"type": "string", "format": "date-time"},
                        },
                    ]
                ),
            ],
            "responses": {
                "200": _json(_schema("AdjustmentList"), "A page of adjustments"),
                **_ADMIN_ERRORS,
                "404": _error("Unknown customer"),
            },
        }
    },
}

_ADJUSTMENT: dict[str, Any] = {
    "type": "object",
    "required": ["id", "delta", "reason", "balance_after", "created_at"],
    "properties": {
        "id": {"type": "string", "pattern": "^adj_[0-9A-HJKMNP-TV-Z]{26}$"},
        "delta": _POINTS,
        "reason": _NULLABLE_STRING,
        "balance_after": _POINTS,
        "created_at": _TIMESTAMP,
    },
}

_ADJUSTMENT_WITH_ACTOR = {
    **_ADJUSTMENT,
    "required": [*_ADJUSTMENT["required"], "created_by"],
    "properties": {
        **_ADJUSTMENT["properties"],
        "created_by": {
            "type": ["string", "null"],
            "description": "The id of the admin user who made the adjustment",
        },
    },
}

_CUSTOMER = {
    "type": "object",
    "required": ["id", "email", "first_name", "last_name", "created_at", "updated_at"],
    "properties": {
        "id": {"type": "string"},
        "email": {"type": "string"},
        "first_name": _NULLABLE_STRING,
        "last_name": _NULLABLE_STRING,
        "created_at": _TIMESTAMP,
        "updated_at": _TIMESTAMP,
    },
}


def _page_of(key: str, item: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "object",
        "required": [key, "count", "offset", "limit"],
        "properties": {
            key: {"type": "array", "items": item},
            "count": {"type": "integer", "minimum": 0},
            "offset": {"type": "integer", "minimum": 0},
            "limit": {"type": "integer", "minimum": 1, "maximum": 100},
        },
    }


_SCHEMAS: dict[str, Any] = {
    "Error": {
        "type": "object",
        "required": ["type", "message"],
        "properties": {
            "type": {
                "type": "string",
                "enum": [
                    "invalid_data",
                    "not_allowed",
                    "unauthorized",
                    "forbidden",
                    "not_found",
                    "conflict",
                    "idempotency_error",
                    "unexpected_state",
                ],
            },
            "message": {"type": "string"},
            "errors": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["field", "message"],
                    "properties": {"field": {"type": "string"}, "message": {"type": "string"}},
                },
            },
        },
    },
    "Credentials": {
        "type": "object",
        "required": ["email", "password"],
        "additionalProperties": False,
        "properties": {
            "email": {"type": "string", "maxLength": 254},
            "password": {"type": "string", "maxLength": 1024},
        },
    },
    "TokenWithUser": {
        "type": "object",
        "required": ["token", "user"],
        "properties": {
            "token": {"type": "string"},
            "user": {
                "type": "object",
                "required": ["id", "email", "first_name", "last_name", "scopes"],
                "properties": {
                    "id": {"type": "string"},
                    "email": {"type": "string"},
                    "first_name": _NULLABLE_STRING,
                    "last_name": _NULLABLE_STRING,
                    "scopes": {"type": "array", "items": {"type": "string", "enum": ALL_SCOPES}},
                },
            },
        },
    },
    "CustomerCreate": {
        "type": "object",
        "required": ["email"],
        "additionalProperties": False,
        "properties": {
            "email": {"type": "string", "format": "email", "maxLength": 254},
            "first_name": {"type": ["string", "null"], "maxLength": 255},
            "last_name": {"type": ["string", "null"], "maxLength": 255},
            "id": {"type": "string", "pattern": "^[A-Za-z0-9_-]{1,64}$"},
        },
    },
    "Customer": _CUSTOMER,
    "CustomerResponse": {
        "type": "object",
        "required": ["customer"],
        "properties": {"customer": _schema("Customer")},
    },
    "CustomerList": _page_of("customers", _schema("Customer")),
    "AdjustRequest": {
        "type": "object",
        "required": ["customer_id", "delta"],
        "additionalProperties": False,
        "properties": {
            "customer_id": {"type": "string", "minLength": 1, "maxLength": 64},
            "delta": {
                "type": "number",
                "not": {"const": 0},
                "minimum": -1_000_000_000,
                "maximum": 1_000_000_000,
                "multipleOf": 0.01,
                "description": "Non-zero, at most 2 fractional digits",
            },
            "reason": {"type": ["string", "null"], "maxLength": 1000},
        },
    },
    "Adjustment": _ADJUSTMENT,
    "AdjustResponse": {
        "type": "object",
        "required": ["id", "customer_id", "balance_after", "updated_at"],
        "properties": {
            "id": {"type": "string"},
            "customer_id": {"type": "string"},
            "balance_after": _POINTS,
            "updated_at": _TIMESTAMP,
            "history": {
                "type": "array",
                "maxItems": 20,
                "items": _schema("Adjustment"),
                "description": "Only with include_history=true: newest first, this one first",
            },
        },
    },
    "Balance": {
        "type": "object",
        "required": ["customer_id", "balance", "updated_at"],
        "properties": {
            "customer_id": {"type": "string"},
            "balance": _POINTS,
            "updated_at": {"type": ["string", "null"], "format": "date-time"},
        },
    },
    "AdjustmentWithActor": _ADJUSTMENT_WITH_ACTOR,
    "AdjustmentList": _page_of("adjustments", _schema("AdjustmentWithActor")),
}


@cache
def document() -> dict[str, Any]:
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Loyalty Points API",
            "version": "1.0.0",
            "description": "Customers' loyalty point balances, adjustments and history.",
        },
        "paths": _PATHS,
        "components": {
            "schemas": _SCHEMAS,
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}
            },
        },
    }


# Swagger UI's files ship in a Python package, so /docs works with no internet access.
DOCS_ASSETS_DIR = swagger_ui_path
DOCS_HTML = """<!doctype html>
<html>
<head>
<meta charset="utf-8">
<title>Loyalty Points API</title>
<link rel="stylesheet" href="/docs/assets/swagger-ui.css">
</head>
<body>
<div id="swagger-ui"></div>
<script src="/docs/assets/swagger-ui-bundle.js"></script>
<script>
SwaggerUIBundle({url: "/openapi.json", dom_id: "#swagger-ui"});
</script>
</body>
</html>
"""
