"""Password hashing with argon2id (memory-hard), never stored in plain text."""

from __future__ import annotations

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

PASSWORD_MIN = 8
PASSWORD_MAX = 1024

_hasher = PasswordHasher()
# Verified against when the email is unknown, so that costs the same as a wrong password.
_DUMMY_HASH = _hasher.hash("an unknown user never matches this password")


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def verify_password(stored_hash: str | None, password: str) -> bool:
    try:
        return _hasher.verify(stored_hash or _DUMMY_HASH, password) and stored_hash is not None
    except (VerificationError, InvalidHashError):
        return False
