"""Durable records behind one interface: SQLite (embedded default) and PostgreSQL.

``create_store`` picks the backend from configuration: PostgreSQL when a database URL is set,
otherwise SQLite in the data directory. Call ``open()`` on the result before use (it applies
pending migrations) and ``close()`` at shutdown.
"""

from __future__ import annotations

from pathlib import Path

from gateway.store.base import Store

__all__ = ["Store", "create_store"]


def create_store(
    *, data_dir: Path, database_url: str | None = None, schema: str = "voicegw"
) -> Store:
    """A store for this configuration (not yet opened)."""
    if database_url:
        from gateway.store.postgres import PostgresStore

        return PostgresStore(database_url, schema)
    from gateway.store.sqlite import DEFAULT_FILENAME, SqliteStore

    return SqliteStore(data_dir / DEFAULT_FILENAME)
