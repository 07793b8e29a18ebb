"""Validation of fields in carrier JSON frames, shared by the Twilio and Telnyx codecs.

Each helper returns the field in its expected type or raises ``ProtocolError`` with a short
reason naming the field (never its value).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

from providers.events import DTMF_DIGITS
from providers.exceptions import ProtocolError

__all__ = [
    "DTMF_DIGITS",
    "MAX_FIELD_CHARS",
    "decimal_number",
    "json_integer",
    "object_field",
    "optional_string_field",
    "string_field",
    "string_parameters",
]

MAX_FIELD_CHARS: Final = 256
"""Longest identifier, track, digit or mark name accepted."""
MAX_PARAMETERS: Final = 64
MAX_PARAMETER_CHARS: Final = 4096


def object_field(message: Mapping[str, object], key: str) -> dict[str, object]:
    value = message.get(key)
    if type(value) is not dict:
        raise ProtocolError(f"missing {key}")
    return value


def string_field(message: Mapping[str, object], key: str) -> str:
    value = message.get(key)
    if type(value) is not str or not value or len(value) > MAX_FIELD_CHARS:
        raise ProtocolError(f"missing {key}" if value is None else f"bad {key}")
    return value


def optional_string_field(message: Mapping[str, object], key: str) -> str | None:
    return None if message.get(key) is None else string_field(message, key)


def json_integer(value: object) -> int | None:
    """An integer sent as a JSON number; ``None`` for anything else (bools included)."""
    return value if type(value) is int else None


def decimal_number(value: object, key: str) -> int | None:
    """A non-negative integer sent as a decimal string (or a JSON number); absent is ``None``."""
    if value is None:
        return None
    if type(value) is str and 0 < len(value) <= 15 and value.isascii() and value.isdigit():
        return int(value)
    if type(value) is int and value >= 0:
        return value
    raise ProtocolError(f"bad {key}")


def string_parameters(value: object, key: str) -> dict[str, str]:
    """A flat object of string values (custom parameters), bounded in count and size."""
    if value is None:
        return {}
    if type(value) is not dict or len(value) > MAX_PARAMETERS:
        raise ProtocolError(f"bad {key}")
    for name, item in value.items():
        if type(item) is not str or len(name) > MAX_FIELD_CHARS or len(item) > MAX_PARAMETER_CHARS:
            raise ProtocolError(f"bad {key}")
    return dict(value)
