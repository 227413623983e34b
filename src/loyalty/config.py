"""Typed settings, read once from the LOYALTY_* environment variables."""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation

DEFAULT_DATABASE_URL = "sqlite:///./data/loyalty.db"
JWT_TTL_SECONDS_MAX = 366 * 24 * 3600
LOGIN_WINDOW_SECONDS_MAX = 24 * 3600
LOGIN_FAILURES_MAX = 1_000_000
LIST_ITEMS_MAX = 64
HTTP_READ_TIMEOUT_SECONDS_MAX = 3600
SCHEDULER_INTERVAL_SECONDS_MAX = 86400
EXPIRE_AFTER_DAYS_MAX = 36500
# The webhook retry schedule: the delays between attempts, in seconds (SPEC 8.2: over 24 h).
WEBHOOK_RETRY_SCHEDULE_DEFAULT = (5, 30, 120, 600, 3600, 21600, 43200, 86400)
WEBHOOK_RETRIES_MAX = 32
WEBHOOK_RETRY_DELAY_S_MAX = 7 * 86400
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
METRICS_TOKEN_MIN = 16
METRICS_TOKEN_MAX = 256
_TOKEN_CHARS = re.compile(r"[\x21-\x7e]+")
# A browser's Origin header: scheme, host and an optional port, nothing more.
_ORIGIN = re.compile(
    r"https?://[a-z0-9.-]+(?::[0-9]{1,5})?|https?://\[[0-9a-f:.]+\](?::[0-9]{1,5})?"
)


class ConfigError(Exception):
    """A LOYALTY_* variable holds a value the service cannot use."""


@dataclass(frozen=True, slots=True)
class Settings:
    # Secrets stay out of repr(), so printing or logging the settings cannot leak them
    # (a PostgreSQL URL may hold a password).
    database_url: str = field(default=DEFAULT_DATABASE_URL, repr=False)
    # None means: use the secret kept in the database (generated on first start).
    jwt_secret: str | None = field(default=None, repr=False)
    jwt_ttl_seconds: int = 86400
    allow_negative_balance: bool = False
    admin_email: str | None = None
    admin_password: str | None = field(default=None, repr=False)
    # Connections each worker process keeps to PostgreSQL.
    db_pool_size: int = 16
    # Failed logins allowed per email and per client address within one window.
    login_window_seconds: int = 900
    login_max_failures_per_email: int = 10
    login_max_failures_per_address: int = 30
    # Addresses or networks of the reverse proxies whose X-Forwarded-For is believed.
    # Empty: the header is ignored and the client is the connection's peer.
    trust_proxy: tuple[str, ...] = ()
    # Origins a browser may call the API from; empty: no CORS headers at all.
    cors_origins: tuple[str, ...] = ()
    log_level: str = "INFO"
    # How long a client may take to send one whole request (head and body).
    http_read_timeout_seconds: int = 30
    # How often each worker records due expirations and releases due pending points.
    scheduler_interval_seconds: Decimal = Decimal(60)
    # Set: credits without an expires_at expire this many days after they are made.
    points_expire_after_days: Decimal | None = None
    # Set: GET /metrics asks for it as a Bearer token; unset: /metrics is open, like /health.
    metrics_token: str | None = field(default=None, repr=False)
    # Seconds between a webhook delivery's attempts (each jittered ±20%); after the last, failed.
    webhook_retry_schedule_s: tuple[Decimal, ...] = tuple(
        Decimal(delay) for delay in WEBHOOK_RETRY_SCHEDULE_DEFAULT
    )

    @property
    def points_expire_after_ms(self) -> int | None:
        days = self.points_expire_after_days
        return None if days is None else max(1, int(days * 86_400_000))

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
            login_window_seconds=_int(
                env, "LOYALTY_LOGIN_WINDOW_SECONDS", 900, 1, LOGIN_WINDOW_SECONDS_MAX
            ),
            login_max_failures_per_email=_int(
                env, "LOYALTY_LOGIN_MAX_FAILURES_PER_EMAIL", 10, 1, LOGIN_FAILURES_MAX
            ),
            login_max_failures_per_address=_int(
                env, "LOYALTY_LOGIN_MAX_FAILURES_PER_ADDRESS", 30, 1, LOGIN_FAILURES_MAX
            ),
            trust_proxy=_proxies(env, "LOYALTY_TRUST_PROXY"),
            cors_origins=_origins(env, "LOYALTY_CORS_ORIGINS"),
            log_level=_log_level(env, "LOYALTY_LOG_LEVEL"),
            http_read_timeout_seconds=_int(
                env, "LOYALTY_HTTP_READ_TIMEOUT_SECONDS", 30, 1, HTTP_READ_TIMEOUT_SECONDS_MAX
            ),
            scheduler_interval_seconds=_positive_decimal(
                env, "LOYALTY_SCHEDULER_INTERVAL_SECONDS", SCHEDULER_INTERVAL_SECONDS_MAX
            )
            or Decimal(60),
            points_expire_after_days=_positive_decimal(
                env, "LOYALTY_POINTS_EXPIRE_AFTER_DAYS", EXPIRE_AFTER_DAYS_MAX
            ),
            metrics_token=_metrics_token(env, "LOYALTY_METRICS_TOKEN"),
            webhook_retry_schedule_s=_delays(env, "LOYALTY_WEBHOOK_RETRY_SCHEDULE"),
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


def _positive_decimal(env: Mapping[str, str], name: str, high: int) -> Decimal | None:
    """A number above 0 and at most `high` (decimals allowed: 0.5 seconds), or None if unset."""
    raw = (env.get(name) or "").strip()
    if not raw:
        return None
    try:
        value = Decimal(raw)
    except InvalidOperation:
        value = Decimal("NaN")
    if not value.is_finite() or not 0 < value <= high:
        raise ConfigError(f"{name} must be a number above 0 and at most {high}, got {raw!r}")
    return value


def _delays(env: Mapping[str, str], name: str) -> tuple[Decimal, ...]:
    """Comma-separated seconds, each from 0 to a week (decimals allowed: 0.2), 1 to 32 of
    them; unset: the default schedule."""
    raw = (env.get(name) or "").strip()
    if not raw:
        return tuple(Decimal(delay) for delay in WEBHOOK_RETRY_SCHEDULE_DEFAULT)
    items = [item.strip() for item in raw.split(",")]
    if len(items) > WEBHOOK_RETRIES_MAX:
        raise ConfigError(f"{name} may list at most {WEBHOOK_RETRIES_MAX} delays")
    delays = []
    for item in items:
        try:
            delay = Decimal(item)
        except InvalidOperation:
            delay = Decimal("NaN")
        if not delay.is_finite() or not 0 <= delay <= WEBHOOK_RETRY_DELAY_S_MAX:
            raise ConfigError(
                f"{name} must list seconds from 0 to {WEBHOOK_RETRY_DELAY_S_MAX},"
                f" separated by commas, got {item!r}"
            )
        delays.append(delay)
    return tuple(delays)


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


def _items(env: Mapping[str, str], name: str) -> list[str]:
    items = [item.strip() for item in (env.get(name) or "").split(",") if item.strip()]
    if len(items) > LIST_ITEMS_MAX:
        raise ConfigError(f"{name} may list at most {LIST_ITEMS_MAX} entries")
    return items


def _proxies(env: Mapping[str, str], name: str) -> tuple[str, ...]:
    proxies = _items(env, name)
    for proxy in proxies:
        # "*" would believe any client's own X-Forwarded-For, which defeats the point.
        try:
            ipaddress.ip_network(proxy, strict=False)
        except ValueError:
            raise ConfigError(
                f"{name} must list IP addresses or networks (CIDR), got {proxy!r}"
            ) from None
    return tuple(proxies)


def _origins(env: Mapping[str, str], name: str) -> tuple[str, ...]:
    origins = []
    for item in _items(env, name):
        origin = item.lower().rstrip("/")
        if not _ORIGIN.fullmatch(origin):
            raise ConfigError(
                f"{name} must list origins such as https://shop.example, got {item!r}"
            )
        origins.append(origin)
    return tuple(dict.fromkeys(origins))


def _log_level(env: Mapping[str, str], name: str) -> str:
    level = (env.get(name) or "INFO").strip().upper()
    if level not in LOG_LEVELS:
        raise ConfigError(f"{name} must be one of {', '.join(LOG_LEVELS)}, got {level!r}")
    return level


def _metrics_token(env: Mapping[str, str], name: str) -> str | None:
    token = env.get(name) or None
    # Sent in a header: visible ASCII only, and long enough not to be guessed.
    if token is not None and not (
        METRICS_TOKEN_MIN <= len(token) <= METRICS_TOKEN_MAX and _TOKEN_CHARS.fullmatch(token)
    ):
        raise ConfigError(
            f"{name} must be {METRICS_TOKEN_MIN} to {METRICS_TOKEN_MAX} visible ASCII"
            " characters without spaces"
        )
    return token
