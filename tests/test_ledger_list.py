"""The whole ledger and points in time (SPEC 7.1 and 7.5): GET /admin/loyalty/adjustments
paged by cursor and filtered, GET /admin/loyalty/adjustments/{id}, the balance `?as_of=`;
and the scopes of every route of section 7. On SQLite and PostgreSQL, against the session's
server: every list here is narrowed to what the test made (its customers, or a time window
that begins with its first adjustment)."""

from __future__ import annotations

import time
import uuid
from datetime import timedelta, timezone
from decimal import Decimal
from typing import Any

import httpx
import pytest

from tests.support import (
    ADJUSTMENT_FIELDS,
    ADJUSTMENTS_PATH,
    UNKNOWN_ADJUSTMENT,
    UNKNOWN_PENDING,
    Backend,
    adjust_with,
    adjustment_of,
    assert_error,
    balance_body,
    iso,
    iso_in,
    new_customer,
    ok,
    parse_time,
    reverse,
    whole_ledger,
)


def make(api: httpx.Client, customers: int, per_customer: int) -> tuple[list[str], list[Any]]:
    """New customers with `per_customer` credits each, made round-robin: (their ids, the
    adjust responses in the order made)."""
    ids = [new_customer(api)["id"] for _ in range(customers)]
    made = [adjust_with(api, c, n + 1) for n in range(per_customer) for c in ids]
    return ids, made


def test_cursor_pages_cover_the_window_once_newest_first(api: httpx.Client) -> None:
    """25 adjustments over 3 customers, read 7 at a time by cursor from the moment of the
    first: every one exactly once, newest first, each customer's in descending id order,
    and the last page's next_cursor is null."""
    ids, made = make(api, 3, 8)
    extra = adjust_with(api, ids[0], 100)
    made.append(extra)
    since = made[0]["updated_at"]
    items = whole_ledger(api, {"created_at[gte]": since}, limit=7)
    assert all(set(item) == ADJUSTMENT_FIELDS for item in items)
    assert len(items) == len(made)
    assert [i["id"] for i in items if i["customer_id"] in ids] == [i["id"] for i in items]
    assert sorted(i["id"] for i in items) == sorted(m["id"] for m in made)
    created = [parse_time(i["created_at"]) for i in items]
    assert created == sorted(created, reverse=True)
    for customer_id in ids:
        own = [i["id"] for i in items if i["customer_id"] == customer_id]
        assert own == sorted(own, reverse=True)
    assert items[0]["id"] == extra["id"]

    first = ok(api.get(ADJUSTMENTS_PATH, params={"limit": "7", "created_at[gte]": since}))
    assert len(first["adjustments"]) == 7
    assert isinstance(first["next_cursor"], str) and first["next_cursor"]
    default = ok(api.get(ADJUSTMENTS_PATH, params={"created_at[gte]": since}))
    assert [i["id"] for i in default["adjustments"]] == [i["id"] for i in items[:20]]


def test_a_cursor_page_is_stable_while_new_adjustments_arrive(api: httpx.Client) -> None:
    """Adjustments made after a page was read appear neither in the next pages nor twice."""
    ids, made = make(api, 2, 5)
    customer_id = ids[0]
    params = {"customer_id": customer_id, "limit": "2"}
    page = ok(api.get(ADJUSTMENTS_PATH, params=params))
    seen = [i["id"] for i in page["adjustments"]]
    adjust_with(api, customer_id, 1)
    while page["next_cursor"] is not None:
        page = ok(api.get(ADJUSTMENTS_PATH, params={**params, "cursor": page["next_cursor"]}))
        seen += [i["id"] for i in page["adjustments"]]
    expected = [m["id"] for m in made if m["customer_id"] == customer_id]
    assert seen == sorted(expected, reverse=True)


def test_filters_narrow_the_ledger(api: httpx.Client) -> None:
    """customer_id, type, reference and a created_at window, alone and together."""
    ids, made = make(api, 2, 3)
    one, two = ids
    reference = f"order-{uuid.uuid4().hex[:10]}"
    tagged = adjust_with(api, two, 9, reference=reference)
    reversal = ok(reverse(api, tagged["id"], 4))

    mine = whole_ledger(api, {"customer_id": one})
    assert [i["id"] for i in mine] == sorted(
        (m["id"] for m in made if m["customer_id"] == one), reverse=True
    )
    assert {i["customer_id"] for i in mine} == {one}

    by_type = whole_ledger(api, {"customer_id": two, "type": "reversal"})
    assert [i["id"] for i in by_type] == [reversal["id"]]
    assert by_type[0]["reverses"] == tagged["id"]
    assert len(whole_ledger(api, {"customer_id": two, "type": "adjustment"})) == 4

    by_reference = whole_ledger(api, {"reference": reference})
    assert [i["id"] for i in by_reference] == [tagged["id"]]
    assert whole_ledger(api, {"reference": reference, "customer_id": one}) == []

    window = whole_ledger(
        api,
        {
            "customer_id": one,
            "created_at[gte]": made[2]["updated_at"],
            "created_at[lte]": made[4]["updated_at"],
        },
    )
    low, high = parse_time(made[2]["updated_at"]), parse_time(made[4]["updated_at"])
    assert window
    for entry in window:
        assert low <= parse_time(entry["created_at"]) <= high
    expected = [
        m["id"]
        for m in made
        if m["customer_id"] == one and low <= parse_time(m["updated_at"]) <= high
    ]
    assert sorted(i["id"] for i in window) == sorted(expected)
    future = iso_in(3600)
    assert whole_ledger(api, {"customer_id": one, "created_at[gte]": future}) == []


@pytest.mark.parametrize(
    "params",
    [
        {"cursor": "not-a-cursor"},
        {"cursor": ""},
        {"type": "refund"},
        {"limit": "0"},
        {"limit": "101"},
        {"limit": "ten"},
        {"created_at[gte]": "yesterday"},
        {"created_at[lte]": "2026-02-30T00:00:00.000Z"},
    ],
    ids=lambda p: "-".join(f"{k}={v}" for k, v in p.items()),
)
def test_bad_list_parameters_are_400(api: httpx.Client, params: dict[str, str]) -> None:
    assert_error(api.get(ADJUSTMENTS_PATH, params=params), 400, "invalid_data")


def test_one_adjustment_by_id(api: httpx.Client) -> None:
    """GET /admin/loyalty/adjustments/{id} is the list's object plus reversed_points; an
    unknown or malformed id is 404."""
    ids, _made = make(api, 1, 2)
    listed = whole_ledger(api, {"customer_id": ids[0]})
    for entry in listed:
        single = adjustment_of(api, entry["id"])
        assert single == {**entry, "reversed_points": 0}
    for missing in (UNKNOWN_ADJUSTMENT, "adj_", "nope", UNKNOWN_PENDING):
        assert_error(api.get(f"{ADJUSTMENTS_PATH}/{missing}"), 404, "not_found")


def test_balance_as_of_points_in_time(api: httpx.Client) -> None:
    """Before the first adjustment: 0 and null updated_at. At each adjustment's created_at:
    the balance after it. Between two: the earlier one's. Far ahead: today's balance. The
    plain balance is unchanged by asking."""
    customer_id = new_customer(api)["id"]
    steps = []
    for delta in (50, -20, 7.5):
        steps.append(adjust_with(api, customer_id, delta))
        time.sleep(0.02)  # distinct milliseconds
    first = parse_time(steps[0]["updated_at"])

    def as_of(moment: str) -> Any:
        body = balance_body(api, customer_id, as_of=moment)
        assert set(body) == {"customer_id", "balance", "updated_at", "as_of"}, body
        assert body["customer_id"] == customer_id
        return body["balance"], body["updated_at"]

    assert as_of(iso(first - timedelta(milliseconds=1))) == (0, None)
    assert as_of(iso(first - timedelta(days=365))) == (0, None)
    for step in steps:
        assert as_of(step["updated_at"]) == (step["balance_after"], step["updated_at"])
        later = iso(parse_time(step["updated_at"]) + timedelta(milliseconds=5))
        assert as_of(later) == (step["balance_after"], step["updated_at"])
    assert as_of(iso_in(86400)) == (Decimal("37.5"), steps[-1]["updated_at"])
    plain = balance_body(api, customer_id)
    assert plain["balance"] == Decimal("37.5")
    assert "as_of" not in plain


def test_as_of_with_an_offset_is_the_same_instant(api: httpx.Client) -> None:
    """as_of written with a UTC offset means that instant: one millisecond before an
    adjustment, written in UTC+02:00, does not count it; its own moment does."""
    customer_id = new_customer(api)["id"]
    made = adjust_with(api, customer_id, 8)
    local = parse_time(made["updated_at"]).astimezone(timezone(timedelta(hours=2)))
    before = (local - timedelta(milliseconds=1)).isoformat(timespec="milliseconds")
    at = local.isoformat(timespec="milliseconds")
    assert before.endswith("+02:00")
    assert balance_body(api, customer_id, as_of=before)["balance"] == 0
    assert balance_body(api, customer_id, as_of=at)["balance"] == 8


def test_as_of_for_a_customer_without_adjustments(api: httpx.Client) -> None:
    customer_id = new_customer(api)["id"]
    body = balance_body(api, customer_id, as_of=iso_in(0))
    assert (body["balance"], body["updated_at"]) == (0, None)


@pytest.mark.parametrize("value", ["yesterday", "", "2026-13-01T00:00:00.000Z", "1700000000"])
def test_a_bad_as_of_is_400(api: httpx.Client, value: str) -> None:
    customer_id = new_customer(api)["id"]
    response = api.get(f"/admin/loyalty/points/{customer_id}", params={"as_of": value})
    assert_error(response, 400, "invalid_data", "as_of")


def test_as_of_for_an_unknown_customer_is_404(api: httpx.Client) -> None:
    response = api.get("/admin/loyalty/points/nobody-here", params={"as_of": iso_in(0)})
    assert_error(response, 404, "not_found")


# --- scopes of the new routes -------------------------------------------------------------

WRITE_ROUTES = [
    ("POST", f"{ADJUSTMENTS_PATH}/{UNKNOWN_ADJUSTMENT}/reverse", {}),
    ("POST", "/admin/loyalty/pending", {"customer_id": "x", "points": 1, "release_at": "x"}),
    ("POST", f"/admin/loyalty/pending/{UNKNOWN_PENDING}/release", {}),
    ("POST", f"/admin/loyalty/pending/{UNKNOWN_PENDING}/void", {}),
    ("POST", "/admin/loyalty/points/bulk-adjust", {"adjustments": []}),
]
READ_ROUTES = [
    ("GET", ADJUSTMENTS_PATH, None),
    ("GET", f"{ADJUSTMENTS_PATH}/{UNKNOWN_ADJUSTMENT}", None),
    ("GET", f"/admin/loyalty/pending/{UNKNOWN_PENDING}", None),
    ("GET", "/admin/loyalty/points/{cid}/expirations", None),
    ("GET", "/admin/loyalty/points/{cid}/pending", None),
]


@pytest.fixture(scope="module")
def scoped_tokens(backend: Backend) -> dict[str, str]:
    """Tokens of users holding only loyalty:read, and only customers:read and
    customers:write."""
    return {
        "loyalty:read": backend.user_token("loyalty:read"),
        "customers": backend.user_token("customers:read", "customers:write"),
    }


SCOPED_ROUTES = [(*route, "loyalty:write") for route in WRITE_ROUTES] + [
    (*route, "loyalty:read") for route in READ_ROUTES
]


@pytest.mark.parametrize(
    ("method", "path", "body", "needs"),
    SCOPED_ROUTES,
    ids=[f"{route[0]} {route[1]}" for route in SCOPED_ROUTES],
)
def test_new_routes_need_their_scope(
    backend: Backend,
    api: httpx.Client,
    scoped_tokens: dict[str, str],
    method: str,
    path: str,
    body: Any,
    needs: str,
) -> None:
    """No token: 401. A token without the route's scope (loyalty:read for a write, the
    customer scopes alone for a read): 403 naming the scope, before any lookup or
    validation; nothing is recorded."""
    customer_id = new_customer(api)["id"]
    url = path.format(cid=customer_id)
    with httpx.Client(base_url=backend.server.base_url, timeout=30) as anonymous:
        response = anonymous.request(method, url, json=body)
        assert response.json() == {"type": "unauthorized", "message": "Authentication required"}
        assert response.status_code == 401
    lacking = scoped_tokens["loyalty:read" if needs == "loyalty:write" else "customers"]
    with backend.client(lacking) as client:
        error = assert_error(client.request(method, url, json=body), 403, "forbidden")
        assert needs in error["message"], error
    assert balance_body(api, customer_id)["updated_at"] is None
