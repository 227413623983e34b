"""SPEC 8.1 and the auth half of 8.4: secret API keys (create, list, revoke, the three header
forms, scopes as a ceiling, keys dying with their creator, last_used_at, the CLI), and
POST /auth/token/refresh and GET /admin/users/me.

Every test runs on a pair of servers sharing one fresh database of each kind, so that a
revocation can be seen at once by a server that has already used the key.
"""

from __future__ import annotations

import base64
import hashlib
import re
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import jwt
import pytest

from tests.conftest import DatabaseFactory
from tests.support import (
    ADJ_ID,
    ADMIN_EMAIL,
    ADMIN_PASSWORD,
    JWT_SECRET,
    KEY_HEADER,
    PENDING_PATH,
    REPLAYED_HEADER,
    TIMESTAMP,
    USER_ID,
    Backend,
    adjust,
    adjustment_of,
    assert_error,
    backends_on_one_database,
    eventually,
    iso_in,
    new_customer,
    ok,
    run_cli,
    sql,
    user_id,
)

KEYS_PATH = "/admin/api-keys"
ME_PATH = "/admin/users/me"
REFRESH_PATH = "/auth/token/refresh"
ALL_SCOPES = [
    "api_keys:write",
    "customers:read",
    "customers:write",
    "loyalty:read",
    "loyalty:write",
    "webhooks:write",
]
KEY_ID = re.compile(r"^apk_[0-9A-HJKMNP-TV-Z]{26}$")
TOKEN = re.compile(r"^sk_[0-9A-Za-z]{49}$")
KEY_FIELDS = {
    "id",
    "title",
    "token",
    "redacted",
    "scopes",
    "created_by",
    "created_at",
    "last_used_at",
    "revoked_at",
}
FORMS = ["bearer", "basic_username", "basic_password"]
BASE62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
# The flush of last_used_at runs every ~2 s; this bounds the wait generously.
LAST_USED_WAIT_S = 30.0


# --- fixtures and helpers ------------------------------------------------------------------


@pytest.fixture(scope="module")
def pair(
    databases: DatabaseFactory, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[list[Backend]]:
    """Two server processes on one fresh database of each kind."""
    workdir = tmp_path_factory.mktemp(f"api-keys-{databases.kind}")
    with backends_on_one_database(databases.kind, databases.new_url(), workdir) as servers:
        yield servers


@pytest.fixture(scope="module")
def served(pair: list[Backend]) -> Backend:
    return pair[0]


def authorization(token: str, form: str = "bearer") -> str:
    if form == "bearer":
        return f"Bearer {token}"
    credentials = f"{token}:" if form == "basic_username" else f":{token}"
    return "Basic " + base64.b64encode(credentials.encode()).decode()


def as_key(backend: Backend, token: str, form: str = "bearer") -> httpx.Client:
    return httpx.Client(
        base_url=backend.server.base_url,
        headers={"Authorization": authorization(token, form)},
        timeout=30,
    )


def raw_client(backend: Backend, header: str) -> httpx.Client:
    return httpx.Client(
        base_url=backend.server.base_url, headers={"Authorization": header}, timeout=30
    )


def create_key(
    client: httpx.Client, scopes: list[str] | None = None, **extra: Any
) -> dict[str, Any]:
    body: dict[str, Any] = {"title": f"key {uuid.uuid4().hex[:8]}", **extra}
    if scopes is not None:
        body["scopes"] = scopes
    key: dict[str, Any] = ok(client.post(KEYS_PATH, json=body))["api_key"]
    return key


def listed(client: httpx.Client, key_id: str) -> dict[str, Any]:
    """The key as the list shows it (the list is newest first and paged)."""
    offset = 0
    while True:
        page = ok(client.get(KEYS_PATH, params={"limit": 100, "offset": offset}))
        for key in page["api_keys"]:
            if key["id"] == key_id:
                found: dict[str, Any] = key
                return found
        offset += 100
        assert offset < page["count"], f"{key_id} is not listed"


def with_checksum(body: str) -> str:
    """A token of this 43-character body with a valid checksum, as the service makes them."""
    import zlib

    value, digits = zlib.crc32(body.encode()), []
    for _ in range(6):
        value, digit = divmod(value, 62)
        digits.append(BASE62[digit])
    return f"sk_{body}{''.join(reversed(digits))}"


def key_user(served: Backend, *scopes: str) -> tuple[str, str]:
    """A new user holding `scopes` (with api_keys:write added) and its JWT."""
    return served.new_user(*sorted({*scopes, "api_keys:write"}))


# --- creation ------------------------------------------------------------------------------


def test_create_returns_the_key_with_its_token_once(served: Backend) -> None:
    """The new key: an apk_ id, an sk_ token of 49 base62 characters, redacted as its head
    and tail, the creator's scopes by default, the creator's id, never used nor revoked. The
    list then shows it without the token."""
    with served.client() as admin:
        key = create_key(admin, title="Medusa backend")
        assert set(key) == KEY_FIELDS
        assert KEY_ID.match(key["id"]), key
        assert TOKEN.match(key["token"]), key
        assert key["title"] == "Medusa backend"
        head, _, tail = key["redacted"].partition("…")
        assert key["token"].startswith(head) and key["token"].endswith(tail)
        assert len(head) + len(tail) < 16
        assert key["scopes"] == ALL_SCOPES
        assert key["created_by"] == user_id(served.server)
        assert TIMESTAMP.match(key["created_at"])
        assert key["last_used_at"] is None and key["revoked_at"] is None

        page = ok(admin.get(KEYS_PATH))
        assert set(page) == {"api_keys", "count", "offset", "limit"}
        assert (page["offset"], page["limit"]) == (0, 20)
        assert page["api_keys"][0]["id"] == key["id"], "newest first"
        assert all(listed_key["token"] is None for listed_key in page["api_keys"])
        assert listed(admin, key["id"]) == {**key, "token": None}
        assert key["token"] not in admin.get(KEYS_PATH).text


def test_the_token_is_stored_only_as_its_sha256(served: Backend) -> None:
    """The api_keys row holds the token's SHA-256 in hex and the redacted form, and no column
    of it, nor the kept Idempotency-Key response, holds the token itself."""
    with served.client() as admin:
        response = admin.post(KEYS_PATH, json={"title": "stored"}, headers={KEY_HEADER: "kst"})
        key = ok(response)["api_key"]
    token = key["token"]
    rows = sql(served.database_url, "SELECT * FROM api_keys WHERE id = $1", key["id"])
    assert len(rows) == 1
    assert hashlib.sha256(token.encode()).hexdigest() in rows[0]
    assert not any(token in str(value) for value in rows[0])
    kept = sql(served.database_url, "SELECT response FROM idempotency_keys WHERE key = 'kst'")
    assert len(kept) == 1
    assert token.encode() not in bytes(kept[0][0])
    assert key["id"].encode() in bytes(kept[0][0])


def test_a_retry_with_the_same_idempotency_key_creates_nothing(served: Backend) -> None:
    """The same create with the same Idempotency-Key: the same key again, marked replayed,
    without its token (never kept); one key exists. Another body with the key is 422."""
    title = f"idempotent {uuid.uuid4().hex[:8]}"
    idempotency_key = f"create-{uuid.uuid4().hex}"
    with served.client() as admin:
        first = admin.post(KEYS_PATH, json={"title": title}, headers={KEY_HEADER: idempotency_key})
        again = admin.post(KEYS_PATH, json={"title": title}, headers={KEY_HEADER: idempotency_key})
        other = admin.post(KEYS_PATH, json={"title": "x"}, headers={KEY_HEADER: idempotency_key})
    created, replayed = ok(first)["api_key"], ok(again)["api_key"]
    assert REPLAYED_HEADER not in first.headers
    assert again.headers[REPLAYED_HEADER] == "true"
    assert replayed == {**created, "token": None}
    assert_error(other, 422, "idempotency_error")
    count = sql(served.database_url, "SELECT count(*) FROM api_keys WHERE title = $1", title)
    assert count == [(1,)]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "title"),
        ({"title": ""}, "title"),
        ({"title": "x" * 256}, "title"),
        ({"title": 5}, "title"),
        ({"title": "t", "scopes": []}, "scopes"),
        ({"title": "t", "scopes": "loyalty:read"}, "scopes"),
        ({"title": "t", "scopes": [1]}, "scopes"),
        ({"title": "t", "scopes": ["loyalty:read"] * 17}, "scopes"),
        ({"title": "t", "scopes": ["loyalty:admin"]}, "scopes"),
    ],
    ids=[
        "no-title",
        "empty-title",
        "long-title",
        "number-title",
        "no-scopes",
        "scopes-string",
        "scopes-number",
        "too-many-scopes",
        "unknown-scope",
    ],
)
def test_a_bad_create_body_is_400_naming_the_field(
    served: Backend, body: dict[str, Any], field: str
) -> None:
    """Each bad title or scopes list is 400 invalid_data naming the field; nothing created."""
    before = sql(served.database_url, "SELECT count(*) FROM api_keys")
    with served.client() as admin:
        error = assert_error(admin.post(KEYS_PATH, json=body), 400, "invalid_data", field)
    assert field in error["message"]
    assert sql(served.database_url, "SELECT count(*) FROM api_keys") == before


def test_an_unknown_field_is_400(served: Backend) -> None:
    with served.client() as admin:
        response = admin.post(KEYS_PATH, json={"title": "t", "token": "sk_mine"})
    assert_error(response, 400, "invalid_data")


def test_the_creators_scopes_are_the_default_and_the_ceiling(served: Backend) -> None:
    """A user holding loyalty:read (and api_keys:write) gets a key of exactly those by
    default and one of loyalty:read alone on asking; asking for loyalty:write is 400 naming
    it, and creates nothing."""
    _, token = key_user(served, "loyalty:read")
    with served.client(token) as user:
        assert create_key(user)["scopes"] == ["api_keys:write", "loyalty:read"]
        assert create_key(user, ["loyalty:read"])["scopes"] == ["loyalty:read"]
        before = sql(served.database_url, "SELECT count(*) FROM api_keys")
        response = user.post(KEYS_PATH, json={"title": "t", "scopes": ["loyalty:write"]})
    error = assert_error(response, 400, "invalid_data", "scopes")
    assert "loyalty:write" in error["message"]
    assert sql(served.database_url, "SELECT count(*) FROM api_keys") == before


def test_a_key_creating_a_key_is_capped_by_its_own_scopes(served: Backend) -> None:
    """A key holding api_keys:write and loyalty:read makes keys for its creator, never with
    more than its own scopes."""
    with served.client() as admin:
        parent = create_key(admin, ["api_keys:write", "loyalty:read"])
    with as_key(served, parent["token"]) as key:
        child = create_key(key, ["loyalty:read"])
        refused = key.post(KEYS_PATH, json={"title": "t", "scopes": ["loyalty:write"]})
    assert child["created_by"] == parent["created_by"]
    assert "loyalty:write" in assert_error(refused, 400, "invalid_data", "scopes")["message"]


# --- the three header forms ------------------------------------------------------------------


@pytest.mark.parametrize("form", FORMS)
def test_each_header_form_authenticates(served: Backend, form: str) -> None:
    """Bearer sk_…, Basic base64("sk_…:") and Basic base64(":sk_…") each read customers,
    adjust and read a balance (the batched routes), and identify as the key."""
    with served.client() as admin:
        key = create_key(admin)
        customer_id = new_customer(admin)["id"]
    with as_key(served, key["token"], form) as client:
        assert ok(client.get(f"/admin/customers/{customer_id}"))["customer"]["id"] == customer_id
        adjusted = ok(adjust(client, customer_id, 5))
        assert ok(client.get(f"/admin/loyalty/points/{customer_id}"))["balance"] == 5
        assert ok(client.get(ME_PATH))["user"]["id"] == key["created_by"]
    with served.client() as admin:
        assert adjustment_of(admin, adjusted["id"])["created_by"] == key["id"]


@pytest.mark.parametrize("scheme", ["basic", "BASIC", "Basic"])
def test_the_basic_scheme_is_case_insensitive(served: Backend, scheme: str) -> None:
    with served.client() as admin:
        token = create_key(admin)["token"]
    encoded = base64.b64encode(f"{token}:".encode()).decode()
    with raw_client(served, f"{scheme} {encoded}") as client:
        assert client.get(ME_PATH).status_code == 200


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


BAD_BASIC = {
    "not-base64": ("Basic !!!notbase64", "not valid base64"),
    "not-utf8": ("Basic " + base64.b64encode(b"\xff\xfe:").decode(), "not valid base64"),
    "no-colon": ("Basic " + _b64("sk_abc"), "no colon"),
    "both-halves": ("Basic " + _b64("sk_abc:sk_abc"), "not both"),
    "user-and-password": ("Basic " + _b64("admin:password"), "not both"),
    "empty": ("Basic", "empty"),
    "only-colon": ("Basic " + _b64(":"), "empty"),
    "not-a-key": ("Basic " + _b64("admin:"), "sk_"),
}


@pytest.mark.parametrize("case", list(BAD_BASIC))
def test_a_malformed_basic_header_is_401_saying_why(served: Backend, case: str) -> None:
    """Each malformed Basic header is 401 unauthorized with a message that says what is
    wrong, on a confirmed route and on adjust (which records nothing)."""
    header, words = BAD_BASIC[case]
    with served.client() as admin:
        customer_id = new_customer(admin)["id"]
    with raw_client(served, header) as client:
        responses = [client.get("/admin/customers"), adjust(client, customer_id, 1)]
    for response in responses:
        error = assert_error(response, 401, "unauthorized")
        assert words in error["message"], error
    with served.client() as admin:
        assert ok(admin.get(f"/admin/loyalty/points/{customer_id}"))["balance"] == 0


def bad_tokens() -> dict[str, tuple[str, str]]:
    body = "".join(BASE62[n % 62] for n in range(7, 50))
    good = with_checksum(body)
    wrong_checksum = good[:-1] + ("0" if good[-1] != "0" else "1")
    return {
        "wrong-checksum": (wrong_checksum, "malformed"),
        "too-short": (good[:-1], "malformed"),
        "too-long": (good + "0", "malformed"),
        "not-base62": (good[:10] + "-" + good[11:], "malformed"),
        "unknown": (good, "not known"),
    }


@pytest.mark.parametrize("case", list(bad_tokens()))
@pytest.mark.parametrize("form", FORMS)
def test_a_bad_key_is_401_saying_why(served: Backend, form: str, case: str) -> None:
    """A key of the wrong length, alphabet or checksum (refused without the database) and a
    well-formed key that does not exist are 401 unauthorized in every header form."""
    token, words = bad_tokens()[case]
    with served.client() as admin:
        customer_id = new_customer(admin)["id"]
    with as_key(served, token, form) as client:
        responses = [
            client.get("/admin/customers"),
            adjust(client, customer_id, 1),
            client.get(f"/admin/loyalty/points/{customer_id}"),
        ]
    for response in responses:
        error = assert_error(response, 401, "unauthorized")
        assert words in error["message"], error


# --- revocation ------------------------------------------------------------------------------


def test_a_revoked_key_is_refused_at_once_by_every_server(pair: list[Backend]) -> None:
    """A key in use on the second server, revoked on the first: the second refuses it on its
    very next request (adjust, balance, a confirmed route) with 401 and records nothing."""
    first, second = pair
    with first.client() as admin:
        key = create_key(admin)
        customer_id = new_customer(admin)["id"]
    with as_key(second, key["token"]) as client:
        assert ok(adjust(client, customer_id, 3))["balance_after"] == 3
        assert ok(client.get(f"/admin/loyalty/points/{customer_id}"))["balance"] == 3

        with first.client() as admin:
            revoked = ok(admin.post(f"{KEYS_PATH}/{key['id']}/revoke"))["api_key"]
        assert TIMESTAMP.match(revoked["revoked_at"])
        # (last_used_at may already show the uses above.)
        changed = {"token": None, "revoked_at": revoked["revoked_at"]}
        assert {**revoked, "last_used_at": None} == {**key, **changed}

        responses = [
            adjust(client, customer_id, 3),
            client.get(f"/admin/loyalty/points/{customer_id}"),
            client.get(f"/admin/customers/{customer_id}"),
        ]
    for response in responses:
        error = assert_error(response, 401, "unauthorized")
        assert "revoked" in error["message"]
    with second.client() as admin:
        assert ok(admin.get(f"/admin/loyalty/points/{customer_id}"))["balance"] == 3
        assert listed(admin, key["id"])["revoked_at"] == revoked["revoked_at"]


def test_revoking_twice_is_409_and_an_unknown_key_404(served: Backend) -> None:
    """A second revocation is 409 conflict (the first revocation time stays); a retry with
    the first one's Idempotency-Key replays it instead; an unknown id is 404."""
    with served.client() as admin:
        key = create_key(admin)
        path = f"{KEYS_PATH}/{key['id']}/revoke"
        first = admin.post(path, headers={KEY_HEADER: f"revoke-{key['id']}"})
        retried = admin.post(path, headers={KEY_HEADER: f"revoke-{key['id']}"})
        again = admin.post(path)
        unknown = admin.post(f"{KEYS_PATH}/apk_01ARZ3NDEKTSV4RRFFQ69G5FAV/revoke")
        revoked_at = ok(first)["api_key"]["revoked_at"]
        assert retried.headers[REPLAYED_HEADER] == "true"
        assert ok(retried) == ok(first)
        assert key["id"] in assert_error(again, 409, "conflict")["message"]
        assert (
            "apk_01ARZ3NDEKTSV4RRFFQ69G5FAV" in assert_error(unknown, 404, "not_found")["message"]
        )
        assert listed(admin, key["id"])["revoked_at"] == revoked_at


# --- scopes ------------------------------------------------------------------------------------


def test_a_keys_scopes_limit_what_it_may_do(served: Backend) -> None:
    """A loyalty:read key reads balances but adjust is 403 naming loyalty:write and customers
    403 naming customers:read, and nothing is recorded."""
    with served.client() as admin:
        key = create_key(admin, ["loyalty:read"])
        customer_id = new_customer(admin)["id"]
    with as_key(served, key["token"]) as client:
        assert ok(client.get(f"/admin/loyalty/points/{customer_id}"))["balance"] == 0
        refused_adjust = adjust(client, customer_id, 1)
        refused_customers = client.get("/admin/customers")
        refused_keys = client.get(KEYS_PATH)
    assert "loyalty:write" in assert_error(refused_adjust, 403, "forbidden")["message"]
    assert "customers:read" in assert_error(refused_customers, 403, "forbidden")["message"]
    assert "api_keys:write" in assert_error(refused_keys, 403, "forbidden")["message"]
    with served.client() as admin:
        assert ok(admin.get(f"/admin/loyalty/points/{customer_id}"))["balance"] == 0


def test_a_key_acts_with_no_more_than_its_creator_holds_now(served: Backend) -> None:
    """Once its creator loses loyalty:write, the creator's key holding it is 403 on adjust;
    given it back, the key adjusts again."""
    email, token = key_user(served, "loyalty:read", "loyalty:write", "customers:write")
    with served.client(token) as user:
        key = create_key(user, ["loyalty:write"])
        customer_id = new_customer(user)["id"]
    with as_key(served, key["token"]) as client:
        assert ok(adjust(client, customer_id, 1))["balance_after"] == 1
        sql(served.database_url, "UPDATE users SET scopes = 'loyalty:read' WHERE email = $1", email)
        refused = adjust(client, customer_id, 1)
        assert "loyalty:write" in assert_error(refused, 403, "forbidden")["message"]
        sql(
            served.database_url,
            "UPDATE users SET scopes = 'loyalty:read loyalty:write' WHERE email = $1",
            email,
        )
        assert ok(adjust(client, customer_id, 1))["balance_after"] == 2


# --- keys die with their creator ---------------------------------------------------------------


def test_a_key_stops_while_its_creator_is_disabled_and_dies_with_it(served: Backend) -> None:
    """`loyalty user disable`: the creator's key is 401 at once (and works again after
    `enable`); `loyalty user delete`: 401 for good, and the list shows the key revoked."""
    email, token = key_user(served, "loyalty:read", "loyalty:write", "customers:write")
    with served.client(token) as user:
        key = create_key(user)
        customer_id = new_customer(user)["id"]
    url = served.database_url
    with as_key(served, key["token"]) as client:
        assert ok(adjust(client, customer_id, 1))["balance_after"] == 1
        assert run_cli(url, "user", "disable", "--email", email).returncode == 0
        for response in (adjust(client, customer_id, 1), client.get(ME_PATH)):
            assert "creator" in assert_error(response, 401, "unauthorized")["message"]
        assert run_cli(url, "user", "enable", "--email", email).returncode == 0
        assert ok(adjust(client, customer_id, 1))["balance_after"] == 2
        assert run_cli(url, "user", "delete", "--email", email).returncode == 0
        for response in (
            adjust(client, customer_id, 1),
            client.get(f"/admin/loyalty/points/{customer_id}"),
            client.get(ME_PATH),
        ):
            assert_error(response, 401, "unauthorized")
    with served.client() as admin:
        assert ok(admin.get(f"/admin/loyalty/points/{customer_id}"))["balance"] == 2
        assert listed(admin, key["id"])["revoked_at"] is not None


# --- what a key records -------------------------------------------------------------------------


def test_what_a_key_records_is_created_by_the_key(served: Backend) -> None:
    """An adjustment, a bulk item and pending points made with a key name its apk_ id as
    created_by when read back."""
    with served.client() as admin:
        key = create_key(admin)
        customer_id = new_customer(admin)["id"]
    with as_key(served, key["token"], "basic_password") as client:
        adjusted = ok(adjust(client, customer_id, 10))
        bulk = ok(
            client.post(
                "/admin/loyalty/points/bulk-adjust",
                json={"adjustments": [{"customer_id": customer_id, "delta": 1}]},
            )
        )
        pending = client.post(
            PENDING_PATH, json={"customer_id": customer_id, "points": 5, "release_at": iso_in(3600)}
        )
    assert ADJ_ID.match(adjusted["id"])
    assert pending.status_code == 200, pending.text
    with served.client() as admin:
        assert adjustment_of(admin, adjusted["id"])["created_by"] == key["id"]
        bulk_id = bulk["results"][0]["adjustment"]["id"]
        assert adjustment_of(admin, bulk_id)["created_by"] == key["id"]
    stored = sql(
        served.database_url,
        "SELECT created_by FROM loyalty_pending WHERE customer_id = $1",
        customer_id,
    )
    assert stored == [(key["id"],)]


def test_last_used_at_follows_use_within_seconds(pair: list[Backend]) -> None:
    """A key never used has no last_used_at; used on either server, it shows a last_used_at
    at or after that use within a few seconds (no write per request: a flush every ~2 s)."""
    first, second = pair
    with first.client() as admin:
        key = create_key(admin)
        assert listed(admin, key["id"])["last_used_at"] is None
    with as_key(second, key["token"]) as client:
        assert client.get(ME_PATH).status_code == 200
    with first.client() as admin:

        def used() -> str | None:
            value: str | None = listed(admin, key["id"])["last_used_at"]
            return value

        last_used = eventually(used, LAST_USED_WAIT_S, "last_used_at after a use")
    assert TIMESTAMP.match(last_used)
    assert last_used >= key["created_at"]


# --- the CLI -----------------------------------------------------------------------------------


def test_cli_api_key_create_prints_a_working_token(served: Backend) -> None:
    """`loyalty api-key create --email E --title T --scope S` prints one line, the token,
    which works as a key of that user with that scope."""
    email, _ = key_user(served, "loyalty:read")
    result = run_cli(
        served.database_url,
        "api-key",
        "create",
        "--email",
        email,
        "--title",
        "from the CLI",
        "--scope",
        "loyalty:read",
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 1 and TOKEN.match(lines[0]), result.stdout
    with as_key(served, lines[0]) as client:
        me = ok(client.get(ME_PATH))["user"]
        assert me["email"] == email
        assert client.get("/admin/loyalty/points/anyone").status_code == 404
        assert_error(client.get(KEYS_PATH), 403, "forbidden")
    with served.client() as admin:
        page = ok(admin.get(KEYS_PATH))["api_keys"]
    made = [key for key in page if key["title"] == "from the CLI"]
    assert made and made[0]["scopes"] == ["loyalty:read"]


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--email", "nobody@example.com", "--title", "t"], "no user"),
        (["--email", ADMIN_EMAIL, "--title", "t", "--scope", "loyalty:admin"], "unknown scope"),
        (["--email", ADMIN_EMAIL, "--title", ""], "--title"),
    ],
    ids=["unknown-email", "unknown-scope", "empty-title"],
)
def test_cli_api_key_create_fails_cleanly(served: Backend, args: list[str], words: str) -> None:
    """An unknown email, scope or an empty title: one line on stderr, exit 2, no key."""
    before = sql(served.database_url, "SELECT count(*) FROM api_keys")
    result = run_cli(served.database_url, "api-key", "create", *args)
    assert result.returncode == 2, result.stdout
    assert result.stdout == ""
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert words in result.stderr
    assert sql(served.database_url, "SELECT count(*) FROM api_keys") == before


def test_cli_api_key_create_is_capped_by_the_users_scopes(served: Backend) -> None:
    email, _ = key_user(served, "loyalty:read")
    args = ["--email", email, "--title", "t", "--scope", "loyalty:write"]
    result = run_cli(served.database_url, "api-key", "create", *args)
    assert result.returncode == 2
    assert "loyalty:write" in result.stderr and "Traceback" not in result.stderr


# --- /admin/users/me and /auth/token/refresh ---------------------------------------------------


def test_me_is_the_user_of_the_token(served: Backend) -> None:
    """GET /admin/users/me → {"user"} exactly as the token route shows the user."""
    response = httpx.post(
        f"{served.server.base_url}/admin/auth/token",
        json={"email": ADMIN_EMAIL, "password": ADMIN_PASSWORD},
        timeout=30,
    )
    expected = ok(response)["user"]
    with served.client() as admin:
        assert ok(admin.get(ME_PATH)) == {"user": expected}


def test_me_with_a_key_is_its_creator(served: Backend) -> None:
    email, token = key_user(served, "loyalty:read")
    with served.client(token) as user:
        key = create_key(user, ["loyalty:read"])
    with as_key(served, key["token"], "basic_username") as client:
        me = ok(client.get(ME_PATH))["user"]
    assert USER_ID.match(me["id"]) and me["id"] == key["created_by"]
    assert me["email"] == email
    assert me["scopes"] == ["api_keys:write", "loyalty:read"]


def test_refresh_gives_a_new_token_for_the_same_user(served: Backend) -> None:
    """POST /auth/token/refresh with a valid Bearer JWT → {"token"}: another HS256 JWT for
    the same user, with the scopes it holds now, that works."""
    email, token = served.new_user("loyalty:read", "customers:read")
    sql(served.database_url, "UPDATE users SET scopes = 'loyalty:read' WHERE email = $1", email)
    with served.client(token) as user:
        body = ok(user.post(REFRESH_PATH))
    assert set(body) == {"token"}
    old = jwt.decode(token, JWT_SECRET, algorithms=["HS256"])
    new = jwt.decode(body["token"], JWT_SECRET, algorithms=["HS256"])
    assert new["sub"] == old["sub"]
    assert new["scopes"] == ["loyalty:read"]
    with served.client(body["token"]) as refreshed:
        assert ok(refreshed.get(ME_PATH))["user"]["email"] == email


def test_refresh_is_refused_for_deleted_disabled_and_keys(served: Backend) -> None:
    """Refresh is 401 for a deleted or a disabled user's token, for an API key (keys do not
    expire), and without credentials; it takes no body fields."""
    deleted_email, deleted = served.new_user("loyalty:read")
    disabled_email, disabled = served.new_user("loyalty:read")
    assert run_cli(served.database_url, "user", "delete", "--email", deleted_email).returncode == 0
    assert (
        run_cli(served.database_url, "user", "disable", "--email", disabled_email).returncode == 0
    )
    for token in (deleted, disabled):
        with served.client(token) as client:
            assert_error(client.post(REFRESH_PATH), 401, "unauthorized")
    with served.client() as admin:
        key = create_key(admin)
        assert_error(admin.post(REFRESH_PATH, json={"token": "x"}), 400, "invalid_data")
    for form in FORMS:
        with as_key(served, key["token"], form) as client:
            error = assert_error(client.post(REFRESH_PATH), 401, "unauthorized")
            assert "API key" in error["message"]
    response = httpx.post(f"{served.server.base_url}{REFRESH_PATH}", timeout=30)
    assert response.json() == {"type": "unauthorized", "message": "Authentication required"}


@pytest.mark.parametrize("path", [ME_PATH, REFRESH_PATH])
def test_me_and_refresh_need_credentials(served: Backend, path: str) -> None:
    method = "POST" if path == REFRESH_PATH else "GET"
    for header in ("Bearer not.a.jwt", "Basic " + _b64("admin:password"), None):
        headers = {} if header is None else {"Authorization": header}
        response = httpx.request(
            method, f"{served.server.base_url}{path}", headers=headers, timeout=30
        )
        assert_error(response, 401, "unauthorized")


def test_the_new_routes_are_documented(served: Backend) -> None:
    """The key routes, refresh and me are in /openapi.json, with the Basic scheme beside
    Bearer."""
    document = ok(httpx.get(f"{served.server.base_url}/openapi.json", timeout=30))
    paths = document["paths"]
    assert {"post", "get"} <= set(paths[KEYS_PATH])
    assert "post" in paths[f"{KEYS_PATH}/{{key_id}}/revoke"]
    assert "post" in paths[REFRESH_PATH] and "get" in paths[ME_PATH]
    assert set(document["components"]["securitySchemes"]) == {"bearer", "basic"}
    assert "403" not in paths[ME_PATH]["get"]["responses"]
    assert "401" in paths[ME_PATH]["get"]["responses"]
