"""What the two WebSocket clients of :mod:`providers.ai.transport` share: the
:class:`Connection` interface, its :class:`Options`, the :class:`Closed` error and the TLS
context. See :mod:`providers.ai.transport` for the contract."""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from functools import cache
from typing import Final, Protocol

from providers.codec import Frame
from providers.exceptions import SessionClosed

OK_CODES: Final = frozenset({1000, 1001})
"""Close codes of a normal end; any other code, or none, is abnormal."""


@dataclass(frozen=True, slots=True)
class Options:
    open_timeout_s: float = 10.0
    """A backstop on the opening handshake for a caller that gave up on :func:`connect`."""
    ping_interval_s: float | None = 20.0
    ping_timeout_s: float | None = 40.0
    close_timeout_s: float = 3.0
    max_message_bytes: int = 4 * 1024 * 1024


class Closed(SessionClosed):
    """The connection has ended. ``code`` is the peer's close code, ``None`` without one."""

    def __init__(self, code: int | None, *, abnormal: bool) -> None:
        super().__init__(f"peer closed (code {code})", abnormal=abnormal)
        self.code = code


class Connection(Protocol):
    async def send(self, frame: Frame) -> None:
        """Send one message (text for ``str``). Raises :class:`Closed`."""

    async def recv(self) -> Frame:
        """The next message. Raises :class:`Closed`."""

    async def close(self) -> None:
        """Close with code 1000, bounded by ``close_timeout_s`` (then aborted); idempotent."""

    def abort(self) -> None:
        """Drop the TCP connection now, without a close handshake."""


@cache
def tls_context() -> ssl.SSLContext:
    """The client TLS context: the system trust store, host name checked (SNI sent)."""
    # Loading the trust store costs milliseconds: once per process, not per call.
    return ssl.create_default_context()
