"""/admin/loyalty/points: adjust, balance, history."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from loyalty import timestamps
from loyalty.auth.guard import Caller, TokenClaim
from loyalty.auth.scopes import LOYALTY_READ, LOYALTY_WRITE
from loyalty.context import AppContext
from loyalty.errors import FieldError, InvalidData
from loyalty.http.body import parse_json_object, read_body
from loyalty.http.params import parse_bool, parse_page, parse_with, path_param, query_params
from loyalty.http.responses import json_response
from loyalty.http.routing import Endpoint, Operation
from loyalty.idempotency.keys import keyed_request, read_key, replay_headers
from loyalty.ledger import repository, service
from loyalty.ledger.batch import AdjustCommand
from loyalty.ledger.schemas import (
    ADJUST_FIELDS,
    CUSTOMER_ID_MAX,
    AdjustmentPage,
    AdjustQuery,
    AdjustRequest,
    AdjustResponse,
    Balance,
    CustomerId,
    HistoryQuery,
    parse_adjust_body,
)
from loyalty.ledger.service import BalanceQuery

TAG = "Loyalty points"
_ORDERS = {"created_at": False, "-created_at": True}  # value: newest first
_CUSTOMER_PATH = {"customer_id": CustomerId}
_UNKNOWN_CUSTOMER = {404: "Unknown customer"}


def _path_customer_id(request: Request) -> str:
    return path_param(request, "customer_id", CUSTOMER_ID_MAX)


def endpoints(ctx: AppContext) -> list[Endpoint]:
    async def adjust(request: Request, claim: TokenClaim) -> Response:
        params = query_params(request, AdjustQuery)
        include_history = parse_bool(params, "include_history", False)
        key = read_key(request)
        raw = await read_body(request)
        body = parse_adjust_body(parse_json_object(request, raw, ADJUST_FIELDS))
        keyed = keyed_request(request, key, claim.actor_id, raw)
        reply = await ctx.ledger.adjust(AdjustCommand(body, claim, include_history, keyed))
        headers = replay_headers(reply.replayed)
        return Response(reply.body, reply.status, headers, media_type="application/json")

    async def balance(request: Request, claim: TokenClaim) -> Response:
        query_params(request)
        query = BalanceQuery(claim, _path_customer_id(request))
        return Response(await ctx.ledger.balance(query), media_type="application/json")

    async def history(request: Request, caller: Caller) -> Response:
        params = query_params(request, HistoryQuery)
        limit, offset = parse_page(params)
        order = params.get("order", "-created_at")
        if order not in _ORDERS:
            message = "order must be created_at or -created_at"
            raise InvalidData(message, [FieldError("order", message)])
        gte = parse_with(params, "created_at[gte]", timestamps.parse)
        lte = parse_with(params, "created_at[lte]", timestamps.parse)
        query = repository.HistoryPage(
            _path_customer_id(request), _ORDERS[order], gte, lte, limit, offset
        )
        adjustments, count = await service.history(ctx.db, query)
        return json_response(AdjustmentPage(adjustments, count, offset, limit))

    return [
        Endpoint(
            "POST",
            "/admin/loyalty/points/adjust",
            ctx.guard.claimed(LOYALTY_WRITE, adjust),
            Operation(
                "Add points to or take points from a customer",
                TAG,
                ok=AdjustResponse,
                ok_description="The adjustment and the new balance",
                body=AdjustRequest,
                query=AdjustQuery,
                errors={
                    400: "Invalid input, or insufficient points (not_allowed)",
                    **_UNKNOWN_CUSTOMER,
                },
                idempotent=True,
            ),
        ),
        Endpoint(
            "GET",
            "/admin/loyalty/points/{customer_id}",
            ctx.guard.claimed(LOYALTY_READ, balance),
            Operation(
                "A customer's balance",
                TAG,
                ok=Balance,
                ok_description="The balance",
                path_params=_CUSTOMER_PATH,
                errors=_UNKNOWN_CUSTOMER,
            ),
        ),
        Endpoint(
            "GET",
            "/admin/loyalty/points/{customer_id}/history",
            ctx.guard.confirmed(LOYALTY_READ, history),
            Operation(
                "A customer's adjustments, newest first by default",
                TAG,
                ok=AdjustmentPage,
                ok_description="A page of adjustments",
                query=HistoryQuery,
                path_params=_CUSTOMER_PATH,
                errors=_UNKNOWN_CUSTOMER,
            ),
        ),
    ]
