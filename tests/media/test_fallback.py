"""The fallback message a caller hears when no provider can take the call."""

from __future__ import annotations

import pytest

from gateway.media.audio import write_wav
from gateway.media.fallback import fallback_audio, sit_tones
from providers.events import PCMA_8K, PCMU_8K

FRAME = 160  # 20 ms of G.711 at 8 kHz


def test_the_tones_come_in_whole_20_ms_frames():
    audio = fallback_audio(None)
    assert len(audio) % FRAME == 0
    assert audio.startswith(sit_tones())
    assert set(audio[len(sit_tones()) :]) <= {0xFF}  # padded with mu-law silence


def test_a_recorded_message_is_padded_to_whole_frames(tmp_path):
    path = tmp_path / "sorry.wav"
    message = bytes(range(256)) * 3 + b"\x10" * 5  # 773 bytes: not a whole frame
    write_wav(path, PCMU_8K, message)
    audio = fallback_audio(path)
    assert len(audio) == 5 * FRAME
    assert audio[: len(message)] == message
    assert audio[len(message) :] == b"\xff" * (5 * FRAME - len(message))


def test_a_message_not_in_mu_law_is_refused_at_start_up(tmp_path):
    path = tmp_path / "alaw.wav"
    write_wav(path, PCMA_8K, b"\xd5" * FRAME)
    with pytest.raises(ValueError, match="must be 8 kHz mono mu-law"):
        fallback_audio(path)
