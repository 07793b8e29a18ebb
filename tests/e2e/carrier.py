"""The carrier side of end-to-end tests: a live gateway on loopback, and Twilio / Telnyx clients.

``start_gateway`` serves ``build_app(settings)`` with real uvicorn in the test's event loop,
its carrier REST base URLs pointing at a :class:`FakeCarrierRest` (which also plays Telnyx Call
Control: ``answer`` and ``streaming_start`` are read back from it).

A call has two phases, split so tests can tamper between them:

* ``answer(gw, carrier)`` plays the signed webhooks and returns a :class:`Ticket` (the call's
  ids, the stream URL and the stream token the gateway handed out);
* ``open_stream(gw, ticket)`` opens the media WebSocket, sends ``connected`` and ``start``, and
  returns a :class:`Leg` that records everything the gateway sends back (and acknowledges marks
  like the carrier does, unless told not to).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import secrets
import socket
import time
import uuid
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import orjson
import websockets
from starlette.applications import Starlette
from twilio.request_validator import RequestValidator
from websockets.asyncio.client import ClientConnection
from websockets.client import ClientProtocol
from websockets.protocol import State
from websockets.uri import parse_uri

from gateway import devkeys
from gateway.app import build_app
from gateway.calls.state import Call
from gateway.cli.simulate import CarrierFrames, post_telnyx, serve_app
from gateway.media.audio import read_wav
from gateway.runtime import Runtime
from gateway.settings import Settings
from metrics.registry import REGISTRY
from providers.events import PCMU_8K
from tests.conftest import UNIT
from tests.fakes.carrier_rest import FakeCarrierRest, RecordedRequest

DATA = Path(__file__).resolve().parent.parent / "data"
FRAME = 160  # 20 ms of 8 kHz mu-law
FRAME_S = 0.02
TWILIO_TOKEN = "e2e-twilio-auth-token"
TELNYX_API_KEY = "KEYe2e-telnyx-api-key"
OPENAI_KEY = "sk-e2e"
DEEPGRAM_KEY = "dg-e2e"
GEMINI_KEY = "g-e2e"


def caller_audio(frames: int | None = None) -> bytes:
    """Caller speech (8 kHz mu-law) from the test WAV, whole 20 ms frames."""
    fmt, data = read_wav(str(DATA / "caller-8k-ulaw.wav"))
    assert fmt == PCMU_8K
    data = data[: len(data) - len(data) % FRAME]
    return data if frames is None else data[: frames * FRAME]


def frames_of(audio: bytes) -> list[bytes]:
    return [audio[i : i + FRAME] for i in range(0, len(audio), FRAME)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


async def eventually(predicate: Callable[[], object], within: float, what: str = "") -> None:
    """Poll ``predicate`` until it holds; fail after ``within`` seconds."""
    deadline = time.monotonic() + within
    for _ in itertools.count():
        if predicate():
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {within:g} s: {what or predicate}")
        await asyncio.sleep(0.005)


def metric(name: str, **labels: str) -> float:
    """The current value of the samples of the gateway's registry named ``name`` whose labels
    include ``labels``, summed (0 when none): a label left out counts every value of it."""
    return sum(
        s.value
        for family in REGISTRY.collect()
        for s in family.samples
        if s.name == name and labels.items() <= s.labels.items()
    )


def metric_sum(name: str) -> float:
    """Sum of every sample named ``name`` (all label sets)."""
    return sum(s.value for family in REGISTRY.collect() for s in family.samples if s.name == name)


# -- the gateway -----------------------------------------------------------------------------


@dataclass
class Gateway:
    url: str
    settings: Settings
    app: Starlette
    rest: FakeCarrierRest

    @property
    def runtime(self) -> Runtime:
        runtime: Runtime = self.app.state.runtime
        return runtime

    @property
    def keys(self) -> devkeys.DevKeys:
        return devkeys.load_or_create(self.settings.data_dir)

    async def call(self, carrier: str, carrier_call_id: str) -> Call | None:
        return await self.runtime.registry.by_carrier_id(carrier, carrier_call_id)

    async def wait_ended(self, ticket: Ticket, within: float = 5 * UNIT) -> Call:
        """The call once the registry has it ended (fails after ``within`` seconds)."""
        deadline = time.monotonic() + within
        for _ in itertools.count():
            call = await self.call(ticket.carrier, ticket.call_id)
            if call is not None and not call.active:
                return call
            if time.monotonic() > deadline:
                raise AssertionError(f"call not ended within {within:g} s: {call}")
            await asyncio.sleep(0.01)
        raise AssertionError("unreachable")


def gateway_env(tmp_path: Path, port: int, rest: FakeCarrierRest, **env: str) -> dict[str, str]:
    return {
        "VOICEGW_DATA_DIR": str(tmp_path / "data"),
        "VOICEGW_PUBLIC_URL": f"http://127.0.0.1:{port}",
        "VOICEGW_TWILIO_AUTH_TOKEN": TWILIO_TOKEN,
        "VOICEGW_TWILIO_API_URL": rest.base_url,
        "VOICEGW_TELNYX_API_URL": rest.base_url,
        "VOICEGW_TELNYX_API_KEY": TELNYX_API_KEY,
        "VOICEGW_DRAIN_SECONDS": "1",
        "VOICEGW_CARRIER_REST_TIMEOUT_S": "2",
        **env,
    }


@contextlib.asynccontextmanager
async def start_gateway(
    tmp_path: Path, rest: FakeCarrierRest, *, sndbuf: int | None = None, **env: str
) -> AsyncIterator[Gateway]:
    """A gateway on a free loopback port. ``sndbuf`` pins the send buffer of its sockets
    (accepted sockets inherit it from the listening one), for tests of slow readers."""
    port = free_port()
    settings = devkeys.apply(Settings.from_env(gateway_env(tmp_path, port, rest, **env)))
    app = build_app(settings)
    async with serve_app(app, port, sndbuf=sndbuf) as url:
        yield Gateway(url, settings, app, rest)


# -- webhooks --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Ticket:
    """A call the gateway has answered: where to stream and with which token."""

    carrier: str
    call_id: str  # Twilio CallSid / Telnyx call_control_id
    account_id: str  # Twilio AccountSid ("" for Telnyx)
    stream_url: str  # public ws URL the gateway named
    token: str


CALLEE = "+15550100002"


def twilio_params(
    call_sid: str, account_sid: str, status: str = "ringing", *, to: str = CALLEE
) -> dict[str, str]:
    return {
        "AccountSid": account_sid,
        "CallSid": call_sid,
        "CallStatus": status,
        "Direction": "inbound",
        "From": "+15550100001",
        "To": to,
        "ApiVersion": "2010-04-01",
    }


async def post_twilio(
    gw: Gateway | str, path: str, params: Mapping[str, str], *, public_url: str | None = None
) -> httpx.Response:
    """POST a Twilio webhook signed over the public URL (``public_url`` or the gateway's)."""
    base = gw if isinstance(gw, str) else gw.url
    public = public_url or (gw.settings.public_url if isinstance(gw, Gateway) else base)
    signature = RequestValidator(TWILIO_TOKEN).compute_signature(public + path, dict(params))
    async with httpx.AsyncClient(base_url=base, timeout=5 * UNIT) as http:
        return await http.post(path, data=dict(params), headers={"X-Twilio-Signature": signature})


def telnyx_event(event_type: str, call_control_id: str, **extra: Any) -> bytes:
    payload = {
        "call_control_id": call_control_id,
        "call_leg_id": str(uuid.uuid4()),
        "call_session_id": str(uuid.uuid4()),
        "connection_id": "1684641123236054244",
        "from": "+15550100001",
        "to": "+15550100002",
        "direction": "incoming",
        **extra,
    }
    return orjson.dumps(
        {
            "data": {
                "event_type": event_type,
                "id": str(uuid.uuid4()),
                "occurred_at": time.strftime("%Y-%m-%dT%H:%M:%S.000000Z", time.gmtime()),
                "payload": payload,
                "record_type": "event",
            },
            "meta": {"attempt": 1, "delivered_to": "voicegw"},
        }
    )


async def send_telnyx(url: str, keys: devkeys.DevKeys, body: bytes) -> httpx.Response:
    async with httpx.AsyncClient(base_url=url, timeout=5 * UNIT) as http:
        return await post_telnyx(http, keys, body)


async def rest_command(
    rest: FakeCarrierRest, call_id: str, action: str, within: float = 5 * UNIT
) -> RecordedRequest:
    """The first REST request the gateway made for ``call_id`` with ``action``."""

    def find() -> RecordedRequest | None:
        return next((r for r in rest.requests if r.call_id == call_id and r.action == action), None)

    await eventually(lambda: find() is not None, within, f"REST {action} for {call_id}")
    found = find()
    assert found is not None
    return found


async def answer(gw: Gateway, carrier: str, *, to: str = CALLEE) -> Ticket:
    """Play the carrier's signed webhooks (a call to ``to``) up to the point where it would
    open the stream."""
    if carrier == "twilio":
        account_sid, call_sid = "AC" + secrets.token_hex(16), "CA" + secrets.token_hex(16)
        reply = await post_twilio(
            gw, "/webhooks/twilio/voice", twilio_params(call_sid, account_sid, to=to)
        )
        assert reply.status_code == 200, reply.text
        stream = ET.fromstring(reply.text).find("./Connect/Stream")
        assert stream is not None, reply.text
        token = next(p.get("value", "") for p in stream if p.get("name") == "token")
        return Ticket("twilio", call_sid, account_sid, stream.get("url", ""), token)
    call_control_id = "v3:" + secrets.token_urlsafe(24)
    initiated = telnyx_event("call.initiated", call_control_id, to=to)
    reply = await send_telnyx(gw.url, gw.keys, initiated)
    assert reply.status_code == 200, reply.text
    await rest_command(gw.rest, call_control_id, "answer")
    reply = await send_telnyx(gw.url, gw.keys, telnyx_event("call.answered", call_control_id))
    assert reply.status_code == 200, reply.text
    command = (await rest_command(gw.rest, call_control_id, "streaming_start")).json()
    assert command["stream_bidirectional_mode"] == "rtp"
    return Ticket(
        "telnyx", call_control_id, "", command["stream_url"], command["stream_auth_token"]
    )


# -- the media stream ------------------------------------------------------------------------


def ws_url(gw_url: str, public_stream_url: str) -> str:
    return f"ws://{urlsplit(gw_url).netloc}{urlsplit(public_stream_url).path}"


def upgrade_headers(ticket: Ticket, token: str) -> dict[str, str]:
    if ticket.carrier == "twilio":
        signature = RequestValidator(TWILIO_TOKEN).compute_signature(ticket.stream_url, {})
        return {"X-Twilio-Signature": signature}
    return {"x-telnyx-streaming-auth-token": token}


def frames_for(ticket: Ticket, token: str) -> CarrierFrames:
    """One stream's carrier frames for ``ticket``, presenting ``token``."""
    return CarrierFrames(ticket.carrier, ticket.call_id, token, ticket.account_id)


def dumps(message: Mapping[str, Any]) -> str:
    return orjson.dumps(message).decode()


class Leg:
    """One open media stream, seen from the carrier.

    Records, in arrival order: ``payloads`` (base64 text of every media frame), ``events``
    (every message, parsed), ``marks`` (names) with ``heard_ms`` (audio received before each
    mark), and ``clears`` (index into ``payloads`` at each ``clear``). Acknowledges each mark
    at once while ``ack_marks`` is true, recording ``acked_ms`` (audio heard at the last ack).
    """

    def __init__(
        self, ws: ClientConnection, ticket: Ticket, frames: CarrierFrames, *, ack_marks: bool
    ) -> None:
        self.ws = ws
        self.frames = frames
        self.ticket = ticket
        self.ack_marks = ack_marks
        self.payloads: list[str] = []
        self.events: list[dict[str, Any]] = []
        self.marks: list[str] = []
        self.clears: list[int] = []
        self.acked_ms = 0
        self.received_bytes = 0
        self.sent: list[str] = []  # base64 payloads sent
        self.closed = asyncio.Event()
        self._reader = asyncio.create_task(self._read(), name="e2e-leg-reader")

    @property
    def audio(self) -> bytes:
        return b"".join(base64.b64decode(p) for p in self.payloads)

    @property
    def sent_audio(self) -> bytes:
        return b"".join(base64.b64decode(p) for p in self.sent)

    @property
    def close_code(self) -> int | None:
        return self.ws.close_code

    async def _read(self) -> None:
        with contextlib.suppress(websockets.ConnectionClosed):
            async for message in self.ws:
                event = orjson.loads(message)
                self.events.append(event)
                match event.get("event"):
                    case "media":
                        self.payloads.append(event["media"]["payload"])
                        self.received_bytes += len(base64.b64decode(self.payloads[-1]))
                    case "mark":
                        self.marks.append(event["mark"]["name"])
                        if self.ack_marks:
                            heard = self.received_bytes // 8  # ms of 8 kHz mu-law
                            await self.ws.send(dumps(self.frames.mark(event["mark"]["name"])))
                            self.acked_ms = heard
                    case "clear":
                        self.clears.append(len(self.payloads))
        self.closed.set()

    async def send_audio(self, chunk: bytes) -> None:
        payload = base64.b64encode(chunk).decode()
        await self.ws.send(dumps(self.frames.media(payload)))
        self.sent.append(payload)

    async def play(self, audio: bytes, *, realtime: bool = True) -> None:
        """Send ``audio`` in 20 ms frames, paced like a phone line unless ``realtime`` is off."""
        t0 = time.perf_counter()
        for i, chunk in enumerate(frames_of(audio)):
            if realtime:
                delay = t0 + i * FRAME_S - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
            await self.send_audio(chunk)

    async def send_raw(self, data: str | bytes) -> None:
        await self.ws.send(data)

    async def stop(self) -> None:
        """Send ``stop`` (the caller hung up) and close the socket."""
        with contextlib.suppress(websockets.ConnectionClosed):
            await self.ws.send(dumps(self.frames.stop()))
        await self.close()

    async def close(self) -> None:
        await self.ws.close()
        await self.wait_closed()

    def abort(self) -> None:
        """Vanish: drop the TCP connection without a close frame."""
        self.ws.transport.abort()

    async def wait_closed(self, within: float = 5 * UNIT) -> int | None:
        async with asyncio.timeout(within):
            await self.closed.wait()
            await self._reader
        return self.close_code

    async def wait_audio(self, frames: int, within: float = 5 * UNIT) -> None:
        await eventually(lambda: len(self.payloads) >= frames, within, f"{frames} frames back")


async def open_stream(
    gw: Gateway | str,
    ticket: Ticket,
    *,
    token: str | None = None,
    ack_marks: bool = True,
    send_start: bool = True,
) -> Leg:
    """Connect the media WebSocket for ``ticket`` (presenting ``token``, the ticket's own by
    default) and send ``connected`` + ``start``. ``gw``: the gateway, or its base URL (a
    gateway process)."""
    token = ticket.token if token is None else token
    ws = await websockets.connect(
        ws_url(gw if isinstance(gw, str) else gw.url, ticket.stream_url),
        additional_headers=upgrade_headers(ticket, token),
        open_timeout=5 * UNIT,
        close_timeout=2 * UNIT,
        ping_interval=None,
        compression=None,
    )
    frames = frames_for(ticket, token)
    if send_start:
        for message in frames.opening():
            await ws.send(dumps(message))
    return Leg(ws, ticket, frames, ack_marks=ack_marks)


async def place_call(gw: Gateway, carrier: str, *, ack_marks: bool = True, to: str = CALLEE) -> Leg:
    return await open_stream(gw, await answer(gw, carrier, to=to), ack_marks=ack_marks)


# -- a carrier that stops reading ------------------------------------------------------------


class DeafStream:
    """A media WebSocket that writes but never reads: a tiny receive buffer and no reader,
    so whatever the gateway sends backs up. Built on the sans-I/O websockets client."""

    def __init__(
        self, sock: socket.socket, protocol: ClientProtocol, frames: CarrierFrames
    ) -> None:
        self.sock = sock
        self.protocol = protocol
        self.frames = frames

    @classmethod
    async def connect(cls, gw: Gateway, ticket: Ticket, *, rcvbuf: int = 4096) -> DeafStream:
        loop = asyncio.get_running_loop()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.setblocking(False)
        url = ws_url(gw.url, ticket.stream_url)
        parts = urlsplit(url)
        await loop.sock_connect(sock, (parts.hostname, parts.port))
        protocol = ClientProtocol(parse_uri(url))
        request = protocol.connect()
        for name, value in upgrade_headers(ticket, ticket.token).items():
            request.headers[name] = value
        protocol.send_request(request)
        await loop.sock_sendall(sock, b"".join(protocol.data_to_send()))
        async with asyncio.timeout(5 * UNIT):
            while protocol.state is State.CONNECTING and protocol.handshake_exc is None:
                data = await loop.sock_recv(sock, 1024)
                if not data:
                    raise AssertionError("gateway closed during the handshake")
                protocol.receive_data(data)
        assert protocol.handshake_exc is None, protocol.handshake_exc
        stream = cls(sock, protocol, frames_for(ticket, ticket.token))
        for message in stream.frames.opening():
            await stream.send(dumps(message))
        return stream

    async def send(self, text: str) -> None:
        self.protocol.send_text(text.encode())
        await asyncio.get_running_loop().sock_sendall(
            self.sock, b"".join(self.protocol.data_to_send())
        )

    async def send_audio(self, chunk: bytes) -> None:
        await self.send(dumps(self.frames.media(base64.b64encode(chunk).decode())))

    def close(self) -> None:
        self.sock.close()
