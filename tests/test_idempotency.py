"""`Idempotency-Key` on POST /admin/loyalty/points/adjust (SPEC section 5, section 6), on
SQLite and PostgreSQL: replays, mismatches, per-user keys, errors that do not consume a key,
key validation, races between requests, workers and server processes, SIGKILL while clients
retry, and the cleanup of expired keys.

Every keyed adjustment carries its key as its `reason`, so the ledger itself says how many
times each key was applied.
"""

from __future__ import annotations

import asyncio
import json
import random
import re
import socket
import threading
import time
import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest

from loyalty.db import open_database
from loyalty.idempotency.cleanup import delete_expired_keys
from loyalty.timestamps import now_ms
from tests.support import (
    ADMIN_EMAIL,
    ADMIN_PASSWORD,
    Backend,
    Server,
    assert_verify,
    decoded,
    free_port,
    full_history_async,
    log_tail,
    login,
    new_customer,
    statuses,
)

if TYPE_CHECKING:
    from tests.conftest import DatabaseFactory, ServerPair

ADJUST_PATH = "/admin/loyalty/points/adjust"
KEY_HEADER = "Idempotency-Key"
REPLAYED = "Idempotent-Replayed"
HOUR_MS = 3600 * 1000
WORKERS = 2
REQUEST_TIMEOUT_S = 60.0
LOAD_TIMEOUT_S = 120.0


# --- helpers -------------------------------------------------------------------------------


def new_key(label: str = "k") -> str:
    return f"{label}-{uuid.uuid4().hex}"


def body_text(customer_id: str, delta: str = "1", reason: str | None = None) -> str:
    """An adjust body written by hand, so the bytes are the same on every send."""
    fields = [f'"customer_id": {json.dumps(customer_id)}', f'"delta": {delta}']
    if reason is not None:
        fields.append(f'"reason": {json.dumps(reason)}')
    return "{" + ", ".join(fields) + "}"


def keyed(
    client: httpx.Client, body: str, key: str | bytes | None, **params: str
) -> httpx.Response:
    headers: dict[str, str | bytes] = {"Content-Type": "application/json"}
    if key is not None:
        headers[KEY_HEADER] = key
    return client.post(ADJUST_PATH, content=body.encode(), headers=headers, params=params)


@dataclass(frozen=True)
class State:
    balance: Decimal
    count: int
    updated_at: str | None


def state(client: httpx.Client, customer_id: str) -> State:
    """The balance, the history's length and the balance's updated_at."""
    balance = client.get(f"/admin/loyalty/points/{customer_id}")
    assert balance.status_code == 200, balance.text
    history = client.get(f"/admin/loyalty/points/{customer_id}/history", params={"limit": "1"})
    assert history.status_code == 200, history.text
    body = decoded(balance)
    return State(Decimal(body["balance"]), history.json()["count"], body["updated_at"])


def assert_ran(response: httpx.Response) -> Any:
    """A 200 that ran the adjustment (not a replay)."""
    assert response.status_code == 200, response.text
    assert REPLAYED.lower() not in response.headers, dict(response.headers)
    return decoded(response)


def assert_replay_of(response: httpx.Response, first: httpx.Response) -> None:
    """The first response again, byte for byte, marked as replayed."""
    assert response.status_code == first.status_code, response.text
    assert response.headers.get(REPLAYED) == "true", dict(response.headers)
    assert response.content == first.content
    assert response.headers["content-type"].startswith("application/json")


def assert_error(response: httpx.Response, status: int, error_type: str) -> Any:
    assert response.status_code == status, response.text
    assert REPLAYED.lower() not in response.headers
    body = response.json()
    assert body["type"] == error_type, body
    assert isinstance(body["message"], str) and body["message"]
    return body


def async_client(token: str, connections: int, base_url: str = "") -> httpx.AsyncClient:
    return httpx.AsyncClient(
        base_url=base_url,
        headers={"Authorization": f"Bearer {token}"},
        timeout=httpx.Timeout(REQUEST_TIMEOUT_S),
        limits=httpx.Limits(max_connections=connections, max_keepalive_connections=connections),
    )


async def async_post(
    client: httpx.AsyncClient, url: str, body: str, key: str
) -> httpx.Response | httpx.TransportError:
    try:
        return await client.post(
            url,
            content=body.encode(),
            headers={"Content-Type": "application/json", KEY_HEADER: key},
        )
    except httpx.TransportError as error:
        return error


def assert_each_key_once(history: Sequence[Any], keys: Sequence[str]) -> None:
    """The history is a +1 chain whose reasons are exactly `keys`, each once."""
    reasons = Counter(item["reason"] for item in history)
    duplicated = {reason: n for reason, n in reasons.items() if n > 1}
    assert not duplicated, f"keys applied more than once: {list(duplicated.items())[:5]}"
    assert set(reasons) == set(keys), (
        f"missing {sorted(set(keys) - set(reasons))[:5]},"
        f" unexpected {sorted(map(str, set(reasons) - set(keys)))[:5]}"
    )
    for position, item in enumerate(history, start=1):
        assert Decimal(item["delta"]) == 1
        assert Decimal(item["balance_after"]) == position, item
    assert [item["id"] for item in history] == sorted(item["id"] for item in history)


def check_race(
    responses: Sequence[httpx.Response | httpx.TransportError], label: str
) -> tuple[int, int]:
    """Responses to one key sent concurrently: each is a 200 with one body (exactly one of
    them not a replay) or a 409 conflict. Returns (replays, conflicts)."""
    counts = statuses(responses)
    assert set(counts) <= {200, 409}, (label, dict(counts))
    ok = [r for r in responses if isinstance(r, httpx.Response) and r.status_code == 200]
    ran = [r for r in ok if REPLAYED.lower() not in r.headers]
    assert len(ran) == 1, (label, f"{len(ran)} responses ran the adjustment", dict(counts))
    for response in ok:
        assert response.content == ran[0].content, label
        if response is not ran[0]:
            assert response.headers.get(REPLAYED) == "true", label
    for response in responses:
        if isinstance(response, httpx.Response) and response.status_code == 409:
            assert response.json()["type"] == "conflict", response.text
            assert REPLAYED.lower() not in response.headers
    return len(ok) - 1, counts[409]


# --- replays -------------------------------------------------------------------------------


def test_a_retry_replays_the_first_response_and_records_nothing(api: httpx.Client) -> None:
    """A retried key gets the first status and body bytes again, marked replayed, and
    records nothing, even after other adjustments moved the balance."""
    customer_id = new_customer(api)["id"]
    key = new_key()
    body = body_text(customer_id, "10.5", "first")
    first = keyed(api, body, key)
    first_json = assert_ran(first)
    assert first_json["balance_after"] == Decimal("10.5")
    assert set(first_json) == {"id", "customer_id", "balance_after", "updated_at"}
    after_first = state(api, customer_id)
    assert after_first == State(Decimal("10.5"), 1, first_json["updated_at"])

    for _ in range(3):
        assert_replay_of(keyed(api, body, key), first)
        assert state(api, customer_id) == after_first

    # Another adjustment moves the balance; the replay still answers as the first time.
    other = keyed(api, body_text(customer_id, "2"), None)
    assert_ran(other)
    moved = state(api, customer_id)
    assert moved.balance == Decimal("12.5") and moved.count == 2
    assert_replay_of(keyed(api, body, key), first)
    assert state(api, customer_id) == moved
    # The header name is case-insensitive, as every HTTP header is.
    lowercase = api.post(
        ADJUST_PATH,
        content=body.encode(),
        headers={"content-type": "application/json", KEY_HEADER.lower(): key},
    )
    assert_replay_of(lowercase, first)
    assert state(api, customer_id) == moved


def test_a_retry_with_include_history_replays_the_first_history(api: httpx.Client) -> None:
    """With include_history=true the replay is the first body (its history as it was then),
    and it records nothing."""
    customer_id = new_customer(api)["id"]
    assert_ran(keyed(api, body_text(customer_id, "5", "earlier"), None))
    key = new_key()
    body = body_text(customer_id, "7", "with history")
    first = keyed(api, body, key, include_history="true")
    first_json = assert_ran(first)
    assert [item["reason"] for item in first_json["history"]] == ["with history", "earlier"]
    assert first_json["history"][0]["id"] == first_json["id"]
    after_first = state(api, customer_id)
    assert after_first.count == 2 and after_first.balance == 12

    assert_replay_of(keyed(api, body, key, include_history="true"), first)
    assert state(api, customer_id) == after_first

    assert_ran(keyed(api, body_text(customer_id, "1", "later"), None))
    moved = state(api, customer_id)
    replay = keyed(api, body, key, include_history="true")
    assert_replay_of(replay, first)
    assert len(decoded(replay)["history"]) == 2
    assert state(api, customer_id) == moved


# --- the same key with a different request -------------------------------------------------


def test_the_same_key_with_a_different_request_is_422(api: httpx.Client) -> None:
    """A key reused with another body or query is 422 idempotency_error and records nothing;
    the first request still replays afterwards."""
    customer_id = new_customer(api)["id"]
    other_customer = new_customer(api)["id"]
    key = new_key()
    body = body_text(customer_id, "10", "original")
    first = keyed(api, body, key)
    assert_ran(first)
    recorded = state(api, customer_id)

    variants: list[tuple[str, dict[str, str]]] = [
        (body_text(customer_id, "11", "original"), {}),  # another delta
        (body_text(customer_id, "10", "changed"), {}),  # another reason
        (body_text(customer_id, "10"), {}),  # no reason
        (body_text(customer_id, "-10", "original"), {}),  # the opposite delta
        (body_text(other_customer, "10", "original"), {}),  # another customer
        (body, {"include_history": "true"}),  # the same body, another query
    ]
    for variant, params in variants:
        response = keyed(api, variant, key, **params)
        assert_error(response, 422, "idempotency_error")
        assert state(api, customer_id) == recorded
        assert state(api, other_customer) == State(Decimal(0), 0, None)

    assert_replay_of(keyed(api, body, key), first)
    assert state(api, customer_id) == recorded


def test_a_key_first_used_with_include_history_rejects_the_plain_request(
    api: httpx.Client,
) -> None:
    """A key first used with ?include_history=true is 422 without the query, and the
    history request still replays."""
    customer_id = new_customer(api)["id"]
    key = new_key()
    body = body_text(customer_id, "3")
    first = keyed(api, body, key, include_history="true")
    assert "history" in assert_ran(first)
    recorded = state(api, customer_id)
    assert_error(keyed(api, body, key), 422, "idempotency_error")
    assert state(api, customer_id) == recorded
    assert_replay_of(keyed(api, body, key, include_history="true"), first)
    assert state(api, customer_id) == recorded


# --- keys belong to a user -----------------------------------------------------------------


@pytest.fixture(scope="module")
def writer_token(backend: Backend) -> str:
    """A second admin user, with loyalty:write and loyalty:read only."""
    return backend.user_token("loyalty:write", "loyalty:read")


def test_keys_are_per_user(api: httpx.Client, backend: Backend, writer_token: str) -> None:
    """Another user's request with the same key runs its own adjustment; each user's retry
    replays its own response."""
    customer_id = new_customer(api)["id"]
    key = new_key()
    body = body_text(customer_id, "4", "shared key")
    admin_first = keyed(api, body, key)
    admin_json = assert_ran(admin_first)

    with backend.client(writer_token) as other:
        other_first = keyed(other, body, key)
        other_json = assert_ran(other_first)
        assert other_json["id"] != admin_json["id"]
        assert other_json["balance_after"] == 8
        assert state(api, customer_id).count == 2

        assert_replay_of(keyed(other, body, key), other_first)
        assert_replay_of(keyed(api, body, key), admin_first)
        # The other user's key is now bound to its own request too.
        assert_error(keyed(other, body_text(customer_id, "5"), key), 422, "idempotency_error")
        # And a key only the other user has used is still free for the admin.
        fresh = new_key()
        other_only = keyed(other, body_text(customer_id, "1", "other only"), fresh)
        assert_ran(other_only)
        admin_own = keyed(api, body_text(customer_id, "2", "admin own"), fresh)
        assert assert_ran(admin_own)["balance_after"] == 11
    final = state(api, customer_id)
    assert final.balance == 11 and final.count == 4


# --- error responses do not consume the key ------------------------------------------------


def test_a_404_does_not_consume_the_key(api: httpx.Client) -> None:
    """Unknown customer with a key → 404; once the customer exists, the very same request
    with that key runs and records, and then replays."""
    customer_id = f"idem-{uuid.uuid4().hex[:16]}"
    key = new_key()
    body = body_text(customer_id, "9", "before the customer existed")
    missing = keyed(api, body, key)
    body_404 = assert_error(missing, 404, "not_found")
    assert body_404["message"] == f"Customer with id: {customer_id} was not found"
    # Retrying the failed request is not a replay: it fails again the same way.
    assert_error(keyed(api, body, key), 404, "not_found")

    created = api.post(
        "/admin/customers", json={"email": f"{customer_id}@example.com", "id": customer_id}
    )
    assert created.status_code == 200, created.text
    first = keyed(api, body, key)
    assert assert_ran(first)["balance_after"] == 9
    assert state(api, customer_id).count == 1
    assert_replay_of(keyed(api, body, key), first)
    assert state(api, customer_id).count == 1

    # After a 404, a different request with the key runs too: nothing was kept.
    other_key = new_key()
    assert_error(keyed(api, body_text(f"{customer_id}-nobody", "1"), other_key), 404, "not_found")
    other = keyed(api, body_text(customer_id, "2", "another request"), other_key)
    assert assert_ran(other)["balance_after"] == 11
    assert_replay_of(keyed(api, body_text(customer_id, "2", "another request"), other_key), other)
    assert state(api, customer_id).count == 2


def test_a_refused_overdraw_does_not_consume_the_key(api: httpx.Client) -> None:
    """Insufficient points with a key → 400 not_allowed, nothing kept; after a credit the
    same request with that key runs."""
    customer_id = new_customer(api)["id"]
    key = new_key()
    body = body_text(customer_id, "-5", "redeem")
    refused = assert_error(keyed(api, body, key), 400, "not_allowed")
    assert re.search(r"\b0\b", refused["message"]), refused["message"]
    assert state(api, customer_id) == State(Decimal(0), 0, None)

    assert_ran(keyed(api, body_text(customer_id, "10", "credit"), None))
    first = keyed(api, body, key)
    assert assert_ran(first)["balance_after"] == 5
    assert_replay_of(keyed(api, body, key), first)
    final = state(api, customer_id)
    assert final.balance == 5 and final.count == 2


def test_invalid_bodies_do_not_consume_the_key(api: httpx.Client) -> None:
    """Invalid bodies with a key → 400 invalid_data; then a valid request with the key runs
    and records, and replays."""
    customer_id = new_customer(api)["id"]
    key = new_key()
    for invalid in (
        body_text(customer_id, "0"),
        body_text(customer_id, '"5"'),
        body_text(customer_id, "0.001"),
        '{"customer_id": ' + json.dumps(customer_id) + ', "delta": 1, "points": 1}',
        '{"customer_id": ',
        "[]",
    ):
        assert_error(keyed(api, invalid, key), 400, "invalid_data")
    # A bad query parameter fails before anything is stored, too.
    assert_error(
        keyed(api, body_text(customer_id, "1"), key, include_history="yes"), 400, "invalid_data"
    )
    assert state(api, customer_id) == State(Decimal(0), 0, None)

    body = body_text(customer_id, "6", "valid at last")
    first = keyed(api, body, key)
    assert assert_ran(first)["balance_after"] == 6
    assert_replay_of(keyed(api, body, key), first)
    assert state(api, customer_id).count == 1


# --- key validation ------------------------------------------------------------------------


INVALID_KEYS: list[tuple[str, str | bytes]] = [
    ("empty", ""),
    ("256-chars", "a" * 256),
    ("space-inside", "two words"),
    ("non-ascii-utf8", "caf\u00e9".encode()),
    ("non-ascii-latin1", b"\xff\xfe"),
    ("tab-inside", "a\tb"),
]


@pytest.mark.parametrize("key", [k for _, k in INVALID_KEYS], ids=[n for n, _ in INVALID_KEYS])
def test_invalid_keys_are_400_and_record_nothing(api: httpx.Client, key: str | bytes) -> None:
    """Keys that are not 1-255 visible ASCII characters are 400 invalid_data, nothing recorded."""
    customer_id = new_customer(api)["id"]
    response = keyed(api, body_text(customer_id, "1"), key)
    body = assert_error(response, 400, "invalid_data")
    assert "Idempotency-Key" in body["message"]
    assert state(api, customer_id) == State(Decimal(0), 0, None)


def raw_adjust(port: int, token: str, body: bytes, key: bytes) -> tuple[int, bytes]:
    """An adjust request written on a socket, for header bytes no HTTP client will send."""
    request = (
        b"POST " + ADJUST_PATH.encode() + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b"Authorization: Bearer " + token.encode() + b"\r\n"
        b"Content-Type: application/json\r\n"
        b"Content-Length: " + str(len(body)).encode() + b"\r\n"
        b"Idempotency-Key: " + key + b"\r\nConnection: close\r\n\r\n" + body
    )
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(request)
        data = b""
        for _ in range(10_000):
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    status_line, _, rest = data.partition(b"\r\n")
    return int(status_line.split()[1]), rest.partition(b"\r\n\r\n")[2]


@pytest.mark.parametrize("control", [b"\x00", b"\x01", b"\x1b", b"\x1f", b"\x7f"])
def test_control_characters_in_the_key_are_400_and_record_nothing(
    api: httpx.Client, backend: Backend, control: bytes
) -> None:
    """A key with a control character (sent as raw bytes) is a 400 and records nothing."""
    customer_id = new_customer(api)["id"]
    status, body = raw_adjust(
        backend.server.port,
        backend.token,
        body_text(customer_id, "1").encode(),
        b"a" + control + b"b",
    )
    assert status == 400, body
    assert b"Traceback" not in body
    assert state(api, customer_id) == State(Decimal(0), 0, None)


def test_a_255_character_visible_ascii_key_is_accepted(
    api: httpx.Client, backend: Backend, writer_token: str
) -> None:
    """255 visible ASCII characters (punctuation included) and a 1-character key both work."""
    customer_id = new_customer(api)["id"]
    visible = "".join(chr(c) for c in range(0x21, 0x7F))
    key = (uuid.uuid4().hex + visible * 3)[:255]
    assert len(key) == 255
    body = body_text(customer_id, "2")
    first = keyed(api, body, key)
    assert_ran(first)
    assert_replay_of(keyed(api, body, key), first)
    assert state(api, customer_id).count == 1

    with backend.client(writer_token) as writer:
        one = keyed(writer, body_text(customer_id, "3"), "~")
        assert_ran(one)
        assert_replay_of(keyed(writer, body_text(customer_id, "3"), "~"), one)
    final = state(api, customer_id)
    assert final.balance == 5 and final.count == 2


# --- races ---------------------------------------------------------------------------------


def cluster_customer(cluster: Backend) -> str:
    with httpx.Client(
        base_url=cluster.server.base_url,
        headers={"Authorization": f"Bearer {cluster.token}"},
        timeout=30,
    ) as client:
        customer_id: str = new_customer(client)["id"]
        return customer_id


async def send_keyed_jobs(
    jobs: Sequence[tuple[httpx.AsyncClient, str, str, str]],
) -> list[httpx.Response | httpx.TransportError]:
    """All (client, base_url, body, key) at once."""
    return await asyncio.wait_for(
        asyncio.gather(
            *(
                async_post(client, f"{base}{ADJUST_PATH}", body, key)
                for client, base, body, key in jobs
            )
        ),
        timeout=LOAD_TIMEOUT_S,
    )


def test_30_concurrent_requests_with_one_key_apply_once(cluster: Backend) -> None:
    """30 identical requests with one key at once, on 2 workers: one adjustment; every answer
    is that 200 (or its replay) or a 409 conflict."""
    customer_id = cluster_customer(cluster)
    key = new_key("race")
    body = body_text(customer_id, "1", key)
    base = cluster.server.base_url

    async def main() -> tuple[list[httpx.Response | httpx.TransportError], list[Any]]:
        async with async_client(cluster.token, 30) as client:
            responses = await send_keyed_jobs([(client, base, body, key)] * 30)
            history = await full_history_async(client, customer_id, base)
            return responses, history

    responses, history = asyncio.run(main())
    print(f"\n[{cluster.kind}] 30 requests with one key: {dict(statuses(responses))}")
    replays, conflicts = check_race(responses, key)
    assert replays + conflicts == 29
    assert_each_key_once(history, [key])

    with httpx.Client(
        base_url=base, headers={"Authorization": f"Bearer {cluster.token}"}, timeout=30
    ) as client:
        ran = next(
            r
            for r in responses
            if isinstance(r, httpx.Response)
            and r.status_code == 200
            and REPLAYED.lower() not in r.headers
        )
        assert_replay_of(keyed(client, body, key), ran)
        assert state(client, customer_id) == State(Decimal(1), 1, decoded(ran)["updated_at"])


def race_many_keys(
    bases: Sequence[str], token: str, customer_id: str, keys: Sequence[str], copies: int, seed: int
) -> tuple[list[httpx.Response | httpx.TransportError], list[tuple[str, str]], list[Any]]:
    """Every key sent `copies` times, shuffled, all at once, spread over `bases`."""
    rng = random.Random(seed)
    plan = [
        (bases[(i + copy) % len(bases)], key)
        for i, key in enumerate(keys)
        for copy in range(copies)
    ]
    rng.shuffle(plan)

    async def main() -> tuple[list[httpx.Response | httpx.TransportError], list[Any]]:
        async with async_client(token, 64) as client:
            jobs = [(client, base, body_text(customer_id, "1", key), key) for base, key in plan]
            responses = await send_keyed_jobs(jobs)
            history = await full_history_async(client, customer_id, bases[0])
            return responses, history

    responses, history = asyncio.run(main())
    return responses, plan, history


def check_many_keys(
    responses: Sequence[httpx.Response | httpx.TransportError],
    plan: Sequence[tuple[str, str]],
    history: Sequence[Any],
    keys: Sequence[str],
) -> tuple[int, int]:
    by_key: dict[str, list[httpx.Response | httpx.TransportError]] = {}
    for (_base, key), response in zip(plan, responses, strict=True):
        by_key.setdefault(key, []).append(response)
    replays = conflicts = 0
    for key, answers in by_key.items():
        r, c = check_race(answers, key)
        replays += r
        conflicts += c
    assert_each_key_once(history, keys)
    ran_ids = {
        decoded(r)["id"]
        for r in responses
        if isinstance(r, httpx.Response) and r.status_code == 200
    }
    assert ran_ids == {item["id"] for item in history}
    return replays, conflicts


def test_50_keys_sent_4_times_each_concurrently_apply_50_times(cluster: Backend) -> None:
    """200 concurrent requests, 50 distinct keys each sent 4 times, on 2 workers: exactly 50
    adjustments, balance 50."""
    customer_id = cluster_customer(cluster)
    keys = [new_key(f"many{i:02d}") for i in range(50)]
    started = time.monotonic()
    responses, plan, history = race_many_keys(
        [cluster.server.base_url], cluster.token, customer_id, keys, 4, seed=50
    )
    elapsed = time.monotonic() - started
    replays, conflicts = check_many_keys(responses, plan, history, keys)
    print(
        f"\n[{cluster.kind}] 50 keys x 4 concurrent: {elapsed:.2f}s,"
        f" statuses {dict(statuses(responses))}, replays {replays}, conflicts {conflicts}"
    )
    with httpx.Client(
        base_url=cluster.server.base_url,
        headers={"Authorization": f"Bearer {cluster.token}"},
        timeout=30,
    ) as client:
        final = state(client, customer_id)
    assert final.balance == 50 and final.count == 50


def test_two_server_processes_apply_each_key_once_on_postgresql(
    pg_server_pair: ServerPair,
) -> None:
    """Two `loyalty serve --workers 2` on one PostgreSQL database, the same keys sent to both
    at once: each key is applied exactly once."""
    first, second, token = pg_server_pair.first, pg_server_pair.second, pg_server_pair.token
    with httpx.Client(
        base_url=first.base_url, headers={"Authorization": f"Bearer {token}"}, timeout=30
    ) as client:
        customer_id = new_customer(client)["id"]
    keys = [new_key(f"two{i:02d}") for i in range(60)]
    responses, plan, history = race_many_keys(
        [first.base_url, second.base_url], token, customer_id, keys, 4, seed=2
    )
    replays, conflicts = check_many_keys(responses, plan, history, keys)
    print(
        f"\n[postgresql] two servers, 60 keys x 4 (2 to each server):"
        f" statuses {dict(statuses(responses))}, replays {replays}, conflicts {conflicts}"
    )
    ran = {
        decoded(r)["id"]: r.content
        for r in responses
        if isinstance(r, httpx.Response)
        and r.status_code == 200
        and REPLAYED.lower() not in r.headers
    }
    # Afterwards each key replays its one response from either server.
    for server in (first, second):
        with httpx.Client(
            base_url=server.base_url, headers={"Authorization": f"Bearer {token}"}, timeout=30
        ) as client:
            for key in keys[:10]:
                response = keyed(client, body_text(customer_id, "1", key), key)
                assert response.status_code == 200, response.text
                assert response.headers.get(REPLAYED) == "true"
                assert ran[decoded(response)["id"]] == response.content
            final = state(client, customer_id)
            assert final.balance == 60 and final.count == 60, log_tail(first, second)
    assert_verify(pg_server_pair.url)


# --- SIGKILL while clients retry -----------------------------------------------------------


KILL_ROUNDS = 2
CLIENTS = 16
CUSTOMERS = 3
LOAD_S = 1.5
TRIES_MAX = 50
KEYS_PER_CLIENT = 5000  # more than a client gets through: it stops when told to


@dataclass
class Target:
    """Where the clients send: switched if a restart cannot get the same port back."""

    base_url: str


@dataclass
class RetryTally:
    keys: dict[str, str] = field(default_factory=dict)  # every key sent → its customer
    answers: dict[str, bytes] = field(default_factory=dict)  # key → body of its 200
    tries: dict[str, int] = field(default_factory=dict)  # key → sends until the 200
    replayed: set[str] = field(default_factory=set)  # keys whose 200 was a replay
    retries: int = 0
    statuses: Counter[int] = field(default_factory=Counter)
    transport_errors: Counter[str] = field(default_factory=Counter)
    mismatched: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    unresolved: list[str] = field(default_factory=list)


async def retrying_client(
    client: httpx.AsyncClient,
    target: Target,
    number: int,
    customers: Sequence[str],
    tally: RetryTally,
    stop: asyncio.Event,
) -> None:
    """Adjusts +1 with a new key each time; retries the same key (same bytes) on any
    transport error, 5xx or 409 until a 200 or a 422, at most TRIES_MAX sends per key."""
    customer_id = customers[number % len(customers)]
    for index in range(KEYS_PER_CLIENT):
        if stop.is_set():
            return
        key = f"kill-{number:02d}-{index:05d}-{uuid.uuid4().hex[:8]}"
        body = body_text(customer_id, "1", key).encode()
        tally.keys[key] = customer_id
        for attempt in range(1, TRIES_MAX + 1):
            if attempt > 1:
                tally.retries += 1
                await asyncio.sleep(min(0.05 * attempt, 0.5))
            try:
                response = await client.post(
                    f"{target.base_url}{ADJUST_PATH}",
                    content=body,
                    headers={"Content-Type": "application/json", KEY_HEADER: key},
                )
            except httpx.TransportError as error:
                tally.transport_errors[type(error).__name__] += 1
                continue
            tally.statuses[response.status_code] += 1
            if response.status_code == 200:
                tally.answers[key] = response.content
                tally.tries[key] = attempt
                if response.headers.get(REPLAYED) == "true":
                    tally.replayed.add(key)
                break
            if response.status_code == 422:
                tally.mismatched.append(f"{key}: {response.text[:200]}")
                break
            if response.status_code == 409 or response.status_code >= 500:
                continue
            tally.unexpected.append(f"{key}: {response.status_code} {response.text[:200]}")
            break
        else:
            tally.unresolved.append(key)


def test_sigkill_while_clients_retry_applies_every_key_exactly_once(
    databases: DatabaseFactory, tmp_path: Path
) -> None:
    """SIGKILL of `serve --workers 2` twice under load while 16 clients retry with their keys:
    after the restarts every key is applied exactly once (balance = distinct keys)."""
    url = databases.new_url()
    port = free_port()
    servers = [Server.launch(url, tmp_path, WORKERS, port)]
    same_port_restarts = 0

    def relaunch() -> Server:
        nonlocal same_port_restarts
        try:
            server = Server.launch(url, tmp_path, WORKERS, port)
        except RuntimeError:  # the port is not free again yet: a new one
            return Server.launch(url, tmp_path, WORKERS)
        same_port_restarts += 1
        return server

    try:
        token = login(servers[0], ADMIN_EMAIL, ADMIN_PASSWORD)
        with httpx.Client(
            base_url=servers[0].base_url, headers={"Authorization": f"Bearer {token}"}, timeout=30
        ) as client:
            customers = [new_customer(client)["id"] for _ in range(CUSTOMERS)]
        target = Target(servers[0].base_url)
        tally = RetryTally()
        per_round: list[int] = []

        async def main() -> None:
            stop = asyncio.Event()
            async with async_client(token, CLIENTS) as client:
                tasks = [
                    asyncio.create_task(retrying_client(client, target, n, customers, tally, stop))
                    for n in range(CLIENTS)
                ]
                for _round in range(KILL_ROUNDS):
                    await asyncio.sleep(LOAD_S)
                    per_round.append(len(tally.answers))
                    await asyncio.to_thread(servers[-1].kill)
                    restarted = await asyncio.to_thread(relaunch)
                    servers.append(restarted)
                    target.base_url = restarted.base_url
                await asyncio.sleep(LOAD_S / 2)
                stop.set()
                await asyncio.wait_for(asyncio.gather(*tasks), timeout=LOAD_TIMEOUT_S)

        asyncio.run(main())
        final_server = servers[-1]
        print(
            f"\n[{databases.kind}] SIGKILL x{KILL_ROUNDS} ({same_port_restarts} restarts on the"
            f" same port): {len(tally.keys)} keys over {CLIENTS} clients, {tally.retries}"
            f" retries, {len(tally.replayed)} keys answered by a replay, answered before each"
            f" kill {per_round}, most sends for one key {max(tally.tries.values(), default=0)},"
            f" statuses {dict(tally.statuses)}, transport errors {dict(tally.transport_errors)}"
        )
        assert not tally.unresolved, (tally.unresolved[:5], log_tail(final_server))
        assert not tally.mismatched, (tally.mismatched[:5], log_tail(final_server))
        assert not tally.unexpected, (tally.unexpected[:5], log_tail(final_server))
        assert set(tally.answers) == set(tally.keys)
        assert sum(tally.transport_errors.values()) > 0, "the kills were never felt"
        assert all(per_round), f"no 200 before a kill: {per_round}"
        # A fresh key can only be replayed after a send whose answer was lost.
        assert all(tally.tries[key] > 1 for key in tally.replayed)

        async def check() -> list[str]:
            figures = []
            async with async_client(token, 8) as client:
                for customer_id in customers:
                    keys = [key for key, cid in tally.keys.items() if cid == customer_id]
                    history = await full_history_async(client, customer_id, target.base_url)
                    assert_each_key_once(history, keys)
                    by_reason = {item["reason"]: item for item in history}
                    for key in keys:
                        answer = json.loads(tally.answers[key], parse_float=Decimal)
                        item = by_reason[key]
                        assert answer["id"] == item["id"], key
                        assert Decimal(answer["balance_after"]) == Decimal(item["balance_after"])
                    response = await client.get(
                        f"{target.base_url}/admin/loyalty/points/{customer_id}"
                    )
                    assert response.status_code == 200, response.text
                    assert Decimal(decoded(response)["balance"]) == len(keys)
                    figures.append(f"{customer_id[-6:]}: {len(keys)} keys = balance")
                # After all this, a retry of any key is still its replay.
                sample = sorted(tally.replayed)[:20] + random.Random(7).sample(
                    sorted(tally.keys), min(20, len(tally.keys))
                )
                for key in sample:
                    body = body_text(tally.keys[key], "1", key)
                    response = await async_post(
                        client, f"{target.base_url}{ADJUST_PATH}", body, key
                    )
                    assert isinstance(response, httpx.Response), response
                    assert response.status_code == 200, response.text
                    assert response.headers.get(REPLAYED) == "true"
                    assert response.content == tally.answers[key]
            return figures

        print(f"[{databases.kind}] after restart: {'; '.join(asyncio.run(check()))}")
        assert_verify(url)
    finally:
        for server in servers:
            server.stop()


# --- cleanup of expired keys ---------------------------------------------------------------


def test_cleanup_removes_expired_keys_and_keeps_the_rest(
    api: httpx.Client, backend: Backend
) -> None:
    """delete_expired_keys removes keys older than 24 h (in chunks, while requests go on) and
    keeps younger ones: a 23-hour-old key still replays, a 25-hour-old one is free again."""
    login_body = api.post(
        "/admin/auth/token", json={"email": ADMIN_EMAIL, "password": ADMIN_PASSWORD}
    )
    assert login_body.status_code == 200, login_body.text
    user_id = login_body.json()["user"]["id"]
    customer_id = new_customer(api)["id"]
    old_key, day_key, fresh_key = new_key("old"), new_key("day"), new_key("fresh")
    first = {}
    for key in (old_key, day_key, fresh_key):
        first[key] = keyed(api, body_text(customer_id, "1", key), key)
        assert_ran(first[key])
    bulk_user = f"user_cleanup_{uuid.uuid4().hex[:12]}"
    expired_rows = 1200  # more than two chunks of the cleanup

    async def prepare() -> None:
        db = await open_database(backend.database_url)
        try:
            now = now_ms()
            async with db.write() as conn:
                for key, age_ms in ((old_key, 25 * HOUR_MS), (day_key, 23 * HOUR_MS)):
                    await conn.execute(
                        "UPDATE idempotency_keys SET created_at_ms = $1"
                        " WHERE user_id = $2 AND key = $3",
                        now - age_ms,
                        user_id,
                        key,
                    )
                rows: list[tuple[object, ...]] = [
                    (bulk_user, f"expired-{i}", "0" * 64, 200, b"{}", now - 25 * HOUR_MS - i)
                    for i in range(expired_rows)
                ]
                rows.append((bulk_user, "fresh", "0" * 64, 200, b"{}", now))
                await conn.executemany(
                    "INSERT INTO idempotency_keys (user_id, key, request_hash, status,"
                    " response, created_at_ms) VALUES ($1, $2, $3, $4, $5, $6)",
                    rows,
                )
        finally:
            await db.close()

    async def clean() -> tuple[int, float]:
        db = await open_database(backend.database_url)
        try:
            started = time.monotonic()
            deleted = await delete_expired_keys(db)
            return deleted, time.monotonic() - started
        finally:
            await db.close()

    async def remaining() -> tuple[set[str], set[str]]:
        db = await open_database(backend.database_url)
        try:
            async with db.read() as conn:
                mine = await conn.fetch(
                    "SELECT key FROM idempotency_keys WHERE user_id = $1 AND key = ANY($2)",
                    user_id,
                    [old_key, day_key, fresh_key],
                )
                bulk = await conn.fetch(
                    "SELECT key FROM idempotency_keys WHERE user_id = $1", bulk_user
                )
            return {row[0] for row in mine}, {row[0] for row in bulk}
        finally:
            await db.close()

    asyncio.run(prepare())

    # Requests keep going while the cleanup runs.
    done = threading.Event()
    latencies: list[float] = []
    answers: Counter[int] = Counter()

    def traffic() -> None:
        with backend.client() as client:
            for _ in range(2000):
                if done.is_set():
                    return
                started = time.monotonic()
                response = keyed(client, body_text(customer_id, "1", "during cleanup"), None)
                latencies.append(time.monotonic() - started)
                answers[response.status_code] += 1

    worker = threading.Thread(target=traffic)
    worker.start()
    try:
        time.sleep(0.1)
        deleted, took = asyncio.run(clean())
        time.sleep(0.1)
    finally:
        done.set()
        worker.join(timeout=60)
    print(
        f"\n[{backend.kind}] cleanup deleted {deleted} keys in {took:.2f}s; during it"
        f" {sum(answers.values())} adjustments, statuses {dict(answers)},"
        f" slowest {max(latencies, default=0) * 1000:.0f} ms"
    )
    assert deleted >= expired_rows + 1
    assert set(answers) == {200}, dict(answers)

    mine, bulk = asyncio.run(remaining())
    assert mine == {day_key, fresh_key}
    assert bulk == {"fresh"}

    before = state(api, customer_id)
    assert_replay_of(keyed(api, body_text(customer_id, "1", day_key), day_key), first[day_key])
    assert_replay_of(
        keyed(api, body_text(customer_id, "1", fresh_key), fresh_key), first[fresh_key]
    )
    assert state(api, customer_id) == before
    # The expired key was forgotten: the same request runs again as a new one.
    again = keyed(api, body_text(customer_id, "1", old_key), old_key)
    assert assert_ran(again)["id"] != decoded(first[old_key])["id"]
    after = state(api, customer_id)
    assert after.count == before.count + 1 and after.balance == before.balance + 1
