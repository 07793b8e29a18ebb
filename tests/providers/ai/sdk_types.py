"""Check a wire message against an SDK's request ``TypedDict`` (the ``*Params`` types of
deepgram-sdk and openai), strictly: every required key present at every level, no key the type
does not define, literals and scalar types as declared. The SDKs' pydantic models are
permissive (defaults fill missing required keys, extras are kept), so they alone would not
catch a message the server refuses.
"""

from __future__ import annotations

import collections.abc
import types
import typing
from typing import Any

import typing_extensions

_SEQUENCES = (
    list,
    collections.abc.Sequence,
    collections.abc.Iterable,
    collections.abc.Collection,
)
_MAPPINGS = (dict, collections.abc.Mapping)


def problems(value: Any, tp: Any, path: str = "$") -> list[str]:
    """What is wrong with ``value`` as a ``tp``; empty when it conforms."""
    origin = typing.get_origin(tp)
    if tp is Any or tp is object:
        return []
    if origin is typing.Annotated:
        return problems(value, typing.get_args(tp)[0], path)
    if origin in (typing.Union, types.UnionType):
        found = [problems(value, branch, path) for branch in typing.get_args(tp)]
        if any(not f for f in found):
            return []
        # Report the closest branch: one of the value's own kind, then with fewest problems.
        return min(found, key=lambda f: (any(p.startswith(f"{path}: ") for p in f), len(f)))
    if origin in (typing.Literal, typing_extensions.Literal):
        allowed = typing.get_args(tp)
        return [] if value in allowed else [f"{path}: {value!r} not one of {allowed}"]
    if tp is type(None):
        return [] if value is None else [f"{path}: not null"]
    if typing_extensions.is_typeddict(tp):
        return _typed_dict(value, tp, path)
    if origin in _SEQUENCES or tp in _SEQUENCES:
        if not isinstance(value, list):
            return [f"{path}: not a list"]
        (item,) = typing.get_args(tp) or (Any,)
        return [p for i, v in enumerate(value) for p in problems(v, item, f"{path}[{i}]")]
    if origin in _MAPPINGS or tp in _MAPPINGS:
        if not isinstance(value, dict):
            return [f"{path}: not an object"]
        _, item = typing.get_args(tp) or (Any, Any)
        return [p for k, v in value.items() for p in problems(v, item, f"{path}.{k}")]
    if tp is bool:
        return [] if isinstance(value, bool) else [f"{path}: not a boolean"]
    if tp is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
        return [] if ok else [f"{path}: not an integer"]
    if tp is float:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        return [] if ok else [f"{path}: not a number"]
    if tp is str:
        return [] if isinstance(value, str) else [f"{path}: not a string"]
    if isinstance(tp, typing.NewType):
        return problems(value, tp.__supertype__, path)
    raise TypeError(f"{path}: cannot check against {tp!r}")


def _typed_dict(value: Any, tp: Any, path: str) -> list[str]:
    if not isinstance(value, dict):
        return [f"{path}: not an object"]
    hints = typing_extensions.get_type_hints(tp)
    # Required-ness from the annotations themselves: ``__required_keys__`` is wrong for
    # NotRequired[...] written under ``from __future__ import annotations`` (deepgram-sdk).
    marked = typing_extensions.get_type_hints(tp, include_extras=True)
    required = [key for key, hint in marked.items() if _required(hint, tp.__total__)]
    found = [f"{path}.{key}: required" for key in required if key not in value]
    found += [f"{path}.{key}: not defined by {tp.__name__}" for key in value if key not in hints]
    for key, item in value.items():
        if key in hints:
            found += problems(item, hints[key], f"{path}.{key}")
    return found


def _required(hint: Any, total: bool) -> bool:
    while True:
        origin = typing.get_origin(hint)
        if origin in (typing_extensions.NotRequired, typing.NotRequired):
            return False
        if origin in (typing_extensions.Required, typing.Required):
            return True
        if origin is not typing.Annotated:
            return total
        hint = typing.get_args(hint)[0]


def assert_conforms(value: Any, tp: Any) -> None:
    """Fail listing every problem of ``value`` as a ``tp``."""
    found = problems(value, tp)
    assert not found, "\n".join(found)
