"""Pending points (SPEC 7.4, invariant 7): held outside the balance, released (by hand or by
the scheduler at release_at) into one `release` adjustment, or voided; each at most once,
even when two server processes' schedulers and a manual release meet at one moment. On
SQLite and PostgreSQL.

The file's servers tick every 0.2 s (LOYALTY_SCHEDULER_INTERVAL_SECONDS); waits poll and are
bounded, so a busy machine makes them slower, never wrong.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import httpx
import pytest

from tests.support import (
    ADJ_ID,
    ADJUSTMENT_FIELDS,
    PENDING_FIELDS,
    PENDING_PATH,
    PND_ID,
    REPLAYED_HEADER,
    TIMESTAMP,
    UNKNOWN_PENDING,
    Backend,
    adjust_with,
    adjustment_of,
    assert_error,
    at_once,
    balance_body,
    eventually,
    full_history,
    iso_in,
    new_customer,
    ok,
    post_json,
    user_id,
    whole_ledger,
)

WAIT_S = 30.0  # the most a due release may take to happen, on a very busy machine
LATER = 86400.0  # a release_at that stays ahead for the whole test


@pytest.fixture
def api(ticking: list[Backend]) -> Iterator[httpx.Client]:
    with ticking[0].client() as client:
        yield client


def ref(label: str = "order") -> str:
    return f"{label}-{uuid.uuid4().hex[:12]}"


def hold(api: httpx.Client, customer_id: str, points: Any, **fields: Any) -> Any:
    """New pending points that must be accepted: the pending object."""
    body = {"customer_id": customer_id, "points": points, "release_at": iso_in(LATER)}
    body.update(fields)
    response = ok(post_json(api, PENDING_PATH, body))
    assert set(response) == {"pending"}, response
    return response["pending"]


def pending_of(api: httpx.Client, pending_id: str) -> Any:
    body = ok(api.get(f"{PENDING_PATH}/{pending_id}"))
    assert set(body) == {"pending"}, body
    return body["pending"]


def release(api: httpx.Client, pending_id: str, key: str | None = None) -> httpx.Response:
    return post_json(api, f"{PENDING_PATH}/{pending_id}/release", {}, key)


def void(api: httpx.Client, pending_id: str, key: str | None = None) -> httpx.Response:
    return post_json(api, f"{PENDING_PATH}/{pending_id}/void", {}, key)


def listing(api: httpx.Client, customer_id: str, **params: str) -> Any:
    return ok(api.get(f"/admin/loyalty/points/{customer_id}/pending", params=params))


def wait_released(api: httpx.Client, pending_id: str) -> Any:
    """The pending object once its status is released."""

    def probe() -> Any:
        body = pending_of(api, pending_id)
        return body if body["status"] == "released" else None

    return eventually(probe, WAIT_S, f"the release of {pending_id}")


def releases_of(history: list[Any], pending_id: str) -> list[Any]:
    return [i for i in history if i["type"] == "release" and i["pending_id"] == pending_id]


def test_pending_points_are_held_outside_the_balance(api: httpx.Client) -> None:
    """A new pending object has every field, status pending and no adjustment; its points
    are in the balance's `pending`, not in `balance`, and nothing is in the history."""
    customer_id = new_customer(api)["id"]
    adjust_with(api, customer_id, 10)
    release_at = iso_in(LATER)
    expires_at = iso_in(2 * LATER)
    reference = ref()
    pending = hold(
        api,
        customer_id,
        25.5,
        reason="Order #77",
        reference=reference,
        metadata={"order_id": "order_77"},
        expires_at=expires_at,
        release_at=release_at,
    )
    assert set(pending) == PENDING_FIELDS
    assert PND_ID.match(pending["id"])
    assert pending["customer_id"] == customer_id
    assert pending["points"] == Decimal("25.5")
    assert pending["reason"] == "Order #77"
    assert pending["reference"] == reference
    assert pending["metadata"] == {"order_id": "order_77"}
    assert pending["expires_at"] == expires_at
    assert pending["release_at"] == release_at
    assert pending["status"] == "pending"
    assert pending["adjustment_id"] is None
    assert TIMESTAMP.match(pending["created_at"])
    assert pending["updated_at"] == pending["created_at"]
    assert pending_of(api, pending["id"]) == pending

    hold(api, customer_id, 10)
    balance = balance_body(api, customer_id)
    assert balance["balance"] == 10
    assert balance["pending"] == Decimal("35.5")
    assert len(full_history(api, customer_id)) == 1


def test_release_records_one_release_adjustment(api: httpx.Client, ticking: list[Backend]) -> None:
    """Releasing records an adjustment of type release carrying the pending's points, reason,
    reference, metadata and expiry, made by the caller; the pending becomes released with
    that adjustment's id; the balance gains the points and `pending` loses them."""
    customer_id = new_customer(api)["id"]
    expires_at = iso_in(2 * LATER)
    reference = ref()
    pending = hold(
        api,
        customer_id,
        40,
        reason="Order #78",
        reference=reference,
        metadata={"order_id": "order_78"},
        expires_at=expires_at,
    )
    released = ok(release(api, pending["id"]))
    assert set(released) == {"pending"}
    after = released["pending"]
    assert set(after) == PENDING_FIELDS
    assert after["status"] == "released"
    assert ADJ_ID.match(after["adjustment_id"])
    assert after["id"] == pending["id"]
    assert after["created_at"] == pending["created_at"]
    assert pending_of(api, pending["id"]) == after

    history = full_history(api, customer_id)
    assert len(history) == 1
    item = history[0]
    assert set(item) == ADJUSTMENT_FIELDS
    assert item["id"] == after["adjustment_id"]
    assert item["type"] == "release"
    assert item["pending_id"] == pending["id"]
    assert item["delta"] == 40
    assert item["balance_after"] == 40
    assert item["reason"] == "Order #78"
    assert item["reference"] == reference
    assert item["metadata"] == {"order_id": "order_78"}
    assert item["expires_at"] == expires_at
    assert item["reverses"] is None
    assert item["created_by"] == user_id(ticking[0].server)
    assert adjustment_of(api, item["id"])["pending_id"] == pending["id"]

    balance = balance_body(api, customer_id)
    assert (balance["balance"], balance["pending"]) == (40, 0)
    assert balance["next_expiration"] == {"points": 40, "expires_at": expires_at}


def test_a_pending_is_released_or_voided_once(api: httpx.Client) -> None:
    """Releasing or voiding a pending that is not pending any more is 409 conflict and
    records nothing."""
    customer_id = new_customer(api)["id"]
    released = hold(api, customer_id, 5)
    ok(release(api, released["id"]))
    voided = hold(api, customer_id, 7)
    body = ok(void(api, voided["id"]))["pending"]
    assert set(body) == PENDING_FIELDS
    assert body["status"] == "voided"
    assert body["adjustment_id"] is None

    before = full_history(api, customer_id), balance_body(api, customer_id)
    for pending in (released, voided):
        assert_error(release(api, pending["id"]), 409, "conflict")
        assert_error(void(api, pending["id"]), 409, "conflict")
    assert (full_history(api, customer_id), balance_body(api, customer_id)) == before
    assert pending_of(api, voided["id"])["status"] == "voided"
    assert pending_of(api, released["id"])["status"] == "released"
    assert before[1]["balance"] == 5
    assert before[1]["pending"] == 0


def test_voiding_records_nothing(api: httpx.Client) -> None:
    customer_id = new_customer(api)["id"]
    adjust_with(api, customer_id, 3)
    pending = hold(api, customer_id, 9)
    history = full_history(api, customer_id)
    ok(void(api, pending["id"]))
    assert full_history(api, customer_id) == history
    balance = balance_body(api, customer_id)
    assert (balance["balance"], balance["pending"]) == (3, 0)


@pytest.mark.parametrize(
    "pending_id", [UNKNOWN_PENDING, "pnd_nope", "adj_01ARZ3NDEKTSV4RRFFQ69G5FAV"]
)
def test_unknown_pending_is_404(api: httpx.Client, pending_id: str) -> None:
    assert_error(api.get(f"{PENDING_PATH}/{pending_id}"), 404, "not_found")
    assert_error(release(api, pending_id), 404, "not_found")
    assert_error(void(api, pending_id), 404, "not_found")


def test_the_scheduler_releases_at_release_at(api: httpx.Client) -> None:
    """A pending due in a second, and one whose release_at is already past, are released by
    the service itself: a release adjustment made by nobody."""
    customer_id = new_customer(api)["id"]
    soon = hold(api, customer_id, 11, release_at=iso_in(1.0))
    past = hold(api, customer_id, 4, release_at=iso_in(-60))
    later = hold(api, customer_id, 100)
    for pending in (soon, past):
        done = wait_released(api, pending["id"])
        item = adjustment_of(api, done["adjustment_id"])
        assert item["type"] == "release"
        assert item["pending_id"] == pending["id"]
        assert item["delta"] == pending["points"]
        assert item["created_by"] is None
    assert pending_of(api, later["id"])["status"] == "pending"
    balance = balance_body(api, customer_id)
    assert (balance["balance"], balance["pending"]) == (15, 100)


INVALID: list[tuple[str, str, dict[str, Any]]] = [
    ("points zero", "points", {"points": 0}),
    ("points negative", "points", {"points": -5}),
    ("points a string", "points", {"points": "5"}),
    ("points 3 decimals", "points", {"points": 1.234}),
    ("points missing", "points", {"points": None}),
    ("release_at unparseable", "release_at", {"release_at": "when the window closes"}),
    ("release_at missing", "release_at", {"release_at": None}),
    ("release_at a number", "release_at", {"release_at": 1893456000}),
    ("expires_at before release_at", "expires_at", {"expires_at": iso_in(LATER / 2)}),
    ("expires_at in the past", "expires_at", {"expires_at": iso_in(-60)}),
    ("reference with a space", "reference", {"reference": "order 1"}),
    ("reference 129 characters", "reference", {"reference": "r" * 129}),
    ("metadata 17 keys", "metadata", {"metadata": {f"k{i}": "v" for i in range(17)}}),
    ("metadata value a number", "metadata", {"metadata": {"k": 1}}),
    ("unknown field", "delta", {"delta": 5}),
]


@pytest.mark.parametrize(("field", "change"), [c[1:] for c in INVALID], ids=[c[0] for c in INVALID])
def test_invalid_pending_is_400_naming_the_field(
    api: httpx.Client, field: str, change: dict[str, Any]
) -> None:
    customer_id = new_customer(api)["id"]
    body: dict[str, Any] = {"customer_id": customer_id, "points": 5, "release_at": iso_in(LATER)}
    for name, value in change.items():
        if value is None:
            body.pop(name)
        else:
            body[name] = value
    assert_error(post_json(api, PENDING_PATH, body), 400, "invalid_data", field)
    assert listing(api, customer_id)["count"] == 0
    assert balance_body(api, customer_id)["pending"] == 0


def test_pending_for_an_unknown_customer_is_404(api: httpx.Client) -> None:
    body = {"customer_id": "nobody-here", "points": 5, "release_at": iso_in(LATER)}
    assert_error(post_json(api, PENDING_PATH, body), 404, "not_found")
    assert_error(api.get("/admin/loyalty/points/nobody-here/pending"), 404, "not_found")


def test_a_pending_reference_is_unique_among_adjustments_and_pending(api: httpx.Client) -> None:
    """A reference already on one of the customer's adjustments or pending points is 409
    naming that object's id; another customer may use it."""
    customer_id = new_customer(api)["id"]
    on_adjustment, on_pending = ref("adj"), ref("pnd")
    adjustment = adjust_with(api, customer_id, 1, reference=on_adjustment)
    pending = hold(api, customer_id, 1, reference=on_pending)
    for reference, owner in ((on_adjustment, adjustment["id"]), (on_pending, pending["id"])):
        body = {
            "customer_id": customer_id,
            "points": 5,
            "reference": reference,
            "release_at": iso_in(LATER),
        }
        error = assert_error(post_json(api, PENDING_PATH, body), 409, "conflict")
        assert owner in error["message"], error
    assert listing(api, customer_id)["count"] == 1
    other = new_customer(api)["id"]
    hold(api, other, 1, reference=on_adjustment)
    hold(api, other, 1, reference=on_pending)


def test_the_list_filters_by_status_newest_first(api: httpx.Client) -> None:
    customer_id = new_customer(api)["id"]
    made = []
    for points in (1, 2, 3, 4, 5):
        made.append(hold(api, customer_id, points))
        time.sleep(0.01)  # distinct created_at, so newest first is one order
    ok(release(api, made[1]["id"]))
    ok(release(api, made[3]["id"]))
    ok(void(api, made[2]["id"]))
    everything = listing(api, customer_id)
    assert everything["count"] == 5
    assert (everything["offset"], everything["limit"]) == (0, 20)
    assert [p["id"] for p in everything["pending"]] == [p["id"] for p in reversed(made)]
    assert all(set(p) == PENDING_FIELDS for p in everything["pending"])
    by_status = {
        status: [p["points"] for p in listing(api, customer_id, status=status)["pending"]]
        for status in ("pending", "released", "voided")
    }
    assert by_status == {"pending": [5, 1], "released": [4, 2], "voided": [3]}
    page = listing(api, customer_id, limit="2", offset="1")
    assert [p["points"] for p in page["pending"]] == [4, 3]
    assert (page["count"], page["offset"], page["limit"]) == (5, 1, 2)
    for bad in ({"status": "done"}, {"status": ""}, {"limit": "0"}, {"offset": "-1"}):
        response = api.get(f"/admin/loyalty/points/{customer_id}/pending", params=bad)
        assert_error(response, 400, "invalid_data")


def test_release_and_void_replay_with_an_idempotency_key(api: httpx.Client) -> None:
    customer_id = new_customer(api)["id"]
    first, second = hold(api, customer_id, 3), hold(api, customer_id, 4)
    for pending, action in ((first, release), (second, void)):
        key = f"pnd-{uuid.uuid4().hex}"
        answer = action(api, pending["id"], key)
        assert answer.status_code == 200, answer.text
        again = action(api, pending["id"], key)
        assert again.status_code == 200
        assert again.content == answer.content
        assert again.headers.get(REPLAYED_HEADER) == "true"
    assert len(full_history(api, customer_id)) == 1
    assert balance_body(api, customer_id)["balance"] == 3


def test_two_schedulers_and_a_manual_release_release_once(ticking: list[Backend]) -> None:
    """Six pending points due at one moment; at that moment each is also released by hand
    through both servers while both servers' schedulers tick: each gets exactly one release
    adjustment, which its pending object names, and the manual releases that lost got 409."""
    first, second = ticking
    with first.client() as api:
        customer_id = new_customer(api)["id"]
        at = iso_in(2.0)
        made = [hold(api, customer_id, n, release_at=at) for n in range(1, 7)]

    responses = at_once(
        ticking,
        lambda clients: (
            client.post(f"{PENDING_PATH}/{p['id']}/release", json={})
            for p in made
            for client in clients
        ),
    )
    assert {r.status_code for r in responses} <= {200, 409}, [r.text for r in responses]
    with second.client() as api:
        admin = user_id(second.server)
        history = full_history(api, customer_id)
        for index, pending in enumerate(made):
            mine = responses[2 * index : 2 * index + 2]
            assert sum(r.status_code == 200 for r in mine) <= 1, [r.text for r in mine]
            found = releases_of(history, pending["id"])
            assert len(found) == 1, history
            now = pending_of(api, pending["id"])
            assert now["status"] == "released"
            assert now["adjustment_id"] == found[0]["id"]
            manual = any(r.status_code == 200 for r in mine)
            assert found[0]["created_by"] == (admin if manual else None)
        assert len(history) == 6
        balance = balance_body(api, customer_id)
        assert (balance["balance"], balance["pending"]) == (21, 0)


def test_creating_pending_points_replays_with_an_idempotency_key(api: httpx.Client) -> None:
    customer_id = new_customer(api)["id"]
    key = f"pnd-{uuid.uuid4().hex}"
    body = {"customer_id": customer_id, "points": 6, "release_at": iso_in(LATER)}
    first = post_json(api, PENDING_PATH, body, key)
    assert first.status_code == 200, first.text
    again = post_json(api, PENDING_PATH, body, key)
    assert again.status_code == 200
    assert again.content == first.content
    assert again.headers.get(REPLAYED_HEADER) == "true"
    assert listing(api, customer_id)["count"] == 1
    assert balance_body(api, customer_id)["pending"] == 6
    other = {**body, "points": 7}
    assert_error(post_json(api, PENDING_PATH, other, key), 422, "idempotency_error")


def test_a_release_can_be_reversed(api: httpx.Client) -> None:
    """A release is a credit like any other: it can be reversed, in part or in full."""
    customer_id = new_customer(api)["id"]
    pending = hold(api, customer_id, 30)
    adjustment_id = ok(release(api, pending["id"]))["pending"]["adjustment_id"]
    reversal = ok(api.post(f"/admin/loyalty/adjustments/{adjustment_id}/reverse", json={}))
    assert reversal["reverses"] == adjustment_id
    assert reversal["balance_after"] == 0
    assert adjustment_of(api, adjustment_id)["reversed_points"] == 30
    assert pending_of(api, pending["id"])["status"] == "released"


def test_releases_and_voids_at_once_from_two_servers_have_one_winner(
    ticking: list[Backend],
) -> None:
    """Five pending points, each sent three releases and three voids at once over two
    servers: per pending exactly one request wins (200), the others are 409, and the final
    status and the ledger follow the winner."""
    with ticking[0].client() as api:
        customer_id = new_customer(api)["id"]
        made = [hold(api, customer_id, n) for n in (1, 2, 4, 8, 16)]

    responses = at_once(
        ticking,
        lambda clients: (
            clients[n % 2].post(f"{PENDING_PATH}/{p['id']}/{action}", json={})
            for p in made
            for n, action in enumerate(("release", "void") * 3)
        ),
    )
    with ticking[1].client() as api:
        history = full_history(api, customer_id)
        expected_balance = 0
        for index, pending in enumerate(made):
            mine = responses[6 * index : 6 * index + 6]
            assert sorted(r.status_code for r in mine) == [200, 409, 409, 409, 409, 409], [
                r.text for r in mine
            ]
            (winner,) = [r for r in mine if r.status_code == 200]
            status = winner.json()["pending"]["status"]
            assert pending_of(api, pending["id"])["status"] == status
            found = releases_of(history, pending["id"])
            if status == "released":
                assert len(found) == 1
                expected_balance += pending["points"]
            else:
                assert status == "voided"
                assert found == []
        assert balance_body(api, customer_id) | {"next_expiration": None} == {
            "customer_id": customer_id,
            "balance": expected_balance,
            "updated_at": history[-1]["created_at"] if history else None,
            "pending": 0,
            "next_expiration": None,
        }


def test_released_points_expire_at_the_pendings_expires_at(api: httpx.Client) -> None:
    """A pending already due, with expires_at a few seconds ahead: the scheduler releases
    it, then expires the release's points, and the whole ledger lists each by its type."""
    customer_id = new_customer(api)["id"]
    expires_at = iso_in(3.0)
    pending = hold(api, customer_id, 12, release_at=iso_in(-1), expires_at=expires_at)
    adjustment_id = wait_released(api, pending["id"])["adjustment_id"]
    assert adjustment_of(api, adjustment_id)["expires_at"] == expires_at

    def expired() -> Any:
        found = [
            item
            for item in full_history(api, customer_id)
            if item["type"] == "expiration"
            and (item["metadata"] or {}).get("adjustment_id") == adjustment_id
        ]
        return found[0] if found else None

    expiration = eventually(expired, WAIT_S, f"the expiration of {adjustment_id}")
    assert expiration["delta"] == -12
    assert balance_body(api, customer_id)["balance"] == 0
    releases = whole_ledger(api, {"customer_id": customer_id, "type": "release"})
    assert [item["id"] for item in releases] == [adjustment_id]
    expirations = whole_ledger(api, {"customer_id": customer_id, "type": "expiration"})
    assert [item["id"] for item in expirations] == [expiration["id"]]
