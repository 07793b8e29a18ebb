"""Everything a running gateway shares between requests: the named services, each owned by the
room it belongs to. ``gateway.app.start_runtime`` builds it from ``Settings`` (the one wiring
function); route handlers read it as ``request.app.state.runtime``; ``stop`` ends live calls,
background work and pools in the order the wiring registered (``Lifecycle``).
"""

from __future__ import annotations

from dataclasses import dataclass

from gateway.agents.directory import AgentDirectory
from gateway.calls.commands import CallCommands
from gateway.calls.control import CallControl
from gateway.calls.outbound import OutboundCalls
from gateway.calls.records import CallRecords
from gateway.calls.registry import CallRegistry
from gateway.calls.transcripts import TranscriptLog
from gateway.calls.unopened import UnopenedStreams
from gateway.compliance.rejections import RejectionLedger
from gateway.events.dispatcher import EventDispatcher
from gateway.http.clients import ClientAddresses
from gateway.lifecycle import Lifecycle
from gateway.media.admission import StreamAdmission
from gateway.media.dialer import AgentDialer
from gateway.media.recorder import Recorder
from gateway.media.tools import ToolServices
from gateway.operators.sessions import AuthRuntime
from gateway.records.base import Store
from gateway.services import Degradable
from gateway.settings import Settings
from providers.breakers import BreakerRegistry
from security.audit import Auditor
from security.crypto import BlindIndex, KeyRing
from security.rediskeys import RedisClient
from security.streamtokens import StreamTokens
from security.webhooks import WebhookPipeline


@dataclass(eq=False, slots=True)
class Runtime:
    settings: Settings
    redis: RedisClient | None
    lifecycle: Lifecycle
    """Live bridges (drained on shutdown), background tasks, the shutdown order."""

    # State behind small interfaces: in process, or shared through Redis.
    registry: CallRegistry
    stream_tokens: StreamTokens
    breakers: BreakerRegistry
    degradable: list[Degradable]
    """Redis-backed components with an in-process fallback (``/readyz`` reports them)."""

    # The front door.
    pipeline: WebhookPipeline
    clients: ClientAddresses
    rejections: RejectionLedger  # webhook rejections per hour, for the compliance report

    # Calls: their records, the carriers' commands, the sweep of streams never opened.
    records: CallRecords
    control: CallControl
    unopened: UnopenedStreams
    outbound: OutboundCalls
    """Calls the gateway places (``POST /api/v1/calls``)."""

    # Media: which streams are admitted, opening agents, recordings, the fallback message.
    admission: StreamAdmission
    dialer: AgentDialer
    recorder: Recorder
    fallback: bytes

    # Commands on live calls (hang up, transfer), wherever their Bridge runs.
    commands: CallCommands

    # What was said (agents with ``transcripts = true``), encrypted; call events' delivery.
    transcripts: TranscriptLog
    event_dispatcher: EventDispatcher | None

    # Agents: the profiles in force (per dialled number) and the tools they call.
    agents: AgentDirectory
    tools: ToolServices

    # What outlives the process, and operator sessions.
    store: Store
    data_keys: KeyRing
    blind_index: BlindIndex
    auditor: Auditor
    auth: AuthRuntime

    async def stop(self) -> None:
        """End live calls (if a drain did not), wait for background work, close pools."""
        await self.lifecycle.stop()
