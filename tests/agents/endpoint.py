"""A tool endpoint on loopback: a tiny HTTP/1.1 server over asyncio streams that records each
request and answers as the test says (status, body, delay, or never)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field


@dataclass
class Received:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Answer:
    status: int = 200
    body: bytes = b'{"ok": true}'
    headers: dict[str, str] = field(default_factory=lambda: {"content-type": "application/json"})
    delay_s: float = 0.0
    declare_length: bool = True


class Endpoint:
    def __init__(self) -> None:
        self.requests: list[Received] = []
        self.answer = Answer()
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def url(self) -> str:
        assert self._server is not None
        host, port = self._server.sockets[0].getsockname()[:2]
        return f"http://{host}:{port}/tools"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)

    async def stop(self) -> None:
        assert self._server is not None
        self._server.close()
        for task in self._tasks:  # a connection still waiting out its delay
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            method, path, _ = lines[0].split(" ", 2)
            headers = {}
            for line in lines[1:]:
                if line:
                    name, _, value = line.partition(":")
                    headers[name.strip().lower()] = value.strip()
            body = await reader.readexactly(int(headers.get("content-length", "0")))
            self.requests.append(Received(method, path, headers, body))
            answer = self.answer
            if answer.delay_s:
                await asyncio.sleep(answer.delay_s)
            reason = {200: "OK", 302: "Found", 404: "Not Found", 500: "Internal Server Error"}
            out = [f"HTTP/1.1 {answer.status} {reason.get(answer.status, 'X')}"]
            out += [f"{k}: {v}" for k, v in answer.headers.items()]
            if answer.declare_length:
                out.append(f"content-length: {len(answer.body)}")
            out.append("connection: close")
            writer.write(("\r\n".join(out) + "\r\n\r\n").encode() + answer.body)
            await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self._tasks.discard(task)
            writer.close()
