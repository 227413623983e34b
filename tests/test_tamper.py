"""Tamper evidence (SPEC section 6, invariant 8): `loyalty verify` passes on a healthy ledger
that holds every kind of adjustment, and when a row of loyalty_adjustments is changed behind
the service's back (its append-only guard lifted, as someone with direct access to the
database could), it exits 1 naming the check that broke, the customer and, for the hash
chain, the first broken link as `customer <id> adjustment <id>`. The rows kept beside the
ledger (a balance row's pending sum, what is left of an expiring credit) are checked too.

Each tampering is undone afterwards, and verify passes again, so the tests share one server
(one worker, a fast scheduler) per database kind.
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from tests.conftest import backend_fixture
from tests.support import (
    Backend,
    VerifyReport,
    adjust,
    append_only_lifted,
    assert_verify,
    chained_hash,
    decoded,
    full_history,
    iso_in,
    new_customer,
    sql,
    table_rows,
    verify_report,
)

SCHEDULER_INTERVAL = "0.2"
HASH = re.compile(r"^[0-9a-f]{64}$")
LINK = re.compile(r"customer (\S+) adjustment (adj_[0-9A-Za-z]+)")
KINDS = {"adjustment", "reversal", "expiration", "release"}
# Words that single out each check of `loyalty verify` among its FAIL lines.
HASH_CHECK = ("hash",)
SUM_CHECK = ("sum",)
BALANCE_AFTER_CHECK = ("balance_after", "previous")
SEQUENCE_CHECK = ("sequence", "gaps")


service = backend_fixture(
    "service",
    "A one-worker server on a fresh database whose scheduler runs every 0.2 s.",
    LOYALTY_SCHEDULER_INTERVAL_SECONDS=SCHEDULER_INTERVAL,
)


@pytest.fixture
def api(service: Backend) -> Iterator[httpx.Client]:
    with service.client() as client:
        yield client


def ok(response: httpx.Response) -> Any:
    assert response.status_code == 200, response.text
    return decoded(response)


def wait_for(what: str, check: Any, timeout: float = 20.0) -> Any:
    """Polls `check()` until it returns something truthy."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def history_of_type(api: httpx.Client, customer_id: str, kind: str) -> list[Any]:
    return [item for item in full_history(api, customer_id) if item.get("type") == kind]


@dataclass
class Healthy:
    """A ledger with every kind of adjustment, made over HTTP."""

    customer_ids: list[str]


@pytest.fixture(scope="module")
def healthy(service: Backend) -> Healthy:
    """Two customers whose ledgers hold plain adjustments (with reference, metadata and
    expires_at), full and partial reversals of credits and of a debit, an expiration,
    releases (by hand and by the scheduler), a voided pending, and bulk adjustments (atomic
    and not, one item refused)."""
    with service.client() as api:
        first, second = new_customer(api)["id"], new_customer(api)["id"]
        credit = ok(
            api.post(
                "/admin/loyalty/points/adjust",
                json={
                    "customer_id": first,
                    "delta": 100,
                    "reason": "order",
                    "reference": f"order-{uuid.uuid4().hex[:8]}",
                    "metadata": {"channel": "web", "note": "first order"},
                },
            )
        )
        debit = ok(adjust(api, first, -30, "redeemed"))
        # Expires soon; the atomic bulk below takes 1 of it, the scheduler the rest.
        expiring = ok(
            api.post(
                "/admin/loyalty/points/adjust",
                json={"customer_id": first, "delta": 12.5, "expires_at": iso_in(1.5)},
            )
        )
        ok(api.post(f"/admin/loyalty/adjustments/{credit['id']}/reverse", json={"points": 10}))
        ok(api.post(f"/admin/loyalty/adjustments/{debit['id']}/reverse", json={}))
        # Held points: one released by hand, one by the scheduler, one voided.
        by_hand = ok(
            api.post(
                "/admin/loyalty/pending",
                json={
                    "customer_id": first,
                    "points": 40,
                    "reason": "return window",
                    "metadata": {"order": "o-1"},
                    "release_at": iso_in(3600),
                    "expires_at": iso_in(7200),
                },
            )
        )["pending"]
        ok(api.post(f"/admin/loyalty/pending/{by_hand['id']}/release", json={}))
        scheduled = ok(
            api.post(
                "/admin/loyalty/pending",
                json={"customer_id": second, "points": 5.25, "release_at": iso_in(-1)},
            )
        )["pending"]
        voided = ok(
            api.post(
                "/admin/loyalty/pending",
                json={"customer_id": second, "points": 3, "release_at": iso_in(3600)},
            )
        )["pending"]
        ok(api.post(f"/admin/loyalty/pending/{voided['id']}/void", json={}))
        # Bulk: not atomic with one refused item, then atomic.
        results = ok(
            api.post(
                "/admin/loyalty/points/bulk-adjust",
                json={
                    "adjustments": [
                        {"customer_id": first, "delta": 7},
                        {"customer_id": second, "delta": -1_000_000},
                        {"customer_id": second, "delta": 2.75, "reason": "bulk"},
                    ],
                    "atomic": False,
                },
            )
        )["results"]
        assert "adjustment" in results[0] and "adjustment" in results[2], results
        assert "error" in results[1] and "adjustment" not in results[1], results
        ok(
            api.post(
                "/admin/loyalty/points/bulk-adjust",
                json={
                    "adjustments": [
                        {"customer_id": first, "delta": -1},
                        {"customer_id": second, "delta": 1},
                    ],
                    "atomic": True,
                },
            )
        )
        # The scheduler records the expiration and the release by itself.
        expirations = wait_for("the expiration", lambda: history_of_type(api, first, "expiration"))
        assert expirations[0]["metadata"] == {"adjustment_id": expiring["id"]}, expirations
        wait_for(
            "the scheduled release",
            lambda: (
                ok(api.get(f"/admin/loyalty/pending/{scheduled['id']}"))["pending"]["status"]
                == "released"
            ),
        )
        # A credit reversed in full after all that.
        full = ok(adjust(api, second, 4))
        ok(api.post(f"/admin/loyalty/adjustments/{full['id']}/reverse", json={}))
    return Healthy([first, second])


def customer_with_ledger(api: httpx.Client) -> tuple[str, list[Any]]:
    """A new customer with five adjustments (credits and debits, with reasons), and its
    history oldest first."""
    customer_id = new_customer(api)["id"]
    for delta, reason in ((100, "a"), (-25, "b"), (40, "c"), (-5, "d"), (7, "e")):
        ok(adjust(api, customer_id, delta, reason))
    items = full_history(api, customer_id)
    assert len(items) == 5
    return customer_id, items


def first_links(report: VerifyReport, customer_id: str) -> list[str]:
    """The adjustments that the hash chain check names as a broken link of that customer's
    chain."""
    line = report.failed[report.failed_check(*HASH_CHECK)]
    return [adj for customer, adj in LINK.findall(line) if customer == customer_id]


def assert_broken(url: str, customer_id: str, *checks: tuple[str, ...]) -> VerifyReport:
    """verify exits 1, and each of `checks` is a failed check naming the customer; every
    failed check names that customer."""
    report = verify_report(url)
    assert report.returncode == 1, report.output
    assert re.search(r"^\d+ of \d+ checks failed", report.output, re.MULTILINE), report.output
    for words in checks:
        name = report.failed_check(*words)
        assert customer_id in report.failed[name], (name, report.output)
    for name, line in report.failed.items():
        assert customer_id in line, f"{name} fails without naming {customer_id}: {line}"
    return report


def broken_by_reason(url: str, customer_id: str, item: dict[str, Any], reason: str) -> VerifyReport:
    """`item`'s reason rewritten to `reason`, verify's report (the hash chain among its failed
    checks, per assert_broken), and the reason put back."""
    with append_only_lifted(url):
        sql(url, "UPDATE loyalty_adjustments SET reason = $2 WHERE id = $1", item["id"], reason)
        try:
            return assert_broken(url, customer_id, HASH_CHECK)
        finally:
            sql(
                url,
                "UPDATE loyalty_adjustments SET reason = $2 WHERE id = $1",
                item["id"],
                item["reason"],
            )


# --- a healthy ledger ----------------------------------------------------------------------


def test_verify_passes_with_every_kind_of_adjustment(service: Backend, healthy: Healthy) -> None:
    """Adjustments, reversals (full and partial, of credits and a debit), an expiration,
    releases and bulk adjustments: every check passes, and the hashes are well formed."""
    url = service.database_url
    kinds = {kind for (kind,) in sql(url, "SELECT DISTINCT type FROM loyalty_adjustments")}
    assert kinds == KINDS, kinds
    report = verify_report(url)
    assert report.returncode == 0, report.output
    assert report.failed == {}, report.output
    assert re.search(r"^ok\s+.*hash", report.output, re.MULTILINE | re.IGNORECASE), (
        "verify has no hash chain check",
        report.output,
    )
    with service.client() as api:
        for customer_id in healthy.customer_ids:
            items = full_history(api, customer_id)
            assert {item["type"] for item in items} <= KINDS
            assert all(HASH.match(item["hash"]) for item in items), items
            assert len({item["hash"] for item in items}) == len(items)


# --- tampering ----------------------------------------------------------------------------


def test_an_edited_delta_breaks_the_sum_and_the_chain(service: Backend, api: httpx.Client) -> None:
    """A debit's delta changed in place: verify names the sum check, the balance_after check
    and the hash chain check, each with the customer; the first broken link is that row."""
    url = service.database_url
    customer_id, items = customer_with_ledger(api)
    edited = items[1]["id"]
    statement = (
        "UPDATE loyalty_adjustments SET delta_hundredths = delta_hundredths {} 100 WHERE id = $1"
    )
    with append_only_lifted(url):
        sql(url, statement.format("-"), edited)
        try:
            report = assert_broken(url, customer_id, SUM_CHECK, BALANCE_AFTER_CHECK, HASH_CHECK)
        finally:
            sql(url, statement.format("+"), edited)
    assert first_links(report, customer_id)[:1] == [edited], report.output
    assert_verify(url)


def test_a_deleted_adjustment_breaks_the_chain(service: Backend, api: httpx.Client) -> None:
    """A debit in the middle deleted: verify fails the sum, the sequence and the hash chain
    checks for that customer, and the first broken link is the adjustment after the deleted
    one (its previous hash is gone)."""
    url = service.database_url
    customer_id, items = customer_with_ledger(api)
    (deleted,) = table_rows(url, "loyalty_adjustments", "id = $1", items[3]["id"])
    with append_only_lifted(url):
        sql(url, "DELETE FROM loyalty_adjustments WHERE id = $1", deleted["id"])
        try:
            report = assert_broken(url, customer_id, SUM_CHECK, SEQUENCE_CHECK, HASH_CHECK)
        finally:
            columns = ", ".join(f'"{c}"' for c in deleted)
            values = ", ".join(f"${n}" for n in range(1, len(deleted) + 1))
            sql(
                url,
                f"INSERT INTO loyalty_adjustments ({columns}) VALUES ({values})",
                *deleted.values(),
            )
    assert first_links(report, customer_id)[:1] == [items[4]["id"]], report.output
    assert_verify(url)


def test_an_edited_reason_breaks_only_the_hash_chain(service: Backend, api: httpx.Client) -> None:
    """A reason rewritten: every sum and balance still adds up, so the hash chain check is
    the only one to fail, and it names `customer <id> adjustment <id>` of the edited row,
    the first broken link, not one after it."""
    url = service.database_url
    customer_id, items = customer_with_ledger(api)
    edited = items[2]
    report = broken_by_reason(url, customer_id, edited, "rewritten")
    output = report.output
    assert len(report.failed) == 1, f"more than the hash chain failed:\n{output}"
    assert f"customer {customer_id} adjustment {edited['id']}" in output, output
    assert first_links(report, customer_id) == [edited["id"]], output
    assert_verify(url)


@pytest.mark.parametrize(
    ("column", "forged"),
    [
        ("created_by", "user_01ARZ3NDEKTSV4RRFFQ69G5FAV"),
        ("reference", "forged-order"),
        ("metadata", '{"note": "forged"}'),
    ],
)
def test_a_field_outside_the_sums_edited_breaks_only_the_hash_chain(
    service: Backend, api: httpx.Client, column: str, forged: str
) -> None:
    """Who made an adjustment, its reference or its metadata changed in place: nothing adds
    up differently, yet the hash chain check fails alone and names that adjustment as the
    first broken link (SPEC invariant 8 hashes every field)."""
    url = service.database_url
    customer_id, items = customer_with_ledger(api)
    edited = items[3]
    (before,) = sql(url, f"SELECT {column} FROM loyalty_adjustments WHERE id = $1", edited["id"])
    statement = f"UPDATE loyalty_adjustments SET {column} = $2 WHERE id = $1"
    with append_only_lifted(url):
        sql(url, statement, edited["id"], forged)
        try:
            report = assert_broken(url, customer_id, HASH_CHECK)
        finally:
            sql(url, statement, edited["id"], before[0])
    assert len(report.failed) == 1, f"more than the hash chain failed:\n{report.output}"
    assert first_links(report, customer_id) == [edited["id"]], report.output
    assert_verify(url)


def test_swapped_hashes_break_only_the_hash_chain(service: Backend, api: httpx.Client) -> None:
    """Two adjustments' hashes swapped (each a well-formed hash of this ledger): only the
    hash chain check fails, naming the earlier of the two as the first broken link."""
    url = service.database_url
    customer_id, items = customer_with_ledger(api)
    one, two = items[1], items[2]
    with append_only_lifted(url):
        swap = "UPDATE loyalty_adjustments SET hash = $2 WHERE id = $1"
        sql(url, swap, one["id"], two["hash"])
        sql(url, swap, two["id"], one["hash"])
        try:
            report = assert_broken(url, customer_id, HASH_CHECK)
        finally:
            sql(url, swap, one["id"], one["hash"])
            sql(url, swap, two["id"], two["hash"])
    output = report.output
    assert len(report.failed) == 1, f"more than the hash chain failed:\n{output}"
    assert f"customer {customer_id} adjustment {one['id']}" in output, output
    assert first_links(report, customer_id)[:1] == [one["id"]], output
    assert_verify(url)


def test_a_tampered_customer_is_the_only_one_named(
    service: Backend, api: httpx.Client, healthy: Healthy
) -> None:
    """With the healthy customers' ledgers (every kind of adjustment) in the same database,
    an edited reason of one of them names that customer alone."""
    url = service.database_url
    customer_id = healthy.customer_ids[0]
    items = full_history(api, customer_id)
    target = next(item for item in items if item["type"] == "reversal")
    report = broken_by_reason(url, customer_id, target, "x")
    output = report.output
    assert len(report.failed) == 1, output
    assert first_links(report, customer_id) == [target["id"]], output
    for other in healthy.customer_ids[1:]:
        assert other not in output
    assert_verify(url)


def test_each_hash_chains_on_the_previous_one(api: httpx.Client) -> None:
    """Each adjustment's hash is the SHA-256 of the previous hash of its customer (64 zeros
    for the first) and the canonical encoding of its own fields, as the service computes it
    for verify; 64 lowercase hex characters, distinct along the ledger."""
    customer_id, items = customer_with_ledger(api)
    previous = "0" * 64
    for item in items:
        assert item["customer_id"] == customer_id
        assert HASH.match(item["hash"]), item
        assert item["hash"] == chained_hash(previous, item), item
        previous = item["hash"]


# --- the rows kept beside the ledger ------------------------------------------------------


@pytest.mark.parametrize(
    ("table", "column", "words"),
    [
        ("loyalty_balances", "pending_hundredths", ("pending",)),
        ("loyalty_lots", "remaining_hundredths", ("lots",)),
    ],
    ids=["pending-sum", "lot-remainder"],
)
def test_verify_finds_a_tampered_pending_sum_or_lot(
    service: Backend, api: httpx.Client, table: str, column: str, words: tuple[str, ...]
) -> None:
    """The pending sum on a balance row, or what is left of an expiring credit, changed
    behind the service's back: verify exits 1 naming the check over those rows and the
    customer, and passes again once the row is put back."""
    url = service.database_url
    customer_id = new_customer(api)["id"]
    ok(
        api.post(
            "/admin/loyalty/points/adjust",
            json={"customer_id": customer_id, "delta": 30, "expires_at": iso_in(7200)},
        )
    )
    ok(adjust(api, customer_id, -10))
    ok(
        api.post(
            "/admin/loyalty/pending",
            json={"customer_id": customer_id, "points": 8, "release_at": iso_in(3600)},
        )
    )
    statement = f"UPDATE {table} SET {column} = {column} {{}} 1 WHERE customer_id = $1"
    sql(url, statement.format("+"), customer_id)
    try:
        report = assert_broken(url, customer_id, words)
    finally:
        sql(url, statement.format("-"), customer_id)
    assert not any("hash" in name for name in report.failed), report.output
    assert_verify(url)
