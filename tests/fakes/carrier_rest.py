"""Fake Twilio and Telnyx REST APIs: a real HTTP server on a loopback ephemeral port.

    async with FakeCarrierRest() as fake:
        rest = TwilioRest(token, base_url=fake.base_url)
        fake.set_response("twilio", Behavior.ALREADY_ENDED)
        ...
        assert fake.requests[-1].form() == {"Status": "completed"}

Routes (as the real APIs, same paths on one server):
    POST /2010-04-01/Accounts/{AccountSid}/Calls.json               Twilio create call
    POST /2010-04-01/Accounts/{AccountSid}/Calls/{CallSid}.json     Twilio call update
    POST /v2/calls                                                   Telnyx dial
    POST /v2/calls/{call_control_id}/actions/{action}                  Telnyx call command

A placed call gets a fresh id (``CA`` + 32 hex, ``v3:`` + random), recorded as the request's
``call_id`` and answered as the real APIs do (Twilio 201 with the call resource, Telnyx 200
with ``data.call_control_id``: the shapes the simulator's ``gateway.cli.carrier_api`` answers
with too).

Every request is recorded (method, path, headers, body) before it is answered. Answers follow
the real APIs' shapes: Twilio errors ``{"code", "message", "more_info", "status"}``, Telnyx
errors ``{"errors": [{"code", "title", "detail"}]}``. With ``twilio_auth_token`` /
``telnyx_api_key`` set, wrong credentials get the real 401 answers.
"""

from __future__ import annotations

import asyncio
import base64
import enum
import json
import secrets
import socket
import urllib.parse
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Literal, Self

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from gateway.cli.carrier_api import telnyx_dial_answer, twilio_call_resource

Carrier = Literal["twilio", "telnyx"]


class Behavior(enum.Enum):
    OK = "ok"
    ALREADY_ENDED = "already_ended"  # Twilio 400/21220, Telnyx 422/90018
    NOT_FOUND = "not_found"  # Twilio 404/20404, Telnyx 404/10005
    UNAUTHORIZED = "unauthorized"  # Twilio 401/20003, Telnyx 401/10009
    SERVER_ERROR = "server_error"  # 500
    HANG = "hang"  # never answer (until the server stops)


@dataclass(frozen=True, slots=True)
class Reply:
    """A custom answer: status, JSON body (or none)."""

    status: int
    body: Any = None


@dataclass(frozen=True, slots=True)
class RecordedRequest:
    carrier: Carrier
    method: str
    path: str
    headers: Mapping[str, str]  # lower-case names
    body: bytes
    call_id: str  # Twilio CallSid or Telnyx call_control_id (of a placed call: its new id)
    action: str  # Twilio: "create", "update"; Telnyx: "dial", "answer", "hangup", ...

    def json(self) -> Any:
        return json.loads(self.body)

    def form(self) -> dict[str, str]:
        return dict(urllib.parse.parse_qsl(self.body.decode(), keep_blank_values=True))

    def form_lists(self) -> dict[str, list[str]]:
        """The form with every value of a repeated field (Twilio's ``StatusCallbackEvent``)."""
        return urllib.parse.parse_qs(self.body.decode(), keep_blank_values=True)

    def basic_auth(self) -> tuple[str, str] | None:
        value = self.headers.get("authorization", "")
        if not value.startswith("Basic "):
            return None
        user, _, password = base64.b64decode(value[6:]).decode().partition(":")
        return user, password

    def bearer(self) -> str | None:
        value = self.headers.get("authorization", "")
        return value[7:] if value.startswith("Bearer ") else None


@dataclass
class _Responses:
    default: Behavior | Reply = Behavior.OK
    per_call: dict[str, Behavior | Reply] = field(default_factory=dict)

    def pick(self, call_id: str) -> Behavior | Reply:
        return self.per_call.get(call_id, self.default)


class _QuietServer(uvicorn.Server):
    """uvicorn without signal handling (the test runner owns them) and with an immediate stop
    instead of a 0.1 s polling loop."""

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self.stop_requested = asyncio.Event()

    @contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield

    async def main_loop(self) -> None:
        await self.on_tick(0)
        await self.stop_requested.wait()


class FakeCarrierRest:
    """Use as ``async with FakeCarrierRest() as fake``; see the module docstring."""

    def __init__(
        self,
        *,
        twilio_auth_token: str | None = None,
        telnyx_api_key: str | None = None,
    ) -> None:
        self.twilio_auth_token = twilio_auth_token
        self.telnyx_api_key = telnyx_api_key
        self.requests: list[RecordedRequest] = []
        self._responses: dict[Carrier, _Responses] = {
            "twilio": _Responses(),
            "telnyx": _Responses(),
        }
        self._release = asyncio.Event()
        self._arrived = asyncio.Condition()
        self._server: _QuietServer | None = None
        self._task: asyncio.Task[None] | None = None
        self._socket: socket.socket | None = None
        self.base_url = ""

    # -- control -------------------------------------------------------------------------------

    def set_response(
        self, carrier: Carrier, behavior: Behavior | Reply, *, call_id: str | None = None
    ) -> None:
        """Answer every later request to ``carrier`` (or only those for ``call_id``) so.
        Requests that place a call are ``call_id="create"`` (Twilio) and ``"dial"`` (Telnyx)."""
        responses = self._responses[carrier]
        if call_id is None:
            responses.default = behavior
        else:
            responses.per_call[call_id] = behavior

    def requests_for(self, carrier: Carrier) -> list[RecordedRequest]:
        return [r for r in self.requests if r.carrier == carrier]

    async def wait_for_requests(self, count: int) -> list[RecordedRequest]:
        """Wait until at least ``count`` requests have arrived (bound it with a timeout)."""
        async with self._arrived:
            await self._arrived.wait_for(lambda: len(self.requests) >= count)
        return list(self.requests)

    # -- lifecycle -----------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        self._socket = sock
        port = sock.getsockname()[1]
        self.base_url = f"http://127.0.0.1:{port}"
        config = uvicorn.Config(
            self._app(),
            log_level="warning",
            lifespan="off",
            ws="none",
            access_log=False,
            timeout_graceful_shutdown=1,
        )
        self._server = _QuietServer(config)
        self._task = asyncio.create_task(self._server.serve(sockets=[sock]))
        while not self._server.started:
            if self._task.done():
                await self._task  # raises the start-up failure
                raise RuntimeError("fake carrier REST server did not start")
            await asyncio.sleep(0.01)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._release.set()
        if self._server is not None and self._task is not None:
            self._server.should_exit = True
            self._server.stop_requested.set()
            try:
                await asyncio.wait_for(asyncio.shield(self._task), timeout=5)
            except TimeoutError:
                self._server.force_exit = True
                await self._task
        if self._socket is not None:
            self._socket.close()

    # -- the app -------------------------------------------------------------------------------

    def _app(self) -> Starlette:
        return Starlette(
            routes=[
                Route(
                    "/2010-04-01/Accounts/{account_sid}/Calls.json",
                    self._twilio_create,
                    methods=["POST"],
                ),
                Route("/v2/calls", self._telnyx_dial, methods=["POST"]),
                Route(
                    "/2010-04-01/Accounts/{account_sid}/Calls/{call_sid}.json",
                    self._twilio,
                    methods=["POST"],
                ),
                Route("/v2/calls/{call_id}/actions/{action}", self._telnyx, methods=["POST"]),
            ]
        )

    async def _record(self, request: Request, carrier: Carrier, call_id: str, action: str) -> None:
        body = await request.body()
        self.requests.append(
            RecordedRequest(
                carrier=carrier,
                method=request.method,
                path=request.url.path,
                headers={k.lower(): v for k, v in request.headers.items()},
                body=body,
                call_id=call_id,
                action=action,
            )
        )
        async with self._arrived:
            self._arrived.notify_all()

    async def _twilio_create(self, request: Request) -> Response:
        account_sid = request.path_params["account_sid"]
        call_sid = "CA" + secrets.token_hex(16)
        await self._record(request, "twilio", call_sid, "create")
        behavior = self._responses["twilio"].pick("create")
        if behavior is Behavior.OK:
            if self.twilio_auth_token is not None:
                if self.requests[-1].basic_auth() != (account_sid, self.twilio_auth_token):
                    return _twilio_error(401, 20003, "Authenticate")
            form = self.requests[-1].form()
            return _json(201, twilio_call_resource(account_sid, call_sid, form, "queued"))
        return await self._twilio_answer(request, account_sid, call_sid, behavior)

    async def _twilio(self, request: Request) -> Response:
        account_sid = request.path_params["account_sid"]
        call_sid = request.path_params["call_sid"]
        await self._record(request, "twilio", call_sid, "update")
        behavior = self._responses["twilio"].pick(call_sid)
        return await self._twilio_answer(request, account_sid, call_sid, behavior)

    async def _twilio_answer(
        self, request: Request, account_sid: str, call_sid: str, behavior: Behavior | Reply
    ) -> Response:
        if self.twilio_auth_token is not None and behavior is not Behavior.HANG:
            recorded = self.requests[-1].basic_auth()
            if recorded != (account_sid, self.twilio_auth_token):
                behavior = Behavior.UNAUTHORIZED
        match behavior:
            case Reply(status=status, body=body):
                return _json(status, body)
            case Behavior.OK:
                return _json(200, twilio_call_resource(account_sid, call_sid, {}, "completed"))
            case Behavior.ALREADY_ENDED:
                return _twilio_error(400, 21220, "Call is not in-progress. Cannot redirect.")
            case Behavior.NOT_FOUND:
                return _twilio_error(
                    404, 20404, f"The requested resource {request.url.path} was not found"
                )
            case Behavior.UNAUTHORIZED:
                return _twilio_error(401, 20003, "Authenticate")
            case Behavior.SERVER_ERROR:
                return _twilio_error(500, 20500, "An internal server error has occurred")
            case Behavior.HANG:
                await self._release.wait()
                return _json(503, None)

    async def _telnyx_dial(self, request: Request) -> Response:
        call_id = "v3:" + secrets.token_urlsafe(24)
        await self._record(request, "telnyx", call_id, "dial")
        behavior = self._responses["telnyx"].pick("dial")
        if behavior is Behavior.OK and (
            self.telnyx_api_key is None or self.requests[-1].bearer() == self.telnyx_api_key
        ):
            return _json(200, telnyx_dial_answer(call_id))
        return await self._telnyx_answer(call_id, behavior)

    async def _telnyx(self, request: Request) -> Response:
        call_id = request.path_params["call_id"]
        action = request.path_params["action"]
        await self._record(request, "telnyx", call_id, action)
        return await self._telnyx_answer(call_id, self._responses["telnyx"].pick(call_id))

    async def _telnyx_answer(self, call_id: str, behavior: Behavior | Reply) -> Response:
        if self.telnyx_api_key is not None and behavior is not Behavior.HANG:
            if self.requests[-1].bearer() != self.telnyx_api_key:
                behavior = Behavior.UNAUTHORIZED
        match behavior:
            case Reply(status=status, body=body):
                return _json(status, body)
            case Behavior.OK:
                return _json(200, {"data": {"result": "ok"}})
            case Behavior.ALREADY_ENDED:
                return _telnyx_error(
                    422,
                    "90018",
                    "Call has already ended",
                    "This call is no longer active and can't receive commands.",
                )
            case Behavior.NOT_FOUND:
                return _telnyx_error(
                    404, "10005", "Resource not found", "The requested resource was not found."
                )
            case Behavior.UNAUTHORIZED:
                return _telnyx_error(
                    401,
                    "10009",
                    "Authentication failed",
                    "The required authentication headers were either invalid or not included.",
                )
            case Behavior.SERVER_ERROR:
                return _telnyx_error(500, "10007", "Unexpected error", "An unexpected error.")
            case Behavior.HANG:
                await self._release.wait()
                return _json(503, None)


def _json(status: int, body: Any) -> Response:
    if body is None:
        return Response(status_code=status)
    return JSONResponse(body, status_code=status)


def _twilio_error(status: int, code: int, message: str) -> Response:
    return _json(
        status,
        {
            "code": code,
            "message": message,
            "more_info": f"https://www.twilio.com/docs/errors/{code}",
            "status": status,
        },
    )


def _telnyx_error(status: int, code: str, title: str, detail: str) -> Response:
    return _json(status, {"errors": [{"code": code, "title": title, "detail": detail}]})
