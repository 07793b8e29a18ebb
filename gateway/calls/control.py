"""Carrier control: the REST commands the gateway sends a carrier about a call (answer, start
streaming, transfer, hang up), each through that carrier API's breaker (in the background but
for a transfer, whose outcome the agent is told), and ending a call that has no Bridge on this
replica.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import httpx
from redis.exceptions import RedisError

from gateway.calls.records import CallRecords
from gateway.calls.registry import CallRegistry, when_registry_answers
from gateway.calls.state import Call, CallError, CallState, CallStateError
from gateway.lifecycle import Tasks
from gateway.settings import Settings
from metrics.registry import CALLS
from providers.breakers import BreakerOpen, BreakerRegistry
from providers.telephony.rest import CarrierRestError, TelnyxRest, TwilioRest

log = logging.getLogger("voicegw.runtime")


class CallControl:
    """Commands to the carriers over ``http`` (one pooled client, closed with ``aclose``):
    Twilio's REST API when ``twilio`` is configured, Telnyx Call Control when ``telnyx`` is.
    Streams are started towards ``public_ws_url``."""

    def __init__(
        self,
        *,
        http: httpx.AsyncClient,
        twilio: TwilioRest | None,
        telnyx: TelnyxRest | None,
        public_ws_url: str,
        breakers: BreakerRegistry,
        registry: CallRegistry,
        records: CallRecords,
        tasks: Tasks,
    ) -> None:
        self.http = http
        self.twilio = twilio
        self.telnyx = telnyx
        self.public_ws_url = public_ws_url
        self.breakers = breakers
        self.registry = registry
        self.records = records
        self.tasks = tasks

    @classmethod
    def build(
        cls,
        settings: Settings,
        *,
        breakers: BreakerRegistry,
        registry: CallRegistry,
        records: CallRecords,
        tasks: Tasks,
    ) -> CallControl:
        """The carriers' REST clients ``settings`` configure, on one pooled client."""
        http = httpx.AsyncClient(timeout=settings.carrier_rest_timeout_s)
        twilio = (
            TwilioRest(
                settings.twilio_auth_token.get(), base_url=settings.twilio_api_url, client=http
            )
            if settings.twilio_auth_token is not None
            else None
        )
        telnyx = (
            TelnyxRest(settings.telnyx_api_key.get(), base_url=settings.telnyx_api_url, client=http)
            if settings.telnyx_api_key is not None
            else None
        )
        return cls(
            http=http,
            twilio=twilio,
            telnyx=telnyx,
            public_ws_url=settings.public_ws_url,
            breakers=breakers,
            registry=registry,
            records=records,
            tasks=tasks,
        )

    async def aclose(self) -> None:
        await self.http.aclose()

    async def carrier_rest(
        self, carrier: str, what: str, action: Callable[[], Awaitable[object]]
    ) -> bool:
        """Run one carrier REST call through that carrier API's breaker. Failures are logged
        (never raised); returns whether it succeeded."""
        try:
            async with self.breakers.get(f"{carrier}-api").trial():
                await action()  # the client's own timeout fires inside the trial: a failure
        except BreakerOpen:
            log.warning("carrier API breaker open", extra={"carrier": carrier, "action": what})
            return False
        except (CarrierRestError, httpx.HTTPError, ValueError) as exc:
            log.warning(
                "carrier REST call failed",
                extra={"carrier": carrier, "action": what, "error": type(exc).__name__},
            )
            return False
        return True

    def hang_up(self, call: Call, account_id: str | None) -> None:
        """Hang up the phone call over the carrier's REST API, in the background.
        ``account_id`` is Twilio's AccountSid (from the stream's ``start``)."""
        sid = call.carrier_call_id
        if call.carrier == "twilio" and self.twilio is not None and account_id:
            twilio = self.twilio
            self.tasks.spawn(
                self.carrier_rest("twilio", "hangup", lambda: twilio.hangup(account_id, sid)),
                "hangup",
            )
        elif call.carrier == "telnyx" and self.telnyx is not None:
            telnyx = self.telnyx
            self.tasks.spawn(
                self.carrier_rest("telnyx", "hangup", lambda: telnyx.hangup(sid)), "hangup"
            )

    async def transfer(
        self,
        call: Call,
        account_id: str | None,
        destination: str,
        *,
        caller_id: str | None = None,
    ) -> bool:
        """Move the live call to ``destination`` over the carrier's REST API (Twilio: update
        with ``<Dial>`` TwiML; Telnyx: ``actions/transfer``), presenting ``caller_id`` when
        given; waits for the answer. False when the carrier's API is not configured, refused
        or failed (logged, never raised)."""
        sid = call.carrier_call_id
        if call.carrier == "twilio" and self.twilio is not None and account_id:
            twilio = self.twilio
            return await self.carrier_rest(
                "twilio",
                "transfer",
                lambda: twilio.transfer(account_id, sid, destination, caller_id=caller_id),
            )
        if call.carrier == "telnyx" and self.telnyx is not None:
            telnyx = self.telnyx
            return await self.carrier_rest(
                "telnyx", "transfer", lambda: telnyx.transfer(sid, destination, caller_id=caller_id)
            )
        log.warning(
            "transfer not possible: carrier API not configured", extra={"carrier": call.carrier}
        )
        return False

    def answer_telnyx(self, call: Call, call_control_id: str) -> None:
        """Answer a Telnyx call, in the background; streaming starts on ``call.answered``."""
        rest = self._telnyx()
        if rest is None:
            return

        async def answer() -> None:
            if not await self.carrier_rest(
                "telnyx", "answer", lambda: rest.answer(call_control_id)
            ):
                # Never answered: nothing to hang up, but the record closes now, not when a
                # restart finds it open.
                await self.end_unbridged(call, "answer_failed", hang_up=False, retry=True)

        self.tasks.spawn(answer(), "telnyx-answer")

    def stream_telnyx(self, call: Call, call_control_id: str, token: str) -> None:
        """Start the bidirectional media stream of an answered Telnyx call, in the background."""
        rest = self._telnyx()
        if rest is None:
            return
        url = self.public_ws_url + "/media/telnyx"

        async def start() -> None:
            started = await self.carrier_rest(
                "telnyx",
                "streaming_start",
                lambda: rest.start_streaming(
                    call_control_id, stream_url=url, stream_auth_token=token
                ),
            )
            if not started:
                await self.end_unbridged(call, "stream_failed", hang_up=True, retry=True)

        self.tasks.spawn(start(), "telnyx-stream")

    async def end_unbridged(
        self, call: Call, outcome: str, *, hang_up: bool, retry: bool = False
    ) -> bool:
        """End a call that has no Bridge on this replica (its answer or stream failed, its
        codec cannot be carried): ended in the registry with ``outcome``, hung up over REST
        when ``hang_up``, counted in ``voicegw_calls_total`` and its record closed with
        ``outcome``. Returns False, doing nothing, when the call had already ended: whoever
        ended it told the carrier and wrote the outcome.

        While shared state is down this raises (the webhook's carrier retries it), or with
        ``retry`` ends the call anyway and updates the registry once Redis answers.
        """
        try:
            await self.registry.transition(call.call_id, CallState.ENDED, reason=outcome)
        except CallStateError:
            return False
        except (RedisError, OSError, TimeoutError, CallError) as exc:
            if not retry:
                raise
            log.warning(
                "call not ended in the registry yet",
                extra={"call_id": call.call_id, "error": type(exc).__name__},
            )
            self.tasks.spawn(
                when_registry_answers(call, lambda: self.records.end_call(call, outcome)),
                "end-call",
            )
        if hang_up:
            self.hang_up(call, None)
        CALLS.labels(call.carrier, "none", outcome, call.agent).inc()
        await self.records.close_call_record(call, outcome, (), 0)
        log.info("call ended", extra={"call_id": call.call_id, "reason": outcome})
        return True

    def _telnyx(self) -> TelnyxRest | None:
        if self.telnyx is None:
            log.warning("telnyx call not handled: VOICEGW_TELNYX_API_KEY is not set")
        return self.telnyx
