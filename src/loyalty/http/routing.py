"""The route table: every endpoint of the service in one list, from which both the router and
the OpenAPI document (openapi.py) are built, so that neither can have a route the other lacks.

The routing rule: each path is one route that answers every method itself (405 with an Allow
header for those it does not serve), and routes are tried fixed segments first. So a fixed
path always wins over a parameter in the same place, for every method: with
`/admin/loyalty/points/adjust` beside `/admin/loyalty/points/{customer_id}`, a GET of
`.../adjust` is a 405 of the adjust route, never the balance of a customer named "adjust".
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from loyalty.errors import InvariantViolation, MethodNotAllowed
from loyalty.http.responses import PATH_SHOWN_MAX


class Handler(Protocol):
    """What an endpoint runs. `scope` is the scope its caller must hold, None for a public
    route; the document and the router both read it from here."""

    @property
    def scope(self) -> str | None: ...

    async def __call__(self, request: Request) -> Response: ...


@dataclass(frozen=True, slots=True)
class _Public:
    run: Callable[[Request], Awaitable[Response]]
    scope: None = None

    async def __call__(self, request: Request) -> Response:
        return await self.run(request)


def public(run: Callable[[Request], Awaitable[Response]]) -> Handler:
    """A handler anyone may call, without credentials."""
    return _Public(run)


@dataclass(frozen=True, slots=True)
class Operation:
    """What the OpenAPI document says of an endpoint, beyond what the handler tells.

    `body`, `query` and `ok` are msgspec Structs (the request body, the query parameters and
    the 200 response); `path_params` maps each `{name}` of the path to its annotated type;
    `errors` names the statuses particular to this route and what they mean there (400, 401,
    403, 405, 413, 500 and 503 are added where they apply: see openapi.py).
    """

    summary: str
    tag: str
    ok: type | None = None
    ok_description: str = "Success"
    body: type | None = None
    body_max_bytes: int | None = None
    query: type | None = None
    path_params: Mapping[str, Any] = field(default_factory=dict)
    errors: Mapping[int, str] = field(default_factory=dict)
    # Takes an Idempotency-Key (SPEC section 5): documents the header, 409 and 422.
    idempotent: bool = False
    ok_media_types: tuple[str, ...] = ("application/json",)
    # False for routes that answer without the database (no 503).
    uses_database: bool = True


@dataclass(frozen=True, slots=True)
class Endpoint:
    method: str
    path: str
    handler: Handler
    operation: Operation


class PathRoute(Route):
    """One path with its handlers by method. It matches its path whatever the method, so no
    route tried after it can take a request meant for it."""

    def __init__(self, path: str, handlers: Mapping[str, Handler]) -> None:
        self.declared_methods = frozenset(handlers)
        self.handlers = dict(handlers)
        if "GET" in self.handlers:
            self.handlers.setdefault("HEAD", self.handlers["GET"])
        self.allow = ", ".join(sorted(self.handlers))
        super().__init__(path, self._dispatch)
        # Every method matches (Starlette's Route would otherwise let a later route take the
        # methods this one lacks); _dispatch answers those with 405.
        self.methods = None

    async def _dispatch(self, request: Request) -> Response:
        handler = self.handlers.get(request.method)
        if handler is None:
            path = request.url.path[:PATH_SHOWN_MAX]
            raise MethodNotAllowed(
                f"Method {request.method} is not allowed on {path}", allow=self.allow
            )
        return await handler(request)


def build_routes(endpoints: Sequence[Endpoint]) -> list[Route]:
    """One PathRoute per path, fixed segments before parameters (see the module's rule)."""
    by_path: dict[str, dict[str, Handler]] = {}
    for endpoint in endpoints:
        handlers = by_path.setdefault(endpoint.path, {})
        if endpoint.method in handlers:
            raise InvariantViolation(f"{endpoint.method} {endpoint.path} is routed twice")
        handlers[endpoint.method] = endpoint.handler
    return [PathRoute(path, by_path[path]) for path in sorted(by_path, key=specificity)]


def specificity(path: str) -> tuple[tuple[int, str], ...]:
    """Sorts paths so that at the first segment where two differ, a fixed one comes first."""
    return tuple((1 if part.startswith("{") else 0, part) for part in path.split("/"))
