"""POST /admin/loyalty/points/adjust: the seed's contract, on SQLite and PostgreSQL."""

from __future__ import annotations

import httpx
import pytest

from tests.support import ADJ_ID, TIMESTAMP, Backend, adjust, adjust_raw, new_customer, sql


def balance_of(api: httpx.Client, customer_id: str) -> object:
    return api.get(f"/admin/loyalty/points/{customer_id}").json()["balance"]


def test_basic_adjust_has_exactly_the_seed_shape(api: httpx.Client) -> None:
    """The basic response has id, customer_id, balance_after, updated_at and nothing else."""
    customer = new_customer(api)
    response = adjust(api, customer["id"], 100, "Welcome bonus")
    assert response.status_code == 200
    body = response.json()
    assert set(body) == {"id", "customer_id", "balance_after", "updated_at"}
    assert ADJ_ID.match(body["id"])
    assert body["customer_id"] == customer["id"]
    assert body["balance_after"] == 100
    assert TIMESTAMP.match(body["updated_at"])
    assert response.headers["content-type"].startswith("application/json")


def test_seed_walkthrough_with_history(api: httpx.Client) -> None:
    """The seed's story: +50, +100, then -50 with history → 100, newest first, current first."""
    customer = new_customer(api)
    adjust(api, customer["id"], 50, "Order completion")
    adjust(api, customer["id"], 100, "Welcome bonus")
    response = adjust(api, customer["id"], -50, "Redeemed for discount", include_history="true")
    assert response.status_code == 200
    body = response.json()
    assert body["balance_after"] == 100
    history = body["history"]
    assert [h["delta"] for h in history] == [-50, 100, 50]
    assert [h["balance_after"] for h in history] == [100, 150, 50]
    assert [h["reason"] for h in history] == [
        "Redeemed for discount",
        "Welcome bonus",
        "Order completion",
    ]
    assert history[0]["id"] == body["id"]
    assert history[0]["created_at"] == body["updated_at"]
    for item in history:
        assert set(item) == {"id", "delta", "reason", "balance_after", "created_at"}
    assert [h["id"] for h in history] == sorted((h["id"] for h in history), reverse=True)


def test_history_is_capped_at_twenty(api: httpx.Client) -> None:
    customer = new_customer(api)
    for i in range(1, 25):
        assert adjust(api, customer["id"], i).status_code == 200
    body = adjust(api, customer["id"], 1, include_history="1").json()
    assert len(body["history"]) == 20
    assert [h["delta"] for h in body["history"]] == [1, *range(24, 5, -1)]


@pytest.mark.parametrize("value", ["false", "0"])
def test_include_history_false_has_no_history_key(api: httpx.Client, value: str) -> None:
    customer = new_customer(api)
    body = adjust(api, customer["id"], 5, include_history=value).json()
    assert "history" not in body


def test_reason_absent_or_null_is_null_in_history(api: httpx.Client) -> None:
    customer = new_customer(api)
    adjust(api, customer["id"], 1)
    adjust_raw(api, f'{{"customer_id": "{customer["id"]}", "delta": 2, "reason": null}}')
    history = api.get(f"/admin/loyalty/points/{customer['id']}/history").json()["adjustments"]
    assert [h["reason"] for h in history] == [None, None]


def test_decimals_are_exact(api: httpx.Client) -> None:
    """0.1 + 0.2 is 0.3, and balances render as the shortest exact number."""
    customer = new_customer(api)
    assert (
        adjust_raw(api, f'{{"customer_id": "{customer["id"]}", "delta": 0.1}}').json()[
            "balance_after"
        ]
        == 0.1
    )
    response = adjust_raw(api, f'{{"customer_id": "{customer["id"]}", "delta": 0.2}}')
    assert b'"balance_after":0.3' in response.content
    response = adjust_raw(api, f'{{"customer_id": "{customer["id"]}", "delta": 99.71}}')
    assert b'"balance_after":100.01' in response.content
    response = adjust_raw(api, f'{{"customer_id": "{customer["id"]}", "delta": 49.99}}')
    assert b'"balance_after":150' in response.content
    balance = api.get(f"/admin/loyalty/points/{customer['id']}")
    assert b'"balance":150,' in balance.content


@pytest.mark.parametrize(
    ("literal", "expected"),
    [("1e2", b"100"), ("1.50", b"1.5"), ("2.5E-1", b"0.25"), ("-0.0e0", None), ("10E-2", b"0.1")],
)
def test_json_number_forms_are_read_exactly(
    api: httpx.Client, literal: str, expected: bytes | None
) -> None:
    """Exponents and trailing zeros are read exactly and rendered in the shortest form."""
    customer = new_customer(api)
    adjust(api, customer["id"], 1000)
    response = adjust_raw(api, f'{{"customer_id": "{customer["id"]}", "delta": {literal}}}')
    if expected is None:
        assert response.status_code == 400
        return
    assert response.status_code == 200
    history = api.get(f"/admin/loyalty/points/{customer['id']}/history")
    assert b'"delta":' + expected + b"," in history.content


def test_unknown_customer_is_404_with_the_seed_message(api: httpx.Client) -> None:
    response = adjust(api, "cus_01DOESNOTEXIST", 100)
    assert response.status_code == 404
    assert response.json() == {
        "type": "not_found",
        "message": "Customer with id: cus_01DOESNOTEXIST was not found",
    }


def test_two_identical_requests_make_two_adjustments(api: httpx.Client) -> None:
    customer = new_customer(api)
    first = adjust(api, customer["id"], 10, "same").json()
    second = adjust(api, customer["id"], 10, "same").json()
    assert first["id"] != second["id"]
    assert second["balance_after"] == 20


def test_wrong_method_on_adjust_is_405(api: httpx.Client) -> None:
    response = api.get("/admin/loyalty/points/adjust")
    assert response.status_code == 405
    assert response.json()["type"] == "not_allowed"
    assert "POST" in response.headers["allow"]


def test_the_server_records_in_the_database_of_its_kind(
    api: httpx.Client, backend: Backend
) -> None:
    """The shared server works on its own database of the kind the test runs for (a guard
    against a fixture silently running one kind twice): a customer and an adjustment made
    over HTTP are in that very database, read behind the service's back."""
    scheme = {"sqlite": "sqlite:///", "postgresql": "postgresql://"}[backend.kind]
    assert backend.database_url.startswith(scheme)
    customer = new_customer(api)
    response = adjust(api, customer["id"], 2.5)
    assert response.status_code == 200, response.text
    assert sql(
        backend.database_url, "SELECT email FROM customers WHERE id = $1", customer["id"]
    ) == [(customer["email"],)]
    assert sql(
        backend.database_url,
        "SELECT id, delta_hundredths FROM loyalty_adjustments WHERE customer_id = $1",
        customer["id"],
    ) == [(response.json()["id"], 250)]
