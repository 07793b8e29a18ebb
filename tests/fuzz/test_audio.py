"""Audio conversions (``gateway/media/audio.py``) under arbitrary input.

Invariants:

* G.711: decoding then encoding any code gives a code that decodes to the same sample (the
  only code with two spellings is mu-law's negative zero), for any PCM too; odd PCM lengths
  are the only error;
* ``Transcoder``: any bytes, cut into chunks anywhere, convert without an exception, and the
  output length does not depend on how the input was cut (mu-law and A-law at one rate:
  byte for byte the same output);
* ``Framer``: what goes in comes out, in whole frames, whatever the chunking;
* ``parse_wav``: anything, including mutations of valid files, is parsed or refused with
  ``WavError``; files ``build_wav`` writes parse back to the same format and audio.
"""

from __future__ import annotations

import base64
import itertools

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.media.audio import (
    Framer,
    Transcoder,
    WavError,
    alaw_decode,
    alaw_encode,
    build_wav,
    parse_wav,
    ulaw_decode,
    ulaw_encode,
)
from providers.events import (
    PCM16_8K,
    PCM16_16K,
    PCM16_24K,
    PCMA_8K,
    PCMU_8K,
    AudioChunk,
    AudioFormat,
    Encoding,
)
from tests.e2e.carrier import DATA
from tests.fuzz.profile import FUZZ, tally
from tests.fuzz.strategies import mutated_bytes

FORMATS = [PCMU_8K, PCMA_8K, PCM16_8K, PCM16_16K, PCM16_24K]


@FUZZ
@given(codes=st.binary(max_size=512))
def test_g711_round_trips(codes):
    for decode, encode in ((ulaw_decode, ulaw_encode), (alaw_decode, alaw_encode)):
        pcm = decode(codes)
        assert len(pcm) == 2 * len(codes)
        again = encode(pcm)
        assert decode(again) == pcm
        assert encode(decode(again)) == again
    tally("accepted")


@FUZZ
@given(pcm=st.binary(max_size=512))
def test_g711_encode_any_pcm(pcm):
    for decode, encode in ((ulaw_decode, ulaw_encode), (alaw_decode, alaw_encode)):
        try:
            codes = encode(pcm)
        except ValueError:
            assert len(pcm) % 2  # documented: odd PCM16 lengths only
            tally("rejected")
            continue
        tally("accepted")
        assert len(codes) * 2 == len(pcm)
        # Idempotent on samples (mu-law's negative zero, 0x7F, comes back as 0xFF).
        assert decode(encode(decode(codes))) == decode(codes)


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({min(c, len(data)) for c in cuts})
    edges = [0, *points, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(edges)]


@FUZZ
@given(
    src=st.sampled_from(FORMATS),
    dst=st.sampled_from(FORMATS),
    data=st.binary(max_size=2000),
    cuts=st.lists(st.integers(0, 2000), max_size=8),
)
def test_transcoder_chunking(src, dst, data, cuts):
    whole = Transcoder(src, dst)
    pieces = Transcoder(src, dst)
    out_whole = whole.convert(data) + whole.flush()
    out_pieces = b"".join(pieces.convert(chunk) for chunk in split(data, cuts)) + pieces.flush()
    width = 2 if dst.encoding is Encoding.PCM16 and src != dst else 1  # src == dst: as given
    assert len(out_whole) % width == 0 and len(out_pieces) % width == 0
    if src.sample_rate == dst.sample_rate:
        assert out_pieces == out_whole
    else:
        # soxr's output length is set by the input length alone (its rounding by the chunking).
        assert len(out_pieces) == len(out_whole)
    tally("accepted")


@FUZZ
@given(src=st.sampled_from(FORMATS), payload=st.text(max_size=40) | st.binary(max_size=30))
def test_transcoder_chunk_payloads(src, payload):
    """``convert_chunk`` takes base64 text; anything else is a ValueError, never more."""
    text = base64.b64encode(payload).decode() if isinstance(payload, bytes) else payload
    transcoder = Transcoder(src, PCMU_8K if src != PCMU_8K else PCM16_16K)
    try:
        transcoder.convert_chunk(AudioChunk(text, src))
    except ValueError:
        tally("rejected")
        return
    tally("accepted")


@FUZZ
@given(
    fmt=st.sampled_from(FORMATS),
    chunks=st.lists(st.binary(max_size=700), max_size=10),
    pad=st.booleans(),
)
def test_framer(fmt, chunks, pad):
    framer = Framer(fmt)
    frames = [frame for chunk in chunks for frame in framer.push(chunk)]
    assert all(len(frame) == framer.frame_bytes for frame in frames)
    assert framer.pending < framer.frame_bytes
    tail = framer.flush(pad)
    data = b"".join(chunks)
    out = b"".join(frames + tail)
    if pad and tail:
        assert len(tail[0]) == framer.frame_bytes and out.startswith(data)
    else:
        assert out == data
    tally("accepted")


WAV_FILES = [(DATA / name).read_bytes() for name in ("caller-8k-ulaw.wav", "agent-24k-pcm16.wav")]
SMALL_WAVS = [build_wav(fmt, b"\x01\x02" * 20) for fmt in FORMATS] + [
    build_wav(AudioFormat(Encoding.PCMA, 8000), b"\x55" * 3)
]


@FUZZ
@given(
    data=st.one_of(
        st.sampled_from(SMALL_WAVS).flatmap(mutated_bytes),
        st.sampled_from([w[:400] for w in WAV_FILES]).flatmap(mutated_bytes),
        st.binary(max_size=200),
        st.binary(max_size=60).map(lambda b: b"RIFF" + b[:4] + b"WAVE" + b[4:]),
    )
)
def test_parse_wav(data):
    try:
        fmt, audio = parse_wav(data)
    except WavError:
        tally("rejected")
        return
    tally("accepted")
    assert fmt.sample_rate > 0 and len(audio) <= len(data)
    if fmt.encoding is Encoding.PCM16:
        assert len(audio) % 2 == 0


@FUZZ
@given(
    fmt=st.builds(AudioFormat, st.sampled_from(list(Encoding)), st.integers(1, 384_000)),
    audio=st.binary(max_size=400),
)
def test_build_then_parse_wav(fmt, audio):
    if fmt.encoding is Encoding.PCM16 and len(audio) % 2:
        with pytest.raises(ValueError):
            build_wav(fmt, audio)
        tally("rejected")
        return
    assert parse_wav(build_wav(fmt, audio)) == (fmt, audio)
    tally("accepted")


def test_full_scale_pcm_survives_both_laws():
    """Every 16-bit sample encodes and decodes without overflow (no wrap to the other sign)."""
    samples = np.arange(-32768, 32768, dtype="<i2")
    for decode, encode in ((ulaw_decode, ulaw_encode), (alaw_decode, alaw_encode)):
        back = np.frombuffer(decode(encode(samples.tobytes())), "<i2").astype(np.int32)
        assert np.all(np.sign(back) * np.sign(samples) >= 0)
        assert np.max(np.abs(back - samples.astype(np.int32))) <= 1024
