"""The WebSocket client the session tests run with (set per test by the ``ws_client``
fixture; ``config()`` in test_session reads it)."""

from __future__ import annotations

CLIENTS = ("websockets", "picows")
current = "websockets"
