"""The carriers' REST APIs as the simulator plays them on loopback: Telnyx Call Control
(``POST /v2/calls/{call_control_id}/actions/{action}``) and Twilio's call update
(``POST /2010-04-01/Accounts/{AccountSid}/Calls/{CallSid}.json``). Every command the gateway
sends is recorded as a :class:`CarrierCommand` and answered with success.
"""

from __future__ import annotations

import asyncio
import contextlib
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import parse_qsl

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

API_WAIT_S: Final = 10.0  # how long the gateway has to call the simulated Call Control API
ENDING: Final = frozenset({"transfer", "hangup"})
"""The commands after which the carrier ends the call's media stream."""


@dataclass(frozen=True, slots=True)
class CarrierCommand:
    """One REST command: ``action`` is Telnyx's action name, or for a Twilio call update
    ``transfer`` (TwiML with ``<Dial>``), ``hangup`` (``Status=completed``) or ``update``."""

    carrier: str
    call_id: str
    action: str
    body: Mapping[str, Any]

    @property
    def destination(self) -> str | None:
        """Where a ``transfer`` sends the caller (Telnyx ``to``; Twilio's ``<Dial>`` target)."""
        if self.action != "transfer":
            return None
        if self.carrier == "telnyx":
            to = self.body.get("to")
            return to if isinstance(to, str) else None
        return _dial_target(str(self.body.get("Twiml", "")))

    def describe(self) -> str:
        """One line for a report."""
        match self.action:
            case "transfer":
                return f"transfer requested to {self.destination or '(no destination)'}"
            case "hangup":
                return "hang-up requested"
            case action:
                return f"{action} requested"


def _dial_target(twiml: str) -> str | None:
    try:
        # The gateway's own TwiML: Python 3.11's expat refuses entity-expansion bombs.
        root = ET.fromstring(twiml)  # noqa: S314
    except ET.ParseError:
        return None
    dial = root.find("Dial")
    if dial is None:
        return None
    target = next(iter(dial), None)
    text = target.text if target is not None else dial.text
    return text.strip() if text else None


def twilio_action(form: Mapping[str, str]) -> str:
    """What a Twilio call update asks for."""
    if form.get("Status") == "completed":
        return "hangup"
    if "<Dial" in form.get("Twiml", ""):
        return "transfer"
    return "update"


class CarrierApi:
    """Records the commands in ``commands`` (arrival order); :meth:`next` waits for one
    action; ``ended`` is set once a command that ends the media stream (:data:`ENDING`)
    came."""

    def __init__(self) -> None:
        self.commands: list[CarrierCommand] = []
        self.ended = asyncio.Event()
        self._queue: asyncio.Queue[CarrierCommand] = asyncio.Queue()
        self.app = Starlette(
            routes=[
                Route("/v2/calls/{cid}/actions/{action}", self._telnyx, methods=["POST"]),
                Route(
                    "/2010-04-01/Accounts/{account}/Calls/{sid}.json",
                    self._twilio,
                    methods=["POST"],
                ),
            ]
        )

    def _record(self, command: CarrierCommand) -> None:
        self.commands.append(command)
        self._queue.put_nowait(command)
        if command.action in ENDING:
            self.ended.set()

    async def _telnyx(self, request: Request) -> Response:
        try:
            body = orjson.loads(await request.body() or b"{}")
        except orjson.JSONDecodeError:
            return Response(b'{"errors":[{"code":"10015"}]}', 422)
        cid, action = request.path_params["cid"], request.path_params["action"]
        self._record(CarrierCommand("telnyx", cid, action, body if isinstance(body, dict) else {}))
        return Response(b'{"data":{"result":"ok"}}', media_type="application/json")

    async def _twilio(self, request: Request) -> Response:
        form = dict(parse_qsl((await request.body()).decode("utf-8", "replace")))
        sid = request.path_params["sid"]
        self._record(CarrierCommand("twilio", sid, twilio_action(form), form))
        status = "completed" if form.get("Status") == "completed" else "in-progress"
        return Response(orjson.dumps({"sid": sid, "status": status}), media_type="application/json")

    async def next(self, action: str, timeout_s: float = API_WAIT_S) -> CarrierCommand | None:
        """The next ``action`` command; None when none came within ``timeout_s``."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                while True:
                    command = await self._queue.get()
                    if command.action == action:
                        return command
        return None
