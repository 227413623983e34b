"""What an outsider can send: bytes that are not UTF-8, a key given twice, a client that goes
away mid-body or never finishes its request, a huge header, a malformed email; and what the
service leaves on disk. Each is a clean answer in the error envelope, and nothing in the log
above INFO. On SQLite and PostgreSQL.
"""

from __future__ import annotations

import json
import os
import re
import socket
import stat
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import DatabaseFactory, backend_fixture
from tests.support import (
    ADMIN_EMAIL,
    ADMIN_PASSWORD,
    Backend,
    Server,
    login,
    new_customer,
    user_create,
)

READ_TIMEOUT_S = 2
HEAD_MAX_BYTES = 16 * 1024
# The routes that read a JSON body, each with a body that is otherwise valid, made of text
# into which `{odd}` is put raw: bytes that are not UTF-8, or a key given twice.
BODY_ROUTES = {
    "/admin/auth/token": b'{"email": "{odd}a@example.com", "password": "abcdefgh"}',
    "/auth/user/emailpass": b'{"email": "{odd}a@example.com", "password": "abcdefgh"}',
    "/admin/customers": b'{"email": "{odd}c@example.com"}',
    "/admin/loyalty/points/adjust": b'{"customer_id": "{odd}x", "delta": 5}',
}
NOT_UTF8 = [b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\xf8\x88\x80\x80\x80", b"\x80"]


bounded = backend_fixture(
    "bounded",
    "A server of this module's own with a short read deadline, on each database.",
    LOYALTY_HTTP_READ_TIMEOUT_SECONDS=str(READ_TIMEOUT_S),
)


class LogWatch:
    """The server log's lines written from now on."""

    def __init__(self, server: Server) -> None:
        self._server = server
        self._start = len(server.log())

    def lines(self) -> list[dict[str, Any]]:
        time.sleep(0.3)  # lines of requests just answered reach the file
        text = self._server.log()[self._start :]
        parsed = []
        for raw in text.splitlines():
            try:
                parsed.append(json.loads(raw))
            except ValueError:
                parsed.append({"level": "NOT JSON", "message": raw})
        return parsed

    def assert_quiet(self) -> list[dict[str, Any]]:
        """Nothing above INFO, and no traceback anywhere."""
        lines = self.lines()
        loud = [line for line in lines if line.get("level") not in ("INFO", "DEBUG")]
        assert not loud, loud[:5]
        assert not any("error" in line for line in lines), lines[:5]
        return lines


def post_raw(backend: Backend, path: str, body: bytes) -> httpx.Response:
    headers = {"Authorization": f"Bearer {backend.token}", "Content-Type": "application/json"}
    return httpx.post(f"{backend.server.base_url}{path}", content=body, headers=headers, timeout=30)


@pytest.mark.parametrize("path", sorted(BODY_ROUTES))
def test_bytes_that_are_not_utf8_are_a_400_on_every_route(bounded: Backend, path: str) -> None:
    """Invalid UTF-8 inside a JSON string or a key is 400 invalid_data, logged as a request
    and nothing else."""
    watch = LogWatch(bounded.server)
    for odd in NOT_UTF8:
        for body in (
            BODY_ROUTES[path].replace(b"{odd}", odd),
            b'{"' + odd + b'": 1}',
        ):
            response = post_raw(bounded, path, body)
            assert response.status_code == 400, (body, response.text)
            assert response.json()["type"] == "invalid_data"
            assert "UTF-8" in response.json()["message"]
    watch.assert_quiet()


@pytest.mark.parametrize("path", sorted(BODY_ROUTES))
def test_a_key_given_twice_is_a_400(bounded: Backend, path: str) -> None:
    """A body naming one field twice is refused, whatever the two values, so that no reader
    that keeps the first can see another request than the one applied."""
    once = json.loads(BODY_ROUTES[path].replace(b"{odd}", b""))
    name, value = next(iter(once.items()))
    text = json.dumps(once)[1:-1]
    for twice in (
        f"{{{text}, {json.dumps(name)}: {json.dumps(value)}}}",
        f'{{{text}, "{name}" :1}}',
    ):
        response = post_raw(bounded, path, twice.encode())
        assert response.status_code == 400, (twice, response.text)
        assert response.json() == {
            "type": "invalid_data",
            "message": "Request body must not name a field twice",
        }


def test_a_delta_given_twice_records_nothing(bounded: Backend) -> None:
    """`{"delta": 5, "delta": -1}` is refused and the balance does not move."""
    with bounded.client() as api:
        customer = new_customer(api)["id"]
        body = f'{{"customer_id": "{customer}", "delta": 5, "delta": -1}}'.encode()
        assert post_raw(bounded, "/admin/loyalty/points/adjust", body).status_code == 400
        balance = api.get(f"/admin/loyalty/points/{customer}").json()
        assert (balance["balance"], balance["updated_at"]) == (0, None)


def test_escaped_and_nested_keys_are_told_apart(bounded: Backend) -> None:
    """Keys that look alike but differ, escaped quotes and colons inside values are no
    duplicates; the same key written once plainly and once escaped is one."""
    with bounded.client() as api:
        customer = new_customer(api)["id"]
        fine = json.dumps(
            {"customer_id": customer, "delta": 1, "reason": 'a "quoted" key: "delta": 2'}
        )
        assert post_raw(bounded, "/admin/loyalty/points/adjust", fine.encode()).status_code == 200
        escaped = f'{{"customer_id": "{customer}", "delta": 1, "\\u0064elta": 2}}'
        response = post_raw(bounded, "/admin/loyalty/points/adjust", escaped.encode())
        assert response.status_code == 400, response.text


def _connect(backend: Backend) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", backend.server.port), timeout=READ_TIMEOUT_S * 10)
    return sock


def _read_all(sock: socket.socket) -> bytes:
    chunks = []
    while True:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks)


def _status_and_body(answer: bytes) -> tuple[int, dict[str, Any]]:
    head, _, body = answer.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    return status, json.loads(body)


@pytest.mark.parametrize(
    "sent",
    [
        b"",
        b"GET /health HTTP/1.1\r\n",
        b"POST /admin/auth/token HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n",
    ],
    ids=["nothing", "half a request line", "headers never end"],
)
def test_a_request_whose_head_never_ends_gets_408_and_is_closed(
    bounded: Backend, sent: bytes
) -> None:
    """A client that never finishes its request line and headers gets 408 at the read
    deadline and the connection is closed, instead of holding it forever."""
    with _connect(bounded) as sock:
        sock.sendall(sent)
        status, body = _status_and_body(_read_all(sock))
    assert status == 408
    assert body["type"] == "invalid_data"


def test_a_body_that_never_ends_is_dropped_at_the_deadline(bounded: Backend) -> None:
    """A client that sends its headers and only part of its body loses the connection at the
    read deadline; the service logs it as that request's 400 and nothing else."""
    watch = LogWatch(bounded.server)
    with _connect(bounded) as sock:
        sock.sendall(
            b"POST /admin/auth/token HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b'Content-Length: 100\r\n\r\n{"email": "a'
        )
        assert _read_all(sock) == b""
    lines = watch.assert_quiet()
    access = [line for line in lines if line.get("logger") == "loyalty.access"]
    assert [(line["route"], line["status"]) for line in access] == [("/admin/auth/token", 400)]


def test_a_client_that_disconnects_mid_body_is_not_an_error(bounded: Backend) -> None:
    """A client that goes away in the middle of its body is logged as its request (400), not
    as an unexpected 500 with a traceback."""
    watch = LogWatch(bounded.server)
    with _connect(bounded) as sock:
        sock.sendall(
            b"POST /admin/customers HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            + f"Authorization: Bearer {bounded.token}\r\n".encode()
            + b'Content-Length: 1000\r\n\r\n{"email": "'
        )
        time.sleep(0.3)
    lines = watch.assert_quiet()
    access = [line for line in lines if line.get("logger") == "loyalty.access"]
    assert [(line["route"], line["status"]) for line in access] == [("/admin/customers", 400)]


def test_headers_over_the_limit_get_431_before_they_are_read_whole(bounded: Backend) -> None:
    """A 32 MiB Authorization header is refused with 431 once the head passes its limit:
    the answer comes while the client is still sending, and the server goes on serving."""
    with _connect(bounded) as sock:
        sock.sendall(b"GET /admin/customers HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ")
        sent = 0
        with pytest.raises(OSError):  # the server closes the connection mid-header
            while sent < 32 * 1024 * 1024:
                sock.sendall(b"a" * 65536)
                sent += 65536
        answer = _read_all(sock)
    assert sent < 32 * 1024 * 1024
    if answer:  # the answer may be lost to the reset the unread bytes cause
        status, body = _status_and_body(answer)
        assert (status, body["type"]) == (431, "invalid_data")
    with _connect(bounded) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"b" * 20000 + b"\r\n\r\n")
        status, body = _status_and_body(_read_all(sock))
    assert status == 431
    assert str(HEAD_MAX_BYTES) in body["message"]
    near = b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"c" * 15000 + b"\r\n\r\n"
    with _connect(bounded) as sock:
        sock.sendall(near)
        assert sock.recv(12) == b"HTTP/1.1 200"


def test_requests_sent_back_to_back_are_measured_one_by_one(bounded: Backend) -> None:
    """Two requests written at once on one kept-alive connection, the second with a body of
    60 KiB: the second head ends where its body begins, so its body is not taken for an
    oversized head. Both are answered as they would be alone."""
    body = json.dumps({"email": "x@example.com", "first_name": "n" * 60_000}).encode()
    second = (
        b"POST /admin/customers HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        + f"Authorization: Bearer {bounded.token}\r\nContent-Length: {len(body)}\r\n".encode()
        + b"Connection: close\r\n\r\n"
        + body
    )
    first = b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n"
    with _connect(bounded) as sock:
        # The first read holds the first request, the second's head and a bit of its body;
        # the rest of the body comes in later reads.
        sock.sendall(first + second[:-59_000])
        time.sleep(0.3)
        sock.sendall(second[-59_000:])
        answers = _read_all(sock)
    statuses = [int(status) for status in re.findall(rb"HTTP/1\.1 (\d{3}) ", answers)]
    assert statuses == [200, 400], answers[:500]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"email": "a" * 255, "password": "abcdefgh"}, "email must be at most 254 characters"),
        ({"email": "a@b.co", "password": "p" * 1025}, "password must be at most 1024 characters"),
        ({"email": "", "password": "abcdefgh"}, "email must not be empty"),
        ({"email": "a@b.co", "password": 12345678}, "password must be a string"),
        ({"password": "abcdefgh"}, "email is required"),
    ],
)
def test_login_fields_say_what_is_wrong(bounded: Backend, body: Any, message: str) -> None:
    """A login field that is too long, empty, not a string or missing is a 400 saying so."""
    for path in ("/admin/auth/token", "/auth/user/emailpass"):
        response = httpx.post(f"{bounded.server.base_url}{path}", json=body, timeout=30)
        assert response.status_code == 400
        assert response.json()["message"] == message


@pytest.mark.parametrize(
    "email",
    [
        "<script>alert(1)</script>@ex.com",
        "a\x01b@example.com",
        "tab\there@example.com",
        "Jane <jane@example.com>",
        "jane@exa mple.com",
        "jane@@example.com",
        "jane@example.com\n",
    ],
)
def test_customer_emails_with_control_characters_or_markup_are_refused(
    bounded: Backend, email: str
) -> None:
    """Such an email is 400 invalid_data naming the field, and no customer is stored."""
    with bounded.client() as api:
        before = api.get("/admin/customers").json()["count"]
        response = api.post("/admin/customers", json={"email": email})
        assert response.status_code == 400, response.text
        assert response.json()["errors"][0]["field"] == "email"
        assert api.get("/admin/customers").json()["count"] == before


def test_ordinary_emails_are_accepted(bounded: Backend) -> None:
    """Plus tags, subdomains, international addresses and a dotless host still work."""
    with bounded.client() as api:
        tag = uuid.uuid4().hex[:8]
        for email in (
            f"jane.doe+{tag}@example.com",
            f"o'brien-{tag}@mail.example.co.uk",
            f"ünï-{tag}@exämple.com",
            f"ops-{tag}@localhost",
        ):
            response = api.post("/admin/customers", json={"email": email})
            assert response.status_code == 200, (email, response.text)
            assert response.json()["customer"]["email"] == email


def test_a_user_with_a_markup_email_is_refused(bounded: Backend) -> None:
    """`loyalty user create` refuses such an email too, with a clear message."""
    result = user_create(bounded.database_url, "<b>x</b>@example.com")
    assert result.returncode != 0
    assert "email" in result.stderr


def test_only_our_docs_files_are_served(bounded: Backend) -> None:
    """/docs/assets serves the files our page uses, not Swagger's stock page (which points to
    an outside demo) nor anything else in that package."""
    base = bounded.server.base_url
    for name in ("index.html", "swagger-initializer.js", "oauth2-redirect.html", "..%2f..%2fx"):
        response = httpx.get(f"{base}/docs/assets/{name}", timeout=30)
        assert response.status_code == 404, name
        assert response.json()["type"] == "not_found"
    page = httpx.get(f"{base}/docs", timeout=30).text
    assert "petstore" not in page
    for script in ("swagger-ui-bundle.js", "docs.js", "swagger-ui.css"):
        assert f"/docs/assets/{script}" in page
        assert httpx.get(f"{base}/docs/assets/{script}", timeout=30).status_code == 200
    assert "<script>" not in page  # every script is a file, none inline


def test_the_sqlite_database_is_private(databases: DatabaseFactory, tmp_path: Path) -> None:
    """The SQLite file holds the JWT secret and password hashes: it and every file beside it
    (WAL, shared memory, locks) are created readable and writable by their owner alone,
    whatever the umask."""
    if databases.kind != "sqlite":
        pytest.skip("a file of SQLite's")
    url = f"sqlite:///{tmp_path / 'private.db'}"
    old_umask = os.umask(0o022)
    try:
        with Server.start(url, tmp_path) as server:
            token = login(server, ADMIN_EMAIL, ADMIN_PASSWORD)
            with httpx.Client(
                base_url=server.base_url, headers={"Authorization": f"Bearer {token}"}
            ) as api:
                customer = new_customer(api)["id"]
                response = api.post(
                    "/admin/loyalty/points/adjust", json={"customer_id": customer, "delta": 1}
                )
                assert response.status_code == 200
            files = sorted(p for p in tmp_path.iterdir() if p.name.startswith("private.db"))
            names = {p.name for p in files}
            assert {"private.db", "private.db-wal", "private.db-shm"} <= names, names
            for path in files:
                mode = stat.S_IMODE(path.stat().st_mode)
                assert mode & 0o077 == 0, f"{path.name} is {oct(mode)}"
    finally:
        os.umask(old_umask)
