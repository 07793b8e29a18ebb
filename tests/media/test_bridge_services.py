"""A Bridge built with fakes for exactly the services it uses (no runtime, no Redis, no store),
and the pure bookkeeping beside it: marks and the inbound flood gate.

The call: the first agent dies mid-call, the Bridge moves the call to the agent the dialer
offers next, which hangs up. What the Bridge asked of each service is the whole contract.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, cast

from starlette.websockets import WebSocket

from gateway.agents.profiles import AgentProfile, built_in_book
from gateway.agents.tools import ToolRunner
from gateway.calls.state import Call, CallState, EndReason
from gateway.media import inbound
from gateway.media.bridge import Bridge, BridgeServices
from gateway.media.inbound import FloodGate
from gateway.media.outbound import Marks
from gateway.media.tools import ToolServices
from gateway.settings import Settings
from providers.breakers import BreakerRegistry
from providers.events import PCMU_8K, AudioChunk, CallId, Hangup, StreamStarted
from providers.exceptions import SessionClosed
from providers.telephony.twilio import TwilioCodec
from tests.conftest import UNIT
from tests.gateway.test_app import twilio_start


class Agent:
    """An agent session that plays ``script`` (events, or an exception to raise) then waits."""

    input_format = PCMU_8K
    output_format = PCMU_8K

    def __init__(self, provider: str, script: list[Any]) -> None:
        self.provider = provider
        self.script = script
        self.closed = False

    async def connect(self) -> None:
        pass

    async def send(self, event: object) -> None:
        pass

    async def recv(self) -> Any:
        await asyncio.sleep(0)
        if not self.script:
            await asyncio.Event().wait()
        item = self.script.pop(0)
        if isinstance(item, BaseException):
            raise item
        return item

    async def close(self) -> None:
        self.closed = True


class Carrier:
    """A carrier socket that stays open and silent; it records what it is sent."""

    def __init__(self) -> None:
        self.sent: list[str] = []
        self.close_codes: list[int] = []

    async def send_text(self, text: str) -> None:
        self.sent.append(text)

    async def receive(self) -> dict[str, Any]:
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    async def close(self, code: int = 1000) -> None:
        self.close_codes.append(code)


class Fakes:
    """Every service port of the Bridge, recording its calls in ``log``."""

    def __init__(self, replacement: Agent) -> None:
        self.replacement = replacement
        self.log: list[tuple[Any, ...]] = []
        self.live: set[Bridge] = set()

    # Dialer
    async def open_agent(
        self, call: Call, profile: AgentProfile, *, after: str | None = None
    ) -> Agent | None:
        self.log.append(("open_agent", after))
        return self.replacement

    async def provider_failed(self, provider: str, error: str) -> None:
        self.log.append(("provider_failed", provider, error))

    # Records
    async def end_call_eventually(self, call: Call, reason: str) -> None:
        self.log.append(("end_call_eventually", reason))

    async def close_call_record(
        self,
        call: Call,
        outcome: str,
        providers: tuple[str, ...],
        failovers: int,
        *,
        transfer_to: str | None = None,
        include_transcript: bool = False,
    ) -> None:
        self.log.append(("close_call_record", outcome, providers, failovers))

    # HangUp
    def hang_up(self, call: Call, account_id: str | None) -> None:
        self.log.append(("hang_up", account_id))

    # AuditTrail
    async def record(self, action: str, outcome: str, **fields: Any) -> None:
        self.log.append(("audit", action, outcome, fields["detail"]["to_provider"]))

    # LiveBridges
    def add(self, bridge: Bridge) -> None:
        self.live.add(bridge)
        self.log.append(("live", len(self.live)))

    def remove(self, bridge: Bridge) -> None:
        self.live.discard(bridge)
        self.log.append(("live", len(self.live)))

    # ToolServices: this call makes no tool calls; the runner is never reached.
    async def transfer(
        self, call: Call, account_id: str | None, destination: str, *, caller_id: str | None = None
    ) -> bool:
        self.log.append(("transfer", destination))
        return False

    async def caller_number(self, call: Call) -> str | None:
        return None

    # Transcripts: this profile keeps none.
    async def append(self, call: Call, role: str, text: str) -> bool:
        self.log.append(("transcript", role))
        return True

    def end(self, call_id: str) -> None:
        self.log.append(("transcripts_end",))

    def services(self) -> BridgeServices:
        tools = ToolServices(
            runner=ToolRunner(secrets=[], breakers=BreakerRegistry.in_process(), production=False),
            transfers=self,
            auditor=self,
            caller_number=self.caller_number,
        )
        return BridgeServices(
            dialer=self,
            records=self,
            control=self,
            auditor=self,
            live=self,
            tools=tools,
            transcripts=self,
        )


async def test_a_bridge_runs_on_the_services_it_is_given():
    now = time.time()
    call = Call(CallId("call_x"), "twilio", "CA1", "first", CallState.STREAMING, now, now, "r1")
    codec = TwilioCodec()
    (started,) = codec.feed(twilio_start("CA1", "token"))
    assert isinstance(started, StreamStarted)
    first = Agent("first", [SessionClosed("reset", abnormal=True)])
    second = Agent("second", [AudioChunk.from_bytes(b"\xff" * 160, PCMU_8K), Hangup()])
    fakes = Fakes(second)
    carrier = Carrier()
    profile = built_in_book(Settings()).default
    bridge = Bridge(
        fakes.services(), cast(WebSocket, carrier), codec, first, call, started, profile=profile
    )

    async with asyncio.timeout(5 * UNIT):
        reason = await bridge.run([])

    assert reason is EndReason.AGENT_HANGUP
    assert first.closed and second.closed
    assert fakes.log == [
        ("live", 1),
        ("provider_failed", "first", "SessionClosed"),
        ("open_agent", "first"),
        ("audit", "call.failover", "success", "second"),
        ("transcripts_end",),
        ("live", 0),
        ("end_call_eventually", "agent_hangup"),
        ("hang_up", started.account_id),
        ("close_call_record", "agent_hangup", ("first", "second"), 1),
    ]
    assert carrier.sent  # the second agent's audio reached the carrier
    assert carrier.close_codes == [1000]


def test_marks_tell_how_much_of_an_item_was_heard():
    marks = Marks()
    assert not marks and marks.heard_ms("item") == 0.0
    first = marks.place("item", 100.0)
    second = marks.place("item", 200.0)
    assert marks and first != second
    marks.played(first)
    assert marks.heard_ms("item") == 100.0
    marks.played("unknown")  # a name never placed changes nothing
    marks.clear()  # barge-in: the unplayed mark is dropped
    marks.played(second)
    assert not marks and marks.heard_ms("item") == 100.0


def test_the_flood_gate_admits_a_burst_then_the_sustained_rate():
    gate = FloodGate(now=0.0)
    admitted = sum(gate.admit(0.0) for _ in range(int(inbound.FRAME_BURST) + 10))
    assert admitted == int(inbound.FRAME_BURST)
    # One second later the bucket has refilled by the sustained rate.
    later = sum(gate.admit(1.0) for _ in range(int(inbound.MAX_FRAMES_PER_S) + 10))
    assert later == int(inbound.MAX_FRAMES_PER_S)
    gate.allow_backlog(2.0)  # a provider took 2 s to connect: the carrier's backlog is no flood
    backlog = int(inbound.FRAME_BURST + 2.0 * inbound.CARRIER_FRAMES_PER_S)
    assert sum(gate.admit(1.0) for _ in range(backlog + 10)) == backlog
