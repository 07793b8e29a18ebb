"""Gemini Live API (``BidiGenerateContent`` over WebSocket): a sans-I/O codec.

Protocol facts this codec relies on (ai.google.dev "Get started with Gemini Live API using
WebSockets", "Session management"; the ``google-genai`` package: ``live.py`` builds the URL and
headers, ``types.LiveClientMessage`` / ``LiveServerMessage`` and ``_live_converters`` give the
camelCase wire names):

* URL ``wss://generativelanguage.googleapis.com/ws/google.ai.generativelanguage.v1beta.
  GenerativeService.BidiGenerateContent``; the API key goes in the ``x-goog-api-key`` header
  (what ``google-genai`` sends; the docs' ``?key=`` query parameter also works but puts the key
  in URLs, which end up in logs).
* The first message is ``{"setup": {"model": "models/<name>", "generationConfig":
  {"responseModalities": ["AUDIO"], "speechConfig": {"voiceConfig": {"prebuiltVoiceConfig":
  {"voiceName": ...}}}}, "systemInstruction": {"parts": [{"text": ...}]},
  "sessionResumption": {"handle"?: ...}, "contextWindowCompression": {"slidingWindow": {}},
  "inputAudioTranscription": {}, "outputAudioTranscription": {}}}``; the server answers
  ``{"setupComplete": {}}``. Unknown fields make the server close the socket (code 1007).
* After ``setupComplete``, a greeting goes as a client turn: ``{"clientContent": {"turns":
  [{"role": "user", "parts": [{"text": ...}]}], "turnComplete": true}}`` asks the model to say
  it (``turnComplete`` starts generation at once).
* Audio in: ``{"realtimeInput": {"audio": {"data": <base64 PCM16>, "mimeType":
  "audio/pcm;rate=16000"}}}``. Audio out: ``serverContent.modelTurn.parts[].inlineData``
  ``{"mimeType": "audio/pcm;rate=24000", "data": <base64 PCM16>}``.
* ``serverContent.interrupted`` (the server's VAD heard the caller), ``turnComplete``,
  ``inputTranscription`` / ``outputTranscription`` ``{"text"}``; ``goAway`` ``{"timeLeft":
  "<seconds>s"}`` announces the end of the connection; ``sessionResumptionUpdate``
  ``{"newHandle", "resumable"}`` gives the handle to resume with on a new connection.
* The server sends its JSON in binary frames as well as text frames; both are accepted.
* Tools: ``setup.tools`` is ``[{"functionDeclarations": [{name, description,
  parametersJsonSchema}]}]``. ``parametersJsonSchema`` (``FunctionDeclaration.
  parameters_json_schema`` in google-genai) takes the JSON Schema as it is; ``parameters``
  would take only the OpenAPI subset Gemini's ``Schema`` defines. A call arrives as
  ``toolCall`` ``{functionCalls: [{id, name, args}]}`` (``args`` an object, reported as JSON
  text); ``toolCallCancellation`` ``{ids}`` withdraws calls. The output goes back as
  ``toolResponse`` ``{functionResponses: [{id, name, response}]}``, ``response`` an object:
  the output when it is a JSON object, else ``{"output": <value or text>}``.

Feed policy: unknown top-level keys are ignored; a frame that is not a JSON object, or known
keys with the wrong types, raise :class:`ProtocolError`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any, Final, NotRequired, TypedDict, assert_never

import orjson

from providers.ai import tools as tool_checks
from providers.ai.config import AgentConfig, Endpoint, Function, api_key_value
from providers.ai.frames import is_base64
from providers.codec import Frame
from providers.events import (
    DTMF_DIGITS,
    PCM16_16K,
    PCM16_24K,
    AgentEvent,
    AgentReady,
    AudioChunk,
    Dtmf,
    Error,
    GoAway,
    Hangup,
    Interrupt,
    KeepAlive,
    ResponseDone,
    ResumptionHandle,
    SpeechStarted,
    ToAgent,
    ToolCancelled,
    ToolResult,
    Transcript,
)
from providers.exceptions import ProtocolError

INPUT_MIME: Final = "audio/pcm;rate=16000"
# Bounded digit counts: int() and float() of a peer's thousand-digit number would raise or
# overflow instead of being refused.
_DURATION = re.compile(r"^\s*([0-9]{1,9}(?:\.[0-9]{1,9})?)s\s*$")
_RATE = re.compile(r"rate=([0-9]{1,9})")


class PartJSON(TypedDict):
    text: str


class ContentJSON(TypedDict):
    parts: list[PartJSON]


class PrebuiltVoiceJSON(TypedDict):
    voiceName: str


class VoiceConfigJSON(TypedDict):
    prebuiltVoiceConfig: PrebuiltVoiceJSON


class SpeechConfigJSON(TypedDict):
    voiceConfig: VoiceConfigJSON


class GenerationConfigJSON(TypedDict):
    responseModalities: list[str]
    speechConfig: SpeechConfigJSON


class SessionResumptionJSON(TypedDict, total=False):
    handle: str


class FunctionDeclarationJSON(TypedDict):
    name: str
    description: str
    parametersJsonSchema: dict[str, Any]


class ToolJSON(TypedDict):
    functionDeclarations: list[FunctionDeclarationJSON]


class SetupJSON(TypedDict):
    model: str
    generationConfig: GenerationConfigJSON
    systemInstruction: ContentJSON
    sessionResumption: SessionResumptionJSON
    contextWindowCompression: dict[str, dict[str, int]]
    inputAudioTranscription: NotRequired[dict[str, str]]
    outputAudioTranscription: NotRequired[dict[str, str]]
    tools: NotRequired[list[ToolJSON]]


class SetupMessageJSON(TypedDict):
    setup: SetupJSON


class FunctionResponseJSON(TypedDict):
    id: str
    name: str
    response: dict[str, Any]


class ToolResponseJSON(TypedDict):
    functionResponses: list[FunctionResponseJSON]


class ToolResponseMessageJSON(TypedDict):
    toolResponse: ToolResponseJSON


class TurnJSON(TypedDict):
    role: str
    parts: list[PartJSON]


class ClientContentJSON(TypedDict):
    turns: list[TurnJSON]
    turnComplete: bool


class ClientContentMessageJSON(TypedDict):
    clientContent: ClientContentJSON


GREETING_PROMPT: Final = (
    "The call has just been answered. Greet the caller by saying exactly the following words, "
    "verbatim, and nothing else: "
)


def endpoint(config: AgentConfig) -> Endpoint:
    key = api_key_value(config)
    return Endpoint(config.url, {"x-goog-api-key": key} if key else {})


class GeminiLiveCodec:
    """Sans-I/O codec for one Gemini Live session: PCM16 16 kHz in, PCM16 24 kHz out.

    ``resume_handle`` is the latest resumable handle seen (or given); ``start()`` puts it in
    the setup, so a new connection started with the same codec resumes the session. Once
    ``feed`` has reported :class:`AgentReady`, send the frames of ``after_ready()``.
    """

    provider: str = "gemini"
    input_format = PCM16_16K
    output_format = PCM16_24K

    def __init__(
        self,
        *,
        model: str,
        voice: str,
        instructions: str,
        greeting: str | None = None,
        resume_handle: str | None = None,
        transcripts: bool = True,
        tools: Sequence[Function] = (),
        max_frame_bytes: int = 4 * 1024 * 1024,
    ) -> None:
        self.model = model if model.startswith("models/") else f"models/{model}"
        self.voice = voice
        self.instructions = instructions
        self.greeting = greeting
        self.greeted = False
        self.resume_handle = resume_handle
        self.transcripts = transcripts
        self.max_frame_bytes = max_frame_bytes
        self.tools = tool_checks.check_declared(tools)
        self.ready = False

    @classmethod
    def from_config(cls, config: AgentConfig) -> GeminiLiveCodec:
        return cls(
            model=config.model,
            voice=config.voice,
            instructions=config.instructions,
            greeting=config.greeting,
            transcripts=config.transcripts,
            tools=config.tools,
            max_frame_bytes=config.max_message_bytes,
        )

    def setup(self) -> SetupMessageJSON:
        resumption: SessionResumptionJSON = {}
        if self.resume_handle:
            resumption["handle"] = self.resume_handle
        setup: SetupJSON = {
            "model": self.model,
            "generationConfig": {
                "responseModalities": ["AUDIO"],
                "speechConfig": {"voiceConfig": {"prebuiltVoiceConfig": {"voiceName": self.voice}}},
            },
            "systemInstruction": {"parts": [{"text": self.instructions}]},
            "sessionResumption": resumption,
            # Without compression a long call hits the context limit and the session ends.
            "contextWindowCompression": {"slidingWindow": {}},
        }
        if self.transcripts:
            setup["inputAudioTranscription"] = {}
            setup["outputAudioTranscription"] = {}
        if self.tools:
            declarations: list[FunctionDeclarationJSON] = [
                {
                    "name": tool.name,
                    "description": tool.description,
                    "parametersJsonSchema": dict(tool.parameters),
                }
                for tool in self.tools
            ]
            setup["tools"] = [{"functionDeclarations": declarations}]
        return {"setup": setup}

    def start(self, resume_handle: str | None = None) -> list[Frame]:
        """The setup frame; ``resume_handle`` (or the latest one seen) resumes a session."""
        if resume_handle is not None:
            self.resume_handle = resume_handle
        self.ready = False
        return [orjson.dumps(self.setup()).decode()]

    def after_ready(self) -> list[Frame]:
        """The greeting turn, the first time only: a resumed session has greeted already."""
        if not self.greeting or self.greeted:
            return []
        self.greeted = True
        turn: ClientContentMessageJSON = {
            "clientContent": {
                "turns": [
                    {"role": "user", "parts": [{"text": f'{GREETING_PROMPT}"{self.greeting}"'}]}
                ],
                "turnComplete": True,
            }
        }
        return [orjson.dumps(turn).decode()]

    def encode(self, event: ToAgent) -> list[Frame]:
        """Frames for ``event``. Raises ``ValueError`` for audio not in ``input_format``.

        ``Dtmf`` becomes realtime text ``"DTMF: <digit>"`` (invalid digits send nothing).
        ``ToolResult`` becomes a ``toolResponse`` with one function response.
        ``Interrupt``, ``KeepAlive`` and ``Hangup`` send nothing: Gemini detects barge-in
        itself and has no application keepalive.
        """
        match event:
            case AudioChunk():
                if event.format != self.input_format:
                    raise ValueError(f"Gemini session expects {self.input_format}")
                msg: dict[str, Any] = {
                    "realtimeInput": {"audio": {"data": event.payload, "mimeType": INPUT_MIME}}
                }
                return [orjson.dumps(msg).decode()]
            case Dtmf(digit=digit):
                if digit not in DTMF_DIGITS:
                    return []
                return [orjson.dumps({"realtimeInput": {"text": f"DTMF: {digit}"}}).decode()]
            case ToolResult(call_id=call_id, name=name, output=output):
                response: ToolResponseMessageJSON = {
                    "toolResponse": {
                        "functionResponses": [
                            {
                                "id": call_id,
                                "name": name,
                                "response": tool_checks.output_object(output),
                            }
                        ]
                    }
                }
                return [orjson.dumps(response).decode()]
            case Interrupt() | KeepAlive() | Hangup():
                return []
            case _:
                assert_never(event)

    def feed(self, frame: Frame) -> list[AgentEvent]:
        """Events carried by one received frame. Raises ``ProtocolError``; stays usable."""
        if len(frame) > self.max_frame_bytes:
            raise ProtocolError("frame too large")
        try:
            msg = orjson.loads(frame)
        except orjson.JSONDecodeError:
            raise ProtocolError("frame is not JSON") from None
        if not isinstance(msg, dict):
            raise ProtocolError("frame is not a JSON object")
        events: list[AgentEvent] = []
        ready = "setupComplete" in msg and not self.ready
        if ready:
            events.append(AgentReady())
        if (content := msg.get("serverContent")) is not None:
            events.extend(self._server_content(_obj(content, "serverContent")))
        resume_handle: str | None = None
        if (update := msg.get("sessionResumptionUpdate")) is not None:
            update = _obj(update, "sessionResumptionUpdate")
            handle = update.get("newHandle")
            if update.get("resumable") is True and isinstance(handle, str) and handle:
                resume_handle = handle
                events.append(ResumptionHandle(handle))
        if (tool_call := msg.get("toolCall")) is not None:
            events.extend(_tool_calls(_obj(tool_call, "toolCall")))
        if (cancellation := msg.get("toolCallCancellation")) is not None:
            ids = tool_checks.count_calls(
                _obj(cancellation, "toolCallCancellation").get("ids"), "toolCallCancellation"
            )
            events.append(ToolCancelled(tuple(tool_checks.checked_call_id(i) for i in ids)))
        if (go_away := msg.get("goAway")) is not None:
            events.append(GoAway(_duration_ms(_obj(go_away, "goAway").get("timeLeft"))))
        if (error := msg.get("error")) is not None:
            # Not part of the documented server messages (errors arrive as close codes), but
            # some proxies and older servers send one; report it without ending the call.
            err = error if isinstance(error, dict) else {}
            message = err.get("message")
            events.append(Error("gemini_error", message if isinstance(message, str) else ""))
        # The whole message parsed: only now may it change the session (a rejected message
        # must not swallow the AgentReady of the next one).
        if ready:
            self.ready = True
        if resume_handle is not None:
            self.resume_handle = resume_handle
        return events

    def _server_content(self, content: Mapping[str, Any]) -> list[AgentEvent]:
        events: list[AgentEvent] = []
        if content.get("interrupted") is True:
            events.append(SpeechStarted())
        if (transcription := content.get("inputTranscription")) is not None:
            text = _obj(transcription, "inputTranscription").get("text")
            if isinstance(text, str) and text:
                events.append(Transcript("user", text))
        if (turn := content.get("modelTurn")) is not None:
            parts = _obj(turn, "modelTurn").get("parts", [])
            if not isinstance(parts, list):
                raise ProtocolError("modelTurn.parts is not a list")
            for part in parts:
                if (chunk := _audio_part(part)) is not None:
                    events.append(chunk)
        if (transcription := content.get("outputTranscription")) is not None:
            text = _obj(transcription, "outputTranscription").get("text")
            if isinstance(text, str) and text:
                events.append(Transcript("agent", text))
        if content.get("turnComplete") is True:
            events.append(ResponseDone())
        return events


def _tool_calls(tool_call: Mapping[str, Any]) -> list[AgentEvent]:
    calls = tool_checks.count_calls(tool_call.get("functionCalls"), "toolCall.functionCalls")
    events: list[AgentEvent] = []
    for call in calls:
        call = _obj(call, "functionCall")
        arguments = tool_checks.json_arguments(call.get("args"))
        events.append(tool_checks.tool_call(call.get("id"), call.get("name"), arguments))
    return events


def _audio_part(part: Any) -> AudioChunk | None:
    inline = _obj(part, "part").get("inlineData")
    if inline is None:
        return None  # text, thought or tool parts carry no audio
    inline = _obj(inline, "inlineData")
    mime, data = inline.get("mimeType"), inline.get("data")
    if not isinstance(mime, str) or not isinstance(data, str):
        raise ProtocolError("inlineData without string mimeType and data")
    if not mime.startswith("audio/pcm"):
        return None
    rate = _RATE.search(mime)
    if rate is not None and int(rate.group(1)) != PCM16_24K.sample_rate:
        raise ProtocolError("unexpected output sample rate")
    if not is_base64(data):
        raise ProtocolError("audio data is not base64")
    return AudioChunk(data, PCM16_24K) if data else None


def _obj(value: Any, name: str) -> Mapping[str, Any]:
    if not isinstance(value, dict):
        raise ProtocolError(f"{name} is not an object")
    return value


def _duration_ms(value: Any) -> int | None:
    """Protobuf JSON ``Duration`` (``"12.5s"``) in milliseconds; ``None`` if absent or odd."""
    if isinstance(value, str) and (m := _DURATION.match(value)):
        return round(float(m.group(1)) * 1000)
    return None
