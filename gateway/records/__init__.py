"""Durable records: the store (SQLite, the embedded default, or PostgreSQL) and personal data
in it (``privacy``: sealing numbers, export, erasure, retention). Imports ``security`` and
``metrics`` only, never the rest of ``gateway``.

``create_store`` picks the backend from configuration: PostgreSQL when a database URL is set,
otherwise SQLite in the data directory. Call ``open()`` on the result before use (it applies
pending migrations) and ``close()`` at shutdown.
"""

from __future__ import annotations

from pathlib import Path

from gateway.records.base import Store

__all__ = ["Store", "create_store"]


def create_store(
    *, data_dir: Path, database_url: str | None = None, schema: str = "voicegw"
) -> Store:
    """A store for this configuration (not yet opened)."""
    if database_url:
        from gateway.records.postgres import PostgresStore

        return PostgresStore(database_url, schema)
    from gateway.records.sqlite import DEFAULT_FILENAME, SqliteStore

    return SqliteStore(data_dir / DEFAULT_FILENAME)
