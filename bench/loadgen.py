"""Load generator for ``bench/relay.py``: plays Twilio for many concurrent calls (its ``Call``,
``setup`` and ``finish`` also make the calls of ``bench/soakgen.py``).

Usage (``bench/relay.py`` runs it; by hand only to debug)::

    python bench/loadgen.py --target voicegw --url http://127.0.0.1:8000 --token TWILIO_TOKEN \
        --calls 25 --seconds 8 [--first 0 --stride 1 --total 25]

Protocol with the parent, one JSON object a line on stdout:

1. sets every call up, then prints ``{"ready": ...}`` (setup times, failures);
2. waits for a line ``go`` on stdin, streams ``--seconds`` of 20 ms mu-law frames per call at
   real-time pace, waits up to ``TAIL_S`` for the last echoes, prints ``{"streamed": ...}``;
3. stops every stream, closes, prints ``{"result": ...}`` with every round-trip sample and one
   summary per call (``per_call``: its set-up time and its smallest, median and largest round
   trip; the smallest is the call's *standing offset*, the delay every frame of it carried;
   ``tail_min_ms``, the smallest over its last second, also catches an offset that arose
   mid-call and stayed).
   ``heard_min_ms`` is the smallest round trip as the caller would hear it: a carrier plays
   the audio it receives in order at real time, so an echo that arrives while earlier audio
   still plays is heard when that ends (a backlog sent at once is heard one frame after
   another, as a paced one is).

With ``--arrival-s S`` the calls are not set up before ``go``: call ``j`` of ``--total`` arrives
``S * j / total`` seconds after it (webhook, stream upgrade, ``connected``, ``start``) while the
calls before it already stream, and starts streaming right after its ``start``, as a carrier
does, without waiting for a probe: audio sent while the gateway still sets the call up waits
there, and any delay it meets is carried into the call's round trips. ``ready`` then comes at
once (nothing set up yet) and the set-up times (webhook -> first echo) and failures come with
the result.

Per call, for ``voicegw``: a signed voice webhook (``X-Twilio-Signature`` computed with
``twilio.request_validator.RequestValidator``), the TwiML's ``<Stream>`` URL and token, the media
WebSocket upgrade signed over that URL, ``connected`` and ``start`` carrying the token. For
``baseline`` the webhook is skipped. Then one probe frame whose echo proves the path is up (the
call's setup time ends there), and the measured frames.

Each frame's first four bytes are its index, big-endian, and the next eight the time it was
sent: the relays forward the payload untouched, so the first eight base64 characters of an echo
name the frame it answers, and the echo server (``bench/echo_agent.py``) reads the send time to
measure the one-way carrier -> provider latency. A ``mark`` from the relay is acknowledged at
once, as Twilio does once the audio before it played.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import secrets
import struct
import sys
import time
import xml.etree.ElementTree as ET
from array import array
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

try:
    import orjson

    _loads: Any = orjson.loads
except ImportError:  # pragma: no cover
    _loads = json.loads

FRAME_BYTES: Final = 160  # 20 ms of 8 kHz mu-law
FRAME_S: Final = 0.02
PROBE: Final = 0xFFFFFFFF
SETUP_CONCURRENCY: Final = 10
SETUP_TIMEOUT_S: Final = 20.0
TAIL_S: Final = 2.0
"""After the last frame, wait this long at most for outstanding echoes."""
GO_DELAY_S: Final = 0.1
TAIL_FRAMES: Final = 50
"""A call's last second: its smallest round trip there is an offset it still carried at the
end (``tail_min_ms``), wherever it arose."""

# A frame starts with its index (4 bytes, big-endian) and the ``time.perf_counter()`` it was
# sent at (8-byte double); the 148 bytes after that 12-byte prefix are the same in every frame.
# The prefix is 3-byte aligned, so the payload is the prefix's base64 + this constant base64.
_PREFIX: Final = struct.Struct(">Id")
_FILL: Final = b"\xff" * FRAME_BYTES
_TAIL_B64: Final = base64.b64encode(_FILL[_PREFIX.size :]).decode()


def payload(index: int, sent_at: float = 0.0) -> str:
    return base64.b64encode(_PREFIX.pack(index, sent_at)).decode() + _TAIL_B64


def frame_stamp(b64: str) -> tuple[int, float]:
    """The index and send time (``time.perf_counter``, 0 if none) a payload carries. The
    clock is the machine's monotonic clock, the same in every process."""
    index, sent_at = _PREFIX.unpack(base64.b64decode(b64[:16]))
    return int(index), float(sent_at)


def frame_index(b64: str) -> int:
    return int.from_bytes(base64.b64decode(b64[:8])[:4], "big")


def emit(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj, separators=(",", ":")) + "\n")
    sys.stdout.flush()


class Call:
    """One simulated Twilio call: its socket, what was sent when, and what came back."""

    def __init__(self, index: int, frames: int, phase_s: float) -> None:
        self.index = index
        self.frames = frames
        self.phase_s = phase_s
        self.stream_sid = "MZ" + secrets.token_hex(16)
        self.call_sid = "CA" + secrets.token_hex(16)
        self.account_sid = "AC" + secrets.token_hex(16)
        self.ws: ClientConnection | None = None
        self.sent_at = array("d", bytes(8 * frames))
        self.got = bytearray(frames)
        self.latency_ms = array("d")
        # Per-frame jitter, RFC 3550's D(i-1, i): how much a frame's transit time differs from
        # the one received before it (the change in round trip between consecutive echoes).
        self.jitter_ms = array("d")
        self.order = array("l")  # frame index of each latency sample
        self.received = 0
        self.duplicates = 0
        self.unknown = 0
        self.marks = 0
        self.lag_ms = array("d")  # how late each frame left, against its schedule
        self.probe = asyncio.Event()
        self.setup_ms: float | None = None
        self.began = 0.0  # perf_counter when its set-up began (webhook or upgrade)
        self.webhook_ms: float | None = None  # the voice webhook's answer came
        self.open_ms: float | None = None  # the media WebSocket was open (from the webhook)
        # A carrier plays what it gets at real time, in order: when each echo would be heard.
        self.play_at = 0.0  # perf_counter when the audio received so far has played
        self.heard_min_ms = float("inf")  # the smallest round trip as the caller hears it
        self.error: str | None = None
        self.close_code: int | None = None
        self.done = asyncio.Event()
        self.receiver: asyncio.Task[None] | None = None
        if frames == 0:
            self.done.set()
        self._head = (
            '{"event":"media","sequenceNumber":"%d","streamSid":"'
            + self.stream_sid
            + '","media":{"track":"inbound","chunk":"%d","timestamp":"%d","payload":"'
        )
        self._mark = (
            '{"event":"mark","sequenceNumber":"0","streamSid":"'
            + self.stream_sid
            + ('","mark":{"name":"%s"}}')
        )

    def media(self, i: int, b64: str) -> str:
        return self._head % (i + 3, i + 1, i * 20) + b64 + '"}}'

    def probe_media(self) -> str:
        return self._head % (2, 0, 0) + payload(PROBE) + '"}}'

    def opening(self, token: str) -> list[str]:
        start = {
            "event": "start",
            "sequenceNumber": "1",
            "streamSid": self.stream_sid,
            "start": {
                "streamSid": self.stream_sid,
                "accountSid": self.account_sid,
                "callSid": self.call_sid,
                "tracks": ["inbound"],
                "customParameters": {"token": token},
                "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
            },
        }
        connected = {"event": "connected", "protocol": "Call", "version": "1.0.0"}
        return [json.dumps(connected), json.dumps(start)]

    def stop(self) -> str:
        return json.dumps(
            {
                "event": "stop",
                "sequenceNumber": str(self.frames + 3),
                "streamSid": self.stream_sid,
                "stop": {"accountSid": self.account_sid, "callSid": self.call_sid},
            }
        )

    async def receive(self) -> None:
        ws = self.ws
        assert ws is not None
        clock = time.perf_counter
        sent_at, got, latency = self.sent_at, self.got, self.latency_ms
        try:
            async for message in ws:
                now = clock()
                event = _loads(message)
                kind = event.get("event")
                if kind == "media":
                    i = frame_index(event["media"]["payload"])
                    heard = self.play_at if self.play_at > now else now
                    self.play_at = heard + FRAME_S
                    if i == PROBE:
                        self.probe.set()
                    elif i >= self.frames or sent_at[i] == 0.0:
                        self.unknown += 1
                    elif got[i]:
                        self.duplicates += 1
                    else:
                        if self.setup_ms is None:  # arrival mode: the first echo ends set-up
                            self.setup_ms = (now - self.began) * 1000
                        got[i] = 1
                        rtt_ms = (now - sent_at[i]) * 1000
                        if latency:
                            self.jitter_ms.append(abs(rtt_ms - latency[-1]))
                        latency.append(rtt_ms)
                        heard_ms = (heard - sent_at[i]) * 1000
                        if heard_ms < self.heard_min_ms:
                            self.heard_min_ms = heard_ms
                        self.order.append(i)
                        self.received += 1
                        if self.received == self.frames:
                            self.done.set()
                elif kind == "mark":
                    self.marks += 1
                    await ws.send(self._mark % event["mark"]["name"])
        except ConnectionClosed:
            pass
        finally:
            self.close_code = ws.close_code

    async def stream(self, t0: float) -> None:
        ws = self.ws
        assert ws is not None
        clock = time.perf_counter
        start = t0 + self.phase_s
        for i in range(self.frames):
            due = start + i * FRAME_S
            delay = due - clock()
            if delay > 0:
                await asyncio.sleep(delay)
            now = clock()
            text = self.media(i, payload(i, now))
            self.lag_ms.append((now - due) * 1000)
            self.sent_at[i] = now
            try:
                await ws.send(text)
            except ConnectionClosed:
                self.error = self.error or "closed while streaming"
                self.done.set()
                return


def twilio_params(call: Call, status: str) -> dict[str, str]:
    """The form Twilio posts about ``call`` (fictional 555-01xx numbers)."""
    return {
        "AccountSid": call.account_sid,
        "CallSid": call.call_sid,
        "CallStatus": status,
        "Direction": "inbound",
        "From": "+15550100001",
        "To": "+15550100002",
        "ApiVersion": "2010-04-01",
    }


async def post_signed(
    args: argparse.Namespace, http: Any, validator: Any, path: str, params: dict[str, str]
) -> Any:
    """POST ``params`` to ``path`` with Twilio's ``X-Twilio-Signature`` over the full URL."""
    url = args.url.rstrip("/") + path
    return await http.post(
        path, data=params, headers={"X-Twilio-Signature": validator.compute_signature(url, params)}
    )


async def _webhook(
    args: argparse.Namespace, call: Call, http: Any, validator: Any
) -> tuple[str, str]:
    """POST the signed voice webhook; return the TwiML stream URL and token."""
    params = twilio_params(call, "ringing")
    reply = await post_signed(args, http, validator, "/webhooks/twilio/voice", params)
    if reply.status_code != 200:
        raise RuntimeError(f"webhook HTTP {reply.status_code}")
    stream = ET.fromstring(reply.text).find("./Connect/Stream")
    if stream is None:
        raise RuntimeError("TwiML without <Connect><Stream>")
    token = next(
        (p.get("value", "") for p in stream.findall("Parameter") if p.get("name") == "token"), ""
    )
    return stream.get("url", ""), token


async def setup(args: argparse.Namespace, call: Call, http: Any, validator: Any) -> None:
    """Open the call's stream, then send one probe frame and wait for its echo (the path is
    up: ``setup_ms`` ends there)."""
    began = time.perf_counter()
    await open_stream(args, call, http, validator)
    assert call.ws is not None
    await call.ws.send(call.probe_media())
    await call.probe.wait()
    call.setup_ms = (time.perf_counter() - began) * 1000


async def open_stream(args: argparse.Namespace, call: Call, http: Any, validator: Any) -> None:
    """The signed webhook (voicegw), the media WebSocket, ``connected`` and ``start``; starts
    reading echoes."""
    headers: dict[str, str] = {}
    began = time.perf_counter()
    if args.target == "voicegw":
        stream_url, token = await _webhook(args, call, http, validator)
        call.webhook_ms = (time.perf_counter() - began) * 1000
        headers["X-Twilio-Signature"] = validator.compute_signature(stream_url, {})
        parts = urlsplit(stream_url)
        base = urlsplit(args.url)
        query = f"?{parts.query}" if parts.query else ""
        ws_url = f"ws://{base.netloc}{parts.path}{query}"
    else:
        token = "unused"
        ws_url = args.url.replace("http://", "ws://", 1)
    call.ws = await connect(
        ws_url,
        additional_headers=headers,
        compression=None,  # Twilio does not negotiate permessage-deflate
        ping_interval=None,
        open_timeout=SETUP_TIMEOUT_S,
        max_size=1024 * 1024,
    )
    call.open_ms = (time.perf_counter() - began) * 1000
    for text in call.opening(token):
        await call.ws.send(text)
    call.receiver = asyncio.create_task(call.receive())


async def _setup_all(args: argparse.Namespace, calls: list[Call]) -> None:
    import httpx
    from twilio.request_validator import RequestValidator

    validator = RequestValidator(args.token or "unused")
    gate = asyncio.Semaphore(SETUP_CONCURRENCY)
    async with httpx.AsyncClient(base_url=args.url, timeout=SETUP_TIMEOUT_S) as http:

        async def one(call: Call) -> None:
            async with gate:
                try:
                    async with asyncio.timeout(SETUP_TIMEOUT_S):
                        await setup(args, call, http, validator)
                except Exception as exc:
                    call.error = f"setup: {type(exc).__name__}: {exc}"[:200]
                    if call.ws is not None:
                        call.ws.transport.abort()

        await asyncio.gather(*(one(c) for c in calls))


async def _arrive(
    args: argparse.Namespace, call: Call, http: Any, validator: Any, at: float
) -> None:
    """Arrival mode: at ``at``, open the call's stream and stream at once (no probe): what
    the gateway holds while it sets the call up shows in the call's round trips."""
    delay = at - time.perf_counter()
    if delay > 0:
        await asyncio.sleep(delay)
    call.began = time.perf_counter()
    try:
        async with asyncio.timeout(SETUP_TIMEOUT_S):
            await open_stream(args, call, http, validator)
    except Exception as exc:
        call.error = f"setup: {type(exc).__name__}: {exc}"[:200]
        if call.ws is not None:
            call.ws.transport.abort()
        call.done.set()
        return
    await call.stream(time.perf_counter())


async def _arrive_all(args: argparse.Namespace, calls: list[Call], t0: float) -> None:
    import httpx
    from twilio.request_validator import RequestValidator

    validator = RequestValidator(args.token or "unused")
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=None)
    async with httpx.AsyncClient(base_url=args.url, timeout=SETUP_TIMEOUT_S, limits=limits) as http:
        spread = args.arrival_s / max(args.total, 1)
        await asyncio.gather(
            *(_arrive(args, c, http, validator, t0 + spread * c.index) for c in calls)
        )


def call_summary(call: Call) -> dict[str, Any]:
    """One call's set-up time and round trips: ``min_ms`` is its standing offset."""
    lat = sorted(call.latency_ms)
    last = call.frames - TAIL_FRAMES  # the call's last second
    tail = [ms for i, ms in zip(call.order, call.latency_ms, strict=True) if i >= last]
    return {
        "call": call.index,
        "setup_ms": None if call.setup_ms is None else round(call.setup_ms, 3),
        "webhook_ms": None if call.webhook_ms is None else round(call.webhook_ms, 3),
        "open_ms": None if call.open_ms is None else round(call.open_ms, 3),
        "received": call.received,
        "min_ms": round(lat[0], 3) if lat else None,
        "p50_ms": round(lat[len(lat) // 2], 3) if lat else None,
        "max_ms": round(lat[-1], 3) if lat else None,
        "heard_min_ms": round(call.heard_min_ms, 3) if lat else None,
        # An offset that arose mid-call (a stall) and never went away.
        "tail_min_ms": round(min(tail), 3) if tail else None,
        "error": call.error,
    }


async def finish(call: Call) -> None:
    """Send ``stop``, close the stream, stop reading it."""
    ws = call.ws
    if ws is None:
        return
    with contextlib.suppress(Exception):
        async with asyncio.timeout(5):
            await ws.send(call.stop())
            await ws.close()
    receiver = call.receiver
    if receiver is not None:
        receiver.cancel()
        with contextlib.suppress(BaseException):
            await receiver
    call.close_code = ws.close_code


async def run(args: argparse.Namespace) -> None:
    frames = round(args.seconds / FRAME_S)
    arrival = args.arrival_s > 0
    calls = []
    for k in range(args.calls):
        j = args.first + k * args.stride  # this call's index across all generator processes
        calls.append(Call(j, frames, 0.0 if arrival else FRAME_S * j / max(args.total, 1)))
    if not arrival:
        await _setup_all(args, calls)
    live = [c for c in calls if c.error is None]
    emit(
        {
            "ready": True,
            "calls": len(calls),
            "failed": len(calls) - len(live),
            "setup_ms": [round(c.setup_ms, 3) for c in live if c.setup_ms is not None],
            "errors": sorted({c.error for c in calls if c.error})[:5],
        }
    )
    line = await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    if line.strip() != "go":
        return
    t0 = time.perf_counter() + GO_DELAY_S
    began = time.perf_counter()
    if arrival:
        await _arrive_all(args, calls, t0)
        live = [c for c in calls if c.ws is not None]
    else:
        await asyncio.gather(*(c.stream(t0) for c in live))
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(TAIL_S):
            await asyncio.gather(*(c.done.wait() for c in live))
    emit({"streamed": True, "wall_s": round(time.perf_counter() - began, 3)})
    await asyncio.gather(*(finish(c) for c in live))
    latencies = array("d")
    lags = array("d")
    jitter = array("d")
    for c in live:
        latencies.extend(c.latency_ms)
        lags.extend(c.lag_ms)
        jitter.extend(c.jitter_ms)
    if args.dump:
        samples = [
            {
                "call": c.index,
                "phase_ms": round(c.phase_s * 1000, 3),
                "setup_ms": c.setup_ms,
                "frame": list(c.order),
                "latency_ms": [round(x, 3) for x in c.latency_ms],
                "send_lag_ms": [round(x, 3) for x in c.lag_ms],
            }
            for c in live
        ]
        await asyncio.to_thread(Path(args.dump).write_text, json.dumps(samples))
    emit(
        {
            "result": {
                "calls": len(live),
                "sent": sum(len(c.lag_ms) for c in live),
                "received": sum(c.received for c in live),
                "duplicates": sum(c.duplicates for c in live),
                "unknown": sum(c.unknown for c in live),
                "marks": sum(c.marks for c in live),
                "errors": sorted({c.error for c in (calls if arrival else live) if c.error})[:5],
                "close_codes": sorted({str(c.close_code) for c in live}),
                "latency_ms": [round(x, 3) for x in latencies],
                "send_lag_ms": [round(x, 3) for x in lags],
                "jitter_ms": [round(x, 3) for x in jitter],
                "per_call": [call_summary(c) for c in calls],
                # Arrival mode: the set-up happened after ``go``; a call that never had an
                # echo failed to set up.
                "setup_ms": [round(c.setup_ms, 3) for c in calls if c.setup_ms is not None],
                "failed": sum(1 for c in calls if c.setup_ms is None),
            }
        }
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", choices=["voicegw", "baseline"], required=True)
    parser.add_argument("--url", required=True, help="http://host:port of the relay")
    parser.add_argument("--token", default="", help="Twilio auth token (voicegw)")
    parser.add_argument("--calls", type=int, required=True)
    parser.add_argument("--seconds", type=float, required=True)
    parser.add_argument("--first", type=int, default=0)
    parser.add_argument("--stride", type=int, default=1)
    parser.add_argument("--total", type=int, default=0)
    parser.add_argument(
        "--arrival-s",
        type=float,
        default=0.0,
        help="calls arrive over this many seconds after go and stream at once (0: set up first)",
    )
    parser.add_argument("--dump", default="", help="write every call's samples to this JSON file")
    args = parser.parse_args()
    args.total = args.total or args.calls
    try:
        import uvloop
    except ImportError:
        asyncio.run(run(args))
    else:
        uvloop.run(run(args))


if __name__ == "__main__":
    main()
