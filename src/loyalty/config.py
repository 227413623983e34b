"""Typed settings, read once from the LOYALTY_* environment variables."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

DEFAULT_DATABASE_URL = "sqlite:///./data/loyalty.db"
JWT_TTL_SECONDS_MAX = 366 * 24 * 3600


class ConfigError(Exception):
    """A LOYALTY_* variable holds a value the service cannot use."""


@dataclass(frozen=True, slots=True)
class Settings:
    database_url: str = DEFAULT_DATABASE_URL
    # None means: use the secret kept in the database (generated on first start).
    jwt_secret: str | None = None
    jwt_ttl_seconds: int = 86400
    allow_negative_balance: bool = False
    admin_email: str | None = None
    admin_password: str | None = None
    # Connections each worker process keeps to PostgreSQL.
    db_pool_size: int = 16

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        secret = env.get("LOYALTY_JWT_SECRET") or None
        if secret is not None and len(secret) < 32:
            raise ConfigError("LOYALTY_JWT_SECRET must be at least 32 characters long")
        return cls(
            database_url=env.get("LOYALTY_DATABASE_URL") or DEFAULT_DATABASE_URL,
            jwt_secret=secret,
            jwt_ttl_seconds=_int(env, "LOYALTY_JWT_TTL_SECONDS", 86400, 1, JWT_TTL_SECONDS_MAX),
            allow_negative_balance=_bool(env, "LOYALTY_ALLOW_NEGATIVE_BALANCE", False),
            admin_email=env.get("LOYALTY_ADMIN_EMAIL") or None,
            admin_password=env.get("LOYALTY_ADMIN_PASSWORD") or None,
            db_pool_size=_int(env, "LOYALTY_DB_POOL_SIZE", 16, 1, 256),
        )


def _int(env: Mapping[str, str], name: str, default: int, low: int, high: int) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name} must be an integer, got {raw!r}") from None
    if not low <= value <= high:
        raise ConfigError(f"{name} must be between {low} and {high}, got {value}")
    return value


def _bool(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    lowered = raw.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{name} must be true or false, got {raw!r}")
