"""``voicegw demo --outbound``: the gateway places a call and its events arrive, signed, at a
local receiver.

The demo serves the gateway on loopback with a small agents file of its own (agent
``reminders``, the echo provider, one caller id), an API key of the ``dialer`` role, and
``VOICEGW_EVENTS_URL`` / ``VOICEGW_EVENTS_SECRET`` pointing at :class:`EventsReceiver`, a
customer's endpoint that verifies each request's Standard Webhooks signature with the
``standardwebhooks`` package (independently of the gateway's signer). It places a call through
``POST /api/v1/calls`` and answers it as the carrier (``gateway.cli.simulate_outbound``). Each
event is printed as it arrives: type, ``webhook-id``, whether its signature verified. Phone
numbers are shown masked; the events carry none.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

from standardwebhooks import Webhook, WebhookVerificationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway.cli.admin import create_api_key
from gateway.cli.demo import demo_settings, free_ports
from gateway.cli.simulate import SimulateOptions, caller_audio, serve_app
from gateway.cli.simulate_outbound import Dial, simulate_outbound_call
from gateway.records.base import Role
from gateway.settings import Settings
from security.redaction import mask_phone
from security.secret import Secret
from security.standard_webhooks import new_secret

AGENT: Final = "reminders"
CALLER_ID: Final = "+15550100009"  # fictional (555-01xx) numbers
CALLEE: Final = "+15550100123"
LAST: Final = frozenset({"call.ended", "call.failed", "call.transferred"})
"""The event types that end a call's events: exactly one of them per call."""
EVENTS_WAIT_S: Final = 10.0  # the last event follows the call's end by a dispatcher round
AGENTS_TOML: Final = f"""\
# voicegw demo --outbound: the agent that places the demo's call.
[agents.{AGENT}]
default = true
providers = ["echo"]
caller_ids = ["{CALLER_ID}"]
greeting = "Hello, this is a reminder from the voicegw demo."
"""


class EventsReceiver:
    """The customer's call-events endpoint: ``POST /events`` verifies the request with
    ``standardwebhooks.Webhook(secret)``, answers 204 (400 when the signature does not verify)
    and calls ``show`` with a line for each request. ``events`` holds ``(webhook-id, event)``
    of the verified ones in arrival order; ``refused`` counts the others."""

    def __init__(self, secret: str, show: Callable[[str], None] = print) -> None:
        self.webhook = Webhook(secret)
        self.show = show
        self.events: list[tuple[str, dict[str, Any]]] = []
        self.refused = 0
        self.changed = asyncio.Event()
        self.app = Starlette(routes=[Route("/events", self._receive, methods=["POST"])])

    async def _receive(self, request: Request) -> Response:
        body = await request.body()
        try:
            event = self.webhook.verify(body, dict(request.headers))
        except WebhookVerificationError:
            self.refused += 1
            self.show("  event refused: its signature does not verify")
            return Response(status_code=400)
        webhook_id = request.headers["webhook-id"]
        again = " (again: already received)" if webhook_id in self.ids() else ""
        self.events.append((webhook_id, event))
        self.changed.set()
        self.show(
            f"  event {event.get('type', '?'):<17} webhook-id {webhook_id}  signature verified"
            f"{again}{_detail(event)}"
        )
        return Response(status_code=204)

    def ids(self) -> list[str]:
        """The webhook-ids received, first arrivals in order."""
        return list(dict.fromkeys(webhook_id for webhook_id, _ in self.events))

    def types(self) -> list[str]:
        """The event types, one per webhook-id, in order of first arrival."""
        first = {webhook_id: event for webhook_id, event in reversed(self.events)}
        return [str(first[webhook_id].get("type")) for webhook_id in self.ids()]

    async def wait_last(self, timeout_s: float = EVENTS_WAIT_S) -> bool:
        """Whether a call's last event (:data:`LAST`) arrived within ``timeout_s``."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                while not LAST & set(self.types()):
                    self.changed.clear()
                    await self.changed.wait()
                return True
        return False


def _detail(event: dict[str, Any]) -> str:
    data = event.get("data")
    if not isinstance(data, dict):
        return ""
    shown = [f"{name} {data[name]}" for name in ("outcome", "duration_s") if name in data]
    return f"  ({', '.join(shown)})" if shown else ""


def write_agents_file(data_dir: Path) -> Path:
    """The demo's agents file in ``data_dir`` (readable, writable by its owner only)."""
    path = data_dir / "demo-agents.toml"
    path.write_text(AGENTS_TOML)
    path.chmod(0o600)
    return path


async def run_outbound_demo(settings: Settings, *, carrier: str, wav: str | None) -> int:
    """Serve the gateway and the events receiver on loopback, place one call through the API
    and answer it as ``carrier``; print the events as they arrive and the call's report.
    Returns 0 when audio came back and the call's events arrived, each verified, in order."""
    from gateway.app import build_app

    caller_audio(wav)  # an unusable WAV stops the demo before it starts
    port, api_port, events_port = free_ports(3)
    secret = new_secret()
    events_url = f"http://127.0.0.1:{events_port}/events"
    settings = dataclasses.replace(
        demo_settings(settings, port, api_port),
        agents_file=write_agents_file(settings.data_dir),
        twilio_account_sid=settings.twilio_account_sid or "AC" + secrets.token_hex(16),
        telnyx_connection_id=settings.telnyx_connection_id or "voicegw-demo",
        events_url=events_url,
        events_secrets=Secret(secret),
    )
    receiver = EventsReceiver(secret)
    app = build_app(settings)
    async with contextlib.AsyncExitStack() as stack:
        await stack.enter_async_context(serve_app(receiver.app, events_port))
        url = await stack.enter_async_context(serve_app(app, port))
        key, _ = await create_api_key(app.state.runtime.store, "demo-dialer", Role.DIALER)
        print(f"gateway running at {url}; call events go to {events_url}")
        print(
            f"  placing a call to {mask_phone(CALLEE)} from {mask_phone(CALLER_ID)} "
            f"(agent {AGENT}, {carrier}) with a dialer API key"
        )
        print("  the events receiver checks each signature with the standardwebhooks package:")
        options = SimulateOptions(carrier, wav, url, api_port=api_port, to=CALLEE)
        report = await simulate_outbound_call(
            settings, options, Dial(Secret(key.token), CALLER_ID, AGENT)
        )
        arrived = await receiver.wait_last()
        print(report.render())
    types = receiver.types()
    print(
        f"call events: {len(types)} ({' -> '.join(types) or 'none'}); "
        f"{len(receiver.events)} deliveries verified, {receiver.refused} refused"
    )
    in_order = types[:2] == ["call.started", "call.answered"] and bool(LAST & set(types[-1:]))
    return 0 if report.ok and arrived and in_order and not receiver.refused else 1
