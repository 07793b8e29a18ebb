"""Parsing of ``{"type": ...}`` JSON frames, shared by the OpenAI Realtime and Deepgram Voice
Agent codecs, and the base64 check of audio the codecs pass on without decoding. Errors are
``ProtocolError`` with a short reason (never the frame's content)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Final

import orjson

from providers.exceptions import ProtocolError


def load_typed(frame: str, limit: int) -> dict[str, Any]:
    """A JSON object with a string ``type``, from a text frame of at most ``limit`` chars."""
    if len(frame) > limit:
        raise ProtocolError("frame too large")
    try:
        msg = orjson.loads(frame)
    except orjson.JSONDecodeError:
        raise ProtocolError("frame is not JSON") from None
    if not isinstance(msg, dict) or not isinstance(msg.get("type"), str):
        raise ProtocolError("frame is not an object with a string type")
    return msg


def string_field(msg: Mapping[str, Any], key: str) -> str:
    """``msg[key]``, which must be a string."""
    value = msg.get(key)
    if not isinstance(value, str):
        raise ProtocolError(f"{msg.get('type')}: {key} missing or not a string")
    return value


_BASE64: Final = re.compile(r"(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?")


def is_base64(text: str) -> bool:
    """Whether ``text`` is standard padded base64 that decodes strictly. A shape check: audio
    is forwarded on the fast path without decoding, but the transcoder and the recorder decode
    it further on."""
    return _BASE64.fullmatch(text) is not None
