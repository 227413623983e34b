"""/admin/customers: create, list, get."""

from __future__ import annotations

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from loyalty.auth.guard import Caller
from loyalty.auth.scopes import CUSTOMERS_READ, CUSTOMERS_WRITE
from loyalty.context import AppContext
from loyalty.customers import service
from loyalty.customers.schemas import (
    CREATE_FIELDS,
    CUSTOMER_ID_MAX,
    QUERY_MAX,
    CustomerCreate,
    CustomerIdPath,
    CustomerPage,
    CustomerQuery,
    CustomerResponse,
)
from loyalty.errors import FieldError, InvalidData
from loyalty.http.body import decode_field, parse_json_object, read_body
from loyalty.http.params import parse_page, path_param, query_params
from loyalty.http.responses import json_response
from loyalty.http.routing import Endpoint, Operation

TAG = "Customers"


def endpoints(ctx: AppContext) -> list[Endpoint]:
    async def create(request: Request, caller: Caller) -> Response:
        fields = parse_json_object(request, await read_body(request), CREATE_FIELDS)
        values: dict[str, object] = {}
        for name, raw in fields.items():
            try:
                # metadata is checked from its raw JSON by the shared metadata rules.
                values[name] = raw if name == "metadata" else decode_field(raw, object)
            except msgspec.ValidationError:
                # A number beyond a double's range: left raw, which no rule accepts, so the
                # field's own rule says what it must be.
                values[name] = raw
        customer = await service.create_customer(ctx.db, service.NewCustomer(**values))
        return json_response(CustomerResponse(customer))

    async def list_(request: Request, caller: Caller) -> Response:
        params = query_params(request, CustomerQuery)
        limit, offset = parse_page(params)
        query = params.get("q")
        if query is not None and len(query) > QUERY_MAX:
            message = f"q must be at most {QUERY_MAX} characters"
            raise InvalidData(message, [FieldError("q", message)])
        customers, count = await service.list_customers(ctx.db, query, limit, offset)
        return json_response(CustomerPage(customers, count, offset, limit))

    async def get(request: Request, caller: Caller) -> Response:
        query_params(request)
        customer_id = path_param(request, "customer_id", CUSTOMER_ID_MAX)
        customer = await service.get_customer(ctx.db, customer_id)
        return json_response(CustomerResponse(customer))

    return [
        Endpoint(
            "POST",
            "/admin/customers",
            ctx.guard.confirmed(CUSTOMERS_WRITE, create),
            Operation(
                "Create a customer",
                TAG,
                ok=CustomerResponse,
                ok_description="The new customer",
                body=CustomerCreate,
                errors={409: "A customer with this email or id exists"},
            ),
        ),
        Endpoint(
            "GET",
            "/admin/customers",
            ctx.guard.confirmed(CUSTOMERS_READ, list_),
            Operation(
                "List customers",
                TAG,
                ok=CustomerPage,
                ok_description="A page of customers",
                query=CustomerQuery,
            ),
        ),
        Endpoint(
            "GET",
            "/admin/customers/{customer_id}",
            ctx.guard.confirmed(CUSTOMERS_READ, get),
            Operation(
                "Get a customer",
                TAG,
                ok=CustomerResponse,
                ok_description="The customer",
                path_params={"customer_id": CustomerIdPath},
                errors={404: "Unknown customer"},
            ),
        ),
    ]
