"""``voicegw simulate call`` and ``voicegw demo``: act as Twilio or Telnyx against a gateway.

The simulator signs webhooks exactly as the carrier does (with the gateway's development keys
from ``VOICEGW_DATA_DIR``, or the configured Twilio token), opens the media stream the gateway
asks for, sends a WAV at real-time pace in 20 ms frames, records the audio that comes back, and
reports per-turn latency. It presses DTMF keys at given times (``--dtmf 1@1.5,3@4``) and dials
the number given (``--to``), which selects the gateway's agent. It plays the carrier's REST API
on ``http://127.0.0.1:{api_port}`` (``gateway.cli.carrier_api``): Telnyx's Call Control always,
Twilio's call update when keys are pressed (the agent's tools act through it); the gateway's
``VOICEGW_TELNYX_API_URL`` / ``VOICEGW_TWILIO_API_URL`` must point there. The report lists the
commands the gateway sent (a transfer, a hang-up) and how the media stream ended.

What stops a simulated call before it has a result (gateway unreachable, unreadable WAV, the
gateway never calling the Call Control API) raises ``SimulateError``, one line for the operator;
what the gateway answered (a refused webhook or upgrade, a closed stream) is in the ``Report``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import math
import re
import secrets
import socket
import time
import uuid
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any, Final
from urllib.parse import urlsplit

import httpx
import numpy as np
import orjson
import uvicorn
import websockets
from twilio.request_validator import RequestValidator

from gateway import devkeys
from gateway.cli.base import CommandError
from gateway.cli.carrier_api import PLACING, CarrierApi, CarrierCommand
from gateway.http.wsprotocol import MediaWebSocketProtocol
from gateway.media.audio import WavError, read_wav, silence, ulaw_decode, write_wav
from gateway.settings import Settings
from providers.events import PCMU_8K

FRAME_BYTES: Final = 160  # 20 ms of 8 kHz mu-law
FRAME_S: Final = 0.02
SPEECH_RMS: Final = 500.0  # int16 RMS above which a 20 ms frame counts as speech
TURN_GAP_FRAMES: Final = 15  # 300 ms of silence ends a turn
TAIL_S: Final = 2.0  # keep listening this long after the last frame
CALLER: Final = "+15550100001"  # fictional (555-01xx) numbers
CALLEE: Final = "+15550100002"
E164: Final = re.compile(r"\+[1-9][0-9]{6,14}")
DTMF_DIGITS: Final = frozenset("0123456789*#")
MAX_PRESS_S: Final = 600.0
PRESS_TAIL_S: Final = 5.0  # after key presses, time for the agent to act before ``stop``
COMMAND_GRACE_S: Final = 1.0  # a hang-up may reach the carrier just after the stream closed
STREAM_SETUP: Final = frozenset({"answer", "streaming_start"})


class SimulateError(CommandError):
    """The simulated call cannot go on; the message says why and what to do."""


@dataclass(frozen=True, slots=True)
class Press:
    """One DTMF key pressed ``at_s`` seconds into the media stream."""

    digit: str
    at_s: float


def parse_presses(text: str) -> tuple[Press, ...]:
    """``"1@1.5,3@4"`` as presses in time order. Raises ``ValueError`` (one line naming the
    bad item) for a digit other than ``0-9*#``, a time that is not a number of seconds from 0
    to 600, or times out of order."""
    presses: list[Press] = []
    for item in text.split(","):
        digit, at, time_s = item.strip().partition("@")
        if not at or digit not in DTMF_DIGITS:
            raise ValueError(f"{item.strip()!r}: expected DIGIT@SECONDS, DIGIT one of 0-9 * #")
        try:
            seconds = float(time_s)
        except ValueError:
            seconds = float("nan")
        if not 0 <= seconds <= MAX_PRESS_S:  # also NaN and inf
            raise ValueError(f"{item.strip()!r}: the time must be seconds from 0 to 600")
        if presses and seconds < presses[-1].at_s:
            raise ValueError(f"{item.strip()!r}: the presses must be in time order")
        presses.append(Press(digit, seconds))
    return tuple(presses)


def parse_number(text: str) -> str:
    """``text`` if it is an E.164 number; raises ``ValueError`` otherwise."""
    if not E164.fullmatch(text):
        raise ValueError(f"{text!r} is not an E.164 number (+ and 7 to 15 digits)")
    return text


@dataclass(frozen=True, slots=True)
class SimulateOptions:
    """``to``: the dialed number; ``dtmf``: keys to press; ``api_port``: where the simulated
    carrier REST API listens (0: any free port)."""

    carrier: str
    wav: str | None
    gateway_url: str
    out: str | None = None
    realtime: bool = True
    api_port: int = 0
    tail_s: float = TAIL_S
    to: str = CALLEE
    dtmf: tuple[Press, ...] = ()


@dataclass(slots=True)
class Turn:
    start_s: float
    end_s: float
    first_audio_ms: float | None = None  # turn start -> first audio back
    response_ms: float | None = None  # turn end -> first audio back after it


@dataclass(slots=True)
class Report:
    carrier: str
    outbound: bool = False
    steps: list[tuple[str, str]] = field(default_factory=list)
    frames_sent: int = 0
    frames_received: int = 0
    bytes_received: int = 0
    turns: list[Turn] = field(default_factory=list)
    close_code: int | None = None
    commands: list[CarrierCommand] = field(default_factory=list)
    """The carrier REST commands the gateway sent about the call, in order."""
    ok: bool = False

    def step(self, what: str, verdict: str) -> None:
        self.steps.append((what, verdict))

    def render(self) -> str:
        lines = [f"simulated {'outbound ' if self.outbound else ''}{self.carrier} call"]
        lines += [f"  {what:<44} {verdict}" for what, verdict in self.steps]
        lines.append(
            f"  audio: sent {self.frames_sent} frames ({self.frames_sent * 20} ms), received "
            f"{self.frames_received} frames ({self.bytes_received // 8} ms)"
        )
        for i, turn in enumerate(self.turns, 1):
            first = "-" if turn.first_audio_ms is None else f"{turn.first_audio_ms:.0f} ms"
            resp = "-" if turn.response_ms is None else f"{turn.response_ms:.0f} ms"
            lines.append(
                f"  turn {i}: {turn.start_s:5.2f}-{turn.end_s:5.2f} s  first audio back {first:>8}"
                f"  after turn end {resp:>8}"
            )
        lines.append(f"  result: {'ok' if self.ok else 'FAILED'}")
        return "\n".join(lines)


def caller_audio(path: str | None) -> bytes:
    """Raw 8 kHz mu-law from ``path`` (or one second of silence), whole 20 ms frames.
    Raises ``SimulateError`` when the file cannot be read or holds other audio."""
    if path is None:
        return silence(PCMU_8K, 1000)
    try:
        fmt, data = read_wav(path)
    except OSError as exc:
        raise SimulateError(f"cannot read {path}: {exc.strerror or exc}") from None
    except WavError as exc:
        raise SimulateError(f"{path} is not a usable WAV file: {exc}") from None
    if fmt != PCMU_8K:
        raise SimulateError(f"{path} must be 8 kHz mono mu-law (G.711), got {fmt}")
    return data[: len(data) - len(data) % FRAME_BYTES]


async def simulate_call(settings: Settings, options: SimulateOptions) -> Report:
    """One call against the gateway at ``options.gateway_url``. Raises ``SimulateError`` when
    the gateway cannot be reached or a file cannot be read or written."""
    report = Report(options.carrier)
    audio = caller_audio(options.wav)
    with reaching(options.gateway_url):
        if options.carrier == "twilio":
            await _twilio_call(settings, options, audio, report)
        else:
            await _telnyx_call(settings, options, audio, report)
    return report


@contextlib.contextmanager
def reaching(gateway_url: str) -> Iterator[None]:
    """Turn a failure to reach the gateway at ``gateway_url`` into a ``SimulateError``."""
    try:
        yield
    except (httpx.TransportError, OSError) as exc:
        # Connection refused or reset, DNS, a timeout (httpx's and the WebSocket's included).
        raise SimulateError(
            f"cannot reach the gateway at {gateway_url} ({_why(exc)}); "
            "is `voicegw serve` running there? (--url)"
        ) from None


def _why(exc: BaseException) -> str:
    """A short reason for a failed connection: the OS's words, else the exception's name."""
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower()
    return str(exc).lower() or type(exc).__name__


@dataclass(slots=True)
class CarrierFrames:
    """Builds one media stream's frames as Twilio or Telnyx sends them (``carrier``).
    ``call_id`` is the CallSid / call_control_id; ``account_id`` Twilio's AccountSid;
    ``from_`` and ``to`` the call's numbers (Telnyx names them in ``start``)."""

    carrier: str
    call_id: str
    token: str
    account_id: str = ""
    stream_id: str = ""
    to: str = CALLEE
    from_: str = CALLER
    seq: Iterator[int] = field(default_factory=lambda: itertools.count(2))
    chunk: Iterator[int] = field(default_factory=lambda: itertools.count(1))

    def __post_init__(self) -> None:
        if not self.stream_id:
            self.stream_id = "MZ" + secrets.token_hex(16) if self.twilio else str(uuid.uuid4())

    @property
    def twilio(self) -> bool:
        return self.carrier == "twilio"

    def opening(self) -> list[dict[str, Any]]:
        """``connected`` and ``start`` (the token in Twilio's custom parameters / Telnyx's
        ``connected`` frame, as each carrier sends it)."""
        if self.twilio:
            media_format = {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1}
            return [
                {"event": "connected", "protocol": "Call", "version": "1.0.0"},
                {
                    "event": "start",
                    "sequenceNumber": "1",
                    "streamSid": self.stream_id,
                    "start": {
                        "streamSid": self.stream_id,
                        "accountSid": self.account_id,
                        "callSid": self.call_id,
                        "tracks": ["inbound"],
                        "customParameters": {"token": self.token},
                        "mediaFormat": media_format,
                    },
                },
            ]
        return [
            {
                "event": "connected",
                "version": "1.0.0",
                "connected": {"x-telnyx-streaming-auth-token": self.token},
            },
            {
                "event": "start",
                "sequence_number": "1",
                "stream_id": self.stream_id,
                "start": {
                    "call_control_id": self.call_id,
                    "call_session_id": str(uuid.uuid4()),
                    "from": self.from_,
                    "to": self.to,
                    "media_format": {"encoding": "PCMU", "sample_rate": 8000, "channels": 1},
                },
            },
        ]

    def _header(self) -> dict[str, Any]:
        if self.twilio:
            return {"sequenceNumber": str(next(self.seq)), "streamSid": self.stream_id}
        return {"sequence_number": str(next(self.seq)), "stream_id": self.stream_id}

    def media(self, payload: str) -> dict[str, Any]:
        chunk = next(self.chunk)
        body = {
            "track": "inbound",
            "chunk": str(chunk),
            "timestamp": str((chunk - 1) * 20),
            "payload": payload,
        }
        return {"event": "media", **self._header(), "media": body}

    def mark(self, name: str) -> dict[str, Any]:
        key = "streamSid" if self.twilio else "stream_id"
        return {"event": "mark", key: self.stream_id, "mark": {"name": name}}

    def dtmf(self, digit: str) -> dict[str, Any]:
        """A key press, as each carrier reports it on the stream."""
        if self.twilio:
            return {
                "event": "dtmf",
                **self._header(),
                "dtmf": {"track": "inbound_track", "digit": digit},
            }
        return {"event": "dtmf", **self._header(), "dtmf": {"digit": digit}}

    def stop(self) -> dict[str, Any]:
        if self.twilio:
            ids = {"accountSid": self.account_id, "callSid": self.call_id}
        else:
            ids = {"call_control_id": self.call_id}
        return {"event": "stop", **self._header(), "stop": ids}


# -- Twilio --------------------------------------------------------------------------------


async def _twilio_call(
    settings: Settings, options: SimulateOptions, audio: bytes, report: Report
) -> None:
    if settings.twilio_auth_token is None:
        raise SystemExit("voicegw: no Twilio auth token (VOICEGW_TWILIO_AUTH_TOKEN)")
    validator = RequestValidator(settings.twilio_auth_token.get())
    account_sid = "AC" + secrets.token_hex(16)
    call_sid = "CA" + secrets.token_hex(16)
    params = {
        "AccountSid": account_sid,
        "CallSid": call_sid,
        "CallStatus": "ringing",
        "Direction": "inbound",
        "From": CALLER,
        "To": options.to,
        "ApiVersion": "2010-04-01",
    }
    url = settings.public("/webhooks/twilio/voice")
    async with httpx.AsyncClient(base_url=options.gateway_url, timeout=10.0) as http:
        reply = await http.post(
            "/webhooks/twilio/voice",
            data=params,
            headers={"X-Twilio-Signature": validator.compute_signature(url, params)},
        )
        report.step("voice webhook (signed)", f"{reply.status_code}")
        if reply.status_code != 200:
            return
        stream_url, token = parse_twiml(reply.text)
        report.step("TwiML <Connect><Stream> with token", "ok")
        headers = {"X-Twilio-Signature": validator.compute_signature(stream_url, {})}
        ws_url = stream_ws_url(options.gateway_url, stream_url)
        frames = CarrierFrames("twilio", call_sid, token, account_sid, to=options.to)
        async with contextlib.AsyncExitStack() as stack:
            api = CarrierApi()
            if options.dtmf:  # the agent's tools act through Twilio's REST API
                await stack.enter_async_context(serve_api(api, options.api_port))
            await play_stream(ws_url, headers, frames, audio, options, report, api)
        status = {**params, "CallStatus": "completed", "CallDuration": "10"}
        status_url = settings.public("/webhooks/twilio/status")
        reply = await http.post(
            "/webhooks/twilio/status",
            data=status,
            headers={"X-Twilio-Signature": validator.compute_signature(status_url, status)},
        )
        report.step("status callback (completed)", f"{reply.status_code}")


def parse_twiml(text: str) -> tuple[str, str]:
    # The gateway's reply under test. Python 3.11's expat (>= 2.4.1) refuses entity-expansion
    # bombs and never fetches external entities, which is what defusedxml guards against.
    root = ET.fromstring(text)  # noqa: S314
    stream = root.find("./Connect/Stream")
    if stream is None:
        raise SimulateError("the gateway's TwiML has no <Connect><Stream>")
    token = next(
        (p.get("value", "") for p in stream.findall("Parameter") if p.get("name") == "token"), ""
    )
    return stream.get("url", ""), token


def stream_ws_url(gateway_url: str, public_stream_url: str) -> str:
    """Where to connect: the gateway we can reach, at the path the public URL names."""
    base = urlsplit(gateway_url)
    scheme = "wss" if base.scheme == "https" else "ws"
    return f"{scheme}://{base.netloc}{urlsplit(public_stream_url).path}"


def local_url(gateway_url: str, public_url: str) -> str:
    """The gateway we can reach, at the path (and query) a public URL of it names."""
    parts = urlsplit(public_url)
    query = f"?{parts.query}" if parts.query else ""
    return f"{gateway_url.rstrip('/')}{parts.path}{query}"


# -- Telnyx --------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def serve_app(app: Any, port: int = 0, *, sndbuf: int | None = None) -> AsyncIterator[str]:
    """Serve ``app`` with uvicorn on 127.0.0.1 inside this event loop; yields the base URL.
    ``sndbuf`` pins the send buffer of accepted sockets (they inherit it from the listening
    one), for tests of peers that stop reading."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if sndbuf is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf)
    sock.bind(("127.0.0.1", port))
    config = uvicorn.Config(
        app,
        log_config=None,
        access_log=False,
        lifespan="on",
        ws=MediaWebSocketProtocol,
        ws_max_size=64 * 1024,
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        while not server.started:
            if task.done():
                await task
                raise RuntimeError("server failed to start")
            await asyncio.sleep(0.01)
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        with contextlib.suppress(asyncio.CancelledError):
            await task
        sock.close()


@contextlib.asynccontextmanager
async def serve_api(api: CarrierApi, port: int) -> AsyncIterator[str]:
    """Serve the simulated carrier REST API on ``port``; raises ``SimulateError`` when the
    port cannot be had."""
    async with contextlib.AsyncExitStack() as stack:
        try:
            url = await stack.enter_async_context(serve_app(api.app, port))
        except OSError as exc:
            raise SimulateError(
                f"cannot serve the simulated carrier API on port {port} ({_why(exc)}); "
                "choose another with --api-port"
            ) from None
        yield url


def telnyx_event(event_type: str, call_control_id: str, to: str = CALLEE, **extra: Any) -> bytes:
    payload = {
        "call_control_id": call_control_id,
        "call_leg_id": str(uuid.uuid4()),
        "call_session_id": str(uuid.uuid4()),
        "connection_id": "1684641123236054244",
        "from": CALLER,
        "to": to,
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


async def post_telnyx(
    http: httpx.AsyncClient, keys: devkeys.DevKeys, body: bytes, timestamp: int | None = None
) -> httpx.Response:
    ts = str(int(time.time()) if timestamp is None else timestamp)
    signature = keys.telnyx_signing_key().sign(ts.encode() + b"|" + body).signature
    return await http.post(
        "/webhooks/telnyx",
        content=body,
        headers={
            "content-type": "application/json",
            "telnyx-signature-ed25519": base64.b64encode(signature).decode(),
            "telnyx-timestamp": ts,
        },
    )


async def _telnyx_call(
    settings: Settings, options: SimulateOptions, audio: bytes, report: Report
) -> None:
    keys = devkeys.load_or_create(settings.data_dir)
    api = CarrierApi()
    call_control_id = "v3:" + secrets.token_urlsafe(24)
    to = options.to
    async with contextlib.AsyncExitStack() as stack:
        api_url = await stack.enter_async_context(serve_api(api, options.api_port))
        http = await stack.enter_async_context(
            httpx.AsyncClient(base_url=options.gateway_url, timeout=10.0)
        )
        reply = await post_telnyx(http, keys, telnyx_event("call.initiated", call_control_id, to))
        report.step("call.initiated webhook (signed)", f"{reply.status_code}")
        if reply.status_code != 200:
            return
        if await api.next("answer") is None:
            raise SimulateError(
                f"the gateway did not call the simulated Call Control API at {api_url}: start "
                f"`voicegw serve` with VOICEGW_TELNYX_API_URL={api_url} "
                "VOICEGW_TELNYX_API_KEY=dev-local"
            )
        report.step("gateway answered (Call Control answer)", "ok")
        reply = await post_telnyx(http, keys, telnyx_event("call.answered", call_control_id, to))
        report.step("call.answered webhook (signed)", f"{reply.status_code}")
        started = await api.next("streaming_start")
        if started is None:
            report.step("streaming_start", "never came")
            return
        command = started.body
        bidirectional = command.get("stream_bidirectional_mode") == "rtp"
        report.step("streaming_start (rtp, PCMU, token)", "ok" if bidirectional else "one-way!")
        token = str(command.get("stream_auth_token", ""))
        ws_url = stream_ws_url(options.gateway_url, str(command.get("stream_url", "")))
        frames = CarrierFrames("telnyx", call_control_id, token, to=to)
        headers = {"x-telnyx-streaming-auth-token": token}
        await play_stream(ws_url, headers, frames, audio, options, report, api)
        reply = await post_telnyx(
            http,
            keys,
            telnyx_event("call.hangup", call_control_id, to, hangup_cause="normal_clearing"),
        )
        report.step("call.hangup webhook (signed)", f"{reply.status_code}")


# -- the media stream, common to both --------------------------------------------------------


async def play_stream(
    ws_url: str,
    headers: dict[str, str],
    frames: CarrierFrames,
    audio: bytes,
    options: SimulateOptions,
    report: Report,
    api: CarrierApi,
) -> None:
    received: list[tuple[float, bytes]] = []
    try:
        ws = await websockets.connect(ws_url, additional_headers=headers, open_timeout=10)
    except websockets.InvalidStatus as exc:
        report.step("media WebSocket upgrade", f"refused ({exc.response.status_code})")
        return
    audio = _padded(audio, options.dtmf)
    async with ws:
        report.step("media WebSocket upgrade", "accepted")
        try:
            await _send_audio(ws, frames, audio, options, report, received, api.ended)
        except websockets.ConnectionClosed:
            report.step("media stream", f"closed by the gateway ({ws.close_code})")
    report.close_code = ws.close_code
    if options.dtmf and not api.ended.is_set():
        # A hang-up the agent asked for may follow the stream's end (it runs in the background).
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(COMMAND_GRACE_S):
                await api.ended.wait()
    report.commands = [c for c in api.commands if c.action not in STREAM_SETUP | PLACING]
    for command in report.commands:
        report.step(f"carrier REST API: {command.action}", command.describe())
    report.frames_received = len(received)
    report.bytes_received = sum(len(d) for _, d in received)
    report.turns = measure_turns(audio, received)
    report.ok = report.frames_received > 0
    report.step("audio round trip", "ok" if report.ok else "no audio came back")
    if options.out:
        try:
            write_wav(options.out, PCMU_8K, b"".join(d for _, d in received))
        except OSError as exc:
            raise SimulateError(f"cannot write {options.out}: {exc.strerror or exc}") from None


def _padded(audio: bytes, presses: tuple[Press, ...]) -> bytes:
    """``audio`` with silence after it until the last key press, if that comes later."""
    if not presses:
        return audio
    frames = math.ceil(round(presses[-1].at_s / FRAME_S, 6))
    missing = frames * FRAME_BYTES - len(audio)
    return audio + silence(PCMU_8K, missing // 8) if missing > 0 else audio


async def _send_audio(
    ws: websockets.ClientConnection,
    frames: CarrierFrames,
    audio: bytes,
    options: SimulateOptions,
    report: Report,
    received: list[tuple[float, bytes]],
    ended: asyncio.Event,
) -> None:
    """Send ``audio`` as the carrier does (acknowledging marks), pressing the keys of
    ``options.dtmf`` at their times; keep listening ``tail_s`` (``PRESS_TAIL_S`` at least
    after key presses, time for the agent to act on them), then send ``stop``. Once ``ended``
    is set (the gateway asked the carrier to transfer or hang up the call) the gateway gets
    ``tail_s`` to close the stream, then the carrier stops it. What comes back goes into
    ``received``. Raises ``ConnectionClosed`` when the gateway closes the stream first."""
    for frame in frames.opening():
        await ws.send(orjson.dumps(frame).decode())
    t0 = time.perf_counter()

    async def receive() -> None:
        async for message in ws:
            event = orjson.loads(message)
            if event.get("event") == "media":
                data = base64.b64decode(event["media"]["payload"])
                received.append((time.perf_counter() - t0, data))
            elif event.get("event") == "mark":
                # The caller has "heard" everything before the mark: acknowledge it.
                await ws.send(orjson.dumps(frames.mark(event["mark"]["name"])).decode())

    async def press_due(at_s: float) -> None:
        while presses and presses[0].at_s <= at_s:
            press = presses.pop(0)
            await ws.send(orjson.dumps(frames.dtmf(press.digit)).decode())
            report.step(f"DTMF {press.digit} at {press.at_s:.2f} s", "sent")

    presses = list(options.dtmf)
    receiver = asyncio.create_task(receive())
    stream_ended = asyncio.create_task(ended.wait())
    try:
        for i in range(len(audio) // FRAME_BYTES):
            if options.realtime:
                delay = t0 + i * FRAME_S - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
            await press_due(i * FRAME_S)
            chunk = audio[i * FRAME_BYTES : (i + 1) * FRAME_BYTES]
            await ws.send(orjson.dumps(frames.media(base64.b64encode(chunk).decode())).decode())
            report.frames_sent += 1
        await press_due(MAX_PRESS_S)
        tail_s = max(options.tail_s, PRESS_TAIL_S) if options.dtmf else options.tail_s
        done, _ = await asyncio.wait({receiver, stream_ended}, timeout=tail_s)
        if stream_ended in done and receiver not in done:
            await asyncio.wait({receiver}, timeout=options.tail_s)
        await ws.send(orjson.dumps(frames.stop()).decode())
        if ended.is_set():
            report.step("media stream", "stopped by the carrier (the call moved on)")
    finally:
        receiver.cancel()
        stream_ended.cancel()
        with contextlib.suppress(asyncio.CancelledError, websockets.ConnectionClosed):
            await receiver


def _speech_frames(audio: bytes) -> list[bool]:
    pcm = np.frombuffer(ulaw_decode(audio), dtype=np.int16).astype(np.float64)
    n = len(pcm) // FRAME_BYTES
    frames = pcm[: n * FRAME_BYTES].reshape(n, FRAME_BYTES)
    return [bool(v) for v in np.sqrt((frames**2).mean(axis=1)) > SPEECH_RMS]


def measure_turns(sent: bytes, received: list[tuple[float, bytes]]) -> list[Turn]:
    """Caller turns (speech separated by 300 ms of silence) and when audio came back."""
    turns: list[Turn] = []
    quiet = TURN_GAP_FRAMES
    for i, speech in enumerate(_speech_frames(sent)):
        if speech:
            if quiet >= TURN_GAP_FRAMES:
                turns.append(Turn(i * FRAME_S, (i + 1) * FRAME_S))
            turns[-1].end_s = (i + 1) * FRAME_S
            quiet = 0
        else:
            quiet += 1
    back = [t for t, data in received if any(_speech_frames(data))] if received else []
    for turn in turns:
        first = next((t for t in back if t >= turn.start_s), None)
        after = next((t for t in back if t >= turn.end_s), None)
        turn.first_audio_ms = None if first is None else (first - turn.start_s) * 1000
        turn.response_ms = None if after is None else (after - turn.end_s) * 1000
    return turns
