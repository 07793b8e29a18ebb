"""Configuration of one AI-provider session, and the documented production defaults.

The gateway maps its ``Settings`` to an :class:`AgentConfig` per call, usually through
:meth:`AgentConfig.for_provider`, which fills in the defaults of :data:`DEFAULTS` for anything
it leaves out. A base-URL override (``url=``) points a provider at a fake or a staging host.

Production defaults (see each codec module for the protocol references):

* openai: ``wss://api.openai.com/v1/realtime`` (``?model=`` is appended), model
  ``gpt-realtime``, voice ``marin``.
* deepgram: ``wss://agent.deepgram.com/v1/agent/converse``, model ``gpt-4o-mini`` (the think
  LLM, provider ``open_ai``), voice ``aura-2-thalia-en`` (Deepgram TTS), listen ``nova-3``.
* gemini: ``wss://generativelanguage.googleapis.com/ws/google.ai.generativelanguage.v1beta.
  GenerativeService.BidiGenerateContent``, model ``gemini-2.5-flash-native-audio-preview-12-2025``,
  voice ``Puck``.
* echo: ``echo://local`` (in process: no socket, no key).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Final, Protocol

from security.secret import Secret


class SecretLike(Protocol):
    """Anything holding a secret string behind ``get()`` (ours, or the gateway's ``Secret``)."""

    def get(self) -> str: ...


class Provider(enum.StrEnum):
    OPENAI = "openai"
    DEEPGRAM = "deepgram"
    GEMINI = "gemini"
    ECHO = "echo"


@dataclass(frozen=True, slots=True)
class ProviderDefaults:
    url: str
    model: str
    voice: str
    ping_interval_s: float | None
    ping_timeout_s: float | None
    idle_keepalive_s: float | None = None


OPENAI_REALTIME_URL: Final = "wss://api.openai.com/v1/realtime"
DEEPGRAM_AGENT_URL: Final = "wss://agent.deepgram.com/v1/agent/converse"
GEMINI_LIVE_URL: Final = (
    "wss://generativelanguage.googleapis.com/ws/"
    "google.ai.generativelanguage.v1beta.GenerativeService.BidiGenerateContent"
)
ECHO_URL: Final = "echo://local"

DEFAULTS: Final[Mapping[Provider, ProviderDefaults]] = {
    # Pings are generous: a pong that is late because the peer is busy streaming audio must not
    # end a healthy call. A dead peer is still noticed within interval + timeout.
    Provider.OPENAI: ProviderDefaults(OPENAI_REALTIME_URL, "gpt-realtime", "marin", 20.0, 40.0),
    # Deepgram closes a connection that receives neither audio nor KeepAlive for ~10 s
    # (developers.deepgram.com/docs/agent-keep-alive: "send one KeepAlive every 8 seconds").
    Provider.DEEPGRAM: ProviderDefaults(
        DEEPGRAM_AGENT_URL, "gpt-4o-mini", "aura-2-thalia-en", 20.0, 40.0, idle_keepalive_s=5.0
    ),
    Provider.GEMINI: ProviderDefaults(
        GEMINI_LIVE_URL, "gemini-2.5-flash-native-audio-preview-12-2025", "Puck", 30.0, 60.0
    ),
    Provider.ECHO: ProviderDefaults(ECHO_URL, "echo", "echo", None, None),
}


@dataclass(frozen=True, slots=True)
class Endpoint:
    """Where and how to open a provider's WebSocket. ``headers`` carry credentials: not in repr."""

    url: str
    headers: Mapping[str, str] = field(default_factory=dict, repr=False)


def api_key_value(config: AgentConfig) -> str | None:
    return None if config.api_key is None else config.api_key.get()


DEFAULT_INSTRUCTIONS: Final = (
    "You are a helpful, concise voice assistant answering a telephone call. "
    "Keep answers short and speak naturally."
)


@dataclass(frozen=True, slots=True)
class AgentConfig:
    """Everything a provider session needs. Frozen; build variants with ``dataclasses.replace``.

    Timeouts are in seconds. ``max_message_bytes`` bounds one received WebSocket message (and
    what a codec accepts). Provider-specific fields are ignored by the other providers.
    """

    provider: Provider
    url: str
    api_key: SecretLike | None = field(repr=False)
    model: str
    voice: str
    instructions: str = DEFAULT_INSTRUCTIONS
    connect_timeout_s: float = 10.0
    """Open the socket, send the setup and receive the provider's acknowledgement."""
    send_timeout_s: float = 5.0
    """One socket send; a peer that stops reading makes ``send`` fail after this long."""
    close_timeout_s: float = 3.0
    ping_interval_s: float | None = 20.0
    ping_timeout_s: float | None = 40.0
    idle_keepalive_s: float | None = None
    """Send the provider's application keepalive after this long without sending (Deepgram)."""
    max_message_bytes: int = 4 * 1024 * 1024
    # -- Deepgram Voice Agent ---------------------------------------------------------------
    listen_model: str = "nova-3"
    think_provider: str = "open_ai"
    greeting: str | None = None
    # -- Gemini Live ---------------------------------------------------------------------------
    resume_buffer_ms: int = 5000
    """Audio kept (oldest dropped first) while a session resumes after ``goAway``."""
    # -- echo ---------------------------------------------------------------------------------
    echo_delay_ms: int = 500

    def __post_init__(self) -> None:
        # Accept a plain string for ``provider`` (the gateway's settings hold strings).
        object.__setattr__(self, "provider", Provider(self.provider))
        if self.connect_timeout_s <= 0 or self.send_timeout_s <= 0 or self.close_timeout_s <= 0:
            raise ValueError("AgentConfig timeouts must be positive")
        if self.max_message_bytes < 1024:
            raise ValueError("AgentConfig.max_message_bytes must be at least 1024")

    @classmethod
    def for_provider(
        cls,
        provider: str,
        *,
        api_key: SecretLike | str | None = None,
        url: str | None = None,
        model: str | None = None,
        voice: str | None = None,
        **overrides: Any,
    ) -> AgentConfig:
        """The production defaults of ``provider``, with the given values taking precedence."""
        name = Provider(provider)
        d = DEFAULTS[name]
        config = cls(
            provider=name,
            url=url or d.url,
            api_key=Secret(api_key) if isinstance(api_key, str) else api_key,
            model=model or d.model,
            voice=voice or d.voice,
            ping_interval_s=d.ping_interval_s,
            ping_timeout_s=d.ping_timeout_s,
            idle_keepalive_s=d.idle_keepalive_s,
        )
        return replace(config, **overrides) if overrides else config
