"""Opening a call's agent: the provider's configuration (the deployment's settings under the
call's agent profile: instructions, greeting, model, voice, tools), its breaker, and moving
down the profile's provider order past providers that are open or fail to connect.
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace

from redis.exceptions import RedisError

from gateway.agents.profiles import AgentProfile, settings_options
from gateway.calls.registry import CallRegistry, when_registry_answers
from gateway.calls.state import Call
from gateway.lifecycle import Tasks
from gateway.settings import Settings
from metrics.registry import FAILOVERS, PROVIDER_CONNECT, PROVIDER_ERRORS
from providers.ai.config import AgentConfig
from providers.ai.session import AgentSession, open_session
from providers.breakers import BreakerOpen, BreakerRegistry
from providers.exceptions import ConnectError

log = logging.getLogger("voicegw.runtime")


class AgentDialer:
    """Opens agent sessions for calls as ``settings`` configure the providers, each through its
    breaker in ``breakers``; a call's new provider is recorded in ``registry``."""

    def __init__(
        self,
        settings: Settings,
        *,
        breakers: BreakerRegistry,
        registry: CallRegistry,
        tasks: Tasks,
    ) -> None:
        self.settings = settings
        self.breakers = breakers
        self.registry = registry
        self.tasks = tasks

    def agent_config(
        self, provider: str, profile: AgentProfile, *, greet: bool = True
    ) -> AgentConfig:
        """How to open ``provider`` for a call of ``profile``: the profile's choices over the
        settings'. ``greet=False`` leaves the greeting out: a call that moves to another
        provider mid-call has been greeted already."""
        s = self.settings
        key, url = {
            "openai": (s.openai_api_key, s.openai_realtime_url),
            "deepgram": (s.deepgram_api_key, s.deepgram_agent_url),
            "gemini": (s.gemini_api_key, s.gemini_live_url),
            "echo": (None, None),
        }[provider]
        options = profile.agent_options().over(settings_options(s))
        if not greet:
            options = replace(options, greeting=None)
        return AgentConfig.for_provider(
            provider,
            api_key=key,
            url=url,
            options=options,
            connect_timeout_s=s.provider_connect_timeout_s,
            ws_client=s.provider_ws_client,
        )

    async def open_agent(
        self, call: Call, profile: AgentProfile, *, after: str | None = None
    ) -> AgentSession | None:
        """Connect the call to a provider: its current one, or the one after ``after``, moving
        down the profile's providers past those whose breaker is open or that fail to
        connect. Returns None when none is left."""
        order = list(profile.providers)
        if after is not None:
            # The providers after the failed one, then the ones before it; never itself.
            start = order.index(after) + 1 if after in order else 0
            candidates = [p for p in order[start:] + order[:start] if p != after]
        else:
            start = order.index(call.provider) if call.provider in order else 0
            candidates = order[start:] + order[:start]
        for provider in candidates:
            breaker = self.breakers.get(provider)
            try:
                trial = await breaker.acquire()
            except BreakerOpen:
                continue
            session = open_session(self.agent_config(provider, profile, greet=after is None))
            began = time.perf_counter()
            try:
                await session.connect()
            except ConnectError as exc:
                await trial.fail(type(exc).__name__)
                PROVIDER_ERRORS.labels(provider, "connect").inc()
                log.warning(
                    "provider connect failed",
                    extra={"provider": provider, "error": type(exc).__name__},
                )
                await session.close()
                continue
            except BaseException:
                await trial.release()
                await session.close()
                raise
            await trial.succeed()
            PROVIDER_CONNECT.labels(provider).observe(time.perf_counter() - began)
            if provider != call.provider:
                if after is None:  # moved at set-up; the Bridge counts mid-call moves
                    FAILOVERS.labels(call.provider, provider).inc()
                await self._set_provider(call, provider)
            return session
        return None

    async def _set_provider(self, call: Call, provider: str) -> None:
        """Record the call's new provider in the registry. While shared state is down the call
        goes on with its new provider and the registry is updated once Redis answers."""
        try:
            await self.registry.set_provider(call.call_id, provider)
        except (RedisError, OSError, TimeoutError) as exc:
            log.warning(
                "call's provider not updated in the registry yet",
                extra={"call_id": call.call_id, "error": type(exc).__name__},
            )
            self.tasks.spawn(
                when_registry_answers(
                    call, lambda: self.registry.set_provider(call.call_id, provider)
                ),
                "set-provider",
            )

    async def provider_failed(self, provider: str, error: str) -> None:
        """A live session of ``provider`` died mid-call: count it against its breaker."""
        await self.breakers.get(provider).record_failure(error)
