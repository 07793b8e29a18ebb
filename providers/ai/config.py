"""Configuration of one AI-provider session, and the documented production defaults.

The gateway maps its ``Settings`` to an :class:`AgentConfig` per call, usually through
:meth:`AgentConfig.for_provider`, which fills in the defaults of :data:`DEFAULTS` for anything
it leaves out. A base-URL override (``url=``) points a provider at a fake or a staging host.
What the caller hears (instructions, greeting, each provider's model and voice) travels as one
:class:`AgentOptions`; options layer with :meth:`AgentOptions.over`, so a narrower choice (an
agent profile) overrides a broader one (the deployment's settings) field by field.

Production defaults (see each codec module for the protocol references):

* openai: ``wss://api.openai.com/v1/realtime`` (``?model=`` is appended), model
  ``gpt-realtime-2.1`` (the newest realtime model the ``openai`` package names without an
  announced shutdown; ``gpt-realtime`` shuts down on 2027-01-20), voice ``marin``.
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
WS_CLIENTS: Final = ("auto", "picows", "websockets")
"""The values of ``AgentConfig.ws_client`` (``providers.ai.transport.Client``)."""

DEFAULTS: Final[Mapping[Provider, ProviderDefaults]] = {
    # Pings are generous: a pong that is late because the peer is busy streaming audio must not
    # end a healthy call. A dead peer is still noticed within interval + timeout.
    Provider.OPENAI: ProviderDefaults(OPENAI_REALTIME_URL, "gpt-realtime-2.1", "marin", 20.0, 40.0),
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
class ProviderOptions:
    """The model and voice chosen for one provider; ``None`` leaves the choice to the layer
    below (in the end, :data:`DEFAULTS`). For Deepgram ``model`` is the think (LLM) model and
    ``voice`` the speak (TTS) model."""

    model: str | None = None
    voice: str | None = None

    def over(self, base: ProviderOptions) -> ProviderOptions:
        """These options, with ``base`` filling in what they leave unset."""
        return ProviderOptions(self.model or base.model, self.voice or base.voice)


@dataclass(frozen=True, slots=True)
class Function:
    """A tool the model may call: its ``name``, a ``description`` the model reads, and the JSON
    Schema (an object schema) of its arguments. Each codec declares it in its protocol's form."""

    name: str
    description: str
    parameters: Mapping[str, Any] = field(
        default_factory=lambda: {"type": "object", "properties": {}}
    )


@dataclass(frozen=True, slots=True)
class AgentOptions:
    """What the caller hears, whichever provider answers: instructions, a greeting the provider
    speaks first, and per-provider :class:`ProviderOptions`. ``None`` (or a missing provider)
    means "not chosen here"; see :meth:`over`."""

    instructions: str | None = None
    greeting: str | None = None
    providers: Mapping[Provider, ProviderOptions] = field(default_factory=dict)
    tools: tuple[Function, ...] | None = None
    """The tools offered to the model; ``None`` leaves the choice to the layer below."""
    transcripts: bool | None = None
    """Ask the provider to transcribe both sides; ``None`` leaves the choice to the layer
    below (in the end: no)."""

    def provider(self, name: Provider) -> ProviderOptions:
        return self.providers.get(name, ProviderOptions())

    def over(self, base: AgentOptions) -> AgentOptions:
        """These options, with ``base`` filling in what they leave unset, field by field."""
        names = dict.fromkeys([*base.providers, *self.providers])
        return AgentOptions(
            instructions=self.instructions or base.instructions,
            greeting=self.greeting or base.greeting,
            providers={p: self.provider(p).over(base.provider(p)) for p in names},
            tools=self.tools if self.tools is not None else base.tools,
            transcripts=self.transcripts if self.transcripts is not None else base.transcripts,
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
    greeting: str | None = None
    """Spoken by the provider first, once per session (not again on a Gemini resumption)."""
    tools: tuple[Function, ...] = ()
    """Declared to the provider in the session setup; its calls arrive as ``ToolCall``."""
    transcripts: bool = False
    """Ask for the transcription of both sides where the protocol makes it optional (OpenAI
    input transcription, Gemini input/output transcription); they arrive as ``Transcript``."""
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
    ws_client: str = "auto"
    """The WebSocket client (``providers.ai.transport.Client``): ``auto`` (picows when it
    imports, else ``websockets``), ``picows`` or ``websockets``."""
    # -- Deepgram Voice Agent ---------------------------------------------------------------
    listen_model: str = "nova-3"
    think_provider: str = "open_ai"
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
        if self.ws_client not in WS_CLIENTS:
            raise ValueError(f"AgentConfig.ws_client must be one of {', '.join(WS_CLIENTS)}")

    @classmethod
    def for_provider(
        cls,
        provider: str,
        *,
        api_key: SecretLike | str | None = None,
        url: str | None = None,
        model: str | None = None,
        voice: str | None = None,
        options: AgentOptions | None = None,
        **overrides: Any,
    ) -> AgentConfig:
        """The production defaults of ``provider``, overridden by ``options`` (what the caller
        hears), then by the explicit keyword values."""
        name = Provider(provider)
        d = DEFAULTS[name]
        options = options or AgentOptions()
        chosen = ProviderOptions(model, voice).over(options.provider(name))
        config = cls(
            provider=name,
            url=url or d.url,
            api_key=Secret(api_key) if isinstance(api_key, str) else api_key,
            model=chosen.model or d.model,
            voice=chosen.voice or d.voice,
            instructions=options.instructions or DEFAULT_INSTRUCTIONS,
            greeting=options.greeting,
            tools=options.tools or (),
            transcripts=bool(options.transcripts),
            ping_interval_s=d.ping_interval_s,
            ping_timeout_s=d.ping_timeout_s,
            idle_keepalive_s=d.idle_keepalive_s,
        )
        return replace(config, **overrides) if overrides else config
