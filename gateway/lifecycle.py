"""What lives while the gateway runs, and how it stops: the set of live bridges, the background
tasks, and the shutdown order.

``Lifecycle.drain`` asks each live bridge to finish (it never reaches into one); ``stop`` drains,
cancels the background loops, waits (bounded) for the rest, then closes pools in the order the
composition root registered them (``at_stop``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from typing import Any, Final, Protocol

from gateway.calls.state import Call, EndReason
from providers.events import CallId

log = logging.getLogger("voicegw.runtime")

DRAIN_GRACE_S: Final = 5.0
"""How long a drain keeps answering webhooks after its last media stream ended, for the
carriers' final word on those calls (Twilio's status callback follows the stream's stop by
about a second, Telnyx's ``call.hangup`` likewise); it ends sooner once every one arrived."""
# Tasks that loop for the runtime's life (or retry until Redis returns): stop() cancels them
# rather than waiting for them to finish.
BACKGROUND_LOOPS: Final = frozenset(
    {
        "heartbeat",
        "retention",
        "end-call",
        "set-provider",
        "key-inventory",
        "audit-verify",
        "sessions-gauge",
        "orphans",
        "unopened-streams",
        "call-commands",
        "events-retention",
        "loop-lag",
    }
)


class LiveBridge(Protocol):
    """A running Bridge, as the drain sees it (``gateway.media.bridge.Bridge``)."""

    @property
    def call(self) -> Call: ...

    def stop(self, reason: EndReason) -> None: ...


class Tasks:
    """Background work, tracked so shutdown can wait for it (or cancel it)."""

    def __init__(self) -> None:
        self.running: set[asyncio.Task[Any]] = set()

    def spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> None:
        """Run ``coro`` in the background, tracked so shutdown can wait for it."""
        task = asyncio.create_task(coro, name=name)
        self.running.add(task)
        task.add_done_callback(self.running.discard)

    async def stop(self, grace_s: float) -> None:
        """Cancel the ``BACKGROUND_LOOPS``; give the rest (REST commands, record writes)
        ``grace_s`` to finish, then cancel them too."""
        for task in self.running:
            if task.get_name() in BACKGROUND_LOOPS:
                task.cancel()
        if self.running:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(grace_s):
                    await asyncio.gather(*self.running, return_exceptions=True)
            for task in self.running:
                task.cancel()


class Lifecycle:
    """The live bridges of this replica, the background ``tasks``, and the closers ``stop``
    runs last. ``drain_s``: how long a drain lets live calls run (``VOICEGW_DRAIN_SECONDS``);
    ``task_grace_s``: how long ``stop`` waits for background work."""

    def __init__(self, *, drain_s: float, task_grace_s: float) -> None:
        self.drain_s = drain_s
        self.task_grace_s = task_grace_s
        self.tasks = Tasks()
        self.draining = False
        self._bridges: set[LiveBridge] = set()
        self._idle = asyncio.Event()
        # While draining: calls that streamed during the drain and whose carrier has not yet
        # said they are over (a terminal status callback or hang-up event).
        self._unsettled: set[CallId] = set()
        self._settled = asyncio.Event()
        self._closers: list[Callable[[], Awaitable[object]]] = []

    # -- the live bridges ---------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._bridges)

    def __iter__(self) -> Iterator[LiveBridge]:
        return iter(list(self._bridges))

    def add(self, bridge: LiveBridge) -> None:
        self._bridges.add(bridge)
        self._idle.clear()
        if self.draining:  # a call answered just before the drain: its webhooks are awaited too
            self._unsettled.add(bridge.call.call_id)
            self._settled.clear()

    def remove(self, bridge: LiveBridge) -> None:
        self._bridges.discard(bridge)
        if not self._bridges:
            self._idle.set()

    def stop_call(self, call: Call) -> None:
        """The carrier says the call is over: end its bridge; a drain stops waiting for it."""
        for bridge in self:
            if bridge.call.call_id == call.call_id:
                bridge.stop(EndReason.CARRIER_HANGUP)
        if call.call_id in self._unsettled:
            self._unsettled.discard(call.call_id)
            if not self._unsettled:
                self._settled.set()

    def stop_stream(self, call: Call, outcome: str) -> bool:
        """Stop this replica's Bridge of ``call`` with ``outcome`` (an ``EndReason`` value):
        it closes the stream, hangs up the line and records the outcome. Returns whether
        this replica bridges the call."""
        found = False
        for bridge in self:
            if bridge.call.call_id == call.call_id:
                bridge.stop(EndReason(outcome))
                found = True
        return found

    # -- drain and stop -----------------------------------------------------------------------

    async def drain(self, cut_short: Callable[[], bool] = lambda: False) -> None:
        """Stop taking new calls; let live ones end within ``drain_s`` (or until
        ``cut_short()``), then end the rest cleanly: carrier told, provider closed, call ended.
        Then keep answering those calls' webhooks for up to ``DRAIN_GRACE_S``, until the
        carrier's last word on each has arrived (new calls are still refused meanwhile)."""
        if not self.draining:
            self.draining = True
            self._unsettled = {bridge.call.call_id for bridge in self._bridges}
        if self._bridges:
            log.info("draining", extra={"live_calls": len(self._bridges)})
            deadline = asyncio.get_running_loop().time() + self.drain_s
            await self._wait_until(self._idle, deadline, cut_short)
        for bridge in self:
            bridge.stop(EndReason.DRAINING)
        if self._bridges:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(5):
                    await self._idle.wait()
        if self._unsettled and not cut_short():
            deadline = asyncio.get_running_loop().time() + DRAIN_GRACE_S
            await self._wait_until(self._settled, deadline, cut_short)

    @staticmethod
    async def _wait_until(
        event: asyncio.Event, deadline: float, cut_short: Callable[[], bool]
    ) -> None:
        """Wait for ``event`` until the loop time ``deadline``, or ``cut_short()`` (polled)."""
        while not event.is_set() and not cut_short():
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                return
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(min(remaining, 0.5)):
                    await event.wait()

    def at_stop(self, *closers: Callable[[], Awaitable[object]]) -> None:
        """Run ``closers`` at the end of ``stop``, in the order given."""
        self._closers.extend(closers)

    async def stop(self) -> None:
        """End live calls (if ``drain`` did not), wait for background work, close pools."""
        await self.drain(lambda: True)
        await self.tasks.stop(self.task_grace_s)
        for close in self._closers:
            await close()
