"""Both WebSocket clients of providers.ai.transport against real loopback servers: handshake
refusals, headers, TLS, fragments, size limit, close codes, pings, send backpressure."""

from __future__ import annotations

import asyncio
import base64
import datetime
import hashlib
import ipaddress
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from http import HTTPStatus
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from websockets.asyncio.server import ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from providers.ai import transport
from providers.ai.transport import Closed, Connection, Options
from providers.exceptions import ConnectError
from tests.conftest import UNIT
from tests.fakes.refuser import Refuser

pytestmark = pytest.mark.usefixtures("ws_client")

_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"  # RFC 6455, section 1.3
Handler = Callable[[ServerConnection], Awaitable[None]]


def options(**kw: float) -> Options:
    return Options(**({"close_timeout_s": UNIT, "max_message_bytes": 64 * 1024} | kw))  # type: ignore[arg-type]


async def open_(url: str, headers: dict[str, str] | None = None, **kw: float) -> Connection:
    from tests.providers.ai import clients

    async with asyncio.timeout(5 * UNIT):
        return await transport.connect(clients.current, url, headers or {}, options(**kw))


@asynccontextmanager
async def server(
    handler: Handler,
    *,
    refuse: HTTPStatus | None = None,
    seen: list[Headers] | None = None,
    tls: ssl.SSLContext | None = None,
) -> AsyncIterator[str]:
    def process_request(conn: ServerConnection, request: Request) -> Response | None:
        if seen is not None:
            seen.append(request.headers)
        return conn.respond(refuse, "no\n") if refuse is not None else None

    async with serve(
        handler, "127.0.0.1", 0, process_request=process_request, ssl=tls, compression=None
    ) as srv:
        port = srv.sockets[0].getsockname()[1]
        yield f"{'wss' if tls else 'ws'}://{'localhost' if tls else '127.0.0.1'}:{port}/v1"


async def echo(conn: ServerConnection) -> None:
    async for message in conn:
        await conn.send(message)


# -- handshake -----------------------------------------------------------------------------


@pytest.mark.parametrize("status", [HTTPStatus.UNAUTHORIZED, HTTPStatus.TOO_MANY_REQUESTS])
async def test_a_refused_handshake_names_the_status(status: HTTPStatus) -> None:
    async with server(echo, refuse=status) as url:
        with pytest.raises(ConnectError, match=f"handshake rejected with HTTP {status.value}"):
            await open_(url)


async def test_a_peer_that_hangs_up_before_the_handshake() -> None:
    async with Refuser() as refuser:
        with pytest.raises(ConnectError, match="could not connect"):
            await open_(refuser.url)


async def test_the_headers_reach_the_server() -> None:
    seen: list[Headers] = []
    async with server(echo, seen=seen) as url:
        ws = await open_(url, {"Authorization": "Bearer sk-1", "OpenAI-Beta": "x"})
        await ws.close()
    assert seen[0]["Authorization"] == "Bearer sk-1"
    assert seen[0]["OpenAI-Beta"] == "x"


def _self_signed(tmp: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp / "cert.pem", tmp / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


async def test_tls_uses_the_trust_store_and_sends_sni(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cert, key = _self_signed(tmp_path)
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(cert, key)
    names: list[str | None] = []
    tls.sni_callback = lambda sock, name, ctx: names.append(name)
    async with server(echo, tls=tls) as url:
        # Not in the trust store: refused.
        transport.tls_context.cache_clear()
        with pytest.raises(ConnectError, match="could not connect"):
            await open_(url)
        # In the trust store (SSL_CERT_FILE is where OpenSSL looks): accepted.
        monkeypatch.setenv("SSL_CERT_FILE", str(cert))
        transport.tls_context.cache_clear()
        try:
            ws = await open_(url)
            await ws.send("over tls")
            assert await ws.recv() == "over tls"
            await ws.close()
        finally:
            transport.tls_context.cache_clear()
    assert names[-1] == "localhost"


# -- messages ------------------------------------------------------------------------------


async def test_text_and_binary_round_trip_and_fragments_are_reassembled() -> None:
    async def fragments(conn: ServerConnection) -> None:
        await conn.send(["héllo ", "wörld"])  # one text message in two frames
        await conn.send([b"\x00\x01", b"\x02", b"\x03"])
        await echo(conn)

    async with server(fragments) as url:
        ws = await open_(url)
        async with asyncio.timeout(5 * UNIT):
            assert await ws.recv() == "héllo wörld"
            assert await ws.recv() == b"\x00\x01\x02\x03"
            await ws.send("text")
            await ws.send(b"\xff\x00")
            assert await ws.recv() == "text"
            assert await ws.recv() == b"\xff\x00"
        await ws.close()


@pytest.mark.parametrize("fragmented", [False, True])
async def test_a_message_over_the_limit_ends_the_connection(fragmented: bool) -> None:
    big = "x" * (64 * 1024 + 1)

    async def send_big(conn: ServerConnection) -> None:
        await conn.send([big[:40000], big[40000:]] if fragmented else big)
        await conn.wait_closed()

    async with server(send_big) as url:
        ws = await open_(url)
        async with asyncio.timeout(5 * UNIT):
            with pytest.raises(Closed) as info:
                await ws.recv()
        assert info.value.abnormal
        await ws.close()


async def test_many_unread_messages_arrive_in_order() -> None:
    count = 500  # well past the point where the client stops reading from the socket

    async def flood(conn: ServerConnection) -> None:
        for i in range(count):
            await conn.send(f"{i}")
        await conn.wait_closed()

    async with server(flood) as url:
        ws = await open_(url)
        await asyncio.sleep(0.1 * UNIT)  # let the messages pile up unread
        async with asyncio.timeout(5 * UNIT):
            assert [await ws.recv() for _ in range(count)] == [str(i) for i in range(count)]
        await ws.close()


# -- closing -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "abnormal"), [(1000, False), (1001, False), (1011, True), (4000, True)]
)
async def test_the_peers_close_code_and_kind(code: int, abnormal: bool) -> None:
    async def close(conn: ServerConnection) -> None:
        await conn.send("last")
        await conn.close(code, "bye")

    async with server(close) as url:
        ws = await open_(url)
        async with asyncio.timeout(5 * UNIT):
            assert await ws.recv() == "last"  # what came before the close is still read
            with pytest.raises(Closed) as info:
                await ws.recv()
        assert (info.value.code, info.value.abnormal) == (code, abnormal)
        with pytest.raises(Closed):
            await ws.send("too late")
        await ws.close()


async def test_a_peer_that_vanishes_is_an_abnormal_end_without_code() -> None:
    async def vanish(conn: ServerConnection) -> None:
        conn.transport.abort()

    async with server(vanish) as url:
        ws = await open_(url)
        async with asyncio.timeout(5 * UNIT):
            with pytest.raises(Closed) as info:
                await ws.recv()
        assert (info.value.code, info.value.abnormal) == (None, True)


async def test_close_performs_the_close_handshake() -> None:
    codes: list[int | None] = []
    done = asyncio.Event()

    async def record(conn: ServerConnection) -> None:
        try:
            await conn.recv()
        except ConnectionClosed:
            pass
        codes.append(conn.close_code)
        done.set()

    async with server(record) as url:
        ws = await open_(url)
        receiver = asyncio.create_task(ws.recv())
        async with asyncio.timeout(5 * UNIT):
            await ws.close()
            await ws.close()  # idempotent
            await done.wait()
            with pytest.raises(Closed):
                await receiver
    assert codes == [1000]


# -- pings ---------------------------------------------------------------------------------


async def test_the_peers_pings_are_answered() -> None:
    ponged = asyncio.Event()

    async def ping(conn: ServerConnection) -> None:
        await (await conn.ping())
        ponged.set()
        await conn.wait_closed()

    async with server(ping) as url:
        ws = await open_(url)
        async with asyncio.timeout(5 * UNIT):
            await ponged.wait()
        await ws.close()


@asynccontextmanager
async def raw_server(
    after_handshake: Callable[[asyncio.StreamReader], Awaitable[None]],
) -> AsyncIterator[str]:
    """A bare server: answers the opening handshake, then runs ``after_handshake``."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        request = await reader.readuntil(b"\r\n\r\n")
        key = next(
            line.split(b":", 1)[1].strip()
            for line in request.split(b"\r\n")
            if line.lower().startswith(b"sec-websocket-key:")
        )
        accept = base64.b64encode(hashlib.sha1(key + _GUID, usedforsecurity=False).digest())
        writer.write(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept + b"\r\n\r\n"
        )
        await after_handshake(reader)
        writer.close()

    srv = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        yield f"ws://127.0.0.1:{srv.sockets[0].getsockname()[1]}/v1"
    finally:
        srv.close()


async def ignore_everything(reader: asyncio.StreamReader) -> None:
    while await reader.read(65536):
        pass


async def test_a_peer_that_never_answers_pings_is_dropped() -> None:
    async with raw_server(ignore_everything) as url:
        ws = await open_(url, ping_interval_s=0.1 * UNIT, ping_timeout_s=0.1 * UNIT)
        async with asyncio.timeout(5 * UNIT):
            with pytest.raises(Closed) as info:
                await ws.recv()
        assert info.value.abnormal
        ws.abort()


# -- backpressure --------------------------------------------------------------------------


async def test_send_waits_while_the_peer_does_not_read_and_abort_ends_the_wait() -> None:
    stop = asyncio.Event()

    async def stall(reader: asyncio.StreamReader) -> None:
        await stop.wait()  # never reads

    async with raw_server(stall) as url:
        try:
            ws = await open_(url)
            sender = asyncio.create_task(_send_forever(ws, b"\x00" * 256 * 1024))
            # Socket buffers hold a few MB at most: the sender ends up waiting.
            done, _ = await asyncio.wait([sender], timeout=1 * UNIT)
            assert not done
            ws.abort()
            async with asyncio.timeout(5 * UNIT):
                with pytest.raises(Closed):
                    await sender
        finally:
            stop.set()


async def _send_forever(ws: Connection, chunk: bytes) -> None:
    while True:
        await ws.send(chunk)
