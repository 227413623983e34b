"""/admin/loyalty/points: adjust, balance, history."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from loyalty import timestamps
from loyalty.auth.scopes import LOYALTY_READ, LOYALTY_WRITE
from loyalty.context import AppContext
from loyalty.errors import FieldError, InvalidData, MethodNotAllowed
from loyalty.http import (
    json_response,
    parse_bool,
    parse_json_object,
    parse_page,
    parse_with,
    path_param,
    query_params,
    read_body,
)
from loyalty.idempotency.keys import (
    HEADER,
    REPLAYED_HEADER,
    IdempotencyClaim,
    parse_key,
    request_hash,
)
from loyalty.ledger import service
from loyalty.ledger.schemas import ADJUST_FIELDS, CUSTOMER_ID_MAX, parse_adjust_body
from loyalty.ledger.service import AdjustCommand, BalanceQuery

_ADJUST_PARAMS = frozenset({"include_history"})
_HISTORY_PARAMS = frozenset({"limit", "offset", "order", "created_at[gte]", "created_at[lte]"})
_EVERY_METHOD = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
_ORDERS = {"created_at": False, "-created_at": True}  # value: newest first


def _path_customer_id(request: Request) -> str:
    return path_param(request, "customer_id", CUSTOMER_ID_MAX)


def routes(ctx: AppContext) -> list[Route]:
    async def adjust(request: Request) -> Response:
        # Registered for every method so that GET .../adjust is a 405, not a balance lookup
        # for a customer named "adjust".
        if request.method != "POST":
            raise MethodNotAllowed(
                f"Method {request.method} is not allowed on {request.url.path}",
                allow="POST",
            )
        principal = ctx.claimed_principal(request, LOYALTY_WRITE)
        params = query_params(request, _ADJUST_PARAMS)
        include_history = parse_bool(params, "include_history", False)
        key = parse_key(request.headers.get(HEADER))
        raw = await read_body(request)
        body = parse_adjust_body(parse_json_object(request, raw, ADJUST_FIELDS))
        claim = None
        if key is not None:
            fingerprint = request_hash(
                request.method, request.url.path, request.scope["query_string"], raw
            )
            claim = IdempotencyClaim(key, fingerprint)
        reply = await ctx.ledger.adjust(
            AdjustCommand(body, principal.user_id, include_history, claim)
        )
        headers = {REPLAYED_HEADER: "true"} if reply.replayed else None
        return Response(reply.body, 200, headers, media_type="application/json")

    async def balance(request: Request) -> Response:
        principal = ctx.claimed_principal(request, LOYALTY_READ)
        query_params(request, frozenset())
        query = BalanceQuery(principal.user_id, _path_customer_id(request))
        return Response(await ctx.ledger.balance(query), media_type="application/json")

    async def history(request: Request) -> Response:
        await ctx.principal(request, LOYALTY_READ)
        params = query_params(request, _HISTORY_PARAMS)
        limit, offset = parse_page(params)
        order = params.get("order", "-created_at")
        if order not in _ORDERS:
            message = "order must be created_at or -created_at"
            raise InvalidData(message, [FieldError("order", message)])
        gte = parse_with(params, "created_at[gte]", timestamps.parse)
        lte = parse_with(params, "created_at[lte]", timestamps.parse)
        adjustments, count = await service.history(
            ctx.db, _path_customer_id(request), _ORDERS[order], gte, lte, limit, offset
        )
        return json_response(
            {"adjustments": adjustments, "count": count, "offset": offset, "limit": limit}
        )

    return [
        Route("/admin/loyalty/points/adjust", adjust, methods=_EVERY_METHOD),
        Route("/admin/loyalty/points/{customer_id}", balance, methods=["GET"]),
        Route("/admin/loyalty/points/{customer_id}/history", history, methods=["GET"]),
    ]
