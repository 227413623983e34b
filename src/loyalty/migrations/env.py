"""Alembic environment: runs the scripts in versions/ against SQLite or PostgreSQL."""

from __future__ import annotations

import asyncio

from alembic import context
from sqlalchemy import Connection, create_engine, pool, text
from sqlalchemy.ext.asyncio import create_async_engine

# Held while migrating so that servers starting together on one database take turns.
_PG_MIGRATION_LOCK = 7_420_311

config = context.config
url = config.get_main_option("sqlalchemy.url") or ""


def _run(connection: Connection) -> None:
    if connection.dialect.name == "postgresql":
        # Session-level: held until this connection closes, after the last migration.
        connection.execute(text(f"SELECT pg_advisory_lock({_PG_MIGRATION_LOCK})"))
        connection.commit()
    context.configure(connection=connection, target_metadata=None, transactional_ddl=True)
    with context.begin_transaction():
        context.run_migrations()


async def _run_async() -> None:
    engine = create_async_engine(url, poolclass=pool.NullPool)
    async with engine.connect() as connection:
        await connection.run_sync(_run)
    await engine.dispose()


if url.startswith("postgresql+asyncpg"):
    asyncio.run(_run_async())
else:
    engine = create_engine(url, poolclass=pool.NullPool)
    with engine.connect() as connection:
        _run(connection)
    engine.dispose()
