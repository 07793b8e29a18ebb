"""Deepgram Voice Agent API V1 over WebSocket: a sans-I/O codec.

Protocol facts this codec relies on (developers.deepgram.com "Configure the Voice Agent",
"Agent Keep Alive", "User Started Speaking", "Errors & Warnings"; the ``deepgram-sdk``
package's ``agent/v1/types`` models):

* Connect to ``wss://agent.deepgram.com/v1/agent/converse`` with ``Authorization: Token <key>``.
  The server greets with ``Welcome`` ``{request_id}``.
* The first client message is ``Settings``: ``audio.input`` ``{encoding, sample_rate}``,
  ``audio.output`` ``{encoding, sample_rate, container}`` and ``agent`` with
  ``listen.provider`` ``{version: "v1", type: "deepgram", model}`` (``version`` is required:
  it picks the V1 or V2 listen provider), ``think`` ``{provider: {type, model},
  prompt}``, ``speak.provider`` ``{type: "deepgram", model}`` and an optional ``greeting``.
  The server answers ``SettingsApplied``, reported as :class:`AgentReady`.
* Audio travels as raw binary messages both ways (here ``mulaw`` 8 kHz, ``container: none``,
  so carrier bytes need no transcoding, only base64 decoding).
* ``UserStartedSpeaking``: the server has already stopped the agent's speech; the client must
  stop playback and drop its buffered agent audio. There is no client "cancel" message, so
  :class:`Interrupt` encodes to nothing.
* ``AgentAudioDone`` ends a turn of agent audio; ``ConversationText`` ``{role: user|assistant,
  content}`` carries transcripts; ``Error`` is fatal ("treat every Error as session-ending"),
  ``Warning`` is not. ``KeepAlive`` (text frame) keeps an idle connection open (every 8 s).
* Tools: ``agent.think.functions`` lists ``{name, description, parameters}`` (JSON Schema);
  without an ``endpoint`` a function runs client-side. The server asks with
  ``FunctionCallRequest`` ``{functions: [{id, name, arguments, client_side}]}``: each
  ``client_side`` function is a :class:`ToolCall` (the others the server runs itself). The
  client answers ``FunctionCallResponse`` ``{id, name, content}``. ``FunctionCallCancelled``
  ``{functions: [{id, name}]}`` withdraws calls (:class:`ToolCancelled`).

Feed policy: unknown message types are ignored; non-JSON text, a JSON value that is not an
object with a string ``type``, or wrong field types raise :class:`ProtocolError`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Final, Literal, NotRequired, TypedDict, assert_never

import orjson

from providers.ai import tools as tool_checks
from providers.ai.config import AgentConfig, Endpoint, Function, api_key_value
from providers.ai.frames import load_typed, string_field
from providers.codec import Frame
from providers.events import (
    DTMF_DIGITS,
    PCMU_8K,
    AgentEvent,
    AgentReady,
    AudioChunk,
    Dtmf,
    Error,
    Hangup,
    Interrupt,
    KeepAlive,
    ResponseDone,
    SpeechStarted,
    ToAgent,
    ToolCall,
    ToolCancelled,
    ToolResult,
    Transcript,
)
from providers.exceptions import ProtocolError

KEEPALIVE_FRAME: Final = '{"type":"KeepAlive"}'


class AudioInputJSON(TypedDict):
    encoding: Literal["mulaw"]
    sample_rate: int


class AudioOutputJSON(TypedDict):
    encoding: Literal["mulaw"]
    sample_rate: int
    container: Literal["none"]


class AudioJSON(TypedDict):
    input: AudioInputJSON
    output: AudioOutputJSON


class ProviderJSON(TypedDict):
    type: str
    model: str


class ListenProviderJSON(TypedDict):
    version: Literal["v1"]
    type: Literal["deepgram"]
    model: str


class ListenJSON(TypedDict):
    provider: ListenProviderJSON


class FunctionJSON(TypedDict):
    name: str
    description: str
    parameters: dict[str, Any]


class ThinkJSON(TypedDict):
    provider: ProviderJSON
    prompt: str
    functions: NotRequired[list[FunctionJSON]]


class SpeakJSON(TypedDict):
    provider: ProviderJSON


class AgentJSON(TypedDict):
    listen: ListenJSON
    think: ThinkJSON
    speak: SpeakJSON
    greeting: NotRequired[str]


class SettingsJSON(TypedDict):
    type: Literal["Settings"]
    audio: AudioJSON
    agent: AgentJSON


class FunctionCallResponseJSON(TypedDict):
    type: Literal["FunctionCallResponse"]
    id: str
    name: str
    content: str


def endpoint(config: AgentConfig) -> Endpoint:
    key = api_key_value(config)
    return Endpoint(config.url, {"Authorization": f"Token {key}"} if key else {})


class DeepgramAgentCodec:
    """Sans-I/O codec for one Deepgram Voice Agent session, mu-law 8 kHz both ways.

    ``model`` is the think (LLM) model of ``think_provider``; ``voice`` is the Deepgram TTS
    model (``aura-2-...``); ``listen_model`` the Deepgram STT model.
    """

    provider: str = "deepgram"
    input_format = PCMU_8K
    output_format = PCMU_8K

    def __init__(
        self,
        *,
        model: str,
        voice: str,
        instructions: str,
        listen_model: str = "nova-3",
        think_provider: str = "open_ai",
        greeting: str | None = None,
        tools: Sequence[Function] = (),
        max_frame_bytes: int = 4 * 1024 * 1024,
    ) -> None:
        self.model = model
        self.voice = voice
        self.instructions = instructions
        self.listen_model = listen_model
        self.think_provider = think_provider
        self.greeting = greeting
        self.max_frame_bytes = max_frame_bytes
        self.tools = tool_checks.check_declared(tools)
        self.ready = False
        self.request_id: str | None = None

    @classmethod
    def from_config(cls, config: AgentConfig) -> DeepgramAgentCodec:
        return cls(
            model=config.model,
            voice=config.voice,
            instructions=config.instructions,
            listen_model=config.listen_model,
            think_provider=config.think_provider,
            greeting=config.greeting,
            tools=config.tools,
            max_frame_bytes=config.max_message_bytes,
        )

    def settings(self) -> SettingsJSON:
        agent: AgentJSON = {
            "listen": {
                "provider": {"version": "v1", "type": "deepgram", "model": self.listen_model}
            },
            "think": {
                "provider": {"type": self.think_provider, "model": self.model},
                "prompt": self.instructions,
            },
            "speak": {"provider": {"type": "deepgram", "model": self.voice}},
        }
        if self.tools:
            agent["think"]["functions"] = [
                {
                    "name": tool.name,
                    "description": tool.description,
                    "parameters": dict(tool.parameters),
                }
                for tool in self.tools
            ]
        if self.greeting:
            agent["greeting"] = self.greeting
        return {
            "type": "Settings",
            "audio": {
                "input": {"encoding": "mulaw", "sample_rate": 8000},
                "output": {"encoding": "mulaw", "sample_rate": 8000, "container": "none"},
            },
            "agent": agent,
        }

    def start(self) -> list[Frame]:
        self.ready = False
        return [orjson.dumps(self.settings()).decode()]

    def after_ready(self) -> list[Frame]:
        """Nothing: the greeting travels in ``Settings`` (``agent.greeting``)."""
        return []

    def encode(self, event: ToAgent) -> list[Frame]:
        """Frames for ``event``. Raises ``ValueError`` for audio not in ``input_format``.

        ``Dtmf`` becomes ``InjectUserMessage`` ``"DTMF: <digit>"`` (invalid digits send
        nothing); ``ToolResult`` becomes ``FunctionCallResponse``; ``Interrupt`` and
        ``Hangup`` send nothing (Deepgram stops speaking by itself on barge-in).
        """
        match event:
            case AudioChunk():
                if event.format != self.input_format:
                    raise ValueError(f"Deepgram session expects {self.input_format}")
                return [event.to_bytes()]
            case KeepAlive():
                return [KEEPALIVE_FRAME]
            case Dtmf(digit=digit):
                if digit not in DTMF_DIGITS:
                    return []
                msg = {"type": "InjectUserMessage", "content": f"DTMF: {digit}"}
                return [orjson.dumps(msg).decode()]
            case ToolResult(call_id=call_id, name=name, output=output):
                response: FunctionCallResponseJSON = {
                    "type": "FunctionCallResponse",
                    "id": call_id,
                    "name": name,
                    "content": output,
                }
                return [orjson.dumps(response).decode()]
            case Interrupt() | Hangup():
                return []
            case _:
                assert_never(event)

    def feed(self, frame: Frame) -> list[AgentEvent]:
        """Events carried by one received frame. Raises ``ProtocolError``; stays usable."""
        if isinstance(frame, bytes):
            if len(frame) > self.max_frame_bytes:
                raise ProtocolError("frame too large")
            return [AudioChunk.from_bytes(frame, PCMU_8K)] if frame else []
        msg = load_typed(frame, self.max_frame_bytes)
        match msg["type"]:
            case "Welcome":
                request_id = msg.get("request_id")
                self.request_id = request_id if isinstance(request_id, str) else None
                return []
            case "SettingsApplied":
                if self.ready:
                    return []
                self.ready = True
                return [AgentReady()]
            case "UserStartedSpeaking":
                return [SpeechStarted()]
            case "AgentAudioDone":
                return [ResponseDone()]
            case "ConversationText":
                role = string_field(msg, "role")
                return [
                    Transcript(
                        "agent" if role == "assistant" else role, string_field(msg, "content")
                    )
                ]
            case "Error":
                return [Error(_code(msg), _description(msg), fatal=True)]
            case "Warning":
                return [Error(_code(msg), _description(msg), fatal=False)]
            case "FunctionCallRequest":
                return list(_function_calls(msg))
            case "FunctionCallCancelled":
                functions = tool_checks.count_calls(msg.get("functions"), "FunctionCallCancelled")
                ids = tuple(_call_id(function) for function in functions)
                return [ToolCancelled(ids)]
            case _:
                return []


def _function_calls(msg: Mapping[str, Any]) -> list[ToolCall]:
    """The client-side calls of a ``FunctionCallRequest``; the server runs the others."""
    calls: list[ToolCall] = []
    for function in tool_checks.count_calls(msg.get("functions"), "FunctionCallRequest"):
        if not isinstance(function, dict):
            raise ProtocolError("FunctionCallRequest: function is not an object")
        client_side = function.get("client_side")
        if not isinstance(client_side, bool):
            raise ProtocolError("FunctionCallRequest: client_side missing or not a boolean")
        call = tool_checks.tool_call(
            function.get("id"), function.get("name"), function.get("arguments")
        )
        if client_side:
            calls.append(call)
    return calls


def _call_id(function: Any) -> str:
    if not isinstance(function, dict):
        raise ProtocolError("FunctionCallCancelled: function is not an object")
    return tool_checks.checked_call_id(function.get("id"))


def _code(msg: Mapping[str, Any]) -> str:
    code = msg.get("code")
    return code if isinstance(code, str) and code else str(msg["type"]).lower()


def _description(msg: Mapping[str, Any]) -> str:
    # V1 uses ``description``; older servers sent ``message``.
    text = msg.get("description", msg.get("message", ""))
    return text if isinstance(text, str) else ""
