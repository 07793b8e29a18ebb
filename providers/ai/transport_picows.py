"""The picows client as a :class:`~providers.ai.transport.Connection`: the default where its
wheel is installed. See :mod:`providers.ai.transport` for the contract.

picows calls a listener for every frame, synchronously, from the socket's read callback.
:class:`Listener` reassembles fragmented messages, answers the peer's close frame and queues
the messages; :meth:`PicowsConnection.recv` awaits a future only when the queue is empty. Sends
are synchronous writes into the socket's buffer; :meth:`PicowsConnection.send` then waits while
the buffer is above its high-water mark (``pause_writing`` / ``resume_writing``), as
``websockets``' ``drain`` does.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
from collections.abc import Mapping
from typing import Final

import picows
from picows import WSCloseCode, WSFrame, WSMsgType, WSProtocolError, WSTransport

from providers.ai.transport_base import OK_CODES, Closed, Options, tls_context
from providers.codec import Frame
from providers.exceptions import ConnectError

# picows logs frame contents at its DEBUG level and every connection's addresses at INFO.
_logger = logging.getLogger("voicegw.providers.picows")
_logger.setLevel(logging.WARNING)

_TEXT: Final = WSMsgType.TEXT
_BINARY: Final = WSMsgType.BINARY
_CONTINUATION: Final = WSMsgType.CONTINUATION
_CLOSE: Final = WSMsgType.CLOSE
# Received messages queued before reading from the socket pauses: the session reads them as
# fast as the bridge forwards them; this bounds memory when it stops.
_PAUSE_READING_AT: Final = 64
_RESUME_READING_AT: Final = 16

_reapers: set[asyncio.Task[None]] = set()


async def connect(url: str, headers: Mapping[str, str], options: Options) -> PicowsConnection:
    """Open a connection; the caller bounds the time (``open_timeout_s`` is a backstop for a
    caller that gave up). Raises ConnectError."""
    listener = Listener(options.max_message_bytes)
    interval = options.ping_interval_s
    timeout = options.ping_timeout_s
    try:
        transport, _ = await picows.ws_connect(
            lambda: listener,
            url,
            ssl_context=tls_context() if url.startswith("wss:") else None,
            websocket_handshake_timeout=options.open_timeout_s,
            logger_name=_logger,
            # Ping only a peer that has sent nothing for the interval: one that streams audio
            # is alive. picows wants the pong timeout no longer than the interval, so a dead
            # peer is noticed within interval + min(timeout, interval).
            enable_auto_ping=interval is not None and timeout is not None,
            auto_ping_idle_timeout=interval or 20.0,
            auto_ping_reply_timeout=min(timeout or 20.0, interval or 20.0),
            auto_ping_strategy=picows.WSAutoPingStrategy.PING_WHEN_IDLE,
            enable_auto_pong=True,
            max_frame_size=options.max_message_bytes,
            # Provider messages are mostly a few hundred bytes; the buffer grows for larger.
            read_buffer_init_size=4096,
            extra_headers=dict(headers),
            # A redirect would send the credentials in the headers to the host it names.
            max_redirects=0,
        )
    except asyncio.CancelledError:
        listener.abandoned = True  # the handshake may still complete: drop it then
        raise
    except picows.WSHandshakeError as exc:
        response = exc.response
        if response is not None and int(response.status) >= 300:
            raise ConnectError(f"handshake rejected with HTTP {int(response.status)}") from None
        raise ConnectError(f"could not connect ({type(exc).__name__})") from None
    except (OSError, picows.WSError) as exc:
        raise ConnectError(f"could not connect ({type(exc).__name__})") from None
    if not listener.connected:  # the peer hung up before answering the handshake
        raise ConnectError("could not connect (ConnectionClosed)")
    return PicowsConnection(transport, listener, options)


class PicowsConnection:
    """A :class:`~providers.ai.transport.Connection` over a picows transport."""

    def __init__(self, transport: WSTransport, listener: Listener, options: Options) -> None:
        self._transport = transport
        self._listener = listener
        self._options = options
        self._loop = asyncio.get_running_loop()

    async def send(self, frame: Frame) -> None:
        listener = self._listener
        if listener.closed is not None:
            raise listener.closed
        if listener.local_close:
            raise Closed(None, abnormal=False)
        self._transport.send(_TEXT if isinstance(frame, str) else _BINARY, frame)
        if listener.write_paused:
            drained = listener.drained
            if drained is None or drained.done():
                drained = listener.drained = self._loop.create_future()
            await drained
            if listener.closed is not None:
                raise listener.closed

    async def recv(self) -> Frame:
        listener = self._listener
        messages = listener.messages
        while not messages:
            if listener.closed is not None:
                raise listener.closed
            waiter = listener.waiter = self._loop.create_future()
            try:
                await waiter
            finally:
                listener.waiter = None
        message = messages.popleft()
        if listener.read_paused and len(messages) <= _RESUME_READING_AT:
            listener.read_paused = False
            self._transport.underlying_transport.resume_reading()
        return message

    async def close(self) -> None:
        self._listener.local_close = True
        transport = self._transport
        if not transport.is_disconnected and not transport.is_close_frame_sent:
            transport.send_close(WSCloseCode.OK)
        try:
            async with asyncio.timeout(self._options.close_timeout_s):
                await transport.wait_disconnected()
        except TimeoutError:
            self.abort()
        except Exception:  # noqa: S110 - a local failure that ended the connection earlier
            pass

    def abort(self) -> None:
        self._listener.local_close = True
        self._transport.disconnect(graceful=False)


async def _reap(transport: WSTransport) -> None:
    with contextlib.suppress(Exception):
        await transport.wait_disconnected()


class Listener(picows.WSListener):
    """picows callbacks of one connection: reassembly, the close handshake, queues, pauses."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.messages: collections.deque[Frame] = collections.deque()
        self.waiter: asyncio.Future[None] | None = None
        """Set by a ``recv`` waiting for a message."""
        self.drained: asyncio.Future[None] | None = None
        """Set by a ``send`` waiting for the write buffer to drain."""
        self.write_paused = False
        self.read_paused = False
        self.closed: Closed | None = None
        """Set once the peer's close frame arrived or the connection dropped."""
        self.local_close = False
        """We closed or aborted the connection."""
        self.abandoned = False
        self._transport: WSTransport | None = None
        self._parts: list[bytes] = []
        self._part_type: WSMsgType | None = None
        self._part_bytes = 0

    @property
    def connected(self) -> bool:
        """Whether the opening handshake completed (the connection may have ended since)."""
        return self._transport is not None

    def on_ws_connected(self, transport: WSTransport) -> None:
        self._transport = transport
        if self.abandoned:
            transport.disconnect(graceful=False)

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        kind = frame.msg_type
        if transport.is_close_frame_sent and kind is not _CLOSE:
            # Closing (picows also closes on a parse error, such as a frame over the limit,
            # yet may deliver that frame): nothing more is delivered.
            return
        if kind is _TEXT and frame.fin and self._part_type is None:
            try:
                self._deliver(frame.get_payload_as_utf8_text())
            except UnicodeDecodeError:
                raise WSProtocolError(WSCloseCode.INVALID_TEXT, "invalid UTF-8") from None
        elif kind is _BINARY and frame.fin and self._part_type is None:
            self._deliver(frame.get_payload_as_bytes())
        elif kind is _TEXT or kind is _BINARY:
            if self._part_type is not None:
                raise WSProtocolError(WSCloseCode.PROTOCOL_ERROR, "message inside a message")
            self._part_type = kind
            self._add_part(frame)
        elif kind is _CONTINUATION:
            if self._part_type is None:
                raise WSProtocolError(WSCloseCode.PROTOCOL_ERROR, "continuation of nothing")
            self._add_part(frame)
            if frame.fin:
                self._deliver_parts()
        elif kind is _CLOSE:
            code = frame.get_close_code()
            number: int = code.value
            if self.closed is None:
                self.closed = Closed(number or None, abnormal=number not in OK_CODES)
            if not transport.is_close_frame_sent:
                transport.send_close(code if number else WSCloseCode.OK)
            transport.disconnect()
        # A pong needs nothing here: picows matches it to its ping.

    def _add_part(self, frame: WSFrame) -> None:
        self._part_bytes += frame.payload_size
        if self._part_bytes > self.max_bytes:
            raise WSProtocolError(WSCloseCode.MESSAGE_TOO_BIG, "message too big")
        self._parts.append(frame.get_payload_as_bytes())

    def _deliver_parts(self) -> None:
        payload = b"".join(self._parts)
        kind = self._part_type
        self._parts, self._part_type, self._part_bytes = [], None, 0
        if kind is _TEXT:
            try:
                self._deliver(payload.decode())
            except UnicodeDecodeError:
                raise WSProtocolError(WSCloseCode.INVALID_TEXT, "invalid UTF-8") from None
        else:
            self._deliver(payload)

    def _deliver(self, message: Frame) -> None:
        self.messages.append(message)
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        if (
            len(self.messages) >= _PAUSE_READING_AT
            and not self.read_paused
            and self._transport is not None
        ):
            self.read_paused = True
            self._transport.underlying_transport.pause_reading()

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        # Collect the connection's end: picows keeps a local failure there for an awaiter.
        reaper = asyncio.ensure_future(_reap(transport))
        _reapers.add(reaper)
        reaper.add_done_callback(_reapers.discard)
        if self.closed is None:
            self.closed = Closed(None, abnormal=not self.local_close)
        for future in (self.waiter, self.drained):
            if future is not None and not future.done():
                future.set_result(None)

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        drained = self.drained
        if drained is not None and not drained.done():
            drained.set_result(None)
