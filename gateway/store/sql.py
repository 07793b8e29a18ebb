"""The ``Store`` methods, written once over a small transaction interface.

``SqlStore`` holds every query; a backend supplies ``_transaction`` (a context manager
yielding a ``Tx``) and its dialect. SQL is written with ``?`` placeholders, which the
PostgreSQL backend turns into ``%s``; everything else is portable between SQLite 3.35+ and
PostgreSQL 12+ (``ON CONFLICT``, ``RETURNING``, ``CASE``).
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any, Protocol

import orjson

from gateway.store.base import (
    MAX_PAGE,
    ApiKeyRecord,
    AuditChainer,
    AuditEvent,
    AuditQuery,
    CallRecord,
    ChainHead,
    LastRun,
    NotFoundError,
    RejectionCount,
    Role,
    StoreError,
    SubjectRequest,
    UserRecord,
)
from gateway.store.migrations import Dialect
from security.lockout import FailureCounts

Row = tuple[Any, ...]


class Tx(Protocol):
    """One transaction. Every method raises ``StoreError`` subclasses only."""

    async def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        """Run a statement; return the number of rows it changed."""
        ...

    async def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[Row]: ...

    async def fetchone(self, sql: str, params: Sequence[Any] = ()) -> Row | None: ...


_USER_COLUMNS = "user_id, username, role, password_hash, disabled, created_at, password_changed_at"
_KEY_COLUMNS = "key_id, name, role, key_hash, created_at, expires_at, revoked_at, last_used_at"
_CALL_COLUMNS = (
    "call_id, carrier, carrier_call_id, started_at, providers, ended_at, outcome, failovers, "
    "from_number, to_number, from_index, to_index, key_id, recording_path"
)
_AUDIT_COLUMNS = (
    "seq, at, action, outcome, actor, role, entity_type, entity_id, ip_hash, user_agent, "
    "correlation_id, detail, prev_hash, hash"
)
_DSR_COLUMNS = (
    "request_id, kind, subject_index, requested_by, status, created_at, completed_at, items"
)


def _page(limit: int) -> int:
    return max(0, min(limit, MAX_PAGE))


def _user(row: Row) -> UserRecord:
    return UserRecord(
        user_id=row[0],
        username=row[1],
        role=Role(row[2]),
        password_hash=row[3],
        disabled=bool(row[4]),
        created_at=row[5],
        password_changed_at=row[6],
    )


def _key(row: Row) -> ApiKeyRecord:
    return ApiKeyRecord(
        key_id=row[0],
        name=row[1],
        role=Role(row[2]),
        key_hash=row[3],
        created_at=row[4],
        expires_at=row[5],
        revoked_at=row[6],
        last_used_at=row[7],
    )


def _call(row: Row) -> CallRecord:
    return CallRecord(
        call_id=row[0],
        carrier=row[1],
        carrier_call_id=row[2],
        started_at=row[3],
        providers=tuple(orjson.loads(row[4])),
        ended_at=row[5],
        outcome=row[6],
        failovers=row[7],
        from_number=None if row[8] is None else bytes(row[8]),
        to_number=None if row[9] is None else bytes(row[9]),
        from_index=row[10],
        to_index=row[11],
        key_id=row[12],
        recording_path=row[13],
    )


def _detail(raw: str) -> dict[str, Any]:
    # A damaged row must still load, so that verification can point at it.
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return {"_unparseable": raw}
    return value if isinstance(value, dict) else {"_unparseable": raw}


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
        detail=_detail(row[11]),
        prev_hash=row[12],
        hash=row[13],
    )


def _dsr(row: Row) -> SubjectRequest:
    return SubjectRequest(
        request_id=row[0],
        kind=row[1],
        subject_index=row[2],
        requested_by=row[3],
        status=row[4],
        created_at=row[5],
        completed_at=row[6],
        items=row[7],
    )


def _call_params(call: CallRecord) -> tuple[Any, ...]:
    return (
        call.call_id,
        call.carrier,
        call.carrier_call_id,
        call.started_at,
        orjson.dumps(list(call.providers)).decode(),
        call.ended_at,
        call.outcome,
        call.failovers,
        call.from_number,
        call.to_number,
        call.from_index,
        call.to_index,
        call.key_id,
        call.recording_path,
    )


class SqlStore(abc.ABC):
    """Every ``Store`` method over ``_transaction``; backends subclass it."""

    dialect: Dialect

    @abc.abstractmethod
    def _transaction(self, *, write: bool = False) -> AbstractAsyncContextManager[Tx]:
        """A transaction; ``write`` ones take the write lock up front where that matters."""

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

    # -- users -----------------------------------------------------------------------------

    async def add_user(self, user: UserRecord) -> None:
        async with self._transaction(write=True) as tx:
            await tx.execute(
                f"INSERT INTO users ({_USER_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    user.user_id,
                    user.username,
                    str(user.role),
                    user.password_hash,
                    user.disabled,
                    user.created_at,
                    user.password_changed_at,
                ),
            )

    async def get_user(self, username: str) -> UserRecord | None:
        async with self._transaction() as tx:
            row = await tx.fetchone(
                f"SELECT {_USER_COLUMNS} FROM users WHERE username = ?", (username,)
            )
        return None if row is None else _user(row)

    async def get_user_by_id(self, user_id: str) -> UserRecord | None:
        async with self._transaction() as tx:
            row = await tx.fetchone(
                f"SELECT {_USER_COLUMNS} FROM users WHERE user_id = ?", (user_id,)
            )
        return None if row is None else _user(row)

    async def list_users(self) -> list[UserRecord]:
        async with self._transaction() as tx:
            rows = await tx.fetchall(f"SELECT {_USER_COLUMNS} FROM users ORDER BY username")
        return [_user(row) for row in rows]

    async def update_user(self, user: UserRecord) -> None:
        async with self._transaction(write=True) as tx:
            changed = await tx.execute(
                "UPDATE users SET username = ?, role = ?, password_hash = ?, disabled = ?, "
                "created_at = ?, password_changed_at = ? WHERE user_id = ?",
                (
                    user.username,
                    str(user.role),
                    user.password_hash,
                    user.disabled,
                    user.created_at,
                    user.password_changed_at,
                    user.user_id,
                ),
            )
        if not changed:
            raise NotFoundError(f"no user with id {user.user_id!r}")

    async def delete_user(self, user_id: str) -> bool:
        async with self._transaction(write=True) as tx:
            return await tx.execute("DELETE FROM users WHERE user_id = ?", (user_id,)) > 0

    async def add_login_failure(self, username: str, at: float, network: str = "") -> None:
        async with self._transaction(write=True) as tx:
            await tx.execute(
                "INSERT INTO login_failures (username, network, at) VALUES (?, ?, ?)",
                (username, network, at),
            )

    async def count_login_failures(self, username: str, since: float) -> int:
        async with self._transaction() as tx:
            row = await tx.fetchone(
                "SELECT count(*) FROM login_failures WHERE username = ? AND at >= ?",
                (username, since),
            )
        return int(row[0]) if row else 0

    async def login_failure_counts(
        self, username: str, network: str, since: float, cap: int
    ) -> FailureCounts:
        async with self._transaction() as tx:
            row = await tx.fetchone(
                "SELECT coalesce(sum(CASE WHEN network = ? THEN n ELSE 0 END), 0), "
                "coalesce(sum(CASE WHEN n > ? THEN ? ELSE n END), 0), coalesce(max(latest), 0) "
                "FROM (SELECT network, count(*) AS n, max(at) AS latest FROM login_failures "
                "WHERE username = ? AND at >= ? GROUP BY network) AS per_network",
                (network, cap, cap, username, since),
            )
        if row is None:
            return FailureCounts(0, 0, 0.0)
        return FailureCounts(int(row[0]), int(row[1]), float(row[2]))

    async def clear_login_failures(self, username: str, network: str | None = None) -> int:
        async with self._transaction(write=True) as tx:
            if network is None:
                sql, params = "DELETE FROM login_failures WHERE username = ?", (username,)
                return await tx.execute(sql, params)
            return await tx.execute(
                "DELETE FROM login_failures WHERE username = ? AND network = ?",
                (username, network),
            )

    async def delete_login_failures_before(self, cutoff: float) -> int:
        async with self._transaction(write=True) as tx:
            rows = await tx.fetchall(
                "DELETE FROM login_failures WHERE at < ? RETURNING at", (cutoff,)
            )
        return len(rows)

    # -- API keys --------------------------------------------------------------------------

    async def add_api_key(self, key: ApiKeyRecord) -> None:
        async with self._transaction(write=True) as tx:
            await tx.execute(
                f"INSERT INTO api_keys ({_KEY_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    key.key_id,
                    key.name,
                    str(key.role),
                    key.key_hash,
                    key.created_at,
                    key.expires_at,
                    key.revoked_at,
                    key.last_used_at,
                ),
            )

    async def get_api_key(self, key_id: str) -> ApiKeyRecord | None:
        async with self._transaction() as tx:
            row = await tx.fetchone(
                f"SELECT {_KEY_COLUMNS} FROM api_keys WHERE key_id = ?", (key_id,)
            )
        return None if row is None else _key(row)

    async def list_api_keys(self) -> list[ApiKeyRecord]:
        async with self._transaction() as tx:
            rows = await tx.fetchall(
                f"SELECT {_KEY_COLUMNS} FROM api_keys ORDER BY created_at, key_id"
            )
        return [_key(row) for row in rows]

    async def update_api_key(self, key: ApiKeyRecord) -> None:
        async with self._transaction(write=True) as tx:
            changed = await tx.execute(
                "UPDATE api_keys SET name = ?, role = ?, key_hash = ?, created_at = ?, "
                "expires_at = ?, revoked_at = ?, last_used_at = ? WHERE key_id = ?",
                (
                    key.name,
                    str(key.role),
                    key.key_hash,
                    key.created_at,
                    key.expires_at,
                    key.revoked_at,
                    key.last_used_at,
                    key.key_id,
                ),
            )
        if not changed:
            raise NotFoundError(f"no API key {key.key_id!r}")

    async def touch_api_key(self, key_id: str, at: float) -> None:
        async with self._transaction(write=True) as tx:
            await tx.execute("UPDATE api_keys SET last_used_at = ? WHERE key_id = ?", (at, key_id))

    # -- calls -----------------------------------------------------------------------------

    async def put_call(self, call: CallRecord) -> None:
        updates = ", ".join(
            f"{column} = excluded.{column}"
            for column in (c.strip() for c in _CALL_COLUMNS.split(","))
            if column != "call_id"
        )
        async with self._transaction(write=True) as tx:
            await tx.execute(
                f"INSERT INTO calls ({_CALL_COLUMNS}) VALUES "
                "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
                f"ON CONFLICT (call_id) DO UPDATE SET {updates}",
                _call_params(call),
            )

    async def get_call(self, call_id: str) -> CallRecord | None:
        async with self._transaction() as tx:
            row = await tx.fetchone(
                f"SELECT {_CALL_COLUMNS} FROM calls WHERE call_id = ?", (call_id,)
            )
        return None if row is None else _call(row)

    async def list_calls(
        self, *, limit: int = 100, before: float | None = None
    ) -> list[CallRecord]:
        where, params = ("WHERE started_at < ?", (before,)) if before is not None else ("", ())
        async with self._transaction() as tx:
            rows = await tx.fetchall(
                f"SELECT {_CALL_COLUMNS} FROM calls {where} "
                "ORDER BY started_at DESC, call_id DESC LIMIT ?",
                (*params, _page(limit)),
            )
        return [_call(row) for row in rows]

    async def find_calls(self, number_index: str) -> list[CallRecord]:
        async with self._transaction() as tx:
            rows = await tx.fetchall(
                f"SELECT {_CALL_COLUMNS} FROM calls WHERE from_index = ? OR to_index = ? "
                "ORDER BY started_at, call_id",
                (number_index, number_index),
            )
        return [_call(row) for row in rows]

    async def erase_call_numbers(self, number_index: str) -> list[CallRecord]:
        index = number_index
        async with self._transaction(write=True) as tx:
            rows = await tx.fetchall(
                f"SELECT {_CALL_COLUMNS} FROM calls WHERE from_index = ? OR to_index = ? "
                "ORDER BY started_at, call_id",
                (index, index),
            )
            # Every CASE reads the row as it was before this UPDATE.
            await tx.execute(
                "UPDATE calls SET "
                "from_number = CASE WHEN from_index = ? THEN NULL ELSE from_number END, "
                "to_number = CASE WHEN to_index = ? THEN NULL ELSE to_number END, "
                "key_id = CASE WHEN (from_number IS NULL OR from_index = ?) "
                "AND (to_number IS NULL OR to_index = ?) THEN NULL ELSE key_id END, "
                "from_index = CASE WHEN from_index = ? THEN NULL ELSE from_index END, "
                "to_index = CASE WHEN to_index = ? THEN NULL ELSE to_index END, "
                "recording_path = NULL "
                "WHERE from_index = ? OR to_index = ?",
                (index,) * 8,
            )
        return [_call(row) for row in rows]

    async def delete_calls_before(self, cutoff: float, limit: int) -> list[CallRecord]:
        # RETURNING reports exactly the rows this transaction deleted, so concurrent sweepers
        # on several replicas never both claim (and count) one call.
        async with self._transaction(write=True) as tx:
            rows = await tx.fetchall(
                "DELETE FROM calls WHERE call_id IN (SELECT call_id FROM calls "
                "WHERE started_at < ? ORDER BY started_at, call_id LIMIT ?) "
                f"RETURNING {_CALL_COLUMNS}",
                (cutoff, _page(limit)),
            )
        return sorted((_call(row) for row in rows), key=lambda c: (c.started_at, c.call_id))

    async def open_calls(
        self, started_before: float, limit: int, *, after: float | None = None
    ) -> list[CallRecord]:
        async with self._transaction() as tx:
            rows = await tx.fetchall(
                f"SELECT {_CALL_COLUMNS} FROM calls WHERE ended_at IS NULL "
                "AND started_at < ? AND started_at > ? ORDER BY started_at, call_id LIMIT ?",
                (started_before, -1.0 if after is None else after, _page(limit)),
            )
        return [_call(row) for row in rows]

    async def calls_with_key(self, key_id: str, limit: int) -> list[CallRecord]:
        async with self._transaction() as tx:
            rows = await tx.fetchall(
                f"SELECT {_CALL_COLUMNS} FROM calls WHERE key_id = ? ORDER BY call_id LIMIT ?",
                (key_id, _page(limit)),
            )
        return [_call(row) for row in rows]

    async def count_calls_by_key(self) -> dict[str, int]:
        async with self._transaction() as tx:
            rows = await tx.fetchall(
                "SELECT key_id, count(*) FROM calls WHERE key_id IS NOT NULL GROUP BY key_id"
            )
        return {row[0]: int(row[1]) for row in rows}

    async def reencrypt_call(
        self,
        call_id: str,
        old_key_id: str,
        from_number: bytes | None,
        to_number: bytes | None,
        key_id: str,
    ) -> bool:
        async with self._transaction(write=True) as tx:
            changed = await tx.execute(
                "UPDATE calls SET from_number = ?, to_number = ?, key_id = ? "
                "WHERE call_id = ? AND key_id = ?",
                (from_number, to_number, key_id, call_id, old_key_id),
            )
        return changed > 0

    # -- audit trail -----------------------------------------------------------------------

    _HEAD_LOCK = ""  # PostgreSQL: " FOR UPDATE"

    async def append_audit(self, event: AuditEvent, chain: AuditChainer) -> AuditEvent:
        async with self._transaction(write=True) as tx:
            row = await tx.fetchone(
                f"SELECT head_seq, head_hash FROM audit_chain WHERE id = 1{self._HEAD_LOCK}"
            )
            head = None if row is None or row[0] == 0 else ChainHead(int(row[0]), row[1])
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
        async with self._transaction() as tx:
            rows = await tx.fetchall(
                f"SELECT {_AUDIT_COLUMNS} FROM audit_events {where} ORDER BY seq {order} LIMIT ?",
                (*params, _page(query.limit)),
            )
        return [_audit(row) for row in rows]

    async def iter_audit(self, after_seq: int, limit: int) -> list[AuditEvent]:
        async with self._transaction() as tx:
            rows = await tx.fetchall(
                f"SELECT {_AUDIT_COLUMNS} FROM audit_events WHERE seq > ? ORDER BY seq LIMIT ?",
                (after_seq, _page(limit)),
            )
        return [_audit(row) for row in rows]

    async def audit_head(self) -> ChainHead | None:
        async with self._transaction() as tx:
            row = await tx.fetchone("SELECT head_seq, head_hash FROM audit_chain WHERE id = 1")
        return None if row is None or row[0] == 0 else ChainHead(int(row[0]), row[1])

    async def audit_anchor(self) -> ChainHead | None:
        async with self._transaction() as tx:
            row = await tx.fetchone("SELECT anchor_seq, anchor_hash FROM audit_chain WHERE id = 1")
        return None if row is None or row[0] == 0 else ChainHead(int(row[0]), row[1])

    async def delete_audit_before(self, cutoff: float, limit: int) -> int:
        async with self._transaction(write=True) as tx:
            # Lock the chain row first: appends and deletions of the prefix serialise.
            await tx.fetchone(f"SELECT head_seq FROM audit_chain WHERE id = 1{self._HEAD_LOCK}")
            rows = await tx.fetchall(
                "SELECT seq, hash, at FROM audit_events ORDER BY seq LIMIT ?", (_page(limit),)
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

    # -- data-subject requests -------------------------------------------------------------

    async def put_subject_request(self, request: SubjectRequest) -> None:
        async with self._transaction(write=True) as tx:
            await tx.execute(
                f"INSERT INTO subject_requests ({_DSR_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (request_id) DO UPDATE SET kind = excluded.kind, "
                "subject_index = excluded.subject_index, requested_by = excluded.requested_by, "
                "status = excluded.status, created_at = excluded.created_at, "
                "completed_at = excluded.completed_at, items = excluded.items",
                (
                    request.request_id,
                    request.kind,
                    request.subject_index,
                    request.requested_by,
                    request.status,
                    request.created_at,
                    request.completed_at,
                    request.items,
                ),
            )

    async def get_subject_request(self, request_id: str) -> SubjectRequest | None:
        async with self._transaction() as tx:
            row = await tx.fetchone(
                f"SELECT {_DSR_COLUMNS} FROM subject_requests WHERE request_id = ?", (request_id,)
            )
        return None if row is None else _dsr(row)

    async def list_subject_requests(self, limit: int = 100) -> list[SubjectRequest]:
        async with self._transaction() as tx:
            rows = await tx.fetchall(
                f"SELECT {_DSR_COLUMNS} FROM subject_requests "
                "ORDER BY created_at DESC, request_id LIMIT ?",
                (_page(limit),),
            )
        return [_dsr(row) for row in rows]

    async def find_subject_requests(self, subject_index: str) -> list[SubjectRequest]:
        async with self._transaction() as tx:
            rows = await tx.fetchall(
                f"SELECT {_DSR_COLUMNS} FROM subject_requests WHERE subject_index = ? "
                "ORDER BY created_at, request_id",
                (subject_index,),
            )
        return [_dsr(row) for row in rows]

    async def forget_subject_index(self, subject_index: str) -> int:
        async with self._transaction(write=True) as tx:
            return await tx.execute(
                "UPDATE subject_requests SET subject_index = '' WHERE subject_index = ?",
                (subject_index,),
            )

    # -- compliance evidence ---------------------------------------------------------------

    async def put_last_run(self, run: LastRun) -> None:
        async with self._transaction(write=True) as tx:
            await tx.execute(
                "INSERT INTO last_runs (operation, at, outcome, detail) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (operation) DO UPDATE SET at = excluded.at, "
                "outcome = excluded.outcome, detail = excluded.detail",
                (
                    run.operation,
                    run.at,
                    run.outcome,
                    orjson.dumps(run.detail, option=orjson.OPT_SORT_KEYS).decode(),
                ),
            )

    async def get_last_run(self, operation: str) -> LastRun | None:
        async with self._transaction() as tx:
            row = await tx.fetchone(
                "SELECT operation, at, outcome, detail FROM last_runs WHERE operation = ?",
                (operation,),
            )
        if row is None:
            return None
        return LastRun(operation=row[0], at=row[1], outcome=row[2], detail=_detail(row[3]))

    async def add_rejection_counts(self, counts: list[RejectionCount]) -> None:
        async with self._transaction(write=True) as tx:
            for c in counts:
                await tx.execute(
                    "INSERT INTO webhook_rejections (hour, carrier, layer, count) "
                    "VALUES (?, ?, ?, ?) ON CONFLICT (hour, carrier, layer) "
                    "DO UPDATE SET count = webhook_rejections.count + excluded.count",
                    (c.hour, c.carrier, c.layer, c.count),
                )

    async def rejection_counts(self, since_hour: int) -> list[RejectionCount]:
        async with self._transaction() as tx:
            rows = await tx.fetchall(
                "SELECT hour, carrier, layer, count FROM webhook_rejections WHERE hour >= ? "
                "ORDER BY hour, carrier, layer",
                (since_hour,),
            )
        return [RejectionCount(int(r[0]), r[1], r[2], int(r[3])) for r in rows]

    async def delete_rejection_counts_before(self, hour: int) -> int:
        async with self._transaction(write=True) as tx:
            return await tx.execute("DELETE FROM webhook_rejections WHERE hour < ?", (hour,))
