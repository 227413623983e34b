"""The ledger's request and response bodies, as msgspec Structs (the OpenAPI document is
generated from them), and the adjust body's exact rules."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Literal

import msgspec
from msgspec import UNSET, Meta, Struct, UnsetType

from loyalty.errors import FieldError, validation_error
from loyalty.http.body import decode_field
from loyalty.http.schemas import PageCount, PageLimit, PageOffset, PageQuery, Points, Timestamp
from loyalty.ledger import points
from loyalty.ledger.points import DELTA_MAX_HUNDREDTHS, HUNDREDTHS_PER_POINT, PointsError
from loyalty.ledger.repository import AdjustmentRow, BalanceRow
from loyalty.timestamps import render, render_optional

CUSTOMER_ID_MAX = 64
REASON_MAX = 1000
HISTORY_IN_ADJUST = 20
DELTA_MESSAGE = "delta must be a non-zero number"
_DELTA_MAX_POINTS = DELTA_MAX_HUNDREDTHS // HUNDREDTHS_PER_POINT

CustomerId = Annotated[str, Meta(min_length=1, max_length=CUSTOMER_ID_MAX)]
AdjustmentId = Annotated[str, Meta(pattern="^adj_[0-9A-HJKMNP-TV-Z]{26}$")]
Delta = Annotated[
    msgspec.Raw,
    Meta(
        description="Non-zero, at most 2 fractional digits",
        extra_json_schema={
            "type": "number",
            "not": {"const": 0},
            "minimum": -_DELTA_MAX_POINTS,
            "maximum": _DELTA_MAX_POINTS,
        },
    ),
]


class AdjustRequest(Struct, forbid_unknown_fields=True):
    customer_id: CustomerId
    delta: Delta
    reason: Annotated[str, Meta(max_length=REASON_MAX)] | None = None


class AdjustQuery(Struct):
    include_history: Annotated[
        bool,
        Meta(description=f"Also return the last {HISTORY_IN_ADJUST} adjustments, newest first"),
    ] = False


class HistoryQuery(PageQuery):
    order: Literal["-created_at", "created_at"] = "-created_at"
    created_gte: Timestamp | None = msgspec.field(default=None, name="created_at[gte]")
    created_lte: Timestamp | None = msgspec.field(default=None, name="created_at[lte]")


class SeedAdjustment(Struct):
    """An adjustment as the seed's page shows it, in the adjust response's history."""

    id: AdjustmentId
    delta: Points
    reason: str | None
    balance_after: Points
    created_at: Timestamp


class Adjustment(SeedAdjustment):
    """An adjustment in the history route: the seed's fields and who made it."""

    created_by: Annotated[
        str | None, Meta(description="The id of the admin user who made the adjustment")
    ]


class AdjustResponse(Struct, omit_defaults=True):
    id: str
    customer_id: str
    balance_after: Points
    updated_at: Timestamp
    history: (
        Annotated[
            list[SeedAdjustment],
            Meta(
                max_length=HISTORY_IN_ADJUST,
                description="Only with include_history=true: newest first, this one first",
            ),
        ]
        | UnsetType
    ) = UNSET


class Balance(Struct):
    customer_id: str
    balance: Points
    updated_at: Timestamp | None


class AdjustmentPage(Struct):
    adjustments: list[Adjustment]
    count: PageCount
    offset: PageOffset
    limit: PageLimit


ADJUST_FIELDS = frozenset(field.encode_name for field in msgspec.structs.fields(AdjustRequest))


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
        errors.append(
            FieldError("delta", f"delta must be at most {_DELTA_MAX_POINTS} in absolute value")
        )
        return None
    return hundredths


def _points(hundredths: int) -> msgspec.Raw:
    return msgspec.Raw(points.render(hundredths))


def _seed_fields(row: AdjustmentRow) -> tuple[str, msgspec.Raw, str | None, msgspec.Raw, str]:
    return (
        row.id,
        _points(row.delta_hundredths),
        row.reason,
        _points(row.balance_after_hundredths),
        render(row.created_at_ms),
    )


def seed_adjustment(row: AdjustmentRow) -> SeedAdjustment:
    return SeedAdjustment(*_seed_fields(row))


def adjustment(row: AdjustmentRow) -> Adjustment:
    return Adjustment(*_seed_fields(row), row.created_by)


def balance(row: BalanceRow) -> Balance:
    return Balance(
        row.customer_id, _points(row.balance_hundredths), render_optional(row.updated_at_ms)
    )
