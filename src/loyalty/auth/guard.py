"""Who is calling, and may they do it: the one place that answers both, for every route.

A request's credentials (an admin user's Bearer JWT, or a secret API key as Bearer or Basic)
name an actor (a `user_…` or an `apk_…` id) and the scopes it was given. There are two levels
of trust, as two types:

- `TokenClaim`: the credentials checked on their own (signature, expiry, scopes they carry),
  without the database. A route that acts inside a transaction of its own (the batched
  adjust and balance read) takes a claim and confirms it there with `confirm`, so one query
  serves a whole batch.
- `Caller`: confirmed against the database before the route runs: the actor exists, is
  enabled and holds the scope now.

Either way the actor is confirmed before anything is read or written for it, so a deleted,
disabled or narrowed user is refused at once; and a scope missing from the credentials is
refused before the request's input is even read. A key is confirmed the same way: it acts
only while it is not revoked and its creator exists and is enabled, with the scopes both
hold now (the key's own, narrowed by its creator's).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from starlette.requests import Request
from starlette.responses import Response

from loyalty.api_keys import repository as key_repository
from loyalty.api_keys.known import KnownKeys
from loyalty.api_keys.tokens import KEY_PREFIX
from loyalty.api_keys.usage import KeyUses
from loyalty.auth import repository
from loyalty.auth.scopes import parse_scopes
from loyalty.auth.tokens import read_credentials, verify_token
from loyalty.db import Connection, Database
from loyalty.errors import Forbidden, LoyaltyError, Unauthorized
from loyalty.http.access_log import note_user
from loyalty.http.routing import Handler
from loyalty.timestamps import now_ms

KEY_ID_PREFIX = "apk_"
# The scope of a route that any confirmed caller may use (who am I, refresh my token).
ANY_SCOPE = ""
REVOKED_KEY = "The API key was revoked"
CREATOR_GONE = "The API key's creator was deleted or disabled"
UNKNOWN_KEY_ID = "The API key no longer exists"


@dataclass(frozen=True, slots=True)
class TokenClaim:
    """Who valid credentials say the caller is, not yet confirmed against the database."""

    actor_id: str
    scopes: frozenset[str]


@dataclass(frozen=True, slots=True)
class Caller:
    """An actor confirmed against the database: it exists, is enabled, holds these scopes.
    `user_id` is the user it acts for: the actor itself, or a key's creator."""

    actor_id: str
    scopes: frozenset[str]
    user_id: str

    def refusal(self, scope: str) -> Forbidden | None:
        """Why it may not act with `scope` (None: it may)."""
        return None if scope == ANY_SCOPE else missing_scope(self.scopes, scope)


def is_key(actor_id: str) -> bool:
    return actor_id.startswith(KEY_ID_PREFIX)


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
    user_ids = [actor_id for actor_id in actor_ids if not is_key(actor_id)]
    refusals: dict[str, LoyaltyError | None] = {}
    if user_ids:
        stored = await repository.find_users_scopes(conn, user_ids)
        refusals = {user_id: refusal(stored.get(user_id), scope) for user_id in user_ids}
    if len(user_ids) < len(actor_ids):
        keys = await keys_now(conn, [actor_id for actor_id in actor_ids if is_key(actor_id)])
        for key_id, key in keys.items():
            refusals[key_id] = key if isinstance(key, LoyaltyError) else key.refusal(scope)
    return refusals


async def keys_now(conn: Connection, key_ids: list[str]) -> dict[str, Caller | LoyaltyError]:
    """Each key as a caller now (scopes: its own that its creator still holds), or why it
    may not act at all (401)."""
    standings = await key_repository.find_standings(conn, key_ids)
    keys: dict[str, Caller | LoyaltyError] = {}
    for key_id in key_ids:
        standing = standings.get(key_id)
        if standing is None:
            keys[key_id] = Unauthorized(UNKNOWN_KEY_ID)
        elif standing.revoked_at_ms is not None:
            keys[key_id] = Unauthorized(REVOKED_KEY)
        elif standing.creator_scopes is None:
            keys[key_id] = Unauthorized(CREATOR_GONE)
        else:
            scopes = parse_scopes(standing.scopes) & parse_scopes(standing.creator_scopes)
            keys[key_id] = Caller(key_id, scopes, standing.created_by)
    return keys


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
        self._keys = KnownKeys()
        # The keys' uses seen by this worker, written by a background task (app.py).
        self.key_uses = KeyUses()

    def open(self, db: Database, secret: str) -> None:
        self._db = db
        self._secret = secret

    @property
    def secret(self) -> str:
        """The HS256 secret that signs this service's tokens."""
        return self._secret

    @property
    def db(self) -> Database:
        if self._db is None:
            raise RuntimeError("the guard was used before the worker opened it")
        return self._db

    async def claim(self, request: Request, scope: str) -> TokenClaim:
        """The request's credentials, checked without the database (401), holding `scope`
        (403). The caller must `confirm` the claim in its own transaction. (A secret key is
        looked up once per worker: its id and scopes never change.)"""
        claim = await self._verified(request)
        problem = missing_scope(claim.scopes, scope)
        if problem is not None:
            raise problem
        return claim

    async def caller(self, request: Request, scope: str) -> Caller:
        """The request's actor, confirmed against the database, holding `scope` now (the
        scopes stored today decide, not those the token was issued with). ANY_SCOPE: any
        confirmed actor."""
        claim = await self._verified(request)
        async with self.db.read() as conn:
            if is_key(claim.actor_id):
                found = (await keys_now(conn, [claim.actor_id]))[claim.actor_id]
            else:
                stored = await repository.find_user_scopes(conn, claim.actor_id)
                found = (
                    Unauthorized()
                    if stored is None
                    else Caller(claim.actor_id, parse_scopes(stored), claim.actor_id)
                )
        if isinstance(found, LoyaltyError):
            raise found
        problem = found.refusal(scope)
        if problem is not None:
            raise problem
        return found

    async def _verified(self, request: Request) -> TokenClaim:
        token = read_credentials(request.headers.get("authorization"))
        if token.startswith(KEY_PREFIX):
            actor_id, scopes = await self._keys.identify(self.db, token)
            self.key_uses.note(actor_id, now_ms())
        else:
            actor_id, scopes = verify_token(self._secret, token)
        note_user(request.scope, actor_id)
        return TokenClaim(actor_id, scopes)

    def claimed(
        self, scope: str, run: Callable[[Request, TokenClaim], Awaitable[Response]]
    ) -> Handler:
        """A handler whose caller is claimed here and confirmed in the handler's own
        transaction."""

        async def guarded(request: Request) -> Response:
            return await run(request, await self.claim(request, scope))

        return _Guarded(scope, guarded)

    def confirmed(
        self, scope: str, run: Callable[[Request, Caller], Awaitable[Response]]
    ) -> Handler:
        """A handler whose caller is confirmed against the database before it runs."""

        async def guarded(request: Request) -> Response:
            return await run(request, await self.caller(request, scope))

        return _Guarded(scope, guarded)
