"""Every ``Store`` method written once in portable SQL, by record kind, over a small
transaction interface; imports only ``gateway.records.base``/``.migrations`` and ``security``.

SQL is written with ``?`` placeholders, which the PostgreSQL backend turns into ``%s``;
everything else is portable between SQLite 3.35+ and PostgreSQL 12+ (``ON CONFLICT``,
``RETURNING``, ``CASE``). A backend (``gateway.records.sqlite``, ``gateway.records.postgres``)
subclasses ``SqlStore`` and supplies ``_transaction`` (a context manager yielding a ``Tx``)
and its dialect.
"""

from __future__ import annotations

from gateway.records.sql.queries import Row, Tx
from gateway.records.sql.store import SqlStore

__all__ = ["Row", "SqlStore", "Tx"]
