"""Tamper evidence (SPEC invariant 8): each adjustment's hash links it to the previous one of
its customer, so editing, deleting or inserting a row breaks every later link.

hash = SHA-256 hex of (the previous adjustment's hash, or 64 zeros for the first) followed by
the canonical encoding of every other field: a JSON object with sorted keys, no spaces, points
as the API renders them and times as ISO 8601 strings. The encoding is part of the contract:
anyone can recompute a chain from the history route's output.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

import msgspec

from loyalty.ledger import points
from loyalty.ledger.repository import AdjustmentRow
from loyalty.timestamps import render, render_optional

GENESIS = "0" * 64
_sorted_json = msgspec.json.Encoder(order="sorted").encode
HASHED_FIELDS = (
    "balance_after",
    "created_at",
    "created_by",
    "customer_id",
    "delta",
    "expires_at",
    "id",
    "metadata",
    "pending_id",
    "reason",
    "reference",
    "reverses",
    "type",
)


def canonical(fields: Mapping[str, Any]) -> bytes:
    """The canonical encoding of an adjustment's API fields (exactly HASHED_FIELDS, as
    api_fields makes them): byte for byte `json.dumps(fields, sort_keys=True,
    separators=(",", ":"), ensure_ascii=False).encode()`, written by msgspec, which is
    several times faster."""
    return _sorted_json(fields)


def link(previous_hash: str | None, fields: Mapping[str, Any]) -> str:
    """The hash of an adjustment whose customer's previous adjustment has `previous_hash`."""
    return hashlib.sha256((previous_hash or GENESIS).encode() + _sorted_json(fields)).hexdigest()


def api_fields(
    *,
    id: str,
    customer_id: str,
    type: str,
    delta_hundredths: int,
    balance_after_hundredths: int,
    reason: str | None,
    reference: str | None,
    metadata: Mapping[str, str] | None,
    expires_at_ms: int | None,
    reverses: str | None,
    pending_id: str | None,
    created_by: str | None,
    created_at_ms: int,
) -> dict[str, Any]:
    """An adjustment's hashed fields as the API shows them, from stored values."""
    return {
        "id": id,
        "customer_id": customer_id,
        "type": type,
        "delta": points.render(delta_hundredths).decode(),
        "balance_after": points.render(balance_after_hundredths).decode(),
        "reason": reason,
        "reference": reference,
        "metadata": None if metadata is None else dict(metadata),
        "expires_at": render_optional(expires_at_ms),
        "reverses": reverses,
        "pending_id": pending_id,
        "created_by": created_by,
        "created_at": render(created_at_ms),
    }


def row_fields(row: AdjustmentRow, metadata: Mapping[str, str] | None) -> dict[str, Any]:
    """A stored adjustment's hashed fields (its metadata given decoded)."""
    return api_fields(
        id=row.id,
        customer_id=row.customer_id,
        type=row.type,
        delta_hundredths=row.delta_hundredths,
        balance_after_hundredths=row.balance_after_hundredths,
        reason=row.reason,
        reference=row.reference,
        metadata=metadata,
        expires_at_ms=row.expires_at_ms,
        reverses=row.reverses,
        pending_id=row.pending_id,
        created_by=row.created_by,
        created_at_ms=row.created_at_ms,
    )
