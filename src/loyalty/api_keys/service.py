"""Secret API keys: creation (the token shown once, kept only as a hash), listing and
revocation. Writing calls honour Idempotency-Key in their own transaction."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import msgspec

from loyalty.api_keys import repository, schemas
from loyalty.api_keys.repository import ApiKeyRow
from loyalty.api_keys.schemas import ApiKey, ApiKeyResponse
from loyalty.api_keys.tokens import new_token, redact, token_hash
from loyalty.auth import repository as users
from loyalty.auth.scopes import ALL_SCOPES, format_scopes, parse_scopes
from loyalty.db import Connection, Database
from loyalty.emails import email_key
from loyalty.errors import Conflict, FieldError, LoyaltyError, NotFound, validation_error
from loyalty.idempotency import policy
from loyalty.idempotency.policy import KeyedRequest, Replay
from loyalty.ids import new_id
from loyalty.timestamps import now_ms

_encoder = msgspec.json.Encoder()


@dataclass(frozen=True, slots=True)
class Answer:
    """A writing call's JSON response, and whether it is an Idempotency-Key replay."""

    status: int
    body: bytes
    replayed: bool = False


@dataclass(frozen=True, slots=True)
class Creator:
    """Who a new key acts for, and the scopes it may hold at most."""

    user_id: str
    scopes: frozenset[str]


def _checked_scopes(creator: Creator, scopes: Sequence[str] | None) -> frozenset[str]:
    """The new key's scopes: those asked for, each known and held by the creator; by
    default all the creator's."""
    if scopes is None:
        return creator.scopes
    for scope in scopes:
        if scope not in ALL_SCOPES:
            message = f"unknown scope {scope!r}; valid scopes: {', '.join(ALL_SCOPES)}"
            raise validation_error([FieldError("scopes", message)])
        if scope not in creator.scopes:
            message = f"scope {scope} exceeds the creator's own scopes, which a key cannot"
            raise validation_error([FieldError("scopes", message)])
    return frozenset(scopes)


async def _claim(conn: Connection, keyed: KeyedRequest | None) -> Replay | None:
    """The kept response of an earlier request with this key, or None to go ahead (409 while
    it is in flight, 422 if it was another request)."""
    if keyed is None:
        return None
    decision = (await policy.claim(conn, [keyed]))[0]
    if isinstance(decision, LoyaltyError):
        raise decision
    return decision


async def _remember(conn: Connection, keyed: KeyedRequest | None, body: ApiKey, at_ms: int) -> None:
    # The kept response never holds the token: a replay shows the key without it.
    if keyed is not None:
        kept = _encoder.encode(ApiKeyResponse(body))
        await policy.remember(conn, [(keyed, 200, kept)], at_ms)


async def create_key(
    db: Database,
    creator: Creator,
    title: str,
    scopes: Sequence[str] | None,
    keyed: KeyedRequest | None = None,
) -> Answer:
    key_scopes = _checked_scopes(creator, scopes)
    token = new_token()
    created_ms = now_ms()
    row = ApiKeyRow(
        new_id("apk", created_ms),
        title,
        redact(token),
        format_scopes(key_scopes),
        creator.user_id,
        created_ms,
        None,
        None,
    )
    async with db.write() as conn:
        replay = await _claim(conn, keyed)
        if replay is not None:
            return Answer(replay.status, replay.body, replayed=True)
        await repository.insert_key(conn, row, token_hash(token))
        await _remember(conn, keyed, schemas.api_key(row), created_ms)
    return Answer(200, _encoder.encode(ApiKeyResponse(schemas.api_key(row, token))))


async def create_key_for_email(
    db: Database, email: str, title: str, scopes: Sequence[str] | None
) -> str:
    """A new key for the user with this email (the CLI's path); returns its token."""
    async with db.read() as conn:
        user = await users.find_user_by_email_key(conn, email_key(email))
    if user is None:
        raise NotFound(f"no user with email {email}")
    if user.disabled_at_ms is not None:
        raise Conflict(f"the user with email {email} is disabled")
    answer = await create_key(db, Creator(user.id, parse_scopes(user.scopes)), title, scopes)
    token: str = msgspec.json.decode(answer.body)["api_key"]["token"]
    return token


async def revoke_key(db: Database, key_id: str, keyed: KeyedRequest | None = None) -> Answer:
    """Revokes the key (404 unknown, 409 already revoked); from this commit on, every
    worker and server refuses it."""
    revoked_ms = now_ms()
    async with db.write() as conn:
        replay = await _claim(conn, keyed)
        if replay is not None:
            return Answer(replay.status, replay.body, replayed=True)
        row = await repository.find_key(conn, key_id)
        if row is None:
            raise NotFound(f"API key with id: {key_id} was not found")
        if row.revoked_at_ms is not None or not await repository.revoke_key(
            conn, key_id, revoked_ms
        ):
            raise Conflict(f"API key {key_id} is already revoked")
        body = schemas.api_key(row._replace(revoked_at_ms=revoked_ms))
        await _remember(conn, keyed, body, revoked_ms)
    return Answer(200, _encoder.encode(ApiKeyResponse(body)))


async def list_keys(db: Database, limit: int, offset: int) -> tuple[list[ApiKey], int]:
    async with db.read(snapshot=True) as conn:
        rows = await repository.list_keys(conn, limit, offset)
        count = await repository.count_keys(conn)
    return [schemas.api_key(row) for row in rows], count
