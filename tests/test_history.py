"""GET /admin/loyalty/points/{id} and .../history, on SQLite and PostgreSQL."""

from __future__ import annotations

import itertools
import time
import uuid
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import httpx
import pytest

from tests.support import (
    ADJ_ID,
    ADJUSTMENT_FIELDS,
    BAD_PAGING,
    TIMESTAMP,
    Backend,
    adjust,
    new_customer,
    paging_id,
)

# Without pending points or expiring credits, the balance's own additions are empty.
NOTHING_PENDING = {"pending": 0, "next_expiration": None}
GTE = "created_at[gte]"
LTE = "created_at[lte]"


def unknown_id() -> str:
    return f"cus_nobody_{uuid.uuid4().hex[:16]}"


def balance(api: httpx.Client, customer_id: str) -> dict[str, Any]:
    response = api.get(f"/admin/loyalty/points/{customer_id}")
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def history(api: httpx.Client, customer_id: str, **params: Any) -> dict[str, Any]:
    response = api.get(f"/admin/loyalty/points/{customer_id}/history", params=params)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def history_status(api: httpx.Client, customer_id: str, **params: Any) -> httpx.Response:
    return api.get(f"/admin/loyalty/points/{customer_id}/history", params=params)


def assert_error(response: httpx.Response, status: int, kind: str) -> None:
    assert response.status_code == status, response.text
    assert response.json()["type"] == kind


def customer_with(api: httpx.Client, *deltas: int, pause_s: float = 0.0) -> str:
    """A new customer with one adjustment per delta, reasons r0, r1, ..."""
    customer_id: str = new_customer(api)["id"]
    for index, delta in enumerate(deltas):
        if pause_s and index:
            time.sleep(pause_s)
        response = adjust(api, customer_id, delta, f"r{index}")
        assert response.status_code == 200, response.text
    return customer_id


def shifted(timestamp: str, ms: int) -> str:
    """The timestamp moved by `ms` milliseconds, in the service's own format."""
    moment = datetime.strptime(timestamp, "%Y-%m-%dT%H:%M:%S.%fZ") + timedelta(milliseconds=ms)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


# --- GET /admin/loyalty/points/{id} ------------------------------------------------------


def test_balance_of_a_customer_without_adjustments_is_zero(api: httpx.Client) -> None:
    """Before any adjustment the balance is exactly 0 and updated_at is null."""
    customer = new_customer(api)
    response = api.get(f"/admin/loyalty/points/{customer['id']}")
    assert response.status_code == 200, response.text
    assert response.json() == {
        "customer_id": customer["id"],
        "balance": 0,
        "updated_at": None,
        **NOTHING_PENDING,
    }
    assert b'"balance":0,' in response.content


def test_balance_follows_the_last_adjustment(api: httpx.Client) -> None:
    """After adjustments the balance is their sum and updated_at is the last one's time."""
    customer_id = customer_with(api, 100, -30, 5)
    last = adjust(api, customer_id, 25).json()
    body = balance(api, customer_id)
    assert body == {
        "customer_id": customer_id,
        "balance": 100,
        "updated_at": last["updated_at"],
        **NOTHING_PENDING,
    }
    assert TIMESTAMP.match(body["updated_at"])


def test_balance_of_an_unknown_customer_is_404(api: httpx.Client) -> None:
    """An unknown customer is 404 not_found, with the seed's message."""
    missing = unknown_id()
    response = api.get(f"/admin/loyalty/points/{missing}")
    assert_error(response, 404, "not_found")
    assert response.json()["message"] == f"Customer with id: {missing} was not found"


def test_reading_changes_nothing(api: httpx.Client) -> None:
    """Reading the balance and the history many times records nothing and changes nothing."""
    customer_id = customer_with(api, 10, 20)
    before_balance = balance(api, customer_id)
    before_history = history(api, customer_id)
    for _ in range(15):
        assert balance(api, customer_id) == before_balance
        history(api, customer_id, order="created_at")
    after_history = history(api, customer_id)
    assert after_history == before_history
    assert after_history["count"] == 2
    assert (
        balance(api, customer_id)
        == before_balance
        == {
            "customer_id": customer_id,
            "balance": 30,
            "updated_at": before_history["adjustments"][0]["created_at"],
            **NOTHING_PENDING,
        }
    )


def test_empty_customer_has_an_empty_history(api: httpx.Client) -> None:
    """A customer without adjustments has history [] with count 0."""
    customer = new_customer(api)
    assert history(api, customer["id"]) == {
        "adjustments": [],
        "count": 0,
        "offset": 0,
        "limit": 20,
    }


# --- GET /admin/loyalty/points/{id}/history ----------------------------------------------


def test_history_is_newest_first_by_default(api: httpx.Client) -> None:
    """Without order the history is newest first, with the list envelope and item shape."""
    customer_id = customer_with(api, 1, 2, 3, 4)
    body = history(api, customer_id)
    assert set(body) == {"adjustments", "count", "offset", "limit"}
    assert body["count"] == 4
    assert body["offset"] == 0
    assert body["limit"] == 20
    items = body["adjustments"]
    assert [item["delta"] for item in items] == [4, 3, 2, 1]
    assert [item["reason"] for item in items] == ["r3", "r2", "r1", "r0"]
    assert [item["balance_after"] for item in items] == [10, 6, 3, 1]
    for item in items:
        assert set(item) == ADJUSTMENT_FIELDS
        assert item["created_by"].startswith("user_")
        assert ADJ_ID.match(item["id"])
        assert TIMESTAMP.match(item["created_at"])


def test_order_parameter(api: httpx.Client) -> None:
    """order=created_at is oldest first; order=-created_at is newest first (the default)."""
    customer_id = customer_with(api, 1, 2, 3)
    oldest_first = history(api, customer_id, order="created_at")["adjustments"]
    newest_first = history(api, customer_id, order="-created_at")["adjustments"]
    default = history(api, customer_id)["adjustments"]
    assert [item["delta"] for item in oldest_first] == [1, 2, 3]
    assert newest_first == default == list(reversed(oldest_first))


@pytest.mark.parametrize(
    "order", ["", "foo", "created", "+created_at", "-id", "id", "CREATED_AT", "created_at,id"]
)
def test_a_bad_order_is_400(api: httpx.Client, order: str) -> None:
    """An order other than created_at or -created_at is 400 invalid_data."""
    customer_id = customer_with(api, 1)
    assert_error(history_status(api, customer_id, order=order), 400, "invalid_data")


def test_paging_walks_the_history(api: httpx.Client) -> None:
    """limit/offset pages partition the history; count is always the total."""
    deltas = list(range(1, 24))
    customer_id = customer_with(api, *deltas)
    default_page = history(api, customer_id)
    assert default_page["limit"] == 20
    assert len(default_page["adjustments"]) == 20
    assert default_page["count"] == 23

    walked: list[dict[str, Any]] = []
    for offset in range(0, 30, 5):
        body = history(api, customer_id, order="created_at", limit=5, offset=offset)
        assert body["count"] == 23
        assert body["limit"] == 5
        assert body["offset"] == offset
        walked.extend(body["adjustments"])
    assert [item["delta"] for item in walked] == deltas
    assert len({item["id"] for item in walked}) == 23

    newest = history(api, customer_id, limit=2, offset=1)["adjustments"]
    assert [item["delta"] for item in newest] == [22, 21]
    everything = history(api, customer_id, limit=100)
    assert len(everything["adjustments"]) == 23
    beyond = history(api, customer_id, offset=23)
    assert beyond["adjustments"] == []
    assert beyond["count"] == 23


@pytest.mark.parametrize("params", BAD_PAGING, ids=paging_id)
def test_bad_paging_is_400(api: httpx.Client, params: dict[str, str]) -> None:
    """limit outside 1..100, offset below 0 or non-integers are 400 invalid_data."""
    customer_id = customer_with(api, 1)
    assert_error(history_status(api, customer_id, **params), 400, "invalid_data")


def test_ids_increase_and_created_at_never_decreases(api: httpx.Client) -> None:
    """Oldest first, ids strictly increase and created_at never decreases (invariant 3)."""
    customer_id = customer_with(api, *([5] * 15))
    items = history(api, customer_id, order="created_at", limit=100)["adjustments"]
    assert len(items) == 15
    for earlier, later in itertools.pairwise(items):
        assert earlier["id"] < later["id"]
        assert earlier["created_at"] <= later["created_at"]
    assert [item["balance_after"] for item in items] == [5 * n for n in range(1, 16)]


def test_last_item_balance_after_is_the_balance(api: httpx.Client) -> None:
    """The newest adjustment's balance_after equals the balance, and chains to it from 0."""
    customer_id = customer_with(api, 100, -40, 7, -2, 1000)
    items = history(api, customer_id, order="created_at")["adjustments"]
    assert items[-1]["balance_after"] == balance(api, customer_id)["balance"] == 1065
    running = 0
    for item in items:
        running += item["delta"]
        assert item["balance_after"] == running


def test_created_at_filters_are_inclusive(api: httpx.Client) -> None:
    """created_at[gte] and created_at[lte] include their boundaries; count follows the filter."""
    customer_id = customer_with(api, 1, 2, 3, 4, 5, pause_s=0.005)
    items = history(api, customer_id, order="created_at")["adjustments"]
    stamps = [item["created_at"] for item in items]
    second, fourth = stamps[1], stamps[3]

    def filtered(**params: str) -> dict[str, Any]:
        return history(api, customer_id, order="created_at", **params)

    def expect(low: str | None, high: str | None) -> list[int]:
        return [
            item["delta"]
            for item in items
            if (low is None or item["created_at"] >= low)
            and (high is None or item["created_at"] <= high)
        ]

    body = filtered(**{GTE: second})
    assert [item["delta"] for item in body["adjustments"]] == expect(second, None)
    assert body["count"] == len(expect(second, None))
    assert 2 in [item["delta"] for item in body["adjustments"]]

    body = filtered(**{LTE: fourth})
    assert [item["delta"] for item in body["adjustments"]] == expect(None, fourth)
    assert body["count"] == len(expect(None, fourth))
    assert 4 in [item["delta"] for item in body["adjustments"]]

    body = filtered(**{GTE: second, LTE: fourth})
    assert [item["delta"] for item in body["adjustments"]] == expect(second, fourth)
    assert body["count"] == len(expect(second, fourth))
    assert {2, 3, 4} <= {item["delta"] for item in body["adjustments"]}

    # A window of exactly one instant holds the adjustments made at that instant.
    body = filtered(**{GTE: stamps[2], LTE: stamps[2]})
    assert [item["delta"] for item in body["adjustments"]] == expect(stamps[2], stamps[2])
    assert 3 in [item["delta"] for item in body["adjustments"]]

    # The same filter in newest-first order, paged: count is still the filtered total.
    page = history(api, customer_id, limit=1, **{GTE: second, LTE: fourth})
    assert page["count"] == len(expect(second, fourth))
    assert [item["delta"] for item in page["adjustments"]] == [expect(second, fourth)[-1]]

    # One millisecond past either end excludes that end.
    after_first = shifted(stamps[0], 1)
    assert [item["delta"] for item in filtered(**{GTE: after_first})["adjustments"]] == expect(
        after_first, None
    )
    assert 1 not in [item["delta"] for item in filtered(**{GTE: after_first})["adjustments"]]


def test_created_at_filters_accept_other_iso_forms(api: httpx.Client) -> None:
    """A boundary written with a UTC offset or without Z means the same instant."""
    customer_id = customer_with(api, 1, 2, 3, pause_s=0.005)
    items = history(api, customer_id, order="created_at")["adjustments"]
    boundary = items[1]["created_at"]
    moment = datetime.strptime(boundary, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
    in_plus_two = moment.astimezone(timezone(timedelta(hours=2))).isoformat(timespec="milliseconds")
    as_offset_zero = boundary.replace("Z", "+00:00")
    expected = [item["delta"] for item in items if item["created_at"] >= boundary]
    for form in (boundary, in_plus_two, as_offset_zero):
        body = history(api, customer_id, order="created_at", **{GTE: form})
        assert [item["delta"] for item in body["adjustments"]] == expected, form


def test_filters_outside_the_ledger_give_nothing(api: httpx.Client) -> None:
    """A gte in the future or an lte in the past matches nothing: [] and count 0."""
    customer_id = customer_with(api, 1, 2)
    for params in (
        {GTE: "2999-01-01T00:00:00.000Z"},
        {LTE: "2000-01-01T00:00:00.000Z"},
        {GTE: "2999-01-01T00:00:00Z", LTE: "2000-01-01T00:00:00Z"},
    ):
        body = history(api, customer_id, **params)
        assert body["adjustments"] == []
        assert body["count"] == 0
    wide = history(api, customer_id, **{GTE: "2000-01-01T00:00:00Z", LTE: "2999-01-01T00:00:00Z"})
    assert wide["count"] == 2


@pytest.mark.parametrize(
    "value",
    [
        "yesterday",
        "not-a-date",
        "2026-13-01T00:00:00Z",
        "2026-02-30",
        "12345",
        "",
        "2026-02-18T25:00",
    ],
)
@pytest.mark.parametrize("name", [GTE, LTE])
def test_an_unparseable_date_is_400(api: httpx.Client, name: str, value: str) -> None:
    """A created_at filter that is not an ISO 8601 date is 400 invalid_data."""
    customer_id = customer_with(api, 1)
    assert_error(history_status(api, customer_id, **{name: value}), 400, "invalid_data")


def test_history_of_an_unknown_customer_is_404(api: httpx.Client) -> None:
    """An unknown customer's history is 404 not_found, with or without parameters."""
    missing = unknown_id()
    response = history_status(api, missing)
    assert_error(response, 404, "not_found")
    assert response.json()["message"] == f"Customer with id: {missing} was not found"
    assert_error(history_status(api, missing, order="created_at", limit=5), 404, "not_found")


def test_history_is_per_customer(api: httpx.Client) -> None:
    """One customer's history never shows another's adjustments."""
    first = customer_with(api, 1, 2)
    second = customer_with(api, 30)
    assert [item["delta"] for item in history(api, first)["adjustments"]] == [2, 1]
    assert [item["delta"] for item in history(api, second)["adjustments"]] == [30]


# --- credentials and scopes --------------------------------------------------------------


def test_reads_need_credentials(anon: httpx.Client) -> None:
    """Without a token the balance and the history are 401 unauthorized."""
    assert_error(anon.get("/admin/loyalty/points/cus_x"), 401, "unauthorized")
    assert_error(anon.get("/admin/loyalty/points/cus_x/history"), 401, "unauthorized")


def test_reads_need_loyalty_read(api: httpx.Client, backend: Backend) -> None:
    """A token without loyalty:read is 403 forbidden on both reads, naming the scope."""
    customer_id = customer_with(api, 1)
    with backend.client(backend.user_token("loyalty:write", "customers:read")) as writer:
        for path in (
            f"/admin/loyalty/points/{customer_id}",
            f"/admin/loyalty/points/{customer_id}/history",
        ):
            response = writer.get(path)
            assert_error(response, 403, "forbidden")
            assert "loyalty:read" in response.json()["message"]
