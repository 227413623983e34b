"""Expiring points (SPEC 7.3, invariant 7): a credit's `expires_at` turns what is left of it
into an `expiration` adjustment, recorded by the scheduler or by the customer's next write;
debits use the soonest-expiring points first; an expiration never takes a balance below zero
and is recorded once, even with two server processes' schedulers on one database; and points
past their expiry can never be spent. On SQLite and PostgreSQL.

The file's servers tick every 0.2 s (LOYALTY_SCHEDULER_INTERVAL_SECONDS); waits poll and are
bounded, so a busy machine makes them slower, never wrong.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import timedelta
from decimal import Decimal
from typing import TYPE_CHECKING, Any

import httpx
import pytest

from tests.conftest import TICK
from tests.support import (
    ADJUST_PATH,
    ADJUSTMENT_FIELDS,
    Backend,
    adjust_with,
    assert_error,
    assert_verify,
    at_once,
    balance_body,
    decoded,
    eventually,
    full_history,
    iso,
    iso_in,
    new_customer,
    ok,
    parse_time,
    post_json,
    sleep_until,
)

if TYPE_CHECKING:
    from tests.conftest import DatabaseFactory

WAIT_S = 30.0  # the most any expiration may take to be recorded, on a very busy machine
CREDIT = 100_000
SOON_S = 1.5  # how far ahead a credit that must expire during the test expires


@pytest.fixture
def api(ticking: list[Backend]) -> Iterator[httpx.Client]:
    with ticking[0].client() as client:
        yield client


def expirations_of(history: list[Any], credit_id: str) -> list[Any]:
    return [
        item
        for item in history
        if item["type"] == "expiration"
        and (item["metadata"] or {}).get("adjustment_id") == credit_id
    ]


def wait_for_expiration(api: httpx.Client, customer_id: str, credit_id: str) -> Any:
    """The expiration adjustment of `credit_id`, once the service has recorded it."""

    def probe() -> Any:
        found = expirations_of(full_history(api, customer_id), credit_id)
        return found[0] if found else None

    return eventually(probe, WAIT_S, f"the expiration of {credit_id}")


def expirations_list(api: httpx.Client, customer_id: str, **params: str) -> Any:
    return ok(api.get(f"/admin/loyalty/points/{customer_id}/expirations", params=params))


def test_a_credit_expires_and_next_expiration_moves_on(api: httpx.Client) -> None:
    """+100 expiring soon, +40 expiring in a day, +50 never: the balance shows the soonest
    expiry; after it passes, an `expiration` adjustment of -100 names the credit in its
    metadata, is made by nobody, and the next expiration is the day-ahead credit's."""
    customer_id = new_customer(api)["id"]
    soon = adjust_with(api, customer_id, 100, expires_at=iso_in(SOON_S))
    later_at = iso_in(86400)
    later = adjust_with(api, customer_id, 40, expires_at=later_at)
    adjust_with(api, customer_id, 50)
    soon_at = ok(api.get(f"/admin/loyalty/adjustments/{soon['id']}"))["adjustment"]["expires_at"]

    balance = balance_body(api, customer_id)
    assert set(balance) == {"customer_id", "balance", "updated_at", "pending", "next_expiration"}
    if balance["balance"] == 190:  # not yet expired (a very slow machine may be past it)
        assert balance["next_expiration"] == {"points": 100, "expires_at": soon_at}

    expiration = wait_for_expiration(api, customer_id, soon["id"])
    assert set(expiration) == ADJUSTMENT_FIELDS
    assert expiration["delta"] == -100
    assert expiration["balance_after"] == 90
    assert expiration["reason"] == "Points expired"
    assert expiration["metadata"] == {"adjustment_id": soon["id"]}
    assert expiration["created_by"] is None
    assert expiration["reverses"] is None
    assert expiration["reference"] is None
    assert expiration["expires_at"] is None
    assert parse_time(expiration["created_at"]) >= parse_time(soon_at)

    balance = balance_body(api, customer_id)
    assert balance["balance"] == 90
    assert balance["updated_at"] == expiration["created_at"]
    assert balance["next_expiration"] == {"points": 40, "expires_at": later_at}
    listed = expirations_list(api, customer_id)
    assert listed["expirations"] == [
        {"adjustment_id": later["id"], "points": 40, "expires_at": later_at}
    ]
    assert listed["count"] == 1


def test_no_expiring_credit_means_no_next_expiration(api: httpx.Client) -> None:
    customer_id = new_customer(api)["id"]
    assert balance_body(api, customer_id)["next_expiration"] is None
    adjust_with(api, customer_id, 10)
    body = balance_body(api, customer_id)
    assert body["next_expiration"] is None
    assert body["pending"] == 0
    assert expirations_list(api, customer_id) == {
        "expirations": [],
        "count": 0,
        "offset": 0,
        "limit": 20,
    }


def test_debits_use_the_soonest_expiring_points_first(api: httpx.Client) -> None:
    """Credits expiring soon (+100) and in a day (+100), then -30: the debit comes out of
    the soonest, so only 70 expire, and the day-ahead credit is whole."""
    customer_id = new_customer(api)["id"]
    later = adjust_with(api, customer_id, 100, expires_at=iso_in(86400))
    soon = adjust_with(api, customer_id, 100, expires_at=iso_in(SOON_S + 0.5))
    adjust_with(api, customer_id, -30)
    listed = expirations_list(api, customer_id)["expirations"]
    if len(listed) == 2:  # not yet expired
        assert [(e["adjustment_id"], e["points"]) for e in listed] == [
            (soon["id"], 70),
            (later["id"], 100),
        ]
    expiration = wait_for_expiration(api, customer_id, soon["id"])
    assert expiration["delta"] == -70
    assert balance_body(api, customer_id)["balance"] == 100
    listed = expirations_list(api, customer_id)["expirations"]
    assert [(e["adjustment_id"], e["points"]) for e in listed] == [(later["id"], 100)]


def test_debits_use_expiring_points_before_points_that_never_expire(api: httpx.Client) -> None:
    """+50 that never expire, +100 expiring in a day, -120: the expiring credit is used up
    (nothing left to expire), and 30 never-expiring points remain."""
    customer_id = new_customer(api)["id"]
    adjust_with(api, customer_id, 50)
    adjust_with(api, customer_id, 100, expires_at=iso_in(86400))
    adjust_with(api, customer_id, -120)
    body = balance_body(api, customer_id)
    assert body["balance"] == 30
    assert body["next_expiration"] is None
    assert expirations_list(api, customer_id)["count"] == 0


def test_a_spent_credit_expires_nothing(api: httpx.Client) -> None:
    """A credit spent in full before its expiry leaves nothing to expire: no expiration is
    recorded, and the balance stays 0 (never below)."""
    customer_id = new_customer(api)["id"]
    credit = adjust_with(api, customer_id, 100, expires_at=iso_in(SOON_S))
    adjust_with(api, customer_id, -100)
    sleep_until(credit_expires_at(api, credit["id"]), margin_s=1.0)
    adjust_with(api, customer_id, 1)  # records any due expiration first
    history = full_history(api, customer_id)
    assert expirations_of(history, credit["id"]) == []
    assert [item["delta"] for item in history] == [100, -100, 1]
    assert min(item["balance_after"] for item in history) >= 0


def test_a_partly_spent_credit_expires_what_is_left(api: httpx.Client) -> None:
    customer_id = new_customer(api)["id"]
    credit = adjust_with(api, customer_id, 100, expires_at=iso_in(SOON_S))
    adjust_with(api, customer_id, -60)
    expiration = wait_for_expiration(api, customer_id, credit["id"])
    assert expiration["delta"] == -40
    assert expiration["balance_after"] == 0
    assert balance_body(api, customer_id)["balance"] == 0


def credit_expires_at(api: httpx.Client, adjustment_id: str) -> str:
    body = ok(api.get(f"/admin/loyalty/adjustments/{adjustment_id}"))
    value: str = body["adjustment"]["expires_at"]
    return value


def test_the_expirations_list_is_soonest_first_and_paged(api: httpx.Client) -> None:
    """Three expiring credits (given out of order) and one that never expires: the list
    holds the three, soonest first, with limit and offset; bad paging is 400; an unknown
    customer is 404."""
    customer_id = new_customer(api)["id"]
    made = {}
    for hour in (3, 1, 2):
        at = iso_in(hour * 3600)
        made[hour] = (adjust_with(api, customer_id, hour * 10, expires_at=at)["id"], at)
    adjust_with(api, customer_id, 5)
    adjust_with(api, customer_id, -5)  # out of the 1-hour credit
    expected = [
        {"adjustment_id": made[hour][0], "points": points, "expires_at": made[hour][1]}
        for hour, points in ((1, 5), (2, 20), (3, 30))
    ]
    whole = expirations_list(api, customer_id)
    assert whole == {"expirations": expected, "count": 3, "offset": 0, "limit": 20}
    page = expirations_list(api, customer_id, limit="1", offset="1")
    assert page == {"expirations": expected[1:2], "count": 3, "offset": 1, "limit": 1}
    assert expirations_list(api, customer_id, offset="3")["expirations"] == []
    for bad in ({"limit": "0"}, {"limit": "101"}, {"offset": "-1"}, {"limit": "x"}):
        response = api.get(f"/admin/loyalty/points/{customer_id}/expirations", params=bad)
        assert_error(response, 400, "invalid_data")
    assert_error(api.get("/admin/loyalty/points/nobody-here/expirations"), 404, "not_found")


def test_points_past_their_expiry_cannot_be_spent(ticking: list[Backend]) -> None:
    """Redemptions of 1 point sent one after another across a credit's expiry: each one
    accepted was made before the expiry, the first one after it is refused (not_allowed),
    and what was not spent is what expired."""
    with ticking[1].client() as api:
        customer_id = new_customer(api)["id"]
        credit = adjust_with(api, customer_id, CREDIT, expires_at=iso_in(SOON_S))
        expires = parse_time(credit_expires_at(api, credit["id"]))
        spent = 0
        refused = None
        deadline = time.monotonic() + WAIT_S
        while refused is None and time.monotonic() < deadline:
            response = post_json(api, ADJUST_PATH, {"customer_id": customer_id, "delta": -1})
            if response.status_code == 200:
                assert parse_time(decoded(response)["updated_at"]) <= expires, response.text
                spent += 1
                assert spent < CREDIT, "spent the whole credit before it expired"
            else:
                refused = assert_error(response, 400, "not_allowed")
        assert refused is not None, "never refused"
        expiration = wait_for_expiration(api, customer_id, credit["id"])
        assert expiration["delta"] == -(CREDIT - spent)
        assert balance_body(api, customer_id)["balance"] == 0


def test_a_redemption_right_after_the_expiry_is_refused(backend: Backend) -> None:
    """On a server whose scheduler runs only every minute, a redemption just after a
    credit's expiry is refused: the write itself records the due expiration first. The next
    write shows the expiration in the history before it."""
    with backend.client() as api:
        customer_id = new_customer(api)["id"]
        credit = adjust_with(api, customer_id, 100, expires_at=iso_in(SOON_S))
        sleep_until(credit_expires_at(api, credit["id"]), margin_s=0.05)
        body = {"customer_id": customer_id, "delta": -1}
        assert_error(post_json(api, ADJUST_PATH, body), 400, "not_allowed")
        after = adjust_with(api, customer_id, 5)
        assert after["balance_after"] == 5
        history = full_history(api, customer_id)
        assert [(item["type"], item["delta"]) for item in history] == [
            ("adjustment", 100),
            ("expiration", -100),
            ("adjustment", 5),
        ]
        assert history[1]["metadata"] == {"adjustment_id": credit["id"]}


def test_two_servers_record_each_expiration_once(ticking: list[Backend]) -> None:
    """Eight credits expiring at one moment, with both servers' schedulers ticking and writes
    on each customer through both servers right at that moment: each credit has exactly one
    expiration, and each customer's balance is what the writes alone make."""
    first, second = ticking
    with first.client() as api:
        customers = [new_customer(api)["id"] for _ in range(8)]
        at = iso_in(SOON_S + 1.0)
        credits = [adjust_with(api, c, 10, expires_at=at)["id"] for c in customers]

    sleep_until(at, margin_s=-0.05)
    responses = at_once(
        ticking,
        lambda clients: (
            client.post(ADJUST_PATH, json={"customer_id": c, "delta": 1})
            for c in customers
            for client in clients
        ),
    )
    assert all(r.status_code == 200 for r in responses), [r.text for r in responses]
    with second.client() as api:
        for customer_id, credit_id in zip(customers, credits, strict=True):
            wait_for_expiration(api, customer_id, credit_id)
        sleep_until(iso(parse_time(at) + timedelta(seconds=1)))  # several more ticks
        for customer_id, credit_id in zip(customers, credits, strict=True):
            history = full_history(api, customer_id)
            found = expirations_of(history, credit_id)
            assert len(found) == 1, history
            assert found[0]["delta"] == -10
            assert balance_body(api, customer_id)["balance"] == 2
            assert sum(Decimal(item["delta"]) for item in history) == 2


@pytest.fixture(scope="module")
def lenient(
    databases: DatabaseFactory, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Backend]:
    """A server ticking every 0.2 s on a fresh database, with negative balances allowed and
    every credit without expires_at expiring after 0.00002 days (1.728 s)."""
    url = databases.new_url()
    workdir = tmp_path_factory.mktemp(f"expire-after-{databases.kind}")
    with Backend.start(
        databases.kind,
        url,
        workdir,
        LOYALTY_SCHEDULER_INTERVAL_SECONDS=TICK,
        LOYALTY_POINTS_EXPIRE_AFTER_DAYS="0.00002",
        LOYALTY_ALLOW_NEGATIVE_BALANCE="true",
    ) as server:
        yield server
    assert_verify(url)


def test_expire_after_days_gives_every_credit_an_expiry(lenient: Backend) -> None:
    """With LOYALTY_POINTS_EXPIRE_AFTER_DAYS=0.00002 (1.728 s), a credit without expires_at
    expires at its created_at plus that; a credit with its own expires_at keeps it; a debit
    has none."""
    with lenient.client() as api:
        customer_id = new_customer(api)["id"]
        own_at = iso_in(86400)
        own = adjust_with(api, customer_id, 7, expires_at=own_at)
        plain = adjust_with(api, customer_id, 10)
        created = parse_time(plain["updated_at"])
        listed = expirations_list(api, customer_id)["expirations"]
        if len(listed) == 2:  # not yet expired
            assert listed[1] == {"adjustment_id": own["id"], "points": 7, "expires_at": own_at}
            assert listed[0]["adjustment_id"] == plain["id"]
            default_at = parse_time(listed[0]["expires_at"])
            assert abs(default_at - (created + timedelta(seconds=1.728))) <= timedelta(
                milliseconds=2
            ), (default_at, created)
        expiration = wait_for_expiration(api, customer_id, plain["id"])
        assert expiration["delta"] == -10
        assert parse_time(expiration["created_at"]) >= created + timedelta(seconds=1.7)
        assert balance_body(api, customer_id)["balance"] == 7
        debit = adjust_with(api, customer_id, -2)
        assert (
            ok(api.get(f"/admin/loyalty/adjustments/{debit['id']}"))["adjustment"]["expires_at"]
            is None
        )
        assert balance_body(api, customer_id)["next_expiration"] == {
            "points": 5,
            "expires_at": own_at,
        }


def test_an_expiration_never_takes_a_balance_below_zero(lenient: Backend) -> None:
    """With negative balances allowed: +100 expiring soon, -150 (balance -50), then +20
    (which expires by default): once both expiries have passed, no expiration is recorded,
    since none may take the balance below zero, and the balance is exactly the sum of the
    writes."""
    with lenient.client() as api:
        customer_id = new_customer(api)["id"]
        credit = adjust_with(api, customer_id, 100, expires_at=iso_in(SOON_S))
        adjust_with(api, customer_id, -150)
        late = adjust_with(api, customer_id, 20)
        last = max(
            parse_time(credit_expires_at(api, credit["id"])),
            parse_time(late["updated_at"]) + timedelta(seconds=1.728),
        )
        sleep_until(iso(last), margin_s=1.0)  # five ticks past both expiries
        adjust_with(api, customer_id, 1)  # records any due expiration first
        history = full_history(api, customer_id)
        assert [item["type"] for item in history] == ["adjustment"] * 4, history
        assert min(item["balance_after"] for item in history) == -50
        assert balance_body(api, customer_id)["balance"] == -29


def test_a_debit_spans_several_credits_soonest_first(api: httpx.Client) -> None:
    """Credits of 30 (expiring in 1 h), 50 (in 2 h) and 20 (never), then -40: the 1-hour
    credit is used up and 10 come out of the 2-hour one; the never-expiring points stay."""
    customer_id = new_customer(api)["id"]
    first_at, second_at = iso_in(3600), iso_in(7200)
    second = adjust_with(api, customer_id, 50, expires_at=second_at)
    adjust_with(api, customer_id, 30, expires_at=first_at)
    adjust_with(api, customer_id, 20)
    adjust_with(api, customer_id, -40)
    listed = expirations_list(api, customer_id)
    assert listed["expirations"] == [
        {"adjustment_id": second["id"], "points": 40, "expires_at": second_at}
    ]
    body = balance_body(api, customer_id)
    assert body["balance"] == 60
    assert body["next_expiration"] == {"points": 40, "expires_at": second_at}


def test_a_reversal_of_a_credit_spends_the_soonest_expiring_points(api: httpx.Client) -> None:
    """A reversal of a credit is a debit, and debits use the soonest-expiring points first:
    reversing the 2-hour credit of 50 takes 50 out of the 1-hour credit of 100."""
    customer_id = new_customer(api)["id"]
    soon_at, later_at = iso_in(3600), iso_in(7200)
    soon = adjust_with(api, customer_id, 100, expires_at=soon_at)
    later = adjust_with(api, customer_id, 50, expires_at=later_at)
    ok(api.post(f"/admin/loyalty/adjustments/{later['id']}/reverse", json={}))
    assert expirations_list(api, customer_id)["expirations"] == [
        {"adjustment_id": soon["id"], "points": 50, "expires_at": soon_at},
        {"adjustment_id": later["id"], "points": 50, "expires_at": later_at},
    ]
    assert balance_body(api, customer_id)["balance"] == 100
