"""``SqlStore``: every ``Store`` method over ``_transaction``, assembled from the queries of
each record kind; the backends (``gateway.records.sqlite``, ``gateway.records.postgres``)
subclass it."""

from __future__ import annotations

import abc

from gateway.records.base import StoreError
from gateway.records.migrations import Dialect
from gateway.records.sql.accounts import AccountQueries
from gateway.records.sql.audit import AuditQueries
from gateway.records.sql.calls import CallQueries
from gateway.records.sql.evidence import EvidenceQueries
from gateway.records.sql.outbox import OutboxQueries
from gateway.records.sql.transcripts import TranscriptQueries


class SqlStore(
    AccountQueries, CallQueries, TranscriptQueries, AuditQueries, EvidenceQueries, OutboxQueries
):
    """Every ``Store`` method over ``_transaction``; backends subclass it."""

    dialect: Dialect

    @abc.abstractmethod
    async def open(self) -> None:
        """Connect and apply pending migrations; a no-op when already open."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Release the connection(s); idempotent."""

    @abc.abstractmethod
    async def purge_residue(self) -> None:
        """See ``Store.purge_residue``."""

    async def ping(self) -> bool:
        """True when the database answers a query; never raises."""
        try:
            async with self._transaction() as tx:
                return await tx.fetchone("SELECT 1") is not None
        except StoreError:
            return False

    async def schema_version(self) -> int:
        """The highest applied migration version."""
        async with self._transaction() as tx:
            row = await tx.fetchone("SELECT max(version) FROM schema_version")
        return int(row[0] or 0) if row else 0
