"""Calls answered with a media stream that never opened: ended once their stream token has
expired, so a caller does not sit on an answered, silent line.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Final

from redis.exceptions import RedisError

from gateway.calls.control import CallControl
from gateway.calls.records import CallRecords
from gateway.calls.registry import CallRegistry
from gateway.calls.state import Call, CallError, CallState
from security.exceptions import StateUnavailable

log = logging.getLogger("voicegw.runtime")

STREAM_NOT_OPENED: Final = "stream_not_opened"
"""The outcome of a call answered with a stream that never opened before its token expired."""
STREAM_OPEN_GRACE_S: Final = 5.0
"""How long after its token expires a call may still be connecting: a stream that spent its
token just before expiry gets this long to move the call to streaming."""


class UnopenedStreams:
    """Ends the calls in ``registry`` still connecting ``token_ttl_s`` (the stream tokens'
    lifetime) plus ``STREAM_OPEN_GRACE_S`` after they were answered."""

    def __init__(
        self,
        *,
        registry: CallRegistry,
        records: CallRecords,
        control: CallControl,
        token_ttl_s: float,
    ) -> None:
        self.registry = registry
        self.records = records
        self.control = control
        self.token_ttl_s = token_ttl_s

    async def end_expired(self, now: float | None = None) -> list[Call]:
        """End every call still connecting once its stream token has expired (plus
        ``STREAM_OPEN_GRACE_S``): registry ended, durable record closed, carrier told to hang
        up; returns the calls ended. ``now`` is Unix seconds.

        Any replica may run it for every call: the registry's compare-and-set lets exactly one
        end each call, so a call outlives neither the replica that answered it nor its token.
        (A holder that dies first takes its calls with it: the registry expires them after
        ``VOICEGW_CALL_TTL_S`` and the orphan closer completes their records.)"""
        now = time.time() if now is None else now
        cutoff = now - self.token_ttl_s - STREAM_OPEN_GRACE_S
        ended: list[Call] = []
        for call in await self.registry.list_active():
            if call.state is not CallState.CONNECTING or call.updated_at > cutoff:
                continue
            try:
                done = await self.registry.transition(
                    call.call_id, CallState.ENDED, reason=STREAM_NOT_OPENED
                )
            except CallError:  # streaming by now, or ended by someone else first
                continue
            log.warning("stream never opened: call ended", extra={"call_id": call.call_id})
            await self.records.close_call_record(done, STREAM_NOT_OPENED, (), 0)
            self.control.hang_up(done, done.account_id)
            ended.append(done)
        return ended

    async def run(self) -> None:
        """``end_expired`` a few times per token lifetime (at least every 30 s), so a call is
        ended at most about a quarter of that lifetime late."""
        interval = min(30.0, max(1.0, self.token_ttl_s / 4))
        while True:
            await asyncio.sleep(interval)
            try:
                await self.end_expired()
            except (StateUnavailable, RedisError, OSError, TimeoutError, CallError) as exc:
                log.warning("unopened streams not checked", extra={"error": type(exc).__name__})
