"""POST /admin/loyalty/adjustments/{id}/reverse (SPEC 7.2): full and partial reversals,
`reversed_points`, what cannot be reversed, the negative-balance rule, Idempotency-Key, and
concurrent reversals of one credit from two server processes on one database never
reversing more than the credit. On SQLite and PostgreSQL."""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest

from tests.support import (
    ADJUSTMENT_FIELDS,
    ADJUSTMENTS_PATH,
    KEY_HEADER,
    REPLAYED_HEADER,
    UNKNOWN_ADJUSTMENT,
    Backend,
    adjust,
    adjust_with,
    adjustment_of,
    assert_error,
    assert_verify,
    at_once,
    backends_on_one_database,
    balance_body,
    decoded,
    full_history,
    iso_in,
    log_tail,
    new_customer,
    ok,
    reverse,
    sleep_until,
    statuses,
    user_id,
)

if TYPE_CHECKING:
    from tests.conftest import DatabaseFactory

REVERSE_FIELDS = {"id", "customer_id", "balance_after", "updated_at", "reverses"}


def funded(api: httpx.Client, points: Any = 100) -> tuple[str, str]:
    """A new customer credited `points` in one adjustment: (customer id, adjustment id)."""
    customer_id: str = new_customer(api)["id"]
    made = adjust_with(api, customer_id, points)
    return customer_id, made["id"]


def assert_nothing_left(response: httpx.Response) -> None:
    """Points asked of a fully reversed adjustment: refused either as nothing left (409) or
    as more than what is left (400 not_allowed)."""
    if response.status_code == 409:
        assert_error(response, 409, "conflict")
    else:
        assert_error(response, 400, "not_allowed")


def snapshot(api: httpx.Client, customer_id: str) -> tuple[Any, ...]:
    balance = balance_body(api, customer_id)
    return balance["balance"], full_history(api, customer_id)


def test_a_full_reversal_takes_back_the_whole_credit(api: httpx.Client, backend: Backend) -> None:
    """Without points, a reversal takes back all of the credit: a new adjustment of type
    reversal with the opposite delta, `reverses` set, made by the caller, no reference,
    metadata or expiry; the credit's reversed_points is then its amount."""
    customer_id, credit = funded(api, 100.25)
    response = reverse(api, credit, reason="Order refunded")
    body = ok(response)
    assert set(body) == REVERSE_FIELDS
    assert body["customer_id"] == customer_id
    assert body["balance_after"] == 0
    assert body["reverses"] == credit

    history = full_history(api, customer_id)
    assert [item["id"] for item in history] == [credit, body["id"]]
    item = history[-1]
    assert set(item) == ADJUSTMENT_FIELDS
    assert item["type"] == "reversal"
    assert item["delta"] == Decimal("-100.25")
    assert item["balance_after"] == 0
    assert item["reverses"] == credit
    assert item["reason"] == "Order refunded"
    assert item["created_by"] == user_id(backend.server)
    assert (item["reference"], item["metadata"], item["expires_at"]) == (None, None, None)
    assert item["pending_id"] is None
    assert item["created_at"] == body["updated_at"]

    assert adjustment_of(api, credit)["reversed_points"] == Decimal("100.25")
    assert adjustment_of(api, body["id"])["reversed_points"] == 0
    assert balance_body(api, customer_id)["balance"] == 0


def test_partial_reversals_add_up_to_the_credit_and_no_further(api: httpx.Client) -> None:
    """30, then 0.5, then the rest: each is recorded and counted in reversed_points; more
    than what is left is 400 not_allowed, and once nothing is left a reversal is 409."""
    customer_id, credit = funded(api, 100)
    assert ok(reverse(api, credit, 30))["balance_after"] == 70
    assert adjustment_of(api, credit)["reversed_points"] == 30

    before = snapshot(api, customer_id)
    assert_error(reverse(api, credit, 70.01), 400, "not_allowed")
    assert_error(reverse(api, credit, 1000), 400, "not_allowed")
    assert snapshot(api, customer_id) == before

    assert ok(reverse(api, credit, 0.5))["balance_after"] == Decimal("69.5")
    assert adjustment_of(api, credit)["reversed_points"] == Decimal("30.5")
    rest = ok(reverse(api, credit))
    assert rest["balance_after"] == 0
    assert adjustment_of(api, credit)["reversed_points"] == 100

    before = snapshot(api, customer_id)
    assert_error(reverse(api, credit), 409, "conflict")
    assert_nothing_left(reverse(api, credit, 1))
    assert snapshot(api, customer_id) == before
    deltas = [item["delta"] for item in full_history(api, customer_id)]
    assert deltas == [100, -30, Decimal("-0.5"), Decimal("-69.5")]


@pytest.mark.parametrize(
    ("points", "message"),
    [
        ("0", "points must be above 0"),
        ("-5", "points must be above 0"),
        ('"10"', "points must be a number, not a string"),
        ("true", "points must be a number, not a boolean"),
        ("1.234", "points must have at most 2 decimal places; 1.234 has 3"),
        ("0.001", "points must have at most 2 decimal places; 0.001 has 3"),
        ('{"n": 1}', "points must be a number, not an object"),
        ("[1]", "points must be a number, not an array"),
        ("1000000000.01", "points must be at most 1000000000; 1000000000.01 is too large"),
        ("1e400", "points must be at most 1000000000; 1e400 is too large"),
    ],
)
def test_invalid_points_are_400_naming_points(api: httpx.Client, points: str, message: str) -> None:
    """points that are not a positive number with at most 2 decimals: 400 invalid_data
    naming points, whose message says precisely what is wrong; nothing reversed."""
    customer_id, credit = funded(api, 100)
    before = snapshot(api, customer_id)
    response = api.post(
        f"{ADJUSTMENTS_PATH}/{credit}/reverse",
        content=('{"points": ' + points + "}").encode(),
        headers={"Content-Type": "application/json"},
    )
    assert_error(response, 400, "invalid_data", "points")
    assert response.json()["message"] == message
    assert snapshot(api, customer_id) == before
    assert adjustment_of(api, credit)["reversed_points"] == 0


def test_an_unknown_body_field_is_400(api: httpx.Client) -> None:
    _customer_id, credit = funded(api, 100)
    response = api.post(f"{ADJUSTMENTS_PATH}/{credit}/reverse", json={"amount": 5})
    assert_error(response, 400, "invalid_data")
    assert adjustment_of(api, credit)["reversed_points"] == 0


def test_a_reversal_cannot_be_reversed(api: httpx.Client) -> None:
    customer_id, credit = funded(api, 100)
    reversal = ok(reverse(api, credit, 40))["id"]
    before = snapshot(api, customer_id)
    assert_error(reverse(api, reversal), 400, "not_allowed")
    assert_error(reverse(api, reversal, 1), 400, "not_allowed")
    assert snapshot(api, customer_id) == before


def test_an_expiration_cannot_be_reversed(api: httpx.Client) -> None:
    """Once a credit has expired (recorded by the next write on the customer at the latest),
    its expiration adjustment cannot be reversed."""
    customer_id: str = new_customer(api)["id"]
    credit = adjust_with(api, customer_id, 10, expires_at=iso_in(1.0))
    sleep_until(credit_expiry(api, credit["id"]), margin_s=0.2)
    adjust_with(api, customer_id, 1)
    expirations = [i for i in full_history(api, customer_id) if i["type"] == "expiration"]
    assert len(expirations) == 1, full_history(api, customer_id)
    before = snapshot(api, customer_id)
    assert_error(reverse(api, expirations[0]["id"]), 400, "not_allowed")
    assert snapshot(api, customer_id) == before


def credit_expiry(api: httpx.Client, adjustment_id: str) -> str:
    value: str = adjustment_of(api, adjustment_id)["expires_at"]
    return value


def test_reversing_a_credit_obeys_the_negative_balance_rule(api: httpx.Client) -> None:
    """A credit of 100 of which 80 were spent: reversing it all would go below zero, so it
    is 400 not_allowed and records nothing; reversing 20 is fine."""
    customer_id, credit = funded(api, 100)
    assert adjust(api, customer_id, -80).status_code == 200
    before = snapshot(api, customer_id)
    assert_error(reverse(api, credit), 400, "not_allowed")
    assert_error(reverse(api, credit, 21), 400, "not_allowed")
    assert snapshot(api, customer_id) == before
    assert adjustment_of(api, credit)["reversed_points"] == 0
    assert ok(reverse(api, credit, 20))["balance_after"] == 0
    assert adjustment_of(api, credit)["reversed_points"] == 20


def test_reversing_a_debit_credits_the_points_back(api: httpx.Client) -> None:
    customer_id, _credit = funded(api, 100)
    debit = adjust_with(api, customer_id, -40, reason="Redeemed")["id"]
    body = ok(reverse(api, debit, 15))
    assert body["balance_after"] == 75
    assert ok(reverse(api, debit))["balance_after"] == 100
    assert adjustment_of(api, debit)["reversed_points"] == 40
    reversals = [i for i in full_history(api, customer_id) if i["type"] == "reversal"]
    assert [(i["delta"], i["reverses"]) for i in reversals] == [(15, debit), (25, debit)]
    assert_error(reverse(api, debit), 409, "conflict")


@pytest.mark.parametrize(
    "target", [UNKNOWN_ADJUSTMENT, "adj_nope", "cus_01ARZ3NDEKTSV4RRFFQ69G5FAV"]
)
def test_an_unknown_adjustment_is_404(api: httpx.Client, target: str) -> None:
    assert_error(reverse(api, target), 404, "not_found")
    assert_error(reverse(api, target, 1), 404, "not_found")
    assert_error(api.get(f"{ADJUSTMENTS_PATH}/{target}"), 404, "not_found")


def test_an_idempotency_key_replays_a_reversal(api: httpx.Client) -> None:
    """A retried reversal with its key gets the first response again, marked replayed, and
    reverses nothing more; the key with other points is 422."""
    customer_id, credit = funded(api, 100)
    key = f"rev-{uuid.uuid4().hex}"
    first = reverse(api, credit, 10, key=key)
    assert first.status_code == 200, first.text
    after = snapshot(api, customer_id)
    for _ in range(2):
        again = reverse(api, credit, 10, key=key)
        assert again.status_code == 200
        assert again.content == first.content
        assert again.headers.get(REPLAYED_HEADER) == "true"
    assert snapshot(api, customer_id) == after
    assert adjustment_of(api, credit)["reversed_points"] == 10
    assert_error(reverse(api, credit, 11, key=key), 422, "idempotency_error")
    assert REPLAYED_HEADER not in reverse(api, credit, 10, key=f"{key}-other").headers
    assert adjustment_of(api, credit)["reversed_points"] == 20


# --- two servers, one database ------------------------------------------------------------


@pytest.fixture
def two_servers(
    databases: DatabaseFactory, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[list[Backend]]:
    url = databases.new_url()
    workdir: Path = tmp_path_factory.mktemp(f"reversal-pair-{databases.kind}")
    with backends_on_one_database(databases.kind, url, workdir) as servers:
        yield servers
    assert_verify(url)


REVERSALS = 30
PART = 7


def test_concurrent_reversals_from_two_servers_never_exceed_the_credit(
    two_servers: list[Backend],
) -> None:
    """30 reversals of 7 points each, sent at once half to each of two server processes on
    one database, against one credit of 100: exactly 14 are recorded (98 points), the rest
    are refused (400 or 409), and the 2 left can still be reversed, once."""
    first, second = two_servers
    with first.client() as api:
        customer_id, credit = funded(api, 100)

    async def one(
        clients: list[httpx.AsyncClient], n: int
    ) -> httpx.Response | httpx.TransportError:
        try:
            return await clients[n % 2].post(
                f"{ADJUSTMENTS_PATH}/{credit}/reverse", json={"points": PART}
            )
        except httpx.TransportError as error:
            return error

    responses = at_once(two_servers, lambda clients: (one(clients, n) for n in range(REVERSALS)))
    counts = statuses(responses)
    assert counts[200] == 100 // PART, (counts, log_tail(first.server, second.server))
    assert set(counts) <= {200, 400, 409}, (counts, log_tail(first.server, second.server))
    for response in responses:
        assert isinstance(response, httpx.Response)
        if response.status_code != 200:
            assert response.json()["type"] in {"not_allowed", "conflict"}, response.text

    with second.client() as api:
        history = full_history(api, customer_id)
        reversals = [item for item in history if item["type"] == "reversal"]
        assert len(reversals) == 100 // PART
        assert sum(Decimal(i["delta"]) for i in reversals) == -PART * (100 // PART)
        assert adjustment_of(api, credit)["reversed_points"] == PART * (100 // PART)
        accepted = sorted(
            decoded(r)["balance_after"]
            for r in responses
            if isinstance(r, httpx.Response) and r.status_code == 200
        )
        assert accepted == sorted(Decimal(100 - PART * n) for n in range(1, 100 // PART + 1))

        assert ok(reverse(api, credit))["balance_after"] == 0
        assert adjustment_of(api, credit)["reversed_points"] == 100
        assert_error(reverse(api, credit), 409, "conflict")
        assert balance_body(api, customer_id)["balance"] == 0
    with first.client() as api:
        assert_nothing_left(reverse(api, credit, 0.01))


def test_concurrent_full_reversals_record_one(two_servers: list[Backend]) -> None:
    """Ten full reversals of one credit at once over two servers: one is recorded, the
    others are 409."""
    with two_servers[0].client() as api:
        customer_id, credit = funded(api, 50)

    responses = at_once(
        two_servers,
        lambda clients: (
            clients[n % 2].post(f"{ADJUSTMENTS_PATH}/{credit}/reverse", json={}) for n in range(10)
        ),
    )
    assert Counter(r.status_code for r in responses) == Counter({200: 1, 409: 9}), [
        r.text for r in responses
    ]
    with two_servers[1].client() as api:
        assert adjustment_of(api, credit)["reversed_points"] == 50
        assert balance_body(api, customer_id)["balance"] == 0


def test_reverse_needs_no_more_than_its_headers(api: httpx.Client) -> None:
    """A reversal with an empty JSON object body takes back everything."""
    _customer_id, credit = funded(api, 5)
    response = api.post(
        f"{ADJUSTMENTS_PATH}/{credit}/reverse",
        content=b"{}",
        headers={"Content-Type": "application/json", KEY_HEADER: f"k-{uuid.uuid4().hex}"},
    )
    assert ok(response)["balance_after"] == 0
