"""Email addresses: a practical validity check and the case-insensitive uniqueness key."""

from __future__ import annotations

import re

EMAIL_MAX = 254
# Deliberately simple: one @, no spaces, dot-separated domain labels (admin@localhost is
# fine). Whether mail can be delivered there is not ours to judge.
_EMAIL = re.compile(r"[^@\s]{1,64}@[^@\s.]+(?:\.[^@\s.]+)*")


def is_valid_email(text: str) -> bool:
    return len(text) <= EMAIL_MAX and _EMAIL.fullmatch(text) is not None


def email_key(email: str) -> str:
    return email.lower()
