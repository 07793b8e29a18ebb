"""Python tools: a handler named ``"package.module:function"`` in the agents file, imported at
load time and awaited in-process for each call.

The handler API::

    async def lookup_order(arguments: dict[str, Any], context: ToolContext) -> Any:
        ...  # return anything json.dumps accepts: it becomes the tool's output

``arguments`` is the model's JSON object; ``context`` says which call and agent (and the
caller's number when the tool sets ``send_caller``). The runner applies the tool's timeout; an
exception is reported to the model as ``{"error": "error"}`` and logged by class name only.
"""

from __future__ import annotations

import importlib
import inspect
import re
import sys
from pathlib import Path
from typing import Final, cast

from gateway.agents.profiles import ToolHandler

HANDLER_REF: Final = re.compile(
    r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*"
    r"(?:\.[A-Za-z_][A-Za-z0-9_]*)*"
)
"""``package.module:function`` (the attribute may be dotted: ``module:Class.method``)."""


class HandlerError(Exception):
    """A handler cannot be used; the message says why (one line)."""


def add_app_dir(directory: Path) -> None:
    """Put ``directory`` first on ``sys.path`` (once), as uvicorn's ``--app-dir`` does, so a
    handler module next to the agents file imports."""
    entry = str(directory.resolve())
    if entry not in sys.path:
        sys.path.insert(0, entry)


def resolve_handler(ref: str) -> ToolHandler:
    """Import ``ref`` (``package.module:function``) and return the async callable it names.

    Raises :class:`HandlerError` when the reference is malformed, the module does not import,
    the attribute is missing or it is not an async callable.
    """
    if not HANDLER_REF.fullmatch(ref):
        raise HandlerError("must be 'package.module:function'")
    module_name, _, attribute = ref.partition(":")
    try:
        target: object = importlib.import_module(module_name)
    except Exception as exc:  # the operator's module: any error it raises refuses the file
        raise HandlerError(f"cannot import {module_name!r}: {_short(exc)}") from None
    for part in attribute.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise HandlerError(f"module {module_name!r} has no attribute {attribute!r}") from None
    if not _is_async_callable(target):
        raise HandlerError(f"{ref!r} is not an async function (async def name(arguments, context))")
    return cast(ToolHandler, target)


def _is_async_callable(target: object) -> bool:
    if inspect.iscoroutinefunction(target):
        return True
    call = getattr(target, "__call__", None)  # noqa: B004 (an instance with async __call__)
    return not inspect.isclass(target) and inspect.iscoroutinefunction(call)


def _short(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}".splitlines()[0] if str(exc) else type(exc).__name__
    return text if len(text) <= 200 else text[:197] + "..."
