"""`loyalty import` and `loyalty export` on both databases, through a running service
(`--url`, the Python client and bulk-adjust) and directly (`--as`, the ledger's own batch):
100,000 rows applied once and a rerun applying nothing; bad rows reported with their line
while the rest is applied; a dry run changing nothing; missing customers refused or created;
a file that is neither CSV nor JSON Lines refused in one line; and an export streaming every
adjustment, oldest first, whose deltas add up to each balance."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import pty
import random
import re
import subprocess
import uuid
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support import (
    ADMIN_EMAIL,
    LOYALTY,
    Backend,
    decoded,
    new_customer,
    run_cli,
    service_env,
    user_create,
)

MODES = ["url", "direct"]
SUMMARY = re.compile(
    r"rows (?:would be )?applied ([\d,]+), skipped ([\d,]+), refused ([\d,]+).*?([\d,]+) rows/s"
)
HEADER = "customer_id,delta,reason,reference,email,expires_at\n"


def import_file(
    backend: Backend, path: Path, mode: str, *options: str
) -> subprocess.CompletedProcess[str]:
    """`loyalty import PATH` through the service (as the admin) or into its database."""
    target = (
        ["--url", backend.server.base_url, "--token", backend.token]
        if mode == "url"
        else ["--as", ADMIN_EMAIL]
    )
    return run_cli(backend.database_url, "import", str(path), *target, *options)


def counts(result: subprocess.CompletedProcess[str]) -> tuple[int, int, int]:
    """Applied, skipped and refused, from the summary line."""
    found = SUMMARY.search(result.stdout)
    assert found, result.stdout + result.stderr
    applied, skipped, refused, _rate = (int(n.replace(",", "")) for n in found.groups())
    return applied, skipped, refused


def balance(api: httpx.Client, customer_id: str) -> Decimal:
    response = api.get(f"/admin/loyalty/points/{customer_id}")
    assert response.status_code == 200, response.text
    value: Decimal = Decimal(str(decoded(response)["balance"]))
    return value


def history_count(api: httpx.Client, customer_id: str) -> int:
    response = api.get(f"/admin/loyalty/points/{customer_id}/history")
    assert response.status_code == 200, response.text
    count: int = response.json()["count"]
    return count


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def big_file(tmp_path: Path, customers: list[str], rows: int) -> tuple[Path, dict[str, Decimal]]:
    """A CSV of `rows` credits spread over the customers, every other one with a reference
    of its own; and what each customer's balance must become."""
    expected = dict.fromkeys(customers, Decimal(0))
    pick = random.Random(rows)
    lines = [HEADER]
    tag = uuid.uuid4().hex[:8]
    for n in range(rows):
        customer_id = customers[n % len(customers)]
        delta = Decimal(pick.randint(1, 100_000)) / 100
        expected[customer_id] += delta
        reference = f"order-{tag}-{n}" if n % 2 else ""
        lines.append(f"{customer_id},{delta},row {n % 7},{reference},,\n")
    return write(tmp_path, f"big-{tag}.csv", "".join(lines)), expected


@pytest.mark.parametrize("mode", MODES)
def test_100000_rows_are_applied_once_and_a_rerun_applies_nothing(
    backend: Backend, api: httpx.Client, tmp_path: Path, mode: str
) -> None:
    customers = [new_customer(api)["id"] for _ in range(40)]
    path, expected = big_file(tmp_path, customers, 100_000)

    first = import_file(backend, path, mode)
    assert first.returncode == 0, first.stdout + first.stderr
    assert counts(first) == (100_000, 0, 0)
    assert {c: balance(api, c) for c in customers} == expected

    again = import_file(backend, path, mode)
    assert again.returncode == 0, again.stdout + again.stderr
    assert counts(again) == (0, 100_000, 0)
    assert {c: balance(api, c) for c in customers} == expected
    assert history_count(api, customers[0]) == 100_000 // len(customers)


def test_an_export_of_100000_rows_streams_every_adjustment_oldest_first(
    backend: Backend, api: httpx.Client, tmp_path: Path
) -> None:
    customers = [new_customer(api)["id"] for _ in range(20)]
    path, expected = big_file(tmp_path, customers, 100_000)
    assert import_file(backend, path, "direct").returncode == 0
    mine = set(customers)
    for kind in ("csv", "jsonl"):
        output = tmp_path / f"export.{kind}"
        result = run_cli(backend.database_url, "export", "--format", kind, "--output", str(output))
        assert result.returncode == 0, result.stderr
        sums = dict.fromkeys(customers, Decimal(0))
        ids: list[str] = []
        last_balance: dict[str, Decimal] = {}
        with output.open(encoding="utf-8", newline="") as file:
            rows: Any = (
                csv.DictReader(file)
                if kind == "csv"
                else (json.loads(line, parse_float=Decimal) for line in file)
            )
            for row in rows:
                ids.append(row["id"])
                if row["customer_id"] in mine:
                    delta = Decimal(str(row["delta"]))
                    sums[row["customer_id"]] += delta
                    # Oldest first: each balance_after is the previous one plus this delta.
                    before = last_balance.get(row["customer_id"], Decimal(0))
                    assert Decimal(str(row["balance_after"])) == before + delta
                    last_balance[row["customer_id"]] = before + delta
        assert ids == sorted(ids) and len(ids) >= 100_000
        assert sums == expected == {c: balance(api, c) for c in customers}


def test_an_exported_csv_imports_again(backend: Backend, api: httpx.Client, tmp_path: Path) -> None:
    source, copy = new_customer(api)["id"], new_customer(api)["id"]
    credits = [("10.5", "order-a", '{"channel":"web"}'), ("0.25", "", ""), ("-3", "refund-a", "")]
    for delta, reference, metadata in credits:
        body: dict[str, Any] = {"customer_id": source, "delta": Decimal(delta)}
        if reference:
            body["reference"] = reference
        if metadata:
            body["metadata"] = json.loads(metadata)
        content = json.dumps(body, default=str).replace(f'"{delta}"', delta)
        response = api.post(
            "/admin/loyalty/points/adjust",
            content=content,
            headers={"Content-Type": "application/json"},
        )
        assert response.status_code == 200, response.text
    exported = run_cli(backend.database_url, "export")
    assert exported.returncode == 0, exported.stderr
    lines = exported.stdout.splitlines(keepends=True)
    mine = [line for line in lines[1:] if f",{source}," in line]
    assert len(mine) == 3
    path = write(tmp_path, "again.csv", lines[0] + "".join(mine).replace(source, copy))
    result = import_file(backend, path, "direct")
    assert result.returncode == 0, result.stdout + result.stderr
    assert counts(result) == (3, 0, 0)
    assert balance(api, copy) == balance(api, source) == Decimal("7.75")
    history = api.get(f"/admin/loyalty/points/{copy}/history", params={"order": "created_at"})
    items = history.json()["adjustments"]
    assert [i["reference"] for i in items][::2] == ["order-a", "refund-a"]
    assert items[0]["metadata"] == {"channel": "web"}


@pytest.mark.parametrize("mode", MODES)
def test_bad_rows_are_reported_with_their_line_and_the_rest_applied(
    backend: Backend, api: httpx.Client, tmp_path: Path, mode: str
) -> None:
    customer_id = new_customer(api)["id"]
    unknown = f"nobody-{uuid.uuid4().hex[:8]}"
    path = write(
        tmp_path,
        "mixed.csv",
        HEADER
        + f"{customer_id},10,good,,,\n"
        + f"{customer_id},1.234,too fine,,,\n"
        + f"{unknown},5,whose?,,,\n"
        + f"{customer_id},abc,not a number,,,\n"
        + f"{customer_id},2,bad reference,has space,,\n"
        + f"{customer_id},-100,too much,,,\n"
        + f"{customer_id},0.5,good too,,,\n",
    )
    result = import_file(backend, path, mode)
    assert result.returncode == 1, result.stdout + result.stderr
    assert counts(result) == (2, 0, 5)
    refusals = dict(
        line.split(": ", 1) for line in result.stdout.splitlines() if line.startswith("line ")
    )
    assert set(refusals) == {"line 3", "line 4", "line 5", "line 6", "line 7"}
    assert "2 decimal places" in refusals["line 3"]
    assert refusals["line 4"] == f"Customer with id: {unknown} was not found"
    assert "reference" in refusals["line 6"] and "Insufficient points" in refusals["line 7"]
    assert balance(api, customer_id) == Decimal("10.5")


@pytest.mark.parametrize("mode", MODES)
def test_a_dry_run_reports_what_would_happen_and_changes_nothing(
    backend: Backend, api: httpx.Client, tmp_path: Path, mode: str
) -> None:
    customer_id = new_customer(api)["id"]
    unknown = f"nobody-{uuid.uuid4().hex[:8]}"
    path = write(
        tmp_path,
        "plan.csv",
        HEADER
        + f"{customer_id},10,a,order-1,,\n"
        + f"{customer_id},5,b,,,\n"
        + f"{unknown},5,c,,,\n"
        + f"{customer_id},7,d,order-1,,\n",
    )
    planned = import_file(backend, path, mode, "--dry-run")
    assert planned.returncode == 1, planned.stdout + planned.stderr
    assert "dry run" in planned.stdout
    assert counts(planned) == (2, 1, 1)
    assert history_count(api, customer_id) == 0 and balance(api, customer_id) == 0

    applied = import_file(backend, path, mode)
    assert counts(applied) == (2, 1, 1)
    assert balance(api, customer_id) == Decimal(15)
    replanned = import_file(backend, path, mode, "--dry-run")
    assert counts(replanned) == (0, 3, 1)
    assert history_count(api, customer_id) == 2


@pytest.mark.parametrize("mode", MODES)
def test_missing_customers_are_refused_or_created_with_their_email(
    backend: Backend, api: httpx.Client, tmp_path: Path, mode: str
) -> None:
    tag = uuid.uuid4().hex[:8]
    first, second, third = f"shop-{tag}-1", f"shop-{tag}-2", f"shop-{tag}-3"
    path = write(
        tmp_path,
        "new.jsonl",
        json.dumps({"customer_id": first, "delta": 12.5, "email": f"{first}@example.com"})
        + "\n"
        + json.dumps({"customer_id": first, "delta": "-2.5", "reason": "spent"})
        + "\n\n"
        + json.dumps({"customer_id": second, "delta": 3, "email": f"{second}@example.com"})
        + "\n"
        + json.dumps({"customer_id": third, "delta": 1})
        + "\n",
    )
    refused = import_file(backend, path, mode)
    assert refused.returncode == 1 and counts(refused) == (0, 0, 4)
    assert api.get(f"/admin/customers/{first}").status_code == 404

    created = import_file(backend, path, mode, "--create-customers")
    assert created.returncode == 1, created.stdout + created.stderr
    assert counts(created) == (3, 0, 1)
    assert re.search(r"line 5: .*no email", created.stdout), created.stdout
    customer = api.get(f"/admin/customers/{first}").json()["customer"]
    assert customer["email"] == f"{first}@example.com"
    assert balance(api, first) == Decimal(10) and balance(api, second) == Decimal(3)


@pytest.mark.parametrize(
    ("name", "content"),
    [
        ("notes.txt", "hello, world\nthis is not an import\n"),
        ("points.csv", "id,amount\n1,2\n"),
        ("empty.csv", ""),
        ("binary.csv", None),
        ("absent.csv", "missing"),
    ],
)
def test_a_file_that_is_not_an_import_is_refused_in_one_line(
    backend: Backend, tmp_path: Path, name: str, content: str | None
) -> None:
    path = tmp_path / name
    if content is None:
        path.write_bytes(b"customer_id,delta\n\xff\xfe\x00bad\n")
    elif content != "missing":
        path.write_text(content)
    result = import_file(backend, path, "direct")
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1, result.stderr


def test_usage_errors_exit_2(backend: Backend, tmp_path: Path) -> None:
    path = write(tmp_path, "ok.csv", HEADER)
    no_target = run_cli(backend.database_url, "import", str(path))
    assert no_target.returncode == 2 and "--url" in no_target.stderr
    stranger = run_cli(backend.database_url, "import", str(path), "--as", "who@example.com")
    assert stranger.returncode == 2 and "who@example.com" in stranger.stderr
    reader = f"reader-{uuid.uuid4().hex[:8]}@example.com"
    assert user_create(backend.database_url, reader, scopes=["loyalty:read"]).returncode == 0
    narrow = run_cli(backend.database_url, "import", str(path), "--as", reader)
    assert narrow.returncode == 2 and "loyalty:write" in narrow.stderr
    bad_since = run_cli(backend.database_url, "export", "--since", "yesterday")
    assert bad_since.returncode == 2 and "--since" in bad_since.stderr


def test_an_export_since_a_time_holds_only_what_came_after(
    backend: Backend, api: httpx.Client
) -> None:
    customer_id = new_customer(api)["id"]
    early = api.post(
        "/admin/loyalty/points/adjust", json={"customer_id": customer_id, "delta": 1}
    ).json()
    late = api.post(
        "/admin/loyalty/points/adjust", json={"customer_id": customer_id, "delta": 2}
    ).json()
    result = run_cli(
        backend.database_url, "export", "--format", "jsonl", "--since", late["updated_at"]
    )
    assert result.returncode == 0, result.stderr
    exported = [json.loads(line) for line in io.StringIO(result.stdout)]
    ids = {item["id"] for item in exported}
    assert late["id"] in ids
    assert all(item["created_at"] >= late["updated_at"] for item in exported)
    assert early["id"] not in ids or early["updated_at"] == late["updated_at"]
    item = next(item for item in exported if item["id"] == late["id"])
    assert set(item) >= {
        "id", "customer_id", "type", "delta", "balance_after", "reason", "reference",
        "metadata", "expires_at", "reverses", "pending_id", "created_by", "created_at", "hash",
    }  # fmt: skip
    assert item["delta"] == 2 and item["balance_after"] == 3


def test_an_import_with_a_secret_key_records_the_key_as_their_creator(
    backend: Backend, api: httpx.Client, tmp_path: Path
) -> None:
    customer_id = new_customer(api)["id"]
    key = api.post("/admin/api-keys", json={"title": "importer"}).json()["api_key"]
    path = write(tmp_path, "keyed.csv", HEADER + f"{customer_id},4.5,by key,,,\n")
    result = run_cli(
        backend.database_url,
        "import",
        str(path),
        "--url",
        backend.server.base_url,
        env={"LOYALTY_API_KEY": key["token"]},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    history = api.get(f"/admin/loyalty/points/{customer_id}/history").json()
    assert [item["created_by"] for item in history["adjustments"]] == [key["id"]]
    revoked = api.post(f"/admin/api-keys/{key['id']}/revoke")
    assert revoked.status_code == 200, revoked.text
    refused = run_cli(
        backend.database_url,
        "import",
        str(path),
        "--url",
        backend.server.base_url,
        "--api-key",
        key["token"],
    )
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1, refused.stderr
    assert "revoked" in refused.stderr


def test_a_progress_bar_is_drawn_on_a_terminal_only(
    backend: Backend, api: httpx.Client, tmp_path: Path
) -> None:
    customer_id = new_customer(api)["id"]
    path = write(tmp_path, "bar.csv", HEADER + f"{customer_id},1,a,,,\n{customer_id},2,b,,,\n")
    piped = import_file(backend, path, "direct")
    assert piped.returncode == 0 and piped.stderr == "", piped.stderr
    leader, follower = pty.openpty()
    try:
        process = subprocess.Popen(
            [*LOYALTY, "import", str(path), "--as", ADMIN_EMAIL, "--dry-run"],
            stdout=subprocess.PIPE,
            stderr=follower,
            env=service_env(backend.database_url),
        )
        os.close(follower)
        stdout, _ = process.communicate(timeout=120)
        drawn = b""
        with contextlib.suppress(OSError):  # the terminal closes with the process
            while chunk := os.read(leader, 4096):
                drawn += chunk
    finally:
        os.close(leader)
    assert process.returncode == 0, stdout
    assert b"[" in drawn and b"2/" in drawn and b"rows/s" in drawn, drawn
