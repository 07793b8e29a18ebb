"""The call events outbox: events written with the call, leased to one sender at a time,
settled (delivered, retried, dead), revived by an operator, deleted by retention.

A claim is one ``UPDATE ... RETURNING`` whose ``WHERE`` repeats the lease test, so concurrent
claims never return the same event: on PostgreSQL the candidate rows are locked ``FOR UPDATE
SKIP LOCKED`` (a second replica skips them) and the outer test is re-checked on the newest row
version; on SQLite write transactions are serialised (``BEGIN IMMEDIATE``).
"""

from __future__ import annotations

from gateway.records.base import EventState, OutboxEvent
from gateway.records.migrations import Dialect
from gateway.records.sql.queries import Row, SqlQueries, page

_COLUMNS = (
    "event_id, call_id, type, body, created_at, next_attempt_at, give_up_at, seq, state, "
    "attempts, claim, claimed_until, delivered_at, last_error"
)
_PENDING = EventState.PENDING.value
# The oldest pending event of its call (``e``): only it may be sent, so a call's events arrive
# in order.
_HEAD = (
    "NOT EXISTS (SELECT 1 FROM event_outbox p WHERE p.call_id = e.call_id "
    f"AND p.state = '{_PENDING}' AND p.seq < e.seq)"
)


def _event(row: Row) -> OutboxEvent:
    return OutboxEvent(
        event_id=row[0],
        call_id=row[1],
        type=row[2],
        body=row[3],
        created_at=row[4],
        next_attempt_at=row[5],
        give_up_at=row[6],
        seq=row[7],
        state=EventState(row[8]),
        attempts=row[9],
        claim=row[10],
        claimed_until=row[11],
        delivered_at=row[12],
        last_error=row[13],
    )


class OutboxQueries(SqlQueries):
    """The ``Store`` methods of the call events outbox."""

    dialect: Dialect

    async def add_event(self, event: OutboxEvent) -> int:
        async with self._transaction(write=True) as tx:
            row = await tx.fetchone(
                "SELECT coalesce(max(seq), 0) + 1 FROM event_outbox WHERE call_id = ?",
                (event.call_id,),
            )
            seq = int(row[0]) if row else 1
            await tx.execute(
                "INSERT INTO event_outbox (event_id, call_id, type, body, created_at, "
                "next_attempt_at, give_up_at, seq, state, attempts) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 0)",
                (
                    event.event_id,
                    event.call_id,
                    event.type,
                    event.body,
                    event.created_at,
                    event.next_attempt_at,
                    event.give_up_at,
                    seq,
                    _PENDING,
                ),
            )
        return seq

    async def claim_events(
        self, now: float, claim: str, claimed_until: float, limit: int
    ) -> list[OutboxEvent]:
        lock = " FOR UPDATE SKIP LOCKED" if self.dialect is Dialect.POSTGRES else ""
        free = "(claimed_until IS NULL OR claimed_until <= ?)"
        async with self._transaction(write=True) as tx:
            rows = await tx.fetchall(
                f"UPDATE event_outbox SET claim = ?, claimed_until = ? WHERE event_id IN ("
                "SELECT e.event_id FROM event_outbox e "
                f"WHERE e.state = '{_PENDING}' AND e.next_attempt_at <= ? "
                f"AND (e.claimed_until IS NULL OR e.claimed_until <= ?) AND {_HEAD} "
                f"ORDER BY e.next_attempt_at, e.created_at, e.seq LIMIT ?{lock}"
                f") AND state = '{_PENDING}' AND {free} RETURNING {_COLUMNS}",
                (claim, claimed_until, now, now, page(limit), now),
            )
        events = [_event(row) for row in rows]
        return sorted(events, key=lambda e: (e.next_attempt_at, e.created_at, e.seq))

    async def next_event_due(self) -> float | None:
        row = await self._one(
            "SELECT min(CASE WHEN e.claimed_until IS NOT NULL "
            "AND e.claimed_until > e.next_attempt_at THEN e.claimed_until "
            "ELSE e.next_attempt_at END) "
            f"FROM event_outbox e WHERE e.state = '{_PENDING}' AND {_HEAD}",
            (),
            lambda r: r[0],
        )
        return None if row is None else float(row)

    async def event_delivered(self, event_id: str, at: float) -> bool:
        changed = await self._write(
            "UPDATE event_outbox SET state = ?, delivered_at = ?, attempts = attempts + 1, "
            "claim = NULL, claimed_until = NULL, last_error = NULL "
            "WHERE event_id = ? AND state = ?",
            (EventState.DELIVERED.value, at, event_id, _PENDING),
        )
        return changed > 0

    async def event_failed(
        self, event_id: str, claim: str, *, error: str, next_attempt_at: float | None
    ) -> bool:
        dead = next_attempt_at is None
        changed = await self._write(
            "UPDATE event_outbox SET state = ?, attempts = attempts + 1, last_error = ?, "
            "next_attempt_at = CASE WHEN ? = 1 THEN next_attempt_at ELSE ? END, "
            "claim = NULL, claimed_until = NULL "
            "WHERE event_id = ? AND claim = ? AND state = ?",
            (
                (EventState.DEAD if dead else EventState.PENDING).value,
                error[:64],
                int(dead),
                0.0 if next_attempt_at is None else next_attempt_at,
                event_id,
                claim,
                _PENDING,
            ),
        )
        return changed > 0

    async def release_event(self, event_id: str, claim: str) -> bool:
        changed = await self._write(
            "UPDATE event_outbox SET claim = NULL, claimed_until = NULL "
            "WHERE event_id = ? AND claim = ? AND state = ?",
            (event_id, claim, _PENDING),
        )
        return changed > 0

    async def get_event(self, event_id: str) -> OutboxEvent | None:
        return await self._one(
            f"SELECT {_COLUMNS} FROM event_outbox WHERE event_id = ?", (event_id,), _event
        )

    async def list_events(
        self, *, state: EventState | None = None, limit: int = 100
    ) -> list[OutboxEvent]:
        where = "" if state is None else "WHERE state = ? "
        params: tuple[object, ...] = () if state is None else (state.value,)
        return await self._all(
            f"SELECT {_COLUMNS} FROM event_outbox {where}"
            "ORDER BY created_at DESC, call_id, seq DESC LIMIT ?",
            (*params, page(limit)),
            _event,
        )

    async def count_events(self, state: EventState) -> int:
        count = await self._one(
            "SELECT count(*) FROM event_outbox WHERE state = ?", (state.value,), lambda r: r[0]
        )
        return int(count or 0)

    async def requeue_event(self, event_id: str, now: float, give_up_at: float) -> bool:
        changed = await self._write(
            "UPDATE event_outbox SET state = ?, next_attempt_at = ?, give_up_at = ?, "
            "claim = NULL, claimed_until = NULL WHERE event_id = ? AND state = ?",
            (_PENDING, now, give_up_at, event_id, EventState.DEAD.value),
        )
        return changed > 0

    async def requeue_dead_events(self, now: float, give_up_at: float) -> int:
        return await self._write(
            "UPDATE event_outbox SET state = ?, next_attempt_at = ?, give_up_at = ?, "
            "claim = NULL, claimed_until = NULL WHERE state = ?",
            (_PENDING, now, give_up_at, EventState.DEAD.value),
        )

    async def delete_delivered_events_before(self, cutoff: float, limit: int) -> int:
        return await self._write(
            "DELETE FROM event_outbox WHERE event_id IN (SELECT event_id FROM event_outbox "
            "WHERE state = ? AND delivered_at < ? ORDER BY delivered_at LIMIT ?)",
            (EventState.DELIVERED.value, cutoff, page(limit)),
        )
