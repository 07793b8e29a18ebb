"""Hypothesis strategies for hostile input: random values, and mutations of valid ones.

Random bytes and text rarely get past a parser's first check, so most targets also draw
*structured* inputs: a recorded valid frame or request with a few mutations applied (a value
swapped for one of another type, a key dropped or added, characters changed, the text cut
short or spliced), which reach the checks deeper inside.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from typing import Any, Final

import orjson
from hypothesis import strategies as st

# Values that stress parsers: huge and negative numbers, digits beyond int()'s default limit,
# non-ASCII digits, surrogates, controls, long strings, and wrong container types.
AWKWARD: Final[list[Any]] = [
    "",
    " ",
    "0",
    "-1",
    "1e309",
    "NaN",
    "²",
    "١٢٣",
    "\x00",
    "\ud800",
    "\u2028",
    "A=AA",
    "====",
    "1" * 5000,
    "x" * 70_000,
    "audio/pcm;rate=" + "9" * 5000,
    "9" * 400 + "s",
    0,
    -1,
    2**31,
    2**63 - 1,
    -(2**63),
    2**64,
    1.5,
    -0.0,
    1e308,
    True,
    False,
    None,
    [],
    {},
    [[[[]]]],
]
AWKWARD_TEXT = st.sampled_from([v for v in AWKWARD if isinstance(v, str)])
AWKWARD_DECODED_TEXT = st.sampled_from([v for v in AWKWARD if isinstance(v, str) and v != "\ud800"])
"""What text decoded from bytes can hold: no lone surrogates."""
AWKWARD_NUMBERS = st.sampled_from([v for v in AWKWARD if not isinstance(v, str | list | dict)])

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**64 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=40),
    AWKWARD_TEXT,
    AWKWARD_NUMBERS,
)
json_values = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(st.text(max_size=12), children, max_size=4),
    ),
    max_leaves=12,
)
"""Any JSON value (and a few that only some encoders allow, such as huge integers)."""


def dumps(value: Any) -> str:
    """JSON text of ``value``; values orjson refuses (integers beyond 64 bits, surrogates) are
    written by the standard library instead, so they still reach the parser under test."""
    try:
        return orjson.dumps(value).decode()
    except TypeError:  # orjson.JSONEncodeError is a TypeError
        return json.dumps(value)


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    paths = [prefix]
    if isinstance(value, dict):
        for key, item in value.items():
            paths.extend(_paths(item, (*prefix, key)))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            paths.extend(_paths(item, (*prefix, index)))
    return paths


def _get(value: Any, path: tuple[Any, ...]) -> Any:
    for step in path:
        value = value[step]
    return value


@st.composite
def mutated_json(draw: st.DrawFn, document: Any, max_mutations: int = 3) -> Any:
    """``document`` (parsed JSON) with one to ``max_mutations`` structural mutations."""
    doc = copy.deepcopy(document)
    for _ in range(draw(st.integers(1, max_mutations))):
        path = draw(st.sampled_from(_paths(doc)))
        if not path:
            if draw(st.integers(0, 9)) == 0:
                doc = draw(json_values)  # the whole frame becomes something else
            continue
        parent, key = _get(doc, path[:-1]), path[-1]
        operation = draw(st.sampled_from(["replace", "delete", "insert", "stringify", "nest"]))
        if operation == "replace":
            parent[key] = draw(json_values)
        elif operation == "delete":
            del parent[key]
        elif operation == "insert":
            if isinstance(parent, dict):
                parent[draw(st.text(max_size=12))] = draw(json_values)
            else:
                parent.insert(key, draw(json_values))
        elif operation == "stringify":
            # The same value in the wrong JSON type: 8000 -> "8000", "1" -> 1, [x] -> "[x]".
            item = parent[key]
            if isinstance(item, str) and item.isascii() and item.isdigit() and len(item) < 18:
                parent[key] = int(item)
            else:
                parent[key] = dumps(item)
        else:
            parent[key] = draw(st.sampled_from([[parent[key]], {"value": parent[key]}]))
    return doc


def leaf_swaps(document: Any) -> Iterator[Any]:
    """``document`` with one value replaced by one of ``AWKWARD``, for every value and every
    place: each field check of a known-good frame meets each awkward value once."""
    for path in _paths(document)[1:]:
        for value in AWKWARD:
            doc = copy.deepcopy(document)
            _get(doc, path[:-1])[path[-1]] = value
            yield doc


@st.composite
def mutated_text(draw: st.DrawFn, text: str, *, surrogates: bool = True) -> str:
    """``text`` with characters changed, removed, inserted, or the text cut short.
    ``surrogates=False`` keeps lone surrogates out, for text that was decoded from bytes."""
    chars = st.characters(exclude_categories=() if surrogates else ["Cs"])
    awkward = AWKWARD_TEXT if surrogates else AWKWARD_DECODED_TEXT
    for _ in range(draw(st.integers(1, 3))):
        i = draw(st.integers(0, len(text)))
        j = draw(st.integers(i, min(len(text), i + 8)))
        operation = draw(st.sampled_from(["replace", "delete", "insert", "truncate", "repeat"]))
        if operation == "replace":
            text = text[:i] + draw(st.text(chars, min_size=1, max_size=j - i + 1)) + text[j:]
        elif operation == "delete":
            text = text[:i] + text[j:]
        elif operation == "insert":
            text = text[:i] + draw(st.text(chars, min_size=1, max_size=8) | awkward) + text[i:]
        elif operation == "truncate":
            text = text[:i]
        else:
            text = text[:j] + text[i:]
    return text


@st.composite
def mutated_bytes(draw: st.DrawFn, data: bytes) -> bytes:
    """``data`` with bytes flipped, removed, inserted, or cut short."""
    buffer = bytearray(data)
    for _ in range(draw(st.integers(1, 4))):
        i = draw(st.integers(0, len(buffer)))
        operation = draw(st.sampled_from(["flip", "delete", "insert", "truncate"]))
        if operation == "flip" and i < len(buffer):
            buffer[i] ^= draw(st.integers(1, 255))
        elif operation == "delete":
            del buffer[i : i + draw(st.integers(1, 8))]
        elif operation == "insert":
            buffer[i:i] = draw(st.binary(min_size=1, max_size=8))
        elif operation == "truncate":
            del buffer[i:]
    return bytes(buffer)


def frames_from(recorded: list[str]) -> st.SearchStrategy[str | bytes]:
    """Text or binary WebSocket frames: recorded ones mutated in structure or in text, plus
    random text and bytes."""
    parsed = [orjson.loads(frame) for frame in recorded]
    return st.one_of(
        st.sampled_from(parsed).flatmap(mutated_json).map(dumps),
        st.sampled_from(recorded).flatmap(mutated_text),
        st.sampled_from(recorded),
        json_values.map(dumps),
        st.text(max_size=200),
        st.binary(max_size=200),
    )
