"""The audit line: one log line for each committed adjustment."""

from __future__ import annotations

import logging
import re

import msgspec

from loyalty.logs import current_request_id, emit

ADJUSTMENT_LOGGER = "loyalty.adjustments"
_DELTA = re.compile(r"-?(?:0|[1-9][0-9]{0,17})(?:\.[0-9]{1,2})?")
_adjustments = logging.getLogger(ADJUSTMENT_LOGGER)


def log_adjustment(
    adjustment_id: str,
    customer_id: str,
    delta_text: str,
    actor: str | None,
    request_id: str | None = None,
) -> None:
    """One line for a committed adjustment: its id, customer, delta (the points as the API
    renders them, e.g. "-50" or "100.01") and the id of who made it.

    Called in the request's own task after the commit, so that the line carries the request's
    id (the default) and speaks only of what is durable.
    """
    if not _adjustments.isEnabledFor(logging.INFO):
        return
    # A well-formed delta is logged as the JSON number it is; anything else as a string.
    delta: object = msgspec.Raw(delta_text.encode()) if _DELTA.fullmatch(delta_text) else delta_text
    fields = {
        "request_id": request_id or current_request_id.get(),
        "adjustment_id": adjustment_id,
        "customer_id": customer_id,
        "delta": delta,
        "actor": actor,
    }
    emit(_adjustments, "adjustment", fields)
