"""Agent profiles: who answers a call (instructions, greeting, voices, provider order) and what
it may do (tools, transfer destinations, hanging up), and the book that routes a dialed number
to one of them.

A profile is immutable: a call keeps the profile it started with while the book is reloaded.
:func:`built_in_book` makes the one-agent book of a deployment without an agents file from its
settings; :mod:`gateway.agents.loader` reads the file.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Final

from gateway.calls.destinations import DestinationPolicy
from gateway.settings import Settings
from providers.ai.config import AgentOptions, Function, Provider, ProviderOptions
from security.redaction import mask_phone

END_CALL: Final = "end_call"
TRANSFER_CALL: Final = "transfer_call"
RESERVED_TOOLS: Final = frozenset({END_CALL, TRANSFER_CALL})
"""The built-in tools' names: a profile's own tool may not take them."""

BUILT_IN_NAME: Final = "default"


class AgentsFileError(ValueError):
    """The agents file cannot be used; ``problems`` has one line per problem, each naming the
    file, the agent and the key (and the line where it is known). ``digest`` is the SHA-256 of
    the file as read (None when it could not be read)."""

    def __init__(self, problems: list[str], digest: str | None = None) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems
        self.digest = digest


@dataclass(frozen=True, slots=True)
class ToolContext:
    """What a tool learns about the call besides the model's arguments. ``caller`` (the
    caller's number) is ``None`` unless the tool's profile sets ``send_caller``."""

    call_id: str
    agent: str
    carrier: str
    caller: str | None = field(default=None, repr=False)


ToolHandler = Callable[[dict[str, Any], ToolContext], Awaitable[Any]]
"""A Python tool: ``async def handler(arguments, context) -> JSON-able``."""


@dataclass(frozen=True, slots=True)
class ToolSpec:
    """One tool of a profile: declared to the model as a :class:`Function`, run at ``url``
    (a signed HTTP ``POST``) or by ``handler`` (``"package.module:function"``): exactly one of
    the two. ``function`` is the handler once imported (the loader fills it in under the
    module rules; a handler tool without it fails every call)."""

    name: str
    description: str
    parameters: Mapping[str, Any]
    url: str | None = None
    handler: str | None = None
    timeout_s: float = 5.0
    send_caller: bool = False
    function: ToolHandler | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        if (self.url is None) == (self.handler is None):
            raise ValueError(f"tool {self.name!r} needs exactly one of url and handler")

    def declaration(self) -> Function:
        return Function(self.name, self.description, self.parameters)


@dataclass(frozen=True, slots=True)
class AgentProfile:
    """One agent. ``numbers`` are the dialed (E.164) numbers routed to it; ``providers`` the
    failover order; ``options`` what the caller hears (``options.tools`` is left ``None``: the
    tools come from :meth:`functions`, see :meth:`agent_options`); ``record`` ``None`` keeps
    the deployment's choice; ``transfer`` maps the destination keys the model may pick to an
    E.164 number or a ``sip:``/``sips:`` URI; ``caller_ids`` the numbers a transfer may present
    as caller ID (the first is used; empty: the carrier's default, the caller's number) and
    the numbers an outbound call may be placed from; ``max_concurrent_calls`` caps the agent's
    live calls, in and out, across replicas (``None``: no cap); ``transcripts`` whether the
    call's turns are transcribed and stored (encrypted).

    The toll-fraud guard (:mod:`gateway.calls.destinations`): ``allowed_destinations`` the
    E.164 prefixes its calls and transfers may reach (the loader fills in the default, the
    country codes of its own numbers); ``allow_denied_prefixes`` the parts of the built-in deny
    list it lifts; ``dials_per_minute`` and ``dial_minutes_per_day`` its caps on the calls it
    places, across replicas (``None``: none beyond the API key's)."""

    name: str
    default: bool
    numbers: tuple[str, ...]
    providers: tuple[str, ...]
    options: AgentOptions
    record: bool | None
    transfer: Mapping[str, str]
    tools: tuple[ToolSpec, ...]
    end_call: bool = True
    caller_ids: tuple[str, ...] = ()
    max_concurrent_calls: int | None = None
    transcripts: bool = False
    include_transcript: bool = False
    """The customer's ``call.ended`` event carries the transcript (needs ``transcripts``)."""
    allowed_destinations: tuple[str, ...] = ()
    allow_denied_prefixes: tuple[str, ...] = ()
    destinations_defaulted: bool = True
    """``allowed_destinations`` came from the agent's own numbers (the file named none)."""
    dials_per_minute: int | None = None
    dial_minutes_per_day: int | None = None

    @property
    def destinations(self) -> DestinationPolicy:
        """Where this agent's calls and transfers may go."""
        return DestinationPolicy(self.allowed_destinations, self.allow_denied_prefixes)

    def functions(self) -> tuple[Function, ...]:
        """What the model is offered: the profile's tools in file order, then ``transfer_call``
        (when ``transfer`` is not empty), then ``end_call`` (unless ``end_call`` is off)."""
        declared = [tool.declaration() for tool in self.tools]
        if self.transfer:
            keys = sorted(self.transfer)
            declared.append(
                Function(
                    TRANSFER_CALL,
                    "Transfer the caller to a person or another line. Say goodbye first. "
                    f"Destinations: {', '.join(keys)}.",
                    {
                        "type": "object",
                        "properties": {
                            "destination": {
                                "type": "string",
                                "enum": keys,
                                "description": "Where to transfer the caller",
                            }
                        },
                        "required": ["destination"],
                    },
                )
            )
        if self.end_call:
            declared.append(
                Function(
                    END_CALL,
                    "Hang up the call once the conversation is over and you have said goodbye.",
                    {"type": "object", "properties": {}},
                )
            )
        return tuple(declared)

    def agent_options(self) -> AgentOptions:
        """``options`` with :meth:`functions` as its tools and the profile's ``transcripts``
        choice: what a provider session is given."""
        return replace(self.options, tools=self.functions(), transcripts=self.transcripts)

    def tool(self, name: str) -> ToolSpec | None:
        """The profile's own tool called ``name`` (never a built-in one), or ``None``."""
        return next((tool for tool in self.tools if tool.name == name), None)


@dataclass(frozen=True, slots=True)
class AgentBook:
    """Every profile by name, with where they came from (``source``: ``None`` for the
    built-in book) and a ``digest`` that changes when they do."""

    profiles: Mapping[str, AgentProfile]
    source: Path | None
    digest: str

    def __post_init__(self) -> None:
        defaults = [p.name for p in self.profiles.values() if p.default]
        if len(defaults) != 1:
            raise ValueError(f"an AgentBook needs exactly one default agent, not {defaults}")

    @property
    def default(self) -> AgentProfile:
        return next(p for p in self.profiles.values() if p.default)

    def get(self, name: str) -> AgentProfile | None:
        return self.profiles.get(name)

    def for_number(self, number: str | None) -> AgentProfile:
        """The agent that lists ``number`` (the dialed number, exact E.164 match), else the
        default agent."""
        if number:
            for profile in self.profiles.values():
                if number in profile.numbers:
                    return profile
        return self.default


def settings_options(settings: Settings) -> AgentOptions:
    """What the caller hears according to the settings (``VOICEGW_AGENT_*``, the per-provider
    model and voice variables)."""
    return AgentOptions(
        instructions=settings.agent_instructions,
        greeting=settings.agent_greeting,
        providers={
            Provider.OPENAI: ProviderOptions(settings.openai_model, settings.openai_voice),
            Provider.DEEPGRAM: ProviderOptions(
                settings.deepgram_think_model, settings.deepgram_voice
            ),
            Provider.GEMINI: ProviderOptions(settings.gemini_model, settings.gemini_voice),
        },
    )


def built_in_book(settings: Settings) -> AgentBook:
    """The book of a deployment without an agents file: one default agent named ``default``
    made from the settings, serving every number. It declares no tools at all (not even
    ``end_call``), so calls behave exactly as they did before profiles existed."""
    profile = AgentProfile(
        name=BUILT_IN_NAME,
        default=True,
        numbers=(),
        providers=tuple(settings.providers),
        options=settings_options(settings),
        record=None,
        transfer={},
        tools=(),
        end_call=False,
    )
    book = AgentBook({profile.name: profile}, None, "")
    text = json.dumps(book_summary(book), sort_keys=True, separators=(",", ":"))
    return replace(book, digest=hashlib.sha256(text.encode()).hexdigest())


def book_summary(book: AgentBook) -> list[dict[str, Any]]:
    """Every agent as JSON-able data for the console and the admin API, default first. Numbers
    are counted and masked, tools named (never their URLs: they may carry tokens)."""
    ordered = sorted(book.profiles.values(), key=lambda p: (not p.default, p.name))
    return [
        {
            "name": p.name,
            "default": p.default,
            "number_count": len(p.numbers),
            "numbers": [mask_phone(n) for n in p.numbers],
            "providers": list(p.providers),
            "instructions": p.options.instructions,
            "greeting": p.options.greeting,
            "voices": {
                str(provider): {"model": o.model, "voice": o.voice}
                for provider, o in p.options.providers.items()
                if o.model or o.voice
            },
            "record": p.record,
            "tools": [
                {"name": t.name, "kind": "http" if t.url else "python", "timeout_s": t.timeout_s}
                for t in p.tools
            ],
            "transfer": sorted(p.transfer),
            "end_call": p.end_call,
            "transcripts": p.transcripts,
            "calling": {
                "allowed_destinations": list(p.allowed_destinations),
                "defaulted": p.destinations_defaulted,
                "allow_denied_prefixes": list(p.allow_denied_prefixes),
                "max_concurrent_calls": p.max_concurrent_calls,
                "dials_per_minute": p.dials_per_minute,
                "dial_minutes_per_day": p.dial_minutes_per_day,
            },
        }
        for p in ordered
    ]
