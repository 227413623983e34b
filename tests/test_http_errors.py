"""The one error envelope everywhere: unknown routes, wrong methods, service routes, odd input."""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from loyalty.http.schemas import ERROR_TYPES
from tests.support import new_customer

# Driver names, stack traces and file paths in any case; SQL keywords as the code writes them.
LEAK_ANY_CASE = re.compile(r"traceback|sqlite|asyncpg|psycopg|/work/|\.py\b", re.IGNORECASE)
LEAK_EXACT = re.compile(r"\bSELECT\b|\bINSERT INTO\b|\bUPDATE \w+ SET\b|File \"")


def assert_no_internals(response: httpx.Response) -> None:
    """No stack trace, SQL, database driver name or file path in a response body."""
    text = response.content.decode("utf-8", errors="replace")
    leak = LEAK_ANY_CASE.search(text) or LEAK_EXACT.search(text)
    assert leak is None, f"{response.request.method} {response.request.url}: {text[:500]}"


def watch_responses(monkeypatch: pytest.MonkeyPatch) -> None:
    """Checks every response any httpx.Client of the test receives for leaked internals."""
    original: Callable[..., httpx.Response] = httpx.Client.send

    def send(self: httpx.Client, request: httpx.Request, **kwargs: Any) -> httpx.Response:
        response = original(self, request, **kwargs)
        if not kwargs.get("stream"):
            assert_no_internals(response)
        return response

    monkeypatch.setattr(httpx.Client, "send", send)


@pytest.fixture(autouse=True)
def _no_internals_in_responses(monkeypatch: pytest.MonkeyPatch) -> None:
    watch_responses(monkeypatch)


def assert_envelope(response: httpx.Response, status: int, kind: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body: dict[str, Any] = response.json()
    assert body["type"] == kind
    assert isinstance(body["message"], str) and body["message"]
    assert set(body) <= {"type", "message", "errors"}
    return body


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/nope"),
        ("GET", "/admin/nope"),
        ("POST", "/nope"),
        ("GET", "/admin/loyalty/points/x/history/more"),
        ("GET", "/admin/customers/x/y"),
        ("GET", "/health/"),
        ("GET", "/admin/customers/"),
        ("GET", "/"),
    ],
)
def test_unknown_route_is_404_not_found(api: httpx.Client, method: str, path: str) -> None:
    """An unknown route is 404 with {"type": "not_found", "message": ...} and nothing else."""
    body = assert_envelope(api.request(method, path), 404, "not_found")
    assert set(body) == {"type", "message"}


def test_unknown_admin_route_without_credentials_is_still_an_envelope(anon: httpx.Client) -> None:
    """Without credentials an unknown /admin route still answers in the error envelope."""
    response = anon.get("/admin/nope")
    assert response.status_code in (401, 404)
    assert response.json()["type"] in ("unauthorized", "not_found")


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [
        ("DELETE", "/admin/customers", {"GET", "POST"}),
        ("PUT", "/admin/customers", {"GET", "POST"}),
        ("PUT", "/admin/loyalty/points/x", {"GET"}),
        ("DELETE", "/admin/loyalty/points/x", {"GET"}),
        ("POST", "/admin/loyalty/points/x/history", {"GET"}),
        ("GET", "/admin/loyalty/points/adjust", {"POST"}),
        ("DELETE", "/admin/loyalty/points/adjust", {"POST"}),
        ("PATCH", "/admin/customers/x", {"GET"}),
        ("GET", "/admin/auth/token", {"POST"}),
        ("GET", "/auth/user/emailpass", {"POST"}),
        ("POST", "/health", {"GET"}),
    ],
)
def test_wrong_method_is_405_with_allow(
    api: httpx.Client, method: str, path: str, allowed: set[str]
) -> None:
    """A wrong method is 405 not_allowed with an Allow header listing the route's methods."""
    response = api.request(method, path)
    body = assert_envelope(response, 405, "not_allowed")
    assert set(body) == {"type", "message"}
    listed = {m.strip().upper() for m in response.headers["allow"].split(",")}
    assert allowed <= listed, response.headers["allow"]
    assert method not in listed


def test_health_is_ok_without_auth(anon: httpx.Client) -> None:
    """GET /health is 200 {"status": "ok"} as JSON, no credentials needed."""
    response = anon.get("/health")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/json")
    assert response.json() == {"status": "ok"}


SPEC_ROUTES = {
    ("GET", "/health"),
    ("POST", "/admin/auth/token"),
    ("POST", "/auth/user/emailpass"),
    ("POST", "/admin/customers"),
    ("GET", "/admin/customers"),
    ("GET", "/admin/customers/{}"),
    ("POST", "/admin/loyalty/points/adjust"),
    ("GET", "/admin/loyalty/points/{}"),
    ("GET", "/admin/loyalty/points/{}/history"),
}


def test_openapi_document_lists_every_route(anon: httpx.Client) -> None:
    """GET /openapi.json is an OpenAPI 3 document, without auth, listing every route of SPEC."""
    response = anon.get("/openapi.json")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/json")
    document = response.json()
    assert str(document["openapi"]).startswith("3.")
    assert document["info"]["title"]
    listed = {
        (method.upper(), re.sub(r"\{[^}]+\}", "{}", path))
        for path, operations in document["paths"].items()
        for method in operations
        if method.lower() in {"get", "post", "put", "patch", "delete"}
    }
    assert listed >= SPEC_ROUTES, SPEC_ROUTES - listed


def test_openapi_adjust_parameters(anon: httpx.Client) -> None:
    """The adjust operation documents include_history and a body with exactly the 3 fields."""
    document = anon.get("/openapi.json").json()
    adjust = document["paths"]["/admin/loyalty/points/adjust"]["post"]
    assert "include_history" in {p["name"] for p in adjust["parameters"]}
    schema = adjust["requestBody"]["content"]["application/json"]["schema"]
    if "$ref" in schema:
        schema = document["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]]
    assert set(schema["properties"]) == {
        "customer_id",
        "delta",
        "reason",
        "reference",
        "metadata",
        "expires_at",
    }
    assert set(schema.get("required", [])) == {"customer_id", "delta"}


def test_docs_page_is_html(anon: httpx.Client) -> None:
    """GET /docs is an HTML page, without auth."""
    response = anon.get("/docs")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    assert "<html" in response.text.lower()


LONG = "x" * 10_000
UNICODE = "ünïcødé-☃-😀-汉字"
DEEP = "[" * 5_000 + "]" * 5_000
DEEP_OBJECT = '{"a":' * 3_000 + "1" + "}" * 3_000
HUGE_NUMBERS = ["1e400", "-1e400", "1E+400", "1e-400", "123456789012345678901234567890", "1e99999"]
ODD_STRINGS = [
    '"\\u0000"',
    '"a\\u0000b"',
    '"\\ud800"',
    '"\\udc00x"',
    '"\\ud83d\\ude00"',
    json.dumps(UNICODE),
    json.dumps(UNICODE, ensure_ascii=False),
    json.dumps(LONG),
    '"\\\\"',
    '"%"',
    '"_"',
    '"\'; DROP TABLE customers; --"',
]


def _bodies(template: Callable[[str], str], strings: list[str] = ODD_STRINGS) -> list[str]:
    """The template with each odd JSON value in turn, plus whole-body oddities."""
    values = [*strings, *HUGE_NUMBERS, DEEP, DEEP_OBJECT, "[]", "{}", "null", "true"]
    return [
        *(template(value) for value in values),
        DEEP,
        DEEP_OBJECT,
        "\x00",
        '{"\\u0000": 1}',
        '{"a": 1, "a": 2}',
        "{" + ",".join(f'"k{i}": {i}' for i in range(2000)) + "}",
        "\udcff\udcfe",  # the bytes 0xFF 0xFE: not UTF-8 at all
    ]


class Odd:
    """A batch of odd requests, each checked for status < 500 and the JSON error envelope."""

    def __init__(self, client: httpx.Client) -> None:
        self.client = client
        self.failures: list[str] = []

    def send(self, method: str, path: str, **kwargs: Any) -> None:
        label = f"{method} {path[:80]} {str(kwargs)[:160]}"
        try:
            response = self.client.request(method, path, **kwargs)
        except httpx.TransportError:
            # After a 500 the server drops the keep-alive connection, which the next request
            # finds reset; that 500 is already a failure, so this request is tried once more.
            try:
                response = self.client.request(method, path, **kwargs)
            except httpx.TransportError as error:
                self.failures.append(f"{label}: no response: {error!r}")
                return
        try:
            assert response.status_code < 500, f"{response.status_code} {response.text[:200]}"
            assert response.headers["content-type"].startswith("application/json")
            body = response.json()
            assert isinstance(body, dict)
            if response.status_code >= 400:
                assert body.get("type") in ERROR_TYPES, body
                assert isinstance(body.get("message"), str), body
        except AssertionError as error:
            self.failures.append(f"{label}: {error}")

    def post_json(self, path: str, body: str, **kwargs: Any) -> None:
        self.send(
            "POST",
            path,
            content=body.encode("utf-8", errors="surrogateescape"),
            headers={"Content-Type": "application/json"},
            **kwargs,
        )

    def check(self) -> None:
        assert not self.failures, "\n".join(self.failures)


@pytest.fixture
def odd(api: httpx.Client) -> Odd:
    return Odd(api)


def test_odd_path_segments(odd: Odd) -> None:
    """Long, unicode, NUL and other odd path segments never cause a 5xx or a non-JSON body."""
    segments = [LONG, UNICODE, "%00", "a%00b", "%2F", "..", "%25", "%FF", "%C3%28", "'%20OR%201=1"]
    for segment in segments:
        odd.send("GET", f"/admin/customers/{segment}")
        odd.send("GET", f"/admin/loyalty/points/{segment}")
        odd.send("GET", f"/admin/loyalty/points/{segment}/history")
        odd.send("POST", f"/admin/loyalty/points/adjust/{segment}")
        odd.send("GET", f"/{segment}")
    odd.check()


def test_odd_query_values(odd: Odd, api: httpx.Client) -> None:
    """Odd query values on every route that reads the query: 4xx at worst, never 5xx."""
    customer_id = new_customer(api)["id"]
    values = [LONG, UNICODE, "\x00", "a\x00b", "1e400", "-1", "99999999999999999999", "", "%"]
    for value in values:
        odd.send("GET", "/admin/customers", params={"q": value})
        odd.send("GET", "/admin/customers", params={"limit": value})
        odd.send("GET", "/admin/customers", params={"offset": value})
        odd.send("GET", f"/admin/customers/{customer_id}", params={"x": value})
        odd.send("GET", f"/admin/loyalty/points/{customer_id}", params={"x": value})
        for name in ("limit", "offset", "order", "created_at[gte]", "created_at[lte]", value):
            odd.send("GET", f"/admin/loyalty/points/{customer_id}/history", params={name: value})
        odd.post_json(
            "/admin/loyalty/points/adjust",
            json.dumps({"customer_id": customer_id, "delta": 1}),
            params={"include_history": value},
        )
    for stamp in ["99999-01-01T00:00:00Z", "0000-00-00T00:00:00Z", "2026-02-30T00:00:00Z", "1e400"]:
        odd.send(
            "GET", f"/admin/loyalty/points/{customer_id}/history", params={"created_at[gte]": stamp}
        )
    odd.check()


def test_odd_adjust_bodies(odd: Odd, api: httpx.Client) -> None:
    """Odd values in every adjust field and odd whole bodies: 4xx at worst, never 5xx."""
    cid = json.dumps(new_customer(api)["id"])
    path = "/admin/loyalty/points/adjust"
    templates: list[Callable[[str], str]] = [
        lambda v: f'{{"customer_id": {v}, "delta": 1}}',
        lambda v: f'{{"customer_id": {cid}, "delta": {v}}}',
        lambda v: f'{{"customer_id": {cid}, "delta": 1, "reason": {v}}}',
    ]
    for template in templates:
        for body in _bodies(template):
            odd.post_json(path, body)
            odd.post_json(path, body, params={"include_history": "true"})
    odd.check()


def test_odd_customer_bodies(odd: Odd) -> None:
    """Odd values in every customer field and odd whole bodies: 4xx at worst, never 5xx."""
    templates: list[Callable[[str], str]] = [
        lambda v: f'{{"email": {v}}}',
        lambda v: f'{{"email": {json.dumps(_unique_email())}, "first_name": {v}}}',
        lambda v: f'{{"email": {json.dumps(_unique_email())}, "last_name": {v}}}',
        lambda v: f'{{"email": {json.dumps(_unique_email())}, "id": {v}}}',
    ]
    for template in templates:
        for body in _bodies(template):
            odd.post_json("/admin/customers", body)
    for email in ['"a\\u0000b@example.com"', '"\\u0000@example.com"', '"ü@ü.example"']:
        odd.post_json("/admin/customers", f'{{"email": {email}}}')
    odd.check()


def test_odd_login_bodies(odd: Odd) -> None:
    """Odd values in both login routes' fields and odd whole bodies: 4xx at worst, never 5xx."""
    templates: list[Callable[[str], str]] = [
        lambda v: f'{{"email": {v}, "password": "a password"}}',
        lambda v: f'{{"email": "admin@example.com", "password": {v}}}',
    ]
    # Every well-formed login costs an argon2 verification, so fewer strings are tried here.
    strings = ['"\\u0000"', '"a\\u0000b"', '"\\ud800"', json.dumps(UNICODE), json.dumps(LONG)]
    for path in ("/admin/auth/token", "/auth/user/emailpass"):
        for template in templates:
            for body in _bodies(template, strings):
                odd.post_json(path, body)
    odd.check()


def test_odd_headers(odd: Odd) -> None:
    """Odd Authorization and Content-Type headers on an admin route: 4xx at worst."""
    with httpx.Client(base_url=odd.client.base_url, timeout=30) as client:
        batch = Odd(client)
        for authorization in [
            "Bearer " + "a" * 10_000,
            "Bearer  two-spaces",
            "Bearer a b c",
            "Bearer ü",
        ]:
            batch.send("GET", "/admin/customers", headers={"Authorization": authorization.encode()})
        batch.check()
    for content_type in ["", "application/json; charset=latin-1", "application/jsonx", "*/*"]:
        odd.send(
            "POST",
            "/admin/customers",
            content=b'{"email": "x@example.com"}',
            headers={"Content-Type": content_type},
        )
    odd.check()


def _unique_email() -> str:
    return f"odd-{uuid.uuid4().hex[:12]}@example.com"


# --- focused cases of the batches above, one defect each ----------------------------------

POST_ROUTES = [
    "/admin/auth/token",
    "/auth/user/emailpass",
    "/admin/customers",
    "/admin/loyalty/points/adjust",
]


@pytest.mark.parametrize("path", POST_ROUTES)
def test_deeply_nested_json_is_400(api: httpx.Client, path: str) -> None:
    """A JSON object whose value nests 2,000 levels deep is 400 invalid_data, not a 500."""
    value = '[{"a":' * 1_000 + "1" + "}]" * 1_000
    response = api.post(
        path, content=f'{{"email": {value}}}'.encode(), headers={"Content-Type": "application/json"}
    )
    assert_envelope(response, 400, "invalid_data")


@pytest.mark.parametrize(
    "field", ["email", "first_name", "last_name", "phone", "company_name", "metadata", "id"]
)
def test_out_of_range_number_in_a_customer_field_is_400(api: httpx.Client, field: str) -> None:
    """A customer field holding 1e400 (beyond a double's range) is 400 naming it, not a 500."""
    body = {"email": json.dumps(_unique_email()), field: "1e400"}
    text = "{" + ", ".join(f'"{k}": {v}' for k, v in body.items()) + "}"
    response = api.post(
        "/admin/customers", content=text.encode(), headers={"Content-Type": "application/json"}
    )
    body_json = assert_envelope(response, 400, "invalid_data")
    assert field in {e["field"] for e in body_json.get("errors", [])}, body_json


NUL_CASES = {
    "adjust.customer_id": ("POST", "/admin/loyalty/points/adjust", "cid_nul", {400, 404}),
    "adjust.reason": ("POST", "/admin/loyalty/points/adjust", "reason_nul", {200, 400}),
    "customers.email": ("POST", "/admin/customers", "email_nul", {200, 400}),
    "customers.first_name": ("POST", "/admin/customers", "first_name_nul", {200, 400}),
    "customers.id": ("POST", "/admin/customers", "id_nul", {400}),
    "customers.get": ("GET", "/admin/customers/a%00b", None, {400, 404}),
    "customers.list.q": ("GET", "/admin/customers?q=a%00b", None, {200, 400}),
    "points.balance": ("GET", "/admin/loyalty/points/a%00b", None, {400, 404}),
    "points.history": ("GET", "/admin/loyalty/points/a%00b/history", None, {400, 404}),
    "auth.token.email": ("POST", "/admin/auth/token", "login_nul", {400, 401}),
    "auth.emailpass.email": ("POST", "/auth/user/emailpass", "login_nul", {400, 401}),
}


@pytest.mark.parametrize("case", list(NUL_CASES))
def test_nul_character_is_never_a_500(api: httpx.Client, case: str) -> None:
    """A NUL character (\\u0000 in JSON, %00 in a URL) is refused or handled, never a 500."""
    method, path, body, allowed = NUL_CASES[case]
    customer_id = json.dumps(new_customer(api)["id"])
    email = json.dumps(_unique_email())
    bodies = {
        "cid_nul": '{"customer_id": "a\\u0000b", "delta": 1}',
        "email_nul": f'{{"email": "a\\u0000{uuid.uuid4().hex[:12]}@example.com"}}',
        "reason_nul": f'{{"customer_id": {customer_id}, "delta": 1, "reason": "a\\u0000b"}}',
        "first_name_nul": f'{{"email": {email}, "first_name": "a\\u0000b"}}',
        "id_nul": f'{{"email": {email}, "id": "a\\u0000b"}}',
        "login_nul": '{"email": "a\\u0000b@example.com", "password": "a password"}',
    }
    content = None if body is None else bodies[body].encode()
    headers = {"Content-Type": "application/json"} if content is not None else {}
    response = api.request(method, path, content=content, headers=headers)
    assert response.status_code in allowed, response.text
    assert response.headers["content-type"].startswith("application/json")
    if response.status_code >= 400:
        assert response.json()["type"] in ERROR_TYPES
    if case == "adjust.reason" and response.status_code == 200:
        history = api.get(f"/admin/loyalty/points/{json.loads(customer_id)}/history").json()
        assert history["adjustments"][0]["reason"] == "a\x00b"
