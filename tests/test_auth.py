"""SPEC section 3: the token routes, the 401 of every bad credential on every /admin route,
scopes, and passwords stored as argon2id hashes."""

from __future__ import annotations

import asyncio
import base64
import json
import sqlite3
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import jwt
import pytest

from tests.conftest import DatabaseFactory
from tests.support import (
    ADMIN_EMAIL,
    ADMIN_PASSWORD,
    JWT_SECRET,
    USER_ID,
    Backend,
    Server,
    adjust,
    login,
    new_customer,
    run_cli,
    sql,
    user_create,
)
from tests.test_http_errors import watch_responses

ALL_SCOPES = (
    "customers:read",
    "customers:write",
    "loyalty:read",
    "loyalty:write",
    "api_keys:write",
    "webhooks:write",
)
REQUIRED = {"type": "unauthorized", "message": "Authentication required"}
UNKNOWN_KEY = "apk_01ARZ3NDEKTSV4RRFFQ69G5FAV"
# A Basic header carries only a secret API key, and says why it is refused.
BASIC_REFUSALS = {
    "basic": "The Basic credentials are not valid base64 of UTF-8 text",
    "basic_with_credentials": (
        "The Basic credentials must carry the API key as the username or the password, not both"
    ),
}
OTHER_SECRET = "another-secret-that-is-also-long-enough-for-hs256-9876543210"
# Every customer this file makes has it in its email, and every list this file reads is
# narrowed to it (`?q=`): the file sees only what it made, never what other files left in
# the shared server (whose names the leak check below might take for SQL).
MINE = f"auth-{uuid.uuid4().hex[:8]}"
OWN_CUSTOMERS = f"/admin/customers?q={MINE}"


def my_email() -> str:
    return f"{MINE}-{uuid.uuid4().hex[:12]}@example.com"


@pytest.fixture(autouse=True)
def _no_internals_in_responses(monkeypatch: pytest.MonkeyPatch) -> None:
    watch_responses(monkeypatch)


# --- the routes under test ---------------------------------------------------------------


@dataclass(frozen=True)
class AdminRoute:
    name: str
    method: str
    path: str  # {cid}: an existing customer's id
    scope: str
    writes: bool = False

    def call(self, client: httpx.Client, customer_id: str) -> httpx.Response:
        path = self.path.format(cid=customer_id)
        if self.name == "customers.create":
            body: dict[str, Any] = {"email": my_email()}
            return client.post(path, json=body)
        if self.name == "points.adjust":
            return client.post(path, json={"customer_id": customer_id, "delta": 1})
        if self.name == "api_keys.create":
            return client.post(path, json={"title": "auth test"})
        if self.name == "api_keys.revoke":
            # A key of the caller's own to revoke, when it may make one; else any id.
            made = client.post("/admin/api-keys", json={"title": "to revoke"})
            key_id = made.json()["api_key"]["id"] if made.status_code == 200 else UNKNOWN_KEY
            return client.post(path.format(kid=key_id))
        return client.request(self.method, path)


ROUTES = [
    AdminRoute("customers.create", "POST", "/admin/customers", "customers:write", writes=True),
    AdminRoute("customers.list", "GET", OWN_CUSTOMERS, "customers:read"),
    AdminRoute("customers.get", "GET", "/admin/customers/{cid}", "customers:read"),
    AdminRoute(
        "points.adjust", "POST", "/admin/loyalty/points/adjust", "loyalty:write", writes=True
    ),
    AdminRoute("points.balance", "GET", "/admin/loyalty/points/{cid}", "loyalty:read"),
    AdminRoute("points.history", "GET", "/admin/loyalty/points/{cid}/history", "loyalty:read"),
    AdminRoute("api_keys.create", "POST", "/admin/api-keys", "api_keys:write", writes=True),
    AdminRoute("api_keys.list", "GET", "/admin/api-keys", "api_keys:write"),
    AdminRoute(
        "api_keys.revoke",
        "POST",
        "/admin/api-keys/{{kid}}/revoke",
        "api_keys:write",
        writes=True,
    ),
]
ROUTE_IDS = [route.name for route in ROUTES]


class Tokens:
    """Tokens of new users holding exactly the given scopes, made once per scope set."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self._made: dict[frozenset[str], str] = {}

    def holding(self, *scopes: str) -> str:
        key = frozenset(scopes)
        if key not in self._made:
            self._made[key] = self.backend.user_token(*sorted(key))
        return self._made[key]

    def prepare(self, scope_sets: list[frozenset[str]]) -> None:
        """Makes the users of several scope sets at once (each is a `loyalty` process)."""
        with ThreadPoolExecutor(max_workers=4) as pool:
            made = pool.map(lambda key: self.backend.user_token(*sorted(key)), scope_sets)
            self._made.update(zip(scope_sets, made, strict=True))


@pytest.fixture(scope="module")
def tokens(backend: Backend) -> Tokens:
    made = Tokens(backend)
    route_scopes = [frozenset({route.scope}) for route in ROUTES]
    route_scopes += [frozenset(ALL_SCOPES) - scopes for scopes in route_scopes]
    made.prepare(list(dict.fromkeys(route_scopes)))
    return made


@pytest.fixture(scope="module")
def customer_id(backend: Backend) -> str:
    with backend.client() as client:
        response = client.post("/admin/customers", json={"email": my_email()})
        assert response.status_code == 200, response.text
        value: str = response.json()["customer"]["id"]
        return value


@pytest.fixture(scope="module")
def admin_id(backend: Backend) -> str:
    response = httpx.post(
        f"{backend.server.base_url}/admin/auth/token",
        json={"email": ADMIN_EMAIL, "password": ADMIN_PASSWORD},
        timeout=30,
    )
    value: str = response.json()["user"]["id"]
    return value


@pytest.fixture(scope="module")
def deleted_user_token(backend: Backend) -> str:
    """A token that worked until its user was deleted with `loyalty user delete`."""
    email = f"deleted-{uuid.uuid4().hex[:10]}@example.com"
    created = user_create(backend.database_url, email)
    assert created.returncode == 0, created.stderr
    token = login(backend.server, email, ADMIN_PASSWORD)
    with backend.client(token) as client:
        assert client.get(OWN_CUSTOMERS).status_code == 200
    deleted = run_cli(backend.database_url, "user", "delete", "--email", email)
    assert deleted.returncode == 0, deleted.stderr
    response = httpx.post(
        f"{backend.server.base_url}/admin/auth/token",
        json={"email": email, "password": ADMIN_PASSWORD},
        timeout=30,
    )
    assert response.status_code == 401
    return token


def _b64url(data: dict[str, Any]) -> str:
    raw = json.dumps(data, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _claims(subject: str, **overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    claims: dict[str, Any] = {"sub": subject, "scopes": list(ALL_SCOPES), "iat": now}
    claims["exp"] = now + 3600
    claims.update(overrides)
    return {k: v for k, v in claims.items() if v is not None}


def bad_authorization(case: str, backend: Backend, admin_id: str, deleted: str) -> str | None:
    """The Authorization header of one kind of bad credential (None: no header at all)."""
    now = int(time.time())
    if case == "missing":
        return None
    if case == "other_secret":
        return "Bearer " + jwt.encode(_claims(admin_id), OTHER_SECRET, algorithm="HS256")
    if case == "expired":
        claims = _claims(admin_id, iat=now - 7200, exp=now - 60)
        return "Bearer " + jwt.encode(claims, JWT_SECRET, algorithm="HS256")
    if case == "alg_none":
        header = _b64url({"alg": "none", "typ": "JWT"})
        return f"Bearer {header}.{_b64url(_claims(admin_id))}."
    if case == "alg_none_uppercase":
        header = _b64url({"alg": "None", "typ": "JWT"})
        return f"Bearer {header}.{_b64url(_claims(admin_id))}."
    if case == "unknown_user":
        claims = _claims("user_01ARZ3NDEKTSV4RRFFQ69G5FAV")
        return "Bearer " + jwt.encode(claims, JWT_SECRET, algorithm="HS256")
    if case == "no_subject":
        claims = _claims(admin_id, sub=None)
        return "Bearer " + jwt.encode(claims, JWT_SECRET, algorithm="HS256")
    if case == "tampered":
        header, _, signature = backend.token.split(".")
        forged = _b64url(_claims("user_01ARZ3NDEKTSV4RRFFQ69G5FAV"))
        return f"Bearer {header}.{forged}.{signature}"
    if case == "deleted_user":
        return f"Bearer {deleted}"
    return {
        "bearer_only": "Bearer",
        "basic": "Basic xyz",
        "basic_with_credentials": "Basic " + base64.b64encode(b"admin:password").decode(),
        "not_a_jwt": "Bearer not.a.jwt",
        "garbage": "Bearer !!!",
        "no_scheme": backend.token,
        "other_scheme": f"Token {backend.token}",
        "two_tokens": f"Bearer {backend.token} {backend.token}",
        "overlong": "Bearer " + "a" * 10_000,
    }[case]


BAD_CASES = [
    "missing",
    "bearer_only",
    "basic",
    "basic_with_credentials",
    "not_a_jwt",
    "garbage",
    "no_scheme",
    "other_scheme",
    "two_tokens",
    "overlong",
    "other_secret",
    "expired",
    "alg_none",
    "alg_none_uppercase",
    "unknown_user",
    "no_subject",
    "tampered",
    "deleted_user",
]


def ledger_size(backend: Backend, customer_id: str) -> int:
    with backend.client() as client:
        response = client.get(f"/admin/loyalty/points/{customer_id}/history")
        assert response.status_code == 200
        count: int = response.json()["count"]
        return count


def customer_count(backend: Backend) -> int:
    """How many customers this file has made."""
    with backend.client() as client:
        count: int = client.get(OWN_CUSTOMERS).json()["count"]
        return count


def records(backend: Backend, customer_id: str) -> tuple[int, int]:
    """What a write route could change: the customer's ledger and the number of customers."""
    return ledger_size(backend, customer_id), customer_count(backend)


# --- 401 ---------------------------------------------------------------------------------


@pytest.mark.parametrize("case", BAD_CASES)
@pytest.mark.parametrize("route", ROUTES, ids=ROUTE_IDS)
def test_bad_credentials_are_401(
    backend: Backend,
    customer_id: str,
    admin_id: str,
    deleted_user_token: str,
    route: AdminRoute,
    case: str,
) -> None:
    """Every kind of bad credential is 401 "Authentication required" (a Basic header: a
    message saying what is wrong with it) and records nothing."""
    authorization = bad_authorization(case, backend, admin_id, deleted_user_token)
    headers = {} if authorization is None else {"Authorization": authorization}
    before = records(backend, customer_id) if route.writes else None
    with httpx.Client(base_url=backend.server.base_url, headers=headers, timeout=30) as client:
        response = route.call(client, customer_id)
    assert response.status_code == 401, response.text
    assert response.headers["content-type"].startswith("application/json")
    message = BASIC_REFUSALS.get(case, REQUIRED["message"])
    assert response.json() == {"type": "unauthorized", "message": message}
    if route.writes:
        assert records(backend, customer_id) == before


@pytest.mark.parametrize("scheme", ["Bearer", "bearer", "BEARER"])
def test_bearer_scheme_is_case_insensitive(backend: Backend, scheme: str) -> None:
    """The auth scheme is case-insensitive (RFC 9110 section 11.1): any case of Bearer works."""
    headers = {"Authorization": f"{scheme} {backend.token}"}
    with httpx.Client(base_url=backend.server.base_url, headers=headers, timeout=30) as client:
        assert client.get(OWN_CUSTOMERS).status_code == 200


# --- 403 ---------------------------------------------------------------------------------


@pytest.mark.parametrize("route", ROUTES, ids=ROUTE_IDS)
def test_missing_scope_is_403_naming_it(
    backend: Backend, tokens: Tokens, customer_id: str, route: AdminRoute
) -> None:
    """Every scope but the route's is 403 forbidden naming that scope; nothing recorded."""
    token = tokens.holding(*(s for s in ALL_SCOPES if s != route.scope))
    before = records(backend, customer_id) if route.writes else None
    with backend.client(token) as client:
        response = route.call(client, customer_id)
    assert response.status_code == 403, response.text
    body = response.json()
    assert body["type"] == "forbidden"
    assert route.scope in body["message"]
    assert set(body) <= {"type", "message", "errors"}
    if route.writes:
        assert records(backend, customer_id) == before


@pytest.mark.parametrize("route", ROUTES, ids=ROUTE_IDS)
def test_exactly_the_routes_scope_is_enough(
    backend: Backend, tokens: Tokens, customer_id: str, route: AdminRoute
) -> None:
    """A token holding only the route's scope gets through (200)."""
    with backend.client(tokens.holding(route.scope)) as client:
        response = route.call(client, customer_id)
    assert response.status_code not in (401, 403), response.text
    assert response.status_code == 200, response.text


def test_read_only_user_cannot_adjust(backend: Backend, tokens: Tokens, customer_id: str) -> None:
    """A user with only loyalty:read gets 403 naming loyalty:write on adjust; nothing recorded."""
    before = ledger_size(backend, customer_id)
    with backend.client(tokens.holding("loyalty:read")) as client:
        response = client.post(
            "/admin/loyalty/points/adjust", json={"customer_id": customer_id, "delta": 100}
        )
        assert response.status_code == 403, response.text
        assert response.json()["type"] == "forbidden"
        assert "loyalty:write" in response.json()["message"]
        assert client.get(f"/admin/loyalty/points/{customer_id}").status_code == 200
    assert ledger_size(backend, customer_id) == before


def test_authentication_comes_before_validation(anon: httpx.Client) -> None:
    """Without credentials even an invalid adjust body is 401, revealing nothing about it."""
    response = anon.post("/admin/loyalty/points/adjust", json={"delta": 0})
    assert response.status_code == 401
    assert response.json() == REQUIRED


@pytest.mark.parametrize(
    ("body", "params"),
    [
        ('{"delta": 0}', {}),
        ('{"customer_id": "x", "delta": "5"}', {}),
        ('{"customer_id": "x", "delta": 1, "points": 1}', {}),
        ("not json", {}),
        ('{"customer_id": "x", "delta": 1}', {"include_history": "maybe"}),
    ],
    ids=["zero-delta", "string-delta", "unknown-field", "not-json", "bad-query"],
)
def test_the_write_scope_is_checked_before_validation(
    backend: Backend, tokens: Tokens, body: str, params: dict[str, str]
) -> None:
    """A loyalty:read-only token sending an invalid adjust request is 403 naming
    loyalty:write, not a 400 that would describe a request it may not make at all."""
    with backend.client(tokens.holding("loyalty:read")) as client:
        response = client.post(
            "/admin/loyalty/points/adjust",
            content=body.encode(),
            headers={"Content-Type": "application/json"},
            params=params,
        )
    assert response.status_code == 403, response.text
    assert response.json() == {
        "type": "forbidden",
        "message": "Missing required scope: loyalty:write",
    }


def set_scopes(backend: Backend, email: str, *scopes: str) -> None:
    """Changes a user's scopes in the database, behind the service's back."""
    sql(
        backend.database_url,
        "UPDATE users SET scopes = $1 WHERE email = $2",
        " ".join(scopes),
        email,
    )
    assert sql(backend.database_url, "SELECT scopes FROM users WHERE email = $1", email) == [
        (" ".join(scopes),)
    ]


def test_a_scope_taken_away_applies_at_once_to_tokens_issued_before(backend: Backend) -> None:
    """A token issued while its user held loyalty:write and loyalty:read: once the user loses
    loyalty:write, adjust is 403 naming it and records nothing (the token's own claim is not
    enough); once the user loses loyalty:read instead, the balance read is 403 naming it,
    and adjust works again."""
    email, token = backend.new_user("loyalty:read", "loyalty:write")
    with backend.client() as admin:
        customer_id = new_customer(admin)["id"]
    forbidden_write = {"type": "forbidden", "message": "Missing required scope: loyalty:write"}
    forbidden_read = {"type": "forbidden", "message": "Missing required scope: loyalty:read"}
    with backend.client(token) as user:
        assert adjust(user, customer_id, 5).status_code == 200
        assert user.get(f"/admin/loyalty/points/{customer_id}").json()["balance"] == 5

        set_scopes(backend, email, "loyalty:read")
        refused = adjust(user, customer_id, 5)
        assert refused.status_code == 403, refused.text
        assert refused.json() == forbidden_write
        assert user.get(f"/admin/loyalty/points/{customer_id}").json()["balance"] == 5
        assert ledger_size(backend, customer_id) == 1

        set_scopes(backend, email, "loyalty:write")
        for path in (
            f"/admin/loyalty/points/{customer_id}",
            f"/admin/loyalty/points/{customer_id}/history",
        ):
            response = user.get(path)
            assert response.status_code == 403, (path, response.text)
            assert response.json() == forbidden_read
        accepted = adjust(user, customer_id, 5)
        assert accepted.status_code == 200, accepted.text
        assert accepted.json()["balance_after"] == 10
    assert ledger_size(backend, customer_id) == 2


# --- an expired token, once accepted -------------------------------------------------------

SHORT_TTL_S = 2


def token_used_within_its_lifetime(server: Server) -> tuple[str, int, str]:
    """Logs in at the start of a clock second (the token's lifetime is whole seconds) and
    uses the token at once on adjust, a balance and a customers route, so that the service
    has accepted it on each. A try that the machine made too slow for the token's short
    life is made again. Returns the token, its expiry and the customer it made."""
    for _ in range(5):
        time.sleep(1 - time.time() % 1 + 0.01)
        token = login(server, ADMIN_EMAIL, ADMIN_PASSWORD)
        expires = int(
            jwt.decode(token, JWT_SECRET, algorithms=["HS256"], options={"verify_exp": False})[
                "exp"
            ]
        )
        headers = {"Authorization": f"Bearer {token}"}
        with httpx.Client(base_url=server.base_url, headers=headers, timeout=30) as client:
            created = client.post(
                "/admin/customers", json={"email": f"ttl-{uuid.uuid4().hex}@example.com"}
            )
            if created.status_code == 200:
                customer_id = created.json()["customer"]["id"]
                uses = [
                    adjust(client, customer_id, 1),
                    client.get(f"/admin/loyalty/points/{customer_id}"),
                    client.get(f"/admin/customers/{customer_id}"),
                ]
                if all(use.status_code == 200 for use in uses):
                    return token, expires, customer_id
                refusals = [created, *uses]
            else:
                refusals = [created]
        assert time.time() >= expires, (
            "the token was refused before it expired",
            [(r.status_code, r.text) for r in refusals],
        )
    pytest.fail("could not use a token within its lifetime five times running")


def test_an_accepted_token_is_refused_once_it_expires(
    databases: DatabaseFactory, tmp_path: Path
) -> None:
    """With LOYALTY_JWT_TTL_SECONDS=2, a token that adjust, a balance and a customers route
    have each accepted (so the service knows it) is 401 "Authentication required" on each of
    them once it has expired, and records nothing."""
    with Server.start(
        databases.new_url(), tmp_path, LOYALTY_JWT_TTL_SECONDS=str(SHORT_TTL_S)
    ) as server:
        token, expires, customer_id = token_used_within_its_lifetime(server)
        time.sleep(max(0.0, expires - time.time()) + 0.5)
        headers = {"Authorization": f"Bearer {token}"}
        with httpx.Client(base_url=server.base_url, headers=headers, timeout=30) as client:
            expired = [
                adjust(client, customer_id, 1),
                client.get(f"/admin/loyalty/points/{customer_id}"),
                client.get(f"/admin/customers/{customer_id}"),
                client.get("/admin/customers"),
            ]
        assert [r.status_code for r in expired] == [401] * 4, [r.text for r in expired]
        assert all(r.json() == REQUIRED for r in expired)
        fresh = {"Authorization": f"Bearer {login(server, ADMIN_EMAIL, ADMIN_PASSWORD)}"}
        with httpx.Client(base_url=server.base_url, headers=fresh, timeout=30) as client:
            assert client.get(f"/admin/loyalty/points/{customer_id}").json()["balance"] == 1


# --- the token routes --------------------------------------------------------------------


def test_admin_token_returns_token_and_user(anon: httpx.Client) -> None:
    """POST /admin/auth/token gives {"token", "user"}: an HS256 JWT for that user, 86400 s."""
    response = anon.post(
        "/admin/auth/token", json={"email": ADMIN_EMAIL, "password": ADMIN_PASSWORD}
    )
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"token", "user"}
    user = body["user"]
    assert set(user) == {"id", "email", "first_name", "last_name", "scopes"}
    assert USER_ID.match(user["id"])
    assert user["email"] == ADMIN_EMAIL
    assert sorted(user["scopes"]) == sorted(ALL_SCOPES)
    assert jwt.get_unverified_header(body["token"])["alg"] == "HS256"
    claims = jwt.decode(body["token"], JWT_SECRET, algorithms=["HS256"])
    assert claims["sub"] == user["id"]
    assert claims["exp"] - claims["iat"] == 86400
    headers = {"Authorization": f"Bearer {body['token']}"}
    assert anon.get(OWN_CUSTOMERS, headers=headers).status_code == 200


def test_admin_token_reports_the_users_names_and_scopes(backend: Backend) -> None:
    """The user object carries the names and exactly the scopes the user was created with."""
    email = f"named-{uuid.uuid4().hex[:10]}@example.com"
    created = user_create(
        backend.database_url,
        email,
        scopes=["loyalty:read", "customers:read"],
        first_name="Ada",
        last_name="Lovelace",
    )
    assert created.returncode == 0, created.stderr
    response = httpx.post(
        f"{backend.server.base_url}/admin/auth/token",
        json={"email": email, "password": ADMIN_PASSWORD},
        timeout=30,
    )
    assert response.status_code == 200, response.text
    user = response.json()["user"]
    assert user["id"] == created.stdout.strip()
    assert (user["email"], user["first_name"], user["last_name"]) == (email, "Ada", "Lovelace")
    assert sorted(user["scopes"]) == ["customers:read", "loyalty:read"]


def test_emailpass_returns_only_a_token(anon: httpx.Client) -> None:
    """POST /auth/user/emailpass → exactly {"token"}, and the token works on /admin routes."""
    response = anon.post(
        "/auth/user/emailpass", json={"email": ADMIN_EMAIL, "password": ADMIN_PASSWORD}
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == {"token"}
    headers = {"Authorization": f"Bearer {body['token']}"}
    assert anon.get(OWN_CUSTOMERS, headers=headers).status_code == 200


@pytest.mark.parametrize("path", ["/admin/auth/token", "/auth/user/emailpass"])
def test_login_ignores_a_bad_authorization_header(anon: httpx.Client, path: str) -> None:
    """The token routes need no credentials, so a stale Authorization header does not matter."""
    response = anon.post(
        path,
        json={"email": ADMIN_EMAIL, "password": ADMIN_PASSWORD},
        headers={"Authorization": "Bearer not.a.jwt"},
    )
    assert response.status_code == 200, response.text


@pytest.mark.parametrize("path", ["/admin/auth/token", "/auth/user/emailpass"])
def test_wrong_password_and_unknown_email_look_the_same(anon: httpx.Client, path: str) -> None:
    """A wrong password and an unknown email are both 401 unauthorized with the same body."""
    wrong_password = anon.post(path, json={"email": ADMIN_EMAIL, "password": "wrong password"})
    unknown_email = anon.post(
        path, json={"email": "nobody@example.com", "password": ADMIN_PASSWORD}
    )
    assert wrong_password.status_code == unknown_email.status_code == 401
    assert wrong_password.json()["type"] == "unauthorized"
    assert isinstance(wrong_password.json()["message"], str)
    assert wrong_password.json() == unknown_email.json()
    assert "token" not in wrong_password.json()


@pytest.mark.parametrize("path", ["/admin/auth/token", "/auth/user/emailpass"])
@pytest.mark.parametrize(
    "body",
    [
        "{}",
        '{"email": "admin@example.com"}',
        '{"password": "correct horse battery staple"}',
        '{"email": "", "password": "correct horse battery staple"}',
        '{"email": "admin@example.com", "password": ""}',
        '{"email": 1, "password": "correct horse battery staple"}',
        '{"email": "admin@example.com", "password": null}',
        '{"email": ["admin@example.com"], "password": "correct horse battery staple"}',
        '{"email": "admin@example.com", "password": "correct horse battery staple", "x": 1}',
        "not json",
        "[]",
        '"admin@example.com"',
        "",
        '{"email": "admin@example.com", "password": "correct horse battery staple"',
    ],
)
def test_login_with_a_bad_body_is_400(anon: httpx.Client, path: str, body: str) -> None:
    """Missing or non-string fields, unknown fields and bodies that are not a JSON object: 400."""
    response = anon.post(path, content=body.encode(), headers={"Content-Type": "application/json"})
    assert response.status_code == 400, response.text
    assert response.json()["type"] == "invalid_data"
    assert "token" not in response.json()


@pytest.mark.parametrize("path", ["/admin/auth/token", "/auth/user/emailpass"])
def test_login_with_a_form_body_is_400(anon: httpx.Client, path: str) -> None:
    """Credentials sent as a form or as text/plain are 400 invalid_data."""
    form = anon.post(path, data={"email": ADMIN_EMAIL, "password": ADMIN_PASSWORD})
    assert form.status_code == 400
    assert form.json()["type"] == "invalid_data"
    body = json.dumps({"email": ADMIN_EMAIL, "password": ADMIN_PASSWORD}).encode()
    text = anon.post(path, content=body, headers={"Content-Type": "text/plain"})
    assert text.status_code == 400
    assert text.json()["type"] == "invalid_data"


# --- password storage --------------------------------------------------------------------


def _password_hashes(database_url: str) -> list[str]:
    if database_url.startswith("sqlite:///"):
        path = database_url.removeprefix("sqlite:///")
        with closing(sqlite3.connect(path)) as conn:
            return [row[0] for row in conn.execute("SELECT password_hash FROM users")]

    async def fetch() -> list[str]:
        conn = await asyncpg.connect(database_url, timeout=5)
        try:
            return [row[0] for row in await conn.fetch("SELECT password_hash FROM users")]
        finally:
            await conn.close()

    return asyncio.run(fetch())


def test_passwords_are_stored_as_argon2id(backend: Backend, tokens: Tokens) -> None:
    """Every stored password is an argon2id hash, never the password itself."""
    tokens.holding("loyalty:read")  # at least one user made through the CLI
    hashes = _password_hashes(backend.database_url)
    assert len(hashes) >= 2
    for stored in hashes:
        assert stored.startswith("$argon2id$"), stored[:20]
        assert ADMIN_PASSWORD not in stored
    assert len(set(hashes)) == len(hashes), "equal passwords must hash differently (salted)"
