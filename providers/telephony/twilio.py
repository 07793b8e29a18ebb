"""Twilio Media Streams codec (sans-I/O).

Wire format: https://www.twilio.com/docs/voice/media-streams/websocket-messages

from_carrier (text frames, JSON; numbers such as ``sequenceNumber``, ``chunk`` and
``timestamp`` are strings on the wire)::

    {"event": "connected", "protocol": "Call", "version": "1.0.0"}
    {"event": "start", "sequenceNumber": "1", "streamSid": "MZ...",
     "start": {"streamSid": "MZ...", "accountSid": "AC...", "callSid": "CA...",
               "tracks": ["inbound"], "customParameters": {"token": "..."},
               "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1}}}
    {"event": "media", "sequenceNumber": "3", "streamSid": "MZ...",
     "media": {"track": "inbound", "chunk": "1", "timestamp": "5", "payload": "<base64>"}}
    {"event": "dtmf", "sequenceNumber": "5", "streamSid": "MZ...",
     "dtmf": {"track": "inbound_track", "digit": "1"}}
    {"event": "mark", "sequenceNumber": "4", "streamSid": "MZ...", "mark": {"name": "..."}}
    {"event": "stop", "sequenceNumber": "5", "streamSid": "MZ...",
     "stop": {"accountSid": "AC...", "callSid": "CA..."}}

to_carrier (bidirectional ``<Connect><Stream>`` only)::

    {"event": "media", "streamSid": "MZ...", "media": {"payload": "<base64 mu-law 8 kHz>"}}
    {"event": "mark", "streamSid": "MZ...", "mark": {"name": "..."}}
    {"event": "clear", "streamSid": "MZ..."}
"""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping
from types import MappingProxyType
from typing import Final, Literal, NotRequired, TypedDict, assert_never

import orjson

from providers.codec import Frame
from providers.events import (
    PCMU_8K,
    AudioChunk,
    CarrierEvent,
    Clear,
    Dtmf,
    Mark,
    StreamConnected,
    StreamStarted,
    StreamStopped,
    ToCarrier,
)
from providers.exceptions import ProtocolError
from providers.telephony.fields import (
    DTMF_DIGITS,
    MAX_FIELD_CHARS,
    decimal_number,
    json_integer,
    object_field,
    string_field,
    string_parameters,
)

__all__ = [
    "MAX_FRAME_CHARS",
    "MAX_PAYLOAD_CHARS",
    "TwilioCodec",
    "TwilioState",
]

MAX_FRAME_CHARS: Final = 64 * 1024
"""Largest text frame ``feed`` parses. Twilio's 20 ms media frames are about 400 characters."""
MAX_PAYLOAD_CHARS: Final = 16 * 1024
"""Largest base64 media payload accepted (about 1.5 s of mu-law at 8 kHz)."""

_BASE64: Final = re.compile(r"[A-Za-z0-9+/]*={0,2}")
_TOKEN_PARAMETER: Final = "token"  # noqa: S105 (a parameter name)


# -- raw carrier JSON --------------------------------------------------------------------------


class TwilioMediaFormat(TypedDict):
    encoding: str
    sampleRate: int
    channels: int


class TwilioStartBody(TypedDict):
    streamSid: str
    accountSid: str
    callSid: str
    tracks: list[str]
    mediaFormat: TwilioMediaFormat
    customParameters: NotRequired[dict[str, str]]


class TwilioMediaBody(TypedDict):
    track: str
    chunk: str
    timestamp: str
    payload: str


class TwilioOutboundMediaBody(TypedDict):
    payload: str


class TwilioMarkBody(TypedDict):
    name: str


class TwilioOutboundMedia(TypedDict):
    event: Literal["media"]
    streamSid: str
    media: TwilioOutboundMediaBody


class TwilioOutboundMark(TypedDict):
    event: Literal["mark"]
    streamSid: str
    mark: TwilioMarkBody


class TwilioOutboundClear(TypedDict):
    event: Literal["clear"]
    streamSid: str


# -- codec -------------------------------------------------------------------------------------


class TwilioEvent(enum.StrEnum):
    MEDIA = "media"
    CONNECTED = "connected"
    START = "start"
    DTMF = "dtmf"
    MARK = "mark"
    STOP = "stop"


_EVENTS: Final[Mapping[str, TwilioEvent]] = {e.value: e for e in TwilioEvent}


class TwilioState(enum.Enum):
    AWAITING_START = enum.auto()
    STREAMING = enum.auto()
    STOPPED = enum.auto()


class TwilioCodec:
    """Twilio Media Streams: frames from Twilio in, typed events out, and back.

    Call ``feed`` for every frame received, in arrival order. ``encode`` needs the
    ``streamSid`` learned from ``start``: before ``start`` it raises ``ProtocolError``.
    Only the inbound track becomes ``AudioChunk`` events; its base64 payload is passed
    through untouched (checked for length and alphabet, never decoded).
    """

    carrier = "twilio"

    __slots__ = ("_state", "_stream_sid")

    def __init__(self) -> None:
        self._state = TwilioState.AWAITING_START
        self._stream_sid: str | None = None

    @property
    def state(self) -> TwilioState:
        return self._state

    @property
    def stream_sid(self) -> str | None:
        """The ``streamSid`` announced by ``start``, or ``None`` before it."""
        return self._stream_sid

    def feed(self, frame: Frame) -> list[CarrierEvent]:
        """Parse one WebSocket frame; return the events it carries (often one, maybe none).

        Raises ``ProtocolError`` for a frame that is binary, too large, not JSON, of an
        unknown event, malformed, out of order, or for another stream; the codec's state is
        unchanged by a rejected frame, so the caller can count it and carry on.
        """
        if not isinstance(frame, str):
            raise ProtocolError("binary frame")
        if len(frame) > MAX_FRAME_CHARS:
            raise ProtocolError("frame too large")
        try:
            message = orjson.loads(frame)
        except orjson.JSONDecodeError:
            raise ProtocolError("invalid json") from None
        if type(message) is not dict:
            raise ProtocolError("not an object")
        name = message.get("event")
        event = _EVENTS.get(name) if type(name) is str else None
        if event is None:
            raise ProtocolError("unknown event")

        match event:
            case TwilioEvent.MEDIA:
                return self._media(message)
            case TwilioEvent.CONNECTED:
                if self._state is not TwilioState.AWAITING_START:
                    raise ProtocolError("unexpected connected")
                return [StreamConnected()]
            case TwilioEvent.START:
                return [self._start(message)]
            case TwilioEvent.DTMF:
                self._check_stream(message)
                digit = string_field(object_field(message, "dtmf"), "digit")
                if digit not in DTMF_DIGITS:
                    raise ProtocolError("bad dtmf digit")
                return [Dtmf(digit)]
            case TwilioEvent.MARK:
                self._check_stream(message)
                return [Mark(string_field(object_field(message, "mark"), "name"))]
            case TwilioEvent.STOP:
                self._check_stream(message)
                self._state = TwilioState.STOPPED
                return [StreamStopped()]
            case _:
                assert_never(event)

    def encode(self, event: ToCarrier) -> str:
        """Serialise an outbound event as a text frame for Twilio.

        Raises ``ProtocolError`` before ``start`` (no ``streamSid`` yet) and for audio that is
        not mu-law 8 kHz, the only format a bidirectional stream plays.
        """
        sid = self._stream_sid
        if sid is None:
            raise ProtocolError("encode before start")
        message: TwilioOutboundMedia | TwilioOutboundMark | TwilioOutboundClear
        match event:
            case AudioChunk():
                if event.format != PCMU_8K:
                    raise ProtocolError("twilio plays mu-law 8 kHz only")
                message = {"event": "media", "streamSid": sid, "media": {"payload": event.payload}}
            case Mark():
                message = {"event": "mark", "streamSid": sid, "mark": {"name": event.name}}
            case Clear():
                message = {"event": "clear", "streamSid": sid}
            case _:
                assert_never(event)
        return orjson.dumps(message).decode()

    # -- inbound messages ----------------------------------------------------------------------

    def _media(self, message: dict[str, object]) -> list[CarrierEvent]:
        # The hot path: 50 frames a second per call. Checks only, no decoding, no copies.
        self._check_stream(message)
        media = message.get("media")
        if type(media) is not dict:
            raise ProtocolError("missing media")
        track = media.get("track")
        if track != "inbound":
            if track == "outbound":
                return []
            raise ProtocolError("bad media track")
        payload = media.get("payload")
        if type(payload) is not str:
            raise ProtocolError("missing payload")
        if (
            not payload
            or len(payload) > MAX_PAYLOAD_CHARS
            or len(payload) % 4
            or _BASE64.fullmatch(payload) is None
        ):
            raise ProtocolError("bad payload")
        return [AudioChunk(payload, PCMU_8K, decimal_number(media.get("timestamp"), "timestamp"))]

    def _start(self, message: dict[str, object]) -> StreamStarted:
        if self._state is not TwilioState.AWAITING_START:
            raise ProtocolError("unexpected start")
        start = object_field(message, "start")
        stream_sid = string_field(start, "streamSid")
        outer = message.get("streamSid")
        if outer is not None and outer != stream_sid:
            raise ProtocolError("streamSid mismatch")
        call_sid = string_field(start, "callSid")
        account_sid = string_field(start, "accountSid")

        media_format = object_field(start, "mediaFormat")
        if (
            media_format.get("encoding") != "audio/x-mulaw"
            or json_integer(media_format.get("sampleRate")) != 8000
            or json_integer(media_format.get("channels")) != 1
        ):
            raise ProtocolError("unsupported media format")

        tracks = start.get("tracks", [])
        if type(tracks) is not list or not all(
            type(t) is str and len(t) <= MAX_FIELD_CHARS for t in tracks
        ):
            raise ProtocolError("bad tracks")

        parameters = string_parameters(start.get("customParameters"), "customParameters")
        # The stream token is a credential: it travels in auth_token, never in the parameters.
        token = parameters.pop(_TOKEN_PARAMETER, None)

        self._stream_sid = stream_sid
        self._state = TwilioState.STREAMING
        return StreamStarted(
            stream_id=stream_sid,
            call_id=call_sid,
            format=PCMU_8K,
            account_id=account_sid,
            tracks=tuple(tracks),
            custom_parameters=MappingProxyType(parameters),
            auth_token=token,
        )

    def _check_stream(self, message: dict[str, object]) -> None:
        if self._state is not TwilioState.STREAMING:
            raise ProtocolError(
                "frame before start"
                if self._state is TwilioState.AWAITING_START
                else "frame after stop"
            )
        sid = message.get("streamSid")
        if sid != self._stream_sid:
            raise ProtocolError("missing streamSid" if sid is None else "streamSid mismatch")


# -- field readers (every failure is a short, payload-free reason) ------------------------------
