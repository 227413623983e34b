"""Idempotency keys: validation and the fingerprint of a request. Pure, no I/O."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

from loyalty.errors import FieldError, InvalidData

HEADER = "idempotency-key"
REPLAYED_HEADER = "Idempotent-Replayed"
KEY_MAX = 255
# Kept at least this long; the cleanup removes older ones.
RETENTION_MS = 24 * 3600 * 1000
_VISIBLE_ASCII = re.compile(r"[\x21-\x7e]{1,255}")


@dataclass(frozen=True, slots=True)
class IdempotencyClaim:
    """A request's key, and the fingerprint that a replay must match."""

    key: str
    request_hash: str


def parse_key(header: str | None) -> str | None:
    if header is None:
        return None
    if not _VISIBLE_ASCII.fullmatch(header):
        message = f"Idempotency-Key must be 1 to {KEY_MAX} visible ASCII characters"
        raise InvalidData(message, [FieldError("Idempotency-Key", message)])
    return header


def request_hash(method: str, path: str, query: bytes, body: bytes) -> str:
    """SHA-256 over method, path, query and body, each length-prefixed so none can bleed
    into the next."""
    digest = hashlib.sha256()
    for part in (method.encode(), path.encode(), query, body):
        digest.update(len(part).to_bytes(8, "big"))
        digest.update(part)
    return digest.hexdigest()
