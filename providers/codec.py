"""The two codec shapes every wire protocol implements (sans-I/O: no sockets, no asyncio).

Call order for a carrier codec: ``feed`` each received frame, in arrival order; ``encode`` an
outbound event whenever one is ready. For an agent codec: send ``start()``'s frames first, then
``feed`` / ``encode`` as for a carrier. ``feed`` raises ``ProtocolError`` for a frame it cannot
parse and stays usable afterwards (the caller counts and drops the frame).
"""

from __future__ import annotations

from typing import Protocol

from providers.events import AgentEvent, AudioFormat, CarrierEvent, ToAgent, ToCarrier

Frame = str | bytes
"""A WebSocket message: ``str`` for a text frame, ``bytes`` for a binary frame."""


class CarrierCodec(Protocol):
    carrier: str

    def feed(self, frame: Frame) -> list[CarrierEvent]: ...

    def encode(self, event: ToCarrier) -> str: ...


class AgentCodec(Protocol):
    provider: str
    input_format: AudioFormat
    """What the agent wants to receive (to_agent audio)."""
    output_format: AudioFormat
    """What the agent sends (from_agent audio)."""

    def start(self) -> list[Frame]: ...

    def feed(self, frame: Frame) -> list[AgentEvent]: ...

    def encode(self, event: ToAgent) -> list[Frame]: ...
