"""``SqliteStore``: the embedded default, one SQLite file in the data directory.

One connection per store, used only from one dedicated worker thread, so the event loop never
blocks on the database and statements never interleave; an ``asyncio.Lock`` holds the
connection for a whole transaction. Write transactions start with ``BEGIN IMMEDIATE``, which
also serialises writers in other processes sharing the file (``voicegw`` commands beside a
running server). The database runs in WAL mode with ``secure_delete`` (freed content is
zeroed) and ``synchronous=FULL``; the file (and its ``-wal``/``-shm`` companions) is mode 0600
in a 0700 directory.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sqlite3
import stat
import time
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager, suppress
from pathlib import Path
from typing import Any, Final, TypeVar

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

__all__ = ["DEFAULT_FILENAME", "SqliteStore"]

logger = logging.getLogger(__name__)

T = TypeVar("T")

DEFAULT_FILENAME: Final = "voicegw.sqlite3"
BUSY_TIMEOUT_MS: Final = 5000


def _translate(exc: sqlite3.Error) -> StoreError:
    if isinstance(exc, sqlite3.IntegrityError) and "UNIQUE" in str(exc).upper():
        return DuplicateError("a record with that id or name exists")
    return StoreUnavailable(f"sqlite: {type(exc).__name__}")


class _Tx:
    __slots__ = ("_store",)

    def __init__(self, store: SqliteStore) -> None:
        self._store = store

    async def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        return await self._store._run(lambda conn: conn.execute(sql, params).rowcount)

    async def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        return await self._store._run(lambda conn: conn.execute(sql, params).fetchall())

    async def fetchone(self, sql: str, params: Sequence[Any] = ()) -> Row | None:
        row: Row | None = await self._store._run(lambda conn: conn.execute(sql, params).fetchone())
        return row


def _enable_wal(conn: sqlite3.Connection) -> tuple[object, ...] | None:
    """Switch to WAL. The switch needs the file to itself and SQLite does not wait on its busy
    handler for it, so processes starting together retry it briefly."""
    for attempt in range(50):
        try:
            row: tuple[object, ...] | None = conn.execute("PRAGMA journal_mode = WAL").fetchone()
            return row
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or attempt == 49:
                raise
            time.sleep(0.02 * (1 + attempt % 5))
    return None


class SqliteStore(SqlStore):
    """The store in one SQLite file at ``path`` (its directory is created mode 0700)."""

    dialect = Dialect.SQLITE

    def __init__(self, path: Path | str, *, migrations: tuple[Migration, ...] = MIGRATIONS) -> None:
        check_order(migrations)
        self.path = Path(path)
        self._migrations = migrations
        self._conn: sqlite3.Connection | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._lock = asyncio.Lock()

    def __repr__(self) -> str:
        return f"SqliteStore({str(self.path)!r})"

    # -- lifecycle -------------------------------------------------------------------------

    async def open(self) -> None:
        if self._conn is not None:
            return
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="voicegw-sqlite")
        try:
            self._conn = await self._call(self._connect)
            await self._call(self._migrate)
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        conn, executor = self._conn, self._executor
        self._conn = self._executor = None
        if executor is None:
            return
        if conn is not None:
            with suppress(Exception):
                await asyncio.get_running_loop().run_in_executor(executor, conn.close)
        executor.shutdown(wait=True)

    async def purge_residue(self) -> None:
        async with self._lock:
            await self._run(lambda conn: conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall())

    def _connect(self) -> sqlite3.Connection:
        directory = self.path.parent
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        mode = directory.stat().st_mode
        if mode & stat.S_ISVTX:
            # A shared directory such as /tmp: never change its mode.
            logger.warning("the database directory is shared; keep the database elsewhere")
        elif stat.S_IMODE(mode) != 0o700:
            directory.chmod(0o700)
        # Create the file ourselves so it is 0600 from its first byte; SQLite gives the -wal
        # and -shm files the database file's mode.
        os.close(os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600))
        for suffix in ("", "-wal", "-shm"):
            with suppress(FileNotFoundError):
                Path(f"{self.path}{suffix}").chmod(0o600)
        conn = sqlite3.connect(
            self.path, isolation_level=None, check_same_thread=False, timeout=BUSY_TIMEOUT_MS / 1000
        )
        try:
            conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            journal = _enable_wal(conn)
            if journal is None or str(journal[0]).lower() != "wal":
                raise StoreUnavailable("sqlite: WAL mode is not available for this file")
            conn.execute("PRAGMA synchronous = FULL")
            conn.execute("PRAGMA secure_delete = ON")
            conn.execute("PRAGMA foreign_keys = ON")
        except BaseException:
            conn.close()
            raise
        return conn

    def _migrate(self) -> None:
        conn = self._require()
        conn.execute(SCHEMA_VERSION_TABLE[Dialect.SQLITE])
        for migration in self._migrations:
            conn.execute("BEGIN IMMEDIATE")
            try:
                # Re-checked under the write lock: another process may have applied it.
                row = conn.execute(
                    "SELECT 1 FROM schema_version WHERE version = ?", (migration.version,)
                ).fetchone()
                if row is None:
                    for sql in statements(migration, Dialect.SQLITE):
                        conn.execute(sql)
                    conn.execute(
                        "INSERT INTO schema_version (version, name, applied_at) VALUES (?, ?, ?)",
                        (migration.version, migration.name, time.time()),
                    )
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise

    # -- transactions ----------------------------------------------------------------------

    def _require(self) -> sqlite3.Connection:
        if self._conn is None:
            raise StoreUnavailable("sqlite store is not open")
        return self._conn

    async def _call(self, fn: Callable[[], T]) -> T:
        if self._executor is None:
            raise StoreUnavailable("sqlite store is not open")
        try:
            return await asyncio.get_running_loop().run_in_executor(self._executor, fn)
        except sqlite3.Error as exc:
            raise _translate(exc) from exc

    async def _run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        conn = self._require()
        return await self._call(lambda: fn(conn))

    @asynccontextmanager
    async def _transaction(self, *, write: bool = False) -> AsyncIterator[_Tx]:
        begin = "BEGIN IMMEDIATE" if write else "BEGIN"
        async with self._lock:
            try:
                await self._run(lambda conn: _begin(conn, begin))
                yield _Tx(self)
                await asyncio.shield(self._run(lambda conn: conn.execute("COMMIT")))
            except BaseException:
                # Shielded: a cancelled caller still leaves the connection clean. The worker
                # runs jobs in order, so the rollback precedes the next transaction's BEGIN.
                with suppress(StoreError):
                    await asyncio.shield(self._run(_rollback))
                raise


def _begin(conn: sqlite3.Connection, statement: str) -> None:
    # A transaction left open by a caller cancelled mid-statement is rolled back first.
    _rollback(conn)
    conn.execute(statement)


def _rollback(conn: sqlite3.Connection) -> None:
    if conn.in_transaction:
        conn.execute("ROLLBACK")
