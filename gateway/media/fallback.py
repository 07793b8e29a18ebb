"""What the caller hears when no provider can take the call: a recorded message
(``VOICEGW_FALLBACK_WAV``, 8 kHz μ-law) or, by default, the ITU-T special information tones
that tell a caller "this call cannot be completed" in every network."""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Final

import numpy as np

from gateway.media.audio import read_wav, ulaw_encode
from providers.events import PCMU_8K

# ITU-T E.180 / Telcordia SR-2275 "no circuit" SIT: three rising tones.
SIT_TONES: Final = ((913.8, 0.274), (1370.6, 0.274), (1776.7, 0.380))
SIT_LEVEL: Final = 0.3  # of full scale


@cache
def sit_tones() -> bytes:
    """The three special information tones, 8 kHz μ-law, followed by 200 ms of silence."""
    rate = PCMU_8K.sample_rate
    parts = []
    for frequency, seconds in SIT_TONES:
        t = np.arange(int(rate * seconds)) / rate
        parts.append(np.sin(2 * np.pi * frequency * t) * SIT_LEVEL * 32767)
    parts.append(np.zeros(rate // 5))
    pcm = np.concatenate(parts).astype(np.int16)
    return ulaw_encode(pcm.tobytes())


FRAME_BYTES: Final = 160  # 20 ms of 8 kHz G.711
ULAW_SILENCE: Final = b"\xff"


def fallback_audio(path: Path | None) -> bytes:
    """The configured message, or the SIT tones, padded with silence to whole 20 ms frames
    (Telnyx refuses a shorter last frame). Raises ``ValueError`` for a WAV that is not 8 kHz
    mono μ-law (checked at start-up, not mid-call)."""
    if path is None:
        data = sit_tones()
    else:
        fmt, data = read_wav(path)
        if fmt != PCMU_8K:
            raise ValueError(f"{path} must be 8 kHz mono mu-law, not {fmt}")
    return data + ULAW_SILENCE * (-len(data) % FRAME_BYTES)
