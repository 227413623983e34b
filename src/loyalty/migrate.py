"""Applying the Alembic migrations that ship inside the package."""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

from alembic import command
from alembic.config import Config

from loyalty.db import sqlalchemy_url, sqlite_path
from loyalty.db.sqlite.connection import PRIVATE_FILE_MODE, create_private_file

MIGRATIONS_DIR = Path(__file__).parent / "migrations"


def alembic_config(database_url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    # ConfigParser interpolation treats % specially (it appears in escaped passwords).
    config.set_main_option("sqlalchemy.url", sqlalchemy_url(database_url).replace("%", "%%"))
    return config


def upgrade(database_url: str) -> None:
    """Applies every pending migration; safe to run from several processes at once."""
    upgrade_to(database_url, "head")


def upgrade_to(database_url: str, revision: str) -> None:
    """Applies the migrations up to `revision` (tests bring old schemas forward with it)."""
    with _sqlite_file_lock(database_url):
        command.upgrade(alembic_config(database_url), revision)


@contextlib.contextmanager
def _sqlite_file_lock(database_url: str) -> Iterator[None]:
    # PostgreSQL takes an advisory lock in env.py; SQLite files get a lock file beside them.
    if not database_url.startswith("sqlite:///"):
        yield
        return
    path = os.path.abspath(sqlite_path(database_url))
    # Before Alembic's engine opens it, so that the file is created private.
    create_private_file(path)
    lock = os.open(path + ".migrate-lock", os.O_RDWR | os.O_CREAT, PRIVATE_FILE_MODE)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield
    finally:
        os.close(lock)  # closing lets go of the lock
