"""Telnyx media streaming codec (sans-I/O).

Wire format: https://developers.telnyx.com/api-reference/websockets/stream-call-media-over-websocket
(AsyncAPI "Stream call media over WebSocket"). Numbers such as ``sequence_number``, ``chunk``
and ``timestamp`` are strings on the wire.

from_carrier::

    {"event": "connected", "version": "1.0.0",
     "connected": {"x-telnyx-streaming-auth-token": "..."}}        # token only when configured
    {"event": "start", "sequence_number": "1", "stream_id": "32DE...",
     "start": {"user_id": "...", "call_control_id": "v3:...", "call_session_id": "...",
               "from": "+1...", "to": "+1...", "client_state": "...",
               "custom_parameters": {"k": "v"},
               "media_format": {"encoding": "PCMU", "sample_rate": 8000, "channels": 1}}}
    {"event": "media", "sequence_number": "4", "stream_id": "32DE...",
     "media": {"track": "inbound", "chunk": "2", "timestamp": "5", "payload": "<base64>"}}
    {"event": "dtmf", "sequence_number": "5", "stream_id": "32DE...", "dtmf": {"digit": "1"}}
    {"event": "mark", "sequence_number": "6", "stream_id": "32DE...", "mark": {"name": "..."}}
    {"event": "error", "sequence_number": "7", "stream_id": "32DE...",
     "payload": {"code": 100002, "title": "Unknown error", "detail": "..."}}
    {"event": "stop", "sequence_number": "8", "stream_id": "32DE...",
     "stop": {"user_id": "...", "call_control_id": "v3:..."}}

to_carrier (``stream_bidirectional_mode: "rtp"``; RTP payload without headers, 20 ms to 30 s
per frame, in the codec ``start`` announced)::

    {"event": "media", "media": {"payload": "<base64>"}}
    {"event": "mark", "mark": {"name": "..."}}
    {"event": "clear"}

Telnyx does not guarantee media order. Inbound media is reordered by ``media.chunk`` in a small
bounded window (see ``TelnyxCodec``); duplicates are dropped.

The stream auth token (``stream_auth_token`` of the answer / dial / streaming_start command) is
sent by Telnyx as the ``x-telnyx-streaming-auth-token`` header of the WebSocket upgrade and in
the ``connected`` frame as ``connected["x-telnyx-streaming-auth-token"]``. The codec surfaces
the frame copy in ``StreamConnected.auth_token`` and ``StreamStarted.auth_token``; checking the
upgrade header is the I/O layer's job.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Final, Literal, NotRequired, TypedDict, assert_never

import orjson

from providers.codec import Frame
from providers.events import (
    PCMA_8K,
    PCMU_8K,
    AudioChunk,
    AudioFormat,
    CarrierEvent,
    Clear,
    Dtmf,
    Error,
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
    optional_string_field,
    string_field,
    string_parameters,
)

__all__ = [
    "DEFAULT_REORDER_WINDOW",
    "MAX_FRAME_CHARS",
    "MAX_PAYLOAD_CHARS",
    "RECOVERABLE_ERROR_CODES",
    "ReorderStats",
    "TelnyxCodec",
    "TelnyxState",
    "UnsupportedMediaFormat",
]

MAX_FRAME_CHARS: Final = 64 * 1024
"""Largest text frame ``feed`` parses."""
MAX_PAYLOAD_CHARS: Final = 16 * 1024
"""Largest base64 media payload accepted from Telnyx (about 1.5 s of G.711)."""
MAX_TOKEN_CHARS: Final = 4000
"""Telnyx's documented limit for ``stream_auth_token``."""
MAX_CHUNK_JUMP: Final = 500
"""A media chunk more than this far ahead of the expected one (10 s of 20 ms frames) is
rejected instead of buffered, so one bad number cannot make every later frame look late."""
DEFAULT_REORDER_WINDOW: Final = 3
"""Media frames held while waiting for a missing one (60 ms at 20 ms per frame)."""
MIN_OUTBOUND_MS: Final = 20.0
MAX_OUTBOUND_MS: Final = 30_000.0

RECOVERABLE_ERROR_CODES: Final = frozenset({"100003", "100004", "100005"})
"""Telnyx stream errors about one frame we sent (malformed frame, invalid media, MP3 rate
limit); the stream goes on. Every other error code is treated as fatal."""

_BASE64: Final = re.compile(r"[A-Za-z0-9+/]*={0,2}")
_CODEC_NAME: Final = re.compile(r"[A-Za-z0-9_\-]{1,16}")
_TOKEN_FIELD: Final = "x-telnyx-streaming-auth-token"  # noqa: S105 (a field name)
_FORMATS: Final[Mapping[str, AudioFormat]] = {"PCMU": PCMU_8K, "PCMA": PCMA_8K}
_INBOUND_TRACKS: Final = frozenset({"inbound", "inbound_track"})
_OUTBOUND_TRACKS: Final = frozenset({"outbound", "outbound_track"})


class UnsupportedMediaFormat(ProtocolError):
    """A well-formed ``start`` announced audio the gateway cannot carry (G722, OPUS, L16,
    another rate...). Unlike other protocol errors it names the call, so the I/O layer can
    end it rather than leave the caller on a silent line: ``call_id`` is the
    ``call_control_id``, ``codec`` a short label of what was announced (safe to log)."""

    def __init__(self, call_id: str, stream_id: str, codec: str) -> None:
        super().__init__("unsupported media format")
        self.call_id = call_id
        self.stream_id = stream_id
        self.codec = codec


# -- raw carrier JSON --------------------------------------------------------------------------


class TelnyxMediaFormat(TypedDict):
    encoding: str
    sample_rate: int
    channels: int


class TelnyxStartBody(TypedDict):
    call_control_id: str
    media_format: TelnyxMediaFormat
    user_id: NotRequired[str]
    call_session_id: NotRequired[str]
    client_state: NotRequired[str]
    custom_parameters: NotRequired[dict[str, str]]
    tags: NotRequired[list[str]]


class TelnyxMediaBody(TypedDict):
    track: str
    chunk: str
    timestamp: str
    payload: str


class TelnyxErrorBody(TypedDict):
    code: int | str
    title: str
    detail: str


class TelnyxOutboundMediaBody(TypedDict):
    payload: str


class TelnyxMarkBody(TypedDict):
    name: str


class TelnyxOutboundMedia(TypedDict):
    event: Literal["media"]
    media: TelnyxOutboundMediaBody


class TelnyxOutboundMark(TypedDict):
    event: Literal["mark"]
    mark: TelnyxMarkBody


class TelnyxOutboundClear(TypedDict):
    event: Literal["clear"]


# -- codec -------------------------------------------------------------------------------------


class TelnyxEvent(enum.StrEnum):
    MEDIA = "media"
    CONNECTED = "connected"
    START = "start"
    DTMF = "dtmf"
    MARK = "mark"
    ERROR = "error"
    STOP = "stop"


_EVENTS: Final[Mapping[str, TelnyxEvent]] = {e.value: e for e in TelnyxEvent}


class TelnyxState(enum.Enum):
    AWAITING_START = enum.auto()
    STREAMING = enum.auto()
    STOPPED = enum.auto()


@dataclass(frozen=True, slots=True)
class ReorderStats:
    """Counters of the inbound media reorder window."""

    reordered: int = 0
    """Frames that arrived ahead of a missing one and were held, then released in order."""
    gaps: int = 0
    """Chunks never received: skipped when the window overflowed or the stream ended."""
    dropped: int = 0
    """Frames dropped as duplicates or because they came after their slot was passed."""


class TelnyxCodec:
    """Telnyx media streaming: frames from Telnyx in, typed events out, and back.

    Call ``feed`` for every frame received, in arrival order. Inbound audio is released in
    ``media.chunk`` order: a frame that arrives ahead of a missing one is held, at most
    ``reorder_window`` frames are held, and when one more arrives the codec stops waiting,
    counts the gap and releases what it holds. ``stop``, a fatal ``error`` and ``flush()``
    release everything held. The decoded format is the one ``start`` announces (PCMU or PCMA,
    8 kHz mono); any other raises ``UnsupportedMediaFormat``.

    ``encode`` sends audio in the format ``start`` announced (or ``outbound_format`` when
    given) and refuses audio in any other format, before ``start``, or shorter than 20 ms.
    """

    carrier = "telnyx"

    __slots__ = (
        "_auth_token",
        "_format",
        "_held",
        "_next_chunk",
        "_outbound_format",
        "_state",
        "_stats",
        "_stream_id",
        "_window",
    )

    def __init__(
        self,
        *,
        outbound_format: AudioFormat | None = None,
        reorder_window: int = DEFAULT_REORDER_WINDOW,
    ) -> None:
        if outbound_format not in (None, PCMU_8K, PCMA_8K):
            raise ValueError("outbound_format must be PCMU_8K or PCMA_8K")
        if reorder_window < 0:
            raise ValueError("reorder_window must be >= 0")
        self._outbound_format = outbound_format
        self._window = reorder_window
        self._state = TelnyxState.AWAITING_START
        self._stream_id: str | None = None
        self._format: AudioFormat | None = None
        self._auth_token: str | None = None
        self._next_chunk: int | None = None
        self._held: dict[int, AudioChunk] = {}
        self._stats = ReorderStats()

    @property
    def state(self) -> TelnyxState:
        return self._state

    @property
    def stream_id(self) -> str | None:
        """The ``stream_id`` announced by ``start``, or ``None`` before it."""
        return self._stream_id

    @property
    def format(self) -> AudioFormat | None:
        """The inbound audio format announced by ``start``, or ``None`` before it."""
        return self._format

    @property
    def outbound_format(self) -> AudioFormat | None:
        """The format ``encode`` sends audio in: ``outbound_format`` if one was given, else
        the one ``start`` announced (``None`` before it)."""
        return self._outbound_format or self._format

    @property
    def reorder_stats(self) -> ReorderStats:
        return self._stats

    def feed(self, frame: Frame) -> list[CarrierEvent]:
        """Parse one WebSocket frame; return the events now ready (zero, one or several).

        Raises ``ProtocolError`` for a frame that is binary, too large, not JSON, of an
        unknown event, malformed, out of order, or for another stream; a rejected frame
        leaves the codec's state unchanged, so the caller can count it and carry on. A
        ``start`` in a format the gateway cannot carry raises ``UnsupportedMediaFormat``.
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
        seq = message.get("sequence_number")
        if seq is not None:
            decimal_number(seq, "sequence_number")

        match event:
            case TelnyxEvent.MEDIA:
                return self._media(message)
            case TelnyxEvent.CONNECTED:
                return [self._connected(message)]
            case TelnyxEvent.START:
                return [self._start(message)]
            case TelnyxEvent.DTMF:
                self._check_stream(message)
                digit = string_field(object_field(message, "dtmf"), "digit")
                if digit not in DTMF_DIGITS:
                    raise ProtocolError("bad dtmf digit")
                return [Dtmf(digit)]
            case TelnyxEvent.MARK:
                self._check_stream(message)
                return [Mark(string_field(object_field(message, "mark"), "name"))]
            case TelnyxEvent.ERROR:
                return self._error(message)
            case TelnyxEvent.STOP:
                self._check_stream(message)
                events = self.flush()
                self._state = TelnyxState.STOPPED
                events.append(StreamStopped())
                return events
            case _:
                assert_never(event)

    def flush(self) -> list[CarrierEvent]:
        """Release every held media frame in order, counting the chunks still missing.

        For the I/O layer when the stream goes quiet; ``stop`` calls it too.
        """
        if not self._held:
            return []
        events: list[CarrierEvent] = []
        skipped = 0
        expected = self._next_chunk
        for chunk in sorted(self._held):
            # Chunks are held only once the first one set the expected number.
            skipped += chunk - (chunk if expected is None else expected)
            events.append(self._held[chunk])
            expected = chunk + 1
        self._next_chunk = expected
        self._held.clear()
        self._count(gaps=skipped)
        return events

    def encode(self, event: ToCarrier) -> str:
        """Serialise an outbound event as a text frame for Telnyx.

        Raises ``ProtocolError`` for audio not in ``outbound_format`` (so also before
        ``start``) or outside the 20 ms to 30 s Telnyx plays per frame.
        """
        message: TelnyxOutboundMedia | TelnyxOutboundMark | TelnyxOutboundClear
        match event:
            case AudioChunk():
                if event.format != self.outbound_format:
                    raise ProtocolError("audio format differs from the stream's codec")
                if not MIN_OUTBOUND_MS <= event.duration_ms <= MAX_OUTBOUND_MS:
                    raise ProtocolError("audio frame must hold 20 ms to 30 s")
                message = {"event": "media", "media": {"payload": event.payload}}
            case Mark():
                message = {"event": "mark", "mark": {"name": event.name}}
            case Clear():
                message = {"event": "clear"}
            case _:
                assert_never(event)
        return orjson.dumps(message).decode()

    # -- inbound messages ----------------------------------------------------------------------

    def _media(self, message: dict[str, object]) -> list[CarrierEvent]:
        # The hot path: checks only, no decoding, no copies of the payload.
        self._check_stream(message)
        media = message.get("media")
        if type(media) is not dict:
            raise ProtocolError("missing media")
        track = media.get("track")
        if type(track) is not str:  # a list or object would not even hash
            raise ProtocolError("bad media track")
        if track not in _INBOUND_TRACKS:
            if track in _OUTBOUND_TRACKS:
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
        chunk = decimal_number(media.get("chunk"), "chunk")
        if chunk is None:
            raise ProtocolError("missing chunk")
        timestamp = decimal_number(media.get("timestamp"), "timestamp")
        if self._format is None:
            raise ProtocolError("media before start")
        return self._reorder(chunk, AudioChunk(payload, self._format, timestamp))

    def _reorder(self, chunk: int, audio: AudioChunk) -> list[CarrierEvent]:
        expected = self._next_chunk
        if expected is None:
            expected = chunk
        elif chunk < expected or chunk in self._held:
            self._count(dropped=1)
            return []
        elif chunk - expected > MAX_CHUNK_JUMP:
            raise ProtocolError("chunk out of range")

        if chunk != expected:
            self._held[chunk] = audio
            if len(self._held) <= self._window:
                return []
            # Waited long enough: give up on the missing chunks before the earliest held one.
            first = min(self._held)
            self._count(gaps=first - expected)
            expected = first
            audio = self._held.pop(first)
        events: list[CarrierEvent] = [audio]
        expected += 1
        while expected in self._held:
            events.append(self._held.pop(expected))
            self._count(reordered=1)
            expected += 1
        self._next_chunk = expected
        return events

    def _count(self, *, reordered: int = 0, gaps: int = 0, dropped: int = 0) -> None:
        s = self._stats
        self._stats = ReorderStats(s.reordered + reordered, s.gaps + gaps, s.dropped + dropped)

    def _connected(self, message: dict[str, object]) -> StreamConnected:
        if self._state is not TelnyxState.AWAITING_START or self._stream_id is not None:
            raise ProtocolError("unexpected connected")
        token: str | None = None
        body = message.get("connected")
        if body is not None:
            if type(body) is not dict:
                raise ProtocolError("bad connected")
            value = body.get(_TOKEN_FIELD)
            if value is not None:
                if type(value) is not str or not 0 < len(value) <= MAX_TOKEN_CHARS:
                    raise ProtocolError("bad auth token")
                token = value
        self._auth_token = token
        return StreamConnected(auth_token=token)

    def _start(self, message: dict[str, object]) -> StreamStarted:
        if self._state is not TelnyxState.AWAITING_START:
            raise ProtocolError("unexpected start")
        stream_id = string_field(message, "stream_id")
        start = object_field(message, "start")
        call_control_id = string_field(start, "call_control_id")
        user_id = optional_string_field(start, "user_id")
        from_number = optional_string_field(start, "from")
        to_number = optional_string_field(start, "to")

        media_format = object_field(start, "media_format")
        encoding = media_format.get("encoding")
        rate = json_integer(media_format.get("sample_rate"))
        channels = json_integer(media_format.get("channels", 1))
        audio_format = _FORMATS.get(encoding) if type(encoding) is str else None
        if audio_format is None or rate != 8000 or channels != 1:
            name = encoding if type(encoding) is str and _CODEC_NAME.fullmatch(encoding) else "?"
            # Only short, bounded parts of the peer's values reach the label.
            hz = str(rate) if rate is not None and 0 < rate <= 384_000 else "?"
            label = f"{name}/{hz}/{channels if channels is not None and 0 < channels <= 8 else '?'}"
            raise UnsupportedMediaFormat(call_control_id, stream_id, label)

        parameters = string_parameters(start.get("custom_parameters"), "custom_parameters")

        self._stream_id = stream_id
        self._format = audio_format
        self._state = TelnyxState.STREAMING
        return StreamStarted(
            stream_id=stream_id,
            call_id=call_control_id,
            format=audio_format,
            account_id=user_id,
            from_number=from_number,
            to_number=to_number,
            custom_parameters=MappingProxyType(parameters),
            auth_token=self._auth_token,
        )

    def _error(self, message: dict[str, object]) -> list[CarrierEvent]:
        if self._state is TelnyxState.STOPPED:
            raise ProtocolError("frame after stop")
        sid = message.get("stream_id")
        if sid is not None and self._stream_id is not None and sid != self._stream_id:
            raise ProtocolError("stream_id mismatch")
        body = object_field(message, "payload")
        raw_code = body.get("code")
        if type(raw_code) is int:
            code = str(raw_code)
        elif type(raw_code) is str and 0 < len(raw_code) <= 32:
            code = raw_code
        else:
            raise ProtocolError("bad error code")
        title = optional_string_field(body, "title") or ""
        detail = body.get("detail")
        text = detail[:MAX_FIELD_CHARS] if type(detail) is str else ""
        fatal = code not in RECOVERABLE_ERROR_CODES
        events = self.flush() if fatal else []
        events.append(Error(code=code, message=f"{title}: {text}" if text else title, fatal=fatal))
        return events

    def _check_stream(self, message: dict[str, object]) -> None:
        if self._state is not TelnyxState.STREAMING:
            raise ProtocolError(
                "frame before start"
                if self._state is TelnyxState.AWAITING_START
                else "frame after stop"
            )
        # Telnyx puts stream_id on every frame after start; tolerate its absence, not a change.
        sid = message.get("stream_id")
        if sid is not None and sid != self._stream_id:
            raise ProtocolError("stream_id mismatch")


# -- field readers (every failure is a short, payload-free reason) ------------------------------
