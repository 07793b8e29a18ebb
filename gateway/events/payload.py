"""What a call event says: its type, its id, and the JSON body every attempt sends.

The body is ``{"type", "id", "created_at", "data"}``: ``created_at`` in ISO 8601 (UTC,
milliseconds), ``data`` only the fields of :data:`DATA_FIELDS`, each of its expected type.
Anything else is dropped, and so is any text that looks like a phone number: numbers are never
sent. Pure: no I/O.
"""

from __future__ import annotations

import enum
import json
import math
import re
import secrets
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Final

__all__ = ["DATA_FIELDS", "EventType", "clean_data", "event_body", "new_event_id"]


class EventType(enum.StrEnum):
    STARTED = "call.started"
    ANSWERED = "call.answered"
    ENDED = "call.ended"
    TRANSFERRED = "call.transferred"
    FAILED = "call.failed"


DATA_FIELDS: Final[Mapping[str, type | tuple[type, ...]]] = {
    "call_id": str,
    "agent": str,
    "carrier": str,
    "direction": str,  # "inbound" | "outbound"
    "outcome": str,
    "duration_s": (int, float),
    "providers": list,  # of provider names
    "failovers": int,
    "transfer_to": str,  # the key of the agent's transfer table, never the number
    "transcript": list,  # [{"role", "text"}]: only for agents with include_transcript = true
}
"""The fields an event's ``data`` may carry, and their types."""

MAX_TEXT: Final = 128
MAX_ITEMS: Final = 16
MAX_TRANSCRIPT_CHARS: Final = 64 * 1024
"""A transcript in an event stops at this many characters of text (the rest is cut off)."""
# Seven digits or more, whatever the punctuation: a phone number, never sent.
_PHONE_LIKE: Final = re.compile(r"(?:\D*\d){7}")


def new_event_id() -> str:
    """A new event id (``evt_`` + 24 random URL-safe characters): the body's ``id`` and the
    ``webhook-id`` of every attempt."""
    return "evt_" + secrets.token_urlsafe(18)


def _text(value: object) -> str | None:
    if not isinstance(value, str) or len(value) > MAX_TEXT or _PHONE_LIKE.match(value):
        return None
    return value


def clean_data(call_id: str, data: Mapping[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """The ``data`` to send: ``call_id`` and each known field of its type (text up to 128
    characters, never phone-like; numbers finite; ``providers``: up to 16 names), and the
    names of the fields dropped (to log: names only, never values)."""
    kept: dict[str, Any] = {"call_id": call_id}
    dropped: list[str] = []
    for name, value in data.items():
        expected = DATA_FIELDS.get(name)
        if name == "call_id" or value is None:
            continue
        if expected is None or isinstance(value, bool) or not isinstance(value, expected):
            dropped.append(name if expected is not None else "(unknown)")
            continue
        if name == "transcript":
            turns = _transcript(value)
            if turns is None:
                dropped.append(name)
            else:
                kept[name] = turns
            continue
        if isinstance(value, str):
            text = _text(value)
            if text is None:
                dropped.append(name)
                continue
            kept[name] = text
        elif isinstance(value, list):
            names = [_text(v) for v in value[:MAX_ITEMS]]
            if any(n is None for n in names):
                dropped.append(name)
                continue
            kept[name] = names
        elif isinstance(value, float):
            if not math.isfinite(value):
                dropped.append(name)
                continue
            kept[name] = round(value, 3)
        else:
            kept[name] = value
    return kept, dropped


def _transcript(value: object) -> list[dict[str, str]] | None:
    """The turns as sent (the agent's profile asked for them: what was said is sent as said,
    digits included), cut at ``MAX_TRANSCRIPT_CHARS``; None when a turn is malformed."""
    if not isinstance(value, list):
        return None
    turns: list[dict[str, str]] = []
    left = MAX_TRANSCRIPT_CHARS
    for turn in value:
        if not isinstance(turn, Mapping):
            return None
        role, text = turn.get("role"), turn.get("text")
        if role not in ("caller", "agent") or not isinstance(text, str):
            return None
        if left <= 0:
            break
        turns.append({"role": role, "text": text[:left]})
        left -= len(text)
    return turns


def iso8601(timestamp: float) -> str:
    """Unix seconds as ISO 8601 in UTC with milliseconds (``2024-05-01T12:00:00.000Z``)."""
    moment = datetime.fromtimestamp(timestamp, UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def event_body(event_id: str, type: EventType, created_at: float, data: Mapping[str, Any]) -> str:
    """The JSON body of an event whose ``data`` is already clean (:func:`clean_data`)."""
    message = {"type": type.value, "id": event_id, "created_at": iso8601(created_at), "data": data}
    return json.dumps(message, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
