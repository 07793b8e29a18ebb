"""``voicegw agents check [FILE]``: validate an agents file without starting anything.

Exit status 0: valid (one summary line per agent on stdout); 1: invalid (one line per problem
on stderr); 2: usage error (no file given and ``VOICEGW_AGENTS_FILE`` unset, or the file
cannot be read).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping
from pathlib import Path

from gateway.agents.loader import AgentsFileUnreadable, configured_providers, load_agents
from gateway.agents.profiles import AgentProfile, AgentsFileError
from gateway.agents.python_tools import ModuleRules
from gateway.settings import Settings, SettingsError

PROVIDER_KEYS = {
    "openai": "OPENAI_API_KEY",
    "deepgram": "DEEPGRAM_API_KEY",
    "gemini": "GEMINI_API_KEY",
}


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``agents check`` to the ``voicegw`` parser."""
    agents = subparsers.add_parser("agents", help="agent profiles (VOICEGW_AGENTS_FILE)")
    asub = agents.add_subparsers(dest="what", required=True, help="what to do")
    p = asub.add_parser(
        "check",
        help="validate an agents file without starting anything (exit 0/1/2)",
        description="Validate an agents file without starting the gateway. Python tool "
        "handlers are imported (their modules' top-level code runs) from the installed "
        "environment or the directories of VOICEGW_TOOL_MODULES_PATH, never from "
        "VOICEGW_DATA_DIR. Production rules (https tool URLs, configured "
        "providers) apply when VOICEGW_ENV=production or --production is given.",
    )
    p.add_argument("file", nargs="?", help="the agents file (default: $VOICEGW_AGENTS_FILE)")
    p.add_argument(
        "--production", action="store_true", help="apply the production rules whatever VOICEGW_ENV"
    )
    p.set_defaults(func=check)


def _module_rules(environ: Mapping[str, str]) -> ModuleRules:
    """Where handler modules may come from, as the gateway started with ``environ`` reads it."""
    listed = environ.get("VOICEGW_TOOL_MODULES_PATH", "")
    return ModuleRules(
        paths=tuple(Path(p).resolve() for p in listed.split(os.pathsep) if p.strip()),
        forbidden=(Path(environ.get("VOICEGW_DATA_DIR") or ".voicegw"),),
    )


def check(args: argparse.Namespace, environ: Mapping[str, str] | None = None) -> int:
    environ = os.environ if environ is None else environ
    path = args.file or environ.get("VOICEGW_AGENTS_FILE")
    if not path:
        print("voicegw: no agents file: give FILE or set VOICEGW_AGENTS_FILE", file=sys.stderr)
        return 2
    production, configured = _deployment(environ)
    if args.production and not production:
        production, configured = True, configured - {"echo"}
    try:
        book = load_agents(
            path,
            configured_providers=configured,
            production=production,
            modules=_module_rules(environ),
        )
    except AgentsFileUnreadable as exc:
        print(f"voicegw: {exc.problems[0]}", file=sys.stderr)
        return 2
    except AgentsFileError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return 1
    for profile in sorted(book.profiles.values(), key=lambda p: (not p.default, p.name)):
        print(summary_line(profile))
    return 0


def _deployment(environ: Mapping[str, str]) -> tuple[bool, frozenset[str]]:
    """Production or not, and the configured providers: from the settings when they are
    valid, else from the variables themselves (checking a file needs no complete deployment)."""
    try:
        settings = Settings.from_env(environ)
    except SettingsError:
        production = (environ.get("VOICEGW_ENV") or "").lower() == "production"
        chosen = {name for name, key in PROVIDER_KEYS.items() if environ.get(key)}
        return production, frozenset(chosen if production else {*chosen, "echo"})
    return settings.production, configured_providers(settings)


def summary_line(profile: AgentProfile) -> str:
    """One line about ``profile``: never a number, only how many."""
    count = len(profile.numbers)
    parts = [
        f"{profile.name}{' (default)' if profile.default else ''}:",
        f"{count} number{'' if count == 1 else 's'},",
        f"providers {' > '.join(profile.providers)},",
        f"tools {', '.join(f.name for f in profile.functions()) or 'none'}",
    ]
    if profile.transfer:
        parts.append(f"(transfer to {', '.join(sorted(profile.transfer))})")
    return " ".join(parts)
