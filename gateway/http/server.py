"""Uvicorn with a drain phase: on SIGTERM, live calls may finish before sockets are cut.

Uvicorn's own shutdown closes every WebSocket at once. ``DrainingServer`` first marks the
gateway draining (readiness 503, new calls refused so the carrier retries elsewhere), keeps
serving live media streams and their webhooks until they end or ``VOICEGW_DRAIN_SECONDS`` pass
(a second Ctrl-C cuts it short), ends what is left cleanly, and only then lets uvicorn close
the listeners and connections.

``SIGHUP`` reloads the agent profiles (``VOICEGW_AGENTS_FILE``): new calls get the new file,
calls in progress keep theirs, and a file with problems is refused (logged and audited).

As one worker of ``voicegw serve --workers N`` (``gateway.http.workers``), it also counts its
asyncio tasks for the group's metrics each second, and stops (draining, as on ``SIGTERM``) when
its parent is gone.
"""

from __future__ import annotations

import asyncio
import gc
import os
import signal
import socket

import uvicorn
from starlette.applications import Starlette

from gateway.agents.directory import audit_agents_file
from gateway.http.workers import WorkerInfo
from gateway.runtime import Runtime
from metrics.loop_lag import LoopLagMonitor
from metrics.registry import sample_asyncio_tasks


class DrainingServer(uvicorn.Server):
    def __init__(
        self, config: uvicorn.Config, app: Starlette, *, worker: WorkerInfo | None = None
    ) -> None:
        super().__init__(config)
        self._app = app
        self._worker = worker

    async def on_tick(self, counter: int) -> bool:
        # Every second (uvicorn ticks every 0.1 s), a worker's own bookkeeping.
        if self._worker is not None and counter % 10 == 0:
            sample_asyncio_tasks()
            if os.getppid() != self._worker.parent_pid and not self.should_exit:
                self.should_exit = True  # orphaned: drain and go, as on SIGTERM
        return await super().on_tick(counter)

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        # What start-up built (modules, settings, pools, tables) lives as long as the process.
        # Frozen, it is no longer re-scanned by every full collection, which otherwise stalls
        # the event loop for tens of milliseconds under load (bench/webhooks.py --gc-stats).
        gc.collect()
        gc.freeze()
        runtime: Runtime | None = getattr(self._app.state, "runtime", None)
        if runtime is not None:
            # Once start-up's own long steps (this collection among them) are over: from here a
            # stalled loop is news.
            runtime.lifecycle.tasks.spawn(LoopLagMonitor().run(), "loop-lag")
        if runtime is not None and hasattr(signal, "SIGHUP"):
            loop = asyncio.get_running_loop()
            loop.add_signal_handler(
                signal.SIGHUP,
                lambda: runtime.lifecycle.tasks.spawn(reload_agents(runtime), "reload"),
            )

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        if hasattr(signal, "SIGHUP"):
            asyncio.get_running_loop().remove_signal_handler(signal.SIGHUP)
        runtime: Runtime | None = getattr(self._app.state, "runtime", None)
        if runtime is not None and not self.force_exit:
            await runtime.lifecycle.drain(lambda: self.force_exit)
        await super().shutdown(sockets)


async def reload_agents(runtime: Runtime) -> None:
    """``SIGHUP``: read the agents file again, and audit the outcome."""
    result = await runtime.agents.reload()
    await audit_agents_file(runtime.auditor, runtime.agents, result, via="sighup", actor="signal")
