"""Which key a token is: the per-worker memory of tokens already found in the database.

A key's id and scopes never change after its creation, so a remembered token never goes
stale; whether the key may act *now* (not revoked, its creator enabled, holding the scope) is
asked of the database on every request by the guard's confirmation, so revocation still
takes effect at once in every worker and server. Only keys that exist are remembered.
"""

from __future__ import annotations

from loyalty.api_keys import repository
from loyalty.api_keys.tokens import is_well_formed, token_hash
from loyalty.auth.scopes import parse_scopes
from loyalty.db import Database
from loyalty.errors import Unauthorized

KNOWN_TOKENS_MAX = 4096
MALFORMED_KEY = "The API key is malformed: wrong length, characters or checksum"
UNKNOWN_KEY = "The API key is not known"


class KnownKeys:
    def __init__(self) -> None:
        self._known: dict[str, tuple[str, frozenset[str]]] = {}

    async def identify(self, db: Database, token: str) -> tuple[str, frozenset[str]]:
        """The id and scopes of the key `token` is; 401 for a malformed token (without the
        database) or an unknown one."""
        known = self._known.get(token)
        if known is not None:
            return known
        if not is_well_formed(token):
            raise Unauthorized(MALFORMED_KEY)
        async with db.read() as conn:
            found = await repository.find_by_token_hash(conn, token_hash(token))
        if found is None:
            raise Unauthorized(UNKNOWN_KEY)
        if len(self._known) >= KNOWN_TOKENS_MAX:
            del self._known[next(iter(self._known))]  # the longest remembered
        key = (found[0], parse_scopes(found[1]))
        self._known[token] = key
        return key
