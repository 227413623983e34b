"""Prefixed ULIDs: `adj_…`, `cus_…`, `user_…`."""

from __future__ import annotations

import base64
import os
import re
from functools import lru_cache

_RANDOM_BITS = 80
_RANDOM_BYTES = _RANDOM_BITS // 8
_POOL_BYTES = 4096
_pool = b""
_pool_at = 0
_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_PAIRS = [a + b for a in _CROCKFORD for b in _CROCKFORD]  # ten bits → two characters
_PAIR_SHIFTS = tuple(range(120, -1, -10))  # 130 bits, most significant first
_RANDOM_SHIFTS = _PAIR_SHIFTS[5:]  # the low 80 bits
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
    # The first 10 characters are the time's (ids of one millisecond share them), the last
    # 16 the 80 random bits'.
    randomness = _random_bits()
    random_part = "".join([_PAIRS[(randomness >> shift) & 0x3FF] for shift in _RANDOM_SHIFTS])
    return f"{prefix}_{_time_part(timestamp_ms)}{random_part}"


@lru_cache(maxsize=64)
def _time_part(timestamp_ms: int) -> str:
    return _encode_int(timestamp_ms << _RANDOM_BITS)[:10]


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
    """A 128-bit value as 26 Crockford base32 characters, ten bits (two characters) at a
    time from a table: several times faster than base64.b32encode, which is pure Python."""
    return "".join([_PAIRS[(value >> shift) & 0x3FF] for shift in _PAIR_SHIFTS])


def _random_bits() -> int:
    """80 random bits from a buffer of os.urandom, refilled a few hundred ids at a time
    instead of a system call per id."""
    global _pool, _pool_at
    if _pool_at + _RANDOM_BYTES > len(_pool):
        _pool, _pool_at = os.urandom(_POOL_BYTES), 0
    start = _pool_at
    _pool_at += _RANDOM_BYTES
    return int.from_bytes(_pool[start:_pool_at], "big")


def _decode(text: str) -> int:
    padded = b"A" * (32 - _ULID_CHARS) + text.encode().translate(_CROCKFORD_TO_RFC)
    return int.from_bytes(base64.b32decode(padded), "big")
