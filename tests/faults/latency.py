"""A TCP proxy on loopback that delays everything the upstream sends back: a slow Redis.

    async with LatencyProxy(port_of_redis) as proxy:
        url = f"redis://127.0.0.1:{proxy.port}/0"
        proxy.delay_s = 0.2       # every reply arrives 200 ms late from now on
        proxy.delay_s = 2.0

Replies keep their order and the link keeps its throughput; only their arrival is late, as
on a congested or far-away server. Requests go upstream at once. ``delay_s`` can change at
any time and applies to bytes read from the upstream after the change.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Coroutine
from types import TracebackType
from typing import Any, Self


class LatencyProxy:
    def __init__(self, upstream_port: int, *, delay_s: float = 0.0) -> None:
        self.upstream_port = upstream_port
        self.delay_s = delay_s
        self.port = 0
        self.connections = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()

    async def __aenter__(self) -> Self:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        assert self._server is not None
        self._server.close()
        for writer in list(self._writers):
            writer.transport.abort()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self._writers.add(writer)
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        except OSError:
            writer.transport.abort()
            self._writers.discard(writer)
            return
        self._writers.add(up_writer)
        self._spawn(self._pump(reader, up_writer, delayed=False), "proxy-up")
        self._spawn(self._pump(up_reader, writer, delayed=True), "proxy-down")

    async def _pump(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, delayed: bool
    ) -> None:
        """Copy ``reader`` to ``writer``; when ``delayed``, each chunk leaves ``delay_s`` after
        it arrived (a queue keeps the order, so the delay does not throttle the link)."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

        async def release() -> None:
            while True:
                due, data = await queue.get()
                if not data:
                    break
                await asyncio.sleep(max(0.0, due - loop.time()))
                writer.write(data)
                await writer.drain()

        sender = asyncio.create_task(release(), name="proxy-release")
        try:
            while data := await reader.read(65536):
                await queue.put((loop.time() + (self.delay_s if delayed else 0.0), data))
            await queue.put((loop.time() + (self.delay_s if delayed else 0.0), b""))
            await sender
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            sender.cancel()
            with contextlib.suppress(asyncio.CancelledError, OSError):
                await sender
            self._writers.discard(writer)
            writer.transport.abort()
