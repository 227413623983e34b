"""Idempotency keys as a request carries them: the header's rules and the fingerprint of the
request that a replay must match. Pure, no I/O."""

from __future__ import annotations

import hashlib
import re

from starlette.requests import Request

from loyalty.errors import FieldError, InvalidData
from loyalty.idempotency.policy import KeyedRequest

HEADER = "Idempotency-Key"
REPLAYED_HEADER = "Idempotent-Replayed"
KEY_MAX = 255
KEY_PATTERN = rf"^[\x21-\x7e]{{1,{KEY_MAX}}}$"
# Kept at least this long; the cleanup removes older ones.
RETENTION_MS = 24 * 3600 * 1000
_VISIBLE_ASCII = re.compile(KEY_PATTERN.strip("^$"))


def read_key(request: Request) -> str | None:
    """The request's Idempotency-Key, if it sent one (400 when it is malformed)."""
    header = request.headers.get(HEADER)
    if header is None:
        return None
    if not _VISIBLE_ASCII.fullmatch(header):
        message = f"{HEADER} must be 1 to {KEY_MAX} visible ASCII characters"
        raise InvalidData(message, [FieldError(HEADER, message)])
    return header


def keyed_request(
    request: Request, key: str | None, actor_id: str, body: bytes
) -> KeyedRequest | None:
    """The request under its key, with its fingerprint (None without a key)."""
    if key is None:
        return None
    fingerprint = request_hash(
        request.method, request.url.path, request.scope["query_string"], body
    )
    return KeyedRequest(actor_id, key, fingerprint)


def request_hash(method: str, path: str, query: bytes, body: bytes) -> str:
    """SHA-256 over method, path, query and body, each length-prefixed so none can bleed
    into the next."""
    digest = hashlib.sha256()
    for part in (method.encode(), path.encode(), query, body):
        digest.update(len(part).to_bytes(8, "big"))
        digest.update(part)
    return digest.hexdigest()


def replay_headers(replayed: bool) -> dict[str, str] | None:
    return {REPLAYED_HEADER: "true"} if replayed else None
