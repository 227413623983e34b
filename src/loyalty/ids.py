"""Prefixed ULIDs: `adj_…`, `cus_…`, `user_…`."""

from __future__ import annotations

import base64
import re
import secrets

_RANDOM_BITS = 80
ID_PATTERN = re.compile(r"[a-z]{2,8}_[0-9A-HJKMNP-TV-Z]{26}")
_ULID_MAX = (1 << 128) - 1
_ULID_CHARS = 26
# RFC 4648's base32 alphabet to Crockford's, which ULIDs use: the C codec does the work.
_RFC_TO_CROCKFORD = bytes.maketrans(
    b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567", b"0123456789ABCDEFGHJKMNPQRSTVWXYZ"
)
_CROCKFORD_TO_RFC = bytes.maketrans(
    b"0123456789ABCDEFGHJKMNPQRSTVWXYZ", b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"
)


def new_id(prefix: str, timestamp_ms: int) -> str:
    return f"{prefix}_{_encode(timestamp_ms, secrets.randbits(_RANDOM_BITS))}"


def id_floor(prefix: str, timestamp_ms: int) -> str:
    """The smallest id of a millisecond: ids of adjustments start with their created_at, so
    a time range is an id range."""
    return f"{prefix}_{_encode(timestamp_ms, 0)}"


def id_ceiling(prefix: str, timestamp_ms: int) -> str:
    """The largest id of a millisecond."""
    return f"{prefix}_{_encode(timestamp_ms, (1 << _RANDOM_BITS) - 1)}"


def next_id_after(prefix: str, timestamp_ms: int, previous: str | None) -> str:
    """A fresh id that sorts strictly after `previous` (an id with the same prefix).

    Called while the customer's balance row is locked, with `timestamp_ms` never below the
    previous adjustment's, so a customer's adjustment ids strictly increase even when several
    fall in one millisecond.
    """
    candidate = new_id(prefix, timestamp_ms)
    if previous is None or candidate > previous:
        return candidate
    successor = _decode(previous[len(prefix) + 1 :]) + 1
    if successor > _ULID_MAX:
        raise OverflowError("no ULID sorts after the previous one")
    return f"{prefix}_{_encode_int(successor)}"


def _encode(timestamp_ms: int, randomness: int) -> str:
    return _encode_int((timestamp_ms << _RANDOM_BITS) | randomness)


def _encode_int(value: int) -> str:
    """A 128-bit value as 26 Crockford base32 characters: the low 130 bits of a 160-bit
    base32 text."""
    text = base64.b32encode(value.to_bytes(20, "big"))[-_ULID_CHARS:]
    return text.translate(_RFC_TO_CROCKFORD).decode()


def _decode(text: str) -> int:
    padded = b"A" * (32 - _ULID_CHARS) + text.encode().translate(_CROCKFORD_TO_RFC)
    return int.from_bytes(base64.b32decode(padded), "big")
