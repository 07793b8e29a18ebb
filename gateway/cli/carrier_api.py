"""The carriers' REST APIs as the simulator plays them on loopback: Telnyx Call Control
(``POST /v2/calls/{call_control_id}/actions/{action}``), Twilio's call update
(``POST /2010-04-01/Accounts/{AccountSid}/Calls/{CallSid}.json``), and placing a call (Twilio
``POST /2010-04-01/Accounts/{AccountSid}/Calls.json``, Telnyx ``POST /v2/calls``). Every command
the gateway sends is recorded as a :class:`CarrierCommand` and answered with success, in the
carrier's own shape: a placed call gets a fresh id (``CA`` + 32 hex, ``v3:`` + random) and the
answer the real API gives (:func:`twilio_call_resource`, :func:`telnyx_dial_answer`).
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import parse_qs, parse_qsl

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

API_WAIT_S: Final = 10.0  # how long the gateway has to call the simulated Call Control API
ENDING: Final = frozenset({"transfer", "hangup"})
"""The commands after which the carrier ends the call's media stream."""
PLACING: Final = frozenset({"create", "dial"})
"""The commands that place a call: Twilio's ``Calls.json``, Telnyx's ``/v2/calls``."""
REPEATED: Final = frozenset({"StatusCallbackEvent"})
"""Twilio form fields sent once per value; recorded as a list."""


@dataclass(frozen=True, slots=True)
class CarrierCommand:
    """One REST command: ``action`` is Telnyx's action name (``dial`` for a call placed), or
    for Twilio ``create`` (a call placed), and for a call update ``transfer`` (TwiML with
    ``<Dial>``), ``hangup`` (``Status=completed``) or ``update``. ``call_id`` of a placed call
    is the id the simulator gave it; ``account`` is Twilio's AccountSid from the path."""

    carrier: str
    call_id: str
    action: str
    body: Mapping[str, Any]
    account: str = ""

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
            case "create" | "dial":
                return "call placed"
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


def twilio_call_resource(
    account_sid: str, call_sid: str, form: Mapping[str, Any], status: str
) -> dict[str, Any]:
    """Twilio's Call resource as its REST API answers with it (the fields the gateway and the
    ``twilio`` SDK read)."""
    return {
        "sid": call_sid,
        "account_sid": account_sid,
        "to": form.get("To"),
        "from": form.get("From"),
        "direction": "outbound-api",
        "status": status,
        "api_version": "2010-04-01",
        "uri": f"/2010-04-01/Accounts/{account_sid}/Calls/{call_sid}.json",
    }


def telnyx_dial_answer(call_control_id: str) -> dict[str, Any]:
    """Telnyx's answer to ``POST /v2/calls`` (the ``telnyx`` SDK's ``CallDialResponse``)."""
    return {
        "data": {
            "call_control_id": call_control_id,
            "call_leg_id": str(uuid.uuid4()),
            "call_session_id": str(uuid.uuid4()),
            "is_alive": False,
            "record_type": "call",
        }
    }


def new_twilio_sid(prefix: str = "CA") -> str:
    return prefix + secrets.token_hex(16)


def new_call_control_id() -> str:
    return "v3:" + secrets.token_urlsafe(24)


def twilio_form(raw: bytes) -> dict[str, Any]:
    """A Twilio request's form: each field's value, a list for the :data:`REPEATED` ones."""
    fields = parse_qs(raw.decode("utf-8", "replace"), keep_blank_values=True)
    return {k: v if k in REPEATED else v[-1] for k, v in fields.items()}


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
                Route("/v2/calls", self._telnyx_dial, methods=["POST"]),
                Route("/v2/calls/{cid}/actions/{action}", self._telnyx, methods=["POST"]),
                Route(
                    "/2010-04-01/Accounts/{account}/Calls.json",
                    self._twilio_create,
                    methods=["POST"],
                ),
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
        body = await _telnyx_body(request)
        if body is None:
            return _telnyx_unparsable()
        cid, action = request.path_params["cid"], request.path_params["action"]
        self._record(CarrierCommand("telnyx", cid, action, body))
        return Response(b'{"data":{"result":"ok"}}', media_type="application/json")

    async def _telnyx_dial(self, request: Request) -> Response:
        body = await _telnyx_body(request)
        if body is None:
            return _telnyx_unparsable()
        cid = new_call_control_id()
        self._record(CarrierCommand("telnyx", cid, "dial", body))
        return Response(orjson.dumps(telnyx_dial_answer(cid)), media_type="application/json")

    async def _twilio(self, request: Request) -> Response:
        form = dict(parse_qsl((await request.body()).decode("utf-8", "replace")))
        sid, account = request.path_params["sid"], request.path_params["account"]
        self._record(CarrierCommand("twilio", sid, twilio_action(form), form, account))
        status = "completed" if form.get("Status") == "completed" else "in-progress"
        return Response(orjson.dumps({"sid": sid, "status": status}), media_type="application/json")

    async def _twilio_create(self, request: Request) -> Response:
        form = twilio_form(await request.body())
        sid, account = new_twilio_sid(), request.path_params["account"]
        self._record(CarrierCommand("twilio", sid, "create", form, account))
        resource = twilio_call_resource(account, sid, form, "queued")
        return Response(orjson.dumps(resource), 201, media_type="application/json")

    async def next(self, action: str, timeout_s: float = API_WAIT_S) -> CarrierCommand | None:
        """The next ``action`` command; None when none came within ``timeout_s``."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                while True:
                    command = await self._queue.get()
                    if command.action == action:
                        return command
        return None


async def _telnyx_body(request: Request) -> dict[str, Any] | None:
    """A Telnyx request's JSON object (``{}`` for none or another JSON value); None when the
    body is not JSON."""
    try:
        body = orjson.loads(await request.body() or b"{}")
    except orjson.JSONDecodeError:
        return None
    return body if isinstance(body, dict) else {}


def _telnyx_unparsable() -> Response:
    return Response(b'{"errors":[{"code":"10015"}]}', 422, media_type="application/json")
