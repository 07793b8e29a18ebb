"""The uvicorn WebSocket protocol the gateway serves media streams with.

uvicorn's ``websockets-sansio`` protocol (the ``websockets`` library's sans-I/O core under a
thin asyncio shell) with one change: flow control on reads. uvicorn pauses reading from the
socket after every message it hands to the application and resumes once the application has
taken it, so a media stream sending 50 frames a second changes its event-loop registration
twice per frame. ``MediaWebSocketProtocol`` keeps reading until ``READ_PAUSE_MESSAGES``
messages wait for the application, then pauses the same way (uvicorn resumes once the queue
is empty). Memory stays bounded: at most ``READ_PAUSE_MESSAGES`` messages of at most
``ws_max_size`` bytes each wait per connection.

And one fix: a server shutting down while a peer's closing handshake is under way (a caller
hanging up as the gateway stops) closes the socket instead of sending a second close frame,
which uvicorn does and the ``websockets`` state machine refuses with ``InvalidState``, ending
the whole server with a traceback.

Everything else (handshake, ping/pong keepalive, close handshake, size limit, UTF-8 checks) is
uvicorn's and the ``websockets`` library's, unchanged.
"""

from __future__ import annotations

from typing import Final

from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.protocol import State

__all__ = ["READ_PAUSE_MESSAGES", "MediaWebSocketProtocol"]

READ_PAUSE_MESSAGES: Final = 8
"""Messages waiting for the application at which reading from the socket pauses."""


class MediaWebSocketProtocol(WebSocketsSansIOProtocol):
    """``websockets-sansio`` with reads paused per queue depth, not per message."""

    def send_receive_event_to_app(self) -> None:
        super().send_receive_event_to_app()
        # uvicorn has just paused reading (unless the message was dropped or bad UTF-8
        # closed the connection). Undoing it within the same callback costs no system call:
        # the event loop applies registration changes when it next polls.
        if (
            self.read_paused
            and self.queue.qsize() < READ_PAUSE_MESSAGES
            and not self.transport.is_closing()
        ):
            self.read_paused = False
            self.transport.resume_reading()

    def shutdown(self) -> None:
        if self.handshake_complete and not self.close_sent and self.conn.state is not State.OPEN:
            # The peer has begun (or finished) the closing handshake: the application has its
            # disconnect already and no close frame may be sent any more.
            self.stop_keepalive()
            self.transport.close()
            return
        super().shutdown()
