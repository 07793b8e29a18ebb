"""One call's set-up, stage by stage, as ``voicegw_call_setup_seconds``.

The clock starts when the carrier's media stream is accepted (what came before, the webhook
and the carrier opening the stream, is the carrier's part) and ends when the first caller
frame reaches the agent: until then the caller's audio waits, and whatever set-up took is
carried as a standing offset for the rest of the call.
"""

from __future__ import annotations

import time

from metrics.registry import CALL_SETUP


class SetupClock:
    """Observe each stage as it ends (``stage``); ``first_frame`` closes the clock."""

    __slots__ = ("_at", "_began")

    def __init__(self) -> None:
        self._began = self._at = time.perf_counter()

    def stage(self, name: str) -> None:
        """The stage ``name`` ended now (start, claim, provider, answer)."""
        now = time.perf_counter()
        CALL_SETUP.labels(name).observe(now - self._at)
        self._at = now

    def first_frame(self) -> None:
        """The first caller frame was forwarded to the agent: the set-up is over."""
        self.stage("first_frame")
        CALL_SETUP.labels("total").observe(self._at - self._began)
