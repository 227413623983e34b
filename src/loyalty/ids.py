"""Prefixed ULIDs: `adj_…`, `cus_…`, `user_…`."""

from __future__ import annotations

import secrets

from ulid import ULID

_RANDOM_BITS = 80
_ULID_MAX = (1 << 128) - 1


def new_id(prefix: str, timestamp_ms: int) -> str:
    return f"{prefix}_{_encode(timestamp_ms, secrets.randbits(_RANDOM_BITS))}"


def next_id_after(prefix: str, timestamp_ms: int, previous: str | None) -> str:
    """A fresh id that sorts strictly after `previous` (an id with the same prefix).

    Called while the customer's balance row is locked, with `timestamp_ms` never below the
    previous adjustment's, so a customer's adjustment ids strictly increase even when several
    fall in one millisecond.
    """
    candidate = new_id(prefix, timestamp_ms)
    if previous is None or candidate > previous:
        return candidate
    successor = int(ULID.from_str(previous[len(prefix) + 1 :])) + 1
    if successor > _ULID_MAX:
        raise OverflowError("no ULID sorts after the previous one")
    return f"{prefix}_{ULID.from_int(successor)}"


def _encode(timestamp_ms: int, randomness: int) -> str:
    return str(ULID.from_int((timestamp_ms << _RANDOM_BITS) | randomness))
