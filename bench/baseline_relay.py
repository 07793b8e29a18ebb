"""The smallest Python relay between Twilio Media Streams and OpenAI Realtime: the baseline.

Usage: python bench/baseline_relay.py --openai-url ws://.../v1/realtime --api-key KEY [--port 0]

Prints ``ready <port>`` on stdout once listening. One ``websockets`` server, stdlib ``json``,
nothing else: no webhook, no signature or token checks, no metrics, no logging, no pacing, no
marks, no timeouts. Each Twilio ``media`` payload becomes an ``input_audio_buffer.append``; each
``response.output_audio.delta`` goes back as a Twilio ``media`` message. It is what voicegw is
measured against in ``bench/relay.py``; the same event loop (uvloop when installed) runs both.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
from typing import Any

from websockets.asyncio.client import connect
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

SESSION_UPDATE = json.dumps(
    {
        "type": "session.update",
        "session": {
            "type": "realtime",
            "model": "gpt-realtime-2.1",
            "output_modalities": ["audio"],
            "audio": {
                "input": {"format": {"type": "audio/pcmu"}},
                "output": {"format": {"type": "audio/pcmu"}, "voice": "marin"},
            },
        },
    }
)


def handler(openai_url: str, api_key: str) -> Any:
    async def relay(twilio: ServerConnection) -> None:
        stream_sid = None
        async for message in twilio:
            event = json.loads(message)
            if event["event"] == "start":
                stream_sid = event["start"]["streamSid"]
                break
        if stream_sid is None:
            return
        async with connect(
            f"{openai_url}?model=gpt-realtime-2.1",
            additional_headers={"Authorization": f"Bearer {api_key}"},
            compression=None,
        ) as openai:
            await openai.send(SESSION_UPDATE)

            async def to_twilio() -> None:
                async for message in openai:
                    event = json.loads(message)
                    if event["type"] == "response.output_audio.delta":
                        media = {"payload": event["delta"]}
                        out = {"event": "media", "streamSid": stream_sid, "media": media}
                        await twilio.send(json.dumps(out))

            back = asyncio.create_task(to_twilio())
            try:
                async for message in twilio:
                    event = json.loads(message)
                    if event["event"] == "media":
                        payload = event["media"]["payload"]
                        append = {"type": "input_audio_buffer.append", "audio": payload}
                        await openai.send(json.dumps(append))
                    elif event["event"] == "stop":
                        break
            except ConnectionClosed:
                pass
            finally:
                back.cancel()
                with contextlib.suppress(asyncio.CancelledError, ConnectionClosed):
                    await back

    return relay


async def main(openai_url: str, api_key: str, port: int) -> None:
    loop = asyncio.get_running_loop()
    stop = loop.create_future()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set_result, None)
    async with serve(
        handler(openai_url, api_key), "127.0.0.1", port, compression=None, max_size=64 * 1024
    ) as server:
        print(f"ready {server.sockets[0].getsockname()[1]}", flush=True)
        await stop


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--openai-url", required=True)
    parser.add_argument("--api-key", required=True)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--loop", choices=["uvloop", "asyncio"], default="uvloop")
    args = parser.parse_args()
    coro = main(args.openai_url, args.api_key, args.port)
    with contextlib.suppress(KeyboardInterrupt):
        if args.loop == "uvloop":
            try:
                import uvloop
            except ImportError:
                asyncio.run(coro)
            else:
                uvloop.run(coro)
        else:
            asyncio.run(coro)
