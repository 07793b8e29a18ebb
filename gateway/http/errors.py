"""Errors turned into HTTP replies and WebSocket close codes, from one table.

Peers get a short fixed reason; exception text never leaves the process.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping

import orjson
from starlette.responses import Response


class CloseCode(enum.IntEnum):
    """WebSocket close codes the media endpoints use."""

    NORMAL = 1000
    GOING_AWAY = 1001  # draining / shutting down
    PROTOCOL_ERROR = 1002
    UNSUPPORTED = 1003  # binary frame where text is required
    POLICY_VIOLATION = 1008  # bad token, bad signature, flood
    TOO_BIG = 1009
    INTERNAL_ERROR = 1011
    TRY_AGAIN_LATER = 1013  # no provider available


def json_error(status: int, reason: str, headers: Mapping[str, str] | None = None) -> Response:
    """A short JSON error reply: ``{"error": reason}``."""
    return Response(
        orjson.dumps({"error": reason}),
        status_code=status,
        headers=dict(headers or {}),
        media_type="application/json",
    )


class StreamRefused(Exception):
    """A media stream cannot be bridged; it closes with ``code`` before any audio flows.
    ``reason`` is for the log only."""

    def __init__(self, code: CloseCode, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason
