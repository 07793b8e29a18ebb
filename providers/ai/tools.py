"""Tools across the provider codecs: the checks a declared :class:`Function` must pass, the
checks a provider's tool call must pass before it becomes a :class:`ToolCall`, and the
bookkeeping that reports each call once.

A tool call is model output relayed by the provider: its id, name and arguments are checked
for shape and size only (arguments stay unparsed JSON text), and a call that fails a check
raises :class:`ProtocolError` with a short reason that never quotes the frame.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import orjson

from providers.ai.config import Function
from providers.events import ToolCall
from providers.exceptions import ProtocolError

TOOL_NAME: Final = re.compile(r"[A-Za-z0-9_-]{1,64}")
"""What every provider accepts as a function name (OpenAI's rule, the narrowest)."""
CALL_ID: Final = re.compile(r"[\x21-\x7e]{1,128}")
"""A provider's call id: 1 to 128 visible ASCII characters."""
MAX_ARGUMENTS_BYTES: Final = 16 * 1024
"""Largest arguments (UTF-8 JSON text) a tool call may carry."""
MAX_CALLS_PER_FRAME: Final = 16
"""Most tool calls one provider frame may carry."""


def check_declared(tools: Sequence[Function]) -> tuple[Function, ...]:
    """``tools`` as a tuple. Raises ``ValueError`` for a name outside :data:`TOOL_NAME`, a
    name declared twice or parameters that are not a JSON object schema (our misuse)."""
    names: set[str] = set()
    for tool in tools:
        if TOOL_NAME.fullmatch(tool.name) is None:
            raise ValueError(f"invalid tool name {tool.name!r}")
        if tool.name in names:
            raise ValueError(f"tool {tool.name!r} declared twice")
        if not isinstance(tool.parameters, Mapping) or tool.parameters.get("type") != "object":
            raise ValueError(f"tool {tool.name!r}: parameters must be an object schema")
        names.add(tool.name)
    return tuple(tools)


def tool_call(call_id: Any, name: Any, arguments: Any) -> ToolCall:
    """A :class:`ToolCall` from a provider's fields. Raises :class:`ProtocolError` for an id
    outside :data:`CALL_ID`, a name outside :data:`TOOL_NAME`, or arguments that are not a
    string of at most :data:`MAX_ARGUMENTS_BYTES`."""
    if not isinstance(name, str) or TOOL_NAME.fullmatch(name) is None:
        raise ProtocolError("tool call: name missing or malformed")
    if not isinstance(arguments, str):
        raise ProtocolError("tool call: arguments not a string")
    # Counting characters first bounds the encode below.
    if len(arguments) > MAX_ARGUMENTS_BYTES or len(arguments.encode()) > MAX_ARGUMENTS_BYTES:
        raise ProtocolError("tool call: arguments too large")
    return ToolCall(checked_call_id(call_id), name, arguments)


def checked_call_id(value: Any) -> str:
    """``value`` if it is a call id within :data:`CALL_ID`; else :class:`ProtocolError`."""
    if not isinstance(value, str) or CALL_ID.fullmatch(value) is None:
        raise ProtocolError("tool call: id missing, too long or malformed")
    return value


def json_arguments(args: Any) -> str:
    """JSON text of a provider's argument object (Gemini sends an object, not text); absent
    arguments are ``{}``. Raises :class:`ProtocolError` for anything but an object."""
    if args is None:
        return "{}"
    if not isinstance(args, dict):
        raise ProtocolError("tool call: args not an object")
    # Parsed by orjson, so it encodes back (big integers were read as floats).
    return orjson.dumps(args).decode()


def count_calls(calls: Any, what: str) -> list[Any]:
    """``calls`` as a non-empty list of at most :data:`MAX_CALLS_PER_FRAME` items."""
    if not isinstance(calls, list) or not calls:
        raise ProtocolError(f"{what}: not a non-empty list")
    if len(calls) > MAX_CALLS_PER_FRAME:
        raise ProtocolError(f"{what}: too many calls in one frame")
    return calls


def output_object(output: str) -> dict[str, Any]:
    """A tool's output as the JSON object Gemini's ``FunctionResponse.response`` must be: the
    output itself when it is a JSON object, else ``{"output": <value>}`` (the parsed value, or
    the text when the output is not JSON)."""
    try:
        value = orjson.loads(output)
    except orjson.JSONDecodeError:
        return {"output": output}
    return value if isinstance(value, dict) else {"output": value}


@dataclass(slots=True)
class SeenCalls:
    """The latest ``limit`` call ids reported, so a call the provider announces twice (OpenAI:
    ``function_call_arguments.done`` and ``output_item.done``) is reported once."""

    limit: int = 256
    _ids: OrderedDict[str, None] = field(default_factory=OrderedDict)

    def first(self, calls: Iterable[ToolCall]) -> list[ToolCall]:
        """The calls of ``calls`` not seen before, each remembered."""
        fresh: list[ToolCall] = []
        for call in calls:
            if call.call_id in self._ids:
                continue
            self._ids[call.call_id] = None
            if len(self._ids) > self.limit:
                self._ids.popitem(last=False)
            fresh.append(call)
        return fresh
