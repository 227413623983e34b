"""POST /admin/auth/token, Medusa v2's POST /auth/user/emailpass and POST /auth/token/refresh,
and GET /admin/users/me."""

from __future__ import annotations

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from loyalty.auth import service
from loyalty.auth.guard import ANY_SCOPE, Caller, is_key
from loyalty.auth.rate_limit import LoginLimits
from loyalty.auth.schemas import (
    LOGIN_FIELDS,
    LOGIN_LIMITS,
    Credentials,
    Token,
    TokenWithUser,
    UserBody,
    UserResponse,
)
from loyalty.auth.tokens import issue_token
from loyalty.context import AppContext
from loyalty.errors import FieldError, Unauthorized, validation_error
from loyalty.http.access_log import note_user
from loyalty.http.body import decode_field, parse_json_object, read_body
from loyalty.http.params import query_params
from loyalty.http.responses import json_response
from loyalty.http.routing import Endpoint, Operation, public

TAG = "Auth"
_LOGIN_ERRORS = {
    401: "Wrong email or password",
    429: "Too many failed logins for this email or client address (not_allowed)",
}
KEY_NOT_REFRESHED = (
    "Only a user's token can be refreshed; a secret API key does not expire, send it as it is"
)


def user_body(user: service.User) -> UserBody:
    return UserBody(user.id, user.email, user.first_name, user.last_name, sorted(user.scopes))


def _field(fields: dict[str, msgspec.Raw], name: str, errors: list[FieldError]) -> str:
    """A login field, or "" with its error added: what is wrong, said precisely."""
    limit = LOGIN_LIMITS[name]
    raw = fields.get(name)
    if raw is None:
        errors.append(FieldError(name, f"{name} is required"))
        return ""
    try:
        value = decode_field(raw, str)
    except msgspec.ValidationError:
        errors.append(FieldError(name, f"{name} must be a string"))
        return ""
    if not value:
        errors.append(FieldError(name, f"{name} must not be empty"))
    elif len(value) > limit:
        errors.append(FieldError(name, f"{name} must be at most {limit} characters"))
    return value


def endpoints(ctx: AppContext) -> list[Endpoint]:
    async def login(request: Request) -> tuple[str, service.User]:
        fields = parse_json_object(request, await read_body(request), LOGIN_FIELDS)
        errors: list[FieldError] = []
        email = _field(fields, "email", errors)
        password = _field(fields, "password", errors)
        if errors:
            raise validation_error(errors)
        settings = ctx.settings
        # The connection's peer; uvicorn puts the X-Forwarded-For client here instead only
        # when the peer is one of the proxies LOYALTY_TRUST_PROXY names.
        client = request.client.host if request.client else None
        token, user = await service.login(
            ctx.db,
            ctx.guard.secret,
            settings.jwt_ttl_seconds,
            email,
            password,
            LoginLimits.from_settings(settings),
            client,
        )
        note_user(request.scope, user.id)
        return token, user

    async def admin_token(request: Request) -> Response:
        token, user = await login(request)
        return json_response(TokenWithUser(token, user_body(user)))

    async def refresh(request: Request, caller: Caller) -> Response:
        query_params(request)
        raw = await read_body(request)
        if raw:
            parse_json_object(request, raw, frozenset())
        if is_key(caller.actor_id):
            raise Unauthorized(KEY_NOT_REFRESHED)
        # The caller was confirmed just now: the new token carries the scopes held today.
        ttl_s = ctx.settings.jwt_ttl_seconds
        token = issue_token(ctx.guard.secret, caller.user_id, caller.scopes, ttl_s)
        return json_response(Token(token))

    async def me(request: Request, caller: Caller) -> Response:
        query_params(request)
        user = await service.get_user(ctx.db, caller.user_id)
        return json_response(UserResponse(user_body(user)))

    async def emailpass(request: Request) -> Response:
        token, _ = await login(request)
        return json_response(Token(token))

    return [
        Endpoint(
            "POST",
            "/admin/auth/token",
            public(admin_token),
            Operation(
                "Exchange an admin's email and password for a JWT",
                TAG,
                ok=TokenWithUser,
                ok_description="A token and its user",
                body=Credentials,
                errors=_LOGIN_ERRORS,
            ),
        ),
        Endpoint(
            "POST",
            "/auth/user/emailpass",
            public(emailpass),
            Operation(
                "Medusa v2's login route: a JWT for an admin's email and password",
                TAG,
                ok=Token,
                ok_description="A token",
                body=Credentials,
                errors=_LOGIN_ERRORS,
            ),
        ),
        Endpoint(
            "POST",
            "/auth/token/refresh",
            ctx.guard.confirmed(ANY_SCOPE, refresh),
            Operation(
                "A new JWT for the user of a valid one, with the scopes the user holds now"
                " (not for API keys)",
                TAG,
                ok=Token,
                ok_description="A new token",
            ),
        ),
        Endpoint(
            "GET",
            "/admin/users/me",
            ctx.guard.confirmed(ANY_SCOPE, me),
            Operation(
                "The calling user, as the token route shows it (for an API key: its creator)",
                TAG,
                ok=UserResponse,
                ok_description="The user",
            ),
        ),
    ]
