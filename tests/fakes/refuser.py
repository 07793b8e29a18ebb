"""A provider that refuses every call: a loopback TCP server that accepts each connection and
closes it at once, so every WebSocket handshake fails. Counts the attempts, which tells a test
whether a gateway (or which of several) tried the provider at all.

    async with Refuser() as refuser:
        env["VOICEGW_OPENAI_REALTIME_URL"] = refuser.url
        ...
        assert refuser.attempts == 5
"""

from __future__ import annotations

import asyncio


class Refuser:
    """Accepts and at once closes every connection; ``attempts`` counts them."""

    def __init__(self) -> None:
        self.attempts = 0
        self.server: asyncio.Server | None = None

    async def __aenter__(self) -> Refuser:
        async def refuse(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            self.attempts += 1
            writer.close()

        self.server = await asyncio.start_server(refuse, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()

    @property
    def url(self) -> str:
        assert self.server is not None
        port = self.server.sockets[0].getsockname()[1]
        return f"ws://127.0.0.1:{port}/v1/realtime"
