"""The text of a secret key: `sk_`, 43 base62 characters of 32 random bytes, then a 6-character
base62 CRC32 of those 43. Pure, no I/O.

The checksum lets a mistyped, truncated or made-up key be refused (401) before the database
is asked anything; it guards nothing cryptographically (the 32 random bytes do that).
"""

from __future__ import annotations

import hashlib
import secrets
import zlib

KEY_PREFIX = "sk_"
RANDOM_BYTES = 32
_ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_DIGITS = frozenset(_ALPHABET)
BODY_CHARS = 43  # 62**43 > 2**256: every 32-byte value fits
CHECKSUM_CHARS = 6  # 62**6 > 2**32: every CRC32 fits
TOKEN_CHARS = len(KEY_PREFIX) + BODY_CHARS + CHECKSUM_CHARS
REDACTED_HEAD = 6  # "sk_" and three characters of the body
REDACTED_TAIL = 4


def _base62(value: int, width: int) -> str:
    digits = []
    for _ in range(width):
        value, digit = divmod(value, 62)
        digits.append(_ALPHABET[digit])
    if value:
        raise ValueError("the value does not fit the width")
    return "".join(reversed(digits))


def _checksum(body: str) -> str:
    return _base62(zlib.crc32(body.encode()), CHECKSUM_CHARS)


def new_token() -> str:
    body = _base62(int.from_bytes(secrets.token_bytes(RANDOM_BYTES), "big"), BODY_CHARS)
    return f"{KEY_PREFIX}{body}{_checksum(body)}"


def is_well_formed(token: str) -> bool:
    """Whether `token` has a key's prefix, length, alphabet and a matching checksum."""
    if len(token) != TOKEN_CHARS or not token.startswith(KEY_PREFIX):
        return False
    body = token[len(KEY_PREFIX) : len(KEY_PREFIX) + BODY_CHARS]
    if not _DIGITS.issuperset(token[len(KEY_PREFIX) :]):
        return False
    return _checksum(body) == token[-CHECKSUM_CHARS:]


def token_hash(token: str) -> str:
    """What the database keeps of a token: its SHA-256, in hex. The token has 256 random
    bits, so a fast unsalted hash is as strong as a slow one here."""
    return hashlib.sha256(token.encode()).hexdigest()


def redact(token: str) -> str:
    """`sk_abc…wxyz`: enough to tell keys apart in a list, never enough to use one."""
    return f"{token[:REDACTED_HEAD]}…{token[-REDACTED_TAIL:]}"
