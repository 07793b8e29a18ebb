"""OpenAI Realtime API (GA interface) over WebSocket: a sans-I/O codec.

Protocol facts this codec relies on (OpenAI API reference "Realtime client/server events", and
the ``openai`` package's ``types/realtime`` models generated from the same OpenAPI spec):

* Connect to ``wss://api.openai.com/v1/realtime?model=<model>`` with
  ``Authorization: Bearer <key>``. No ``OpenAI-Beta`` header: that selected the retired beta
  interface.
* The server opens with ``session.created``; the client configures the session with
  ``session.update`` whose ``session`` object carries ``"type": "realtime"`` and nests audio
  settings under ``audio.input`` / ``audio.output`` (``format`` is an object such as
  ``{"type": "audio/pcmu"}``; ``voice`` lives in ``audio.output``; ``turn_detection`` in
  ``audio.input``). The flat beta fields (``input_audio_format``, ``voice``, ``modalities``...)
  are rejected with an ``error`` event (``unknown_parameter``). The server answers with
  ``session.updated``, which is when this codec reports :class:`AgentReady`.
* Audio in: ``input_audio_buffer.append`` ``{"audio": <base64>}``. Audio out:
  ``response.output_audio.delta`` ``{"item_id", "delta": <base64>, ...}``. With ``audio/pcmu``
  both are G.711 mu-law at 8 kHz, so carrier payloads pass through untouched.
* A response runs from ``response.created`` to ``response.done``. ``response.cancel`` stops
  one in progress; with none in progress the server answers ``error``
  ``response_cancel_not_active`` (harmless, "the session will remain unaffected").
* Barge-in: ``input_audio_buffer.speech_started``; the client sends ``response.cancel`` (only
  while a response is in progress) and ``conversation.item.truncate`` ``{item_id,
  content_index, audio_end_ms}`` so the conversation keeps only what the caller heard.
* A greeting: ``response.create`` whose ``response.instructions`` (which replace the session's
  for that response only) ask the model to say the greeting verbatim.
* ``error`` events are mostly recoverable ("the session will stay open").
* Tools: ``session.tools`` lists ``{"type": "function", "name", "description",
  "parameters"}`` (JSON Schema) and ``tool_choice: "auto"`` lets the model choose. A call
  arrives as ``response.function_call_arguments.done`` ``{call_id, name, arguments}`` and again
  as the ``function_call`` item of ``response.output_item.done``; this codec reports the first
  and drops the repeat (:class:`ToolCall`, once per ``call_id``). The output goes back as
  ``conversation.item.create`` with item ``{"type": "function_call_output", call_id, output}``;
  ``response.create`` then asks the model to go on, once every call of the latest response
  has its output (parallel calls get one answer, not one per output).

Feed policy: unknown event types are ignored (OpenAI adds events regularly); a frame that is not
a JSON object with a string ``type``, or a known event whose fields have the wrong types, raises
:class:`ProtocolError`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Final, Literal, NotRequired, TypedDict, assert_never
from urllib.parse import urlencode, urlsplit

import orjson

from providers.ai import tools as tool_checks
from providers.ai.config import AgentConfig, Endpoint, Function, api_key_value
from providers.ai.frames import is_base64, load_typed, string_field
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
    ToolResult,
    Transcript,
)
from providers.exceptions import ProtocolError

# Errors after which the session cannot go on. Anything else is counted and the call continues;
# any error before the session is configured is fatal as well (the setup was refused).
FATAL_ERROR_CODES: Final = frozenset(
    {"session_expired", "invalid_api_key", "insufficient_quota", "session_not_found"}
)
CANCEL_NOT_ACTIVE: Final = "response_cancel_not_active"
MAX_CALLS_PER_RESPONSE: Final = 64
"""Tool calls one response may make; more are refused as a protocol error."""
TRANSCRIPTION_MODEL: Final = "gpt-4o-mini-transcribe"
"""Transcribes the caller's audio when the agent keeps transcripts (the agent's own turns
come with its audio as ``response.output_audio_transcript.done``)."""
GREETING_INSTRUCTIONS: Final = (
    "Greet the caller now by saying exactly the following words, verbatim, and nothing else: "
)


# -- raw JSON shapes (what we send) ---------------------------------------------------------


class AudioFormatJSON(TypedDict):
    type: Literal["audio/pcmu", "audio/pcma", "audio/pcm"]


class TurnDetectionJSON(TypedDict):
    type: Literal["server_vad"]
    create_response: bool
    interrupt_response: bool
    threshold: NotRequired[float]
    prefix_padding_ms: NotRequired[int]
    silence_duration_ms: NotRequired[int]


class AudioInputJSON(TypedDict):
    format: AudioFormatJSON
    turn_detection: TurnDetectionJSON
    transcription: NotRequired[dict[str, str]]


class AudioOutputJSON(TypedDict):
    format: AudioFormatJSON
    voice: str


class AudioJSON(TypedDict):
    input: AudioInputJSON
    output: AudioOutputJSON


class FunctionToolJSON(TypedDict):
    type: Literal["function"]
    name: str
    description: str
    parameters: dict[str, Any]


class SessionJSON(TypedDict):
    type: Literal["realtime"]
    model: str
    instructions: str
    output_modalities: list[Literal["audio"]]
    audio: AudioJSON
    tools: NotRequired[list[FunctionToolJSON]]
    tool_choice: NotRequired[Literal["auto"]]


class SessionUpdateJSON(TypedDict):
    type: Literal["session.update"]
    session: SessionJSON


class FunctionCallOutputJSON(TypedDict):
    type: Literal["function_call_output"]
    call_id: str
    output: str


class ItemCreateJSON(TypedDict):
    type: Literal["conversation.item.create"]
    item: FunctionCallOutputJSON


class ResponseJSON(TypedDict):
    instructions: str


class ResponseCreateJSON(TypedDict):
    type: Literal["response.create"]
    response: NotRequired[ResponseJSON]


def endpoint(config: AgentConfig) -> Endpoint:
    """The URL (``?model=`` appended) and the bearer-token header for ``config``."""
    sep = "&" if urlsplit(config.url).query else "?"
    url = f"{config.url}{sep}{urlencode({'model': config.model})}"
    key = api_key_value(config)
    return Endpoint(url, {"Authorization": f"Bearer {key}"} if key else {})


class OpenAIRealtimeCodec:
    """Sans-I/O codec for one OpenAI Realtime session with G.711 mu-law audio both ways.

    Call ``start()`` once and send its frames before anything else; once ``feed`` has
    reported :class:`AgentReady`, send the frames of ``after_ready()``; then ``feed`` every
    received frame in order and ``encode`` outbound events.
    """

    provider: str = "openai"
    input_format = PCMU_8K
    output_format = PCMU_8K

    def __init__(
        self,
        *,
        model: str,
        voice: str,
        instructions: str,
        greeting: str | None = None,
        transcription_model: str | None = None,
        tools: Sequence[Function] = (),
        max_frame_bytes: int = 4 * 1024 * 1024,
    ) -> None:
        self.model = model
        self.voice = voice
        self.instructions = instructions
        self.greeting = greeting
        self.transcription_model = transcription_model
        self.max_frame_bytes = max_frame_bytes
        self.tools = tool_checks.check_declared(tools)
        self.ready = False
        self.greeted = False
        self.responding = False
        """A response is in progress (between ``response.created`` and ``response.done``)."""
        self._cancelled = False  # we sent response.cancel for the response in progress
        self._cancels_unanswered = 0  # our cancels not (yet) answered with cancel_not_active
        self._seen_calls = tool_checks.SeenCalls()
        self._awaiting: set[str] = set()  # calls of the latest response awaiting output

    @classmethod
    def from_config(cls, config: AgentConfig) -> OpenAIRealtimeCodec:
        return cls(
            model=config.model,
            voice=config.voice,
            instructions=config.instructions,
            greeting=config.greeting,
            transcription_model=TRANSCRIPTION_MODEL if config.transcripts else None,
            tools=config.tools,
            max_frame_bytes=config.max_message_bytes,
        )

    # -- to_agent ------------------------------------------------------------------------

    def session_update(self) -> SessionUpdateJSON:
        audio_input: AudioInputJSON = {
            "format": {"type": "audio/pcmu"},
            # Server VAD answers at the end of the caller's turn and cancels the running
            # response itself when the caller barges in (we still cancel a response we saw in
            # progress: the setting is the server's to honour).
            "turn_detection": {
                "type": "server_vad",
                "create_response": True,
                "interrupt_response": True,
            },
        }
        if self.transcription_model:
            audio_input["transcription"] = {"model": self.transcription_model}
        session: SessionJSON = {
            "type": "realtime",
            "model": self.model,
            "instructions": self.instructions,
            "output_modalities": ["audio"],
            "audio": {
                "input": audio_input,
                "output": {"format": {"type": "audio/pcmu"}, "voice": self.voice},
            },
        }
        if self.tools:
            session["tools"] = [
                {
                    "type": "function",
                    "name": tool.name,
                    "description": tool.description,
                    "parameters": dict(tool.parameters),
                }
                for tool in self.tools
            ]
            session["tool_choice"] = "auto"
        return {"type": "session.update", "session": session}

    def start(self) -> list[Frame]:
        self.ready = False
        return [_dumps(self.session_update())]

    def after_ready(self) -> list[Frame]:
        """The greeting's ``response.create``, the first time only (else nothing)."""
        if not self.greeting or self.greeted:
            return []
        self.greeted = True
        greet: ResponseCreateJSON = {
            "type": "response.create",
            "response": {"instructions": f'{GREETING_INSTRUCTIONS}"{self.greeting}"'},
        }
        return [_dumps(greet)]

    def encode(self, event: ToAgent) -> list[Frame]:
        """Frames for ``event``. Raises ``ValueError`` for audio not in ``input_format``.

        ``Dtmf`` becomes a user text item ``"DTMF: <digit>"`` followed by ``response.create``
        (a text item alone does not trigger a reply); an invalid digit sends nothing.
        ``Interrupt`` cancels the response in progress, if any (once), and truncates the item
        that was playing, if any, to what the caller heard. ``ToolResult`` becomes a
        ``function_call_output`` item, then ``response.create`` once no call of the latest
        response awaits its output. ``KeepAlive`` and ``Hangup`` send nothing (WebSocket
        pings keep the session alive).
        """
        match event:
            case AudioChunk():
                if event.format != self.input_format:
                    raise ValueError(f"OpenAI session expects {self.input_format}")
                return [_dumps({"type": "input_audio_buffer.append", "audio": event.payload})]
            case Interrupt(item_id=item_id, played_ms=played_ms):
                frames: list[Frame] = []
                # A cancel with nothing in progress only earns an error event.
                if self.responding and not self._cancelled:
                    self._cancelled = True
                    self._cancels_unanswered += 1
                    frames.append(_dumps({"type": "response.cancel"}))
                if item_id:
                    frames.append(
                        _dumps(
                            {
                                "type": "conversation.item.truncate",
                                "item_id": item_id,
                                "content_index": 0,
                                "audio_end_ms": max(0, int(played_ms)),
                            }
                        )
                    )
                return frames
            case Dtmf(digit=digit):
                if digit not in DTMF_DIGITS:
                    return []
                item = {
                    "type": "message",
                    "role": "user",
                    "content": [{"type": "input_text", "text": f"DTMF: {digit}"}],
                }
                return [
                    _dumps({"type": "conversation.item.create", "item": item}),
                    _dumps({"type": "response.create"}),
                ]
            case ToolResult(call_id=call_id, output=output):
                result: ItemCreateJSON = {
                    "type": "conversation.item.create",
                    "item": {"type": "function_call_output", "call_id": call_id, "output": output},
                }
                self._awaiting.discard(call_id)
                if self._awaiting:
                    return [_dumps(result)]
                return [_dumps(result), _dumps({"type": "response.create"})]
            case KeepAlive() | Hangup():
                return []
            case _:
                assert_never(event)

    # -- from_agent ----------------------------------------------------------------------

    def feed(self, frame: Frame) -> list[AgentEvent]:
        """Events carried by one received frame. Raises ``ProtocolError``; stays usable."""
        if isinstance(frame, bytes):
            raise ProtocolError("unexpected binary frame")
        msg = load_typed(frame, self.max_frame_bytes)
        match msg["type"]:
            case "session.updated":
                return self._session_updated(msg)
            case "response.output_audio.delta":
                delta = string_field(msg, "delta")
                item_id = string_field(msg, "item_id")
                if not is_base64(delta):
                    raise ProtocolError("audio delta is not base64")
                return [AudioChunk(delta, PCMU_8K, item_id=item_id)] if delta else []
            case "input_audio_buffer.speech_started":
                return [SpeechStarted()]
            case "response.created":
                if not isinstance(msg.get("response"), dict):
                    raise ProtocolError("response.created without a response object")
                self.responding, self._cancelled = True, False
                # Calls of earlier responses still unanswered no longer hold the next one.
                self._awaiting.clear()
                return []
            case "response.done":
                self.responding = self._cancelled = False
                return [ResponseDone()]
            case "response.output_audio_transcript.done":
                return [Transcript("agent", string_field(msg, "transcript"))]
            case "conversation.item.input_audio_transcription.completed":
                return [Transcript("user", string_field(msg, "transcript"))]
            case "response.function_call_arguments.done":
                call = tool_checks.tool_call(
                    msg.get("call_id"), msg.get("name"), msg.get("arguments")
                )
                return self._report([call])
            case "response.output_item.done":
                item = msg.get("item")
                if not isinstance(item, dict):
                    raise ProtocolError("response.output_item.done without an item object")
                if item.get("type") != "function_call":
                    return []
                call = tool_checks.tool_call(
                    item.get("call_id"), item.get("name"), item.get("arguments")
                )
                return self._report([call])
            case "error":
                error = self._error(msg)
                return [] if error is None else [error]
            case _:
                return []

    def _report(self, calls: list[ToolCall]) -> list[AgentEvent]:
        if len(self._awaiting) >= MAX_CALLS_PER_RESPONSE:
            raise ProtocolError("too many tool calls in one response")
        fresh = self._seen_calls.first(calls)
        self._awaiting.update(call.call_id for call in fresh)
        return list(fresh)

    def _session_updated(self, msg: Mapping[str, Any]) -> list[AgentEvent]:
        session = msg.get("session")
        if not isinstance(session, dict):
            raise ProtocolError("session.updated without a session object")
        # The fast path forwards payloads untouched: a session that did not take mu-law would
        # play noise to the caller, so that ends the session.
        for direction in ("input", "output"):
            fmt = _get_path(session, ("audio", direction, "format", "type"))
            if fmt is not None and fmt != "audio/pcmu":
                return [Error("format_mismatch", f"{direction} audio format is {fmt}", fatal=True)]
        if self.ready:
            return []
        self.ready = True
        return [AgentReady()]

    def _error(self, msg: Mapping[str, Any]) -> Error | None:
        err = msg.get("error")
        if not isinstance(err, dict):
            raise ProtocolError("error event without an error object")
        code = err.get("code") or err.get("type") or "error"
        message = err.get("message") or ""
        if not isinstance(code, str) or not isinstance(message, str):
            raise ProtocolError("error event with non-string fields")
        if code == CANCEL_NOT_ACTIVE and self._cancels_unanswered:
            # Our cancel crossed the end of the response (server VAD stops a response by
            # itself on speech_started, and its response.done can pass our cancel on the
            # wire): nothing went wrong, so nothing is reported.
            self._cancels_unanswered -= 1
            return None
        return Error(code, message, fatal=not self.ready or code in FATAL_ERROR_CODES)


# -- helpers -----------------------------------------------------------------------------------


def _dumps(obj: Mapping[str, Any]) -> str:
    return orjson.dumps(obj).decode()


def _get_path(obj: Any, path: tuple[str, ...]) -> Any:
    for key in path:
        if not isinstance(obj, dict):
            return None
        obj = obj.get(key)
    return obj
