"""CPU per 20 ms audio frame sent to a provider and received back, through each provider-side
WebSocket client (picows, websockets), measured side by side in the same run.

Usage: python bench/wsclient.py [--connections 20] [--frames 500] [--repeat 3]
                                [--json bench/last-run/wsclient.json]

The server is ``bench/echo_agent.py`` in its own process (an OpenAI Realtime GA stand-in that
answers each ``input_audio_buffer.append`` with one ``response.output_audio.delta``). This
process opens ``--connections`` sessions and, on each at once, sends a frame and awaits its
echo ``--frames`` times. Two levels, each with both clients:

* ``transport``: :func:`providers.ai.transport.connect`, sending the append JSON of a 20 ms
  mu-law frame (160 bytes, base64) and receiving the delta JSON: the client alone;
* ``session``: :class:`providers.ai.session.WebSocketAgentSession` with the OpenAI codec,
  ``send(AudioChunk)`` and ``recv()`` of the echoed ``AudioChunk``: what the bridge pays.

The figure is this process's CPU time (user + system, ``time.process_time``) per round trip
(one send + one receive), so the echo server's share is not in it. Levels and clients alternate
within each repeat; the table shows every repeat and the best (least disturbed by other work
on the machine), with the load average beside them. Nothing is asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Final

ROOT: Final = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from providers.ai import transport  # noqa: E402
from providers.ai.config import AgentConfig  # noqa: E402
from providers.ai.session import WebSocketAgentSession, open_session  # noqa: E402
from providers.events import PCMU_8K, AudioChunk  # noqa: E402

LAST_RUN: Final = ROOT / "bench" / "last-run" / "wsclient.json"
KEY: Final = "bench-key"
PAYLOAD: Final = base64.b64encode(bytes(range(160))).decode()  # 20 ms of 8 kHz mu-law
APPEND: Final = json.dumps({"type": "input_audio_buffer.append", "audio": PAYLOAD})
CLIENTS: Final = ("websockets", "picows")
LEVELS: Final = ("transport", "session")


async def start_echo() -> tuple[asyncio.subprocess.Process, int]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(ROOT / "bench" / "echo_agent.py"),
        "--api-key",
        KEY,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    assert proc.stdout is not None
    line = (await proc.stdout.readline()).decode().split()
    if line[:1] != ["ready"]:
        raise SystemExit("echo_agent.py did not start")
    return proc, int(line[1])


async def run_transport(url: str, client: str, connections: int, frames: int) -> float:
    headers = {"Authorization": f"Bearer {KEY}"}
    conns = [
        await transport.connect(client, url, headers, transport.Options())
        for _ in range(connections)
    ]
    for conn in conns:  # session.created
        await conn.recv()

    async def loop(conn: transport.Connection) -> None:
        for _ in range(frames):
            await conn.send(APPEND)
            await conn.recv()

    used = await _timed([loop(c) for c in conns])
    for conn in conns:
        await conn.close()
    return used


async def run_session(url: str, client: str, connections: int, frames: int) -> float:
    config = AgentConfig.for_provider("openai", api_key=KEY, url=url, ws_client=client)
    sessions = [open_session(config) for _ in range(connections)]
    for s in sessions:
        await s.connect()
        await s.recv()  # AgentReady
    chunk = AudioChunk(PAYLOAD, PCMU_8K)

    async def loop(session: WebSocketAgentSession) -> None:
        for _ in range(frames):
            await session.send(chunk)
            while not isinstance(await session.recv(), AudioChunk):
                pass

    used = await _timed([loop(s) for s in sessions])  # type: ignore[arg-type]
    for s in sessions:
        await s.close()
    return used


async def _timed(loops: list[Awaitable[None]]) -> float:
    begin = time.process_time()
    await asyncio.gather(*loops)
    return time.process_time() - begin


async def main(args: argparse.Namespace) -> dict[str, object]:
    echo, port = await start_echo()
    url = f"ws://127.0.0.1:{port}/v1/realtime"
    runners: dict[str, Callable[[str, str, int, int], Awaitable[float]]] = {
        "transport": run_transport,
        "session": run_session,
    }
    trips = args.connections * args.frames
    results: dict[str, dict[str, list[float]]] = {
        level: {c: [] for c in CLIENTS} for level in LEVELS
    }
    loads: list[float] = []
    try:
        for runner in runners.values():  # warm up both clients and the server
            for client in CLIENTS:
                await runner(url, client, 2, 50)
        for k in range(args.repeat):
            loads.append(os.getloadavg()[0])
            for level in LEVELS:
                order = CLIENTS if k % 2 == 0 else CLIENTS[::-1]
                for client in order:
                    used = await runners[level](url, client, args.connections, args.frames)
                    results[level][client].append(used / trips * 1e6)
            print(f"[{k + 1}/{args.repeat}] load {loads[-1]:.2f}", file=sys.stderr)
    finally:
        echo.terminate()
        with contextlib.suppress(ProcessLookupError):
            await echo.wait()
    return {
        "connections": args.connections,
        "frames": args.frames,
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "loop": type(asyncio.get_running_loop()).__module__,
        "load_1min": loads,
        "us_per_round_trip": results,
    }


def report(run: dict[str, object]) -> str:
    results = run["us_per_round_trip"]
    assert isinstance(results, dict)
    loads = run["load_1min"]
    assert isinstance(loads, list)
    lines = [
        f"CPU µs per 20 ms frame sent and echoed back (this process only), "
        f"{run['connections']} connections x {run['frames']} frames, {run['loop']}, "
        f"{run['cpus']} CPUs, load average (1 min) per repeat: "
        + ", ".join(f"{x:.2f}" for x in loads),
        "",
        "| level | client | each repeat | best | vs websockets |",
        "| --- | --- | --- | --- | --- |",
    ]
    for level in LEVELS:
        base = min(results[level]["websockets"])
        for client in CLIENTS:
            each = results[level][client]
            best = min(each)
            lines.append(
                f"| {level} | {client} | {' / '.join(f'{x:.1f}' for x in each)} | "
                f"{best:.1f} | {best / base:.2f}x |"
            )
    return "\n".join(lines)


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, default=20)
    parser.add_argument("--frames", type=int, default=500)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--json", type=Path, default=LAST_RUN)
    args = parser.parse_args()
    try:
        import uvloop

        run = uvloop.run(main(args))
    except ImportError:
        run = asyncio.run(main(args))
    print(report(run))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(run, indent=2) + "\n")


if __name__ == "__main__":
    cli()
