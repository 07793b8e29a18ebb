"""A minimal OpenAI Realtime (GA) stand-in for the relay benchmark: it echoes audio at once.

Usage: python bench/echo_agent.py --api-key KEY [--port 0]

Prints ``ready <port>`` on stdout once listening, then serves until SIGINT/SIGTERM.

Behaviour, the least the relays need: ``GET /v1/realtime?model=...`` with
``Authorization: Bearer KEY`` (anything else gets HTTP 401); ``session.created`` on connect;
``session.update`` answered with ``session.updated`` carrying the requested session; every
``input_audio_buffer.append`` answered immediately with one ``response.output_audio.delta``
whose ``delta`` is the appended base64 text, untouched. Nothing is validated or recorded: the
echo must cost as little as possible, since it shares the machine with the relay under test.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import sys
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


def _checker(api_key: str) -> Any:
    def process_request(conn: ServerConnection, request: Request) -> Response | None:
        if not request.path.startswith("/v1/realtime"):
            return conn.respond(HTTPStatus.NOT_FOUND, "Not Found\n")
        if request.headers.get("Authorization") != f"Bearer {api_key}":
            return conn.respond(HTTPStatus.UNAUTHORIZED, "Incorrect API key provided.\n")
        return None

    return process_request


async def _session(conn: ServerConnection) -> None:
    await conn.send(
        _dumps({"type": "session.created", "event_id": "event_0", "session": {"id": "sess_echo"}})
    )
    async for message in conn:
        msg = _loads(message)
        kind = msg.get("type")
        if kind == "input_audio_buffer.append":
            await conn.send(_DELTA_HEAD + msg["audio"] + _DELTA_TAIL)
        elif kind == "session.update":
            session = {"id": "sess_echo", "object": "realtime.session", **msg.get("session", {})}
            await conn.send(
                _dumps({"type": "session.updated", "event_id": "event_1", "session": session})
            )


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
    args = parser.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        _run(main(args.api_key, args.port))
    sys.exit(0)
