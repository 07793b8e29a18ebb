"""How late the event loop runs, and what held it when it was very late.

``LoopLagMonitor.run()`` sleeps ``interval_s`` at a time and records how much later than asked
it woke (``voicegw_event_loop_lag_seconds``): every coroutine of the process waited that long,
the media relay included. A watchdog thread looks at the loop's heartbeat; when the loop has
not come back for ``warn_s`` it logs one warning with the loop thread's stack at that moment
(file, line and function of each frame: the code that blocks, never its data), and the stall's
length once it ends. The sampling costs one timer wake-up per interval (about 0.2 % of a core
at 5 ms).
"""

from __future__ import annotations

import asyncio
import logging
import sys
import threading
import time
import traceback
from typing import Final

from metrics.registry import EVENT_LOOP_LAG

log = logging.getLogger("voicegw.loop")

INTERVAL_S: Final = 0.005
WARN_S: Final = 0.25
STACK_FRAMES: Final = 15


class LoopLagMonitor:
    """Samples the running loop's lag; warns with the blocking stack past ``warn_s``."""

    def __init__(self, interval_s: float = INTERVAL_S, warn_s: float = WARN_S) -> None:
        self.interval_s = interval_s
        self.warn_s = warn_s
        self.stalls = 0  # warnings logged
        self._beat = time.monotonic()
        self._loop_thread = threading.get_ident()
        self._stop = threading.Event()

    async def run(self) -> None:
        """Sample until cancelled (a background loop); the watchdog runs meanwhile."""
        self._loop_thread = threading.get_ident()
        self._beat = time.monotonic()
        watchdog = threading.Thread(target=self._watch, name="loop-lag-watchdog", daemon=True)
        watchdog.start()
        observe = EVENT_LOOP_LAG.observe
        interval = self.interval_s
        try:
            while True:
                before = time.monotonic()
                self._beat = before
                await asyncio.sleep(interval)
                observe(max(0.0, time.monotonic() - before - interval))
        finally:
            self._stop.set()

    def _watch(self) -> None:
        reported: float | None = None  # the heartbeat of the stall already reported
        while not self._stop.wait(self.warn_s / 4):
            beat = self._beat
            stalled = time.monotonic() - beat
            if stalled < self.warn_s:
                if reported is not None and beat != reported:
                    reported = None
                continue
            if reported == beat:
                continue
            reported = beat
            frame = sys._current_frames().get(self._loop_thread)
            stack = "".join(traceback.format_stack(frame, limit=STACK_FRAMES)) if frame else ""
            self.stalls += 1
            log.warning(
                "event loop blocked",
                extra={"blocked_ms": round(stalled * 1000), "stack": stack},
            )
