"""``voicegw demo --agents FILE``: a call whose agent uses its tools, played on this machine.

The demo reads and checks the agents file (each problem stops it, one line each), picks the agent
of the dialed number (``--to``, else the default agent's first number), serves the gateway with
that file on loopback and calls it as a carrier (``gateway.cli.simulate``). Nothing leaves the
machine:

* the real providers (OpenAI, Deepgram, Gemini) are pointed at a closed loopback port, so the
  call fails over down the agent's providers to ``echo``, which calls the n-th declared tool when
  it hears DTMF ``n`` (``providers.ai.echo``);
* HTTP tools are answered by a local stand-in endpoint that checks each request's Standard
  Webhooks signature with the demo's ``VOICEGW_TOOLS_SECRET``; the file's URLs are not called.

By default the demo presses a key for each of the agent's own tools, then for
``transfer_call`` (else ``end_call``). The report shows the carrier's side (key presses, REST
commands such as the transfer, how the stream ended), then the gateway's: each tool call from
its audit trail (name, outcome, latency; never arguments or output) and the call's outcome.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from pathlib import Path
from typing import Final

import orjson
from standardwebhooks import Webhook, WebhookVerificationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway.agents import END_CALL, TRANSFER_CALL, AgentBook, AgentProfile, AgentsFileError
from gateway.agents.http_tools import new_tool_secret
from gateway.agents.loader import load_agents
from gateway.agents.python_tools import ModuleRules
from gateway.cli.base import CommandError
from gateway.cli.demo import demo_settings, free_ports
from gateway.cli.simulate import (
    CALLEE,
    Press,
    SimulateOptions,
    caller_audio,
    serve_app,
    simulate_call,
)
from gateway.records.base import AuditQuery, CallRecord, Store
from gateway.settings import Settings
from security.secret import Secret

FIRST_PRESS_S: Final = 1.0
PRESS_GAP_S: Final = 1.5  # room for each tool's answer before the next key
MAX_KEYS: Final = 9  # the echo agent's digits 1 to 9
TOOL_ACTIONS: Final = ("call.tool", "call.transfer", "call.end_call")
RECORD_WAIT_S: Final = 5.0  # the call record is closed just after the stream


class DemoError(CommandError):
    """The agents demo cannot run; the message says why."""


def load_book(path: Path, data_dir: Path) -> AgentBook:
    """The agents file at ``path``, checked as ``voicegw agents check`` does outside
    production, its handlers imported from its own directory (the demo lists it in
    ``VOICEGW_TOOL_MODULES_PATH``); raises :class:`DemoError` listing every problem."""
    try:
        return load_agents(
            path,
            configured_providers=(),
            production=False,
            modules=ModuleRules(paths=(path.parent.resolve(),), forbidden=(data_dir,)),
        )
    except AgentsFileError as exc:
        raise DemoError(
            f"the agents file {path} cannot be used:\n  " + "\n  ".join(exc.problems)
        ) from None


def pick_agent(book: AgentBook, to: str | None) -> tuple[AgentProfile, str]:
    """The agent a call to ``to`` reaches and the number to dial: ``to``, else the default
    agent's first number. Raises :class:`DemoError` when that agent cannot play tools here."""
    profile = book.for_number(to) if to else book.default
    number = to or (profile.numbers[0] if profile.numbers else CALLEE)
    if "echo" not in profile.providers:
        raise DemoError(
            f"agent {profile.name!r} lists no echo provider: the demo plays its tools with the "
            f'echo agent; add "echo" at the end of agents.{profile.name}.providers'
        )
    return profile, number


def default_presses(profile: AgentProfile) -> tuple[Press, ...]:
    """A key for each of the profile's own tools (up to nine in all), then ``transfer_call``
    if it has one, else ``end_call`` if it has one; ``PRESS_GAP_S`` apart."""
    names = [f.name for f in profile.functions()]
    own = [i for i, name in enumerate(names, 1) if name not in (TRANSFER_CALL, END_CALL)]
    last = TRANSFER_CALL if TRANSFER_CALL in names else END_CALL if END_CALL in names else None
    keys = own[: MAX_KEYS - 1] + ([names.index(last) + 1] if last else [])
    return tuple(
        Press(str(key), FIRST_PRESS_S + i * PRESS_GAP_S)
        for i, key in enumerate(keys)
        if key <= MAX_KEYS
    )


def key_map(profile: AgentProfile) -> str:
    """Which key calls which tool at the echo agent: ``1 lookup_order, 2 transfer_call``."""
    names = [f.name for f in profile.functions()][:MAX_KEYS]
    return ", ".join(f"{i} {name}" for i, name in enumerate(names, 1)) or "(no tools)"


class ToolStandIn:
    """A local endpoint for the HTTP tools: ``POST /{tool}`` answers ``{"ok": true, ...}``
    when the request carries a valid signature by ``secret``, 401 otherwise; ``verified`` and
    ``refused`` count them."""

    def __init__(self, secret: str) -> None:
        self.webhook = Webhook(secret)
        self.verified = 0
        self.refused = 0
        self.app = Starlette(routes=[Route("/{tool}", self._call, methods=["POST"])])

    async def _call(self, request: Request) -> Response:
        body = await request.body()
        try:
            self.webhook.verify(body, dict(request.headers))
        except WebhookVerificationError:
            self.refused += 1
            return Response(b'{"error": "bad signature"}', 401, media_type="application/json")
        self.verified += 1
        answer = {"ok": True, "tool": request.path_params["tool"], "answered_by": "demo stand-in"}
        return Response(orjson.dumps(answer), media_type="application/json")


def with_stand_in(book: AgentBook, url: str) -> AgentBook:
    """``book`` with every HTTP tool sent to ``url/{tool}`` instead of its own URL."""
    profiles = {
        name: dataclasses.replace(
            profile,
            tools=tuple(
                dataclasses.replace(tool, url=f"{url}/{tool.name}") if tool.url else tool
                for tool in profile.tools
            ),
        )
        for name, profile in book.profiles.items()
    }
    return dataclasses.replace(book, profiles=profiles)


async def run_agents_demo(
    settings: Settings,
    *,
    agents_file: Path,
    carrier: str,
    wav: str | None,
    to: str | None,
    presses: tuple[Press, ...] | None,
) -> int:
    """Serve the gateway with ``agents_file`` on loopback, call the agent of ``to`` pressing
    ``presses`` (default: :func:`default_presses`), print the report. Returns 0 when the call
    had audio back and every tool call was answered; raises :class:`DemoError` first when the
    file or the agent cannot be used."""
    from gateway.app import build_app

    caller_audio(wav)  # an unusable WAV stops the demo before it starts
    book = load_book(agents_file, settings.data_dir)
    profile, number = pick_agent(book, to)
    presses = presses or default_presses(profile)
    http_tools = any(tool.url for p in book.profiles.values() for tool in p.tools)
    secret = new_tool_secret()
    port, api_port, tools_port, closed_port = free_ports(4)
    closed = f"ws://127.0.0.1:{closed_port}"
    settings = dataclasses.replace(
        demo_settings(settings, port, api_port),
        agents_file=agents_file,
        tool_modules_path=(agents_file.parent.resolve(),),
        tools_secrets=Secret(secret) if http_tools else None,
        # Loopback only: a real provider would be a connection refused, and the call fails
        # over down the agent's providers to echo.
        openai_realtime_url=closed,
        deepgram_agent_url=closed,
        gemini_live_url=closed,
    )
    stand_in = ToolStandIn(secret)
    app = build_app(settings)
    async with contextlib.AsyncExitStack() as stack:
        tools_url = await stack.enter_async_context(serve_app(stand_in.app, tools_port))
        url = await stack.enter_async_context(serve_app(app, port))
        runtime = app.state.runtime
        runtime.agents.book = with_stand_in(runtime.agents.book, tools_url)
        print(f"gateway running at {url} with the agents of {agents_file}")
        print(
            f"  agent: {profile.name} (dialed {number}); providers {' -> '.join(profile.providers)}"
        )
        real = [p for p in profile.providers if p != "echo"]
        if real:
            print(
                f"  {', '.join(real)}: not contacted by the demo (loopback only); the call fails "
                "over to echo, which calls tool n when the caller presses n"
            )
        print(f"  keys: {key_map(profile)}")
        if http_tools:
            print(
                f"  HTTP tools are answered by a local stand-in at {tools_url} that verifies "
                "each request's signature; their configured URLs are not called"
            )
        print("  pressing: " + ", ".join(f"{p.digit}@{p.at_s:g}" for p in presses))
        options = SimulateOptions(carrier, wav, url, api_port=api_port, to=number, dtmf=presses)
        report = await simulate_call(settings, options)
        print(report.render())
        record = await _ended_call(runtime.store)
        answered = await _print_gateway_side(runtime.store, record, stand_in)
    return 0 if report.ok and answered else 1


async def _ended_call(store: Store) -> CallRecord | None:
    """The demo's call (the only one), once its record is closed (or as it is after a bound)."""
    record: CallRecord | None = None
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(RECORD_WAIT_S):
            while True:
                calls = await store.list_calls(limit=1)
                record = calls[0] if calls else None
                if record is not None and record.ended_at is not None:
                    break
                await asyncio.sleep(0.05)
    return record


async def _print_gateway_side(
    store: Store, record: CallRecord | None, stand_in: ToolStandIn
) -> bool:
    """Print the call's tool calls from the audit trail and its outcome; returns whether every
    tool call had the outcome ``ok``."""
    if record is None:
        print("gateway: no call record")
        return False
    events = await store.query_audit(
        AuditQuery(action="call.", entity_type="call", entity_id=record.call_id)
    )
    lines = ["tool calls (the gateway's audit trail):"]
    all_ok = True
    for event in (e for e in events if e.action in TOOL_ACTIONS):
        detail = event.detail
        match event.action:
            case "call.tool":
                tool, outcome = str(detail.get("tool")), str(detail.get("outcome"))
            case "call.transfer":
                tool = TRANSFER_CALL
                outcome = "ok" if event.outcome == "success" else "failed"
                outcome += f" (to {detail.get('destination')})"
            case _:
                tool, outcome = END_CALL, "ok" if event.outcome == "success" else "failed"
        all_ok = all_ok and outcome.startswith("ok")
        lines.append(f"  {tool:<24} {outcome:<24} {detail.get('ms')} ms")
    if len(lines) == 1:
        lines.append("  none")
        all_ok = False
    if stand_in.verified or stand_in.refused:
        lines.append(
            f"  HTTP tool requests at the stand-in: {stand_in.verified} signature verified, "
            f"{stand_in.refused} refused"
        )
    where = f" to {record.transfer_to}" if record.transfer_to else ""
    lines.append(f"call outcome: {record.outcome}{where} (agent {record.agent})")
    print("\n".join(lines))
    return all_ok
