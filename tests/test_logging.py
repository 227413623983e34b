"""Logs: one JSON line per request with its id, user, route, status and duration; the
X-Request-Id taken from the client or generated, and returned; adjustment lines; and no
token, password or secret anywhere in the log. On SQLite and PostgreSQL.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from loyalty.http.access_log import RequestLog
from loyalty.ledger.audit import log_adjustment
from loyalty.logs import JsonFormatter, logging_config
from tests.conftest import DatabaseFactory
from tests.support import ADMIN_EMAIL, ADMIN_PASSWORD, JWT_SECRET, TIMESTAMP, Server

GENERATED_ID = re.compile(r"^[0-9a-f]{32}$")
ACCESS_FIELDS = {
    "time",
    "level",
    "logger",
    "message",
    "request_id",
    "method",
    "route",
    "status",
    "duration_ms",
    "user",
    "client",
}


@dataclass
class Sent:
    """A request the test made, and what its access line must say."""

    request_id: str
    method: str
    route: str
    status: int
    user: str | None


@dataclass
class Session:
    """What one server's log must and must not contain, after the server has stopped."""

    log: str
    sent: list[Sent] = field(default_factory=list)
    secrets: dict[str, str] = field(default_factory=dict)
    admin_id: str = ""
    customer_id: str = ""


def _lines(log: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in log.splitlines() if line.strip()]


@pytest.fixture(scope="module")
def session(
    databases: DatabaseFactory, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Session]:
    """A server of its own, sent a known set of requests (logins, reads, writes, errors),
    then stopped so that its whole log is on disk."""
    sent: list[Sent] = []
    secrets: dict[str, str] = {}
    with Server.start(databases.new_url(), tmp_path_factory.mktemp("logs")) as server:
        client = httpx.Client(base_url=server.base_url, timeout=30)

        def call(
            method: str, path: str, route: str, status: int, user: str | None, **kwargs: Any
        ) -> httpx.Response:
            response = client.request(method, path, **kwargs)
            assert response.status_code == status, response.text
            sent.append(Sent(response.headers["x-request-id"], method, route, status, user))
            return response

        def given_id() -> dict[str, str]:
            return {"X-Request-Id": f"client-{uuid.uuid4().hex}"}

        login = client.post(
            "/admin/auth/token",
            json={"email": ADMIN_EMAIL, "password": ADMIN_PASSWORD},
            headers=given_id(),
        )
        assert login.status_code == 200
        token, admin_id = login.json()["token"], login.json()["user"]["id"]
        sent.append(Sent(login.headers["x-request-id"], "POST", "/admin/auth/token", 200, admin_id))
        emailpass = call(
            "POST",
            "/auth/user/emailpass",
            "/auth/user/emailpass",
            200,
            admin_id,
            json={"email": ADMIN_EMAIL, "password": ADMIN_PASSWORD},
        )
        wrong_password = f"wrong-{uuid.uuid4().hex}"
        call(
            "POST",
            "/admin/auth/token",
            "/admin/auth/token",
            401,
            None,
            json={"email": ADMIN_EMAIL, "password": wrong_password},
            headers=given_id(),
        )
        auth = {"Authorization": f"Bearer {token}"}
        customer = call(
            "POST",
            "/admin/customers",
            "/admin/customers",
            200,
            admin_id,
            json={"email": f"log-{uuid.uuid4().hex[:10]}@example.com"},
            headers={**auth, **given_id()},
        ).json()["customer"]
        cid = customer["id"]
        call(
            "POST",
            "/admin/loyalty/points/adjust",
            "/admin/loyalty/points/adjust",
            200,
            admin_id,
            json={"customer_id": cid, "delta": 100, "reason": "welcome"},
            headers=auth,
        )
        call(
            "GET",
            f"/admin/loyalty/points/{cid}",
            "/admin/loyalty/points/{customer_id}",
            200,
            admin_id,
            headers={**auth, **given_id()},
        )
        call(
            "GET",
            f"/admin/loyalty/points/{cid}/history?limit=5",
            "/admin/loyalty/points/{customer_id}/history",
            200,
            admin_id,
            headers=auth,
        )
        call(
            "GET",
            "/admin/customers/cus_unknown",
            "/admin/customers/{customer_id}",
            404,
            admin_id,
            headers=auth,
        )
        forged = f"forged.{uuid.uuid4().hex}.signature"
        call(
            "GET",
            "/admin/customers",
            "/admin/customers",
            401,
            None,
            headers={"Authorization": f"Bearer {forged}"},
        )
        long_path = "/no/such/" + "x" * 400
        call("GET", long_path, long_path[:200], 404, None)
        call("DELETE", "/health", "/health", 405, None)
        call("GET", "/health?token=" + token, "/health", 200, None)
        call(
            "POST",
            "/admin/customers",
            "/admin/customers",
            413,
            admin_id,
            content=b" " * (65 * 1024),
            headers={**auth, "Content-Type": "application/json"},
        )
        for bad_id in ["has space", "x" * 129, "", "tab\there", "ünï"]:
            response = call(
                "GET", "/health", "/health", 200, None, headers={"X-Request-Id": bad_id.encode()}
            )
            assert GENERATED_ID.match(response.headers["x-request-id"]), bad_id
        secrets.update(
            admin_password=ADMIN_PASSWORD,
            wrong_password=wrong_password,
            token=token,
            token_signature=token.rsplit(".", 1)[1],
            emailpass_token=emailpass.json()["token"],
            forged_token=forged,
            jwt_secret=JWT_SECRET,
        )
        client.close()
    yield Session(server.log(), sent, secrets, admin_id, cid)


def test_every_line_is_one_json_object(session: Session) -> None:
    """Everything the server writes is JSON, one object per line, with time, level, logger."""
    lines = _lines(session.log)
    assert lines
    for line in lines:
        assert TIMESTAMP.match(line["time"]), line
        assert line["level"] in {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}
        assert isinstance(line["logger"], str)


def test_one_access_line_per_request(session: Session) -> None:
    """Each request has exactly one loyalty.access line with its request id, method, route
    template, status, duration, user and client address; other lines are the start-up's
    health checks."""
    access = [line for line in _lines(session.log) if line["logger"] == "loyalty.access"]
    by_id: dict[str, list[dict[str, Any]]] = {}
    for line in access:
        assert set(line) == ACCESS_FIELDS, line
        by_id.setdefault(line["request_id"], []).append(line)
    for sent in session.sent:
        assert len(by_id.get(sent.request_id, [])) == 1, sent
        line = by_id[sent.request_id][0]
        assert (line["method"], line["route"], line["status"], line["user"]) == (
            sent.method,
            sent.route,
            sent.status,
            sent.user,
        ), line
        assert line["client"] == "127.0.0.1"
        assert isinstance(line["duration_ms"], float | int) and line["duration_ms"] >= 0
        assert line["level"] == "INFO" and line["message"] == "request"
    ours = {sent.request_id for sent in session.sent}
    for line in access:
        if line["request_id"] not in ours:
            assert (line["method"], line["route"]) == ("GET", "/health"), line


def test_request_ids_are_echoed_or_generated(session: Session) -> None:
    """A valid client X-Request-Id comes back unchanged; otherwise a fresh 32-hex id is made,
    a different one for every request."""
    given = [sent.request_id for sent in session.sent if sent.request_id.startswith("client-")]
    assert len(given) == 4
    generated = [s.request_id for s in session.sent if not s.request_id.startswith("client-")]
    assert all(GENERATED_ID.match(request_id) for request_id in generated), generated
    assert len(set(generated)) == len(generated)


def test_no_secret_is_ever_logged(session: Session) -> None:
    """Neither the admin's password, a wrong password, any token (issued or forged, in a
    header or a query string), nor the JWT secret appears anywhere in the log."""
    for name, secret in session.secrets.items():
        assert secret not in session.log, name
    assert "authorization" not in session.log.lower()
    assert "bearer" not in session.log.lower()


def test_log_level_warning_silences_access_lines(
    databases: DatabaseFactory, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """With LOYALTY_LOG_LEVEL=WARNING a server writes no access line, and no INFO at all."""
    with Server.start(
        databases.new_url(), tmp_path_factory.mktemp("quiet"), LOYALTY_LOG_LEVEL="WARNING"
    ) as server:
        assert httpx.get(f"{server.base_url}/health", timeout=30).status_code == 200
    for line in _lines(server.log()):
        assert line["level"] in {"WARNING", "ERROR", "CRITICAL"}, line


# --- in-process: the middleware and the adjustment line -------------------------------------


@pytest.fixture
def captured() -> Iterator[io.StringIO]:
    """The loyalty loggers' output, formatted as the server formats it."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    loggers = [logging.getLogger(name) for name in ("loyalty.access", "loyalty.adjustments")]
    saved = [(lg.level, lg.propagate) for lg in loggers]
    for lg in loggers:
        lg.addHandler(handler)
        lg.setLevel(logging.INFO)
        lg.propagate = False
    try:
        yield stream
    finally:
        for lg, (level, propagate) in zip(loggers, saved, strict=True):
            lg.removeHandler(handler)
            lg.setLevel(level)
            lg.propagate = propagate


def test_adjustment_line_has_id_customer_delta_actor(captured: io.StringIO) -> None:
    """log_adjustment writes one JSON line with the adjustment id, customer, the delta as an
    exact JSON number and the acting user."""
    log_adjustment("adj_01", "cus_01", "-50.25", "user_01")
    log_adjustment("adj_02", "cus_02", "100", "user_02", request_id="req-2")
    text = captured.getvalue()
    assert '"delta":-50.25' in text and '"delta":100' in text
    first, second = _lines(text)
    assert first["logger"] == "loyalty.adjustments"
    assert (first["adjustment_id"], first["customer_id"], first["actor"]) == (
        "adj_01",
        "cus_01",
        "user_01",
    )
    assert first["request_id"] is None
    assert second["request_id"] == "req-2"


def _app() -> RequestLog:
    async def adjusted(request: Request) -> Response:
        log_adjustment("adj_03", "cus_03", "1.5", "user_03")
        return JSONResponse({"ok": True})

    async def broken(request: Request) -> Response:
        raise RuntimeError("boom")

    return RequestLog(
        Starlette(routes=[Route("/adjusted", adjusted), Route("/broken/{x}", broken)])
    )


def _get(path: str, headers: dict[str, str] | None = None) -> httpx.Response:
    """A request to _app() in this process, without a server."""

    async def run() -> httpx.Response:
        transport = httpx.ASGITransport(app=_app(), raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:
            return await client.get(path, headers=headers)

    return asyncio.run(run())


def test_adjustment_line_carries_the_request_id(captured: io.StringIO) -> None:
    """Logged while a request is handled, the adjustment line has that request's id."""
    response = _get("/adjusted", {"X-Request-Id": "req-from-client"})
    assert response.headers["x-request-id"] == "req-from-client"
    adjustment, access = _lines(captured.getvalue())
    assert adjustment["request_id"] == access["request_id"] == "req-from-client"
    assert (access["route"], access["status"]) == ("/adjusted", 200)


def test_an_unexpected_error_is_logged_and_answered_with_a_request_id(
    captured: io.StringIO,
) -> None:
    """A handler that raises still gets a 500 with an X-Request-Id and one access line."""
    response = _get("/broken/1")
    assert response.status_code == 500
    (access,) = _lines(captured.getvalue())
    assert access["request_id"] == response.headers["x-request-id"]
    assert (access["route"], access["status"]) == ("/broken/{x}", 500)


def test_logging_config_writes_json_to_stderr() -> None:
    """The server's logging configuration sends every logger to stderr through JsonFormatter,
    and drops uvicorn's own access log."""
    config = logging_config("INFO")
    assert config["handlers"]["stderr"]["stream"] == "ext://sys.stderr"
    assert config["formatters"]["json"]["()"] == "loyalty.logs.JsonFormatter"
    assert config["root"] == {"handlers": ["stderr"], "level": "INFO"}
    assert config["loggers"]["uvicorn.access"] == {"handlers": [], "propagate": False}


def test_every_committed_adjustment_is_logged_once_by_a_real_server(
    databases: DatabaseFactory, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """A real server logs each committed adjustment with its id, customer, delta, actor and
    request id; a replay and a refused adjustment log none."""
    with Server.start(databases.new_url(), tmp_path_factory.mktemp("adjlog")) as server:
        client = httpx.Client(base_url=server.base_url, timeout=30)
        login = client.post(
            "/admin/auth/token", json={"email": ADMIN_EMAIL, "password": ADMIN_PASSWORD}
        ).json()
        client.headers["Authorization"] = f"Bearer {login['token']}"
        cid = client.post(
            "/admin/customers", json={"email": f"a-{uuid.uuid4().hex[:10]}@example.com"}
        ).json()["customer"]["id"]
        body = {"customer_id": cid, "delta": 12.5, "reason": "logged"}
        first = client.post(
            "/admin/loyalty/points/adjust", json=body, headers={"Idempotency-Key": "k-1"}
        )
        replay = client.post(
            "/admin/loyalty/points/adjust", json=body, headers={"Idempotency-Key": "k-1"}
        )
        refused = client.post(
            "/admin/loyalty/points/adjust", json={"customer_id": cid, "delta": -1000}
        )
        assert (first.status_code, replay.status_code, refused.status_code) == (200, 200, 400)
        client.close()
        server.stop()
        lines = [
            line for line in _lines(server.log()) if line.get("logger") == "loyalty.adjustments"
        ]
    assert len(lines) == 1
    line = lines[0]
    assert line["adjustment_id"] == first.json()["id"]
    assert line["customer_id"] == cid
    assert line["delta"] == 12.5
    assert line["actor"] == login["user"]["id"]
    assert line["request_id"] == first.headers["x-request-id"]
