"""/admin/customers: create, list, get."""

from __future__ import annotations

import msgspec
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from loyalty.auth.scopes import CUSTOMERS_READ, CUSTOMERS_WRITE
from loyalty.context import AppContext
from loyalty.customers import service
from loyalty.errors import FieldError, InvalidData
from loyalty.http import (
    decode_field,
    json_response,
    parse_page,
    path_param,
    query_params,
    read_json_object,
)

_CREATE_FIELDS = frozenset({"email", "first_name", "last_name", "id"})
_LIST_PARAMS = frozenset({"q", "limit", "offset"})


def routes(ctx: AppContext) -> list[Route]:
    async def create(request: Request) -> Response:
        await ctx.principal(request, CUSTOMERS_WRITE)
        fields = await read_json_object(request, _CREATE_FIELDS)
        values = {}
        for name, raw in fields.items():
            try:
                values[name] = decode_field(raw, object)
            except msgspec.ValidationError:
                message = f"{name} is not valid"
                raise InvalidData(message, [FieldError(name, message)]) from None
        customer = await service.create_customer(ctx.db, service.NewCustomer(**values))
        return json_response({"customer": customer})

    async def list_(request: Request) -> Response:
        await ctx.principal(request, CUSTOMERS_READ)
        params = query_params(request, _LIST_PARAMS)
        limit, offset = parse_page(params)
        query = params.get("q")
        if query is not None and len(query) > service.QUERY_MAX:
            message = f"q must be at most {service.QUERY_MAX} characters"
            raise InvalidData(message, [FieldError("q", message)])
        customers, count = await service.list_customers(ctx.db, query, limit, offset)
        return json_response(
            {"customers": customers, "count": count, "offset": offset, "limit": limit}
        )

    async def get(request: Request) -> Response:
        await ctx.principal(request, CUSTOMERS_READ)
        query_params(request, frozenset())
        customer_id = path_param(request, "customer_id", service.CUSTOMER_ID_MAX)
        customer = await service.get_customer(ctx.db, customer_id)
        return json_response({"customer": customer})

    async def collection(request: Request) -> Response:
        # One route for the path, so that a 405 lists every allowed method.
        return await (create(request) if request.method == "POST" else list_(request))

    return [
        Route("/admin/customers", collection, methods=["GET", "POST"]),
        Route("/admin/customers/{customer_id}", get, methods=["GET"]),
    ]
