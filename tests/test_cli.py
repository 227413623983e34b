"""The `loyalty` command line: db migrate, user create, verify, and the first start of serve.

Each test works on fresh databases of its own (SQLite and PostgreSQL), never the shared one.
"""

from __future__ import annotations

import re
import sqlite3
import subprocess
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import httpx
import pytest
from ulid import ULID

from tests.conftest import DatabaseFactory, backend_fixture
from tests.support import (
    USER_ID,
    Backend,
    Server,
    adjust,
    adjustment_hash,
    assert_verify,
    new_customer,
    run_cli,
    sql,
    user_create,
)

ALL_SCOPES = {
    "loyalty:read",
    "loyalty:write",
    "customers:read",
    "customers:write",
    "api_keys:write",
    "webhooks:write",
}
PASSWORD = "a long enough password 123"


# --- direct database access, behind the service's back ----------------------------------


def append_only_errors(url: str) -> tuple[type[BaseException], ...]:
    return (sqlite3.DatabaseError,) if url.startswith("sqlite:///") else (asyncpg.PostgresError,)


def user_login(base_url: str, email: str, password: str) -> httpx.Response:
    return httpx.post(
        f"{base_url}/admin/auth/token", json={"email": email, "password": password}, timeout=30
    )


def unique_email() -> str:
    return f"cli-{uuid.uuid4().hex[:10]}@example.com"


def assert_clean_failure(result: subprocess.CompletedProcess[str]) -> None:
    """A non-zero exit with a short message on stderr and no Python traceback anywhere."""
    assert result.returncode != 0, result.stdout
    assert result.stderr.strip(), "the failure says nothing on stderr"
    assert "Traceback" not in result.stderr + result.stdout
    assert len(result.stderr.strip().splitlines()) <= 3, result.stderr


# --- loyalty db migrate -------------------------------------------------------------------


def test_db_migrate_twice_is_fine(databases: DatabaseFactory) -> None:
    """`loyalty db migrate` on a fresh database exits 0, and a second run also exits 0."""
    url = databases.new_url()
    first = run_cli(url, "db", "migrate")
    assert first.returncode == 0, first.stderr
    version = sql(url, "SELECT version_num FROM alembic_version")
    second = run_cli(url, "db", "migrate")
    assert second.returncode == 0, second.stderr
    assert sql(url, "SELECT version_num FROM alembic_version") == version
    assert len(version) == 1


# --- loyalty user create ------------------------------------------------------------------


service = backend_fixture(
    "service", "A fresh database of each kind with a running server, for this module's CLI tests."
)


def test_user_create_prints_the_id_and_gives_every_scope(service: Backend) -> None:
    """With no --scope, the new user's id is printed and the user logs in with all four scopes."""
    email = unique_email()
    result = user_create(service.database_url, email, PASSWORD)
    assert result.returncode == 0, result.stderr
    printed = result.stdout.strip()
    assert USER_ID.match(printed), result.stdout
    response = user_login(service.server.base_url, email, PASSWORD)
    assert response.status_code == 200, response.text
    user = response.json()["user"]
    assert user["id"] == printed
    assert user["email"] == email
    assert set(user["scopes"]) == ALL_SCOPES
    assert len(user["scopes"]) == len(ALL_SCOPES)


def test_user_create_with_names(service: Backend) -> None:
    """--first-name and --last-name are stored and returned at login."""
    email = unique_email()
    result = user_create(
        service.database_url, email, PASSWORD, first_name="Ada", last_name="Lovelace"
    )
    assert result.returncode == 0, result.stderr
    user = user_login(service.server.base_url, email, PASSWORD).json()["user"]
    assert (user["first_name"], user["last_name"]) == ("Ada", "Lovelace")


def test_user_create_with_two_scopes_gets_exactly_those(service: Backend) -> None:
    """--scope given twice gives exactly those two scopes, and the others are refused (403)."""
    email = unique_email()
    result = user_create(
        service.database_url, email, PASSWORD, scopes=["loyalty:read", "customers:write"]
    )
    assert result.returncode == 0, result.stderr
    assert USER_ID.match(result.stdout.strip()), result.stdout
    response = user_login(service.server.base_url, email, PASSWORD)
    assert response.status_code == 200, response.text
    assert sorted(response.json()["user"]["scopes"]) == ["customers:write", "loyalty:read"]
    token = response.json()["token"]
    with httpx.Client(
        base_url=service.server.base_url, headers={"Authorization": f"Bearer {token}"}, timeout=30
    ) as client:
        created = client.post("/admin/customers", json={"email": unique_email()})
        assert created.status_code == 200, created.text
        assert client.get("/admin/customers").status_code == 403
        customer_id = created.json()["customer"]["id"]
        assert client.get(f"/admin/loyalty/points/{customer_id}").status_code == 200
        assert adjust(client, customer_id, 1).status_code == 403


def test_user_create_reads_the_password_from_stdin(service: Backend) -> None:
    """--password-stdin takes the password from standard input; that password logs in."""
    email = unique_email()
    secret = f"stdin password {uuid.uuid4().hex}"
    result = user_create(service.database_url, email, None, stdin=secret + "\n")
    assert result.returncode == 0, result.stderr
    assert USER_ID.match(result.stdout.strip()), result.stdout
    assert secret not in result.stdout + result.stderr
    assert user_login(service.server.base_url, email, secret).status_code == 200
    assert user_login(service.server.base_url, email, secret + "\n").status_code == 401


def test_user_create_with_a_duplicate_email_fails_cleanly(service: Backend) -> None:
    """A second user with the same email (in any case) exits non-zero with a clear message."""
    email = unique_email()
    first = user_create(service.database_url, email, PASSWORD)
    assert first.returncode == 0, first.stderr
    for again in (email, email.upper()):
        result = user_create(service.database_url, again, "another password")
        assert_clean_failure(result)
        assert "already exists" in result.stderr.lower() or "duplicate" in result.stderr.lower()
        assert not USER_ID.search(result.stdout)
    # The first user keeps its password.
    assert user_login(service.server.base_url, email, PASSWORD).status_code == 200


@pytest.mark.parametrize("scope", ["loyalty:admin", "LOYALTY:READ", ""])
def test_user_create_with_an_invalid_scope_fails_cleanly(service: Backend, scope: str) -> None:
    """An unknown scope exits non-zero naming the problem, and creates no user."""
    email = unique_email()
    result = user_create(service.database_url, email, PASSWORD, scopes=["loyalty:read", scope])
    assert_clean_failure(result)
    assert "scope" in result.stderr.lower()
    assert user_login(service.server.base_url, email, PASSWORD).status_code == 401


# --- loyalty verify and the append-only ledger -------------------------------------------


@dataclass
class Ledger:
    service: Backend
    customer_ids: list[str]

    @property
    def url(self) -> str:
        return self.service.database_url


@pytest.fixture(scope="module")
def ledger(service: Backend) -> Ledger:
    """Three customers with a few adjustments each, made over HTTP on the module's database."""
    customer_ids: list[str] = []
    with service.client() as api:
        for deltas in ((100, -25, 0.5), (7,), (1000, -1000, 3, 4)):
            customer_id = new_customer(api)["id"]
            for delta in deltas:
                response = adjust(api, customer_id, delta, "cli test")
                assert response.status_code == 200, response.text
            customer_ids.append(customer_id)
        new_customer(api)  # and one without adjustments
    return Ledger(service, customer_ids)


def test_verify_passes_on_a_consistent_ledger(ledger: Ledger) -> None:
    """`loyalty verify` on a healthy database exits 0 and prints a summary."""
    result = run_cli(ledger.url, "verify")
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip(), "verify printed no summary"
    assert "Traceback" not in result.stderr


# The checks of `loyalty verify` that a corrupted balance row trips, by the line it prints.
SUM_CHECK = "each balance equals the exact sum of its deltas"
COUNT_CHECK = "each balance row counts its customer's adjustments"
TIP_CHECK = "each balance row matches its last adjustment (balance, id, time)"
CHAIN_TIP_CHECK = "each hash links its adjustment to the previous one (invariant 8)"
EVENTS_CHECK = (
    "each adjustment since events began has exactly one event of its type, each event names"
    " what it is about, and the feed's positions run 1, 2, 3, ... without gaps"
)


def failed_checks(url: str) -> dict[str, str]:
    """Runs `loyalty verify`, which must exit 1; returns each `FAIL` line by the check it names."""
    result = run_cli(url, "verify")
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    assert "Traceback" not in output
    failed = {}
    for line in result.stdout.splitlines():
        if line.startswith("FAIL"):
            match = re.match(
                r"FAIL\s+(.+?): broken by \d+; (?:customers|first broken link): (.*)$", line
            )
            assert match, line
            failed[match.group(1)] = match.group(2)
    assert re.search(rf"^{len(failed)} of \d+ checks failed", result.stdout, re.MULTILINE), output
    return failed


def test_verify_names_a_corrupted_customer(ledger: Ledger) -> None:
    """A balance changed behind the service's back: verify exits 1 with exactly two named
    failures, the balance is not the exact sum of the deltas and not the last balance_after
    (the two always go together), each naming that customer and no other."""
    broken = ledger.customer_ids[0]
    statement = (
        "UPDATE loyalty_balances SET balance_hundredths = balance_hundredths {} 1"
        " WHERE customer_id = $1"
    )
    sql(ledger.url, statement.format("+"), broken)
    try:
        failed = failed_checks(ledger.url)
    finally:
        sql(ledger.url, statement.format("-"), broken)
    assert set(failed) == {SUM_CHECK, TIP_CHECK}, failed
    assert failed[SUM_CHECK] == failed[TIP_CHECK] == broken
    assert_verify(ledger.url)


def test_verify_finds_an_adjustment_beyond_the_balance_row(ledger: Ledger) -> None:
    """An adjustment appended behind the service's back, in a valid chain after the last one
    but not counted in the balance row: verify exits 1 saying the balance is not the exact
    sum of the deltas and the row does not count the adjustments, naming that customer; the
    chain itself passes. Once the balance row takes it in, verify passes again."""
    with ledger.service.client() as api:
        customer_id = new_customer(api)["id"]
        for delta in (10, -4):
            assert adjust(api, customer_id, delta).status_code == 200
    ((seq, after, created_at_ms, created_by, previous_hash),) = sql(
        ledger.url,
        "SELECT seq, balance_after_hundredths, created_at_ms, created_by, hash"
        " FROM loyalty_adjustments WHERE customer_id = $1 ORDER BY seq DESC LIMIT 1",
        customer_id,
    )
    appended_at = created_at_ms + 1
    appended_id = f"adj_{ULID.from_timestamp(appended_at / 1000)}"
    reason = "behind the service's back"
    appended_hash = adjustment_hash(
        previous_hash,
        id=appended_id,
        customer_id=customer_id,
        delta_hundredths=500,
        balance_after_hundredths=after + 500,
        reason=reason,
        created_by=created_by,
        created_at_ms=appended_at,
    )
    sql(
        ledger.url,
        "INSERT INTO loyalty_adjustments (id, customer_id, seq, delta_hundredths,"
        " balance_after_hundredths, reason, created_at_ms, created_by, hash)"
        " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        appended_id,
        customer_id,
        seq + 1,
        500,
        after + 500,
        reason,
        appended_at,
        created_by,
        appended_hash,
    )
    failed = failed_checks(ledger.url)
    # Written without its event, too: the outbox no longer holds every change.
    assert set(failed) == {SUM_CHECK, COUNT_CHECK, CHAIN_TIP_CHECK, EVENTS_CHECK}, failed
    assert failed[SUM_CHECK] == failed[COUNT_CHECK] == failed[EVENTS_CHECK] == customer_id
    # The ledger is append-only: the balance row is brought to the appended adjustment.
    sql(
        ledger.url,
        "UPDATE loyalty_balances SET balance_hundredths = $2, last_seq = $3,"
        " last_adjustment_id = $4, updated_at_ms = $5, last_hash = $6 WHERE customer_id = $1",
        customer_id,
        after + 500,
        seq + 1,
        appended_id,
        appended_at,
        appended_hash,
    )
    last = int(sql(ledger.url, "SELECT last_position FROM loyalty_event_sequence")[0][0])
    sql(
        ledger.url,
        "INSERT INTO loyalty_events (position, id, type, subject_id, customer_id,"
        " created_at_ms, data) VALUES ($1, $2, 'points.adjusted', $3, $4, $5, NULL)",
        last + 1,
        f"evt_{ULID.from_timestamp(appended_at / 1000)}",
        appended_id,
        customer_id,
        appended_at,
    )
    sql(ledger.url, "UPDATE loyalty_event_sequence SET last_position = $1", last + 1)
    assert_verify(ledger.url)


@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE loyalty_adjustments SET reason = 'rewritten' WHERE customer_id = $1",
        "UPDATE loyalty_adjustments SET delta_hundredths = delta_hundredths * 2"
        " WHERE customer_id = $1",
        "DELETE FROM loyalty_adjustments WHERE customer_id = $1",
    ],
    ids=["update-reason", "update-delta", "delete"],
)
def test_the_adjustments_table_is_append_only(ledger: Ledger, statement: str) -> None:
    """A direct UPDATE or DELETE on loyalty_adjustments fails and leaves the rows as they were."""
    customer_id = ledger.customer_ids[0]
    select = (
        "SELECT id, seq, delta_hundredths, balance_after_hundredths, reason, created_at_ms"
        " FROM loyalty_adjustments WHERE customer_id = $1 ORDER BY seq"
    )
    before = sql(ledger.url, select, customer_id)
    assert len(before) == 3
    with pytest.raises(append_only_errors(ledger.url)):
        sql(ledger.url, statement, customer_id)
    assert sql(ledger.url, select, customer_id) == before


# --- first start of serve ----------------------------------------------------------------


@contextmanager
def serve_without_admin_env(url: str, workdir: Path) -> Iterator[Server]:
    """`loyalty serve` with no LOYALTY_ADMIN_*, its stdout kept apart from its log."""
    with Server.start(
        url,
        workdir,
        separate_stdout=True,
        without_env=("LOYALTY_ADMIN_EMAIL", "LOYALTY_ADMIN_PASSWORD"),
    ) as server:
        yield server


def test_first_start_prints_generated_admin_credentials_once(
    databases: DatabaseFactory, tmp_path: Path
) -> None:
    """Without LOYALTY_ADMIN_*, the first start prints admin@localhost and a working password;
    the second start prints no password."""
    url = databases.new_url()
    with serve_without_admin_env(url, tmp_path) as server:
        first_output = server.stdout()
        assert "admin@localhost" in first_output, first_output
        match = re.search(r"password\s*[:=]\s*(\S+)", first_output, re.IGNORECASE)
        assert match, first_output
        password = match.group(1)
        assert len(password) >= 12
        response = user_login(server.base_url, "admin@localhost", password)
        assert response.status_code == 200, response.text
        assert set(response.json()["user"]["scopes"]) == ALL_SCOPES
        assert user_login(server.base_url, "admin@localhost", password + "x").status_code == 401

    with serve_without_admin_env(url, tmp_path) as server:
        second_output = server.stdout()
        assert password not in second_output
        assert not re.search(r"password\s*[:=]", second_output, re.IGNORECASE), second_output
        assert user_login(server.base_url, "admin@localhost", password).status_code == 200
