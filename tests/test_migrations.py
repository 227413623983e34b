"""The Alembic migrations: from an empty database, concurrently, and up to the newest script."""

from __future__ import annotations

import ast
import asyncio
import re
import sqlite3
import subprocess
from pathlib import Path

import asyncpg

from tests.conftest import DatabaseFactory
from tests.support import LOYALTY, run_cli, service_env

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
        conn = sqlite3.connect(url.removeprefix("sqlite:///"))
        try:
            rows = conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall()
        finally:
            conn.close()
        return {row[0] for row in rows}

    async def run() -> set[str]:
        conn = await asyncpg.connect(url, timeout=10)
        try:
            rows = await conn.fetch(
                "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'"
            )
        finally:
            await conn.close()
        return {row[0] for row in rows}

    return asyncio.run(run())


def recorded_versions(url: str) -> list[str]:
    if url.startswith("sqlite:///"):
        conn = sqlite3.connect(url.removeprefix("sqlite:///"))
        try:
            rows = conn.execute("SELECT version_num FROM alembic_version").fetchall()
        finally:
            conn.close()
        return [row[0] for row in rows]

    async def run() -> list[str]:
        conn = await asyncpg.connect(url, timeout=10)
        try:
            rows = await conn.fetch("SELECT version_num FROM alembic_version")
        finally:
            await conn.close()
        return [row[0] for row in rows]

    return asyncio.run(run())


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
