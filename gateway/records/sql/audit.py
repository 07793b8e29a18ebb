"""The audit trail: hash-chained events appended under the chain row's lock, queried and
paged, and deleted from the front by retention (the anchor keeps the rest verifiable)."""

from __future__ import annotations

from typing import Any

import orjson

from gateway.records.base import AuditChainer, AuditEvent, AuditQuery, ChainHead
from gateway.records.sql.queries import Row, SqlQueries, detail, page

_AUDIT_COLUMNS = (
    "seq, at, action, outcome, actor, role, entity_type, entity_id, ip_hash, user_agent, "
    "correlation_id, detail, prev_hash, hash"
)


def _audit(row: Row) -> AuditEvent:
    return AuditEvent(
        seq=row[0],
        at=row[1],
        action=row[2],
        outcome=row[3],
        actor=row[4],
        role=row[5],
        entity_type=row[6],
        entity_id=row[7],
        ip_hash=row[8],
        user_agent=row[9],
        correlation_id=row[10],
        detail=detail(row[11]),
        prev_hash=row[12],
        hash=row[13],
    )


def _head(row: Row) -> ChainHead | None:
    return None if row[0] == 0 else ChainHead(int(row[0]), row[1])


class AuditQueries(SqlQueries):
    """The ``Store`` methods of the audit trail."""

    _HEAD_LOCK = ""  # PostgreSQL: " FOR UPDATE"

    async def append_audit(self, event: AuditEvent, chain: AuditChainer) -> AuditEvent:
        async with self._transaction(write=True) as tx:
            row = await tx.fetchone(
                f"SELECT head_seq, head_hash FROM audit_chain WHERE id = 1{self._HEAD_LOCK}"
            )
            head = None if row is None else _head(row)
            linked = chain.link(event, head)
            await tx.execute(
                f"INSERT INTO audit_events ({_AUDIT_COLUMNS}) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    linked.seq,
                    linked.at,
                    linked.action,
                    linked.outcome,
                    linked.actor,
                    linked.role,
                    linked.entity_type,
                    linked.entity_id,
                    linked.ip_hash,
                    linked.user_agent,
                    linked.correlation_id,
                    orjson.dumps(linked.detail, option=orjson.OPT_SORT_KEYS).decode(),
                    linked.prev_hash,
                    linked.hash,
                ),
            )
            await tx.execute(
                "UPDATE audit_chain SET head_seq = ?, head_hash = ? WHERE id = 1",
                (linked.seq, linked.hash),
            )
        return linked

    async def query_audit(self, query: AuditQuery) -> list[AuditEvent]:
        clauses: list[str] = []
        params: list[Any] = []
        if query.action is not None:
            if query.action.endswith("."):
                clauses.append("substr(action, 1, ?) = ?")
                params += [len(query.action), query.action]
            else:
                clauses.append("action = ?")
                params.append(query.action)
        for column in ("actor", "outcome", "entity_type", "entity_id"):
            value = getattr(query, column)
            if value is not None:
                clauses.append(f"{column} = ?")
                params.append(value)
        if query.since is not None:
            clauses.append("at >= ?")
            params.append(query.since)
        if query.until is not None:
            clauses.append("at < ?")
            params.append(query.until)
        if query.newest_first:
            if query.before_seq is not None:
                clauses.append("seq < ?")
                params.append(query.before_seq)
            order = "DESC"
        else:
            clauses.append("seq > ?")
            params.append(query.after_seq)
            order = "ASC"
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        return await self._all(
            f"SELECT {_AUDIT_COLUMNS} FROM audit_events {where} ORDER BY seq {order} LIMIT ?",
            (*params, page(query.limit)),
            _audit,
        )

    async def iter_audit(self, after_seq: int, limit: int) -> list[AuditEvent]:
        return await self._all(
            f"SELECT {_AUDIT_COLUMNS} FROM audit_events WHERE seq > ? ORDER BY seq LIMIT ?",
            (after_seq, page(limit)),
            _audit,
        )

    async def audit_head(self) -> ChainHead | None:
        return await self._one(
            "SELECT head_seq, head_hash FROM audit_chain WHERE id = 1", (), _head
        )

    async def audit_anchor(self) -> ChainHead | None:
        return await self._one(
            "SELECT anchor_seq, anchor_hash FROM audit_chain WHERE id = 1", (), _head
        )

    async def delete_audit_before(self, cutoff: float, limit: int) -> int:
        async with self._transaction(write=True) as tx:
            # Lock the chain row first: appends and deletions of the prefix serialise.
            await tx.fetchone(f"SELECT head_seq FROM audit_chain WHERE id = 1{self._HEAD_LOCK}")
            rows = await tx.fetchall(
                "SELECT seq, hash, at FROM audit_events ORDER BY seq LIMIT ?", (page(limit),)
            )
            prefix: list[Row] = []
            for row in rows:
                if row[2] >= cutoff:
                    break
                prefix.append(row)
            if not prefix:
                return 0
            last_seq, last_hash = prefix[-1][0], prefix[-1][1]
            await tx.execute("DELETE FROM audit_events WHERE seq <= ?", (last_seq,))
            await tx.execute(
                "UPDATE audit_chain SET anchor_seq = ?, anchor_hash = ? WHERE id = 1",
                (last_seq, last_hash),
            )
        return len(prefix)
