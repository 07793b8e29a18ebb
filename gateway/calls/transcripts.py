"""Transcripts of calls: the caller's and the agent's turns, encrypted at rest.

``TranscriptLog.append`` stores one turn as the provider's transcription reports it (a
``providers.events.Transcript``), encrypted with the active data key and bound to the call id
and the turn's seq; it never raises into the call. ``read`` returns a call's turns decrypted,
in order. The text is personal data: it never appears in a log line, a metric or an error
message (a ``Turn``'s ``repr`` leaves it out).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final

from gateway.calls.state import Call
from gateway.records.base import DuplicateError, Store, TurnRole
from gateway.records.privacy import open_turn, seal_turn
from security.crypto import KeyRing

__all__ = ["MAX_TURN_CHARS", "TranscriptLog", "Turn", "turn_role"]

log = logging.getLogger("voicegw.transcripts")

MAX_TURN_CHARS: Final = 32_000
"""A longer turn is cut to this many characters (one turn is seconds of speech; this bounds
what a misbehaving provider can make us store)."""

_ROLES: Final = {
    "user": TurnRole.CALLER,  # the providers' name for the caller
    "caller": TurnRole.CALLER,
    "agent": TurnRole.AGENT,
    "assistant": TurnRole.AGENT,
}


def turn_role(role: str) -> TurnRole | None:
    """The stored role of a provider's transcript role; ``None`` for one we do not know."""
    return _ROLES.get(role)


@dataclass(frozen=True, slots=True)
class Turn:
    """One turn in clear. ``at`` is when it was stored (Unix seconds)."""

    seq: int
    role: TurnRole
    at: float
    text: str = field(repr=False)


class TranscriptLog:
    """Turns of calls in ``store``, encrypted with ``data_keys``.

    Counters (for metrics and tests): ``stored`` turns, ``failures`` (the store or the
    encryption failed; the turn is lost and the call goes on), ``dropped`` (empty text or a
    role we do not know), ``truncated`` (longer than ``MAX_TURN_CHARS``).
    """

    __slots__ = (
        "_clock",
        "_next_seq",
        "data_keys",
        "dropped",
        "failures",
        "store",
        "stored",
        "truncated",
    )

    def __init__(
        self, *, store: Store, data_keys: KeyRing, clock: Callable[[], float] = time.time
    ) -> None:
        self.store = store
        self.data_keys = data_keys
        self._clock = clock
        self._next_seq: dict[str, int] = {}
        self.stored = self.failures = self.dropped = self.truncated = 0

    async def append(self, call: Call, role: str, text: str) -> bool:
        """Store one turn of ``call`` (``role``: ``"user"``/``"caller"`` or
        ``"agent"``/``"assistant"``); say whether it was stored. Never raises: a failure is
        logged (never the text) and counted. Turns are numbered in the order of the calls to
        ``append``, even when their writes finish out of order."""
        stored_role = turn_role(role)
        if stored_role is None or not text.strip():
            self.dropped += 1
            return False
        if len(text) > MAX_TURN_CHARS:
            text = text[:MAX_TURN_CHARS]
            self.truncated += 1
        # Taken before any await, so concurrent appends of one call never share a seq.
        seq = self._take_seq(call.call_id)
        try:
            try:
                await self._write(call.call_id, seq, stored_role, text)
            except DuplicateError:
                # Turns of this call id were stored by an earlier process: continue after them.
                self._next_seq[call.call_id] = await self.store.last_turn_seq(call.call_id) + 1
                seq = self._take_seq(call.call_id)
                await self._write(call.call_id, seq, stored_role, text)
        except Exception as exc:  # the call goes on; the gap is logged without the text
            self.failures += 1
            log.error(
                "transcript turn not stored",
                extra={"call_id": call.call_id, "seq": seq, "error": type(exc).__name__},
            )
            return False
        self.stored += 1
        return True

    def end(self, call_id: str) -> None:
        """Forget ``call_id``'s turn counter once the call has ended (its turns stay stored)."""
        self._next_seq.pop(call_id, None)

    async def read(self, call_id: str) -> list[Turn]:
        """The call's turns in order, decrypted. Raises ``StoreError`` and ``DecryptionError``."""
        return [
            Turn(seq=t.seq, role=t.role, at=t.at, text=open_turn(self.data_keys, t))
            for t in await self.store.get_transcript(call_id)
        ]

    def _take_seq(self, call_id: str) -> int:
        seq = self._next_seq.get(call_id, 1)
        self._next_seq[call_id] = seq + 1
        return seq

    async def _write(self, call_id: str, seq: int, role: TurnRole, text: str) -> None:
        turn = seal_turn(
            self.data_keys, call_id=call_id, seq=seq, role=role, text=text, at=self._clock()
        )
        await self.store.add_turn(turn)
