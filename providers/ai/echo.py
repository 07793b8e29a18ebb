"""The ``echo`` provider: an in-process agent that plays the caller back, for development and tests.

No key, no socket, G.711 mu-law 8 kHz both ways (the zero-transcode path). Behaviour:

* ``connect()`` succeeds at once and ``recv()`` first yields :class:`AgentReady`.
* Every inbound :class:`AudioChunk` comes back unchanged (the same payload string)
  ``delay_ms`` later, tagged with the ``item_id`` of the caller's current utterance
  (``"echo-<n>"``). Silence is echoed too, so a caller hears a constant-delay mirror.
* A crude level detector marks utterances, so the bridge's barge-in path can be exercised: a
  chunk is *loud* when its mean absolute sample exceeds ``threshold`` (of 32767). The first
  loud chunk after at least ``silence_ms`` of quiet starts a new utterance and yields
  :class:`SpeechStarted` at once (not delayed), as a provider's VAD would. When the echo of an
  utterance's last loud chunk has been played and ``silence_ms`` of quiet followed it,
  :class:`ResponseDone` follows.
* :class:`Interrupt` drops every queued echo of earlier utterances (the "response" the caller
  talked over); audio of the current utterance keeps flowing. ``Hangup`` closes the session;
  ``KeepAlive`` is ignored.
* Tools, for demos and tests of the agent side without a model: DTMF digit ``n`` (``1`` to
  ``9``) calls the ``n``-th tool of ``config.tools``, if there are that many, at once:
  :class:`ToolCall` ``(call_id="echo_<k>", name=<tool name>, arguments=<JSON object>)``,
  ``k`` counting the calls of the session from 1. The arguments give each *required*
  property of the tool's schema its first ``enum`` value, else its ``default``, else an empty
  value of its type (``""``, ``0``, ``false``, ``[]``, ``{}``; ``null`` for no or an unknown
  type); optional properties are left out. Other digits are ignored. A :class:`ToolResult` is
  accepted and remembered (``EchoAgent.tool_results``, the latest 64) and sends nothing.

:class:`EchoAgent` is the sans-I/O core (time is passed in); :class:`EchoSession` is the thin
asyncio shell with the ``AgentSession`` interface.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import heapq
import logging
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, assert_never

import orjson

from providers.ai.config import AgentConfig, Function
from providers.events import (
    PCMU_8K,
    AgentEvent,
    AgentReady,
    AudioChunk,
    AudioFormat,
    Dtmf,
    Hangup,
    Interrupt,
    KeepAlive,
    ResponseDone,
    SpeechStarted,
    ToAgent,
    ToolCall,
    ToolResult,
)
from providers.exceptions import SessionClosed

logger = logging.getLogger("voicegw.providers")


def _ulaw_magnitude(byte: int) -> int:
    """Absolute linear value (0..32124) of one G.711 mu-law byte."""
    u = ~byte & 0xFF
    exponent = (u >> 4) & 0x07
    mantissa = u & 0x0F
    return (((mantissa << 3) + 0x84) << exponent) - 0x84


ULAW_ABS: Final[tuple[int, ...]] = tuple(_ulaw_magnitude(b) for b in range(256))


def mean_level(ulaw: bytes) -> float:
    """Mean absolute sample value of mu-law audio, 0 for empty input."""
    if not ulaw:
        return 0.0
    return sum(ULAW_ABS[b] for b in ulaw) / len(ulaw)


_EMPTY: Final[Mapping[str, Any]] = {
    "string": "",
    "integer": 0,
    "number": 0,
    "boolean": False,
    "array": [],
    "object": {},
    "null": None,
}


def sample_arguments(parameters: Mapping[str, Any]) -> dict[str, Any]:
    """Arguments for a tool with the JSON Schema ``parameters``: each required property gets
    its first ``enum`` value, else its ``default``, else the empty value of its type."""
    properties = parameters.get("properties")
    properties = properties if isinstance(properties, Mapping) else {}
    required = parameters.get("required")
    arguments: dict[str, Any] = {}
    for name in required if isinstance(required, list) else []:
        if not isinstance(name, str):
            continue
        schema = properties.get(name)
        arguments[name] = _sample(schema if isinstance(schema, Mapping) else {})
    return arguments


def _sample(schema: Mapping[str, Any]) -> Any:
    enum = schema.get("enum")
    if isinstance(enum, list) and enum:
        return enum[0]
    if "default" in schema:
        return schema["default"]
    kind = schema.get("type")
    if isinstance(kind, list):  # ["string", "null"]: the first non-null type
        kind = next((k for k in kind if k != "null"), "null")
    empty = _EMPTY.get(kind) if isinstance(kind, str) else None
    # A fresh copy: the list and dict of the table are shared.
    return type(empty)() if isinstance(empty, list | dict) else empty


@dataclass(order=True, slots=True)
class _Due:
    at: float
    seq: int
    utterance: int = field(compare=False)
    event: AgentEvent = field(compare=False)


class EchoAgent:
    """Sans-I/O echo agent. Feed inbound events with :meth:`receive` (returns immediate
    events); collect delayed events with :meth:`poll` once :meth:`next_due` has passed."""

    def __init__(
        self,
        *,
        delay_ms: int = 500,
        silence_ms: int = 400,
        threshold: float = 500.0,
        tools: Sequence[Function] = (),
    ) -> None:
        self.delay_s = delay_ms / 1000
        self.silence_s = silence_ms / 1000
        self.threshold = threshold
        self.utterance = 0
        self.closed = False
        self._queue: list[_Due] = []
        self._seq = 0
        self._loud_until: float | None = None  # end of the last loud chunk (input time)
        self._last_loud_echo: float | None = None  # when that chunk's echo plays
        self._min_utterance = 0  # echoes of earlier utterances are dropped
        self.tools = tuple(tools)
        self.tool_calls = 0
        """Tool calls made so far (``k`` of the latest ``echo_<k>``)."""
        self.tool_results: deque[ToolResult] = deque(maxlen=64)
        """The latest tool results received, oldest first."""

    def receive(self, event: ToAgent, now: float) -> list[AgentEvent]:
        match event:
            case AudioChunk():
                return self._audio(event, now)
            case Interrupt():
                self._min_utterance = self.utterance
                self._queue = [d for d in self._queue if d.utterance >= self.utterance]
                heapq.heapify(self._queue)
                return []
            case Hangup():
                self.closed = True
                return []
            case Dtmf(digit=digit):
                return self._tool_call(digit)
            case ToolResult():
                self.tool_results.append(event)
                return []
            case KeepAlive():
                return []
            case _:
                assert_never(event)

    def _tool_call(self, digit: str) -> list[AgentEvent]:
        if len(digit) != 1 or not "1" <= digit <= "9" or int(digit) > len(self.tools):
            return []
        tool = self.tools[int(digit) - 1]
        self.tool_calls += 1
        arguments = orjson.dumps(sample_arguments(tool.parameters)).decode()
        return [ToolCall(f"echo_{self.tool_calls}", tool.name, arguments)]

    def _audio(self, chunk: AudioChunk, now: float) -> list[AgentEvent]:
        events: list[AgentEvent] = []
        try:
            level = mean_level(base64.b64decode(chunk.payload, validate=True))
        except (binascii.Error, ValueError):
            level = 0.0  # not audio we can measure: echo it, never call it speech
        if level > self.threshold:
            if self._loud_until is None or now - self._loud_until >= self.silence_s:
                self.utterance += 1
                events.append(SpeechStarted())
            self._loud_until = now + chunk.duration_ms / 1000
            self._last_loud_echo = now + self.delay_s
        item_id = f"echo-{self.utterance}"
        self._push(now + self.delay_s, AudioChunk(chunk.payload, chunk.format, item_id=item_id))
        return events

    def _push(self, at: float, event: AgentEvent) -> None:
        self._seq += 1
        heapq.heappush(self._queue, _Due(at, self._seq, self.utterance, event))

    @property
    def pending(self) -> int:
        """Number of queued echoes."""
        return len(self._queue)

    def next_due(self) -> float | None:
        """When the next delayed event is due (input clock), ``None`` if nothing is pending."""
        due = self._queue[0].at if self._queue else None
        if self._last_loud_echo is not None:
            done_at = self._last_loud_echo + self.silence_s
            due = done_at if due is None else min(due, done_at)
        return due

    def poll(self, now: float) -> list[AgentEvent]:
        """Delayed events due at ``now``, in order."""
        events: list[AgentEvent] = []
        while self._queue and self._queue[0].at <= now:
            due = heapq.heappop(self._queue)
            if due.utterance >= self._min_utterance:
                events.append(due.event)
        if self._last_loud_echo is not None and now >= self._last_loud_echo + self.silence_s:
            self._last_loud_echo = None
            if self.utterance >= self._min_utterance and self.utterance > 0:
                events.append(ResponseDone())
        return events


class EchoSession:
    """``AgentSession`` around :class:`EchoAgent`; no I/O beyond the event loop's clock."""

    provider: str = "echo"
    input_format: AudioFormat = PCMU_8K
    output_format: AudioFormat = PCMU_8K

    def __init__(self, config: AgentConfig | None = None, *, max_pending: int = 2000) -> None:
        delay_ms = config.echo_delay_ms if config is not None else 500
        tools = config.tools if config is not None else ()
        self.agent = EchoAgent(delay_ms=delay_ms, tools=tools)
        self._ready: list[AgentEvent] = []
        self._wake = asyncio.Event()
        self._connected = False
        self._closed = False
        self._max_pending = max_pending

    async def connect(self) -> None:
        if self._connected:
            raise RuntimeError("connect() called twice")
        self._connected = True
        self._ready.append(AgentReady())
        logger.info("agent session ready", extra={"provider": self.provider})

    async def send(self, event: ToAgent) -> None:
        if self._closed or self.agent.closed:
            raise SessionClosed("closed", abnormal=False)
        if not self._connected:
            raise RuntimeError("send() before connect()")
        if self.agent.pending >= self._max_pending and isinstance(event, AudioChunk):
            return  # nobody is reading: drop rather than grow without bound
        now = asyncio.get_running_loop().time()
        self._ready.extend(self.agent.receive(event, now))
        if self.agent.closed:
            self._closed = True
        self._wake.set()

    async def recv(self) -> AgentEvent:
        loop = asyncio.get_running_loop()
        while True:
            if self._ready:
                return self._ready.pop(0)
            if self._closed:
                raise SessionClosed("closed", abnormal=False)
            self._ready.extend(self.agent.poll(loop.time()))
            if self._ready:
                continue
            due = self.agent.next_due()
            self._wake.clear()
            timeout = None if due is None else max(0.0, due - loop.time())
            try:
                async with asyncio.timeout(timeout):
                    await self._wake.wait()
            except TimeoutError:
                pass

    async def close(self) -> None:
        self._closed = True
        self._wake.set()
