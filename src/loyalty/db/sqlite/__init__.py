"""SQLite, the embedded default: a file beside the service."""

from loyalty.db.sqlite.database import SqliteDatabase

__all__ = ["SqliteDatabase"]
