"""Python tools: a handler named ``"package.module:function"`` in the agents file, imported at
load time and awaited in-process for each call.

The handler API::

    async def lookup_order(arguments: dict[str, Any], context: ToolContext) -> Any:
        ...  # return anything json.dumps accepts: it becomes the tool's output

``arguments`` is the model's JSON object; ``context`` says which call and agent (and the
caller's number when the tool sets ``send_caller``). The runner applies the tool's timeout; an
exception is reported to the model as ``{"error": "error"}`` and logged by class name only.

Where a handler may come from (:class:`ModuleRules`): a handler is code the gateway runs, so
its module must be found in the installed environment (the import path the gateway started
with: site-packages, editable installs, ``PYTHONPATH``) or in a directory the operator lists in
``VOICEGW_TOOL_MODULES_PATH``; never in the data directory, never in a directory that was only
added to the import path later, and neither the module's file nor its directory may be writable
by group or others. The module's location is checked before any of its code runs.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import re
import stat
import sys
from dataclasses import dataclass
from importlib.machinery import ModuleSpec
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


@dataclass(frozen=True, slots=True)
class ModuleRules:
    """Where handler modules may come from: ``paths`` (``VOICEGW_TOOL_MODULES_PATH``) besides
    the installed environment; never from inside ``forbidden`` (the data directory)."""

    paths: tuple[Path, ...] = ()
    forbidden: tuple[Path, ...] = ()


_INSTALLED: Final = tuple(Path(entry).resolve() for entry in sys.path if entry)
"""The import path as the gateway started (empty entries, the current directory, left out)."""


def group_or_other_writable(place: Path) -> int | None:
    """``place``'s permission bits when group or others may write it, else None (also when it
    cannot be read: the caller reports the missing file its own way)."""
    try:
        mode = stat.S_IMODE(place.stat().st_mode)
    except OSError:
        return None
    return mode if mode & (stat.S_IWGRP | stat.S_IWOTH) else None


def use_module_paths(paths: tuple[Path, ...]) -> None:
    """Put each of ``paths`` at the front of ``sys.path`` (once), so their modules import."""
    for path in reversed(paths):
        entry = str(path.resolve())
        if entry not in sys.path:
            sys.path.insert(0, entry)


def resolve_handler(ref: str, rules: ModuleRules) -> ToolHandler:
    """Import ``ref`` (``package.module:function``) under ``rules`` and return the async
    callable it names.

    Raises :class:`HandlerError` when the reference is malformed, the module is not found or
    comes from a place ``rules`` refuse (checked before it is imported), does not import, the
    attribute is missing or it is not an async callable.
    """
    if not HANDLER_REF.fullmatch(ref):
        raise HandlerError("must be 'package.module:function'")
    module_name, _, attribute = ref.partition(":")
    use_module_paths(rules.paths)
    top = module_name.partition(".")[0]
    _check_place(top, _spec(top, module_name), rules)
    try:
        target: object = importlib.import_module(module_name)
    except Exception as exc:  # the operator's module: any error it raises refuses the file
        raise HandlerError(f"cannot import {module_name!r}: {_short(exc)}") from None
    _check_place(module_name, getattr(target, "__spec__", None), rules)
    for part in attribute.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise HandlerError(f"module {module_name!r} has no attribute {attribute!r}") from None
    if not _is_async_callable(target):
        raise HandlerError(f"{ref!r} is not an async function (async def name(arguments, context))")
    return cast(ToolHandler, target)


def _spec(top: str, module_name: str) -> ModuleSpec | None:
    """The spec of the top-level package ``top``, found without running any of its code."""
    loaded = sys.modules.get(top)
    if loaded is not None:
        return getattr(loaded, "__spec__", None)
    try:
        spec = importlib.util.find_spec(top)
    except (ImportError, ValueError) as exc:
        raise HandlerError(f"cannot import {module_name!r}: {_short(exc)}") from None
    if spec is None:
        raise HandlerError(
            f"cannot import {module_name!r}: no module named {top!r} (install it, or list its "
            "directory in VOICEGW_TOOL_MODULES_PATH)"
        )
    return spec


def _check_place(name: str, spec: ModuleSpec | None, rules: ModuleRules) -> None:
    """Refuse a module whose file lies where ``rules`` do not allow handler code."""
    if spec is None:
        return  # a module without a spec is built into the interpreter
    if spec.origin is not None and spec.has_location:
        files = [Path(spec.origin).resolve()]
    else:  # a namespace package: its directories
        files = [Path(p).resolve() / "__init__.py" for p in spec.submodule_search_locations or ()]
    for file in files:
        for forbidden in rules.forbidden:
            if file.is_relative_to(forbidden.resolve()):
                raise HandlerError(
                    f"module {name!r} is in the data directory ({forbidden}); tool code may "
                    "not come from there"
                )
        # The directory on the import path the module was found in.
        depth = name.count(".") + (1 if spec.submodule_search_locations is not None else 0)
        root = file.parents[depth]
        allowed = (*_INSTALLED, *(p.resolve() for p in rules.paths))
        on_path = {Path(entry).resolve() for entry in sys.path if entry}
        if root in on_path and root not in allowed:
            raise HandlerError(
                f"module {name!r} is in {root}, which is neither installed nor listed in "
                "VOICEGW_TOOL_MODULES_PATH"
            )
        for place in (file, file.parent):
            if (mode := group_or_other_writable(place)) is not None:
                raise HandlerError(
                    f"module {name!r}: {place} is writable by group or others (mode {mode:o}); "
                    f"chmod go-w {place}"
                )


def _is_async_callable(target: object) -> bool:
    if inspect.iscoroutinefunction(target):
        return True
    call = getattr(target, "__call__", None)  # noqa: B004 (an instance with async __call__)
    return not inspect.isclass(target) and inspect.iscoroutinefunction(call)


def _short(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}".splitlines()[0] if str(exc) else type(exc).__name__
    return text if len(text) <= 200 else text[:197] + "..."
