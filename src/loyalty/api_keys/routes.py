"""/admin/api-keys: create, list, revoke."""

from __future__ import annotations

from typing import Any

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from loyalty.api_keys import service
from loyalty.api_keys.schemas import (
    CREATE_FIELDS,
    KEY_ID_MAX,
    SCOPES_MAX,
    TITLE_MAX,
    ApiKeyCreate,
    ApiKeyPage,
    ApiKeyQuery,
    ApiKeyResponse,
    KeyIdPath,
)
from loyalty.auth.guard import Caller
from loyalty.auth.scopes import API_KEYS_WRITE
from loyalty.context import AppContext
from loyalty.errors import FieldError, validation_error
from loyalty.http.body import decode_field, parse_json_object, read_body
from loyalty.http.params import parse_page, path_param, query_params
from loyalty.http.responses import json_response
from loyalty.http.routing import Endpoint, Operation
from loyalty.idempotency.keys import keyed_request, read_key, replay_headers

TAG = "API keys"


def _parse_create(fields: dict[str, msgspec.Raw]) -> tuple[str, list[str] | None]:
    """The title and scopes of a create body, every problem named by its field."""
    errors: list[FieldError] = []
    title = ""
    title_message = f"title must be a string of 1 to {TITLE_MAX} characters"
    if "title" not in fields:
        errors.append(FieldError("title", "title is required"))
    else:
        try:
            title = decode_field(fields["title"], str)
        except msgspec.ValidationError:
            errors.append(FieldError("title", title_message))
        else:
            if not 1 <= len(title) <= TITLE_MAX:
                errors.append(FieldError("title", title_message))
    scopes: list[str] | None = None
    if "scopes" in fields:
        scopes_message = f"scopes must be a list of 1 to {SCOPES_MAX} scope names, or null"
        try:
            if bytes(fields["scopes"]) != b"null":
                scopes = decode_field(fields["scopes"], list[str])
        except msgspec.ValidationError:
            errors.append(FieldError("scopes", scopes_message))
        else:
            if scopes is not None and not 1 <= len(scopes) <= SCOPES_MAX:
                errors.append(FieldError("scopes", scopes_message))
    if errors:
        raise validation_error(errors)
    return title, scopes


def _answer(answer: service.Answer) -> Response:
    headers: Any = replay_headers(answer.replayed)
    return Response(answer.body, answer.status, headers, media_type="application/json")


def endpoints(ctx: AppContext) -> list[Endpoint]:
    async def create(request: Request, caller: Caller) -> Response:
        query_params(request)
        key = read_key(request)
        raw = await read_body(request)
        title, scopes = _parse_create(parse_json_object(request, raw, CREATE_FIELDS))
        creator = service.Creator(caller.user_id, caller.scopes)
        keyed = keyed_request(request, key, caller.actor_id, raw)
        return _answer(await service.create_key(ctx.db, creator, title, scopes, keyed))

    async def list_(request: Request, caller: Caller) -> Response:
        limit, offset = parse_page(query_params(request, ApiKeyQuery))
        keys, count = await service.list_keys(ctx.db, limit, offset)
        return json_response(ApiKeyPage(keys, count, offset, limit))

    async def revoke(request: Request, caller: Caller) -> Response:
        query_params(request)
        key_id = path_param(request, "key_id", KEY_ID_MAX)
        key = read_key(request)
        raw = await read_body(request)
        if raw:
            parse_json_object(request, raw, frozenset())
        keyed = keyed_request(request, key, caller.actor_id, raw)
        return _answer(await service.revoke_key(ctx.db, key_id, keyed))

    return [
        Endpoint(
            "POST",
            "/admin/api-keys",
            ctx.guard.confirmed(API_KEYS_WRITE, create),
            Operation(
                "Create a secret API key; its token is shown in this response only",
                TAG,
                ok=ApiKeyResponse,
                ok_description="The new key, with its token",
                body=ApiKeyCreate,
                idempotent=True,
                errors={400: "Invalid input, or a scope the creator does not hold"},
            ),
        ),
        Endpoint(
            "GET",
            "/admin/api-keys",
            ctx.guard.confirmed(API_KEYS_WRITE, list_),
            Operation(
                "List secret API keys, newest first, without their tokens",
                TAG,
                ok=ApiKeyPage,
                ok_description="A page of keys",
                query=ApiKeyQuery,
            ),
        ),
        Endpoint(
            "POST",
            "/admin/api-keys/{key_id}/revoke",
            ctx.guard.confirmed(API_KEYS_WRITE, revoke),
            Operation(
                "Revoke a secret API key, at once for every worker and server",
                TAG,
                ok=ApiKeyResponse,
                ok_description="The revoked key",
                path_params={"key_id": KeyIdPath},
                idempotent=True,
                errors={
                    404: "Unknown API key",
                    409: "The key is already revoked, or the Idempotency-Key is in flight",
                },
            ),
        ),
    ]
