"""Opening a real store of either backend for a test: SQLite in a temporary directory, or
PostgreSQL at VOICEGW_TEST_DATABASE_URL in a schema unique to the test (dropped afterwards).
PostgreSQL tests are never skipped: if the server does not answer, they fail."""

from __future__ import annotations

import os
import sqlite3
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from gateway.records.migrations import MIGRATIONS, Migration
from gateway.records.postgres import PostgresStore
from gateway.records.sql import SqlStore
from gateway.records.sqlite import SqliteStore

DATABASE_URL = os.environ.get(
    "VOICEGW_TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test"
)
BACKENDS = ("sqlite", "postgres")


def unique_schema() -> str:
    return f"voicegw_test_{uuid.uuid4().hex[:12]}"


async def drop_schema(schema: str) -> None:
    async with await psycopg.AsyncConnection.connect(DATABASE_URL, autocommit=True) as conn:
        await conn.execute(
            sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema))
        )


async def check_postgres() -> None:
    try:
        async with await psycopg.AsyncConnection.connect(DATABASE_URL, connect_timeout=5):
            pass
    except psycopg.Error as exc:  # pragma: no cover - the failure message is the point
        pytest.fail(
            f"PostgreSQL at {DATABASE_URL} does not answer ({exc}); set VOICEGW_TEST_DATABASE_URL"
        )


class Backend:
    """Makes stores of one kind that share one database (two replicas, a restart)."""

    def __init__(self, kind: str, tmp_path: Path) -> None:
        self.kind = kind
        self.path = tmp_path / "data" / "voicegw.sqlite3"
        self.schema = unique_schema()

    def make(self, migrations: tuple[Migration, ...] = MIGRATIONS) -> SqlStore:
        if self.kind == "sqlite":
            return SqliteStore(self.path, migrations=migrations)
        return PostgresStore(DATABASE_URL, self.schema, migrations=migrations)

    async def cleanup(self) -> None:
        if self.kind == "postgres":
            await drop_schema(self.schema)

    async def raw(self, query: str, params: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
        """Run SQL directly against the database, bypassing the store (to tamper)."""
        if self.kind == "sqlite":
            return _sqlite_raw(self.path, query, params)
        async with await psycopg.AsyncConnection.connect(DATABASE_URL, autocommit=True) as pg:
            await pg.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(self.schema)))
            cursor = await pg.execute(query.replace("?", "%s").encode(), params)
            return await cursor.fetchall() if cursor.description else []


def _sqlite_raw(path: Path, query: str, params: tuple[object, ...]) -> list[tuple[object, ...]]:
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        return conn.execute(query, params).fetchall()
    finally:
        conn.close()


@asynccontextmanager
async def open_backend(kind: str, tmp_path: Path) -> AsyncIterator[tuple[Backend, SqlStore]]:
    if kind == "postgres":
        await check_postgres()
    backend = Backend(kind, tmp_path)
    store = backend.make()
    try:
        await store.open()
        yield backend, store
    finally:
        await store.close()
        await backend.cleanup()
