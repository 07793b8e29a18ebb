"""The WebSocket client under a provider session, implemented twice behind one interface.

:func:`connect` opens a :class:`Connection` with either client:

* ``picows`` (C, Cython): about a fifth less CPU per message than ``websockets``
  (``bench/wsclient.py``); the default where its wheel is installed.
* ``websockets`` (pure Python asyncio): the fallback on platforms without the picows wheel.

:data:`Client` ``auto`` picks picows when it imports. Both behave the same for a session: the
URL's scheme picks TLS (the system trust store, SNI from the host name), the headers go into the
handshake, a received message is a ``str`` (text) or ``bytes`` (binary) reassembled from its
fragments and at most ``max_message_bytes`` long, pings are answered, a ping is sent after
``ping_interval_s`` and the connection dropped when no pong comes within ``ping_timeout_s``.

Call order: ``send()`` / ``recv()`` (one receiver) until either raises :class:`Closed`, then
``close()`` (the close handshake, bounded by ``close_timeout_s``; idempotent) or ``abort()``.
``send`` returns once the message is in the socket's buffer and the buffer is below its
high-water mark: a peer that stops reading makes ``send`` wait, and the caller bounds the wait.

Errors: :func:`connect` raises :class:`~providers.exceptions.ConnectError` with a short reason
(``handshake rejected with HTTP 401``, ``could not connect (OSError)``); ``send`` and ``recv``
raise :class:`Closed` carrying the peer's close code (``None`` without a close frame) and
whether the end was abnormal (no close frame, or a code other than 1000/1001).
"""

from __future__ import annotations

import enum
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from typing import Final, Protocol

from providers.codec import Frame
from providers.exceptions import SessionClosed

OK_CODES: Final = frozenset({1000, 1001})
"""Close codes of a normal end; any other code, or none, is abnormal."""


class Client(enum.StrEnum):
    AUTO = "auto"
    PICOWS = "picows"
    WEBSOCKETS = "websockets"


@cache
def picows_available() -> bool:
    try:
        import picows  # noqa: F401
    except ImportError:
        return False
    return True


def resolve(client: Client | str) -> Client:
    """The client ``client`` names; ``auto`` is picows when it imports, else websockets."""
    client = Client(client)
    if client is Client.AUTO:
        return Client.PICOWS if picows_available() else Client.WEBSOCKETS
    return client


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


async def connect(
    client: Client | str, url: str, headers: Mapping[str, str], options: Options
) -> Connection:
    """Open a WebSocket to ``url`` with ``client``. Unbounded in time: the caller bounds it.

    Raises :class:`ConnectError`; never leaves a socket open on failure (also when cancelled).
    """
    if resolve(client) is Client.PICOWS:
        from providers.ai import transport_picows

        return await transport_picows.connect(url, headers, options)
    from providers.ai import transport_websockets

    return await transport_websockets.connect(url, headers, options)
