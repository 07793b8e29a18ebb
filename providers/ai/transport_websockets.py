"""The ``websockets`` asyncio client as a :class:`~providers.ai.transport.Connection`: the
fallback where picows has no wheel. See :mod:`providers.ai.transport` for the contract."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping

from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import (
    ConnectionClosed,
    ConnectionClosedOK,
    InvalidStatus,
    WebSocketException,
)

from providers.ai.transport_base import Closed, Options, tls_context
from providers.codec import Frame
from providers.exceptions import ConnectError

# websockets logs frame contents at DEBUG; those frames carry audio and transcripts, so its
# logger is pinned at INFO whatever the root level is.
_logger = logging.getLogger("voicegw.providers.websocket")
_logger.setLevel(logging.INFO)


async def connect(url: str, headers: Mapping[str, str], options: Options) -> WebsocketsConnection:
    """Open a connection; unbounded in time (the caller bounds it). Raises ConnectError."""
    try:
        ws = await ws_connect(
            url,
            additional_headers=dict(headers),
            open_timeout=None,  # bounded by the caller
            ping_interval=options.ping_interval_s,
            ping_timeout=options.ping_timeout_s,
            close_timeout=options.close_timeout_s,
            max_size=options.max_message_bytes,
            # Base64 audio barely compresses; deflate would only cost CPU per frame.
            compression=None,
            ssl=tls_context() if url.startswith("wss:") else None,
            logger=_logger,
        )
    except InvalidStatus as exc:
        status = exc.response.status_code
        raise ConnectError(f"handshake rejected with HTTP {status}") from None
    except ConnectionClosed as exc:
        code = exc.rcvd.code if exc.rcvd is not None else "none"
        raise ConnectError(f"closed during setup (code {code})") from None
    except (OSError, WebSocketException) as exc:
        raise ConnectError(f"could not connect ({type(exc).__name__})") from None
    return WebsocketsConnection(ws, options)


class WebsocketsConnection:
    """A :class:`~providers.ai.transport.Connection` over a ``websockets`` client connection."""

    def __init__(self, ws: ClientConnection, options: Options) -> None:
        self._ws = ws
        self._options = options

    async def send(self, frame: Frame) -> None:
        try:
            await self._ws.send(frame)
        except ConnectionClosed as exc:
            raise _closed(exc) from None

    async def recv(self) -> Frame:
        try:
            return await self._ws.recv()
        except ConnectionClosed as exc:
            raise _closed(exc) from None

    async def close(self) -> None:
        try:
            async with asyncio.timeout(self._options.close_timeout_s + 1):
                await self._ws.close()
        except TimeoutError:
            self.abort()

    def abort(self) -> None:
        self._ws.transport.abort()


def _closed(exc: ConnectionClosed) -> Closed:
    code = exc.rcvd.code if exc.rcvd is not None else None
    return Closed(code, abnormal=not isinstance(exc, ConnectionClosedOK))
