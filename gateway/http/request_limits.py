"""Uvicorn's HTTP protocol with the two limits it lacks: a deadline for receiving each request,
and a cap on the size of a request's head.

Uvicorn (httptools) starts no timer before a response: a client that opens connections and
sends nothing, or sends its request head or body a byte at a time ("slow loris"), holds each
connection and its file descriptor for as long as it likes; and it stores every header line
it is sent, however many. ``GuardedHttpProtocol`` adds:

* a deadline: once the connection waits for a request (just opened, or the previous response
  sent), the whole request, head and body, must arrive within ``request_timeout_s``. When it
  does not, the client gets ``408`` (or, if a response is already under way, the connection
  is just closed). ``voicegw serve`` sets it ``REQUEST_GRACE_S`` beyond
  ``VOICEGW_BODY_TIMEOUT_S``;
* a cap on the head: more than ``max_head_bytes`` of request line and headers, or more than
  ``max_headers`` header lines, get ``431`` and the connection is closed;
* a request answered before its body is all in (``413`` from its Content-Length, ``405``...)
  closes the connection after the answer, rather than receiving a body nobody reads.

A WebSocket upgrade leaves this protocol once its handshake head is in: media streams have
their own limits (``ws_max_size``, the Bridge's flood and malformed-frame checks).
"""

from __future__ import annotations

import asyncio
from http import HTTPStatus
from typing import Final

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

MAX_HEAD_BYTES: Final = 32 * 1024
"""Request line and headers. Carriers send about 1 KiB; nginx allows 4 x 8 KiB lines."""
MAX_HEADERS: Final = 100
"""Header lines per request (Apache's ``LimitRequestFields`` default)."""
MAX_PENDING_HEAD_BYTES: Final = 128 * 1024
"""Bytes received while a request head is incomplete. The parser holds an unfinished header
line until it ends, so this bounds what one connection can make it buffer; it is looser than
``MAX_HEAD_BYTES`` because a read can also carry the end of the previous request."""
REQUEST_GRACE_S: Final = 1.0
"""How much longer than the body deadline (``VOICEGW_BODY_TIMEOUT_S``) a whole request may
take: a handler reading a slow body refuses it first, with its own 408 (counted, audited)."""


class _HeadTooLarge(Exception):
    """Raised from a parser callback to stop parsing a head over the cap."""


def _reply(status: HTTPStatus) -> bytes:
    body = b'{"error":"' + status.phrase.lower().encode() + b'"}'
    return b"".join(
        [
            f"HTTP/1.1 {status.value} {status.phrase}\r\n".encode(),
            b"content-type: application/json\r\n",
            b"content-length: " + str(len(body)).encode() + b"\r\n",
            b"connection: close\r\n\r\n",
            body,
        ]
    )


class GuardedHttpProtocol(HttpToolsProtocol):
    """``HttpToolsProtocol`` with a request deadline and a head cap (see the module docstring).
    Configure a subclass with ``guarded_http_protocol``."""

    request_timeout_s: float = 11.0
    max_head_bytes: int = MAX_HEAD_BYTES
    max_headers: int = MAX_HEADERS

    _deadline: asyncio.TimerHandle | None = None
    _receiving = False  # a request has begun and is not all in
    _head_done = False  # ... and its head is in (the application has it)
    _head_bytes = 0
    _pending_head_bytes = 0
    _header_count = 0
    _refusal: HTTPStatus | None = None

    # -- the deadline -----------------------------------------------------------------------

    def _arm(self) -> None:
        """Start the clock for the request awaited now, unless it is already running."""
        if self._deadline is None:
            self._deadline = self.loop.call_later(self.request_timeout_s, self._expired)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _expired(self) -> None:
        self._deadline = None
        if self.transport.is_closing():
            return
        # Answer a request still coming in that nobody has answered; otherwise (an idle
        # connection, or a body still trickling in after its response) just close.
        unanswered = not self._head_done or not (self.cycle and self.cycle.response_started)
        if self._receiving and unanswered:
            self.transport.write(_reply(HTTPStatus.REQUEST_TIMEOUT))
        self.transport.close()  # connection_lost tells the application, if it is running

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._receiving, self._head_done = True, False
        self._head_bytes = self._pending_head_bytes = self._header_count = 0
        self._arm()

    def on_headers_complete(self) -> None:
        self._head_done = True
        self._pending_head_bytes = 0
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._receiving = False
        self._disarm()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if self.transport.is_closing():
            return
        if self._receiving and self._head_done and self.cycle.response_complete:
            # Answered before its body was all in (413, 405, 408...): nobody will read the
            # rest, so it is not worth receiving.
            self.transport.close()
        elif not self.pipeline:
            self._arm()  # waiting for the next request on this connection

    def handle_websocket_upgrade(self) -> None:
        self._disarm()
        super().handle_websocket_upgrade()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    # -- the head cap -----------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        if self.transport.is_closing():
            return  # refused or timed out: the rest is not read
        super().data_received(data)
        if self._receiving and not self._head_done and not self.transport.is_closing():
            self._pending_head_bytes += len(data)
            if self._pending_head_bytes > MAX_PENDING_HEAD_BYTES:
                self._refusal = HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE
                self.send_400_response("")

    def on_url(self, url: bytes) -> None:
        self._count(len(url))
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_count += 1
        self._count(len(name) + len(value) + 4)
        super().on_header(name, value)

    def _count(self, size: int) -> None:
        self._head_bytes += size
        if self._head_bytes > self.max_head_bytes or self._header_count > self.max_headers:
            self._refusal = HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE
            raise _HeadTooLarge  # the parser reports it as an error: send_400_response below

    def send_400_response(self, msg: str) -> None:
        if self._refusal is None:
            super().send_400_response(msg)
            return
        self._disarm()
        self.transport.write(_reply(self._refusal))
        self.transport.close()


def guarded_http_protocol(
    *,
    request_timeout_s: float,
    max_head_bytes: int = MAX_HEAD_BYTES,
    max_headers: int = MAX_HEADERS,
) -> type[GuardedHttpProtocol]:
    """A ``GuardedHttpProtocol`` with these limits, for ``uvicorn.Config(http=...)``."""

    class Configured(GuardedHttpProtocol):
        pass

    Configured.request_timeout_s = request_timeout_s
    Configured.max_head_bytes = max_head_bytes
    Configured.max_headers = max_headers
    return Configured
