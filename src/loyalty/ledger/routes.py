"""/admin/loyalty: adjust, bulk-adjust, balance (now or as of a time), history, expirations,
pending points, reversal and the whole ledger."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated

import msgspec
from msgspec import Meta
from starlette.requests import Request
from starlette.responses import Response

from loyalty import timestamps
from loyalty.auth.guard import Caller, TokenClaim
from loyalty.auth.scopes import LOYALTY_READ, LOYALTY_WRITE
from loyalty.context import AppContext
from loyalty.errors import FieldError, InvalidData, LoyaltyError
from loyalty.http.body import (
    BODY_MAX_BYTES,
    decode_field,
    parse_json_object,
    read_body,
    refuse_unknown_fields,
)
from loyalty.http.params import (
    parse_bool,
    parse_int,
    parse_page,
    parse_with,
    path_param,
    query_params,
)
from loyalty.http.responses import json_response
from loyalty.http.routing import Endpoint, Operation
from loyalty.http.schemas import PageQuery
from loyalty.idempotency.keys import keyed_request, read_key, replay_headers
from loyalty.idempotency.policy import KeyedRequest
from loyalty.ids import id_ceiling, id_floor
from loyalty.ledger import repository, service
from loyalty.ledger.batch import (
    AdjustCommand,
    BulkCommand,
    Command,
    CreatePendingCommand,
    ReverseCommand,
    SettlePendingCommand,
)
from loyalty.ledger.schemas import (
    ADJUST_FIELDS,
    BULK_FIELDS,
    BULK_MAX,
    CUSTOMER_ID_MAX,
    PENDING_FIELDS,
    REVERSE_FIELDS,
    AdjustBody,
    AdjustmentEnvelope,
    AdjustmentPage,
    AdjustQuery,
    AdjustRequest,
    AdjustResponse,
    Balance,
    BalanceQuery,
    BulkRequest,
    BulkResponse,
    CustomerId,
    ExpirationPage,
    HistoryQuery,
    LedgerPage,
    LedgerQuery,
    PendingEnvelope,
    PendingListQuery,
    PendingPage,
    PendingRequest,
    ReverseRequest,
    ReverseResponse,
    parse_adjust_body,
    parse_pending_body,
    parse_reverse_body,
)
from loyalty.ledger.service import BalanceQuery as BalanceRead
from loyalty.ledger.service import decode_cursor

TAG = "Loyalty points"
LEDGER_TAG = "Ledger"
PENDING_TAG = "Pending points"
BULK_BODY_MAX_BYTES = 1024 * 1024
ID_MAX = 64
_ORDERS = {"created_at": False, "-created_at": True}  # value: newest first
_TYPES = ("adjustment", "reversal", "expiration", "release")
_STATUSES = ("pending", "released", "voided")
_CUSTOMER_PATH = {"customer_id": CustomerId}
_ADJUSTMENT_PATH = {"adjustment_id": Annotated[str, Meta(max_length=ID_MAX)]}
_PENDING_PATH = {"pending_id": Annotated[str, Meta(max_length=ID_MAX)]}
_UNKNOWN_CUSTOMER = {404: "Unknown customer"}
_ADJUST_ERRORS = {
    400: "Invalid input, or insufficient points (not_allowed)",
    404: "Unknown customer",
    409: "The reference is already used for this customer, or the Idempotency-Key is in flight",
}
_NO_FIELDS: frozenset[str] = frozenset()
_DATE_TIME = "must be an ISO 8601 date-time"


def _path_customer_id(request: Request) -> str:
    return path_param(request, "customer_id", CUSTOMER_ID_MAX)


def _one_of(params: dict[str, str], name: str, allowed: tuple[str, ...]) -> str | None:
    value = params.get(name)
    if value is not None and value not in allowed:
        message = f"{name} must be one of {', '.join(allowed)}"
        raise InvalidData(message, [FieldError(name, message)])
    return value


def _bulk_items(raw: dict[str, msgspec.Raw]) -> tuple[list[AdjustBody | LoyaltyError], bool]:
    """The bulk's items, each parsed as its own adjust body (an invalid one becomes that
    item's error), and whether it is atomic."""
    errors: list[FieldError] = []
    items: list[msgspec.Raw] = []
    message = f"adjustments must be a list of 1 to {BULK_MAX} adjust bodies"
    try:
        items = decode_field(raw["adjustments"], list[msgspec.Raw]) if "adjustments" in raw else []
    except msgspec.ValidationError:
        items = []
    if not 1 <= len(items) <= BULK_MAX:
        errors.append(FieldError("adjustments", message))
    atomic = False
    if "atomic" in raw:
        try:
            atomic = decode_field(raw["atomic"], bool)
        except msgspec.ValidationError:
            errors.append(FieldError("atomic", "atomic must be true or false"))
    if errors:
        raise InvalidData(errors[0].message, errors)
    parsed: list[AdjustBody | LoyaltyError] = []
    for item in items:
        try:
            fields = decode_field(item, dict[str, msgspec.Raw])
            refuse_unknown_fields(fields, ADJUST_FIELDS)
            parsed.append(parse_adjust_body(fields))
        except msgspec.ValidationError:
            parsed.append(InvalidData("Each adjustment must be a JSON object"))
        except LoyaltyError as error:
            parsed.append(error)
    return parsed, atomic


@dataclass(frozen=True, slots=True)
class _Sent:
    """A writing request's body: its fields, still raw JSON, and its Idempotency-Key."""

    fields: dict[str, msgspec.Raw]
    keyed: KeyedRequest | None


async def read_write(
    request: Request,
    claim: TokenClaim,
    allowed: frozenset[str],
    size_max: int = BODY_MAX_BYTES,
    optional: bool = False,
) -> _Sent:
    """The body of a POST that writes (a JSON object of `allowed` fields, or nothing at all
    when `optional`), and its key with the fingerprint a replay must match."""
    key = read_key(request)
    raw = await read_body(request, size_max)
    fields = {} if optional and not raw else parse_json_object(request, raw, allowed)
    return _Sent(fields, keyed_request(request, key, claim.actor_id, raw))


def endpoints(ctx: AppContext) -> list[Endpoint]:
    async def submit(command: Command) -> Response:
        reply = await ctx.ledger.submit(command)
        headers = replay_headers(reply.replayed)
        return Response(reply.body, reply.status, headers, media_type="application/json")

    async def adjust(request: Request, claim: TokenClaim) -> Response:
        params = query_params(request, AdjustQuery)
        include_history = parse_bool(params, "include_history", False)
        sent = await read_write(request, claim, ADJUST_FIELDS)
        body = parse_adjust_body(sent.fields)
        return await submit(AdjustCommand(body, include_history, claim=claim, keyed=sent.keyed))

    async def bulk_adjust(request: Request, claim: TokenClaim) -> Response:
        query_params(request)
        sent = await read_write(request, claim, BULK_FIELDS, BULK_BODY_MAX_BYTES)
        items, atomic = _bulk_items(sent.fields)
        return await submit(BulkCommand(items, atomic, claim=claim, keyed=sent.keyed))

    async def reverse(request: Request, claim: TokenClaim) -> Response:
        query_params(request)
        adjustment_id = path_param(request, "adjustment_id", ID_MAX)
        sent = await read_write(request, claim, REVERSE_FIELDS, optional=True)
        body = parse_reverse_body(sent.fields)
        return await submit(ReverseCommand(adjustment_id, body, claim=claim, keyed=sent.keyed))

    async def create_pending(request: Request, claim: TokenClaim) -> Response:
        query_params(request)
        sent = await read_write(request, claim, PENDING_FIELDS)
        body = parse_pending_body(sent.fields)
        return await submit(CreatePendingCommand(body, claim=claim, keyed=sent.keyed))

    def settle(release: bool) -> Callable[[Request, TokenClaim], Awaitable[Response]]:
        async def handler(request: Request, claim: TokenClaim) -> Response:
            query_params(request)
            pending_id = path_param(request, "pending_id", ID_MAX)
            sent = await read_write(request, claim, _NO_FIELDS, optional=True)
            command = SettlePendingCommand(pending_id, release, claim=claim, keyed=sent.keyed)
            return await submit(command)

        return handler

    async def balance(request: Request, claim: TokenClaim) -> Response:
        params = query_params(request, BalanceQuery)
        customer_id = _path_customer_id(request)
        as_of = parse_with(params, "as_of", timestamps.parse, _DATE_TIME)
        if as_of is None:
            body = await ctx.ledger.balance(BalanceRead(claim, customer_id))
            return Response(body, media_type="application/json")
        await ctx.guard.caller(request, LOYALTY_READ)
        return json_response(await service.balance_as_of(ctx.db, customer_id, as_of))

    async def history(request: Request, caller: Caller) -> Response:
        params = query_params(request, HistoryQuery)
        limit, offset = parse_page(params)
        order = params.get("order", "-created_at")
        if order not in _ORDERS:
            message = "order must be created_at or -created_at"
            raise InvalidData(message, [FieldError("order", message)])
        gte = parse_with(params, "created_at[gte]", timestamps.parse, _DATE_TIME)
        lte = parse_with(params, "created_at[lte]", timestamps.parse, _DATE_TIME)
        query = repository.HistoryPage(
            _path_customer_id(request), _ORDERS[order], gte, lte, limit, offset
        )
        adjustments, count = await service.history(ctx.db, query)
        return json_response(AdjustmentPage(adjustments, count, offset, limit))

    async def expirations(request: Request, caller: Caller) -> Response:
        params = query_params(request, PageQuery)
        limit, offset = parse_page(params)
        page = await service.expirations(ctx.db, _path_customer_id(request), limit, offset)
        return json_response(page)

    async def customer_pending(request: Request, caller: Caller) -> Response:
        params = query_params(request, PendingListQuery)
        limit, offset = parse_page(params)
        status = _one_of(params, "status", _STATUSES)
        page = await service.pending_page(ctx.db, _path_customer_id(request), status, limit, offset)
        return json_response(page)

    async def get_pending(request: Request, caller: Caller) -> Response:
        query_params(request)
        pending_id = path_param(request, "pending_id", ID_MAX)
        return json_response(await service.pending(ctx.db, pending_id))

    async def get_adjustment(request: Request, caller: Caller) -> Response:
        query_params(request)
        adjustment_id = path_param(request, "adjustment_id", ID_MAX)
        detail = await service.adjustment(ctx.db, adjustment_id)
        return json_response(AdjustmentEnvelope(detail))

    async def ledger(request: Request, caller: Caller) -> Response:
        params = query_params(request, LedgerQuery)
        limit = parse_int(params, "limit", 20, 1, 100)
        cursor = params.get("cursor")
        gte = parse_with(params, "created_at[gte]", timestamps.parse, _DATE_TIME)
        lte = parse_with(params, "created_at[lte]", timestamps.parse, _DATE_TIME)
        customer_id = params.get("customer_id")
        if customer_id is not None and not 1 <= len(customer_id) <= CUSTOMER_ID_MAX:
            message = f"customer_id must be 1 to {CUSTOMER_ID_MAX} characters"
            raise InvalidData(message, [FieldError("customer_id", message)])
        query = repository.LedgerQuery(
            limit,
            None if cursor is None else decode_cursor(cursor),
            customer_id,
            _one_of(params, "type", _TYPES),
            params.get("reference"),
            None if gte is None else id_floor("adj", max(gte, 0)),
            None if lte is None else id_ceiling("adj", max(lte, 0)),
        )
        return json_response(await service.ledger_page(ctx.db, query))

    write_errors = {400: "Invalid input", 404: "Unknown customer"}
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
                errors=_ADJUST_ERRORS,
                idempotent=True,
            ),
        ),
        Endpoint(
            "POST",
            "/admin/loyalty/points/bulk-adjust",
            ctx.guard.claimed(LOYALTY_WRITE, bulk_adjust),
            Operation(
                f"Up to {BULK_MAX} adjustments at once, each with its own outcome, or all or none",
                TAG,
                ok=BulkResponse,
                ok_description="One result per adjustment, in order",
                body=BulkRequest,
                body_max_bytes=BULK_BODY_MAX_BYTES,
                errors={400: "Invalid input, or an atomic bulk's failing items"},
                idempotent=True,
            ),
        ),
        Endpoint(
            "GET",
            "/admin/loyalty/points/{customer_id}",
            ctx.guard.claimed(LOYALTY_READ, balance),
            Operation(
                "A customer's balance, now or as of a time",
                TAG,
                ok=Balance,
                ok_description="The balance (with as_of: balance, updated_at and as_of only)",
                query=BalanceQuery,
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
        Endpoint(
            "GET",
            "/admin/loyalty/points/{customer_id}/expirations",
            ctx.guard.confirmed(LOYALTY_READ, expirations),
            Operation(
                "What is left of each unexpired credit, soonest first",
                TAG,
                ok=ExpirationPage,
                ok_description="A page of expiring credits",
                query=PageQuery,
                path_params=_CUSTOMER_PATH,
                errors=_UNKNOWN_CUSTOMER,
            ),
        ),
        Endpoint(
            "GET",
            "/admin/loyalty/points/{customer_id}/pending",
            ctx.guard.confirmed(LOYALTY_READ, customer_pending),
            Operation(
                "A customer's pending points, newest first",
                PENDING_TAG,
                ok=PendingPage,
                ok_description="A page of pending points",
                query=PendingListQuery,
                path_params=_CUSTOMER_PATH,
                errors=_UNKNOWN_CUSTOMER,
            ),
        ),
        Endpoint(
            "GET",
            "/admin/loyalty/adjustments",
            ctx.guard.confirmed(LOYALTY_READ, ledger),
            Operation(
                "Every customer's adjustments, newest first",
                LEDGER_TAG,
                ok=LedgerPage,
                ok_description="A page of adjustments and the cursor of the next",
                query=LedgerQuery,
            ),
        ),
        Endpoint(
            "GET",
            "/admin/loyalty/adjustments/{adjustment_id}",
            ctx.guard.confirmed(LOYALTY_READ, get_adjustment),
            Operation(
                "One adjustment, with how much of it has been reversed",
                LEDGER_TAG,
                ok=AdjustmentEnvelope,
                ok_description="The adjustment",
                path_params=_ADJUSTMENT_PATH,
                errors={404: "Unknown adjustment"},
            ),
        ),
        Endpoint(
            "POST",
            "/admin/loyalty/adjustments/{adjustment_id}/reverse",
            ctx.guard.claimed(LOYALTY_WRITE, reverse),
            Operation(
                "Reverse an adjustment, in full or in part",
                LEDGER_TAG,
                ok=ReverseResponse,
                ok_description="The reversal and the new balance",
                body=ReverseRequest,
                path_params=_ADJUSTMENT_PATH,
                errors={
                    400: "Invalid input, more than is left, not reversible, or insufficient"
                    " points (not_allowed)",
                    404: "Unknown adjustment",
                    409: "Already reversed in full, or the Idempotency-Key is in flight",
                },
                idempotent=True,
            ),
        ),
        Endpoint(
            "POST",
            "/admin/loyalty/pending",
            ctx.guard.claimed(LOYALTY_WRITE, create_pending),
            Operation(
                "Hold points for a customer until release_at",
                PENDING_TAG,
                ok=PendingEnvelope,
                ok_description="The pending points",
                body=PendingRequest,
                errors={**write_errors, 409: "The reference is already used for this customer"},
                idempotent=True,
            ),
        ),
        Endpoint(
            "GET",
            "/admin/loyalty/pending/{pending_id}",
            ctx.guard.confirmed(LOYALTY_READ, get_pending),
            Operation(
                "Pending points",
                PENDING_TAG,
                ok=PendingEnvelope,
                ok_description="The pending points",
                path_params=_PENDING_PATH,
                errors={404: "Unknown pending points"},
            ),
        ),
        *(
            Endpoint(
                "POST",
                f"/admin/loyalty/pending/{{pending_id}}/{action}",
                ctx.guard.claimed(LOYALTY_WRITE, settle(action == "release")),
                Operation(
                    summary,
                    PENDING_TAG,
                    ok=PendingEnvelope,
                    ok_description="The pending points, now " + status,
                    path_params=_PENDING_PATH,
                    errors={
                        404: "Unknown pending points",
                        409: "Not pending any more, or the Idempotency-Key is in flight",
                    },
                    idempotent=True,
                ),
            )
            for action, status, summary in (
                ("release", "released", "Record pending points in the balance now"),
                ("void", "voided", "Cancel pending points, recording nothing"),
            )
        ),
    ]
