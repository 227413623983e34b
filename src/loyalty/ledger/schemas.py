"""The adjust body's rules and the JSON shapes of balances and adjustments."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgspec

from loyalty.errors import FieldError, validation_error
from loyalty.http import decode_field
from loyalty.ledger import points
from loyalty.ledger.points import DELTA_MAX_HUNDREDTHS, PointsError
from loyalty.timestamps import render, render_optional

ADJUST_FIELDS = frozenset({"customer_id", "delta", "reason"})
CUSTOMER_ID_MAX = 64
REASON_MAX = 1000
DELTA_MESSAGE = "delta must be a non-zero number"


@dataclass(frozen=True, slots=True)
class AdjustBody:
    customer_id: str
    delta_hundredths: int
    reason: str | None


def parse_adjust_body(fields: dict[str, msgspec.Raw]) -> AdjustBody:
    """The adjust body's fields, checked exactly; the delta's error comes first, as the seed's
    message is about it."""
    errors: list[FieldError] = []
    delta = _delta(fields.get("delta"), errors)
    customer_id = _string(fields.get("customer_id"))
    if customer_id is None or not 1 <= len(customer_id) <= CUSTOMER_ID_MAX:
        message = f"customer_id must be a non-empty string of at most {CUSTOMER_ID_MAX} characters"
        if "customer_id" not in fields:
            message = "customer_id is required"
        errors.append(FieldError("customer_id", message))
    reason = None
    if fields.get("reason") is not None and bytes(fields["reason"]) != b"null":
        reason = _string(fields["reason"])
        if reason is None or len(reason) > REASON_MAX:
            message = f"reason must be a string of at most {REASON_MAX} characters, or null"
            errors.append(FieldError("reason", message))
    if errors or customer_id is None or delta is None:
        error = validation_error(errors)
        if errors[0].field == "delta":
            error.message = DELTA_MESSAGE
        raise error
    return AdjustBody(customer_id, delta, reason)


def _string(raw: msgspec.Raw | None) -> str | None:
    if raw is None:
        return None
    try:
        return decode_field(raw, str)
    except msgspec.ValidationError:
        return None


def _delta(raw: msgspec.Raw | None, errors: list[FieldError]) -> int | None:
    if raw is None:
        errors.append(FieldError("delta", "delta is required"))
        return None
    try:
        hundredths = points.parse_json_number(bytes(raw))
    except PointsError as error:
        errors.append(FieldError("delta", f"delta {error}"))
        return None
    if hundredths == 0:
        errors.append(FieldError("delta", DELTA_MESSAGE))
        return None
    if abs(hundredths) > DELTA_MAX_HUNDREDTHS:
        errors.append(FieldError("delta", "delta must be at most 1000000000 in absolute value"))
        return None
    return hundredths


def adjustment_json(row: Any, with_actor: bool = False) -> dict[str, Any]:
    """A history item from a row of ledger.repository.HISTORY_COLUMNS. The adjust response
    keeps the seed's exact item shape; the history route adds the acting user."""
    item = {
        "id": row[0],
        "delta": msgspec.Raw(points.render(row[1])),
        "reason": row[2],
        "balance_after": msgspec.Raw(points.render(row[3])),
        "created_at": render(row[4]),
    }
    if with_actor:
        item["created_by"] = row[5]
    return item


def balance_json(
    customer_id: str, balance_hundredths: int, updated_at_ms: int | None
) -> dict[str, Any]:
    return {
        "customer_id": customer_id,
        "balance": msgspec.Raw(points.render(balance_hundredths)),
        "updated_at": render_optional(updated_at_ms),
    }
