"""The Alembic migrations: from an empty database, concurrently, up to the newest script,
and from a database holding a ledger written before adjustments had types and hashes."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

from ulid import ULID

from tests.conftest import DatabaseFactory
from tests.support import (
    LOYALTY,
    Backend,
    adjust,
    assert_verify,
    decoded,
    full_history,
    run_cli,
    service_env,
    sql,
    table_rows,
)

SOURCE_DIR = Path(__file__).resolve().parents[1] / "src" / "loyalty"
VERSIONS_DIR = SOURCE_DIR / "migrations" / "versions"
# A table named in the service's SQL (written in capitals, names in lower case), and a
# name that a statement defines for itself (a CTE or a window), which is no table.
TABLE_REFERENCE = re.compile(r"\b(?:FROM|JOIN|INTO|UPDATE|TABLE)\s+([a-z_][a-z0-9_]*)\b(?!\s*\()")
LOCAL_NAME = re.compile(r"\b([a-z_][a-z0-9_]*)\s+AS\s*\(")
CONCURRENT_MIGRATORS = 3


def tables_the_service_uses() -> set[str]:
    """Every table the service's SQL names: read from the string literals of its source
    (docstrings and the migrations aside), so the list cannot go stale."""
    strings: list[str] = []
    for path in sorted(SOURCE_DIR.rglob("*.py")):
        if "migrations" in path.relative_to(SOURCE_DIR).parts:
            continue
        tree = ast.parse(path.read_text())
        docstrings = {
            id(node.body[0].value)
            for node in ast.walk(tree)
            if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
            and node.body
            and isinstance(node.body[0], ast.Expr)
        }
        strings += [
            node.value
            for node in ast.walk(tree)
            if isinstance(node, ast.Constant)
            and isinstance(node.value, str)
            and id(node) not in docstrings
        ]
    text = "\n".join(strings)
    return set(TABLE_REFERENCE.findall(text)) - set(LOCAL_NAME.findall(text))


def assert_schema_is_what_the_service_uses(url: str) -> None:
    """The migrated database holds exactly the tables the service's SQL names, and the
    migrations' own alembic_version: none missing, none left over."""
    expected = tables_the_service_uses() - {"alembic_version"}
    assert {"customers", "loyalty_adjustments", "loyalty_balances", "users"} <= expected, expected
    assert table_names(url) == expected | {"alembic_version"}


def table_names(url: str) -> set[str]:
    if url.startswith("sqlite:///"):
        query = "SELECT name FROM sqlite_master WHERE type = 'table'"
    else:
        query = "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'"
    return {row[0] for row in sql(url, query)}


def recorded_versions(url: str) -> list[str]:
    return [row[0] for row in sql(url, "SELECT version_num FROM alembic_version")]


def script_revisions() -> dict[str, str | None]:
    """Each script's revision and the revision it follows, read from the source files."""
    revisions: dict[str, str | None] = {}
    for path in sorted(VERSIONS_DIR.glob("*.py")):
        values: dict[str, object] = {}
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.Assign) and len(node.targets) == 1:
                target = node.targets[0]
                if isinstance(target, ast.Name) and target.id in ("revision", "down_revision"):
                    values[target.id] = ast.literal_eval(node.value)
        if "revision" in values:
            down = values.get("down_revision")
            assert down is None or isinstance(down, str), f"{path.name}: a merge revision"
            revisions[str(values["revision"])] = down
    return revisions


def newest_revision() -> str:
    revisions = script_revisions()
    assert revisions, f"no migration scripts in {VERSIONS_DIR}"
    heads = set(revisions) - {down for down in revisions.values() if down is not None}
    assert len(heads) == 1, f"the scripts have {len(heads)} heads: {sorted(heads)}"
    roots = [revision for revision, down in revisions.items() if down is None]
    assert len(roots) == 1, f"the scripts have {len(roots)} roots: {roots}"
    return heads.pop()


def test_migrate_from_empty_creates_the_schema(databases: DatabaseFactory) -> None:
    """An empty database upgrades to head and then holds exactly the tables the service's
    SQL uses (and alembic_version)."""
    url = databases.new_url()
    assert table_names(url) == set()
    result = run_cli(url, "db", "migrate")
    assert result.returncode == 0, result.stderr
    assert_schema_is_what_the_service_uses(url)


def test_alembic_head_is_the_newest_script(databases: DatabaseFactory) -> None:
    """After migrating, alembic_version holds one row: the newest script's revision."""
    url = databases.new_url()
    result = run_cli(url, "db", "migrate")
    assert result.returncode == 0, result.stderr
    assert recorded_versions(url) == [newest_revision()]


def test_concurrent_migrations_are_safe(databases: DatabaseFactory) -> None:
    """Several `loyalty db migrate` started together on one fresh database all exit 0."""
    url = databases.new_url()
    processes = [
        subprocess.Popen(
            [*LOYALTY, "db", "migrate"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=service_env(url),
        )
        for _ in range(CONCURRENT_MIGRATORS)
    ]
    outcomes = [process.communicate(timeout=120) for process in processes]
    for process, (stdout, stderr) in zip(processes, outcomes, strict=True):
        assert process.returncode == 0, f"stdout:\n{stdout}\nstderr:\n{stderr}"
    assert_schema_is_what_the_service_uses(url)
    assert recorded_versions(url) == [newest_revision()]
    # A later migrate finds nothing left to do.
    again = run_cli(url, "db", "migrate")
    assert again.returncode == 0, again.stderr


# --- an existing ledger carried into the ledger of types and hashes -----------------------

LEDGER_REVISION = "0003"  # the last revision before adjustments had a type and a hash
OLD_BALANCE_COLUMNS = {
    "customer_id",
    "balance_hundredths",
    "last_seq",
    "last_adjustment_id",
    "updated_at_ms",
}
NEW_ADJUSTMENT_COLUMNS = ("reference", "metadata", "expires_at_ms", "reverses", "pending_id")
ADMIN_ID = f"user_{ULID.from_timestamp(1_700_000_000)}"
# Each customer's deltas in hundredths and reasons, written the way revision 0003 kept them.
OLD_LEDGERS: dict[str, list[tuple[int, str | None, str | None]]] = {
    "cus_old_a": [(10_000, "welcome", ADMIN_ID), (-2_550, None, ADMIN_ID), (1, "é ✓", None)],
    "mirror-b": [(700, "imported", None)],
    "cus_old_c": [],
    "cus_old_d": [(5, "a", ADMIN_ID), (-5, "b", ADMIN_ID), (100_000_000_000, None, ADMIN_ID)],
}


def upgrade_to(url: str, revision: str) -> None:
    """Alembic's upgrade to one revision, as `loyalty db migrate` drives it, in a process
    of its own."""
    code = (
        "import sys\n"
        "from alembic import command\n"
        "from loyalty.migrate import alembic_config\n"
        "command.upgrade(alembic_config(sys.argv[1]), sys.argv[2])\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, url, revision],
        capture_output=True,
        text=True,
        env=service_env(url),
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr


def write_old_ledger(url: str) -> dict[str, list[str]]:
    """Customers, balances and adjustments inserted as revision 0003's service wrote them:
    a balance row per customer holding the tip of its sequence. Returns each customer's
    adjustment ids in order."""
    start_ms = 1_760_000_000_000
    ids: dict[str, list[str]] = {}
    for n, (customer_id, ledger) in enumerate(OLD_LEDGERS.items()):
        created = start_ms + n * 1000
        sql(
            url,
            "INSERT INTO customers (id, email, email_key, first_name, last_name,"
            " created_at_ms, updated_at_ms) VALUES ($1, $2, $3, $4, NULL, $5, $5)",
            customer_id,
            f"{customer_id}@Example.com",
            f"{customer_id}@example.com",
            "Old",
            created,
        )
        balance, tip_id, tip_at = 0, None, None
        ids[customer_id] = []
        for seq, (delta, reason, created_by) in enumerate(ledger, start=1):
            at = created + seq * 7
            adjustment_id = f"adj_{ULID.from_timestamp(at / 1000)}"
            balance += delta
            sql(
                url,
                "INSERT INTO loyalty_adjustments (id, customer_id, seq, delta_hundredths,"
                " balance_after_hundredths, reason, created_at_ms, created_by)"
                " VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
                adjustment_id,
                customer_id,
                seq,
                delta,
                balance,
                reason,
                at,
                created_by,
            )
            ids[customer_id].append(adjustment_id)
            tip_id, tip_at = adjustment_id, at
        sql(
            url,
            "INSERT INTO loyalty_balances (customer_id, balance_hundredths, last_seq,"
            " last_adjustment_id, updated_at_ms) VALUES ($1, $2, $3, $4, $5)",
            customer_id,
            balance,
            len(ledger),
            tip_id,
            tip_at,
        )
    return ids


def test_an_existing_ledger_upgrades_to_types_and_a_hash_chain(
    databases: DatabaseFactory, tmp_path: Path
) -> None:
    """A database at revision 0003 holding customers, balances and adjustments upgrades to
    head: every adjustment becomes type 'adjustment' with a well-formed hash whose chain
    verify accepts, the new columns are empty, the balances are what they were, no points
    are pending, and the service goes on appending to the migrated chains."""
    url = databases.new_url()
    upgrade_to(url, LEDGER_REVISION)
    assert recorded_versions(url) == [LEDGER_REVISION]
    ids = write_old_ledger(url)
    old_balances = table_rows(url, "loyalty_balances", order="customer_id")
    old_adjustments = table_rows(url, "loyalty_adjustments", order="customer_id, seq")

    result = run_cli(url, "db", "migrate")
    assert result.returncode == 0, result.stderr
    assert recorded_versions(url) == [newest_revision()]
    assert_verify(url)

    adjustments = table_rows(url, "loyalty_adjustments", order="customer_id, seq")
    assert [a["id"] for a in adjustments] == [a["id"] for a in old_adjustments]
    for old, new in zip(old_adjustments, adjustments, strict=True):
        assert {name: new[name] for name in old} == old, "an adjustment changed"
        assert new["type"] == "adjustment", new
        assert re.fullmatch(r"[0-9a-f]{64}", new["hash"]), new
        for name in NEW_ADJUSTMENT_COLUMNS:
            assert new[name] is None, (name, new)
    assert len({a["hash"] for a in adjustments}) == len(adjustments)
    tips = {a["customer_id"]: a for a in adjustments}

    balances = table_rows(url, "loyalty_balances", order="customer_id")
    assert len(balances) == len(old_balances)
    for old, new in zip(old_balances, balances, strict=True):
        assert {name: new[name] for name in OLD_BALANCE_COLUMNS} == old, "a balance changed"
        assert new["pending_hundredths"] == 0, new
        tip = tips.get(new["customer_id"])
        if tip is None:
            assert new["last_hash"] in (None, "0" * 64), new
        else:
            assert new["last_hash"] == tip["hash"], new
        for name in set(new) - OLD_BALANCE_COLUMNS - {"pending_hundredths", "last_hash"}:
            assert new[name] is None, f"{name} of a migrated balance row: {new[name]!r}"
    # No credit had an expiry before, so nothing expires and nothing is held.
    assert sql(url, "SELECT count(*) FROM loyalty_lots") == [(0,)]
    assert sql(url, "SELECT count(*) FROM loyalty_pending") == [(0,)]

    # The service reads the migrated ledger as it was and continues each chain.
    with Backend.start(databases.kind, url, tmp_path) as service, service.client() as api:
        for customer_id, adjustment_ids in ids.items():
            balance = decoded(api.get(f"/admin/loyalty/points/{customer_id}"))
            expected = sum(delta for delta, _, _ in OLD_LEDGERS[customer_id])
            assert balance["balance"] == Decimal(expected) / 100, balance
            assert balance["pending"] == 0 and balance["next_expiration"] is None, balance
            items = full_history(api, customer_id)
            assert [item["id"] for item in items] == adjustment_ids
            for item in items:
                assert item["type"] == "adjustment" and item["reverses"] is None, item
                assert item["hash"] == next(a for a in adjustments if a["id"] == item["id"])["hash"]
            response = adjust(api, customer_id, 1, "after the upgrade")
            assert response.status_code == 200, response.text
        first = ids["cus_old_a"][0]
        reversal = api.post(f"/admin/loyalty/adjustments/{first}/reverse", json={"points": 1})
        assert reversal.status_code == 200, reversal.text
    assert_verify(url)
