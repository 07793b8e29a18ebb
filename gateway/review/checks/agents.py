"""Agents: the profiles file loads, the requests to the customer's tool endpoints are signed
and encrypted, the file that names in-process Python code is not writable by others."""

from __future__ import annotations

import stat

from gateway.review.checks.base import Outcome, Registry, failed, passed, warned
from gateway.review.facts import Facts
from gateway.review.model import Severity
from gateway.settings import Settings

REGISTRY = Registry()
check = REGISTRY.check
CHECKS = REGISTRY.checks


def _some(names: tuple[str, ...]) -> str:
    return ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")


@check("agents.file", Severity.CRITICAL, "voicegw agents check; fix what it lists")
def _file(s: Settings, f: Facts) -> Outcome:
    a = f.agents
    if not a.from_file:
        return passed("no agents file: one built-in agent from the settings serves every call")
    if a.problems:
        return failed(
            f"the agents file has {len(a.problems)} problem(s) (the gateway refuses to start "
            f"on it, or keeps the profiles it had before a refused reload): {a.problems[0]}"
        )
    return passed("the agents file loads without problems")


@check(
    "agents.tools_signed",
    Severity.CRITICAL,
    "VOICEGW_TOOLS_SECRET=whsec_... (the endpoints verify the Standard Webhooks signature)",
)
def _signed(s: Settings, f: Facts) -> Outcome:
    tools = f.agents.http_tools
    if not tools:
        return passed("no agent tool calls a URL")
    if s.tools_secrets is None:
        return failed(f"tools call URLs with no signing secret: {_some(tools)}")
    return passed(f"{len(tools)} tool endpoint(s) receive signed requests")


@check("agents.tools_https", Severity.CRITICAL, "use https:// URLs for the agents' tools")
def _https(s: Settings, f: Facts) -> Outcome:
    clear = f.agents.cleartext_tools
    if not clear:
        return passed("every tool endpoint is https (or none is configured)")
    if s.production:
        return failed(f"tools send call data over plain http: {_some(clear)}")
    return warned(f"tools send call data over plain http (refused in production): {_some(clear)}")


@check(
    "agents.file_permissions",
    Severity.CRITICAL,
    "chmod go-w on the agents file and its directory (it names Python code the gateway runs)",
)
def _permissions(s: Settings, f: Facts) -> Outcome:
    mode = f.agents.file_mode
    if mode is None:
        return passed("no agents file")
    if mode & (stat.S_IWGRP | stat.S_IWOTH):
        return failed(
            f"the agents file is writable by group or others (mode {mode:o}): whoever can "
            "write it chooses the agents' instructions, transfer numbers and imported code; "
            "the gateway refuses to load it"
        )
    return passed(f"the agents file is writable by its owner only (mode {mode:o})")


@check("agents.handlers", Severity.INFO, "review the modules the agents file names")
def _handlers(s: Settings, f: Facts) -> Outcome:
    handlers = f.agents.handlers
    if not handlers:
        return passed("no Python tool handlers: no customer code runs in the gateway")
    return warned(
        f"{len(handlers)} Python tool handler(s) run inside the gateway with its privileges "
        f"and keys: {_some(handlers)}"
    )


@check(
    "agents.destinations",
    Severity.WARNING,
    "narrow allowed_destinations to the countries you call; drop allow_denied_prefixes "
    "entries you do not need",
)
def _destinations(s: Settings, f: Facts) -> Outcome:
    a = f.agents
    if not a.wide_destinations and not a.deny_overrides:
        return passed(
            "every agent's calls and transfers stay within a few countries and the deny list "
            "of premium-rate and high-risk prefixes"
        )
    parts = []
    if a.wide_destinations:
        parts.append(
            "allowed_destinations open more than five countries or a whole world zone "
            f"(toll fraud reaches further): {_some(a.wide_destinations)}"
        )
    if a.deny_overrides:
        parts.append(f"the deny list is lifted by: {_some(a.deny_overrides)}")
    return warned("; ".join(parts))
