"""The media WebSocket protocol under real uvicorn and a real client: it keeps reading while a
few messages wait for the application (uvicorn's own protocol pauses after one), pauses once
``READ_PAUSE_MESSAGES`` do, and delivers every message in order either way."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit

import pytest
import uvicorn
from websockets.asyncio.client import connect
from websockets.protocol import State

from gateway.http.wsprotocol import READ_PAUSE_MESSAGES, MediaWebSocketProtocol
from tests.conftest import UNIT

pytestmark = pytest.mark.e2e


class HoldingApp:
    """Accepts, waits for ``release``, then reads ``expected`` messages and sends them back
    joined by commas."""

    def __init__(self, expected: int) -> None:
        self.expected = expected
        self.release = asyncio.Event()

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        assert scope["type"] == "websocket"
        assert (await receive())["type"] == "websocket.connect"
        await send({"type": "websocket.accept"})
        await self.release.wait()
        got = []
        for _ in range(self.expected):
            message = await receive()
            got.append(message["text"])
        await send({"type": "websocket.send", "text": ",".join(got)})
        message = await receive()
        assert message["type"] == "websocket.disconnect"


@contextlib.asynccontextmanager
async def serve(app: Any) -> AsyncIterator[tuple[str, uvicorn.Server]]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    config = uvicorn.Config(app, ws=MediaWebSocketProtocol, log_config=None, lifespan="off")
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        await until(lambda: server.started or task.done())
        if task.done():
            await task
        yield f"ws://127.0.0.1:{sock.getsockname()[1]}/", server
    finally:
        server.should_exit = True
        await task
        sock.close()


async def until(condition: Any) -> None:
    """Poll ``condition`` (state of the protocol under test) until true, bounded."""
    async with asyncio.timeout(5 * UNIT):
        while True:
            if condition():
                return
            await asyncio.sleep(0.005)


async def test_reading_goes_on_below_the_queue_bound_and_pauses_at_it():
    total = READ_PAUSE_MESSAGES + 6
    app = HoldingApp(total)
    async with serve(app) as (url, server), connect(url, compression=None) as ws:
        [protocol] = server.server_state.connections
        assert isinstance(protocol, MediaWebSocketProtocol)
        # Below the bound: every message waits in the queue and the socket is still read
        # (uvicorn's own protocol pauses after the first).
        for i in range(READ_PAUSE_MESSAGES - 1):
            await ws.send(f"m{i}")
        await until(lambda: protocol.queue.qsize() == READ_PAUSE_MESSAGES - 1)
        assert not protocol.read_paused
        assert protocol.transport.is_reading()
        # At the bound: reading pauses.
        for i in range(READ_PAUSE_MESSAGES - 1, total):
            await ws.send(f"m{i}")
        await until(lambda: protocol.read_paused)
        assert protocol.queue.qsize() >= READ_PAUSE_MESSAGES
        assert not protocol.transport.is_reading()
        # The application takes them all, in order; reading resumes.
        app.release.set()
        async with asyncio.timeout(5 * UNIT):
            echoed = await ws.recv()
        assert echoed == ",".join(f"m{i}" for i in range(total))
        assert not protocol.read_paused


class WaitingApp:
    """Accepts, then waits for its disconnect."""

    def __init__(self) -> None:
        self.disconnected = asyncio.Event()

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        assert (await receive())["type"] == "websocket.connect"
        await send({"type": "websocket.accept"})
        while (await receive())["type"] != "websocket.disconnect":
            pass
        self.disconnected.set()


async def test_a_server_stopping_while_a_peer_closes_stops_cleanly():
    """Found by the SIGTERM test under load: at shutdown uvicorn sends a close frame to every
    connection it still lists; one whose peer had just closed (its socket not yet released)
    made ``websockets`` raise ``InvalidState`` and the server exit with a traceback."""
    app = WaitingApp()
    async with serve(app) as (url, server):
        address = urlsplit(url)
        reader, writer = await asyncio.open_connection(address.hostname, address.port)
        try:
            writer.write(
                b"GET / HTTP/1.1\r\nHost: gw\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
            )
            assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 101")
            [protocol] = server.server_state.connections
            assert isinstance(protocol, MediaWebSocketProtocol)
            # The caller hangs up: a masked close frame (1000).
            mask = b"\x01\x02\x03\x04"
            payload = bytes(b ^ mask[i % 4] for i, b in enumerate(b"\x03\xe8"))
            writer.write(b"\x88\x82" + mask + payload)
            async with asyncio.timeout(5 * UNIT):
                await app.disconnected.wait()
            assert protocol.conn.state is not State.OPEN
            # The shutdown reaches this connection in that state: it must just let it go.
            protocol.shutdown()
            assert protocol.transport.is_closing()
        finally:
            writer.close()
