"""The ledger's request and response bodies, as msgspec Structs (the OpenAPI document is
generated from them), and the adjust body's exact rules."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Literal

import msgspec
from msgspec import UNSET, Meta, Struct, UnsetType

from loyalty.errors import FieldError, validation_error
from loyalty.http.body import decode_field
from loyalty.http.schemas import (
    Error,
    PageCount,
    PageLimit,
    PageOffset,
    PageQuery,
    Points,
    Timestamp,
)
from loyalty.ledger import fields, points
from loyalty.ledger.fields import POINTS_MAX, REFERENCE_MAX
from loyalty.ledger.points import (
    DELTA_MAX_HUNDREDTHS,
    HUNDREDTHS_PER_POINT,
    PointsError,
    PointsTooLarge,
)
from loyalty.ledger.repository import AdjustmentRow, BalanceRow, LotRow, PendingRow
from loyalty.metadata import Metadata, StoredMetadata, parse_metadata, stored_metadata
from loyalty.timestamps import now_ms, render, render_optional

CUSTOMER_ID_MAX = 64
REASON_MAX = 1000
HISTORY_IN_ADJUST = 20
BULK_MAX = 1000
DELTA_MESSAGE = "delta must be a non-zero number"
_DELTA_MAX_POINTS = DELTA_MAX_HUNDREDTHS // HUNDREDTHS_PER_POINT
_DELTA_RANGE = f"delta must be at most {_DELTA_MAX_POINTS} in absolute value"

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


Reference = Annotated[
    str,
    Meta(
        pattern=f"^[\\x21-\\x7e]{{1,{REFERENCE_MAX}}}$",
        description="The caller's own id for what earned or spent the points; unique per"
        " customer among adjustments and pending points, forever",
    ),
]
PositivePoints = Annotated[
    msgspec.Raw,
    Meta(
        description="Above 0, at most 2 fractional digits",
        extra_json_schema={"type": "number", "exclusiveMinimum": 0, "maximum": POINTS_MAX},
    ),
]
AdjustmentType = Literal["adjustment", "reversal", "expiration", "release"]
PendingStatus = Literal["pending", "released", "voided"]
Reason = Annotated[str, Meta(max_length=REASON_MAX)]


class AdjustRequest(Struct, forbid_unknown_fields=True):
    customer_id: CustomerId
    delta: Delta
    reason: Reason | None = None
    reference: Reference | None = None
    metadata: Metadata | None = None
    expires_at: (
        Annotated[Timestamp, Meta(description="In the future; only with a positive delta")] | None
    ) = None


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
    """The whole adjustment: the seed's fields, who made it, what kind it is and its link in
    the customer's hash chain."""

    created_by: Annotated[
        str | None,
        Meta(description="Who made it (a user id); null for expirations and automatic releases"),
    ]
    customer_id: str
    type: AdjustmentType
    reference: str | None
    metadata: StoredMetadata | None
    expires_at: Timestamp | None
    reverses: Annotated[str | None, Meta(description="The id of the adjustment it reverses")]
    pending_id: Annotated[str | None, Meta(description="The pending points it released")]
    hash: Annotated[
        str,
        Meta(
            pattern="^[0-9a-f]{64}$",
            description="SHA-256 of the previous adjustment's hash and this one's fields",
        ),
    ]


class AdjustmentDetail(Adjustment):
    reversed_points: Annotated[Points, Meta(description="How much has been reversed so far")]


class AdjustmentEnvelope(Struct):
    adjustment: AdjustmentDetail


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


class NextExpiration(Struct):
    points: Points
    expires_at: Timestamp


class Balance(Struct):
    """A balance now (with pending points and the next expiration) or, with ?as_of=, as of
    that time (with as_of instead)."""

    customer_id: str
    balance: Points
    updated_at: Timestamp | None
    pending: (
        Annotated[Points, Meta(description="Pending points, not in the balance")] | UnsetType
    ) = UNSET
    next_expiration: NextExpiration | UnsetType | None = UNSET
    as_of: Timestamp | UnsetType = UNSET


class BalanceQuery(Struct):
    as_of: (
        Annotated[
            Timestamp,
            Meta(description="The balance after the last adjustment at or before this time"),
        ]
        | None
    ) = None


class AdjustmentPage(Struct):
    adjustments: list[Adjustment]
    count: PageCount
    offset: PageOffset
    limit: PageLimit


class LedgerQuery(Struct):
    limit: Annotated[int, Meta(ge=1, le=100)] = 20
    cursor: (
        Annotated[str, Meta(max_length=64, description="next_cursor of the page before")] | None
    ) = None
    customer_id: CustomerId | None = None
    type: AdjustmentType | None = None
    reference: Reference | None = None
    created_gte: Timestamp | None = msgspec.field(default=None, name="created_at[gte]")
    created_lte: Timestamp | None = msgspec.field(default=None, name="created_at[lte]")


class LedgerPage(Struct):
    adjustments: list[Adjustment]
    next_cursor: Annotated[str | None, Meta(description="null on the last page")]


class ReverseRequest(Struct, forbid_unknown_fields=True):
    points: PositivePoints | None = None
    reason: Reason | None = None


class ReverseResponse(Struct):
    id: str
    customer_id: str
    balance_after: Points
    updated_at: Timestamp
    reverses: str


class Expiration(Struct):
    adjustment_id: str
    points: Points
    expires_at: Timestamp


class ExpirationPage(Struct):
    expirations: list[Expiration]
    count: PageCount
    offset: PageOffset
    limit: PageLimit


class PendingRequest(Struct, forbid_unknown_fields=True):
    customer_id: CustomerId
    points: PositivePoints
    release_at: Timestamp
    reason: Reason | None = None
    reference: Reference | None = None
    metadata: Metadata | None = None
    expires_at: (
        Annotated[Timestamp, Meta(description="After release_at: the points expire then")] | None
    ) = None


class Pending(Struct):
    id: str
    customer_id: str
    points: Points
    reason: str | None
    reference: str | None
    metadata: StoredMetadata | None
    expires_at: Timestamp | None
    release_at: Timestamp
    status: PendingStatus
    adjustment_id: Annotated[str | None, Meta(description="The release's adjustment")]
    created_at: Timestamp
    updated_at: Timestamp


class PendingEnvelope(Struct):
    pending: Pending


class PendingListQuery(PageQuery):
    status: PendingStatus | None = None


class PendingPage(Struct):
    pending: list[Pending]
    count: PageCount
    offset: PageOffset
    limit: PageLimit


class BulkRequest(Struct, forbid_unknown_fields=True):
    adjustments: Annotated[list[AdjustRequest], Meta(min_length=1, max_length=BULK_MAX)]
    atomic: Annotated[
        bool, Meta(description="All recorded or none (400 naming the failing items)")
    ] = False


class BulkResult(Struct, omit_defaults=True):
    index: int
    status: int
    adjustment: AdjustResponse | UnsetType = UNSET
    error: Error | UnsetType = UNSET


class BulkResponse(Struct):
    results: list[BulkResult]


ADJUST_FIELDS = frozenset(field.encode_name for field in msgspec.structs.fields(AdjustRequest))
REVERSE_FIELDS = frozenset(field.encode_name for field in msgspec.structs.fields(ReverseRequest))
PENDING_FIELDS = frozenset(field.encode_name for field in msgspec.structs.fields(PendingRequest))
BULK_FIELDS = frozenset(field.encode_name for field in msgspec.structs.fields(BulkRequest))


@dataclass(frozen=True, slots=True)
class AdjustBody:
    customer_id: str
    delta_hundredths: int
    reason: str | None
    reference: str | None = None
    metadata: dict[str, str] | None = None
    expires_at_ms: int | None = None


@dataclass(frozen=True, slots=True)
class ReverseBody:
    points_hundredths: int | None
    reason: str | None


@dataclass(frozen=True, slots=True)
class PendingBody:
    customer_id: str
    points_hundredths: int
    release_at_ms: int
    reason: str | None
    reference: str | None
    metadata: dict[str, str] | None
    expires_at_ms: int | None


def parse_adjust_body(raw: dict[str, msgspec.Raw]) -> AdjustBody:
    """The adjust body's fields, checked exactly; the delta's error comes first, as the seed's
    message is about it."""
    errors: list[FieldError] = []
    delta = _delta(raw.get("delta"), errors)
    customer_id = _customer_id(raw, errors)
    reason = fields.optional_string(raw.get("reason"), "reason", REASON_MAX, errors)
    reference = fields.reference(raw.get("reference"), errors)
    metadata = parse_metadata(raw.get("metadata"), errors)
    expires_at = fields.timestamp(raw.get("expires_at"), "expires_at", errors, now_ms())
    if expires_at is not None and delta is not None and delta < 0:
        errors.append(FieldError("expires_at", "expires_at is only allowed with a positive delta"))
    if errors or customer_id is None or delta is None:
        raise validation_error(errors)
    return AdjustBody(customer_id, delta, reason, reference, metadata, expires_at)


def parse_reverse_body(raw: dict[str, msgspec.Raw]) -> ReverseBody:
    errors: list[FieldError] = []
    amount = None
    if not fields.is_null(raw.get("points")):
        amount = fields.positive_points(raw.get("points"), "points", errors)
    reason = fields.optional_string(raw.get("reason"), "reason", REASON_MAX, errors)
    if errors:
        raise validation_error(errors)
    return ReverseBody(amount, reason)


def parse_pending_body(raw: dict[str, msgspec.Raw]) -> PendingBody:
    errors: list[FieldError] = []
    customer_id = _customer_id(raw, errors)
    amount = fields.positive_points(raw.get("points"), "points", errors)
    release_at = None
    if fields.is_null(raw.get("release_at")):
        errors.append(FieldError("release_at", "release_at is required"))
    else:
        release_at = fields.timestamp(raw.get("release_at"), "release_at", errors)
    reason = fields.optional_string(raw.get("reason"), "reason", REASON_MAX, errors)
    reference = fields.reference(raw.get("reference"), errors)
    metadata = parse_metadata(raw.get("metadata"), errors)
    expires_at = fields.timestamp(
        raw.get("expires_at"), "expires_at", errors, max(now_ms(), release_at or 0)
    )
    if errors or customer_id is None or amount is None or release_at is None:
        raise validation_error(errors)
    return PendingBody(customer_id, amount, release_at, reason, reference, metadata, expires_at)


def _customer_id(raw: dict[str, msgspec.Raw], errors: list[FieldError]) -> str | None:
    customer_id = _string(raw.get("customer_id"))
    if customer_id is None or not 1 <= len(customer_id) <= CUSTOMER_ID_MAX:
        message = f"customer_id must be a non-empty string of at most {CUSTOMER_ID_MAX} characters"
        if "customer_id" not in raw:
            message = "customer_id is required"
        errors.append(FieldError("customer_id", message))
        return None
    return customer_id


def _string(raw: msgspec.Raw | None) -> str | None:
    if raw is None:
        return None
    try:
        return decode_field(raw, str)
    except msgspec.ValidationError:
        return None


def _delta(raw: msgspec.Raw | None, errors: list[FieldError]) -> int | None:
    """The delta in hundredths; each way of being wrong has its own message, and only a zero
    keeps the seed's exact DELTA_MESSAGE."""
    if raw is None:
        errors.append(FieldError("delta", "delta is required"))
        return None
    text = bytes(raw)
    try:
        hundredths = points.parse_json_number(text)
    except PointsTooLarge as error:
        errors.append(FieldError("delta", f"{_DELTA_RANGE}; {error}"))
        return None
    except PointsError as error:
        errors.append(FieldError("delta", f"delta {error}"))
        return None
    if hundredths == 0:
        errors.append(FieldError("delta", DELTA_MESSAGE))
        return None
    if abs(hundredths) > DELTA_MAX_HUNDREDTHS:
        errors.append(FieldError("delta", f"{_DELTA_RANGE}; {text.decode()} is too large"))
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


def _full_fields(row: AdjustmentRow) -> tuple[object, ...]:
    return (
        *_seed_fields(row),
        row.created_by,
        row.customer_id,
        row.type,
        row.reference,
        stored_metadata(row.metadata),
        render_optional(row.expires_at_ms),
        row.reverses,
        row.pending_id,
        row.hash or "",
    )


def adjustment(row: AdjustmentRow) -> Adjustment:
    return Adjustment(*_full_fields(row))  # type: ignore[arg-type]


def adjustment_detail(row: AdjustmentRow, reversed_hundredths: int) -> AdjustmentDetail:
    return AdjustmentDetail(*_full_fields(row), _points(reversed_hundredths))  # type: ignore[arg-type, call-arg]


def balance(row: BalanceRow) -> Balance:
    next_expiration = None
    if row.next_expiration_ms is not None and row.next_expiration_hundredths is not None:
        next_expiration = NextExpiration(
            _points(row.next_expiration_hundredths), render(row.next_expiration_ms)
        )
    return Balance(
        row.customer_id,
        _points(row.balance_hundredths),
        render_optional(row.updated_at_ms),
        _points(row.pending_hundredths),
        next_expiration,
    )


def expiration(row: LotRow) -> Expiration:
    return Expiration(
        row.adjustment_id, _points(row.remaining_hundredths), render(row.expires_at_ms)
    )


def pending(row: PendingRow) -> Pending:
    return Pending(
        row.id,
        row.customer_id,
        _points(row.points_hundredths),
        row.reason,
        row.reference,
        stored_metadata(row.metadata),
        render_optional(row.expires_at_ms),
        render(row.release_at_ms),
        row.status,  # type: ignore[arg-type]
        row.adjustment_id,
        render(row.created_at_ms),
        render(row.updated_at_ms),
    )
