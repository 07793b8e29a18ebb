"""``PostgresStore``: the store for multi-replica deployments, in one schema of a PostgreSQL
database, through psycopg 3's async driver and a bounded connection pool.

Every connection uses the store's schema (``search_path``) and a ``statement_timeout``, and the
pool waits at most ``timeout_s`` for a free connection, so no call waits unbounded. Migrations
run under an advisory lock named after the schema, so replicas starting together apply each one
exactly once. Audit appends lock the chain-head row (``SELECT ... FOR UPDATE``), so appends from
every replica form one chain.
"""

from __future__ import annotations

import functools
import re
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any, Final

import psycopg
from psycopg import errors, sql
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from gateway.records.base import DuplicateError, StoreError, StoreUnavailable
from gateway.records.migrations import (
    MIGRATIONS,
    SCHEMA_VERSION_TABLE,
    Dialect,
    Migration,
    check_order,
    statements,
)
from gateway.records.sql import Row, SqlStore

__all__ = ["PostgresStore"]

_SCHEMA: Final = re.compile(r"[a-z_][a-z0-9_]{0,62}")


@functools.lru_cache(maxsize=256)
def _placeholders(query: str) -> str:
    # Our SQL has no literal "?" or "%".
    return query.replace("?", "%s")


def _translate(exc: Exception) -> StoreError:
    if isinstance(exc, errors.UniqueViolation):
        return DuplicateError("a record with that id or name exists")
    if isinstance(exc, psycopg.OperationalError | PoolTimeout | OSError | errors.QueryCanceled):
        return StoreUnavailable(f"postgres: {type(exc).__name__}")
    return StoreError(f"postgres: {type(exc).__name__}")


class _Tx:
    __slots__ = ("_conn",)

    def __init__(self, conn: psycopg.AsyncConnection[Any]) -> None:
        self._conn = conn

    async def execute(self, query: str, params: Sequence[Any] = ()) -> int:
        cursor = await self._conn.execute(_placeholders(query).encode(), params)
        return cursor.rowcount

    async def fetchall(self, query: str, params: Sequence[Any] = ()) -> list[Row]:
        cursor = await self._conn.execute(_placeholders(query).encode(), params)
        return await cursor.fetchall()

    async def fetchone(self, query: str, params: Sequence[Any] = ()) -> Row | None:
        cursor = await self._conn.execute(_placeholders(query).encode(), params)
        return await cursor.fetchone()


class PostgresStore(SqlStore):
    """The store in schema ``schema`` of the database at ``dsn`` (created if missing)."""

    dialect = Dialect.POSTGRES
    _HEAD_LOCK = " FOR UPDATE"

    def __init__(
        self,
        dsn: str,
        schema: str = "voicegw",
        *,
        min_size: int = 1,
        max_size: int = 10,
        timeout_s: float = 5.0,
        migrations: tuple[Migration, ...] = MIGRATIONS,
    ) -> None:
        if not _SCHEMA.fullmatch(schema):
            raise ValueError("schema must be a lower-case SQL identifier")
        check_order(migrations)
        self._dsn = dsn
        self.schema = schema
        self._min_size = min_size
        self._max_size = max_size
        self._timeout_s = timeout_s
        self._migrations = migrations
        self._pool: AsyncConnectionPool[psycopg.AsyncConnection[Any]] | None = None

    def __repr__(self) -> str:
        # The DSN may hold a password: never shown.
        return f"PostgresStore(schema={self.schema!r})"

    # -- lifecycle -------------------------------------------------------------------------

    async def open(self) -> None:
        if self._pool is not None:
            return
        pool: AsyncConnectionPool[psycopg.AsyncConnection[Any]] = AsyncConnectionPool(
            self._dsn,
            min_size=self._min_size,
            max_size=self._max_size,
            timeout=self._timeout_s,
            open=False,
            configure=self._configure,
            kwargs={"connect_timeout": max(1, round(self._timeout_s))},
            name=f"voicegw-{self.schema}",
        )
        try:
            await pool.open(wait=True, timeout=self._timeout_s)
        except (PoolTimeout, psycopg.Error, OSError) as exc:
            await pool.close()
            raise StoreUnavailable("postgres: cannot connect") from exc
        self._pool = pool
        try:
            await self._migrate()
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            await pool.close()

    async def _configure(self, conn: psycopg.AsyncConnection[Any]) -> None:
        timeout_ms = max(1, int(self._timeout_s * 1000))
        await conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(self.schema)))
        await conn.execute(sql.SQL("SET statement_timeout = {}").format(sql.Literal(timeout_ms)))
        await conn.execute(sql.SQL("SET lock_timeout = {}").format(sql.Literal(timeout_ms)))
        await conn.commit()

    async def _migrate(self) -> None:
        lock_name = f"voicegw-migrate:{self.schema}"
        async with self._connection() as conn:
            await conn.set_autocommit(True)
            try:
                await conn.execute("SELECT pg_advisory_lock(hashtext(%s))", (lock_name,))
                try:
                    await conn.execute(
                        sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(
                            sql.Identifier(self.schema)
                        )
                    )
                    await conn.execute(SCHEMA_VERSION_TABLE[Dialect.POSTGRES].encode())
                    for migration in self._migrations:
                        async with conn.transaction():
                            cursor = await conn.execute(
                                "SELECT 1 FROM schema_version WHERE version = %s",
                                (migration.version,),
                            )
                            if await cursor.fetchone() is not None:
                                continue
                            for statement in statements(migration, Dialect.POSTGRES):
                                await conn.execute(statement.encode())
                            await conn.execute(
                                "INSERT INTO schema_version (version, name, applied_at) "
                                "VALUES (%s, %s, %s)",
                                (migration.version, migration.name, time.time()),
                            )
                finally:
                    await conn.execute("SELECT pg_advisory_unlock(hashtext(%s))", (lock_name,))
            finally:
                await conn.set_autocommit(False)

    async def purge_residue(self) -> None:
        # VACUUM removes dead row versions from what the database can read; it cannot run in
        # a transaction block.
        async with self._connection() as conn:
            await conn.set_autocommit(True)
            try:
                for table in ("calls", "transcripts", "subject_requests", "audit_events"):
                    await conn.execute(sql.SQL("VACUUM {}").format(sql.Identifier(table)))
            finally:
                await conn.set_autocommit(False)

    # -- transactions ----------------------------------------------------------------------

    @asynccontextmanager
    async def _connection(self) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        if self._pool is None:
            raise StoreUnavailable("postgres store is not open")
        try:
            async with self._pool.connection() as conn:
                yield conn
        except StoreError:
            raise
        except (psycopg.Error, PoolTimeout, OSError) as exc:
            raise _translate(exc) from exc

    @asynccontextmanager
    async def _transaction(self, *, write: bool = False) -> AsyncIterator[_Tx]:
        async with self._connection() as conn, conn.transaction():
            yield _Tx(conn)
