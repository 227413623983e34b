"""The event types: one per kind of committed change, named as SPEC 8.2 lists them."""

from __future__ import annotations

from typing import Literal, get_args

EventType = Literal[
    "points.adjusted",
    "points.reversed",
    "points.expired",
    "points.released",
    "pending.created",
    "pending.voided",
    "customer.created",
]

EVENT_TYPES: tuple[str, ...] = get_args(EventType)

# The event an adjustment of each type makes.
BY_ADJUSTMENT_TYPE = {
    "adjustment": "points.adjusted",
    "reversal": "points.reversed",
    "expiration": "points.expired",
    "release": "points.released",
}
