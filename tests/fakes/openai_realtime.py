"""Fake OpenAI Realtime API (GA interface): a real WebSocket server on a loopback ephemeral port.

    async with FakeOpenAIRealtime(api_key="sk-test") as fake:
        config = AgentConfig.for_provider("openai", api_key="sk-test", url=fake.url)
        ...
        await fake.speech_started()
        assert fake.audio == [payload, ...]        # exactly what the client appended

Behaviour, as the real server (https://platform.openai.com/docs/api-reference/realtime):
* ``GET /v1/realtime?model=...`` with ``Authorization: Bearer <api_key>``; a wrong key gets HTTP
  401, a missing ``model`` 400, an ``OpenAI-Beta`` header (the retired beta) 400.
* Sends ``session.created`` on connect; answers a valid ``session.update`` with
  ``session.updated`` (unless ``answer_setup`` is false). ``session.update`` is validated
  strictly against the GA shape: beta fields (``input_audio_format``, ``voice`` at the top...)
  get ``error`` ``unknown_parameter``, a missing ``session.type`` gets
  ``missing_required_parameter``, bad values ``invalid_value``.
* Every ``input_audio_buffer.append`` is recorded and echoed back as
  ``response.output_audio.delta`` (same base64 text, ``item_id``/``response_id`` set), each
  ``response_done_every`` appends closing the response with ``response.done``.
* ``response.create`` starts a response (``response.created``, ``reply_frames`` deltas of
  mu-law silence, ``response.done``); with one already active it gets ``error``
  ``conversation_already_has_active_response``. Each is recorded in ``created``.
* ``speech_started()`` ends the active response (``response.done``, ``cancelled``) as server
  VAD does when the session's ``interrupt_response`` is true.
* ``response.cancel`` with a response active ends it as ``cancelled``; with none it gets
  ``error`` ``response_cancel_not_active`` (``invalid_request_error``), as the real server.
  ``conversation.item.truncate`` and ``conversation.item.create`` are validated and answered
  as the real server does.
* Tools: ``session.tools`` is validated (function tools, names ``^[A-Za-z0-9_-]{1,64}$``,
  object ``parameters``; ``tool_choice`` a mode) and readable as ``tools``. ``call_tool(name,
  arguments)`` makes the model call a tool with the documented event sequence
  (``response.created``, ``response.output_item.added``, ``response.function_call_arguments.
  delta`` / ``.done``, ``response.output_item.done``, ``response.done`` with the item in its
  output). A ``function_call_output`` item is checked against the openai SDK's request type,
  must name a call made (else ``error``), and is recorded in ``tool_outputs``; await it with
  ``wait_tool_output(call_id)``.

:class:`WebSocketFake` is the base the Deepgram and Gemini fakes share: recording, knobs
(``stall`` stops reading) and commands (``close_abnormally``, ``send_raw``).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import itertools
import json
import re
from collections.abc import Callable, Mapping
from http import HTTPStatus
from types import TracebackType
from typing import Any, Self
from urllib.parse import parse_qs, urlsplit

from openai.types.realtime import ConversationItemCreateEventParam
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from tests.providers.ai.sdk_types import problems


class WebSocketFake:
    """A loopback WebSocket server; subclasses implement ``check_request`` and ``on_message``.

    Attributes: ``url``; ``received`` (every client message, parsed JSON or raw bytes, in
    order); ``requests`` (handshake path and headers per connection); ``connections`` (open
    ones, newest last). Knobs: ``stall`` (stop reading: the client's sends back up).
    """

    path = "/"

    def __init__(self) -> None:
        self.url = ""
        self.received: list[Any] = []
        self.requests: list[tuple[str, Headers]] = []
        self.connections: list[ServerConnection] = []
        self.connection_count = 0
        self._server: Server | None = None
        self._reading = asyncio.Event()
        self._reading.set()
        self._ids = itertools.count(1)
        self._changed = asyncio.Condition()

    # -- lifecycle -------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        self._server = await serve(
            self._handler,
            "127.0.0.1",
            0,
            process_request=self._process_request,
            ping_interval=None,
            compression=None,
            max_size=16 * 1024 * 1024,
        )
        port = self._server.sockets[0].getsockname()[1]
        self.url = f"ws://127.0.0.1:{port}{self.path}"
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stall = False
        assert self._server is not None
        for conn in list(self.connections):
            conn.transport.abort()
        self._server.close()
        await self._server.wait_closed()

    # -- knobs and commands ----------------------------------------------------------------

    @property
    def stall(self) -> bool:
        return not self._reading.is_set()

    @stall.setter
    def stall(self, value: bool) -> None:
        if value:
            self._reading.clear()
        else:
            self._reading.set()

    def next_id(self, prefix: str) -> str:
        return f"{prefix}_{next(self._ids):04d}"

    @property
    def current(self) -> ServerConnection:
        if not self.connections:
            raise AssertionError("no client is connected")
        return self.connections[-1]

    async def send_json(self, msg: Mapping[str, Any], conn: ServerConnection | None = None) -> None:
        await (conn or self.current).send(json.dumps(msg))

    async def send_raw(self, data: str | bytes, conn: ServerConnection | None = None) -> None:
        """Send ``data`` as is (a text frame for ``str``, binary for ``bytes``)."""
        await (conn or self.current).send(data)

    async def close_abnormally(self) -> None:
        """Drop the newest connection without a close frame (the client sees code 1006)."""
        self.current.transport.abort()

    async def close(self, code: int = 1000, reason: str = "") -> None:
        """Close the newest connection with a close frame."""
        await self.current.close(code, reason)

    async def wait_until(self, predicate: Callable[[], bool]) -> None:
        """Wait until ``predicate()`` holds; re-checked after each received message and each
        connection change. Callers bound the wait (``asyncio.timeout``)."""
        async with self._changed:
            await self._changed.wait_for(predicate)

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    # -- hooks -----------------------------------------------------------------------------

    def check_request(self, request: Request) -> tuple[HTTPStatus, str] | None:
        """An HTTP refusal for the handshake ``request``, or ``None`` to accept it."""
        return None

    async def on_connect(self, conn: ServerConnection) -> None:
        """Called once the WebSocket is open."""

    async def on_message(self, conn: ServerConnection, message: str | bytes) -> None:
        raise NotImplementedError

    # -- plumbing --------------------------------------------------------------------------

    def _process_request(self, conn: ServerConnection, request: Request) -> Response | None:
        self.requests.append((request.path, request.headers))
        if urlsplit(request.path).path != self.path:
            return conn.respond(HTTPStatus.NOT_FOUND, "Not Found\n")
        refusal = self.check_request(request)
        if refusal is not None:
            return conn.respond(*refusal)
        return None

    async def _handler(self, conn: ServerConnection) -> None:
        self.connections.append(conn)
        self.connection_count += 1
        try:
            await self.on_connect(conn)
            await self._notify()
            while True:
                await self._reading.wait()
                message = await conn.recv()
                await self.on_message(conn, message)
                await self._notify()
        except ConnectionClosed:
            pass
        finally:
            self.connections.remove(conn)
            await self._notify()


def _b64ok(text: Any) -> bool:
    if not isinstance(text, str):
        return False
    try:
        base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return False
    return True


# GA session fields (openai.types.realtime.RealtimeSessionCreateRequest), nested.
_FORMAT = {"type": None, "rate": None}
_TURN_DETECTION = {
    "type": None,
    "create_response": None,
    "interrupt_response": None,
    "idle_timeout_ms": None,
    "prefix_padding_ms": None,
    "silence_duration_ms": None,
    "threshold": None,
    "eagerness": None,
}
_SESSION_SCHEMA: dict[str, Any] = {
    "type": None,
    "model": None,
    "instructions": None,
    "output_modalities": None,
    "include": None,
    "max_output_tokens": None,
    "prompt": None,
    "reasoning": None,
    "parallel_tool_calls": None,
    "tool_choice": None,
    "tools": None,
    "tracing": None,
    "truncation": None,
    "audio": {
        "input": {
            "format": _FORMAT,
            "noise_reduction": None,
            "transcription": None,
            "turn_detection": _TURN_DETECTION,
        },
        "output": {"format": _FORMAT, "speed": None, "voice": None},
    },
}
_FORMATS = {"audio/pcm", "audio/pcmu", "audio/pcma"}
_TOOL_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
_TOOL_KEYS = {"type", "name", "description", "parameters"}
SILENCE_20MS = base64.b64encode(b"\xff" * 160).decode()  # mu-law silence
_CLIENT_EVENTS = {
    "session.update",
    "input_audio_buffer.append",
    "input_audio_buffer.commit",
    "input_audio_buffer.clear",
    "output_audio_buffer.clear",
    "conversation.item.create",
    "conversation.item.truncate",
    "conversation.item.delete",
    "conversation.item.retrieve",
    "response.create",
    "response.cancel",
}


class InvalidRequest(Exception):
    def __init__(self, code: str, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.code, self.message, self.param = code, message, param


def _check_schema(obj: Any, schema: Mapping[str, Any], prefix: str) -> None:
    if not isinstance(obj, dict):
        raise InvalidRequest("invalid_type", f"Invalid type for '{prefix}'.", prefix)
    for key, value in obj.items():
        path = f"{prefix}.{key}"
        if key not in schema:
            raise InvalidRequest("unknown_parameter", f"Unknown parameter: '{path}'.", path)
        if schema[key] is not None and value is not None:
            _check_schema(value, schema[key], path)


def validate_session_update(msg: Mapping[str, Any]) -> dict[str, Any]:
    """The session of a GA ``session.update``; raises :class:`InvalidRequest` like the server."""
    extra = set(msg) - {"type", "session", "event_id"}
    if extra:
        name = sorted(extra)[0]
        raise InvalidRequest("unknown_parameter", f"Unknown parameter: '{name}'.", name)
    session = msg.get("session")
    if not isinstance(session, dict):
        raise InvalidRequest(
            "missing_required_parameter", "Missing required parameter: 'session'.", "session"
        )
    _check_schema(session, _SESSION_SCHEMA, "session")
    if session.get("type") != "realtime":
        if "type" not in session:
            raise InvalidRequest(
                "missing_required_parameter",
                "Missing required parameter: 'session.type'.",
                "session.type",
            )
        raise InvalidRequest("invalid_value", "Invalid value for 'session.type'.", "session.type")
    audio = session.get("audio") or {}
    for direction in ("input", "output"):
        fmt = (audio.get(direction) or {}).get("format")
        if fmt is not None and fmt.get("type") not in _FORMATS:
            param = f"session.audio.{direction}.format.type"
            raise InvalidRequest("invalid_value", f"Invalid value: '{fmt.get('type')}'.", param)
    turn = (audio.get("input") or {}).get("turn_detection")
    if turn is not None and turn.get("type") not in {"server_vad", "semantic_vad"}:
        param = "session.audio.input.turn_detection.type"
        raise InvalidRequest("invalid_value", "Invalid turn detection type.", param)
    voice = (audio.get("output") or {}).get("voice")
    if voice is not None and not isinstance(voice, str | dict):
        raise InvalidRequest("invalid_type", "Invalid voice.", "session.audio.output.voice")
    if "instructions" in session and not isinstance(session["instructions"], str):
        raise InvalidRequest("invalid_type", "Invalid instructions.", "session.instructions")
    _validate_tools(session)
    return session


def _validate_tools(session: Mapping[str, Any]) -> None:
    tools = session.get("tools", [])
    if not isinstance(tools, list):
        raise InvalidRequest("invalid_type", "Invalid type for 'session.tools'.", "session.tools")
    for i, tool in enumerate(tools):
        param = f"session.tools[{i}]"
        if not isinstance(tool, dict) or tool.get("type") != "function":
            raise InvalidRequest("invalid_value", "Invalid tool type.", f"{param}.type")
        if set(tool) - _TOOL_KEYS:
            name = sorted(set(tool) - _TOOL_KEYS)[0]
            raise InvalidRequest("unknown_parameter", f"Unknown parameter: '{name}'.", param)
        if not isinstance(tool.get("name"), str) or not _TOOL_NAME.fullmatch(tool["name"]):
            raise InvalidRequest("invalid_value", "Invalid function name.", f"{param}.name")
        if not isinstance(tool.get("description", ""), str):
            raise InvalidRequest("invalid_type", "Invalid description.", f"{param}.description")
        parameters = tool.get("parameters", {"type": "object"})
        if not isinstance(parameters, dict) or parameters.get("type") != "object":
            raise InvalidRequest(
                "invalid_function_parameters", "Invalid schema.", f"{param}.parameters"
            )
    choice = session.get("tool_choice", "auto")
    if choice not in ("auto", "none", "required") and not isinstance(choice, dict):
        raise InvalidRequest("invalid_value", "Invalid tool_choice.", "session.tool_choice")


class FakeOpenAIRealtime(WebSocketFake):
    """See the module docstring. Knobs: ``answer_setup``, ``echo_audio``,
    ``response_done_every``. Records: ``received`` (all client events), ``audio`` (appended
    payloads, untouched), ``session`` (the effective session after the last update)."""

    path = "/v1/realtime"

    def __init__(
        self,
        *,
        api_key: str = "sk-test",
        answer_setup: bool = True,
        echo_audio: bool = True,
        response_done_every: int = 1,
        reply_frames: int = 3,
    ) -> None:
        super().__init__()
        self.api_key = api_key
        self.answer_setup = answer_setup
        self.echo_audio = echo_audio
        self.response_done_every = response_done_every
        self.reply_frames = reply_frames
        self.audio: list[str] = []
        self.created: list[dict[str, Any]] = []  # the ``response`` of each response.create
        self.errors_sent: list[str] = []  # codes of the error events sent, in order
        self.session: dict[str, Any] = {"type": "realtime", "model": "", "audio": {}}
        self.items: set[str] = set()
        self.calls: dict[str, str] = {}  # call_id -> name of every call the model made
        self.tool_outputs: dict[str, str] = {}  # call_id -> output the client sent
        # (response_id, item_id) of the active response, per connection
        self._responses: dict[ServerConnection, tuple[str, str]] = {}
        self._deltas = 0

    def check_request(self, request: Request) -> tuple[HTTPStatus, str] | None:
        if request.headers.get("Authorization") != f"Bearer {self.api_key}":
            return HTTPStatus.UNAUTHORIZED, "Incorrect API key provided.\n"
        if "OpenAI-Beta" in request.headers:
            return HTTPStatus.BAD_REQUEST, "The beta Realtime interface has been retired.\n"
        model = parse_qs(urlsplit(request.path).query).get("model")
        if not model:
            return HTTPStatus.BAD_REQUEST, "Missing required parameter: 'model'.\n"
        self.session["model"] = model[0]
        return None

    @property
    def tools(self) -> list[dict[str, Any]]:
        """The function tools the client declared (the effective session's)."""
        return list(self.session.get("tools") or [])

    # -- commands --------------------------------------------------------------------------

    async def call_tool(self, name: str, arguments: str, *, call_id: str | None = None) -> str:
        """Make the model call tool ``name`` with ``arguments`` (JSON text) in a response of
        its own; returns the call id."""
        conn = self.current
        call_id = call_id or self.next_id("call")
        response_id, item_id = self.next_id("resp"), self.next_id("fc")
        self.calls[call_id] = name
        await self.send_json(
            {
                "type": "response.created",
                "event_id": self.next_id("event"),
                "response": {
                    "id": response_id,
                    "object": "realtime.response",
                    "status": "in_progress",
                    "output": [],
                },
            },
            conn,
        )
        item = {
            "id": item_id,
            "object": "realtime.item",
            "type": "function_call",
            "status": "in_progress",
            "name": name,
            "call_id": call_id,
            "arguments": "",
        }
        common = {"response_id": response_id, "output_index": 0}
        await self.send_json(
            {
                "type": "response.output_item.added",
                "event_id": self.next_id("event"),
                **common,
                "item": item,
            },
            conn,
        )
        await self.send_json(
            {
                "type": "response.function_call_arguments.delta",
                "event_id": self.next_id("event"),
                **common,
                "item_id": item_id,
                "call_id": call_id,
                "delta": arguments,
            },
            conn,
        )
        await self.send_json(
            {
                "type": "response.function_call_arguments.done",
                "event_id": self.next_id("event"),
                **common,
                "item_id": item_id,
                "call_id": call_id,
                "name": name,
                "arguments": arguments,
            },
            conn,
        )
        done_item = {**item, "status": "completed", "arguments": arguments}
        await self.send_json(
            {
                "type": "response.output_item.done",
                "event_id": self.next_id("event"),
                **common,
                "item": done_item,
            },
            conn,
        )
        await self.send_json(
            {
                "type": "response.done",
                "event_id": self.next_id("event"),
                "response": {
                    "id": response_id,
                    "object": "realtime.response",
                    "status": "completed",
                    "output": [done_item],
                },
            },
            conn,
        )
        return call_id

    async def wait_tool_output(self, call_id: str) -> str:
        """The output the client sent for ``call_id``, once it has. Callers bound the wait."""
        await self.wait_until(lambda: call_id in self.tool_outputs)
        return self.tool_outputs[call_id]

    async def speech_started(self, audio_start_ms: int = 0) -> None:
        conn = self.current
        await self.send_json(
            {
                "type": "input_audio_buffer.speech_started",
                "event_id": self.next_id("event"),
                "audio_start_ms": audio_start_ms,
                "item_id": self.next_id("item"),
            },
            conn,
        )
        turn = (self.session.get("audio", {}).get("input") or {}).get("turn_detection") or {}
        if turn.get("interrupt_response") and conn in self._responses:
            await self._done(conn, "cancelled")

    async def send_error(
        self, code: str, message: str = "error", *, type: str = "invalid_request_error"
    ) -> None:
        await self.send_json(self._error(code, message, None, type=type))

    async def transcript(self, text: str, *, role: str = "agent") -> None:
        if role == "agent":
            msg = {
                "type": "response.output_audio_transcript.done",
                "event_id": self.next_id("event"),
                "response_id": self.next_id("resp"),
                "item_id": self.next_id("item"),
                "output_index": 0,
                "content_index": 0,
                "transcript": text,
            }
        else:
            msg = {
                "type": "conversation.item.input_audio_transcription.completed",
                "event_id": self.next_id("event"),
                "item_id": self.next_id("item"),
                "content_index": 0,
                "transcript": text,
            }
        await self.send_json(msg)

    # -- protocol --------------------------------------------------------------------------

    def _error(
        self, code: str, message: str, param: str | None, *, type: str = "invalid_request_error"
    ) -> dict[str, Any]:
        self.errors_sent.append(code)
        return {
            "type": "error",
            "event_id": self.next_id("event"),
            "error": {
                "type": type,
                "code": code,
                "message": message,
                "param": param,
                "event_id": None,
            },
        }

    async def on_connect(self, conn: ServerConnection) -> None:
        session = {"id": self.next_id("sess"), "object": "realtime.session", **self.session}
        await self.send_json(
            {"type": "session.created", "event_id": self.next_id("event"), "session": session},
            conn,
        )

    async def on_message(self, conn: ServerConnection, message: str | bytes) -> None:
        if isinstance(message, bytes):
            self.received.append(message)
            await self.send_json(
                self._error("invalid_json", "Binary frames are not supported.", None), conn
            )
            return
        try:
            msg = json.loads(message)
        except ValueError:
            self.received.append(message)
            await self.send_json(self._error("invalid_json", "Invalid JSON.", None), conn)
            return
        self.received.append(msg)
        kind = msg.get("type") if isinstance(msg, dict) else None
        if kind not in _CLIENT_EVENTS:
            await self.send_json(
                self._error("invalid_value", f"Invalid value: '{kind}'.", "type"), conn
            )
            return
        try:
            await self._dispatch(conn, kind, msg)
        except InvalidRequest as exc:
            await self.send_json(self._error(exc.code, exc.message, exc.param), conn)

    async def _dispatch(self, conn: ServerConnection, kind: str, msg: dict[str, Any]) -> None:
        match kind:
            case "session.update":
                session = validate_session_update(msg)
                _merge(self.session, session)
                if self.answer_setup:
                    effective = {"id": "sess_fake", "object": "realtime.session", **self.session}
                    await self.send_json(
                        {
                            "type": "session.updated",
                            "event_id": self.next_id("event"),
                            "session": effective,
                        },
                        conn,
                    )
            case "input_audio_buffer.append":
                if set(msg) - {"type", "audio", "event_id"}:
                    raise InvalidRequest("unknown_parameter", "Unknown parameter.", None)
                audio = msg.get("audio")
                if not isinstance(audio, str) or not _b64ok(audio):
                    raise InvalidRequest("invalid_value", "Invalid 'audio'.", "audio")
                self.audio.append(audio)
                if self.echo_audio:
                    await self._echo(conn, audio)
            case "response.cancel":
                if conn not in self._responses:
                    raise InvalidRequest(
                        "response_cancel_not_active",
                        "Cancellation failed: no active response found.",
                    )
                await self._done(conn, "cancelled")
            case "response.create":
                response = msg.get("response", {})
                if not isinstance(response, dict) or not isinstance(
                    response.get("instructions", ""), str
                ):
                    raise InvalidRequest("invalid_value", "Invalid response.", "response")
                if conn in self._responses:
                    raise InvalidRequest(
                        "conversation_already_has_active_response",
                        "Conversation already has an active response in progress.",
                    )
                self.created.append(response)
                await self._reply(conn)
            case "conversation.item.truncate":
                item_id, index, end = (
                    msg.get(k) for k in ("item_id", "content_index", "audio_end_ms")
                )
                if not isinstance(item_id, str) or not isinstance(index, int):
                    raise InvalidRequest(
                        "missing_required_parameter", "Missing item_id.", "item_id"
                    )
                if not isinstance(end, int) or end < 0:
                    raise InvalidRequest("invalid_value", "Invalid audio_end_ms.", "audio_end_ms")
                if item_id not in self.items:
                    raise InvalidRequest(
                        "item_truncate_invalid_item_id", "Item not found.", "item_id"
                    )
                await self.send_json(
                    {
                        "type": "conversation.item.truncated",
                        "event_id": self.next_id("event"),
                        "item_id": item_id,
                        "content_index": index,
                        "audio_end_ms": end,
                    },
                    conn,
                )
            case "conversation.item.create":
                item = msg.get("item")
                if isinstance(item, dict) and item.get("type") == "function_call_output":
                    await self._function_call_output(conn, msg)
                    return
                if not isinstance(item, dict) or item.get("type") != "message":
                    raise InvalidRequest("invalid_value", "Invalid item.", "item")
                if item.get("role") not in {"user", "system", "assistant"}:
                    raise InvalidRequest("invalid_value", "Invalid role.", "item.role")
                content = item.get("content")
                if not isinstance(content, list) or not all(
                    isinstance(c, dict) and c.get("type") in {"input_text", "input_audio"}
                    for c in content
                ):
                    raise InvalidRequest("invalid_value", "Invalid content.", "item.content")
                await self.send_json(
                    {
                        "type": "conversation.item.added",
                        "event_id": self.next_id("event"),
                        "previous_item_id": None,
                        "item": {"id": self.next_id("item"), **item},
                    },
                    conn,
                )
            case _:
                pass  # accepted without an answer the client needs

    async def _function_call_output(self, conn: ServerConnection, msg: dict[str, Any]) -> None:
        found = problems(msg, ConversationItemCreateEventParam)
        if found:
            raise InvalidRequest("invalid_value", "Invalid item.", "item")
        item = msg["item"]
        if item["call_id"] not in self.calls:
            raise InvalidRequest(
                "invalid_value", "No function call found for this call_id.", "item.call_id"
            )
        self.tool_outputs[item["call_id"]] = item["output"]
        await self.send_json(
            {
                "type": "conversation.item.added",
                "event_id": self.next_id("event"),
                "previous_item_id": None,
                "item": {"id": self.next_id("item"), "object": "realtime.item", **item},
            },
            conn,
        )

    async def _begin(self, conn: ServerConnection) -> None:
        response_id, item_id = self.next_id("resp"), self.next_id("item")
        self._responses[conn] = response_id, item_id
        self.items.add(item_id)
        await self.send_json(
            {
                "type": "response.created",
                "event_id": self.next_id("event"),
                "response": {"id": response_id, "status": "in_progress"},
            },
            conn,
        )

    async def _delta(self, conn: ServerConnection, audio: str) -> None:
        response_id, item_id = self._responses[conn]
        await self.send_json(
            {
                "type": "response.output_audio.delta",
                "event_id": self.next_id("event"),
                "response_id": response_id,
                "item_id": item_id,
                "output_index": 0,
                "content_index": 0,
                "delta": audio,
            },
            conn,
        )

    async def _reply(self, conn: ServerConnection) -> None:
        """A whole response to response.create: ``reply_frames`` x 20 ms of mu-law silence."""
        await self._begin(conn)
        for _ in range(self.reply_frames):
            await self._delta(conn, SILENCE_20MS)
        await self._done(conn, "completed")

    async def _echo(self, conn: ServerConnection, audio: str) -> None:
        if conn not in self._responses:
            await self._begin(conn)
        await self._delta(conn, audio)
        self._deltas += 1
        if self.response_done_every and self._deltas % self.response_done_every == 0:
            await self._done(conn, "completed")

    async def _done(self, conn: ServerConnection, status: str) -> None:
        response_id, item_id = self._responses.pop(conn)
        await self.send_json(
            {
                "type": "response.output_audio.done",
                "event_id": self.next_id("event"),
                "response_id": response_id,
                "item_id": item_id,
                "output_index": 0,
                "content_index": 0,
            },
            conn,
        )
        await self.send_json(
            {
                "type": "response.done",
                "event_id": self.next_id("event"),
                "response": {
                    "id": response_id,
                    "object": "realtime.response",
                    "status": status,
                    "output": [],
                },
            },
            conn,
        )


def _merge(into: dict[str, Any], update: Mapping[str, Any]) -> None:
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            _merge(into[key], value)
        else:
            into[key] = value
