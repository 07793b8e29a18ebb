"""A minimal OpenAI Realtime (GA) stand-in for the relay benchmark: it echoes audio at once.

Usage: python bench/echo_agent.py --api-key KEY [--port 0] [--connect-delay-ms 0]

Prints ``ready <port>`` on stdout once listening, then serves until SIGINT/SIGTERM. A line
``report`` on stdin prints one JSON line ``{"one_way_ms": [...]}`` on stdout and starts a new
series.

Behaviour, the least the relays need: ``GET /v1/realtime?model=...`` with
``Authorization: Bearer KEY`` (anything else gets HTTP 401); ``session.created`` on connect;
``session.update`` answered with ``session.updated`` carrying the requested session; every
``input_audio_buffer.append`` answered immediately with one ``response.output_audio.delta``
whose ``delta`` is the appended base64 text, untouched. ``--connect-delay-ms`` holds each
new session that long before ``session.created`` (a provider slow to connect). Nothing is
validated: the echo must cost as little as possible, since it shares the machine with the
relay under test.

One-way latency: ``bench/loadgen.py`` puts each frame's index and send time
(``time.perf_counter()``, the machine's monotonic clock, the same in every process) in the first
12 bytes of its audio, which the relays forward untouched. On each append the echo records how
long ago that was: the carrier -> provider latency through the relay, probe frames excepted.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import signal
import struct
import sys
import time
from array import array
from http import HTTPStatus
from typing import Any

from websockets.asyncio.server import ServerConnection, serve
from websockets.http11 import Request, Response

try:
    import orjson

    def _loads(text: str | bytes) -> Any:
        return orjson.loads(text)

    def _dumps(obj: Any) -> str:
        return orjson.dumps(obj).decode()
except ImportError:  # pragma: no cover - the project depends on orjson
    _loads = json.loads  # type: ignore[assignment]
    _dumps = json.dumps

# The echoed event, split around the payload so each echo is two string joins.
_DELTA_HEAD = (
    '{"type":"response.output_audio.delta","event_id":"event_echo","response_id":"resp_echo",'
    '"item_id":"item_echo","output_index":0,"content_index":0,"delta":"'
)
_DELTA_TAIL = '"}'
_STAMP = struct.Struct(">Id")  # bench/loadgen.py: frame index, send time
_PROBE = 0xFFFFFFFF
_one_way_ms = array("d")


def _checker(api_key: str) -> Any:
    def process_request(conn: ServerConnection, request: Request) -> Response | None:
        if not request.path.startswith("/v1/realtime"):
            return conn.respond(HTTPStatus.NOT_FOUND, "Not Found\n")
        if request.headers.get("Authorization") != f"Bearer {api_key}":
            return conn.respond(HTTPStatus.UNAUTHORIZED, "Incorrect API key provided.\n")
        return None

    return process_request


_connect_delay_s = 0.0


async def _session(conn: ServerConnection) -> None:
    if _connect_delay_s:
        await asyncio.sleep(_connect_delay_s)
    await conn.send(
        _dumps({"type": "session.created", "event_id": "event_0", "session": {"id": "sess_echo"}})
    )
    async for message in conn:
        msg = _loads(message)
        kind = msg.get("type")
        if kind == "input_audio_buffer.append":
            audio = msg["audio"]
            _record_one_way(audio)
            await conn.send(_DELTA_HEAD + audio + _DELTA_TAIL)
        elif kind == "session.update":
            session = {"id": "sess_echo", "object": "realtime.session", **msg.get("session", {})}
            await conn.send(
                _dumps({"type": "session.updated", "event_id": "event_1", "session": session})
            )


def _record_one_way(audio: str) -> None:
    now = time.perf_counter()
    try:
        index, sent_at = _STAMP.unpack(base64.b64decode(audio[:16]))
    except (ValueError, struct.error):
        return  # not a bench/loadgen.py frame
    if index != _PROBE and sent_at > 0:
        _one_way_ms.append((now - sent_at) * 1000)


def _report() -> None:
    """On each ``report`` line from stdin, print the one-way samples and start anew."""
    line = sys.stdin.readline()
    if not line:  # the parent closed stdin: stop listening
        asyncio.get_running_loop().remove_reader(sys.stdin.fileno())
        return
    if line.strip() == "report":
        samples = [round(v, 3) for v in _one_way_ms]
        del _one_way_ms[:]
        print(json.dumps({"one_way_ms": samples}, separators=(",", ":")), flush=True)


async def main(api_key: str, port: int) -> None:
    stop = asyncio.get_running_loop().create_future()
    for sig in (signal.SIGINT, signal.SIGTERM):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set_result, None)
    async with serve(
        _session,
        "127.0.0.1",
        port,
        process_request=_checker(api_key),
        compression=None,
        ping_interval=None,
        max_size=1024 * 1024,
    ) as server:
        print(f"ready {server.sockets[0].getsockname()[1]}", flush=True)
        with contextlib.suppress(OSError, ValueError):  # no usable stdin: no reports
            asyncio.get_running_loop().add_reader(sys.stdin.fileno(), _report)
        await stop


def _run(coro: Any) -> None:
    try:
        import uvloop
    except ImportError:
        asyncio.run(coro)
    else:
        uvloop.run(coro)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--api-key", required=True)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument(
        "--connect-delay-ms", type=float, default=0.0, help="hold a new session this long"
    )
    args = parser.parse_args()
    _connect_delay_s = args.connect_delay_ms / 1000
    with contextlib.suppress(KeyboardInterrupt):
        _run(main(args.api_key, args.port))
    sys.exit(0)
