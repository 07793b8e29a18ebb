"""Call records: written as a call goes, found by number index for data-subject requests,
re-encrypted on key rotation, deleted by retention."""

from __future__ import annotations

from typing import Any

import orjson

from gateway.records.base import CallQuery, CallRecord
from gateway.records.sql.queries import Row, SqlQueries, page

_CALL_COLUMNS = (
    "call_id, carrier, carrier_call_id, started_at, providers, ended_at, outcome, failovers, "
    "from_number, to_number, from_index, to_index, key_id, recording_path, agent, transfer_to"
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
        agent=row[14],
        transfer_to=row[15],
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
        call.agent,
        call.transfer_to,
    )


class CallQueries(SqlQueries):
    """The ``Store`` methods of call records."""

    async def put_call(self, call: CallRecord) -> None:
        updates = ", ".join(
            f"{column} = excluded.{column}"
            for column in (c.strip() for c in _CALL_COLUMNS.split(","))
            if column != "call_id"
        )
        await self._write(
            f"INSERT INTO calls ({_CALL_COLUMNS}) VALUES "
            "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
            f"ON CONFLICT (call_id) DO UPDATE SET {updates}",
            _call_params(call),
        )

    async def get_call(self, call_id: str) -> CallRecord | None:
        return await self._one(
            f"SELECT {_CALL_COLUMNS} FROM calls WHERE call_id = ?", (call_id,), _call
        )

    async def list_calls(
        self, *, limit: int = 100, before: float | None = None
    ) -> list[CallRecord]:
        where, params = ("WHERE started_at < ?", (before,)) if before is not None else ("", ())
        return await self._all(
            f"SELECT {_CALL_COLUMNS} FROM calls {where} "
            "ORDER BY started_at DESC, call_id DESC LIMIT ?",
            (*params, page(limit)),
            _call,
        )

    async def query_calls(self, query: CallQuery) -> list[CallRecord]:
        where: list[str] = []
        params: list[Any] = []
        for column, value in (
            ("agent", query.agent),
            ("carrier", query.carrier),
            ("outcome", query.outcome),
        ):
            if value is not None:
                where.append(f"{column} = ?")
                params.append(value)
        if query.ended is not None:
            where.append("ended_at IS NOT NULL" if query.ended else "ended_at IS NULL")
        if query.since is not None:
            where.append("started_at >= ?")
            params.append(query.since)
        if query.until is not None:
            where.append("started_at < ?")
            params.append(query.until)
        if query.before is not None:
            at, call_id = query.before
            where.append("(started_at < ? OR (started_at = ? AND call_id < ?))")
            params.extend((at, at, call_id))
        clause = f"WHERE {' AND '.join(where)} " if where else ""
        return await self._all(
            f"SELECT {_CALL_COLUMNS} FROM calls {clause}"
            "ORDER BY started_at DESC, call_id DESC LIMIT ?",
            (*params, page(query.limit)),
            _call,
        )

    async def find_calls(self, number_index: str) -> list[CallRecord]:
        return await self._all(
            f"SELECT {_CALL_COLUMNS} FROM calls WHERE from_index = ? OR to_index = ? "
            "ORDER BY started_at, call_id",
            (number_index, number_index),
            _call,
        )

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
                (cutoff, page(limit)),
            )
        return sorted((_call(row) for row in rows), key=lambda c: (c.started_at, c.call_id))

    async def open_calls(
        self, started_before: float, limit: int, *, after: float | None = None
    ) -> list[CallRecord]:
        return await self._all(
            f"SELECT {_CALL_COLUMNS} FROM calls WHERE ended_at IS NULL "
            "AND started_at < ? AND started_at > ? ORDER BY started_at, call_id LIMIT ?",
            (started_before, -1.0 if after is None else after, page(limit)),
            _call,
        )

    async def calls_with_key(self, key_id: str, limit: int) -> list[CallRecord]:
        return await self._all(
            f"SELECT {_CALL_COLUMNS} FROM calls WHERE key_id = ? ORDER BY call_id LIMIT ?",
            (key_id, page(limit)),
            _call,
        )

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
        changed = await self._write(
            "UPDATE calls SET from_number = ?, to_number = ?, key_id = ? "
            "WHERE call_id = ? AND key_id = ?",
            (from_number, to_number, key_id, call_id, old_key_id),
        )
        return changed > 0
