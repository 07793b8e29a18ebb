"""Typed events exchanged between carrier codecs, the Bridge and provider codecs.

Directions are named once: ``from_carrier`` / ``to_carrier`` for the telephony side,
``from_agent`` / ``to_agent`` for the AI-provider side. Every codec turns wire frames into these
events (``feed``) and these events into wire frames (``encode``); none of them does I/O.

Audio travels as base64 text, exactly as Twilio, Telnyx, OpenAI and Gemini put it on the wire,
so the zero-transcode fast path forwards it without decoding. Binary protocols (Deepgram) use
``AudioChunk.from_bytes`` / ``AudioChunk.to_bytes``.
"""

from __future__ import annotations

import base64
import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final, NewType

CallId = NewType("CallId", str)
"""The gateway's own identifier of a call (never a carrier's)."""
CallSid = NewType("CallSid", str)
StreamSid = NewType("StreamSid", str)


class Encoding(enum.StrEnum):
    PCMU = "pcmu"  # G.711 mu-law
    PCMA = "pcma"  # G.711 A-law
    PCM16 = "pcm16"  # signed 16-bit little-endian linear PCM


@dataclass(frozen=True, slots=True)
class AudioFormat:
    encoding: Encoding
    sample_rate: int

    @property
    def bytes_per_second(self) -> int:
        width = 2 if self.encoding is Encoding.PCM16 else 1
        return width * self.sample_rate


PCMU_8K = AudioFormat(Encoding.PCMU, 8000)
PCMA_8K = AudioFormat(Encoding.PCMA, 8000)
PCM16_8K = AudioFormat(Encoding.PCM16, 8000)
PCM16_16K = AudioFormat(Encoding.PCM16, 16000)
PCM16_24K = AudioFormat(Encoding.PCM16, 24000)


# -- events shared by both sides -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AudioChunk:
    """Audio in ``format``; ``payload`` is base64 text as carried on the wire.

    ``item_id`` is the provider's id of the response item the audio belongs to (OpenAI), used
    for truncation on barge-in. ``timestamp_ms`` is the carrier's media timestamp when known.
    """

    payload: str
    format: AudioFormat
    timestamp_ms: int | None = None
    item_id: str | None = None

    @classmethod
    def from_bytes(
        cls, data: bytes, format: AudioFormat, *, item_id: str | None = None
    ) -> AudioChunk:
        return cls(base64.b64encode(data).decode("ascii"), format, item_id=item_id)

    def to_bytes(self) -> bytes:
        return base64.b64decode(self.payload)

    @property
    def duration_ms(self) -> float:
        """Duration computed from the base64 length, without decoding."""
        n = len(self.payload)
        raw = n * 3 // 4 - self.payload.endswith("=") - self.payload.endswith("==")
        return raw * 1000 / self.format.bytes_per_second


@dataclass(frozen=True, slots=True)
class Mark:
    """A named point in outbound audio. To the carrier: ask to be told when it has played.
    From the carrier: that point has been played to the caller."""

    name: str


DTMF_DIGITS: Final = frozenset("0123456789*#ABCD")
"""The sixteen DTMF keys; a ``Dtmf`` carries one of them."""


@dataclass(frozen=True, slots=True)
class Dtmf:
    digit: str


@dataclass(frozen=True, slots=True)
class Clear:
    """To the carrier: drop all audio buffered but not yet played."""


@dataclass(frozen=True, slots=True)
class Hangup:
    """The side that emits it has ended the call / session."""

    reason: str = "normal"


@dataclass(frozen=True, slots=True)
class Error:
    """A protocol or peer error. ``fatal`` errors end the session; others are counted.

    ``message`` is for operators and may carry peer text; it is never sent to a peer.
    """

    code: str
    message: str = ""
    fatal: bool = False


# -- from_carrier only -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StreamConnected:
    """The carrier opened the media stream (Twilio/Telnyx ``connected``)."""

    auth_token: str | None = None


@dataclass(frozen=True, slots=True)
class StreamStarted:
    """The carrier announced the stream (``start``): ids, parameters and the audio format."""

    stream_id: str
    call_id: str  # carrier's call id: Twilio CallSid, Telnyx call_control_id
    format: AudioFormat
    account_id: str | None = None
    from_number: str | None = None
    to_number: str | None = None
    tracks: tuple[str, ...] = ()
    custom_parameters: Mapping[str, str] = field(default_factory=dict)
    auth_token: str | None = None


@dataclass(frozen=True, slots=True)
class StreamStopped:
    reason: str = "stop"


# -- from_agent only -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AgentReady:
    """The provider accepted the session setup (OpenAI session.updated, Deepgram
    SettingsApplied, Gemini setupComplete); audio may flow."""


@dataclass(frozen=True, slots=True)
class SpeechStarted:
    """The provider's VAD heard the caller start speaking: barge-in."""


@dataclass(frozen=True, slots=True)
class ResponseDone:
    """The agent finished a turn of audio."""


@dataclass(frozen=True, slots=True)
class Transcript:
    """Text of a turn. Personal data: never logged, never a metric label."""

    role: str  # "user" | "agent"
    text: str


@dataclass(frozen=True, slots=True)
class GoAway:
    """The provider will close the session soon (Gemini ``goAway``); reconnect and resume."""

    time_left_ms: int | None = None


@dataclass(frozen=True, slots=True)
class ResumptionHandle:
    """Latest session-resumption handle (Gemini ``sessionResumptionUpdate``)."""

    handle: str


@dataclass(frozen=True, slots=True)
class ToolCall:
    """The model calls tool ``name``. ``call_id`` is the provider's id of the call, echoed in
    its :class:`ToolResult`; ``arguments`` is JSON text exactly as the provider sent it (the
    model wrote it: unchecked, personal data, never logged)."""

    call_id: str
    name: str
    arguments: str


@dataclass(frozen=True, slots=True)
class ToolCancelled:
    """The provider withdrew tool calls it had made (Gemini ``toolCallCancellation``): their
    results must not be sent."""

    call_ids: tuple[str, ...]


# -- to_agent only ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Interrupt:
    """To the agent: the caller barged in. Cancel the response and, where the protocol can,
    truncate item ``item_id`` at ``played_ms`` (the audio the caller actually heard)."""

    item_id: str | None = None
    played_ms: int = 0


@dataclass(frozen=True, slots=True)
class ToolResult:
    """To the agent: the output of tool call ``call_id`` (named ``name``), as JSON text. The
    provider's codec sends it and asks the model to go on speaking."""

    call_id: str
    name: str
    output: str


@dataclass(frozen=True, slots=True)
class KeepAlive:
    """To the agent: keep an idle session open (Deepgram ``KeepAlive``)."""


CarrierEvent = StreamConnected | StreamStarted | AudioChunk | Dtmf | Mark | StreamStopped | Error
AgentEvent = (
    AgentReady
    | AudioChunk
    | SpeechStarted
    | ResponseDone
    | Transcript
    | GoAway
    | ResumptionHandle
    | ToolCall
    | ToolCancelled
    | Hangup
    | Error
)
ToCarrier = AudioChunk | Mark | Clear
ToAgent = AudioChunk | Dtmf | Interrupt | ToolResult | KeepAlive | Hangup
