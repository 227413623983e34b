"""Who is calling, and may they do it: the one place that answers both, for every route.

A request's credentials (today an admin user's Bearer JWT; secret API keys next) name an
actor and the scopes it was given. There are two levels of trust, as two types:

- `TokenClaim`: the credentials checked on their own (signature, expiry, scopes they carry),
  without the database. A route that acts inside a transaction of its own (the batched
  adjust and balance read) takes a claim and confirms it there with `confirm`, so one query
  serves a whole batch.
- `Caller`: confirmed against the database before the route runs: the actor exists, is
  enabled and holds the scope now.

Either way the actor is confirmed before anything is read or written for it, so a deleted,
disabled or narrowed user is refused at once; and a scope missing from the credentials is
refused before the request's input is even read.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from starlette.requests import Request
from starlette.responses import Response

from loyalty.auth import repository
from loyalty.auth.scopes import parse_scopes
from loyalty.auth.tokens import bearer_token, verify_token
from loyalty.db import Connection, Database
from loyalty.errors import Forbidden, LoyaltyError, Unauthorized
from loyalty.http.access_log import note_user
from loyalty.http.routing import Handler


@dataclass(frozen=True, slots=True)
class TokenClaim:
    """Who valid credentials say the caller is, not yet confirmed against the database."""

    actor_id: str
    scopes: frozenset[str]


@dataclass(frozen=True, slots=True)
class Caller:
    """An actor confirmed against the database: it exists, is enabled, holds these scopes."""

    actor_id: str
    scopes: frozenset[str]


def missing_scope(scopes: frozenset[str], scope: str) -> Forbidden | None:
    return None if scope in scopes else Forbidden(f"Missing required scope: {scope}")


def refusal(stored_scopes: str | None, scope: str) -> LoyaltyError | None:
    """Why an actor whose stored scopes are `stored_scopes` (None: no such enabled actor)
    may not act with `scope`; None when it may."""
    if stored_scopes is None:
        return Unauthorized()
    return missing_scope(parse_scopes(stored_scopes), scope)


async def confirm(
    conn: Connection, claims: Sequence[TokenClaim], scope: str
) -> dict[str, LoyaltyError | None]:
    """For each claimed actor, why it may not act with `scope` now (None: it may)."""
    actor_ids = sorted({claim.actor_id for claim in claims})
    stored = await repository.find_users_scopes(conn, actor_ids)
    return {actor_id: refusal(stored.get(actor_id), scope) for actor_id in actor_ids}


@dataclass(frozen=True, slots=True)
class _Guarded:
    scope: str
    run: Callable[[Request], Awaitable[Response]]

    async def __call__(self, request: Request) -> Response:
        return await self.run(request)


class Guard:
    """Checks the credentials of each request; opened with the database and the token
    secret when the worker starts."""

    def __init__(self) -> None:
        self._db: Database | None = None
        self._secret = ""

    def open(self, db: Database, secret: str) -> None:
        self._db = db
        self._secret = secret

    @property
    def secret(self) -> str:
        """The HS256 secret that signs this service's tokens."""
        return self._secret

    def claim(self, request: Request, scope: str) -> TokenClaim:
        """The request's credentials, checked without the database (401), holding `scope`
        (403). The caller must `confirm` the claim in its own transaction."""
        claim = self._verified(request)
        problem = missing_scope(claim.scopes, scope)
        if problem is not None:
            raise problem
        return claim

    async def caller(self, request: Request, scope: str) -> Caller:
        """The request's actor, confirmed against the database, holding `scope` now (the
        scopes stored today decide, not those the token was issued with)."""
        claim = self._verified(request)
        if self._db is None:
            raise RuntimeError("the guard was used before the worker opened it")
        async with self._db.read() as conn:
            stored = await repository.find_user_scopes(conn, claim.actor_id)
        problem = refusal(stored, scope)
        if problem is not None or stored is None:
            raise problem or Unauthorized()
        return Caller(claim.actor_id, parse_scopes(stored))

    def _verified(self, request: Request) -> TokenClaim:
        authorization = request.headers.get("authorization")
        actor_id, scopes = verify_token(self._secret, bearer_token(authorization))
        note_user(request.scope, actor_id)
        return TokenClaim(actor_id, scopes)

    def claimed(
        self, scope: str, run: Callable[[Request, TokenClaim], Awaitable[Response]]
    ) -> Handler:
        """A handler whose caller is claimed here and confirmed in the handler's own
        transaction."""

        async def guarded(request: Request) -> Response:
            return await run(request, self.claim(request, scope))

        return _Guarded(scope, guarded)

    def confirmed(
        self, scope: str, run: Callable[[Request, Caller], Awaitable[Response]]
    ) -> Handler:
        """A handler whose caller is confirmed against the database before it runs."""

        async def guarded(request: Request) -> Response:
            return await run(request, await self.caller(request, scope))

        return _Guarded(scope, guarded)
