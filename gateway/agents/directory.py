"""The agent profiles in force on this replica, and reloading them.

At start-up the profiles come from ``VOICEGW_AGENTS_FILE`` (a file with problems refuses the
start) or, without it, from one built-in agent made of the settings. ``reload`` (on ``SIGHUP``
or an administrator's API call) reads the file again: a valid file replaces the profiles at
once for new calls, while calls in progress keep the profile they started with (the Bridge
holds it); a file with problems is refused and the profiles in force stay.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from gateway.agents.loader import configured_providers, load_agents
from gateway.agents.profiles import AgentBook, AgentProfile, AgentsFileError, built_in_book
from gateway.agents.python_tools import ModuleRules
from gateway.settings import Settings, SettingsError
from security.audit import Auditor
from security.egress import (
    Resolver,
    SystemResolver,
    endpoint_problems,
    literal_refusal,
    refusal_message,
)

log = logging.getLogger("voicegw.agents")

RESOLVE_AT_START_S: Final = 3.0
"""How long start-up waits for the customer's endpoint names to resolve (all at once)."""


@dataclass(frozen=True, slots=True)
class Reload:
    """The outcome of one reload: ``problems`` is empty when the new file took effect;
    ``digest`` is the SHA-256 of the file as read (None when it could not be read)."""

    at: float
    problems: tuple[str, ...]
    digest: str | None = None

    @property
    def ok(self) -> bool:
        return not self.problems


class AgentDirectory:
    """The current :class:`AgentBook`; ``load`` reads the file again (None: built in only)."""

    def __init__(self, book: AgentBook, load: Callable[[], AgentBook] | None = None) -> None:
        self.book = book
        self._load = load
        self.last_reload: Reload | None = None
        self._lock = asyncio.Lock()

    @property
    def from_file(self) -> bool:
        return self._load is not None

    def for_number(self, number: str | None) -> AgentProfile:
        """The agent serving calls to ``number`` (the dialled number), or the default one."""
        return self.book.for_number(number)

    def profile(self, name: str) -> AgentProfile:
        """The profile named ``name``; the default one if a reload removed it."""
        return self.book.get(name) or self.book.default

    async def reload(self) -> Reload:
        """Read the agents file again (in a thread: it imports Python tool handlers)."""
        if self._load is None:
            result = Reload(time.time(), ("no agents file is configured (VOICEGW_AGENTS_FILE)",))
            self.last_reload = result
            return result
        async with self._lock:
            try:
                book = await asyncio.to_thread(self._load)
            except AgentsFileError as exc:
                result = Reload(time.time(), tuple(exc.problems), exc.digest)
                log.warning("agents file refused", extra={"problems": len(exc.problems)})
            else:
                self.book = book
                result = Reload(time.time(), (), book.digest)
                log.info("agents file reloaded", extra={"agents": len(book.profiles)})
            self.last_reload = result
            return result

    def state(self) -> dict[str, Any]:
        """For ``/readyz`` and the console: where the profiles come from and the last reload."""
        last = self.last_reload
        return {
            "source": "file" if self.from_file else "built-in",
            "count": len(self.book.profiles),
            "digest": self.book.digest,
            "last_reload": None
            if last is None
            else {"at": round(last.at, 3), "ok": last.ok, "problems": len(last.problems)},
        }


async def audit_agents_file(
    auditor: Auditor,
    directory: AgentDirectory,
    result: Reload | None,
    *,
    via: str,
    actor: str = "system",
    role: str | None = None,
) -> None:
    """Audit a load (``result`` None: the file read at start-up) or reload of the agents file:
    the SHA-256 of the file as read (``file_sha256``, also for a refused file) and of the
    profiles in force (``entity_id``, shortened)."""
    in_force = directory.book.digest
    await auditor.record(
        "agents.reload" if result is not None else "agents.load",
        "success" if result is None or result.ok else "failure",
        actor=actor,
        role=role,
        entity_type="agents",
        entity_id=in_force[:16],
        detail={
            "problems": 0 if result is None else len(result.problems),
            "via": via,
            "file_sha256": in_force if result is None else result.digest,
            "in_force_sha256": in_force,
        },
    )


def module_rules(settings: Settings) -> ModuleRules:
    """Where ``settings`` let tool handler modules come from: the installed environment and
    ``VOICEGW_TOOL_MODULES_PATH``, never the data directory."""
    return ModuleRules(paths=settings.tool_modules_path, forbidden=(settings.data_dir,))


def tool_endpoints(book: AgentBook) -> list[tuple[str, str]]:
    """``(label, url)`` of every HTTP tool: ``agents.NAME.tools.TOOL`` names it in messages."""
    return [
        (f"agents.{profile.name}.tools.{tool.name}", tool.url)
        for profile in book.profiles.values()
        for tool in profile.tools
        if tool.url is not None
    ]


def refused_tool_urls(book: AgentBook, settings: Settings, where: str) -> list[str]:
    """One line per tool URL the egress policy refuses without resolving a name (an address in
    a refused range, http in production)."""
    policy = settings.egress
    return [
        f"{where}: {refusal_message(label, refused[1], refused[0])}"
        for label, url in tool_endpoints(book)
        if (refused := literal_refusal(policy, url)) is not None
    ]


async def check_endpoints(
    settings: Settings, book: AgentBook, resolver: Resolver | None = None
) -> None:
    """Production start-up: resolve every tool URL and ``VOICEGW_EVENTS_URL`` now and raise
    ``SettingsError`` (one line per endpoint, naming the tool or the setting) when one is, or
    resolves to, an address the egress policy refuses. A name that does not resolve within
    ``RESOLVE_AT_START_S`` is logged, not refused: every connection checks its answer again."""
    endpoints = tool_endpoints(book)
    if settings.events_url is not None:
        endpoints.append(("VOICEGW_EVENTS_URL", settings.events_url))
    if not endpoints:
        return
    problems, unresolved = await endpoint_problems(
        settings.egress, endpoints, resolver or SystemResolver(), timeout_s=RESOLVE_AT_START_S
    )
    for label in unresolved:
        log.warning("endpoint %s did not resolve at start-up; each request checks it", label)
    if problems:
        raise SettingsError(
            "refused endpoint(s) of tools or call events:\n  - " + "\n  - ".join(problems)
        )


def open_directory(settings: Settings) -> AgentDirectory:
    """The profiles ``settings`` name: ``VOICEGW_AGENTS_FILE`` read and checked (raises
    ``SettingsError`` listing every problem, so the gateway does not start), or the built-in
    agent. An HTTP tool needs ``VOICEGW_TOOLS_SECRET`` (its requests are signed) and a URL the
    egress policy does not refuse by its address alone."""
    path = settings.agents_file
    if path is None:
        return AgentDirectory(built_in_book(settings))
    providers = configured_providers(settings)

    def load() -> AgentBook:
        book = load_agents(
            path,
            configured_providers=providers,
            production=settings.production,
            modules=module_rules(settings),
        )
        unsigned = [
            f"{path}: agents.{profile.name}.tools: tool {tool.name!r} calls a URL, and "
            "VOICEGW_TOOLS_SECRET (the key its requests are signed with) is not set"
            for profile in book.profiles.values()
            for tool in profile.tools
            if tool.url is not None and settings.tools_secrets is None
        ]
        if problems := [*unsigned, *refused_tool_urls(book, settings, str(path))]:
            raise AgentsFileError(problems)
        return book

    try:
        return AgentDirectory(load(), load)
    except AgentsFileError as exc:
        raise SettingsError(
            "invalid agents file (VOICEGW_AGENTS_FILE):\n  - " + "\n  - ".join(exc.problems)
        ) from None
