"""The scopes an admin user may hold; each route needs one of them."""

from __future__ import annotations

LOYALTY_READ = "loyalty:read"
LOYALTY_WRITE = "loyalty:write"
CUSTOMERS_READ = "customers:read"
CUSTOMERS_WRITE = "customers:write"
API_KEYS_WRITE = "api_keys:write"
WEBHOOKS_WRITE = "webhooks:write"

ALL_SCOPES = (
    LOYALTY_READ,
    LOYALTY_WRITE,
    CUSTOMERS_READ,
    CUSTOMERS_WRITE,
    API_KEYS_WRITE,
    WEBHOOKS_WRITE,
)


def parse_scopes(stored: str) -> frozenset[str]:
    return frozenset(stored.split())


def format_scopes(scopes: frozenset[str] | tuple[str, ...]) -> str:
    return " ".join(sorted(scopes))
