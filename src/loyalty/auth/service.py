"""Admin users, logins and the authentication of every admin request."""

from __future__ import annotations

import secrets
from contextlib import suppress
from dataclasses import dataclass

from loyalty.auth import repository
from loyalty.auth.passwords import PASSWORD_MAX, PASSWORD_MIN, hash_password, verify_password
from loyalty.auth.scopes import ALL_SCOPES, format_scopes, parse_scopes
from loyalty.auth.tokens import bearer_token, issue_token, verify_token
from loyalty.config import Settings
from loyalty.db import Database, UniqueViolation
from loyalty.emails import email_key, is_valid_email
from loyalty.errors import Conflict, FieldError, Forbidden, InvalidData, Unauthorized
from loyalty.ids import new_id
from loyalty.timestamps import now_ms

JWT_SECRET_KEY = "jwt_secret"  # noqa: S105 - the name of a setting, not a secret
NAME_MAX = 255
DEFAULT_ADMIN_EMAIL = "admin@localhost"
INVALID_LOGIN = "Invalid email or password"


@dataclass(frozen=True, slots=True)
class User:
    id: str
    email: str
    first_name: str | None
    last_name: str | None
    scopes: frozenset[str]


@dataclass(frozen=True, slots=True)
class Principal:
    """The admin user a request acts for, with the scopes it holds right now."""

    user_id: str
    scopes: frozenset[str]

    def require(self, scope: str) -> None:
        if scope not in self.scopes:
            raise Forbidden(f"Missing required scope: {scope}")


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
    async with db.write() as conn:
        return await repository.delete_user_by_email_key(conn, email_key(email))


async def login(
    db: Database, secret: str, ttl_seconds: int, email: str, password: str
) -> tuple[str, User]:
    """A fresh token for the user, or 401 with one message whether email or password was wrong."""
    async with db.read() as conn:
        row = await repository.find_user_by_email_key(conn, email_key(email))
    if not verify_password(row["password_hash"] if row else None, password) or row is None:
        raise Unauthorized(INVALID_LOGIN)
    user = User(
        row["id"], row["email"], row["first_name"], row["last_name"], parse_scopes(row["scopes"])
    )
    return issue_token(secret, user.id, user.scopes, ttl_seconds), user


async def authenticate(db: Database, secret: str, authorization: str | None) -> Principal:
    """The principal behind an Authorization header. The user is looked up on every request,
    so a deleted user's tokens stop working at once and scope changes apply at once."""
    user_id, _ = verify_token(secret, bearer_token(authorization))
    async with db.read() as conn:
        scopes = await repository.find_user_scopes(conn, user_id)
    if scopes is None:
        raise Unauthorized()
    return Principal(user_id, parse_scopes(scopes))


def principal_from_token(secret: str, authorization: str | None) -> Principal:
    """The principal a token claims to be, checked by signature alone. Its user and scopes
    must still be confirmed against the database, as the adjust batch does."""
    user_id, scopes = verify_token(secret, bearer_token(authorization))
    return Principal(user_id, scopes)


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
