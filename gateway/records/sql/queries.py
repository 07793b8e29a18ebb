"""The transaction interface and the query shapes every record kind is written with.

``SqlQueries`` is what each record kind's queries (``accounts``, ``calls``, ``audit``,
``evidence``) stand on: the backend's ``_transaction`` and three shapes over it, one row,
all rows, one write. Statements that need several steps in one transaction open it
themselves.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any, Protocol, TypeVar

import orjson

from gateway.records.base import MAX_PAGE

Row = tuple[Any, ...]
T = TypeVar("T")


class Tx(Protocol):
    """One transaction. Every method raises ``StoreError`` subclasses only."""

    async def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        """Run a statement; return the number of rows it changed."""
        ...

    async def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[Row]: ...

    async def fetchone(self, sql: str, params: Sequence[Any] = ()) -> Row | None: ...


def page(limit: int) -> int:
    """``limit`` clamped to a page: 0 to ``MAX_PAGE`` rows."""
    return max(0, min(limit, MAX_PAGE))


def detail(raw: str) -> dict[str, Any]:
    """A stored JSON object; a damaged one still loads (as ``_unparseable``), so that
    verification can point at it."""
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return {"_unparseable": raw}
    return value if isinstance(value, dict) else {"_unparseable": raw}


class SqlQueries(abc.ABC):
    """A backend's transactions and the shapes of the queries written over them."""

    @abc.abstractmethod
    def _transaction(self, *, write: bool = False) -> AbstractAsyncContextManager[Tx]:
        """A transaction; ``write`` ones take the write lock up front where that matters."""

    async def _one(self, sql: str, params: Sequence[Any], convert: Callable[[Row], T]) -> T | None:
        """The first row ``sql`` selects, converted; None when there is none."""
        async with self._transaction() as tx:
            row = await tx.fetchone(sql, params)
        return None if row is None else convert(row)

    async def _all(self, sql: str, params: Sequence[Any], convert: Callable[[Row], T]) -> list[T]:
        """Every row ``sql`` selects, converted, in its order."""
        async with self._transaction() as tx:
            rows = await tx.fetchall(sql, params)
        return [convert(row) for row in rows]

    async def _write(self, sql: str, params: Sequence[Any] = ()) -> int:
        """Run one statement in a write transaction; the number of rows it changed."""
        async with self._transaction(write=True) as tx:
            return await tx.execute(sql, params)
