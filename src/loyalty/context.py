"""What every route needs: the settings, the database and the token secret of this process."""

from __future__ import annotations

from dataclasses import dataclass

from starlette.requests import Request

from loyalty.auth import service as auth
from loyalty.config import Settings
from loyalty.db import Database
from loyalty.ledger.service import Ledger
from loyalty.request_log import note_user


@dataclass(slots=True)
class AppContext:
    settings: Settings
    # Both set by the app's lifespan, before the first request.
    db: Database = None  # type: ignore[assignment]
    ledger: Ledger = None  # type: ignore[assignment]
    jwt_secret: str = ""

    async def principal(self, request: Request, scope: str) -> auth.Principal:
        """The authenticated user of the request, who must hold `scope` (else 401 / 403)."""
        principal = await auth.authenticate(
            self.db, self.jwt_secret, request.headers.get("authorization")
        )
        note_user(request.scope, principal.user_id)
        principal.require(scope)
        return principal

    def claimed_principal(self, request: Request, scope: str) -> auth.Principal:
        """The token's user and scopes without a database lookup (401 / 403); for routes that
        confirm the user inside their own transaction."""
        principal = auth.principal_from_token(self.jwt_secret, request.headers.get("authorization"))
        note_user(request.scope, principal.user_id)
        principal.require(scope)
        return principal
