"""Security: login throttling, login cost, token algorithms, disabled users, CORS, body limits,
bounded strings and SQL that only ever sees bound parameters. On SQLite and PostgreSQL.

Tests that fail logins on purpose run their own servers (fresh databases), so the session's
shared server never throttles the other tests' logins from 127.0.0.1.
"""

from __future__ import annotations

import base64
import json
import socket
import time
import uuid
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import jwt
import pytest
from jwt.warnings import InsecureKeyLengthWarning

from loyalty.config import ConfigError, Settings
from tests.conftest import DatabaseFactory, backend_fixture
from tests.support import (
    ADMIN_EMAIL,
    ADMIN_PASSWORD,
    JWT_SECRET,
    Backend,
    Server,
    adjust,
    new_customer,
    run_cli,
    user_create,
)

REQUIRED = {"type": "unauthorized", "message": "Authentication required"}
INVALID_LOGIN = {"type": "unauthorized", "message": "Invalid email or password"}
LOGIN_PATHS = ["/admin/auth/token", "/auth/user/emailpass"]
BODY_MAX = 64 * 1024
WINDOW_S = 900


# --- helpers --------------------------------------------------------------------------------


def post_login(base_url: str, email: str, password: str, **kwargs: Any) -> httpx.Response:
    return httpx.post(
        f"{base_url}{kwargs.pop('path', LOGIN_PATHS[0])}",
        json={"email": email, "password": password},
        timeout=30,
        **kwargs,
    )


def make_user(database_url: str, *scopes: str) -> str:
    """A new admin user (every scope unless some are given); returns its email."""
    email = f"sec-{uuid.uuid4().hex[:12]}@example.com"
    result = user_create(database_url, email, scopes=scopes)
    assert result.returncode == 0, result.stderr
    return email


@contextmanager
def server_with_user(
    databases: DatabaseFactory, tmp_path: Path, **env: str
) -> Iterator[tuple[Server, str]]:
    """A server of the test's own on a fresh database, started with `env`, and the email of
    a user made there before it started."""
    url = databases.new_url()
    email = make_user(url)
    with Server.start(url, tmp_path, **env) as server:
        yield server, email


def unknown_email() -> str:
    return f"nobody-{uuid.uuid4().hex[:12]}@example.com"


def assert_throttled(response: httpx.Response) -> None:
    """429 in the error envelope, with a Retry-After of whole seconds within the window."""
    assert response.status_code == 429, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert body["type"] == "not_allowed"
    assert isinstance(body["message"], str) and body["message"]
    assert "token" not in body
    retry_after = response.headers["retry-after"]
    assert retry_after.isdigit(), retry_after
    assert 1 <= int(retry_after) <= WINDOW_S


own = backend_fixture(
    "own",
    """A server of this file's own, on a fresh database: 3 failed logins allowed per email
    (and many per address) for the throttling tests; and the SQL-like names and reasons of
    the injection tests stay here, out of the session's shared server, where other files
    list customers and check responses for leaked SQL.""",
    LOYALTY_LOGIN_MAX_FAILURES_PER_EMAIL="3",
    LOYALTY_LOGIN_MAX_FAILURES_PER_ADDRESS="1000",
)


@pytest.fixture
def own_api(own: Backend) -> Iterator[httpx.Client]:
    """The admin's client on this file's own server."""
    with own.client() as client:
        yield client


# --- login throttling -----------------------------------------------------------------------


def test_default_login_limits_and_closed_cors() -> None:
    """Unset, the limits are 10 failures per email and 30 per address in 15 minutes, no proxy
    is trusted and CORS is closed; nonsense values are refused at start."""
    settings = Settings.from_env({})
    assert settings.login_window_seconds == WINDOW_S
    assert settings.login_max_failures_per_email == 10
    assert settings.login_max_failures_per_address == 30
    assert settings.trust_proxy == ()
    assert settings.cors_origins == ()
    for name, value in [
        ("LOYALTY_LOGIN_MAX_FAILURES_PER_EMAIL", "0"),
        ("LOYALTY_LOGIN_MAX_FAILURES_PER_ADDRESS", "many"),
        ("LOYALTY_LOGIN_WINDOW_SECONDS", "-1"),
        ("LOYALTY_TRUST_PROXY", "*"),
        ("LOYALTY_CORS_ORIGINS", "*"),
        ("LOYALTY_CORS_ORIGINS", "shop.example"),
        ("LOYALTY_LOG_LEVEL", "loud"),
    ]:
        with pytest.raises(ConfigError):
            Settings.from_env({name: value})


def test_failed_logins_per_email_are_limited(own: Backend) -> None:
    """Successful logins do not count; after 3 failures the email gets 429 with Retry-After on
    both login routes, in any letter case, even with the right password; another email and
    the client address are unaffected."""
    url, server = own.database_url, own.server
    email, other = make_user(url), make_user(url)
    for _ in range(2):
        assert post_login(server.base_url, email, ADMIN_PASSWORD).status_code == 200
    for path in [*LOGIN_PATHS, LOGIN_PATHS[0]]:
        response = post_login(server.base_url, email, "wrong password", path=path)
        assert response.status_code == 401, response.text
        assert response.json() == INVALID_LOGIN
    for path in LOGIN_PATHS:
        assert_throttled(post_login(server.base_url, email, ADMIN_PASSWORD, path=path))
        assert_throttled(post_login(server.base_url, email.upper(), ADMIN_PASSWORD, path=path))
    assert post_login(server.base_url, other, ADMIN_PASSWORD).status_code == 200


def test_an_unknown_email_is_limited_like_a_known_one(own: Backend) -> None:
    """An email no user has is throttled after the same 3 failures, so a 429 reveals nothing
    about which emails exist."""
    server = own.server
    email = unknown_email()
    for _ in range(3):
        assert post_login(server.base_url, email, "wrong password").json() == INVALID_LOGIN
    assert_throttled(post_login(server.base_url, email, "wrong password"))


def test_failed_logins_per_address_are_limited(databases: DatabaseFactory, tmp_path: Path) -> None:
    """After 4 failures from one client address (each for another email, each claiming another
    X-Forwarded-For, which is ignored by default), every login from it is 429, even a right
    one, on both routes."""
    with server_with_user(
        databases,
        tmp_path,
        LOYALTY_LOGIN_MAX_FAILURES_PER_EMAIL="1000",
        LOYALTY_LOGIN_MAX_FAILURES_PER_ADDRESS="4",
    ) as (server, email):
        assert post_login(server.base_url, email, ADMIN_PASSWORD).status_code == 200
        for i in range(4):
            spoofed = {"X-Forwarded-For": f"198.51.100.{i + 1}"}
            response = post_login(server.base_url, unknown_email(), "guess", headers=spoofed)
            assert response.status_code == 401, response.text
        for path in LOGIN_PATHS:
            assert_throttled(post_login(server.base_url, email, ADMIN_PASSWORD, path=path))
        assert_throttled(
            post_login(
                server.base_url, email, ADMIN_PASSWORD, headers={"X-Forwarded-For": "192.0.2.9"}
            )
        )


def test_a_trusted_proxy_forwards_the_client_address(
    databases: DatabaseFactory, tmp_path: Path
) -> None:
    """With LOYALTY_TRUST_PROXY naming the proxy's address, the client that X-Forwarded-For
    names is the one throttled, and another client behind the same proxy is not."""
    with server_with_user(
        databases,
        tmp_path,
        LOYALTY_TRUST_PROXY="127.0.0.1",
        LOYALTY_LOGIN_MAX_FAILURES_PER_EMAIL="1000",
        LOYALTY_LOGIN_MAX_FAILURES_PER_ADDRESS="2",
    ) as (server, email):
        attacker = {"X-Forwarded-For": "203.0.113.7"}
        for _ in range(2):
            response = post_login(server.base_url, unknown_email(), "guess", headers=attacker)
            assert response.status_code == 401
        assert_throttled(post_login(server.base_url, email, ADMIN_PASSWORD, headers=attacker))
        # A proxy appends the address it saw: the attacker's own claim in front changes nothing.
        chained = {"X-Forwarded-For": "192.0.2.1, 203.0.113.7"}
        assert_throttled(post_login(server.base_url, email, ADMIN_PASSWORD, headers=chained))
        other = {"X-Forwarded-For": "203.0.113.8"}
        assert post_login(server.base_url, email, ADMIN_PASSWORD, headers=other).status_code == 200


def test_unknown_email_costs_as_much_as_a_wrong_password(
    databases: DatabaseFactory, tmp_path: Path
) -> None:
    """A login for an unknown email costs within a factor of 2 of one with a wrong password
    for a real user (both check a password hash), so timing reveals nothing. Measured
    against each other in this test, never against a fixed time: pairs are interleaved so a
    load spike hits both kinds alike, and each kind's fastest try is compared, since a busy
    machine only ever adds time (skipping the hash makes the unknown email's login about 5
    times cheaper: a ratio near 0.2)."""
    with server_with_user(databases, tmp_path, LOYALTY_LOGIN_MAX_FAILURES_PER_EMAIL="100") as (
        server,
        email,
    ):

        def timed(login_email: str) -> float:
            started = time.perf_counter()
            response = post_login(server.base_url, login_email, "wrong password")
            elapsed = time.perf_counter() - started
            assert response.json() == INVALID_LOGIN
            return elapsed

        timed(email), timed(unknown_email())  # warm up both paths
        wrong_password, unknown = [], []
        for _ in range(7):
            wrong_password.append(timed(email))
            unknown.append(timed(unknown_email()))
    ratio = min(unknown) / min(wrong_password)
    assert 0.5 <= ratio <= 2.0, (ratio, wrong_password, unknown)


# --- tokens ---------------------------------------------------------------------------------


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _forged(alg: str, user_id: str) -> str:
    now = int(time.time())
    claims = {
        "sub": user_id,
        "scopes": ["customers:read", "customers:write", "loyalty:read", "loyalty:write"],
        "iat": now,
        "exp": now + 3600,
    }
    if alg in ("HS384", "HS512"):  # a real signature with our own secret, another algorithm
        with warnings.catch_warnings():  # our secret is shorter than PyJWT likes for SHA-512
            warnings.simplefilter("ignore", InsecureKeyLengthWarning)
            return jwt.encode(claims, JWT_SECRET, algorithm=alg)
    header = _b64url(json.dumps({"alg": alg, "typ": "JWT"}).encode())
    payload = _b64url(json.dumps(claims).encode())
    if alg in ("none", "None", "NONE"):
        return f"{header}.{payload}."
    return f"{header}.{payload}.{_b64url(uuid.uuid4().bytes * 8)}"  # RS256 / ES256 lookalikes


@pytest.mark.parametrize("alg", ["HS384", "HS512", "RS256", "ES256", "PS256", "none", "None"])
def test_only_hs256_tokens_are_accepted(backend: Backend, alg: str) -> None:
    """A token for the admin with any algorithm but HS256, or none, is 401 on a read route
    and on adjust, and records nothing."""
    user_id = httpx.post(
        f"{backend.server.base_url}/admin/auth/token",
        json={"email": ADMIN_EMAIL, "password": ADMIN_PASSWORD},
        timeout=30,
    ).json()["user"]["id"]
    with backend.client() as api:
        customer = new_customer(api)
    with backend.client(_forged(alg, user_id)) as forged:
        assert forged.get(f"/admin/loyalty/points/{customer['id']}").json() == REQUIRED
        response = adjust(forged, customer["id"], 5)
        assert response.status_code == 401
        assert response.json() == REQUIRED
    with backend.client() as api:
        assert api.get(f"/admin/loyalty/points/{customer['id']}").json()["balance"] == 0


# --- disabled users -------------------------------------------------------------------------


def test_a_disabled_users_tokens_stop_working_at_once(backend: Backend) -> None:
    """After `loyalty user disable`, the user's token is 401 on the next read and the next
    adjust (nothing recorded), and its login is the same 401 as a wrong password; after
    `loyalty user enable` the same token works again."""
    email = make_user(backend.database_url)
    token = httpx.post(
        f"{backend.server.base_url}/admin/auth/token",
        json={"email": email, "password": ADMIN_PASSWORD},
        timeout=30,
    ).json()["token"]
    with backend.client(token) as user:
        customer = new_customer(user)
        cid = customer["id"]
        assert adjust(user, cid, 10).status_code == 200

        disabled = run_cli(backend.database_url, "user", "disable", "--email", email.upper())
        assert disabled.returncode == 0, disabled.stderr
        assert user.get(f"/admin/loyalty/points/{cid}").json() == REQUIRED
        assert user.get("/admin/customers").json() == REQUIRED
        refused = adjust(user, cid, 10)
        assert refused.status_code == 401
        assert refused.json() == REQUIRED
        login = post_login(backend.server.base_url, email, ADMIN_PASSWORD)
        assert login.status_code == 401
        assert login.json() == INVALID_LOGIN
        with backend.client() as admin:
            balance = admin.get(f"/admin/loyalty/points/{cid}").json()
            assert balance["balance"] == 10
            history = admin.get(f"/admin/loyalty/points/{cid}/history").json()
            assert history["count"] == 1

        enabled = run_cli(backend.database_url, "user", "enable", "--email", email)
        assert enabled.returncode == 0, enabled.stderr
        assert enabled.stdout.strip() == disabled.stdout.strip()
        assert user.get(f"/admin/loyalty/points/{cid}").status_code == 200
        assert adjust(user, cid, 10).json()["balance_after"] == 20
    assert post_login(backend.server.base_url, email, ADMIN_PASSWORD).status_code == 200


def test_disabling_an_unknown_user_fails(backend: Backend) -> None:
    """`loyalty user disable` / `enable` of an email no user has exits non-zero, saying so."""
    for command in ("disable", "enable"):
        result = run_cli(backend.database_url, "user", command, "--email", unknown_email())
        assert result.returncode != 0
        assert "no user" in result.stderr


# --- CORS -----------------------------------------------------------------------------------

PREFLIGHT = {
    "Access-Control-Request-Method": "POST",
    "Access-Control-Request-Headers": "authorization, content-type, idempotency-key",
}


def test_cors_is_closed_by_default(backend: Backend, anon: httpx.Client) -> None:
    """Without LOYALTY_CORS_ORIGINS no response carries Access-Control-Allow-Origin: not a
    simple request, not an authenticated one, not a preflight."""
    origin = {"Origin": "https://shop.example"}
    responses = [
        anon.get("/health", headers=origin),
        anon.get("/admin/customers", headers=origin),
        anon.options("/admin/loyalty/points/adjust", headers={**origin, **PREFLIGHT}),
    ]
    with backend.client() as api:
        responses.append(api.get("/admin/customers", headers=origin))
    for response in responses:
        assert not any(name.startswith("access-control-") for name in response.headers), (
            response.headers
        )


def test_cors_allows_exactly_the_configured_origins(
    databases: DatabaseFactory, tmp_path: Path
) -> None:
    """With LOYALTY_CORS_ORIGINS=https://shop.example, that origin gets
    Access-Control-Allow-Origin on requests and preflights; any other origin gets none."""
    with (
        Server.start(
            databases.new_url(), tmp_path, LOYALTY_CORS_ORIGINS="https://shop.example"
        ) as server,
        httpx.Client(base_url=server.base_url, timeout=30) as client,
    ):
        shop = {"Origin": "https://shop.example"}
        for response in [
            client.get("/health", headers=shop),
            client.get("/admin/customers", headers=shop),
        ]:
            assert response.headers["access-control-allow-origin"] == "https://shop.example"
            assert "origin" in response.headers["vary"].lower()
            assert "x-request-id" in response.headers["access-control-expose-headers"].lower()
            assert "access-control-allow-credentials" not in response.headers
        preflight = client.options("/admin/loyalty/points/adjust", headers={**shop, **PREFLIGHT})
        assert preflight.status_code in (200, 204), preflight.text
        assert preflight.headers["access-control-allow-origin"] == "https://shop.example"
        assert "POST" in preflight.headers["access-control-allow-methods"]
        allowed = preflight.headers["access-control-allow-headers"].lower()
        assert {"authorization", "content-type", "idempotency-key"} <= {
            h.strip() for h in allowed.split(",")
        }

        for other in ["https://evil.example", "http://shop.example", "https://shop.example.evil"]:
            evil = {"Origin": other}
            assert "access-control-allow-origin" not in client.get("/health", headers=evil).headers
            refused = client.options("/admin/customers", headers={**evil, **PREFLIGHT})
            assert "access-control-allow-origin" not in refused.headers
            assert refused.status_code == 400
            assert refused.json()["type"] == "invalid_data"


# --- body size ------------------------------------------------------------------------------


def _chunks(total: int, chunk: int = 16 * 1024) -> Iterator[bytes]:
    sent = 0
    while sent < total:
        size = min(chunk, total - sent)
        sent += size
        yield b" " * size


@pytest.mark.parametrize("path", [*LOGIN_PATHS, "/admin/customers", "/admin/loyalty/points/adjust"])
def test_an_oversized_chunked_body_is_413(api: httpx.Client, path: str) -> None:
    """A body over 64 KiB sent chunked, without Content-Length, is 413 invalid_data."""
    for total in (BODY_MAX + 1, 4 * 1024 * 1024):
        response = api.post(
            path, content=_chunks(total), headers={"Content-Type": "application/json"}
        )
        assert "content-length" not in response.request.headers
        assert response.request.headers["transfer-encoding"] == "chunked"
        assert response.status_code == 413, response.text
        assert response.json()["type"] == "invalid_data"


def test_a_body_of_exactly_64_kib_is_read(api: httpx.Client) -> None:
    """The limit is inclusive: 65,536 bytes (JSON padded with spaces) are accepted, sent with
    Content-Length or chunked; one byte more is 413 and records nothing."""
    customer = new_customer(api)
    text = json.dumps({"customer_id": customer["id"], "delta": 1})
    exact = text.encode().ljust(BODY_MAX)
    assert (
        api.post(
            "/admin/loyalty/points/adjust",
            content=exact,
            headers={"Content-Type": "application/json"},
        ).status_code
        == 200
    )
    chunked = api.post(
        "/admin/loyalty/points/adjust",
        content=iter([exact[:1000], exact[1000:]]),
        headers={"Content-Type": "application/json"},
    )
    assert chunked.status_code == 200
    over = api.post(
        "/admin/loyalty/points/adjust",
        content=exact + b" ",
        headers={"Content-Type": "application/json"},
    )
    assert over.status_code == 413
    assert api.get(f"/admin/loyalty/points/{customer['id']}").json()["balance"] == 2


def test_an_oversized_body_is_refused_before_it_ends(backend: Backend) -> None:
    """The 413 arrives while the client is still sending: the service stops reading at the
    limit rather than reading the body whole (here it never ends)."""
    with socket.create_connection(("127.0.0.1", backend.server.port), timeout=10) as sock:
        sock.sendall(
            b"POST /admin/auth/token HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
        )
        chunk = b" " * (BODY_MAX + 1024)
        sock.sendall(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
        # No terminating chunk: a server that waited for the whole body would never answer.
        received = b""
        while b"\r\n\r\n" not in received:
            data = sock.recv(4096)
            if not data:
                break
            received += data
    assert received.startswith(b"HTTP/1.1 413"), received[:200]


# --- bounded strings, bound parameters ------------------------------------------------------

INJECTIONS = [
    "' OR '1'='1",
    "'; DROP TABLE customers; --",
    '" OR ""="',
    "%' OR 1=1 --",
    "\\'; DELETE FROM loyalty_adjustments WHERE '1'='1",
    "_%\\",
    "1; SELECT pg_sleep(5)",
    "') UNION SELECT id, password_hash FROM users --",
]


def test_injection_strings_in_customer_fields_and_q_are_literal(own_api: httpx.Client) -> None:
    """Customer names and emails full of SQL are stored and returned byte for byte, and `q`
    holding them finds exactly the customer that contains them, nothing more."""
    api = own_api
    before = api.get("/admin/customers").json()["count"]
    tag = uuid.uuid4().hex[:10]
    made = []
    for i, text in enumerate(INJECTIONS):
        # Quote and dashes are allowed in an address's local part; ";" is not.
        local = f"o'r--{i}-{tag}"
        body = {"email": f"{local}@example.com", "first_name": text, "last_name": f"{text}{tag}"}
        response = api.post("/admin/customers", json=body)
        assert response.status_code == 200, response.text
        customer = response.json()["customer"]
        assert (customer["email"], customer["first_name"], customer["last_name"]) == (
            body["email"],
            text,
            f"{text}{tag}",
        )
        assert api.get(f"/admin/customers/{customer['id']}").json()["customer"] == customer
        made.append(customer)
    for text, customer in zip(INJECTIONS, made, strict=True):
        found = api.get("/admin/customers", params={"q": f"{text}{tag}"}).json()
        assert found["count"] == 1, (text, found)
        assert [c["id"] for c in found["customers"]] == [customer["id"]]
        by_email = api.get("/admin/customers", params={"q": customer["email"]}).json()
        assert [c["id"] for c in by_email["customers"]] == [customer["id"]]
        nothing = api.get("/admin/customers", params={"q": f"{text}{tag}-absent"}).json()
        assert nothing == {"customers": [], "count": 0, "offset": 0, "limit": 20}
    assert api.get("/admin/customers").json()["count"] == before + len(INJECTIONS)


def test_injection_strings_as_customer_ids_are_literal(api: httpx.Client) -> None:
    """SQL in a customer id, in the path or in the adjust body, is just an id nobody has: 404
    naming it exactly, and nothing recorded anywhere."""
    real = new_customer(api)
    count = api.get("/admin/customers").json()["count"]
    for text in INJECTIONS:
        cid = text.replace("/", "")
        for path in (
            f"/admin/customers/{quote(cid, safe='')}",
            f"/admin/loyalty/points/{quote(cid, safe='')}",
            f"/admin/loyalty/points/{quote(cid, safe='')}/history",
        ):
            response = api.get(path)
            assert response.status_code == 404, (path, response.text)
            assert response.json() == {
                "type": "not_found",
                "message": f"Customer with id: {cid} was not found",
            }
        response = adjust(api, cid, 100)
        assert response.status_code == 404, response.text
        assert response.json()["message"] == f"Customer with id: {cid} was not found"
    assert api.get("/admin/customers").json()["count"] == count
    assert api.get(f"/admin/loyalty/points/{real['id']}/history").json()["count"] == 0


def test_injection_strings_as_reasons_are_stored_exactly(own_api: httpx.Client) -> None:
    """A reason full of SQL is one adjustment whose reason reads back byte for byte."""
    api = own_api
    customer = new_customer(api)
    for text in INJECTIONS:
        assert adjust(api, customer["id"], 1, text).status_code == 200
    history = api.get(
        f"/admin/loyalty/points/{customer['id']}/history", params={"order": "created_at"}
    ).json()
    assert history["count"] == len(INJECTIONS)
    assert [item["reason"] for item in history["adjustments"]] == INJECTIONS
    assert api.get(f"/admin/loyalty/points/{customer['id']}").json()["balance"] == len(INJECTIONS)


def test_injection_strings_in_login_are_a_plain_401(own: Backend) -> None:
    """SQL in a login's email or password is an ordinary wrong login: 401, no token."""
    server = own.server
    for text in ["' OR '1'='1' --@example.com", "admin@example.com' --", "x'||'@example.com"]:
        response = post_login(server.base_url, text, "' OR '1'='1")
        assert response.status_code == 401, response.text
        assert response.json() == INVALID_LOGIN
    response = post_login(server.base_url, "admin@example.com", "' OR '1'='1")
    assert response.json() == INVALID_LOGIN


def test_every_string_parameter_is_bounded(api: httpx.Client) -> None:
    """Overlong q, customer ids (path and body), reasons, emails and passwords are 400
    invalid_data before they reach the database."""
    customer = new_customer(api)
    long_id = "c" * 65
    responses = [
        api.get("/admin/customers", params={"q": "q" * 256}),
        api.get(f"/admin/customers/{long_id}"),
        api.get(f"/admin/loyalty/points/{long_id}"),
        api.get(f"/admin/loyalty/points/{long_id}/history"),
        adjust(api, long_id, 1),
        adjust(api, customer["id"], 1, "r" * 1001),
        api.post("/admin/customers", json={"email": f"{'e' * 250}@example.com"}),
        api.post("/admin/customers", json={"email": unknown_email(), "first_name": "n" * 256}),
        api.post("/admin/auth/token", json={"email": f"{'e' * 250}@example.com", "password": "p"}),
        api.post("/admin/auth/token", json={"email": ADMIN_EMAIL, "password": "p" * 1025}),
    ]
    for response in responses:
        assert response.status_code == 400, (response.request.url, response.text)
        assert response.json()["type"] == "invalid_data"
    assert api.get(f"/admin/loyalty/points/{customer['id']}").json()["balance"] == 0
