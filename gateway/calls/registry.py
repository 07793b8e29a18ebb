"""The live-call registry, in process or shared through Redis.

An ended call is remembered for ``ended_ttl`` (``ENDED_TTL_S`` by default: as long as the
webhook replay cache remembers a delivery), so a late or replayed webhook of an ended call finds
it ended rather than starting a new call.

Two backends implement ``CallRegistry``:

* ``InProcessCallRegistry``, the embedded default for a single process;
* ``RedisCallRegistry`` (``gateway.calls.redis_registry``), shared by the replicas of a
  deployment.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import secrets
import socket
import time
from collections.abc import Awaitable, Callable
from typing import Final, NoReturn, Protocol, TypeVar

from redis.exceptions import RedisError

from gateway.calls.state import (
    Call,
    CallError,
    CallNotFoundError,
    CallState,
    ended_by_replica_loss,
    new_call,
    transitioned,
    with_provider,
)
from providers.events import CallId
from security.webhooks import DEFAULT_REPLAY_TTL_S

__all__ = [
    "ENDED_TTL_S",
    "CallRegistry",
    "InProcessCallRegistry",
    "default_replica_id",
    "keep_alive",
    "when_registry_answers",
]

log = logging.getLogger("voicegw.runtime")

ENDED_TTL_S: Final = float(DEFAULT_REPLAY_TTL_S)
"""How long an ended call is remembered by default: as long as the webhook replay cache
remembers a delivery (the runtime checks the pair at start-up)."""
END_RETRY_S: Final = (0.5, 5.0)
"""First and longest wait between attempts to update a call in the registry while Redis is
down (``when_registry_answers``)."""


def default_replica_id() -> str:
    """Host name and pid plus a random part, so a restarted process never inherits calls."""
    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"


Changed = TypeVar("Changed", Call, Call | None)
"""What a registry update's change returns: the new call, or None for "leave it as it is"."""


class CallRegistry(Protocol):
    """Live calls, shared by every replica that uses the same backend.

    ``transition``, ``set_provider`` and ``remove_replica`` are atomic per call: of two
    conflicting changes exactly one applies, the other raises CallStateError.
    """

    @property
    def replica_id(self) -> str:
        """This process: what ``Call.replica`` says when this replica holds a call."""
        ...

    @property
    def heartbeat_interval(self) -> float:
        """Seconds between two ``heartbeat`` calls."""
        ...

    @property
    def ended_ttl(self) -> float:
        """Seconds an ended call is remembered."""
        ...

    async def create(
        self,
        carrier: str,
        carrier_call_id: str,
        provider: str,
        *,
        account_id: str | None = None,
        agent: str = "default",
        call_id: CallId | None = None,
    ) -> tuple[Call, bool]:
        """Register a ringing call; idempotent per (carrier, carrier_call_id). ``call_id``:
        the gateway call id made for it beforehand (``new_call_id``), when it has one.

        Returns the call and True, or the call already registered for that carrier call id
        (in whatever state) and False. Raises ValueError for an unknown carrier.
        """
        ...

    async def get(self, call_id: CallId) -> Call | None: ...

    async def by_carrier_id(self, carrier: str, carrier_call_id: str) -> Call | None: ...

    async def transition(
        self, call_id: CallId, new_state: CallState, *, reason: str | None = None
    ) -> Call:
        """Move a call to ``new_state``; ``reason`` is recorded when it ends ("normal" if None).

        Moving to connecting or streaming makes this replica the call's holder.
        Raises CallNotFoundError, CallStateError.
        """
        ...

    async def set_provider(self, call_id: CallId, provider: str) -> Call:
        """Record failover to another provider. Raises CallNotFoundError, CallStateError."""
        ...

    async def list_active(self) -> list[Call]:
        """Calls not ended, held by any replica, oldest first."""
        ...

    async def count_active(self) -> int: ...

    async def remove_replica(self, replica_id: str) -> list[Call]:
        """End (reason "replica_lost") the active calls ``replica_id`` holds; returns them."""
        ...

    async def heartbeat(self) -> int:
        """Keep this replica's calls alive; returns how many it holds."""
        ...

    async def live_replicas(self) -> int:
        """Replicas whose heartbeat shows them alive (1 when state is not shared)."""
        ...


async def keep_alive(
    registry: CallRegistry, on_error: Callable[[Exception], None] | None = None
) -> NoReturn:
    """Run ``registry.heartbeat`` every ``heartbeat_interval`` seconds until cancelled.

    A beat that fails on Redis or the network is reported to ``on_error`` and retried at the
    next interval; calls expire only if beats keep failing for the whole active TTL.
    """
    while True:
        try:
            await registry.heartbeat()
        except (RedisError, OSError) as exc:
            if on_error is not None:
                on_error(exc)
        await asyncio.sleep(registry.heartbeat_interval)


async def when_registry_answers(call: Call, update: Callable[[], Awaitable[object]]) -> None:
    """Retry a registry ``update`` of ``call`` that failed while shared state was down, backing
    off from ``END_RETRY_S[0]`` to ``END_RETRY_S[1]``, until it succeeds or is moot."""
    delay, longest = END_RETRY_S
    while True:
        await asyncio.sleep(delay)
        try:
            await update()
        except (RedisError, OSError, TimeoutError):
            delay = min(delay * 2, longest)
        except CallError as exc:
            # Moot now: the call has ended or its record expired (an outage longer than
            # VOICEGW_CALL_TTL_S). Nothing left to update.
            log.info(
                "call registry update dropped",
                extra={"call_id": call.call_id, "error": type(exc).__name__},
            )
            return
        else:
            log.info("call registry updated", extra={"call_id": call.call_id})
            return


# -- in process --------------------------------------------------------------------------------


class _Store:
    __slots__ = ("by_carrier", "calls", "ended_ttl", "expiries")

    def __init__(self, ended_ttl: float) -> None:
        self.ended_ttl = ended_ttl
        self.calls: dict[CallId, Call] = {}
        self.by_carrier: dict[tuple[str, str], CallId] = {}
        # Ended calls in the order they ended, with the monotonic time they go.
        self.expiries: collections.deque[tuple[float, CallId]] = collections.deque()

    def purge(self) -> None:
        now = time.monotonic()
        while self.expiries and self.expiries[0][0] <= now:
            _, call_id = self.expiries.popleft()
            call = self.calls.pop(call_id, None)
            if call is not None:
                self.by_carrier.pop((call.carrier, call.carrier_call_id), None)


class InProcessCallRegistry:
    """``CallRegistry`` in this process's memory. Changes are atomic because nothing here
    awaits; ``sibling`` gives another replica's view of the same store (tests, simulations)."""

    heartbeat_interval: float = 60.0  # active calls never expire here; beats only count

    def __init__(
        self,
        replica_id: str | None = None,
        *,
        ended_ttl: float = ENDED_TTL_S,
        _store: _Store | None = None,
    ) -> None:
        self._replica_id = replica_id or default_replica_id()
        self._store = _store if _store is not None else _Store(ended_ttl)

    @property
    def replica_id(self) -> str:
        return self._replica_id

    @property
    def ended_ttl(self) -> float:
        return self._store.ended_ttl

    def sibling(self, replica_id: str) -> InProcessCallRegistry:
        """A registry for another replica sharing this one's calls."""
        return InProcessCallRegistry(replica_id, _store=self._store)

    async def create(
        self,
        carrier: str,
        carrier_call_id: str,
        provider: str,
        *,
        account_id: str | None = None,
        agent: str = "default",
        call_id: CallId | None = None,
    ) -> tuple[Call, bool]:
        call = new_call(
            carrier, carrier_call_id, provider, self._replica_id, account_id, agent, call_id
        )
        store = self._store
        store.purge()
        existing = store.by_carrier.get((carrier, carrier_call_id))
        if existing is not None:
            return store.calls[existing], False
        store.calls[call.call_id] = call
        store.by_carrier[(carrier, carrier_call_id)] = call.call_id
        return call, True

    async def get(self, call_id: CallId) -> Call | None:
        self._store.purge()
        return self._store.calls.get(call_id)

    async def by_carrier_id(self, carrier: str, carrier_call_id: str) -> Call | None:
        self._store.purge()
        call_id = self._store.by_carrier.get((carrier, carrier_call_id))
        return None if call_id is None else self._store.calls[call_id]

    async def transition(
        self, call_id: CallId, new_state: CallState, *, reason: str | None = None
    ) -> Call:
        return self._update(call_id, lambda c: transitioned(c, new_state, reason, self._replica_id))

    async def set_provider(self, call_id: CallId, provider: str) -> Call:
        return self._update(call_id, lambda c: with_provider(c, provider))

    async def list_active(self) -> list[Call]:
        self._store.purge()
        active = [c for c in self._store.calls.values() if c.active]
        return sorted(active, key=lambda c: c.created_at)

    async def count_active(self) -> int:
        return sum(1 for c in self._store.calls.values() if c.active)

    async def remove_replica(self, replica_id: str) -> list[Call]:
        change = ended_by_replica_loss(replica_id)
        held = [c.call_id for c in self._store.calls.values() if c.active]
        ended = [self._update(call_id, change) for call_id in held]
        return [c for c in ended if c is not None]

    async def heartbeat(self) -> int:
        return sum(
            1 for c in self._store.calls.values() if c.active and c.replica == self._replica_id
        )

    async def live_replicas(self) -> int:
        return 1  # in-process state: no other replica shares it

    def _update(self, call_id: CallId, change: Callable[[Call], Changed]) -> Changed:
        store = self._store
        store.purge()
        call = store.calls.get(call_id)
        if call is None:
            raise CallNotFoundError(call_id)
        new = change(call)
        if new is not None:
            store.calls[call_id] = new
            if not new.active:
                store.expiries.append((time.monotonic() + store.ended_ttl, call_id))
        return new
