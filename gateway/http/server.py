"""Uvicorn with a drain phase: on SIGTERM, live calls may finish before sockets are cut.

Uvicorn's own shutdown closes every WebSocket at once. ``DrainingServer`` first marks the
gateway draining (readiness 503, new calls refused so the carrier retries elsewhere), keeps
serving live media streams and their webhooks until they end or ``VOICEGW_DRAIN_SECONDS`` pass
(a second Ctrl-C cuts it short), ends what is left cleanly, and only then lets uvicorn close
the listeners and connections.
"""

from __future__ import annotations

import gc
import socket

import uvicorn
from starlette.applications import Starlette

from gateway.runtime import Runtime


class DrainingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, app: Starlette) -> None:
        super().__init__(config)
        self._app = app

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        # What start-up built (modules, settings, pools, tables) lives as long as the process.
        # Frozen, it is no longer re-scanned by every full collection, which otherwise stalls
        # the event loop for tens of milliseconds under load (bench/webhooks.py --gc-stats).
        gc.collect()
        gc.freeze()

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        runtime: Runtime | None = getattr(self._app.state, "runtime", None)
        if runtime is not None and not self.force_exit:
            await runtime.lifecycle.drain(lambda: self.force_exit)
        await super().shutdown(sockets)
