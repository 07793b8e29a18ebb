"""A raw HTTP/1.1 load generator in several processes, cheap enough that the server saturates
first (used by ``bench/webhooks.py``).

Every worker process runs its own uvloop with connections opened before the timed phase and
requests already serialized to bytes, so all a worker does per request is one
``transport.write`` and the parsing of one response's status line and ``Content-Length``
(no pipelining: one request in flight per connection). Two modes:

* ``closed``: each connection sends its next request as soon as the previous one is answered;
  the phase's answers per second is the server's maximum throughput at that concurrency.
* ``open``: each request has a due time (an offset from the common start). At that time it goes
  out on an idle connection, or waits for the first one to free up. Latency is reported both
  from the send and from the due time; the second includes any wait for a free connection, so a
  server that falls behind cannot hide its queue (no coordinated omission). Timers have
  millisecond resolution, so a request may leave up to about 1 ms after its due time.

Times are ``time.monotonic()`` (``CLOCK_MONOTONIC``, one clock for every process on Linux):
the parent sends every worker the same start time once all of them have connected.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import multiprocessing
import multiprocessing.connection
import time
from array import array
from dataclasses import dataclass, field
from typing import Any, Final

from processes import cpu_seconds, machine_busy_seconds

GO_DELAY_S: Final = 0.05
"""The common start is this far after the last worker reported ready."""
CONNECT_TIMEOUT_S: Final = 10.0


@dataclass
class Sample:
    """CPU spent from a phase's start to its last answer: the server's and the machine's."""

    server_cpu_s: float = 0.0
    busy_s: float = 0.0


@dataclass
class Job:
    """One worker's share of a phase.

    ``requests`` are complete HTTP/1.1 requests (head and body). ``tags`` (one byte per
    request, default all 0) splits the results, e.g. valid / badly signed. ``offsets`` (open
    loop only) are due times in seconds after the start, ascending. ``duration_s`` (closed
    loop only) stops sending after that long, whatever is left of ``requests``.
    """

    mode: str  # "closed" | "open"
    host: str
    port: int
    requests: list[bytes]
    connections: int
    offsets: list[float] | None = None
    tags: bytes | None = None
    duration_s: float | None = None
    timeout_s: float = 120.0


@dataclass
class Result:
    """What one worker measured. Latencies are milliseconds, per tag."""

    started: float = 0.0
    last_answer: float = 0.0
    answered: int = 0
    from_send_ms: dict[int, array[float]] = field(default_factory=dict)
    from_due_ms: dict[int, array[float]] = field(default_factory=dict)
    statuses: dict[int, collections.Counter[int]] = field(default_factory=dict)
    errors: collections.Counter[str] = field(default_factory=collections.Counter)
    waited: int = 0  # open loop: requests that found no idle connection at their due time
    cpu_s: float = 0.0


class _Connection(asyncio.Protocol):
    """One keep-alive connection with at most one request in flight."""

    __slots__ = (
        "_buffer",
        "_need",
        "_status",
        "due",
        "index",
        "lost",
        "owner",
        "sent",
        "transport",
    )

    def __init__(self, owner: _Worker) -> None:
        self.owner = owner
        self.transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._need = -1
        self._status = 0
        self.index = -1  # the request in flight, -1 when idle
        self.sent = 0.0
        self.due = 0.0
        self.lost = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is no subclass

    def send(self, index: int, due: float) -> None:
        assert self.transport is not None
        self.index = index
        self.due = due
        self.sent = time.monotonic()
        self.transport.write(self.owner.requests[index])

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer
        buffer += data
        if self._need < 0:
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(buffer[:end]).lower()
            self._status = int(head[9:12])
            at = head.find(b"\r\ncontent-length:")
            if at < 0:
                self.owner.fail(self, "no content-length")
                return
            stop = head.find(b"\r\n", at + 2)
            self._need = end + 4 + int(head[at + 17 : stop if stop > 0 else len(head)])
        if len(buffer) < self._need:
            return
        del buffer[: self._need]
        self._need = -1
        self.owner.answered(self, self._status)

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self.owner.closed(self)


class _Worker:
    """Runs one ``Job`` on the current event loop."""

    def __init__(self, job: Job) -> None:
        self.job = job
        self.requests = job.requests
        self.tags = job.tags or bytes(len(job.requests))
        self.result = Result()
        self.idle: collections.deque[_Connection] = collections.deque()
        self.backlog: collections.deque[tuple[int, float]] = collections.deque()
        self.next = 0  # closed loop: the next request to send
        self.stop_at = float("inf")  # closed loop: no request is sent after this time
        self.outstanding = len(job.requests)
        self.finished = asyncio.get_running_loop().create_future()
        self.connections: list[_Connection] = []

    async def connect(self) -> None:
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(CONNECT_TIMEOUT_S):
            for _ in range(self.job.connections):
                _, conn = await loop.create_connection(
                    lambda: _Connection(self), self.job.host, self.job.port
                )
                self.connections.append(conn)

    async def run(self, start: float) -> Result:
        result = self.result
        result.started = start
        for tag in set(self.tags):
            result.from_send_ms[tag] = array("d")
            result.from_due_ms[tag] = array("d")
            result.statuses[tag] = collections.Counter()
        cpu = time.process_time()
        delay = start - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        try:
            async with asyncio.timeout(self.job.timeout_s):
                if not self.requests:
                    pass
                elif self.job.mode == "closed":
                    if self.job.duration_s is not None:
                        self.stop_at = start + self.job.duration_s
                    for conn in self.connections:
                        self._send_next(conn)
                    await self.finished
                else:
                    self.idle.extend(self.connections)
                    await self._schedule(start)
                    await self.finished
        except TimeoutError:
            result.errors["timeout"] += self.outstanding
        result.cpu_s = time.process_time() - cpu
        for conn in self.connections:
            if conn.transport is not None:
                conn.transport.close()
        return result

    async def _schedule(self, start: float) -> None:
        offsets = self.job.offsets
        assert offsets is not None
        for index, offset in enumerate(offsets):
            due = start + offset
            delay = due - time.monotonic()
            if delay > 0.0005:
                await asyncio.sleep(delay)
            if self.idle:
                self.idle.popleft().send(index, due)
            else:
                self.result.waited += 1
                self.backlog.append((index, due))

    def _send_next(self, conn: _Connection) -> None:
        now = time.monotonic()
        if self.next < len(self.requests) and now < self.stop_at:
            index = self.next
            self.next += 1
            conn.send(index, now)
            return
        conn.index = -1
        if self.next < len(self.requests):  # out of time: what is left is never sent
            self.outstanding -= len(self.requests) - self.next
            self.next = len(self.requests)
        if not any(c.index >= 0 for c in self.connections) and not self.finished.done():
            self.finished.set_result(None)

    def _next_for(self, conn: _Connection) -> None:
        if self.job.mode == "closed":
            self._send_next(conn)
        elif self.backlog:
            conn.send(*self.backlog.popleft())
        else:
            conn.index = -1
            self.idle.append(conn)

    def answered(self, conn: _Connection, status: int) -> None:
        now = time.monotonic()
        tag = self.tags[conn.index]
        result = self.result
        result.from_send_ms[tag].append((now - conn.sent) * 1000)
        result.from_due_ms[tag].append((now - conn.due) * 1000)
        result.statuses[tag][status] += 1
        result.answered += 1
        result.last_answer = now
        self._done_one()
        self._next_for(conn)

    def fail(self, conn: _Connection, reason: str) -> None:
        self.result.errors[reason] += 1
        if conn.transport is not None:
            conn.transport.close()

    def closed(self, conn: _Connection) -> None:
        if self.finished.done():
            return
        if conn.index >= 0:
            self.result.errors["connection lost"] += 1
            self._done_one()
        with contextlib.suppress(ValueError):
            self.idle.remove(conn)
        if not self.finished.done():
            asyncio.get_running_loop().create_task(self._replace(conn))

    async def _replace(self, old: _Connection) -> None:
        loop = asyncio.get_running_loop()
        try:
            _, conn = await loop.create_connection(
                lambda: _Connection(self), self.job.host, self.job.port
            )
        except OSError as exc:
            self.result.errors[type(exc).__name__] += 1
            return
        self.connections[self.connections.index(old)] = conn
        self._next_for(conn)

    def _done_one(self) -> None:
        self.outstanding -= 1
        if self.outstanding == 0 and not self.finished.done():
            self.finished.set_result(None)


def _serve(pipe: multiprocessing.connection.Connection) -> None:
    """A worker process: for each job, connect, report ready, wait for the start, run."""
    try:
        import uvloop

        loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
    except ImportError:  # pragma: no cover - uvloop is a dependency
        loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    while True:
        job: Job | None = pipe.recv()
        if job is None:
            break
        worker = loop.run_until_complete(_connected(job))
        pipe.send("ready")
        start: float = pipe.recv()
        pipe.send(loop.run_until_complete(worker.run(start)))
    loop.close()


async def _connected(job: Job) -> _Worker:
    worker = _Worker(job)
    await worker.connect()
    return worker


class LoadGenerator:
    """``workers`` generator processes, kept for every phase of a run."""

    def __init__(self, workers: int) -> None:
        context = multiprocessing.get_context("spawn")
        self.pipes: list[multiprocessing.connection.Connection] = []
        self.processes: list[Any] = []
        for _ in range(workers):
            mine, theirs = context.Pipe()
            process = context.Process(target=_serve, args=(theirs,), daemon=True)
            process.start()
            theirs.close()
            self.pipes.append(mine)
            self.processes.append(process)

    @property
    def workers(self) -> int:
        return len(self.pipes)

    def pids(self) -> list[int]:
        return [p.pid for p in self.processes]

    def run(self, jobs: list[Job], server_pid: int | None = None) -> tuple[list[Result], Sample]:
        """Run one job per worker from a common start; returns the results and the CPU the
        server (``server_pid``) and the whole machine spent meanwhile."""
        assert len(jobs) == len(self.pipes)
        for pipe, job in zip(self.pipes, jobs, strict=True):
            pipe.send(job)
        for pipe in self.pipes:
            if pipe.recv() != "ready":  # pragma: no cover - protocol error
                raise RuntimeError("load generator worker did not connect")
        start = time.monotonic() + GO_DELAY_S
        for pipe in self.pipes:
            pipe.send(start)
        time.sleep(max(0.0, start - time.monotonic()))
        cpu0 = cpu_seconds(server_pid) if server_pid is not None else 0.0
        busy0 = machine_busy_seconds()
        results: list[Result] = [pipe.recv() for pipe in self.pipes]
        sample = Sample(busy_s=machine_busy_seconds() - busy0)
        if server_pid is not None:
            sample.server_cpu_s = cpu_seconds(server_pid) - cpu0
        return results, sample

    def close(self) -> None:
        for pipe in self.pipes:
            with contextlib.suppress(OSError):
                pipe.send(None)
        for process in self.processes:
            process.join(5)
            if process.is_alive():
                process.kill()
                process.join()


def split_closed(
    host: str,
    port: int,
    requests: list[bytes],
    concurrency: int,
    workers: int,
    duration_s: float | None = None,
) -> list[Job]:
    """Requests dealt round-robin, connections split as evenly as possible."""
    return [
        Job(
            "closed",
            host,
            port,
            requests[k::workers],
            max(1, concurrency // workers + (1 if k < concurrency % workers else 0)),
            duration_s=duration_s,
        )
        for k in range(workers)
    ]


def split_open(
    host: str,
    port: int,
    requests: list[bytes],
    offsets: list[float],
    connections: int,
    workers: int,
    tags: bytes | None = None,
) -> list[Job]:
    """Request ``i`` goes to worker ``i % workers``: each worker's schedule is 1/workers of
    the rate, and together they keep the even global schedule."""
    return [
        Job(
            "open",
            host,
            port,
            requests[k::workers],
            connections,
            offsets[k::workers],
            tags[k::workers] if tags is not None else None,
        )
        for k in range(workers)
    ]


def http_request(
    method: str, path: str, host: str, headers: dict[str, str], body: bytes = b""
) -> bytes:
    """One serialized HTTP/1.1 request (keep-alive, ``Content-Length`` when there is a body)."""
    lines = [f"{method} {path} HTTP/1.1", f"host: {host}"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    if body or method == "POST":
        lines.append(f"content-length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body
