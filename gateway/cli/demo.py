"""``voicegw demo``: the gateway with embedded defaults on free loopback ports, a tour of the
security layers (hostile webhooks, and which layer refused each) and one simulated call; with
``--agents FILE`` the call plays the agents' tools instead (``gateway.cli.demo_agents``).
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import secrets
import socket
import time

import httpx

from gateway import devkeys
from gateway.cli.simulate import (
    SimulateOptions,
    caller_audio,
    post_telnyx,
    serve_app,
    simulate_call,
    telnyx_event,
)
from gateway.settings import Settings
from security.secret import Secret


def demo_settings(settings: Settings, port: int, api_port: int) -> Settings:
    """``settings`` for a gateway on ``port`` whose carriers' REST APIs are the simulator's on
    ``api_port``, with the development Telnyx keys."""
    keys = devkeys.load_or_create(settings.data_dir)
    api_url = f"http://127.0.0.1:{api_port}"
    return dataclasses.replace(
        settings,
        public_url=f"http://127.0.0.1:{port}",
        telnyx_api_url=api_url,
        twilio_api_url=api_url,
        telnyx_api_key=settings.telnyx_api_key or Secret("dev-demo"),
        telnyx_public_keys=settings.telnyx_public_keys or (keys.telnyx_public_key,),
    )


async def run_demo(settings: Settings, *, wav: str | None, carrier: str) -> int:
    """Serve the gateway with embedded defaults on a free port and run one call through it."""
    from gateway.app import build_app

    caller_audio(wav)  # an unusable WAV stops the demo before it starts
    port, api_port = free_ports(2)
    keys = devkeys.load_or_create(settings.data_dir)
    settings = demo_settings(settings, port, api_port)
    async with serve_app(build_app(settings), port) as url:
        print(f"gateway running at {url} (providers: {', '.join(settings.providers)})")
        print(await _security_tour(url, settings, keys))
        options = SimulateOptions(carrier, wav, url, api_port=api_port)
        report = await simulate_call(settings, options)
        print(report.render())
    return 0 if report.ok else 1


async def _security_tour(url: str, settings: Settings, keys: devkeys.DevKeys) -> str:
    """Send a few hostile webhooks and show which layer refused each."""
    lines = ["security layers:"]
    async with httpx.AsyncClient(base_url=url, timeout=10.0) as http:
        body = telnyx_event(
            "call.initiated", "v3:demo-" + secrets.token_hex(4), direction="outgoing"
        )
        checks: list[tuple[str, httpx.Response]] = [
            ("GET instead of POST", await http.get("/webhooks/telnyx")),
            (
                "wrong content type",
                await http.post(
                    "/webhooks/telnyx", content=body, headers={"content-type": "text/plain"}
                ),
            ),
            (
                "unsigned Twilio webhook",
                await http.post("/webhooks/twilio/voice", data={"CallSid": "CA" + "0" * 32}),
            ),
            (
                "Telnyx timestamp 10 minutes old",
                await post_telnyx(http, keys, body, int(time.time()) - 600),
            ),
            ("Telnyx body changed after signing", await _tampered(http, keys, body)),
            ("Telnyx webhook, signed", await post_telnyx(http, keys, body)),
            ("the same webhook again (answered, not redone)", await post_telnyx(http, keys, body)),
        ]
    for what, reply in checks:
        reason = reply.json().get("error", "accepted") if reply.content else ""
        lines.append(f"  {what:<44} {reply.status_code} {reason}")
    return "\n".join(lines)


async def _tampered(http: httpx.AsyncClient, keys: devkeys.DevKeys, body: bytes) -> httpx.Response:
    ts = str(int(time.time()))
    signature = keys.telnyx_signing_key().sign(ts.encode() + b"|" + body).signature
    return await http.post(
        "/webhooks/telnyx",
        content=body.replace(b"incoming", b"outgoing").replace(b"+1555", b"+1556"),
        headers={
            "content-type": "application/json",
            "telnyx-signature-ed25519": base64.b64encode(signature).decode(),
            "telnyx-timestamp": ts,
        },
    )


def free_ports(n: int) -> list[int]:
    """``n`` distinct loopback ports free at the time of the call (held together while
    chosen, so no two are the same)."""
    with contextlib.ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket()) for _ in range(n)]
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [int(s.getsockname()[1]) for s in sockets]
