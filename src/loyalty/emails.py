"""Email addresses: validity by email-validator's syntax rules, and the case-insensitive
uniqueness key.

Whether mail can be delivered there is not ours to judge, so no DNS is asked and a domain
without a dot is allowed; `localhost` is too, for the first admin `admin@localhost`. Control
characters, markup, display names and quoted oddities are refused.
"""

from __future__ import annotations

import email_validator
from email_validator import EmailNotValidError, validate_email

EMAIL_MAX = 254

# email-validator refuses special-use domains everywhere; its documented switch is this list.
if "localhost" in email_validator.SPECIAL_USE_DOMAIN_NAMES:
    email_validator.SPECIAL_USE_DOMAIN_NAMES.remove("localhost")


def is_valid_email(text: str) -> bool:
    if len(text) > EMAIL_MAX:
        return False
    try:
        validate_email(text, check_deliverability=False, globally_deliverable=False)
    except EmailNotValidError:
        return False
    return True


def email_key(email: str) -> str:
    return email.lower()
