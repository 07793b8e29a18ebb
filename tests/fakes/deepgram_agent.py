"""Fake Deepgram Voice Agent API V1: a real WebSocket server on a loopback ephemeral port.

    async with FakeDeepgramAgent(api_key="dg-test") as fake:
        config = AgentConfig.for_provider("deepgram", api_key="dg-test", url=fake.url)
        ...
        await fake.user_started_speaking()
        assert fake.audio == [b"...", ...]        # binary frames, exactly as received

Behaviour, as the real server (https://developers.deepgram.com/docs/voice-agent):
* ``/v1/agent/converse`` with ``Authorization: Token <api_key>`` (wrong key: HTTP 401).
* Sends ``Welcome`` ``{request_id}`` on connect. The first client message must be a
  ``Settings`` text message, validated strictly (V1 field names, known encodings, a
  ``deepgram`` listen provider with a model, a think provider with a model, a speak provider);
  a bad one gets ``Error`` ``UNPARSABLE_CLIENT_MESSAGE`` (the fake's approximation of the real
  code) and the socket is closed. A valid one gets ``SettingsApplied`` (unless
  ``answer_setup`` is false); with an ``agent.greeting`` the agent then speaks it:
  ``ConversationText`` (assistant), ``greeting_frames`` x 20 ms of mu-law silence,
  ``AgentAudioDone``.
* Binary audio is recorded and echoed back as binary; every ``audio_done_every`` chunks
  the fake sends ``AgentAudioDone``. ``KeepAlive`` and ``InjectUserMessage`` are recorded.
* Tools: ``agent.think.functions`` is checked against deepgram-sdk's request type (names
  ``^[A-Za-z0-9_-]{1,64}$``, object ``parameters``) and readable as ``tools``.
  ``call_tool(name, arguments)`` sends ``FunctionCallRequest`` (``client_side`` true unless
  told otherwise), ``cancel_tools(ids)`` ``FunctionCallCancelled``. A ``FunctionCallResponse``
  is checked against the SDK's type, must answer a client-side call made (else ``Error``
  and close), and is recorded in ``tool_outputs``; await it with ``wait_tool_output(id)``.
"""

from __future__ import annotations

import json
import re
from http import HTTPStatus
from typing import Any

from deepgram.agent.v1.requests import AgentV1SendFunctionCallResponseParams
from deepgram.requests.think_settings_v1functions_item import ThinkSettingsV1FunctionsItemParams
from websockets.asyncio.server import ServerConnection
from websockets.http11 import Request

from tests.fakes.openai_realtime import WebSocketFake
from tests.providers.ai.sdk_types import problems

_FUNCTION_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")

_ENCODINGS = {"linear16", "mulaw", "alaw", "mp3", "opus", "flac", "aac"}
_SETTINGS_KEYS = {"type", "tags", "experimental", "flags", "mip_opt_out", "audio", "agent"}
_AGENT_KEYS = {"language", "context", "listen", "think", "think_live", "speak", "greeting"}
_CLIENT_TYPES = {
    "Settings",
    "KeepAlive",
    "InjectUserMessage",
    "InjectAgentMessage",
    "UpdatePrompt",
    "UpdateSpeak",
    "UpdateThink",
    "FunctionCallResponse",
}


class InvalidSettings(Exception):
    pass


def validate_settings(msg: Any) -> None:
    """Raise :class:`InvalidSettings` unless ``msg`` is a V1 ``Settings`` message."""

    def need(cond: bool, what: str) -> None:
        if not cond:
            raise InvalidSettings(what)

    need(isinstance(msg, dict) and msg.get("type") == "Settings", "type must be Settings")
    need(not set(msg) - _SETTINGS_KEYS, f"unknown fields {sorted(set(msg) - _SETTINGS_KEYS)}")
    audio = msg.get("audio")
    need(isinstance(audio, dict) and not set(audio) - {"input", "output"}, "audio")
    inp = audio.get("input")
    if inp is not None:
        need(isinstance(inp, dict) and not set(inp) - {"encoding", "sample_rate"}, "audio.input")
        need(inp.get("encoding") in {"linear16", "mulaw", "alaw"}, "audio.input.encoding")
        need(isinstance(inp.get("sample_rate"), int), "audio.input.sample_rate")
    out = audio.get("output")
    if out is not None:
        keys = {"encoding", "sample_rate", "bitrate", "container"}
        need(isinstance(out, dict) and not set(out) - keys, "audio.output")
        need(out.get("encoding", "linear16") in _ENCODINGS, "audio.output.encoding")
        need(out.get("container", "none") in {"none", "wav", "ogg"}, "audio.output.container")
        need(isinstance(out.get("sample_rate", 0), int), "audio.output.sample_rate")
    agent = msg.get("agent")
    need(isinstance(agent, dict) and not set(agent) - _AGENT_KEYS, "agent")
    listen = agent.get("listen")
    if listen is not None:
        provider: Any = listen.get("provider") if isinstance(listen, dict) else None
        need(isinstance(provider, dict), "agent.listen.provider")
        need(provider.get("version") == "v1", "agent.listen.provider.version")
        need(provider.get("type") == "deepgram", "agent.listen.provider.type")
        need(isinstance(provider.get("model"), str), "agent.listen.provider.model")
    think = agent.get("think")
    need(isinstance(think, dict), "agent.think")
    need(
        not set(think) - {"provider", "endpoint", "functions", "prompt", "context_length"}, "think"
    )
    provider = think.get("provider")
    need(isinstance(provider, dict) and isinstance(provider.get("type"), str), "think.provider")
    need(isinstance(provider.get("model"), str), "agent.think.provider.model")
    need(isinstance(think.get("prompt", ""), str), "agent.think.prompt")
    functions = think.get("functions", [])
    need(isinstance(functions, list), "agent.think.functions")
    for function in functions:
        need(not problems(function, ThinkSettingsV1FunctionsItemParams), "think.functions[]")
        need(_FUNCTION_NAME.fullmatch(function.get("name", "")) is not None, "function name")
        parameters = function.get("parameters", {"type": "object"})
        need(parameters.get("type") == "object", "agent.think.functions[].parameters")
    speak = agent.get("speak")
    need(isinstance(speak, dict), "agent.speak")
    provider = speak.get("provider")
    need(isinstance(provider, dict) and isinstance(provider.get("type"), str), "speak.provider")
    if provider.get("type") == "deepgram":
        need(isinstance(provider.get("model"), str), "agent.speak.provider.model")
    need(isinstance(agent.get("greeting", ""), str), "agent.greeting")


class FakeDeepgramAgent(WebSocketFake):
    """See the module docstring. Knobs: ``answer_setup``, ``echo_audio``, ``audio_done_every``.
    Records: ``received`` (JSON messages and audio bytes, in order), ``audio`` (bytes),
    ``settings`` (the last valid Settings), ``keepalives`` (count)."""

    path = "/v1/agent/converse"

    def __init__(
        self,
        *,
        api_key: str = "dg-test",
        answer_setup: bool = True,
        echo_audio: bool = True,
        audio_done_every: int = 1,
        greeting_frames: int = 3,
    ) -> None:
        super().__init__()
        self.greeting_frames = greeting_frames
        self.api_key = api_key
        self.answer_setup = answer_setup
        self.echo_audio = echo_audio
        self.audio_done_every = audio_done_every
        self.audio: list[bytes] = []
        self.settings: dict[str, Any] | None = None
        self.keepalives = 0
        self.calls: dict[str, str] = {}  # id -> name of every client-side call made
        self.tool_outputs: dict[str, str] = {}  # id -> content the client sent
        self._chunks = 0
        self._configured: set[ServerConnection] = set()

    def check_request(self, request: Request) -> tuple[HTTPStatus, str] | None:
        if request.headers.get("Authorization") != f"Token {self.api_key}":
            return HTTPStatus.UNAUTHORIZED, "INVALID_AUTH\n"
        return None

    @property
    def tools(self) -> list[dict[str, Any]]:
        """The functions the client declared in its last valid Settings."""
        return list((self.settings or {}).get("agent", {}).get("think", {}).get("functions", []))

    # -- commands --------------------------------------------------------------------------

    async def call_tool(
        self, name: str, arguments: str, *, call_id: str | None = None, client_side: bool = True
    ) -> str:
        """Send ``FunctionCallRequest`` for one function; returns its id."""
        call_id = call_id or self.next_id("fc")
        if client_side:
            self.calls[call_id] = name
        function = {"id": call_id, "name": name, "arguments": arguments, "client_side": client_side}
        await self.send_json({"type": "FunctionCallRequest", "functions": [function]})
        return call_id

    async def cancel_tools(self, ids: list[str]) -> None:
        functions = [{"id": i, "name": self.calls.pop(i, "unknown")} for i in ids]
        await self.send_json({"type": "FunctionCallCancelled", "functions": functions})

    async def wait_tool_output(self, call_id: str) -> str:
        """The content the client sent for ``call_id``, once it has. Callers bound the wait."""
        await self.wait_until(lambda: call_id in self.tool_outputs)
        return self.tool_outputs[call_id]

    async def user_started_speaking(self) -> None:
        await self.send_json({"type": "UserStartedSpeaking"})

    async def conversation_text(self, role: str, content: str) -> None:
        await self.send_json({"type": "ConversationText", "role": role, "content": content})

    async def send_error(self, code: str, description: str = "error") -> None:
        await self.send_json({"type": "Error", "code": code, "description": description})

    async def send_warning(self, code: str, description: str = "warning") -> None:
        await self.send_json({"type": "Warning", "code": code, "description": description})

    # -- protocol --------------------------------------------------------------------------

    async def on_connect(self, conn: ServerConnection) -> None:
        await self.send_json({"type": "Welcome", "request_id": self.next_id("req")}, conn)

    async def _refuse(self, conn: ServerConnection, description: str) -> None:
        await self.send_json(
            {"type": "Error", "code": "UNPARSABLE_CLIENT_MESSAGE", "description": description},
            conn,
        )
        await conn.close(1008, "invalid client message")

    async def on_message(self, conn: ServerConnection, message: str | bytes) -> None:
        self.received.append(message if isinstance(message, bytes) else _parse(message))
        if conn not in self._configured:
            if isinstance(message, bytes):
                await self._refuse(conn, "Settings must be sent before audio")
                return
            try:
                validate_settings(self.received[-1])
            except InvalidSettings as exc:
                await self._refuse(conn, f"Invalid Settings: {exc}")
                return
            self.settings = self.received[-1]
            self._configured.add(conn)
            if self.answer_setup:
                await self.send_json({"type": "SettingsApplied"}, conn)
                greeting = self.settings["agent"].get("greeting")
                if greeting:
                    await self.conversation_text("assistant", greeting)
                    for _ in range(self.greeting_frames):
                        await conn.send(b"\xff" * 160)
                    await self.send_json({"type": "AgentAudioDone"}, conn)
            return
        if isinstance(message, bytes):
            self.audio.append(message)
            if self.echo_audio:
                await conn.send(message)
                self._chunks += 1
                if self.audio_done_every and self._chunks % self.audio_done_every == 0:
                    await self.send_json({"type": "AgentAudioDone"}, conn)
            return
        msg = self.received[-1]
        kind = msg.get("type") if isinstance(msg, dict) else None
        if kind not in _CLIENT_TYPES:
            await self._refuse(conn, f"Unknown message type {kind!r}")
        elif kind == "KeepAlive":
            self.keepalives += 1
        elif kind == "InjectUserMessage" and not isinstance(msg.get("content"), str):
            await self._refuse(conn, "InjectUserMessage.content must be a string")
        elif kind == "FunctionCallResponse":
            if problems(msg, AgentV1SendFunctionCallResponseParams):
                await self._refuse(conn, "Invalid FunctionCallResponse")
            elif self.calls.get(msg.get("id", "")) != msg["name"]:
                await self._refuse(conn, "FunctionCallResponse for no pending call")
            else:
                self.tool_outputs[msg["id"]] = msg["content"]


def _parse(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text
