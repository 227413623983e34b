"""JWTs: HS256 only, signed with the service's secret, carrying the user id."""

from __future__ import annotations

import base64
import binascii
import time
from functools import lru_cache

import jwt

from loyalty.api_keys.tokens import KEY_PREFIX
from loyalty.errors import Unauthorized

ALGORITHM = "HS256"
TOKEN_MAX = 4096
TOKEN_CACHE_MAX = 4096


def issue_token(secret: str, user_id: str, scopes: frozenset[str], ttl_seconds: int) -> str:
    now = int(time.time())
    claims = {
        "sub": user_id,
        "scopes": sorted(scopes),
        "iat": now,
        "exp": now + ttl_seconds,
    }
    return jwt.encode(claims, secret, algorithm=ALGORITHM)


def bearer_token(authorization: str | None) -> str:
    """The token of an `Authorization: Bearer <token>` header, or 401."""
    if not authorization or len(authorization) > TOKEN_MAX:
        raise Unauthorized()
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized()
    return token.strip()


BASIC_EMPTY = 'The Basic credentials are empty: send base64 of "sk_…:" or ":sk_…"'
BASIC_NOT_BASE64 = "The Basic credentials are not valid base64 of UTF-8 text"
BASIC_NO_COLON = 'The Basic credentials must be "sk_…:" or ":sk_…" (no colon found)'
BASIC_BOTH = (
    "The Basic credentials must carry the API key as the username or the password, not both"
)
BASIC_NOT_A_KEY = (
    "Basic authentication takes a secret API key (sk_…); send a user's token as Bearer"
)


def read_credentials(authorization: str | None) -> str:
    """The token of an Authorization header: a JWT or a secret key as `Bearer <token>`, or a
    secret key as `Basic base64("sk_…:")` or `Basic base64(":sk_…")` (Medusa's forms); 401
    otherwise, saying what is wrong with a Basic one."""
    if (
        authorization is not None
        and authorization[:5].lower() == "basic"
        and authorization[5:6] in ("", " ")
    ):
        return basic_key(authorization)
    return bearer_token(authorization)


def basic_key(authorization: str) -> str:
    if len(authorization) > TOKEN_MAX:
        raise Unauthorized()
    encoded = authorization[6:].strip()
    if not encoded:
        raise Unauthorized(BASIC_EMPTY)
    try:
        decoded = base64.b64decode(encoded, validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        raise Unauthorized(BASIC_NOT_BASE64) from None
    if ":" not in decoded:
        raise Unauthorized(BASIC_NO_COLON)
    username, _, password = decoded.partition(":")
    if username and password:
        raise Unauthorized(BASIC_BOTH)
    key = username or password
    if not key:
        raise Unauthorized(BASIC_EMPTY)
    if not key.startswith(KEY_PREFIX):
        raise Unauthorized(BASIC_NOT_A_KEY)
    return key


def verify_token(secret: str, token: str) -> tuple[str, frozenset[str]]:
    """The user id a valid token was issued to and the scopes it was issued with; 401 for
    anything forged, expired or odd."""
    user_id, scopes, expires_at = _verified(secret, token)
    if time.time() >= expires_at:
        raise Unauthorized()
    return user_id, scopes


# Integrations send the same token with every request, and checking a signature costs more
# than the rest of an adjustment's Python work. A token is cached only once its signature and
# claims were verified, keyed by its whole text (signature included), and its expiry is still
# checked on every use above.
@lru_cache(maxsize=TOKEN_CACHE_MAX)
def _verified(secret: str, token: str) -> tuple[str, frozenset[str], int]:
    try:
        claims = jwt.decode(
            token,
            secret,
            algorithms=[ALGORITHM],
            options={"require": ["sub", "exp", "iat"]},
        )
    except jwt.PyJWTError:
        raise Unauthorized() from None
    subject = claims.get("sub")
    scopes = claims.get("scopes", [])
    expires_at = claims.get("exp")
    if not isinstance(subject, str) or not subject or not isinstance(scopes, list):
        raise Unauthorized()
    if not isinstance(expires_at, int):
        raise Unauthorized()
    return subject, frozenset(s for s in scopes if isinstance(s, str)), expires_at
