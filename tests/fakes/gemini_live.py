"""Fake Gemini Live API (``BidiGenerateContent``): a real WebSocket server on loopback.

    async with FakeGeminiLive(api_key="g-test") as fake:
        config = AgentConfig.for_provider("gemini", api_key="g-test", url=fake.url)
        ...
        await fake.go_away("1s")                  # the client should resume on a new socket
        assert fake.resumed_with == [None, "handle-1"]

Behaviour, as the real server (https://ai.google.dev/api/live):
* ``/ws/google.ai.generativelanguage.v1beta.GenerativeService.BidiGenerateContent``; the key
  in ``x-goog-api-key`` or ``?key=``. The first message must be ``{"setup": {...}}``; a wrong
  key closes the socket with 1008, unknown or mistyped fields with 1007 and a message naming
  the field (as the real server does), an unknown resumption handle with 1008.
* A valid setup gets ``{"setupComplete": {}}`` (unless ``answer_setup`` is false), then, when
  ``sessionResumption`` was requested, a ``sessionResumptionUpdate`` with a fresh handle
  (``"handle-<n>"``, resumable). ``resumed_with`` records the handle each setup carried.
* ``realtimeInput.audio`` (PCM16, ``audio/pcm;rate=16000``) is recorded (base64 text, as sent)
  and echoed as ``serverContent.modelTurn.parts[].inlineData`` at 24 kHz (crudely resampled by
  repeating every other sample), each ``turn_complete_every`` chunks followed by
  ``turnComplete``. With ``binary_json`` (default) JSON goes out in binary frames, as Google's
  servers do.
* ``clientContent`` (``turns`` of ``{role, parts: [{text}]}``, ``turnComplete``) is validated
  and recorded in ``turns``; with ``turnComplete`` the model answers with a turn of
  ``reply_chunks`` x 20 ms of 24 kHz silence and ``turnComplete``.
* Tools: ``setup.tools`` is checked against google-genai's ``Tool`` (extra fields forbidden;
  function names ``^[A-Za-z0-9_-]{1,64}$``) and its function declarations are readable as
  ``tools``. ``call_tool(name, args)`` sends ``toolCall`` ``{functionCalls: [{id, name,
  args}]}``, ``cancel_tools(ids)`` ``toolCallCancellation``. A ``toolResponse`` is checked
  against ``LiveClientToolResponse``, must answer calls made (else close 1007), is recorded in
  ``tool_outputs`` (id -> response object) and answered with a model turn like
  ``clientContent``; await it with ``wait_tool_output(id)``.
* Commands: ``interrupted()``, ``go_away(time_left)`` (and, with ``close_after``, the socket is
  closed once the time is up), ``resumption_update()``, ``transcription(...)``.
"""

from __future__ import annotations

import array
import asyncio
import base64
import binascii
import json
import re
import sys
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pydantic
from google.genai import types
from websockets.asyncio.server import ServerConnection
from websockets.http11 import Request

from tests.fakes.openai_realtime import WebSocketFake

# Wire (camelCase) names of BidiGenerateContentSetup and nested messages.
_SETUP_SCHEMA: dict[str, Any] = {
    "model": None,
    "generationConfig": {
        "responseModalities": None,
        "speechConfig": {
            "voiceConfig": {"prebuiltVoiceConfig": {"voiceName": None}},
            "languageCode": None,
            "multiSpeakerVoiceConfig": None,
        },
        "temperature": None,
        "topP": None,
        "topK": None,
        "maxOutputTokens": None,
        "candidateCount": None,
        "presencePenalty": None,
        "frequencyPenalty": None,
        "mediaResolution": None,
        "thinkingConfig": None,
        "enableAffectiveDialog": None,
        "seed": None,
    },
    "systemInstruction": {"parts": None, "role": None},
    "tools": None,
    "realtimeInputConfig": None,
    "sessionResumption": {"handle": None, "transparent": None},
    "contextWindowCompression": {"slidingWindow": {"targetTokens": None}, "triggerTokens": None},
    "inputAudioTranscription": {"languageCodes": None},
    "outputAudioTranscription": {"languageCodes": None},
    "proactivity": None,
    "historyConfig": None,
}
_FUNCTION_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
_CLIENT_KEYS = {"setup", "clientContent", "realtimeInput", "toolResponse"}
_REALTIME_KEYS = {
    "mediaChunks",
    "audio",
    "audioStreamEnd",
    "video",
    "text",
    "activityStart",
    "activityEnd",
}


class InvalidPayload(Exception):
    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code, self.reason = code, reason


def _check_schema(obj: Any, schema: dict[str, Any], where: str) -> None:
    if not isinstance(obj, dict):
        raise InvalidPayload(1007, f"Invalid JSON payload received. Invalid value at '{where}'.")
    for key, value in obj.items():
        if key not in schema:
            raise InvalidPayload(
                1007,
                f"Invalid JSON payload received. Unknown name \"{key}\" at '{where}': "
                "Cannot find field.",
            )
        if schema[key] is not None and value is not None:
            _check_schema(value, schema[key], f"{where}.{key}")


def validate_setup(setup: Any) -> None:
    """Raise :class:`InvalidPayload` unless ``setup`` is a valid ``BidiGenerateContentSetup``."""
    _check_schema(setup, _SETUP_SCHEMA, "setup")
    model = setup.get("model")
    if not isinstance(model, str) or not model.startswith("models/"):
        raise InvalidPayload(1008, "models/ prefix required: model not found")
    modalities = (setup.get("generationConfig") or {}).get("responseModalities", ["AUDIO"])
    if not isinstance(modalities, list) or not set(modalities) <= {"AUDIO", "TEXT"}:
        raise InvalidPayload(1007, "Invalid value at 'setup.generation_config.response_modalities'")
    voice = (
        ((setup.get("generationConfig") or {}).get("speechConfig") or {}).get("voiceConfig") or {}
    ).get("prebuiltVoiceConfig")
    if voice is not None and not isinstance(voice.get("voiceName"), str):
        raise InvalidPayload(1007, "Invalid value at 'voice_name'")
    tools = setup.get("tools", [])
    if not isinstance(tools, list):
        raise InvalidPayload(1007, "Invalid value at 'setup.tools'")
    for tool in tools:
        try:
            types.Tool.model_validate(tool)
        except pydantic.ValidationError:
            raise InvalidPayload(1007, "Invalid value at 'setup.tools'") from None
        for declaration in tool.get("functionDeclarations") or []:
            if not _FUNCTION_NAME.fullmatch(declaration.get("name") or ""):
                raise InvalidPayload(1007, "Invalid function name at 'setup.tools'")
    instruction = setup.get("systemInstruction")
    if instruction is not None:
        parts = instruction.get("parts")
        if not isinstance(parts, list) or not all(
            isinstance(p, dict) and isinstance(p.get("text"), str) for p in parts
        ):
            raise InvalidPayload(1007, "Invalid value at 'setup.system_instruction.parts'")


def upsample_16k_to_24k(pcm: bytes) -> bytes:
    """Crude 3:2 resampling of PCM16 LE by repeating every other sample (fine for a fake)."""
    samples = array.array("h")
    samples.frombytes(pcm[: len(pcm) // 2 * 2])
    if sys.byteorder == "big":
        samples.byteswap()
    out = array.array("h")
    for i, sample in enumerate(samples):
        out.append(sample)
        if i % 2 == 0:
            out.append(sample)
    if sys.byteorder == "big":
        out.byteswap()
    return out.tobytes()


class FakeGeminiLive(WebSocketFake):
    """See the module docstring. Knobs: ``answer_setup``, ``echo_audio``,
    ``turn_complete_every``, ``issue_handles``, ``binary_json``. Records: ``received``,
    ``audio`` (base64 text as sent), ``setups``, ``resumed_with``, ``handles`` (issued)."""

    path = "/ws/google.ai.generativelanguage.v1beta.GenerativeService.BidiGenerateContent"

    def __init__(
        self,
        *,
        api_key: str = "g-test",
        answer_setup: bool = True,
        echo_audio: bool = True,
        turn_complete_every: int = 1,
        issue_handles: bool = True,
        binary_json: bool = True,
        reply_chunks: int = 3,
    ) -> None:
        super().__init__()
        self.reply_chunks = reply_chunks
        self.turns: list[dict[str, Any]] = []
        self.api_key = api_key
        self.answer_setup = answer_setup
        self.echo_audio = echo_audio
        self.turn_complete_every = turn_complete_every
        self.issue_handles = issue_handles
        self.binary_json = binary_json
        self.audio: list[str] = []
        self.setups: list[dict[str, Any]] = []
        self.resumed_with: list[str | None] = []
        self.handles: list[str] = []
        self._keys: dict[ServerConnection, str | None] = {}
        self._setup_done: set[ServerConnection] = set()
        self._chunks = 0
        self.calls: dict[str, str] = {}  # id -> name of every call made and not answered
        self.tool_outputs: dict[str, dict[str, Any]] = {}  # id -> response object sent
        self._tasks: set[asyncio.Task[None]] = set()

    def check_request(self, request: Request) -> tuple[HTTPStatus, str] | None:
        return None  # the real server checks the key after the setup message

    async def send_json(self, msg: Any, conn: ServerConnection | None = None) -> None:
        data = json.dumps(msg)
        await (conn or self.current).send(data.encode() if self.binary_json else data)

    @property
    def tools(self) -> list[dict[str, Any]]:
        """The function declarations of the latest setup."""
        tools = self.setups[-1].get("tools", []) if self.setups else []
        return [d for tool in tools for d in tool.get("functionDeclarations") or []]

    # -- commands --------------------------------------------------------------------------

    async def call_tool(
        self, name: str, args: dict[str, Any], *, call_id: str | None = None
    ) -> str:
        """Send ``toolCall`` with one function call; returns its id."""
        call_id = call_id or self.next_id("function-call")
        self.calls[call_id] = name
        call = {"id": call_id, "name": name, "args": args}
        await self.send_json({"toolCall": {"functionCalls": [call]}})
        return call_id

    async def cancel_tools(self, ids: list[str]) -> None:
        for call_id in ids:
            self.calls.pop(call_id, None)
        await self.send_json({"toolCallCancellation": {"ids": ids}})

    async def wait_tool_output(self, call_id: str) -> dict[str, Any]:
        """The response object sent for ``call_id``, once it has been. Callers bound it."""
        await self.wait_until(lambda: call_id in self.tool_outputs)
        return self.tool_outputs[call_id]

    async def interrupted(self) -> None:
        await self.send_json({"serverContent": {"interrupted": True}})

    async def transcription(self, text: str, *, role: str = "agent") -> None:
        key = "outputTranscription" if role == "agent" else "inputTranscription"
        await self.send_json({"serverContent": {key: {"text": text}}})

    async def resumption_update(self, conn: ServerConnection | None = None) -> str:
        handle = f"handle-{len(self.handles) + 1}"
        self.handles.append(handle)
        await self.send_json(
            {"sessionResumptionUpdate": {"newHandle": handle, "resumable": True}}, conn
        )
        return handle

    async def go_away(self, time_left: str = "10s", *, close_after: bool = True) -> None:
        conn = self.current
        await self.send_json({"goAway": {"timeLeft": time_left}}, conn)
        if close_after:
            seconds = float(time_left.rstrip("s"))
            task = asyncio.create_task(self._close_later(conn, seconds))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _close_later(self, conn: ServerConnection, seconds: float) -> None:
        await asyncio.sleep(seconds)
        await conn.close(1011, "The service is currently unavailable.")

    async def __aexit__(self, *exc: Any) -> None:
        for task in list(self._tasks):
            task.cancel()
        await super().__aexit__(*exc)

    # -- protocol --------------------------------------------------------------------------

    async def on_connect(self, conn: ServerConnection) -> None:
        assert conn.request is not None
        path, headers = conn.request.path, conn.request.headers
        query_key = parse_qs(urlsplit(path).query).get("key", [None])[0]
        self._keys[conn] = headers.get("x-goog-api-key") or query_key

    async def on_message(self, conn: ServerConnection, message: str | bytes) -> None:
        try:
            msg = json.loads(message)
        except ValueError:
            self.received.append(message)
            await conn.close(1007, "Invalid JSON payload received.")
            return
        self.received.append(msg)
        try:
            await self._dispatch(conn, msg)
        except InvalidPayload as exc:
            await conn.close(exc.code, exc.reason[:120])

    async def _dispatch(self, conn: ServerConnection, msg: Any) -> None:
        if not isinstance(msg, dict) or len(msg) != 1 or not set(msg) <= _CLIENT_KEYS:
            raise InvalidPayload(1007, "Invalid JSON payload received. Unknown message.")
        if conn not in self._setup_done:
            if "setup" not in msg:
                raise InvalidPayload(1007, "The first message must be a setup message.")
            await self._setup(conn, msg["setup"])
            return
        if "setup" in msg:
            raise InvalidPayload(1007, "Setup may only be sent once.")
        if "realtimeInput" in msg:
            await self._realtime_input(conn, msg["realtimeInput"])
        if "clientContent" in msg:
            await self._client_content(conn, msg["clientContent"])
        if "toolResponse" in msg:
            await self._tool_response(conn, msg["toolResponse"])

    async def _tool_response(self, conn: ServerConnection, response: Any) -> None:
        try:
            types.LiveClientToolResponse.model_validate(response)
        except pydantic.ValidationError:
            raise InvalidPayload(1007, "Invalid value at 'tool_response'") from None
        answers = response.get("functionResponses") or []
        for answer in answers:
            call_id, name = answer.get("id"), answer.get("name")
            if self.calls.get(call_id) != name or not isinstance(answer.get("response"), dict):
                raise InvalidPayload(1007, "Invalid value at 'tool_response.function_responses'")
            del self.calls[call_id]
            self.tool_outputs[call_id] = answer["response"]
        await self._model_turn(conn)

    async def _client_content(self, conn: ServerConnection, content: Any) -> None:
        _check_schema(content, {"turns": None, "turnComplete": None}, "client_content")
        turns = content.get("turns", [])
        if not isinstance(turns, list):
            raise InvalidPayload(1007, "Invalid value at 'client_content.turns'")
        for turn in turns:
            _check_schema(turn, {"role": None, "parts": None}, "client_content.turns")
            parts = turn.get("parts")
            if turn.get("role") not in {"user", "model"} or not isinstance(parts, list):
                raise InvalidPayload(1007, "Invalid value at 'client_content.turns'")
            for part in parts:
                if not isinstance(part, dict) or not isinstance(part.get("text"), str):
                    raise InvalidPayload(1007, "Invalid value at 'client_content.turns.parts'")
            self.turns.append(turn)
        if content.get("turnComplete") is True:
            await self._model_turn(conn)

    async def _model_turn(self, conn: ServerConnection) -> None:
        """A model turn of ``reply_chunks`` x 20 ms of 24 kHz silence."""
        silence = base64.b64encode(b"\x00\x00" * 480).decode()  # 20 ms at 24 kHz
        part = {"inlineData": {"mimeType": "audio/pcm;rate=24000", "data": silence}}
        for _ in range(self.reply_chunks):
            await self.send_json({"serverContent": {"modelTurn": {"parts": [part]}}}, conn)
        await self.send_json({"serverContent": {"turnComplete": True}}, conn)

    async def _setup(self, conn: ServerConnection, setup: Any) -> None:
        if self._keys.get(conn) != self.api_key:
            raise InvalidPayload(1008, "API key not valid. Please pass a valid API key.")
        validate_setup(setup)
        handle = (setup.get("sessionResumption") or {}).get("handle")
        if handle is not None and handle not in self.handles:
            raise InvalidPayload(1008, "Session resumption handle not found.")
        self.setups.append(setup)
        self.resumed_with.append(handle)
        self._setup_done.add(conn)
        if not self.answer_setup:
            return
        await self.send_json({"setupComplete": {}}, conn)
        if self.issue_handles and "sessionResumption" in setup:
            await self.resumption_update(conn)

    async def _realtime_input(self, conn: ServerConnection, realtime: Any) -> None:
        if not isinstance(realtime, dict) or not set(realtime) <= _REALTIME_KEYS:
            raise InvalidPayload(
                1007, "Invalid JSON payload received. Unknown name at 'realtime_input'."
            )
        audio = realtime.get("audio")
        if audio is None:
            return
        if not isinstance(audio, dict) or set(audio) - {"data", "mimeType"}:
            raise InvalidPayload(1007, "Invalid value at 'realtime_input.audio'")
        mime, data = audio.get("mimeType"), audio.get("data")
        if not isinstance(mime, str) or not mime.startswith("audio/pcm"):
            raise InvalidPayload(1007, "Unsupported mime type")
        if not isinstance(data, str):
            raise InvalidPayload(1007, "Invalid value at 'realtime_input.audio.data'")
        try:
            pcm = base64.b64decode(data, validate=True)
        except (binascii.Error, ValueError, TypeError):
            raise InvalidPayload(1007, "Invalid value at 'realtime_input.audio.data'") from None
        self.audio.append(data)
        if not self.echo_audio:
            return
        out = base64.b64encode(upsample_16k_to_24k(pcm)).decode()
        part = {"inlineData": {"mimeType": "audio/pcm;rate=24000", "data": out}}
        await self.send_json({"serverContent": {"modelTurn": {"parts": [part]}}}, conn)
        self._chunks += 1
        if self.turn_complete_every and self._chunks % self.turn_complete_every == 0:
            await self.send_json({"serverContent": {"turnComplete": True}}, conn)
