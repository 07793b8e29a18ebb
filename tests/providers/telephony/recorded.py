"""Recorded carrier frames and the caller audio they were built from."""

from __future__ import annotations

import functools
import json
import struct
from pathlib import Path
from typing import Any

FRAMES = Path(__file__).parent / "frames"
CALLER_WAV = FRAMES.parent.parent.parent / "data" / "caller-8k-ulaw.wav"
FRAME_BYTES = 160  # 20 ms of 8 kHz G.711


def load_jsonl(name: str) -> list[str]:
    """The text frames of a recorded stream, one per line, exactly as received."""
    return (FRAMES / name).read_text().splitlines()


def load_json(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((FRAMES / name).read_text())
    return data


def wav_data(path: Path) -> bytes:
    """The ``data`` chunk of a RIFF/WAVE file (the stdlib ``wave`` module refuses mu-law)."""
    raw = path.read_bytes()
    assert raw[:4] == b"RIFF" and raw[8:12] == b"WAVE"
    pos = 12
    while pos + 8 <= len(raw):
        chunk_id = raw[pos : pos + 4]
        (size,) = struct.unpack("<I", raw[pos + 4 : pos + 8])
        if chunk_id == b"data":
            return raw[pos + 8 : pos + 8 + size]
        pos += 8 + size + (size & 1)
    raise AssertionError("no data chunk")


@functools.cache
def caller_ulaw() -> bytes:
    """Raw mu-law bytes of the shared caller recording."""
    return wav_data(CALLER_WAV)
