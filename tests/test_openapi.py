"""The OpenAPI document and the router describe the same service: every routed operation is
documented and every documented one routed, limits in the document are the ones the code
enforces, and a fixed path always wins over a path parameter in the same place."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from loyalty.app import create_app
from loyalty.auth.passwords import PASSWORD_MAX
from loyalty.config import Settings
from loyalty.emails import EMAIL_MAX
from loyalty.errors import LoyaltyError
from loyalty.http.body import BODY_MAX_BYTES
from loyalty.http.params import PAGE_LIMIT_MAX
from loyalty.http.responses import error_response
from loyalty.http.routing import Endpoint, Operation, build_routes, public
from loyalty.ledger.points import DELTA_MAX_HUNDREDTHS, HUNDREDTHS_PER_POINT
from loyalty.ledger.schemas import CUSTOMER_ID_MAX, REASON_MAX
from tests.support import Backend, routed_operations

METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]


def documented_operations(document: dict[str, Any]) -> set[str]:
    return {
        f"{method.upper()} {path}"
        for path, item in document["paths"].items()
        for method in item
        if method.upper() in METHODS
    }


@pytest.fixture(scope="module")
def document(backend: Backend) -> dict[str, Any]:
    """The document as the live server serves it."""
    response = httpx.get(f"{backend.server.base_url}/openapi.json", timeout=30)
    assert response.status_code == 200
    served: dict[str, Any] = response.json()
    return served


def test_the_document_lists_exactly_the_routed_operations(document: dict[str, Any]) -> None:
    """Every METHOD /path the router answers is in the served document, and nothing else."""
    assert documented_operations(document) == routed_operations()


def test_a_route_added_outside_the_table_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    """The comparison above fails for a route added to the router but not the document."""
    real = create_app

    def with_stray_route(settings: Settings | None = None) -> Starlette:
        app = real(settings)

        async def stray(request: Request) -> Response:
            return PlainTextResponse("")

        app.router.routes.append(Route("/admin/stray", stray, methods=["GET"]))
        return app

    monkeypatch.setattr("loyalty.app.create_app", with_stray_route)
    operations = routed_operations()
    assert "GET /admin/stray" in operations
    app = real(Settings(database_url="sqlite:///unused.db"))
    from loyalty.http import openapi

    assert "GET /admin/stray" not in documented_operations(openapi.document(app.state.route_table))


def _schemas(document: dict[str, Any]) -> dict[str, Any]:
    schemas: dict[str, Any] = document["components"]["schemas"]
    return schemas


def _optional(schema: dict[str, Any]) -> dict[str, Any]:
    """The non-null branch of an optional field's schema."""
    for option in schema.get("anyOf", [schema]):
        if option.get("type") != "null":
            return dict(option)
    raise AssertionError(schema)


def test_limits_come_from_the_code(document: dict[str, Any]) -> None:
    """Each limit the document states is the constant the service enforces."""
    schemas = _schemas(document)
    adjust = schemas["AdjustRequest"]["properties"]
    delta_max = DELTA_MAX_HUNDREDTHS // HUNDREDTHS_PER_POINT
    assert (adjust["delta"]["minimum"], adjust["delta"]["maximum"]) == (-delta_max, delta_max)
    assert "multipleOf" not in adjust["delta"]  # 0.01 is not exact in binary floating point
    assert adjust["customer_id"]["maxLength"] == CUSTOMER_ID_MAX
    assert _optional(adjust["reason"])["maxLength"] == REASON_MAX
    credentials = schemas["Credentials"]["properties"]
    assert (credentials["email"]["minLength"], credentials["email"]["maxLength"]) == (
        1,
        EMAIL_MAX,
    )
    assert (credentials["password"]["minLength"], credentials["password"]["maxLength"]) == (
        1,
        PASSWORD_MAX,
    )
    history = document["paths"]["/admin/loyalty/points/{customer_id}/history"]["get"]
    limit = next(p for p in history["parameters"] if p["name"] == "limit")
    assert limit["schema"]["maximum"] == PAGE_LIMIT_MAX
    too_large = document["paths"]["/admin/customers"]["post"]["responses"]["413"]
    assert str(BODY_MAX_BYTES) in too_large["description"]


def test_the_document_is_as_strict_as_the_service(document: dict[str, Any]) -> None:
    """A customer's `id` may be null, `include_history` is a boolean, and every operation
    declares its 405."""
    create = _schemas(document)["CustomerCreate"]["properties"]
    assert {"type": "null"} in create["id"]["anyOf"]
    adjust = document["paths"]["/admin/loyalty/points/adjust"]["post"]
    include_history = next(p for p in adjust["parameters"] if p["name"] == "include_history")
    assert include_history["schema"]["type"] == "boolean"
    for path, item in document["paths"].items():
        for method, operation in item.items():
            assert "405" in operation["responses"], f"{method} {path}"


class Synthetic:
    """Requests to an in-process app, through httpx's ASGI transport."""

    def __init__(self, app: Starlette) -> None:
        self._app = app

    def request(self, method: str, path: str) -> httpx.Response:
        async def send() -> httpx.Response:
            transport = httpx.ASGITransport(app=self._app)
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
                return await client.request(method, path)

        return asyncio.run(send())

    def get(self, path: str) -> httpx.Response:
        return self.request("GET", path)


@pytest.fixture(scope="module")
def synthetic() -> Synthetic:
    """A router built from a table where fixed paths and parameters sit side by side, each
    route answering with its own name."""

    def answering(name: str) -> Any:
        async def run(request: Request) -> Response:
            return PlainTextResponse(name)

        return public(run)

    table = [
        Endpoint("GET", "/things/{thing_id}", answering("thing"), Operation("", "")),
        Endpoint("POST", "/things/bulk", answering("bulk"), Operation("", "")),
        Endpoint("GET", "/things/{thing_id}/parts", answering("parts"), Operation("", "")),
        Endpoint("POST", "/things/bulk/parts", answering("bulk-parts"), Operation("", "")),
        Endpoint("GET", "/{anything}/bulk", answering("anything"), Operation("", "")),
    ]

    async def on_error(request: Request, error: Exception) -> Response:
        assert isinstance(error, LoyaltyError)
        return error_response(error)

    app = Starlette(
        routes=build_routes(list(reversed(table))), exception_handlers={LoyaltyError: on_error}
    )
    return Synthetic(app)


@pytest.mark.parametrize("method", METHODS)
def test_a_fixed_path_wins_over_a_parameter_for_every_method(
    synthetic: Synthetic, method: str
) -> None:
    """Whatever order the table lists them in, a fixed segment is tried before a parameter,
    for every method: the fixed route answers, or refuses the method itself with 405."""
    for path, fixed, allowed in (
        ("/things/bulk", "bulk", "POST"),
        ("/things/bulk/parts", "bulk-parts", "POST"),
    ):
        response = synthetic.request(method, path)
        if method in allowed:
            assert response.text == fixed
        else:
            assert response.status_code == 405, (method, path, response.text)
            assert response.headers["allow"] == allowed
    assert synthetic.get("/things/t1").text == "thing"
    assert synthetic.get("/things/t1/parts").text == "parts"


@pytest.mark.parametrize("method", METHODS)
def test_adjust_is_never_read_as_a_customer_id(api: httpx.Client, method: str) -> None:
    """On the service itself: any method but POST on .../points/adjust is the adjust route's
    405, never a balance, history or 404 of a customer named "adjust"."""
    if method == "POST":
        pytest.skip("the adjust route's own method")
    response = api.request(method, "/admin/loyalty/points/adjust")
    assert response.status_code == 405, response.text
    assert response.headers["allow"] == "POST"
