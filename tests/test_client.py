"""The Python client (clients/python, package loyalty_client) against a real server on both
databases: retries keep their Idempotency-Key, so a write retried after failures is recorded
once; Retry-After is honoured; only the failures worth retrying are retried; errors are typed
and carry the service's type and message; points are exact Decimals both ways."""

from __future__ import annotations

import http.server
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import httpx
import pytest

from loyalty_client import (
    Conflict,
    Forbidden,
    InvalidData,
    LoyaltyClient,
    NotFound,
    TooManyRequests,
    Unauthorized,
    Unexpected,
)
from loyalty_client.retry import KEY_IN_FLIGHT
from tests.support import ADMIN_EMAIL, ADMIN_PASSWORD, Backend, free_port


@dataclass
class Flaky:
    """A proxy in front of the service that answers the first `failures` requests itself
    (status, body, headers) and passes the rest on, recording every request's headers."""

    upstream: str
    failures: list[tuple[int, bytes, dict[str, str]]]
    seen: list[dict[str, str]] = field(default_factory=list)
    url: str = ""


@contextmanager
def flaky(upstream: str, *failures: tuple[int, bytes, dict[str, str]]) -> Iterator[Flaky]:
    state = Flaky(upstream, list(failures))

    class Handler(http.server.BaseHTTPRequestHandler):
        def _any(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length)
            state.seen.append({k.lower(): v for k, v in self.headers.items()})
            if state.failures:
                status, content, headers = state.failures.pop(0)
            else:
                forwarded = {
                    k: v for k, v in self.headers.items() if k.lower() not in ("host", "connection")
                }
                answer = httpx.request(
                    self.command, upstream + self.path, content=body, headers=forwarded, timeout=30
                )
                status, content = answer.status_code, answer.content
                headers = {"Content-Type": answer.headers.get("content-type", "")}
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(content)))
            self.end_headers()
            self.wfile.write(content)

        do_GET = do_POST = _any

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


@contextmanager
def via_proxy(
    backend: Backend, *failures: tuple[int, bytes, dict[str, str]], **options: Any
) -> Iterator[tuple[Flaky, LoyaltyClient]]:
    """A client (the admin's token; `options` for it) talking through a Flaky proxy."""
    options.setdefault("sleep", lambda s: None)
    with (
        flaky(backend.server.base_url, *failures) as proxy,
        LoyaltyClient(proxy.url, token=backend.token, **options) as client,
    ):
        yield proxy, client


UNAVAILABLE = (503, b'{"type":"unexpected_state","message":"busy"}', {"Retry-After": "2"})


@pytest.fixture
def client(backend: Backend) -> Iterator[LoyaltyClient]:
    with LoyaltyClient(backend.server.base_url, token=backend.token, sleep=lambda s: None) as c:
        yield c


def new_customer_id(client: LoyaltyClient) -> str:
    email = f"client-{uuid.uuid4().hex[:12]}@example.com"
    customer_id: str = client.create_customer(email)["id"]
    return customer_id


def test_a_retried_adjust_keeps_its_key_and_is_recorded_once(
    backend: Backend, client: LoyaltyClient
) -> None:
    customer_id = new_customer_id(client)
    waits: list[float] = []
    with via_proxy(backend, UNAVAILABLE, UNAVAILABLE, sleep=waits.append) as (proxy, through):
        answer = through.adjust(customer_id, Decimal("12.5"), "retried")
    keys = [headers.get("idempotency-key") for headers in proxy.seen]
    assert len(keys) == 3 and keys[0] and len(set(keys)) == 1, keys
    assert waits and all(wait >= 2 for wait in waits), waits  # Retry-After: 2
    assert answer["balance_after"] == Decimal("12.5")
    history = client.history(customer_id)
    assert history["count"] == 1, history


def test_a_key_in_flight_is_retried_and_replays_the_first_answer(
    backend: Backend, client: LoyaltyClient
) -> None:
    customer_id = new_customer_id(client)
    body = f'{{"type":"conflict","message":"{KEY_IN_FLIGHT}"}}'.encode()
    with via_proxy(backend, (409, body, {})) as (proxy, through):
        answer = through.adjust(customer_id, 3, reference=f"order-{uuid.uuid4().hex}")
    assert len({h["idempotency-key"] for h in proxy.seen}) == 1 and len(proxy.seen) == 2
    assert answer["balance_after"] == Decimal(3)


def test_other_client_errors_are_not_retried(backend: Backend) -> None:
    refusal = (400, b'{"type":"invalid_data","message":"delta is bad"}', {})
    with (
        via_proxy(backend, refusal, refusal) as (proxy, through),
        pytest.raises(InvalidData) as raised,
    ):
        through.adjust("anyone", 1)
    assert len(proxy.seen) == 1
    assert raised.value.status == 400 and raised.value.message == "delta is bad"


def test_retries_are_bounded_and_a_long_retry_after_is_not_waited_for(backend: Backend) -> None:
    with (
        via_proxy(backend, *[UNAVAILABLE] * 5, max_retries=2) as (proxy, through),
        pytest.raises(Unexpected) as raised,
    ):
        through.balance("anyone")
    assert len(proxy.seen) == 3 and raised.value.status == 503
    throttled = (429, b'{"type":"not_allowed","message":"slow down"}', {"Retry-After": "3600"})
    with (
        via_proxy(backend, throttled) as (proxy, through),
        pytest.raises(TooManyRequests) as throttle,
    ):
        through.balance("anyone")
    assert len(proxy.seen) == 1 and throttle.value.retry_after_s == 3600


def test_no_answer_at_all_is_retried_then_typed() -> None:
    waits: list[float] = []
    nobody_listens = f"http://127.0.0.1:{free_port()}"
    with (
        LoyaltyClient(nobody_listens, token="t", max_retries=2, sleep=waits.append) as nowhere,
        pytest.raises(Unexpected) as raised,
    ):
        nowhere.balance("anyone")
    assert raised.value.status == 0 and len(waits) == 2


def test_errors_are_typed_with_the_service_type_and_message(
    backend: Backend, client: LoyaltyClient
) -> None:
    with pytest.raises(NotFound) as missing:
        client.balance("nobody-" + uuid.uuid4().hex)
    assert missing.value.type == "not_found" and "was not found" in missing.value.message
    customer_id = new_customer_id(client)
    with pytest.raises(InvalidData) as invalid:
        client.adjust(customer_id, Decimal("0.001"))
    assert invalid.value.type == "invalid_data"
    assert [p.field for p in invalid.value.errors] == ["delta"]
    client.adjust(customer_id, 5, reference="order-1")
    with pytest.raises(Conflict) as duplicate:
        client.adjust(customer_id, 5, reference="order-1")
    assert duplicate.value.status == 409 and "order-1" in duplicate.value.message
    with LoyaltyClient(backend.server.base_url) as anonymous:
        with pytest.raises(Unauthorized):
            anonymous.balance(customer_id)
        with pytest.raises(Unauthorized):
            anonymous.login(ADMIN_EMAIL, "wrong password")


def test_points_are_exact_decimals_both_ways(backend: Backend, client: LoyaltyClient) -> None:
    customer_id = new_customer_id(client)
    client.adjust(customer_id, Decimal("0.1"))
    client.adjust(customer_id, "0.2")
    answer = client.adjust(customer_id, 100, include_history=True)
    assert answer["balance_after"] == Decimal("100.3")
    assert [item["delta"] for item in answer["history"]] == [100, Decimal("0.2"), Decimal("0.1")]
    assert all(isinstance(item["delta"], Decimal) for item in answer["history"])
    balance = client.balance(customer_id)["balance"]
    assert isinstance(balance, Decimal) and balance == Decimal("100.3")
    with pytest.raises(TypeError):
        client.adjust(customer_id, 0.1)  # type: ignore[arg-type]
    results = client.bulk_adjust(
        [{"customer_id": customer_id, "delta": Decimal("-0.3")}, {"customer_id": "x", "delta": 1}]
    )
    assert [r["status"] for r in results] == [200, 404]
    assert results[0]["adjustment"]["balance_after"] == Decimal(100)


def test_login_pages_and_reversal(backend: Backend) -> None:
    with LoyaltyClient(backend.server.base_url) as client:
        assert client.login(ADMIN_EMAIL, ADMIN_PASSWORD)["user"]["email"] == ADMIN_EMAIL
        customer_id = new_customer_id(client)
        assert client.get_customer(customer_id)["id"] == customer_id
        made = [client.adjust(customer_id, n, f"#{n}")["id"] for n in range(1, 6)]
        listed = [a["id"] for a in client.list_adjustments(customer_id=customer_id, page_size=2)]
        assert listed == made[::-1]
        reversal = client.reverse(made[0])
        assert reversal["reverses"] == made[0]
        assert client.get_adjustment(made[0])["reversed_points"] == Decimal(1)
        assert client.balance(customer_id)["balance"] == Decimal(14)


def test_a_secret_key_authenticates(backend: Backend, client: LoyaltyClient) -> None:
    key = client.create_api_key("client test", ["loyalty:read"])
    assert key["token"].startswith("sk_")
    with LoyaltyClient(backend.server.base_url, api_key=key["token"]) as keyed:
        customer_id = new_customer_id(client)
        assert keyed.balance(customer_id)["balance"] == 0
        with pytest.raises(Forbidden) as forbidden:
            keyed.adjust(customer_id, 1)
    assert "loyalty:write" in forbidden.value.message
