"""Standard Webhooks signatures (https://www.standardwebhooks.com), made by the
`standardwebhooks` package itself so that what we send is what its verifiers accept."""

from __future__ import annotations

import base64
import secrets
from datetime import UTC, datetime

from standardwebhooks import Webhook

SECRET_PREFIX = "whsec_"  # noqa: S105 (a prefix, not a secret)
SECRET_BYTES = 24  # 192 random bits; the specification asks for 24 to 64 bytes


def new_secret() -> str:
    """`whsec_` and the base64 of fresh random bytes."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode()


def signed_headers(secret: str, message_id: str, body: bytes, now_s: float) -> dict[str, str]:
    """The headers of one attempt. `message_id` is the event's id, the same on every attempt
    and resend, so that a receiver can drop what it has already handled; the timestamp (and
    so the signature) is the attempt's own."""
    moment = datetime.fromtimestamp(int(now_s), tz=UTC)
    signature = Webhook(secret).sign(message_id, moment, body.decode())
    return {
        "webhook-id": message_id,
        "webhook-timestamp": str(int(now_s)),
        "webhook-signature": signature,
        "content-type": "application/json",
    }
