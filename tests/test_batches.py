"""Adjustments that reach a worker at the same moment share one transaction (group commit),
yet each request gets its own outcome (SPEC sections 5 and 6): one request's refusal never
fails or records the others, and one customer's adjustments are applied in the order they
arrived. On SQLite and PostgreSQL, against the session's one-worker server.

The requests are made to land in one batch by holding the database's write path
(support.write_gate): a first "plug" request becomes a batch of its own and waits in the
database, the requests under test queue up behind it in a known order, and when the
database is let go they are taken together. That they really shared a batch is checked too:
a batch stamps all its adjustments with one time.
"""

from __future__ import annotations

import asyncio
import uuid
from decimal import Decimal
from typing import Any

import httpx

from tests.support import (
    Backend,
    Call,
    assert_one_batch,
    decoded,
    new_customer,
    send_as_one_batch,
)


def new_key(label: str) -> str:
    return f"{label}-{uuid.uuid4().hex}"


def one_batch(backend: Backend, plug_customer: str, calls: list[Call]) -> list[httpx.Response]:
    plug, responses = asyncio.run(
        send_as_one_batch(
            backend.server.base_url,
            backend.database_url,
            backend.token,
            Call.of(plug_customer, "1"),
            calls,
        )
    )
    assert plug.status_code == 200, plug.text
    return responses


def history(api: httpx.Client, customer_id: str) -> list[Any]:
    """The whole (short) history, oldest first."""
    response = api.get(
        f"/admin/loyalty/points/{customer_id}/history",
        params={"order": "created_at", "limit": "100"},
    )
    assert response.status_code == 200, response.text
    items: list[Any] = decoded(response)["adjustments"]
    return items


def balance(api: httpx.Client, customer_id: str) -> Decimal:
    response = api.get(f"/admin/loyalty/points/{customer_id}")
    assert response.status_code == 200, response.text
    return Decimal(decoded(response)["balance"])


def test_refusals_in_a_batch_do_not_fail_the_others(api: httpx.Client, backend: Backend) -> None:
    """In one batch, an overdraw (400), an unknown customer (404), a key sent twice (409 for
    the second) and a key reused with another body (422) each get their own error and record
    nothing, while the healthy requests around them get 200 and are recorded, and their keys
    replay afterwards."""
    plug, earner, spender, other, keyholder = (new_customer(api)["id"] for _ in range(5))
    nobody = f"nobody-{uuid.uuid4().hex[:12]}"
    reused_key = new_key("reused")
    stored = Call.of(keyholder, "1", reused_key, reason="before the batch")
    first_use = api.post(
        "/admin/loyalty/points/adjust",
        content=stored.body.encode(),
        headers={"Content-Type": "application/json", "Idempotency-Key": reused_key},
    )
    assert first_use.status_code == 200, first_use.text
    earn_key, twice_key = new_key("earn"), new_key("twice")

    calls = [
        Call.of(earner, "5", earn_key, reason="healthy first"),
        Call.of(spender, "-1000", reason="overdraw"),
        Call.of(earner, "2", reason="healthy between"),
        Call.of(nobody, "1", reason="unknown customer"),
        Call.of(other, "3", twice_key, reason="key sent twice"),
        Call.of(other, "3", twice_key, reason="key sent twice"),
        Call.of(keyholder, "9", reused_key, reason="key reused with another body"),
        Call.of(other, "1", reason="healthy last"),
    ]
    responses = one_batch(backend, plug, calls)

    assert [r.status_code for r in responses] == [200, 400, 200, 404, 200, 409, 422, 200], [
        r.text for r in responses
    ]
    errors = [r.json() for r in responses if r.status_code != 200]
    assert [e["type"] for e in errors] == [
        "not_allowed",
        "not_found",
        "conflict",
        "idempotency_error",
    ]
    assert errors[1]["message"] == f"Customer with id: {nobody} was not found"
    assert_one_batch(responses)

    ok = [decoded(r) for r in responses if r.status_code == 200]
    assert [(b["customer_id"], b["balance_after"]) for b in ok] == [
        (earner, 5),
        (earner, 7),
        (other, 3),
        (other, 4),
    ]
    assert [(i["delta"], i["reason"]) for i in history(api, earner)] == [
        (5, "healthy first"),
        (2, "healthy between"),
    ]
    assert [(i["delta"], i["reason"]) for i in history(api, other)] == [
        (3, "key sent twice"),
        (1, "healthy last"),
    ]
    assert [i["id"] for i in history(api, earner)] == [ok[0]["id"], ok[1]["id"]]
    assert (balance(api, earner), balance(api, other)) == (7, 4)
    assert balance(api, spender) == 0 and history(api, spender) == []
    assert balance(api, keyholder) == 1 and len(history(api, keyholder)) == 1

    # The healthy requests' keys were kept with their responses; the refused ones' were not.
    for call, first in ((calls[0], responses[0]), (calls[4], responses[4])):
        again = api.post(
            "/admin/loyalty/points/adjust",
            content=call.body.encode(),
            headers={"Content-Type": "application/json", "Idempotency-Key": str(call.key)},
        )
        assert again.status_code == 200, again.text
        assert again.headers.get("Idempotent-Replayed") == "true"
        assert again.content == first.content
    assert (balance(api, earner), balance(api, other)) == (7, 4)


def test_one_customers_adjustments_in_a_batch_apply_in_arrival_order(
    api: httpx.Client, backend: Backend
) -> None:
    """+10 then -10 on an empty balance (negative balances forbidden), in one batch with
    another customer's +1 then -1 between them: all four are 200, each customer's history
    is in the order sent, and both balances end at 0."""
    plug, first, second = (new_customer(api)["id"] for _ in range(3))
    calls = [
        Call.of(first, "10", reason="credit"),
        Call.of(second, "1", reason="credit"),
        Call.of(first, "-10", reason="debit"),
        Call.of(second, "-1", reason="debit"),
    ]
    responses = one_batch(backend, plug, calls)

    assert [r.status_code for r in responses] == [200] * 4, [r.text for r in responses]
    assert_one_batch(responses)
    assert [decoded(r)["balance_after"] for r in responses] == [10, 1, 0, 0]
    for customer_id, delta in ((first, 10), (second, 1)):
        items = history(api, customer_id)
        assert [(i["delta"], i["balance_after"], i["reason"]) for i in items] == [
            (delta, delta, "credit"),
            (-delta, 0, "debit"),
        ]
        assert items[0]["id"] < items[1]["id"]
        assert balance(api, customer_id) == 0
