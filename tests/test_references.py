"""POST /admin/loyalty/points/adjust with `reference`, `metadata` and `expires_at` (SPEC 7.1):
each field's limits, a reference unique per customer among adjustments and pending points,
the full adjustment object in the history, and the adjust response's seed shape. On SQLite
and PostgreSQL, against the session's server."""

from __future__ import annotations

import uuid
from decimal import Decimal
from typing import Any

import httpx
import pytest

from tests.support import (
    ADJUST_PATH,
    ADJUSTMENT_FIELDS,
    HASH,
    PENDING_PATH,
    PND_ID,
    Backend,
    adjust,
    adjust_with,
    adjustment_of,
    assert_error,
    full_history,
    iso_in,
    new_customer,
    ok,
    post_json,
    user_id,
)

VISIBLE_ASCII = "".join(chr(code) for code in range(0x21, 0x7F))


def ref(label: str = "order") -> str:
    return f"{label}-{uuid.uuid4().hex[:12]}"


def ledger(api: httpx.Client, customer_id: str) -> tuple[Any, ...]:
    """Everything an adjustment would change: the balance and the whole history."""
    balance = ok(api.get(f"/admin/loyalty/points/{customer_id}"))
    return balance["balance"], balance["updated_at"], full_history(api, customer_id)


@pytest.fixture
def funded(api: httpx.Client) -> str:
    """A customer holding 100 points."""
    customer_id: str = new_customer(api)["id"]
    assert adjust(api, customer_id, 100).status_code == 200
    return customer_id


_REFERENCE_CHARS = (
    "reference must be visible ASCII characters only: no spaces, no control or non-ASCII characters"
)
_NOT_STRING = "metadata values must be strings (the value of 'note' is not)"
_NOT_OBJECT = "metadata must be a JSON object whose values are strings, or null"
_NOT_DATE = "expires_at must be an ISO 8601 date-time"
# (what, the field blamed, the body's fields, the message that says why on its own)
INVALID: list[tuple[str, str, dict[str, Any], str]] = [
    (
        "reference 129 characters",
        "reference",
        {"reference": "r" * 129},
        "reference must be at most 128 characters",
    ),
    (
        "reference empty",
        "reference",
        {"reference": ""},
        "reference must not be empty (send null for none)",
    ),
    ("reference with a space", "reference", {"reference": "order 1"}, _REFERENCE_CHARS),
    ("reference non-ASCII", "reference", {"reference": "commande-é"}, _REFERENCE_CHARS),
    ("reference with a tab", "reference", {"reference": "order\t1"}, _REFERENCE_CHARS),
    (
        "reference a number",
        "reference",
        {"reference": 12345},
        "reference must be a string of 1 to 128 visible ASCII characters, or null",
    ),
    (
        "metadata 17 keys",
        "metadata",
        {"metadata": {f"k{i}": "v" for i in range(17)}},
        "metadata must have at most 16 keys, not 17",
    ),
    (
        "metadata key 41 characters",
        "metadata",
        {"metadata": {"k" * 41: "v"}},
        "metadata keys must be 1 to 40 characters long",
    ),
    (
        "metadata key empty",
        "metadata",
        {"metadata": {"": "v"}},
        "metadata keys must be 1 to 40 characters long",
    ),
    (
        "metadata value 501 characters",
        "metadata",
        {"metadata": {"note": "v" * 501}},
        "metadata values must be at most 500 characters (the value of 'note' is longer)",
    ),
    ("metadata value a number", "metadata", {"metadata": {"note": 5}}, _NOT_STRING),
    ("metadata value a boolean", "metadata", {"metadata": {"note": True}}, _NOT_STRING),
    ("metadata value null", "metadata", {"metadata": {"note": None}}, _NOT_STRING),
    ("metadata value an object", "metadata", {"metadata": {"note": {"a": "b"}}}, _NOT_STRING),
    ("metadata a list", "metadata", {"metadata": ["a", "b"]}, _NOT_OBJECT),
    ("metadata a string", "metadata", {"metadata": "note"}, _NOT_OBJECT),
    (
        "expires_at in the past",
        "expires_at",
        {"expires_at": iso_in(-3600)},
        "expires_at must be in the future",
    ),
    ("expires_at unparseable", "expires_at", {"expires_at": "next tuesday"}, _NOT_DATE),
    ("expires_at month 13", "expires_at", {"expires_at": "2031-13-01T00:00:00.000Z"}, _NOT_DATE),
    ("expires_at year 10000", "expires_at", {"expires_at": "10000-01-01T00:00:00.000Z"}, _NOT_DATE),
    ("expires_at a number", "expires_at", {"expires_at": 1893456000}, _NOT_DATE),
    (
        "expires_at with a debit",
        "expires_at",
        {"delta": -5, "expires_at": iso_in(86400)},
        "expires_at is only allowed with a positive delta",
    ),
]


@pytest.mark.parametrize(
    ("field", "extra", "message"), [c[1:] for c in INVALID], ids=[c[0] for c in INVALID]
)
def test_invalid_field_is_400_naming_it_and_records_nothing(
    api: httpx.Client, funded: str, field: str, extra: dict[str, Any], message: str
) -> None:
    """Each out-of-rule reference, metadata or expires_at is 400 invalid_data naming that
    field, with a message that says precisely why; the balance and the history are as
    before."""
    before = ledger(api, funded)
    body = {"customer_id": funded, "delta": 10, **extra}
    response = post_json(api, ADJUST_PATH, body)
    assert_error(response, 400, "invalid_data", field)
    assert response.json()["message"] == message
    assert ledger(api, funded) == before


def test_the_limits_themselves_are_accepted(api: httpx.Client, funded: str) -> None:
    """A 128-character reference of every visible ASCII character, 16 metadata keys of 40
    characters with 500-character values, and null metadata are accepted and kept as sent."""
    reference = (VISIBLE_ASCII + VISIBLE_ASCII)[:128]
    metadata = {f"{i:02d}".ljust(40, "k"): chr(0x41 + i) * 500 for i in range(16)}
    first = adjust_with(api, funded, 1, reference=reference, metadata=metadata)
    second = adjust_with(api, funded, 1, reference=ref(), metadata=None)
    third = adjust_with(api, funded, 1, reference="x")
    items = {item["id"]: item for item in full_history(api, funded)}
    assert items[first["id"]]["reference"] == reference
    assert items[first["id"]]["metadata"] == metadata
    assert items[second["id"]]["metadata"] is None
    assert items[third["id"]]["reference"] == "x"
    assert items[third["id"]]["metadata"] is None


def test_metadata_values_keep_unicode(api: httpx.Client, funded: str) -> None:
    """Metadata values are any strings (the visible-ASCII rule is the reference's alone)."""
    metadata = {"store": "Zürich — 東京", "empty": ""}
    made = adjust_with(api, funded, 1, metadata=metadata)
    assert adjustment_of(api, made["id"])["metadata"] == metadata


def test_an_expires_at_with_an_offset_is_the_same_instant_in_utc(
    api: httpx.Client, funded: str
) -> None:
    """expires_at written with a UTC offset is kept as that instant, rendered in UTC."""
    made = adjust_with(api, funded, 1, expires_at="2099-01-01T02:00:00+02:00")
    assert adjustment_of(api, made["id"])["expires_at"] == "2099-01-01T00:00:00.000Z"


def test_a_second_use_of_a_reference_is_409_naming_the_first(
    api: httpx.Client, funded: str
) -> None:
    """The same reference again for the same customer (even with another delta or sign) is
    409 conflict whose message names the existing adjustment's id; nothing is recorded."""
    reference = ref()
    first = adjust_with(api, funded, 5, reference=reference)
    before = ledger(api, funded)
    for delta in (5, 7, -1):
        body = {"customer_id": funded, "delta": delta, "reference": reference}
        error = assert_error(post_json(api, ADJUST_PATH, body), 409, "conflict")
        assert first["id"] in error["message"], error
    assert ledger(api, funded) == before


def test_the_same_reference_for_another_customer_is_fine(api: httpx.Client) -> None:
    """A reference is unique per customer: two customers may both use it."""
    reference = ref()
    one, two = new_customer(api)["id"], new_customer(api)["id"]
    first = adjust_with(api, one, 5, reference=reference)
    second = adjust_with(api, two, 5, reference=reference)
    assert first["id"] != second["id"]
    assert adjustment_of(api, second["id"])["reference"] == reference


def test_references_differ_by_case(api: httpx.Client, funded: str) -> None:
    """References are compared exactly: "ORDER-x" and "order-x" are two references."""
    reference = ref("order")
    adjust_with(api, funded, 1, reference=reference)
    adjust_with(api, funded, 1, reference=reference.upper())


def test_a_reference_held_by_a_pending_is_409_naming_it(api: httpx.Client, funded: str) -> None:
    """A reference of the customer's pending points cannot be used by an adjustment: 409
    naming the pending's id, nothing recorded."""
    reference = ref("hold")
    body = {
        "customer_id": funded,
        "points": 10,
        "reference": reference,
        "release_at": iso_in(86400),
    }
    pending = ok(post_json(api, PENDING_PATH, body))["pending"]
    assert PND_ID.match(pending["id"])
    before = ledger(api, funded)
    adjust_body = {"customer_id": funded, "delta": 10, "reference": reference}
    error = assert_error(post_json(api, ADJUST_PATH, adjust_body), 409, "conflict")
    assert pending["id"] in error["message"], error
    assert ledger(api, funded) == before


def test_history_items_carry_the_full_adjustment(
    api: httpx.Client, backend: Backend, funded: str
) -> None:
    """The history route's items are the whole adjustment object: the seed's fields plus
    customer_id, type, reference, metadata, expires_at, reverses, pending_id, created_by (the
    caller) and a hash; GET /admin/loyalty/adjustments/{id} is the same plus reversed_points."""
    expires_at = iso_in(30 * 86400)
    made = adjust_with(
        api,
        funded,
        12.5,
        reason="Order #1001",
        reference=ref(),
        metadata={"order_id": "order_1001", "channel": "web"},
        expires_at=expires_at,
    )
    items = full_history(api, funded)
    assert all(set(item) == ADJUSTMENT_FIELDS for item in items), items
    item = items[-1]
    assert item["id"] == made["id"]
    assert item["customer_id"] == funded
    assert item["type"] == "adjustment"
    assert item["delta"] == Decimal("12.5")
    assert item["balance_after"] == Decimal("112.5")
    assert item["reason"] == "Order #1001"
    assert item["metadata"] == {"order_id": "order_1001", "channel": "web"}
    assert item["expires_at"] == expires_at
    assert item["reverses"] is None
    assert item["pending_id"] is None
    assert item["created_by"] == user_id(backend.server)
    assert item["created_at"] == made["updated_at"]
    assert HASH.match(item["hash"]), item["hash"]
    assert len({i["hash"] for i in items}) == len(items)

    plain = items[0]
    assert (plain["reference"], plain["metadata"], plain["expires_at"]) == (None, None, None)

    single = adjustment_of(api, made["id"])
    assert set(single) == ADJUSTMENT_FIELDS | {"reversed_points"}
    assert single["reversed_points"] == 0
    assert {k: v for k, v in single.items() if k != "reversed_points"} == item


def test_adjustments_made_by_another_user_name_that_user(backend: Backend, funded: str) -> None:
    """created_by is the user whose token made the adjustment."""
    email, token = backend.new_user("loyalty:read", "loyalty:write")
    with backend.client(token) as other:
        made = adjust_with(other, funded, 3)
        assert adjustment_of(other, made["id"])["created_by"] == user_id(backend.server, email)


def test_the_adjust_response_keeps_the_seed_shape(api: httpx.Client, funded: str) -> None:
    """With every new field given, the adjust response is still its four fields, and
    include_history items still the seed's five."""
    body = {
        "customer_id": funded,
        "delta": 1,
        "reference": ref(),
        "metadata": {"a": "b"},
        "expires_at": iso_in(86400),
    }
    plain = ok(post_json(api, ADJUST_PATH, body))
    assert set(plain) == {"id", "customer_id", "balance_after", "updated_at"}
    with_history = ok(
        post_json(api, ADJUST_PATH, {**body, "reference": ref()}, None, include_history="true")
    )
    assert set(with_history) == {"id", "customer_id", "balance_after", "updated_at", "history"}
    for item in with_history["history"]:
        assert set(item) == {"id", "delta", "reason", "balance_after", "created_at"}
