"""The agents room: who answers a call and what it can do.

It owns the agent profiles file (``VOICEGW_AGENTS_FILE``: its format, loading and validation,
routing a dialed number to a profile, the built-in profile made from the settings when there is
no file) and the tool runner (a tool call from the model run as a signed HTTP request to the
customer's backend or as an in-process Python handler, behind a breaker per endpoint).

It may import ``providers``, ``security``, ``metrics`` and ``gateway.settings`` only; the app
(``gateway.app``, ``gateway.runtime``, ``gateway.media``, ``gateway.calls``) imports it, never the
reverse.

Modules: ``profiles`` (the frozen profile types, routing, the console summary), ``loader``
(the TOML file to an :class:`AgentBook`, every problem named), ``tools`` (the runner),
``http_tools`` (Standard Webhooks signing, the capped request), ``python_tools`` (handlers).
"""

from gateway.agents.loader import load_agents
from gateway.agents.profiles import (
    END_CALL,
    RESERVED_TOOLS,
    TRANSFER_CALL,
    AgentBook,
    AgentProfile,
    AgentsFileError,
    ToolSpec,
    book_summary,
    built_in_book,
)
from gateway.agents.tools import ToolContext, ToolOutcome, ToolRunner, parse_tool_secrets

__all__ = [
    "END_CALL",
    "RESERVED_TOOLS",
    "TRANSFER_CALL",
    "AgentBook",
    "AgentProfile",
    "AgentsFileError",
    "ToolContext",
    "ToolOutcome",
    "ToolRunner",
    "ToolSpec",
    "book_summary",
    "built_in_book",
    "load_agents",
    "parse_tool_secrets",
]
