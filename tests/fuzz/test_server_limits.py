"""Slow and oversized requests against the real server: ``voicegw serve`` in a subprocess,
real sockets on loopback.

The gateway runs with ``VOICEGW_BODY_TIMEOUT_S=0.5``, so a request must be all in within
``DEADLINE_S`` (0.5 s + ``REQUEST_GRACE_S``) of the connection waiting for it. Proved here:

* clients that send their request head or body a byte at a time are cut off with ``408``
  within the deadline (a slow webhook body by the handler, at the body deadline), while other
  clients are served meanwhile;
* a body declared over 64 KiB is refused with ``413`` before it is sent, a chunked one once
  it passes 64 KiB; a request head over 32 KiB, a single header of megabytes, or more than 100
  header lines get ``431``;
* a WebSocket message over 64 KiB closes the stream with ``1009``; an upgraded stream is not
  subject to the request deadline;
* idle connections are closed at the deadline, and the server's open file descriptors go back
  to what they were.

Figures (how long each cut took, descriptors before/during/after) are printed (``-s``).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import pytest_asyncio
import websockets

from gateway.http.request_limits import MAX_HEAD_BYTES, MAX_HEADERS, REQUEST_GRACE_S
from tests.conftest import UNIT
from tests.e2e.carrier import eventually, free_port
from tests.e2e.processes import PROCESSES, serve_process

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio(loop_scope="module")]

BODY_TIMEOUT_S = 0.5
DEADLINE_S = BODY_TIMEOUT_S + REQUEST_GRACE_S
SLACK_S = 2 * UNIT  # a busy machine's scheduling, on top of the deadline
WEBHOOK = b"POST /webhooks/telnyx HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\n"


class Server:
    def __init__(self, url: str, port: int) -> None:
        self.url = url
        self.port = port

    @property
    def pid(self) -> int:
        return PROCESSES[self.port].pid

    def open_fds(self) -> int:
        return len(os.listdir(f"/proc/{self.pid}/fd"))

    def rss_kib(self) -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise AssertionError("no VmRSS")

    async def connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.open_connection("127.0.0.1", self.port)


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def server(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Server]:
    tmp = tmp_path_factory.mktemp("limits")
    port = free_port()
    env = {
        "PATH": os.environ.get("PATH", ""),
        "VOICEGW_DATA_DIR": str(tmp / "data"),
        "VOICEGW_PUBLIC_URL": f"http://127.0.0.1:{port}",
        "VOICEGW_BODY_TIMEOUT_S": str(BODY_TIMEOUT_S),
        "VOICEGW_LOG_LEVEL": "WARNING",
    }
    async with serve_process(env, port, tmp / "serve.log") as url:
        yield Server(url, port)


async def answer(reader: asyncio.StreamReader, within: float) -> tuple[bytes, float]:
    """Everything the server sent until it closed the connection, and how long until it did.
    A reset (the server closed with our bytes unread) reads as ``b"<reset>"``, and so does a
    broken pipe: a write that failed on the reset leaves its error for the next read."""
    started = time.monotonic()
    async with asyncio.timeout(within):
        try:
            data = await reader.read()
        except (ConnectionResetError, BrokenPipeError):
            data = b"<reset>"
    return data, time.monotonic() - started


def status(reply: bytes) -> int:
    return int(reply.split(b" ", 2)[1]) if reply.startswith(b"HTTP/1.1 ") else 0


async def dribble(writer: asyncio.StreamWriter, data: bytes, every_s: float) -> None:
    """Send ``data`` a byte at a time until done or the server hangs up."""
    with contextlib.suppress(ConnectionError):
        for i in range(len(data)):
            writer.write(data[i : i + 1])
            await writer.drain()
            await asyncio.sleep(every_s)


async def healthy(server: Server, until: asyncio.Event) -> list[float]:
    """GET /healthz over fresh connections until ``until`` is set; every one must succeed.
    Returns when each answer came (``time.monotonic``)."""
    answered: list[float] = []
    async with httpx.AsyncClient(base_url=server.url, timeout=DEADLINE_S + SLACK_S) as http:
        while not until.is_set():
            assert (await http.get("/healthz")).status_code == 200
            answered.append(time.monotonic())
            await asyncio.sleep(0.05)
    return answered


async def test_slow_heads_are_cut_with_408_while_others_are_served(server: Server):
    cut_at: list[float] = []

    async def loris() -> tuple[int, float]:
        reader, writer = await server.connect()
        sending = asyncio.create_task(dribble(writer, WEBHOOK + b"X-Pad: " + b"a" * 200, 0.05))
        try:
            reply, took = await answer(reader, DEADLINE_S + SLACK_S)
        finally:
            sending.cancel()
            writer.close()
        cut_at.append(time.monotonic())
        return status(reply), took

    done = asyncio.Event()

    async def cutting() -> list[tuple[int, float]]:
        try:
            return await asyncio.gather(*(loris() for _ in range(20)))
        finally:
            done.set()

    cuts, answered = await asyncio.gather(cutting(), healthy(server, done))
    assert {code for code, _ in cuts} == {408}
    assert all(took <= DEADLINE_S + SLACK_S for _, took in cuts)
    # Others are served while all twenty slow heads still hold their connections: answers
    # that came before the first cut, however busy the machine (no per-request time limit
    # beyond the deadline the slow heads get).
    served = sum(1 for at in answered if at < min(cut_at))
    assert served >= 1, (answered, cut_at)
    print(f"\n20 slow heads: 408 after {max(t for _, t in cuts):.2f} s at most; {served} "
          "other requests served meanwhile")  # fmt: skip


@pytest.mark.parametrize(
    ("head", "within", "expect"),
    [
        # A webhook's slow body: its handler answers at the body deadline.
        (WEBHOOK + b"Content-Length: 200\r\n\r\n", BODY_TIMEOUT_S, b"body too slow"),
        # A login's: the request deadline.
        (
            b"POST /auth/login HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\n"
            b"Content-Length: 200\r\n\r\n",
            DEADLINE_S,
            b"request timeout",
        ),
    ],
    ids=["webhook", "login"],
)
async def test_slow_bodies_are_cut_with_408(server: Server, head, within, expect):
    reader, writer = await server.connect()
    writer.write(head)
    # Five of the 200 bytes, then nothing: bytes still arriving when the server closes would
    # make the kernel answer them with a reset that can overtake the 408 in the client's
    # buffer (a body that keeps trickling after the answer is the next test's case).
    sending = asyncio.create_task(dribble(writer, b"{" * 5, 0.05))
    try:
        reply, took = await answer(reader, within + SLACK_S)
    finally:
        sending.cancel()
        writer.close()
    assert status(reply) == 408 and expect in reply
    assert took <= within + SLACK_S
    print(f"\nslow body ({expect.decode()}): 408 after {took:.2f} s")


async def test_a_body_trickling_in_after_the_response_is_cut(server: Server):
    """The app answers GET /healthz at once; the body the client keeps sending is not a
    reason to keep the connection."""
    reader, writer = await server.connect()
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: gw\r\nContent-Length: 1000000\r\n\r\n")
    sending = asyncio.create_task(dribble(writer, b"a" * 10_000, 0.05))
    try:
        reply, took = await answer(reader, DEADLINE_S + SLACK_S)
    finally:
        sending.cancel()
        writer.close()
    # The server closes with the client's bytes unread: the kernel's reset can overtake the
    # 200 in the client's buffer on a busy machine. Either way the connection ended at once.
    assert (status(reply) == 200 and reply.count(b"HTTP/1.1") == 1) or reply == b"<reset>"
    assert took <= SLACK_S  # closed after the answer, not at the deadline


async def test_oversized_bodies_are_refused_with_413(server: Server):
    # Declared: refused from the header, before a byte of the body is sent.
    reader, writer = await server.connect()
    writer.write(WEBHOOK + b"Content-Length: 10000000\r\n\r\n")
    reply, took = await answer(reader, SLACK_S)
    writer.close()
    assert status(reply) == 413 and b"body too large" in reply
    # Chunked: refused once it passes the cap (17 chunks of 4 KiB: just over 64 KiB, all of
    # which the server reads, so it closes cleanly after its answer).
    reader, writer = await server.connect()
    writer.write(WEBHOOK + b"Transfer-Encoding: chunked\r\n\r\n")
    writer.write(b"".join(b"1000\r\n" + b"a" * 4096 + b"\r\n" for _ in range(17)))
    await writer.drain()
    chunked, _ = await answer(reader, SLACK_S)
    writer.close()
    assert status(chunked) == 413 and b"body too large" in chunked
    print(f"\n10 MB declared: 413 after {took * 1000:.0f} ms, nothing read")


@pytest.mark.parametrize(
    "head",
    [
        b"GET /healthz HTTP/1.1\r\nHost: gw\r\nX-Big: " + b"a" * (MAX_HEAD_BYTES + 1) + b"\r\n\r\n",
        b"GET /healthz HTTP/1.1\r\nHost: gw\r\n"
        + b"".join(b"X-%d: a\r\n" % i for i in range(MAX_HEADERS + 1))
        + b"\r\n",
        b"GET /healthz HTTP/1.1\r\nHost: gw\r\nX-Huge: " + b"a" * 5_000_000,
        b"GET /" + b"a" * (MAX_HEAD_BYTES + 1) + b" HTTP/1.1\r\nHost: gw\r\n\r\n",
    ],
    ids=["one-big-header", "too-many-headers", "megabytes-unfinished", "long-url"],
)
async def test_oversized_heads_are_refused_with_431(server: Server, head):
    rss_before = server.rss_kib()
    reader, writer = await server.connect()
    with contextlib.suppress(ConnectionError):
        writer.write(head)
        await writer.drain()
    reply, took = await answer(reader, DEADLINE_S + SLACK_S)
    writer.close()
    # Refused mid-send, the 431 can be lost to the reset that closing with unread bytes makes.
    assert status(reply) == 431 or (reply == b"<reset>" and len(head) > 1_000_000)
    growth = server.rss_kib() - rss_before
    assert growth < 4096, f"RSS grew {growth} KiB"
    print(f"\n{len(head)} byte head: 431 after {took * 1000:.0f} ms, RSS +{growth} KiB")


async def test_oversized_websocket_messages_close_1009(server: Server):
    ws_url = server.url.replace("http://", "ws://") + "/media/telnyx"
    async with websockets.connect(ws_url, max_size=None) as ws:
        # The upgrade left the request deadline behind: the stream outlives it.
        await asyncio.sleep(DEADLINE_S + 0.5)
        await ws.send('{"event": "connected", "version": "1.0.0"}')
        await ws.send("x" * (64 * 1024 + 1))
        with pytest.raises(websockets.ConnectionClosed):
            async with asyncio.timeout(5 * UNIT):
                await ws.recv()
    assert ws.close_code == 1009


async def test_idle_connections_are_closed_and_descriptors_freed(server: Server):
    before = server.open_fds()
    opened = await asyncio.gather(*(server.connect() for _ in range(200)))
    # The kernel completes a connection before the server accepts it: wait for the accepts.
    await eventually(lambda: server.open_fds() > before + 100, 2 * UNIT, "connections accepted")
    during = server.open_fds()
    enough = asyncio.Event()
    asyncio.get_running_loop().call_later(0.5, enough.set)
    served = len(await healthy(server, enough))
    started = time.monotonic()
    replies = await asyncio.gather(*(answer(r, DEADLINE_S + SLACK_S) for r, _ in opened))
    took = time.monotonic() - started
    for _, writer in opened:
        writer.close()
    assert all(reply == b"" for reply, _ in replies)  # closed without a word: nothing was asked
    await eventually(lambda: server.open_fds() <= before, 5 * UNIT, "descriptors freed")
    print(f"\n200 idle connections: fds {before} -> {during} -> {server.open_fds()}, all closed "
          f"within {took + 0.5:.2f} s; {served} requests served meanwhile")  # fmt: skip


async def test_each_request_on_a_kept_alive_connection_has_the_deadline(server: Server):
    reader, writer = await server.connect()
    # Two pipelined requests are both answered (the deadline does not cut a queued one)...
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: gw\r\n\r\n" * 2)
    async with asyncio.timeout(SLACK_S):
        first = await reader.readuntil(b'{"status":"ok"}')
        second = await reader.readuntil(b'{"status":"ok"}')
    assert status(first) == 200 and status(second) == 200
    # ...and then a slow third one is cut like any other. It trickles for half the deadline and
    # then stalls, unfinished: a byte written after the server's 408 and close would make its
    # kernel answer with a reset, which can drop the 408 before a busy client has read it.
    trickle = WEBHOOK[: max(1, int(DEADLINE_S / 2 / 0.05))]
    sending = asyncio.create_task(dribble(writer, trickle, 0.05))
    try:
        reply, took = await answer(reader, DEADLINE_S + SLACK_S)
    finally:
        sending.cancel()
        writer.close()
    assert status(reply) == 408 and took <= DEADLINE_S + SLACK_S
