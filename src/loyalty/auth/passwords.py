"""Password hashing with argon2id (memory-hard), never stored in plain text."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

PASSWORD_MIN = 8
PASSWORD_MAX = 1024
# A verification costs tens of milliseconds of CPU and tens of MiB of memory by design. It
# runs off the event loop (argon2 releases the GIL), so a login never stalls the worker's
# other requests, and at most this many at once, so a flood of logins cannot exhaust memory.
VERIFY_THREADS = 2

_hasher = PasswordHasher()
# Verified against when the email is unknown, so that costs the same as a wrong password.
_DUMMY_HASH = _hasher.hash("an unknown user never matches this password")
_verifiers = ThreadPoolExecutor(max_workers=VERIFY_THREADS, thread_name_prefix="argon2")


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def verify_password(stored_hash: str | None, password: str) -> bool:
    try:
        return _hasher.verify(stored_hash or _DUMMY_HASH, password) and stored_hash is not None
    except (VerificationError, InvalidHashError):
        return False


async def verify_password_off_loop(stored_hash: str | None, password: str) -> bool:
    """verify_password on a thread of its own, bounded to VERIFY_THREADS at a time."""
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(_verifiers, verify_password, stored_hash, password)
