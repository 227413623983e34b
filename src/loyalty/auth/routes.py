"""POST /admin/auth/token and Medusa v2's POST /auth/user/emailpass."""

from __future__ import annotations

import msgspec
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from loyalty.auth import service
from loyalty.auth.passwords import PASSWORD_MAX
from loyalty.auth.rate_limit import LoginLimits
from loyalty.context import AppContext
from loyalty.emails import EMAIL_MAX
from loyalty.errors import FieldError, validation_error
from loyalty.http import decode_field, json_response, read_json_object
from loyalty.request_log import note_user

_LOGIN_FIELDS = frozenset({"email", "password"})


async def _login(ctx: AppContext, request: Request) -> tuple[str, service.User]:
    fields = await read_json_object(request, _LOGIN_FIELDS)
    values: dict[str, str] = {}
    errors = []
    for name, limit in (("email", EMAIL_MAX), ("password", PASSWORD_MAX)):
        try:
            value = decode_field(fields[name], str) if name in fields else None
        except msgspec.ValidationError:
            value = None
        if value is None or not 0 < len(value) <= limit:
            errors.append(FieldError(name, f"{name} must be a non-empty string"))
        else:
            values[name] = value
    if errors:
        raise validation_error(errors)
    settings = ctx.settings
    # The connection's peer; uvicorn puts the X-Forwarded-For client here instead only when
    # the peer is one of the proxies LOYALTY_TRUST_PROXY names.
    client = request.client.host if request.client else None
    token, user = await service.login(
        ctx.db,
        ctx.jwt_secret,
        settings.jwt_ttl_seconds,
        values["email"],
        values["password"],
        LoginLimits.from_settings(settings),
        client,
    )
    note_user(request.scope, user.id)
    return token, user


def routes(ctx: AppContext) -> list[Route]:
    async def admin_token(request: Request) -> Response:
        token, user = await _login(ctx, request)
        return json_response(
            {
                "token": token,
                "user": {
                    "id": user.id,
                    "email": user.email,
                    "first_name": user.first_name,
                    "last_name": user.last_name,
                    "scopes": sorted(user.scopes),
                },
            }
        )

    async def emailpass(request: Request) -> Response:
        token, _ = await _login(ctx, request)
        return json_response({"token": token})

    return [
        Route("/admin/auth/token", admin_token, methods=["POST"]),
        Route("/auth/user/emailpass", emailpass, methods=["POST"]),
    ]
