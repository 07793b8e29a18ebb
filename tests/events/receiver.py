"""A customer's event endpoint on loopback: a real HTTP/1.1 server (keep-alive) that verifies
every request with the Standard Webhooks reference library, independently of our signer, and
answers with the status the test sets. It can be stopped and started again on its port."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from standardwebhooks import Webhook, WebhookVerificationError

from tests.conftest import UNIT


@dataclass
class Received:
    webhook_id: str
    payload: dict[str, Any]
    status: int


@dataclass
class Receiver:
    secret: str
    status: int = 200
    location: str | None = None  # sent with the status (a redirect)
    port: int = 0
    received: list[Received] = field(default_factory=list)
    forged: int = 0
    _server: asyncio.Server | None = None
    _writers: set[asyncio.StreamWriter] = field(default_factory=set)
    _changed: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hooks"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        """Stop listening and drop every open connection (the endpoint is down)."""
        if self._server is not None:
            self._server.close()
            for writer in list(self._writers):
                writer.close()
            await self._server.wait_closed()
            self._server = None

    def delivered(self) -> list[Received]:
        return [r for r in self.received if 200 <= r.status < 300]

    async def wait_for(self, count: int, within: float = 10 * UNIT) -> list[Received]:
        """Wait until ``count`` requests were answered 2xx; return them in arrival order."""
        async with asyncio.timeout(within):
            while len(self.delivered()) < count:
                self._changed.clear()
                await self._changed.wait()
        return self.delivered()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                lines = head.decode("latin-1").split("\r\n")
                headers = {}
                for item in lines[1:]:
                    if ":" in item:
                        name, _, value = item.partition(":")
                        headers[name.strip().lower()] = value.strip()
                body = await reader.readexactly(int(headers.get("content-length", "0")))
                status = self._check(headers, body)
                extra = f"location: {self.location}\r\n" if self.location else ""
                writer.write(f"HTTP/1.1 {status} X\r\ncontent-length: 2\r\n{extra}\r\nok".encode())
                await writer.drain()
        finally:
            self._writers.discard(writer)
            writer.close()

    def _check(self, headers: dict[str, str], body: bytes) -> int:
        try:
            payload = Webhook(self.secret).verify(body, headers)
        except WebhookVerificationError:
            self.forged += 1
            return 400
        status = self.status
        self.received.append(Received(headers["webhook-id"], payload, status))
        self._changed.set()
        return status


async def until(check: Callable[[], Awaitable[bool]], what: str, within: float = 10 * UNIT) -> None:
    """Poll ``check`` until it holds; fail naming ``what`` after ``within`` seconds."""
    try:
        async with asyncio.timeout(within):
            while not await check():  # noqa: ASYNC110 (a store or a counter: no event to wait on)
                await asyncio.sleep(0.01 * UNIT)
    except TimeoutError:
        raise AssertionError(f"not within {within:g} s: {what}") from None
