"""The WebSocket client under a provider session, implemented twice behind one interface.

:func:`connect` opens a :class:`Connection` with either client:

* ``picows`` (C, Cython): about half the CPU per audio frame sent and received of
  ``websockets`` (``bench/wsclient.py``); the default where its wheel is installed.
* ``websockets`` (pure Python asyncio): the fallback on platforms without the picows wheel.

:data:`Client` ``auto`` picks picows when it imports. Both behave the same for a session: the
URL's scheme picks TLS (the system trust store, SNI from the host name), the headers go into the
handshake, a received message is a ``str`` (text) or ``bytes`` (binary) reassembled from its
fragments and at most ``max_message_bytes`` long, pings are answered, and a peer that does
not answer a ping is dropped: websockets pings every ``ping_interval_s`` and waits
``ping_timeout_s``; picows pings a peer that sent nothing for ``ping_interval_s`` and waits
``min(ping_timeout_s, ping_interval_s)`` (a peer streaming audio is alive).

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
from collections.abc import Mapping
from functools import cache

from providers.ai.transport_base import OK_CODES, Closed, Connection, Options, tls_context

__all__ = [
    "OK_CODES",
    "Client",
    "Closed",
    "Connection",
    "Options",
    "connect",
    "picows_available",
    "resolve",
    "tls_context",
]


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
