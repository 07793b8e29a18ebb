"""Calls the gateway places: ``OutboundCalls.place`` checks the request against the agent (the
``from`` number one of its ``caller_ids``, its ``max_concurrent_calls``) and the caller's dial
rate, asks the carrier to dial with the same media stream an inbound call gets, and registers
the call, which then runs like an inbound one: admitted by its stream token, bridged to the
agent, ended by the carrier's status callback or hang-up.

The call id and the stream token exist before the carrier names the call (the Twilio TwiML and
the Telnyx dial request carry them): the token is minted for ``outbound:{call_id}`` and
rebound to ``{carrier}:{carrier_call_id}`` once the carrier answers, the call registered under
the call id its stream URL names. A stream that arrives before that finds no call and spends
its token. A dial that fails leaves nothing live: no registry entry (or one ended), the record
closed ``dial_failed``, the token spent, the carrier told to hang up when it had placed it.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
from dataclasses import dataclass
from typing import Final, Literal, Protocol

import httpx
from redis.exceptions import RedisError

from gateway.agents.directory import AgentDirectory
from gateway.agents.profiles import AgentProfile
from gateway.calls.control import CallControl
from gateway.calls.records import CallRecords
from gateway.calls.registry import CallRegistry
from gateway.calls.state import Call, CallError, CallState, new_call, new_call_id
from gateway.calls.twiml import connect_twiml, twilio_stream_url
from gateway.lifecycle import Lifecycle
from gateway.settings import Settings
from metrics.registry import CALLS
from providers.breakers import BreakerOpen, BreakerRegistry
from providers.events import CallId
from providers.telephony.rest import CarrierRestError, check_e164
from security.exceptions import StateUnavailable
from security.ratelimit import FallbackLimiter, InProcessLimiter, Limiter, RedisLimiter
from security.rediskeys import RedisClient
from security.replay import Degradation
from security.streamtokens import StreamTokens

log = logging.getLogger("voicegw.runtime")

DIAL_FAILED: Final = "dial_failed"
"""The outcome of a call the carrier did not place (or that could not be registered)."""
STATE_ERRORS: Final = (StateUnavailable, RedisError, OSError, TimeoutError)
OutboundCarrier = Literal["twilio", "telnyx"]


class DialError(Exception):
    """A call not placed. ``status`` is the HTTP status to answer with, ``reason`` a short
    text safe to send (never a number, never the carrier's words), ``retry_after_s`` set for
    a 429 or 503."""

    def __init__(self, status: int, reason: str, retry_after_s: float | None = None) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.retry_after_s = retry_after_s


@dataclass(frozen=True, slots=True)
class DialRequest:
    """What to dial: ``to`` from ``from_`` (E.164), served by ``agent``; ``carrier`` None
    picks the first carrier configured for calling out."""

    to: str
    from_: str = ""
    agent: str = ""
    carrier: OutboundCarrier | None = None
    machine_detection: bool = False

    def __repr__(self) -> str:  # the numbers never reach a log line or a traceback
        return f"DialRequest(agent={self.agent!r}, carrier={self.carrier!r})"


class RecordingRule(Protocol):
    def allowed(self, consent: bool) -> bool: ...


class OutboundCalls:
    """Places calls through the carriers' REST clients in ``control``; ``limiter`` counts
    each caller's dials (``scope``: an API key id or user name)."""

    def __init__(
        self,
        *,
        settings: Settings,
        registry: CallRegistry,
        stream_tokens: StreamTokens,
        breakers: BreakerRegistry,
        control: CallControl,
        records: CallRecords,
        agents: AgentDirectory,
        recorder: RecordingRule,
        lifecycle: Lifecycle,
        limiter: Limiter,
    ) -> None:
        self.settings = settings
        self.registry = registry
        self.stream_tokens = stream_tokens
        self.breakers = breakers
        self.control = control
        self.records = records
        self.agents = agents
        self.recorder = recorder
        self.lifecycle = lifecycle
        self.limiter = limiter
        # Dials between the cap check and their registration, per agent (this replica).
        self._dialling: collections.Counter[str] = collections.Counter()

    @staticmethod
    def dial_limiter(settings: Settings, redis: RedisClient | None) -> Limiter:
        """``VOICEGW_DIAL_RATE_PER_MINUTE`` per caller: in Redis (shared by the replicas, each
        on its own while Redis is down) or in process."""
        rate = settings.dial_rate_per_minute
        if redis is None:
            return InProcessLimiter(rate)
        return FallbackLimiter(
            RedisLimiter(redis, settings.redis_key_prefix + "dialrl:", rate),
            InProcessLimiter(rate),
            degradation=Degradation("dial_rate"),
        )

    def carriers(self) -> tuple[OutboundCarrier, ...]:
        """The carriers a call can be placed through: enabled, with their REST credentials
        and the account (Twilio) or connection (Telnyx) to call from."""
        ready: list[OutboundCarrier] = []
        s = self.settings
        if "twilio" in s.carriers and self.control.twilio is not None and s.twilio_account_sid:
            ready.append("twilio")
        if "telnyx" in s.carriers and self.control.telnyx is not None and s.telnyx_connection_id:
            ready.append("telnyx")
        return tuple(ready)

    async def place(self, request: DialRequest, *, scope: str) -> Call:
        """Place ``request`` for the caller ``scope``; returns the registered call (state
        connecting: awaiting its media stream, which opens once the callee answers).

        Raises ``DialError``: 422 for a request the agents file does not allow (unknown agent,
        ``from`` not one of its caller ids, no carrier configured), 429 over the dial rate or
        the agent's cap, 502 when the carrier refused or failed, 503 while draining, while
        the carrier API's breaker is open or while shared state is down."""
        carrier, profile = self._check(request)
        if self.lifecycle.draining:
            raise DialError(503, "draining", 5)
        decision = await self.limiter.hit(f"dial:{scope}")
        if not decision.allowed:
            raise DialError(429, "dial rate exceeded", decision.retry_after_s)
        cap = profile.max_concurrent_calls
        self._dialling[profile.name] += 1
        try:
            if cap is not None and await self._busy(profile.name) >= cap:
                raise DialError(429, "the agent is at its concurrent call limit", 5)
            return await self._dial(request, carrier, profile.providers[0], profile.record)
        finally:
            self._dialling[profile.name] -= 1
            if not self._dialling[profile.name]:
                del self._dialling[profile.name]

    def _check(self, request: DialRequest) -> tuple[OutboundCarrier, AgentProfile]:
        try:
            check_e164(request.to)
            check_e164(request.from_)
        except ValueError:
            raise DialError(400, "to and from must be E.164 numbers") from None
        profile = self.agents.book.get(request.agent)
        if profile is None:
            raise DialError(422, "unknown agent")
        if request.from_ not in profile.caller_ids:
            raise DialError(422, "from is not one of the agent's caller_ids")
        ready = self.carriers()
        if request.carrier is None:
            if not ready:
                raise DialError(422, "no carrier is configured for outbound calls")
            return ready[0], profile
        if request.carrier not in ready:
            raise DialError(422, "that carrier is not configured for outbound calls")
        return request.carrier, profile

    async def _busy(self, agent: str) -> int:
        """The agent's live calls (every replica) plus this replica's dials in progress (this
        one included)."""
        try:
            live = [c for c in await self.registry.list_active() if c.agent == agent]
        except (*STATE_ERRORS, CallError):
            raise DialError(503, "shared state unavailable", 5) from None
        return len(live) + self._dialling[agent] - 1

    async def _dial(
        self, request: DialRequest, carrier: OutboundCarrier, provider: str, record: bool | None
    ) -> Call:
        call_id = new_call_id()
        pending = f"outbound:{call_id}"
        account = self.settings.twilio_account_sid if carrier == "twilio" else None
        try:
            token = await self.stream_tokens.mint(pending, self.settings.stream_token_ttl_s)
        except STATE_ERRORS:
            raise DialError(503, "shared state unavailable", 5) from None
        # The record of a call the carrier never places stays, closed dial_failed.
        draft = new_call(
            carrier, "pending", provider, self.registry.replica_id, account, request.agent, call_id
        )
        try:
            async with self.breakers.get(f"{carrier}-api").trial():
                carrier_call_id = await self._request(request, carrier, call_id, token)
        except BreakerOpen:
            await self._abandon(draft, token, "breaker_open")
            raise DialError(503, "carrier API unavailable", 5) from None
        except (CarrierRestError, httpx.HTTPError, ValueError) as exc:
            await self._abandon(draft, token, type(exc).__name__)
            raise DialError(502, "the carrier did not place the call") from None
        placed = dataclasses.replace(draft, carrier_call_id=carrier_call_id)
        await self.records.record_call(
            placed,
            from_number=request.from_,
            to_number=request.to,
            record=self.recorder.allowed(False) and record is not False,
        )
        try:
            call, _ = await self.registry.create(
                carrier,
                carrier_call_id,
                provider,
                account_id=account,
                agent=request.agent,
                call_id=call_id,
            )
            call = await self.registry.transition(call.call_id, CallState.CONNECTING)
            if not await self.stream_tokens.rebind(token, pending, f"{carrier}:{carrier_call_id}"):
                raise CallError("stream token spent before the call was registered")
        except (*STATE_ERRORS, CallError) as exc:
            await self._undo(placed, token, type(exc).__name__)
            raise DialError(503, "the call could not be registered", 5) from None
        log.info("outbound call placed", extra={"call_id": call.call_id, "carrier": carrier})
        return call

    async def _request(
        self, request: DialRequest, carrier: OutboundCarrier, call_id: CallId, token: str
    ) -> str:
        """Ask ``carrier`` to dial; returns its id of the new call."""
        settings = self.settings
        twilio, telnyx = self.control.twilio, self.control.telnyx
        if carrier == "twilio" and twilio is not None and settings.twilio_account_sid:
            twiml = connect_twiml(twilio_stream_url(settings.public_ws_url, call_id), token)
            return await twilio.create_call(
                settings.twilio_account_sid,
                to=request.to,
                from_=request.from_,
                twiml=twiml,
                status_callback=settings.public("/webhooks/twilio/status"),
                machine_detection=request.machine_detection,
            )
        if carrier != "telnyx" or telnyx is None or not settings.telnyx_connection_id:
            raise ValueError("carrier not configured for outbound calls")  # carriers() said so
        return await telnyx.dial(
            connection_id=settings.telnyx_connection_id,
            to=request.to,
            from_=request.from_,
            stream_url=settings.public_ws_url + "/media/telnyx",
            stream_auth_token=token,
            machine_detection=request.machine_detection,
        )

    async def _abandon(self, draft: Call, token: str, error: str) -> None:
        """The carrier placed nothing: spend the token, write the record closed."""
        log.warning(
            "outbound call not placed",
            extra={"call_id": draft.call_id, "carrier": draft.carrier, "error": error},
        )
        await self._spend(token)
        CALLS.labels(draft.carrier, "none", DIAL_FAILED, draft.agent).inc()
        await self.records.record_call(draft, from_number=None, to_number=None)
        await self.records.close_call_record(draft, DIAL_FAILED, (), 0)

    async def _undo(self, placed: Call, token: str, error: str) -> None:
        """The carrier placed the call but shared state failed us: hang it up, spend the
        token, end the registry entry if there is one (now, or once Redis answers)."""
        log.warning(
            "outbound call not registered",
            extra={"call_id": placed.call_id, "carrier": placed.carrier, "error": error},
        )
        await self._spend(token)
        self.control.hang_up(placed, placed.account_id)
        try:
            if await self.registry.get(placed.call_id) is not None:
                await self.registry.transition(placed.call_id, CallState.ENDED, reason=DIAL_FAILED)
        except (*STATE_ERRORS, CallError):
            pass  # never registered, or the registry's TTL ends it: its holder beats no more
        CALLS.labels(placed.carrier, "none", DIAL_FAILED, placed.agent).inc()
        await self.records.close_call_record(placed, DIAL_FAILED, (), 0)

    async def _spend(self, token: str) -> None:
        try:
            await self.stream_tokens.consume(token, "")
        except STATE_ERRORS:
            pass  # it expires on its own; nothing was bound to the call's key
