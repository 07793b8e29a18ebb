"""Transcripts: encrypted turns appended as a call goes, read back in order, deleted with their
call (erasure) or by age (retention), and re-encrypted on key rotation."""

from __future__ import annotations

from collections.abc import Sequence

from gateway.records.base import TranscriptTurn, TurnRole
from gateway.records.sql.queries import Row, SqlQueries, page

_TURN_COLUMNS = "call_id, seq, role, at, text, key_id"


def _turn(row: Row) -> TranscriptTurn:
    return TranscriptTurn(
        call_id=row[0],
        seq=int(row[1]),
        role=TurnRole(row[2]),
        at=row[3],
        text=bytes(row[4]),
        key_id=row[5],
    )


class TranscriptQueries(SqlQueries):
    """The ``Store`` methods of transcripts."""

    async def add_turn(self, turn: TranscriptTurn) -> None:
        await self._write(
            f"INSERT INTO transcripts ({_TURN_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?)",
            (turn.call_id, turn.seq, str(turn.role), turn.at, turn.text, turn.key_id),
        )

    async def get_transcript(self, call_id: str) -> list[TranscriptTurn]:
        return await self._all(
            f"SELECT {_TURN_COLUMNS} FROM transcripts WHERE call_id = ? ORDER BY seq",
            (call_id,),
            _turn,
        )

    async def last_turn_seq(self, call_id: str) -> int:
        seq = await self._one(
            "SELECT coalesce(max(seq), 0) FROM transcripts WHERE call_id = ?",
            (call_id,),
            lambda row: int(row[0]),
        )
        return seq or 0

    async def delete_transcripts(self, call_ids: Sequence[str]) -> int:
        if not call_ids:
            return 0
        deleted = 0
        async with self._transaction(write=True) as tx:
            # In chunks: both backends bound the number of parameters of one statement.
            for start in range(0, len(call_ids), 500):
                chunk = list(call_ids[start : start + 500])
                marks = ", ".join("?" * len(chunk))
                deleted += await tx.execute(
                    f"DELETE FROM transcripts WHERE call_id IN ({marks})", chunk
                )
        return deleted

    async def delete_turns_before(self, cutoff: float, limit: int) -> int:
        # RETURNING counts exactly the rows this transaction deleted (sweepers on several
        # replicas never both count one turn).
        async with self._transaction(write=True) as tx:
            rows = await tx.fetchall(
                "DELETE FROM transcripts WHERE (call_id, seq) IN (SELECT call_id, seq "
                "FROM transcripts WHERE at < ? ORDER BY at, call_id, seq LIMIT ?) "
                "RETURNING seq",
                (cutoff, page(limit)),
            )
        return len(rows)

    async def turns_with_key(self, key_id: str, limit: int) -> list[TranscriptTurn]:
        return await self._all(
            f"SELECT {_TURN_COLUMNS} FROM transcripts WHERE key_id = ? "
            "ORDER BY call_id, seq LIMIT ?",
            (key_id, page(limit)),
            _turn,
        )

    async def count_turns_by_key(self) -> dict[str, int]:
        async with self._transaction() as tx:
            rows = await tx.fetchall("SELECT key_id, count(*) FROM transcripts GROUP BY key_id")
        return {row[0]: int(row[1]) for row in rows}

    async def reencrypt_turn(
        self, call_id: str, seq: int, old_key_id: str, text: bytes, key_id: str
    ) -> bool:
        changed = await self._write(
            "UPDATE transcripts SET text = ?, key_id = ? "
            "WHERE call_id = ? AND seq = ? AND key_id = ?",
            (text, key_id, call_id, seq, old_key_id),
        )
        return changed > 0
