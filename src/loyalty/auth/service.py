"""Admin users, logins and the authentication of every admin request."""

from __future__ import annotations

import secrets
from contextlib import suppress
from dataclasses import dataclass

from loyalty.api_keys import repository as api_key_repository
from loyalty.auth import rate_limit, repository
from loyalty.auth.passwords import (
    PASSWORD_MAX,
    PASSWORD_MIN,
    hash_password,
    verify_password_off_loop,
)
from loyalty.auth.rate_limit import LoginLimits
from loyalty.auth.repository import UserRow
from loyalty.auth.scopes import ALL_SCOPES, format_scopes, parse_scopes
from loyalty.auth.tokens import issue_token
from loyalty.config import Settings
from loyalty.db import Database, RetryableConflict, UniqueViolation
from loyalty.emails import email_key, is_valid_email
from loyalty.errors import Conflict, FieldError, InvalidData, Unauthorized
from loyalty.ids import new_id
from loyalty.timestamps import now_ms

JWT_SECRET_KEY = "jwt_secret"  # noqa: S105 - the name of a setting, not a secret
NAME_MAX = 255
DEFAULT_ADMIN_EMAIL = "admin@localhost"
INVALID_LOGIN = "Invalid email or password"
# The login's first transaction may lose a race with the throttle's cleanup; it is rerun.
LOGIN_ATTEMPTS_MAX = 3


@dataclass(frozen=True, slots=True)
class User:
    id: str
    email: str
    first_name: str | None
    last_name: str | None
    scopes: frozenset[str]


async def create_user(
    db: Database,
    email: str,
    password: str,
    scopes: tuple[str, ...] = ALL_SCOPES,
    first_name: str | None = None,
    last_name: str | None = None,
) -> User:
    errors = []
    if not is_valid_email(email):
        errors.append(FieldError("email", "email must be a valid email address"))
    if not PASSWORD_MIN <= len(password) <= PASSWORD_MAX:
        message = f"password must be {PASSWORD_MIN} to {PASSWORD_MAX} characters long"
        errors.append(FieldError("password", message))
    unknown = sorted(set(scopes) - set(ALL_SCOPES))
    if unknown:
        message = f"unknown scope {unknown[0]!r}; valid scopes: {', '.join(ALL_SCOPES)}"
        errors.append(FieldError("scope", message))
    for field, name in (("first_name", first_name), ("last_name", last_name)):
        if name is not None and len(name) > NAME_MAX:
            errors.append(FieldError(field, f"{field} must be at most {NAME_MAX} characters"))
    if errors:
        raise InvalidData(errors[0].message, errors)
    user = User(new_id("user", now_ms()), email, first_name, last_name, frozenset(scopes))
    password_hash = hash_password(password)
    try:
        async with db.write() as conn:
            await repository.insert_user(
                conn,
                user.id,
                email,
                email_key(email),
                password_hash,
                first_name,
                last_name,
                format_scopes(user.scopes),
                now_ms(),
            )
    except UniqueViolation:
        raise Conflict(f"A user with email {email} already exists") from None
    return user


async def delete_user(db: Database, email: str) -> str | None:
    """Deletes the user with that email and revokes its API keys, in one transaction;
    returns its id, None if there is none."""
    async with db.write() as conn:
        user_id = await repository.delete_user_by_email_key(conn, email_key(email))
        if user_id is not None:
            await api_key_repository.revoke_keys_of(conn, user_id, now_ms())
        return user_id


async def get_user(db: Database, user_id: str) -> User:
    """The user as the token route shows it; 401 if it was deleted or disabled meanwhile."""
    async with db.read() as conn:
        row = await repository.find_user(conn, user_id)
    if row is None or row.disabled_at_ms is not None:
        raise Unauthorized()
    return User(row.id, row.email, row.first_name, row.last_name, parse_scopes(row.scopes))


async def set_user_disabled(db: Database, email: str, disabled: bool) -> str | None:
    """Disables or enables the user with that email; returns its id, None if there is none.

    A disabled user cannot log in, and its tokens and API keys are refused from the next
    request on (the keys work again once it is enabled).
    """
    async with db.write() as conn:
        if disabled:
            return await repository.disable_user_by_email_key(conn, email_key(email), now_ms())
        return await repository.enable_user_by_email_key(conn, email_key(email), now_ms())


async def login(
    db: Database,
    secret: str,
    ttl_seconds: int,
    email: str,
    password: str,
    limits: LoginLimits,
    client: str | None,
) -> tuple[str, User]:
    """A fresh token for the user; 401 with one message whether the email is unknown, the
    password wrong or the user disabled, each at the cost of one password verification;
    429 while the email or the client address has too many recent failures."""
    key = email_key(email)
    attempt, row = await _count_attempt(db, limits, key, client)
    valid = await verify_password_off_loop(row.password_hash if row else None, password)
    if not valid or row is None or row.disabled_at_ms is not None:
        raise Unauthorized(INVALID_LOGIN)
    await rate_limit.uncount_attempt(db, attempt)
    user = User(row.id, row.email, row.first_name, row.last_name, parse_scopes(row.scopes))
    return issue_token(secret, user.id, user.scopes, ttl_seconds), user


async def _count_attempt(
    db: Database, limits: LoginLimits, key: str, client: str | None
) -> tuple[rate_limit.CountedAttempt, UserRow | None]:
    """Counts the attempt (or refuses it with 429) and finds the user, in one transaction."""
    for attempt in range(1, LOGIN_ATTEMPTS_MAX + 1):
        try:
            async with db.write() as conn:
                counted = await rate_limit.count_attempt(conn, limits, key, client)
                return counted, await repository.find_user_by_email_key(conn, key)
        except RetryableConflict:
            if attempt == LOGIN_ATTEMPTS_MAX:
                raise
    raise RuntimeError("unreachable")


async def ensure_jwt_secret(db: Database, settings: Settings) -> str:
    """The configured secret, else the one kept in the database (made on first use)."""
    if settings.jwt_secret:
        return settings.jwt_secret
    async with db.write() as conn:
        await repository.insert_setting_if_absent(conn, JWT_SECRET_KEY, secrets.token_urlsafe(48))
        secret = await repository.get_setting(conn, JWT_SECRET_KEY)
    if secret is None:
        raise RuntimeError("the JWT secret was neither found nor stored")
    return secret


async def ensure_first_admin(db: Database, settings: Settings) -> tuple[str, str] | None:
    """Creates the first admin when there is no user at all.

    Returns (email, password) when the password was generated and must be shown once.
    """
    async with db.read() as conn:
        if await repository.count_users(conn) > 0:
            return None
    if settings.admin_email and settings.admin_password:
        with suppress(Conflict):  # another process created it first
            await create_user(db, settings.admin_email, settings.admin_password)
        return None
    password = secrets.token_urlsafe(18)
    try:
        await create_user(db, DEFAULT_ADMIN_EMAIL, password)
    except Conflict:
        return None
    return DEFAULT_ADMIN_EMAIL, password
