"""gateway.media.audio: G.711 against a reference written from the spec, streaming resampling,
framing and WAV files."""

from __future__ import annotations

import base64
import itertools
import random
import struct
from pathlib import Path

import numpy as np
import pytest
import soxr

from gateway.media.audio import (
    Framer,
    ResampleQuality,
    Transcoder,
    WavError,
    alaw_decode,
    alaw_encode,
    build_wav,
    is_passthrough,
    parse_wav,
    read_wav,
    silence,
    ulaw_decode,
    ulaw_encode,
    write_wav,
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

AUDIO_DIR = Path(__file__).parent.parent / "data"

# -- a reference G.711 written from the recommendation's tables --------------------------------
#
# G.711 quantises the magnitude of a sample with 8 segments of 16 equal steps and sends
# sign | segment | step. Decoding gives the middle of the step. Magnitudes are symmetric about
# zero: a 16-bit sample x stands for [x, x + 1), so the negative sample x mirrors -1 - x.
# mu-law works on 14 bits (16-bit >> 2) and sends the character inverted; A-law works on
# 13 bits (16-bit >> 3) and sends it with the even bits inverted (XOR 0x55).

# (start, step) of each segment, in 14-bit units. Segment 0's first step is [0, 1).
ULAW_SEGMENTS = [(-1, 2), (31, 4), (95, 8), (223, 16), (479, 32), (991, 64), (2015, 128)]
ULAW_SEGMENTS.append((4063, 256))
# In 13-bit units. Segments 0 and 1 share a step of 2.
ALAW_SEGMENTS = [(0, 2), (32, 2), (64, 4), (128, 8), (256, 16), (512, 32), (1024, 64)]
ALAW_SEGMENTS.append((2048, 128))


def _mirror(x: int, shift: int) -> tuple[bool, int]:
    positive = x >= 0
    v = x >> shift
    return positive, (v if positive else -1 - v)


def _quantise(v: int, segments: list[tuple[int, int]]) -> tuple[int, int]:
    for seg, (start, step) in enumerate(segments):
        if v < start + 16 * step:
            return seg, max(0, (v - start) // step)
    return len(segments) - 1, 15  # beyond full scale: the top step


def ref_ulaw_encode(x: int) -> int:
    positive, v = _mirror(x, 2)
    seg, step = _quantise(v, ULAW_SEGMENTS)
    character = (0 if positive else 0x80) | seg << 4 | step
    return character ^ 0xFF


def ref_ulaw_decode(code: int) -> int:
    character = code ^ 0xFF
    seg, step = (character >> 4) & 7, character & 15
    start, width = ULAW_SEGMENTS[seg]
    middle = 0 if (seg, step) == (0, 0) else start + step * width + width // 2
    value = 4 * middle
    return -value if character & 0x80 else value


def ref_alaw_encode(x: int) -> int:
    positive, v = _mirror(x, 3)
    seg, step = _quantise(v, ALAW_SEGMENTS)
    character = (0x80 if positive else 0) | seg << 4 | step
    return character ^ 0x55


def ref_alaw_decode(code: int) -> int:
    character = code ^ 0x55
    seg, step = (character >> 4) & 7, character & 15
    start, width = ALAW_SEGMENTS[seg]
    value = 8 * (start + step * width) + 4 * width
    return value if character & 0x80 else -value


ALL_CODES = bytes(range(256))
ALL_SAMPLES = np.arange(-32768, 32768, dtype=np.int16)


def _pcm(samples: np.ndarray) -> bytes:
    return samples.astype("<i2").tobytes()


def _samples(pcm: bytes) -> np.ndarray:
    return np.frombuffer(pcm, "<i2").astype(np.int64)


@pytest.mark.parametrize(
    ("decode", "reference"), [(ulaw_decode, ref_ulaw_decode), (alaw_decode, ref_alaw_decode)]
)
def test_decode_matches_reference_for_all_codes(decode, reference):
    assert _samples(decode(ALL_CODES)).tolist() == [reference(c) for c in range(256)]


@pytest.mark.parametrize(
    ("encode", "reference"), [(ulaw_encode, ref_ulaw_encode), (alaw_encode, ref_alaw_encode)]
)
def test_encode_matches_reference_for_all_inputs(encode, reference):
    got = list(encode(_pcm(ALL_SAMPLES)))
    want = [reference(int(x)) for x in ALL_SAMPLES]
    assert got == want


def test_known_answers():
    # Full scale and zero of both laws: mu-law 8031 and A-law 4032 in their own units.
    assert _samples(ulaw_decode(bytes([0xFF, 0x7F, 0x80, 0x00]))).tolist() == [
        0,
        0,
        32124,
        -32124,
    ]
    assert _samples(alaw_decode(bytes([0xD5, 0x55, 0xAA, 0x2A]))).tolist() == [
        8,
        -8,
        32256,
        -32256,
    ]
    extremes = _pcm(np.array([0, -1, 32767, -32768]))
    assert ulaw_encode(extremes) == bytes([0xFF, 0x7F, 0x80, 0x00])
    assert alaw_encode(extremes) == bytes([0xD5, 0x55, 0xAA, 0x2A])


def test_codes_round_trip():
    assert ulaw_encode(ulaw_decode(ALL_CODES)) == ALL_CODES.replace(b"\x7f", b"\xff")
    assert alaw_encode(alaw_decode(ALL_CODES)) == ALL_CODES


@pytest.mark.parametrize(
    ("encode", "decode"), [(ulaw_encode, ulaw_decode), (alaw_encode, alaw_decode)]
)
def test_quantiser_is_monotonic_and_close(encode, decode):
    back = _samples(decode(encode(_pcm(ALL_SAMPLES))))
    assert np.all(np.diff(back) >= 0)
    error = np.abs(back - ALL_SAMPLES.astype(np.int64))
    small = np.abs(ALL_SAMPLES.astype(np.int64)) < 1024
    assert error[small].max() <= 32  # fine steps near zero
    assert error.max() <= 1024  # half the coarsest step, plus clipping at full scale


def test_odd_length_pcm_is_rejected_by_encoders():
    with pytest.raises(ValueError):
        ulaw_encode(b"\x00\x01\x02")


def test_silence():
    assert silence(PCMU_8K, 20) == b"\xff" * 160
    assert silence(PCMA_8K, 20) == b"\xd5" * 160
    assert silence(PCM16_24K, 20) == b"\x00" * 960
    assert _samples(ulaw_decode(silence(PCMU_8K, 5))).tolist() == [0] * 40
    assert _samples(alaw_decode(silence(PCMA_8K, 5))).tolist() == [8] * 40  # A-law has no 0


# -- transcoding -------------------------------------------------------------------------------

RATES = (8000, 16000, 24000)
FORMATS = [AudioFormat(e, r) for e in Encoding for r in RATES]


def _tone(rate: int, seconds: float, freq: float = 440.0, amplitude: float = 12000.0):
    t = np.arange(round(rate * seconds)) / rate
    return np.round(amplitude * np.sin(2 * np.pi * freq * t)).astype(np.int16)


def _encode(fmt: AudioFormat, samples: np.ndarray) -> bytes:
    pcm = _pcm(samples)
    match fmt.encoding:
        case Encoding.PCMU:
            return ulaw_encode(pcm)
        case Encoding.PCMA:
            return alaw_encode(pcm)
        case Encoding.PCM16:
            return pcm


def _decode(fmt: AudioFormat, data: bytes) -> np.ndarray:
    match fmt.encoding:
        case Encoding.PCMU:
            return _samples(ulaw_decode(data))
        case Encoding.PCMA:
            return _samples(alaw_decode(data))
        case Encoding.PCM16:
            return _samples(data)


def _frames(data: bytes, size: int):
    return [data[i : i + size] for i in range(0, len(data), size)]


def _stream(transcoder: Transcoder, chunks) -> bytes:
    out = b"".join(transcoder.convert(c) for c in chunks)
    return out + transcoder.flush()


def test_is_passthrough():
    assert is_passthrough(PCMU_8K, AudioFormat(Encoding.PCMU, 8000))
    assert not is_passthrough(PCMU_8K, PCMA_8K)
    assert not is_passthrough(PCMU_8K, AudioFormat(Encoding.PCMU, 16000))
    assert not is_passthrough(PCM16_16K, PCM16_24K)


@pytest.mark.parametrize(("src", "dst"), list(itertools.product(FORMATS, FORMATS)), ids=str)
def test_every_combination_keeps_length_and_pitch(src, dst):
    seconds = 1.0
    data = _encode(src, _tone(src.sample_rate, seconds))
    out = _stream(Transcoder(src, dst), _frames(data, src.bytes_per_second // 50))
    assert len(out) == seconds * dst.bytes_per_second
    y = _decode(dst, out).astype(float)
    reference = _tone(dst.sample_rate, seconds).astype(float)
    trim = len(y) // 8  # leave the filter's start and end transients out
    y, reference = y[trim:-trim], reference[trim:-trim]
    spectrum = np.abs(np.fft.rfft(y * np.hanning(len(y))))
    assert abs(np.argmax(spectrum) * dst.sample_rate / len(y) - 440) < 5
    # soxr keeps the output aligned with the input; what differs is quantisation noise.
    snr = 10 * np.log10(np.sum(reference**2) / max(np.sum((y - reference) ** 2), 1.0))
    assert snr > 30


def test_same_rate_g711_uses_code_tables():
    t = Transcoder(PCMU_8K, PCMA_8K)
    assert t.convert(ALL_CODES) == alaw_encode(ulaw_decode(ALL_CODES))
    assert Transcoder(PCMA_8K, PCMU_8K).convert(ALL_CODES) == ulaw_encode(alaw_decode(ALL_CODES))
    assert t.flush() == b""


def test_passthrough_transcoder_returns_input():
    data = bytes(range(256))
    assert Transcoder(PCMU_8K, PCMU_8K).convert(data) is data


@pytest.mark.parametrize(
    ("src", "dst"),
    [(PCM16_16K, AudioFormat(Encoding.PCM16, 8000)), (PCM16_24K, PCMU_8K), (PCMU_8K, PCM16_16K)],
    ids=str,
)
def test_chunked_equals_one_shot(src, dst):
    data = _encode(src, _tone(src.sample_rate, 2.0, freq=700))
    one_shot = _stream(Transcoder(src, dst), [data])
    rng = random.Random(7)
    chunks, at = [], 0
    while at < len(data):  # uneven chunks, odd byte counts included
        size = rng.randint(1, 700)
        chunks.append(data[at : at + size])
        at += size
    chunked = _stream(Transcoder(src, dst), chunks)
    assert len(chunked) == len(one_shot)
    diff = np.abs(_decode(dst, chunked) - _decode(dst, one_shot))
    tolerance = 2 if dst.encoding is Encoding.PCM16 else 400  # one G.711 step near the peak
    assert diff.max() <= tolerance


@pytest.mark.parametrize(
    ("src", "dst"),
    [(PCM16_8K, PCM16_16K), (PCM16_24K, PCM16_16K), (PCM16_24K, PCM16_8K), (PCM16_8K, PCM16_24K)],
    ids=str,
)
def test_no_clicks_at_frame_edges(src, dst):
    data = _pcm(_tone(src.sample_rate, 1.0, freq=300))
    frame = src.bytes_per_second // 50
    out = _samples(_stream(Transcoder(src, dst), _frames(data, frame)))
    reference = _tone(dst.sample_rate, 1.0, freq=300).astype(np.int64)
    settled = slice(dst.sample_rate // 20, -dst.sample_rate // 20)
    # Every output sample, frame edges included, lies within a few LSB of the ideal tone
    # (soxr's rounding varies by an LSB or two with chunking).
    bound = 20
    assert np.abs(out - reference)[settled].max() <= bound
    # The check has teeth: resampling each 10 ms on its own clicks at the edges.
    naive = np.concatenate(
        [
            soxr.resample(_samples(f).astype(np.int16), src.sample_rate, dst.sample_rate)
            for f in _frames(data, frame // 2)
        ]
    ).astype(np.int64)
    assert np.abs(naive - reference)[settled].max() > 4 * bound


@pytest.mark.parametrize(
    ("src", "dst"),
    [(PCMU_8K, PCM16_16K), (PCM16_24K, PCMU_8K), (PCM16_16K, PCM16_24K), (PCM16_24K, PCM16_16K)],
    ids=str,
)
def test_long_stream_does_not_drift(src, dst):
    frame = silence(src, 20)
    t = Transcoder(src, dst)
    out_per_frame = dst.bytes_per_second // 50
    produced, worst = 0, 0
    frames = 3000  # one minute
    for n in range(1, frames + 1):
        produced += len(t.convert(frame))
        behind = n * out_per_frame - produced
        assert behind >= 0
        worst = max(worst, behind)
    # Held back audio stays bounded (the documented worst case is under 120 ms) ...
    assert worst * 1000 / dst.bytes_per_second < 150
    # ... and nothing is lost or invented: after flush the total is exact.
    produced += len(t.flush())
    assert produced == frames * out_per_frame


def test_flush_starts_a_fresh_stream_and_reset_drops_audio():
    t = Transcoder(PCMU_8K, PCM16_16K)
    tone = _encode(PCMU_8K, _tone(8000, 0.2))
    first = t.convert(tone) + t.flush()
    assert len(first) == 0.2 * PCM16_16K.bytes_per_second
    second = t.convert(tone) + t.flush()
    assert len(second) == len(first)
    assert np.abs(_samples(second) - _samples(first)).max() <= 2  # soxr's rounding
    t.convert(tone)
    assert t.pending_ms > 0
    t.reset()
    assert t.pending_ms == 0
    assert len(t.convert(tone) + t.flush()) == len(first)
    assert Transcoder(PCMU_8K, PCMA_8K).pending_ms == 0


def test_pcm16_odd_bytes_carry_over():
    samples = _pcm(_tone(16000, 0.1))
    cuts = [samples[:101], samples[101:333], samples[333:]]
    # Without a resampler the result is exact.
    t = Transcoder(PCM16_16K, AudioFormat(Encoding.PCMU, 16000))
    assert t.convert(samples[:3]) == ulaw_encode(samples[:2])
    assert t.convert(samples[3:4]) == ulaw_encode(samples[2:4])
    assert t.flush() == b""
    assert _stream(t, cuts) == ulaw_encode(samples)
    # With one, the same up to soxr's rounding; a dangling byte at the end is not a sample.
    whole = _samples(_stream(Transcoder(PCM16_16K, PCM16_24K), [samples]))
    split = _samples(_stream(Transcoder(PCM16_16K, PCM16_24K), cuts))
    dangling = _samples(_stream(Transcoder(PCM16_16K, PCM16_24K), [samples + b"\x01"]))
    assert len(split) == len(dangling) == len(whole)
    assert np.abs(split - whole).max() <= 2
    assert np.abs(dangling - whole).max() <= 2


def test_convert_chunk():
    t = Transcoder(PCM16_24K, PCMU_8K)
    pcm = _pcm(_tone(24000, 0.5))
    chunk = AudioChunk.from_bytes(pcm[:960], PCM16_24K, item_id="item_1")
    assert t.convert_chunk(chunk) is None  # the resampler holds the first 20 ms back
    out = t.convert_chunk(
        AudioChunk(base64.b64encode(pcm[960:]).decode(), PCM16_24K, 1234, "item_1")
    )
    assert out is not None
    assert out.format == PCMU_8K
    assert out.item_id == "item_1"
    assert out.timestamp_ms == 1234
    assert len(out.to_bytes()) > 0
    assert out.duration_ms == len(out.to_bytes()) / 8
    with pytest.raises(ValueError, match="expects"):
        t.convert_chunk(AudioChunk.from_bytes(b"\xff" * 160, PCMU_8K))


def test_quality_choice_and_bad_formats():
    data = _encode(PCMU_8K, _tone(8000, 0.5))
    for quality in ResampleQuality:
        out = _stream(Transcoder(PCMU_8K, PCM16_16K, quality=quality), [data])
        assert len(out) == PCM16_16K.bytes_per_second // 2
    with pytest.raises(ValueError, match="positive"):
        Transcoder(AudioFormat(Encoding.PCMU, 0), PCMU_8K)


# -- framing -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fmt", "size", "fill"),
    [(PCMU_8K, 160, 0xFF), (PCMA_8K, 160, 0xD5), (PCM16_16K, 640, 0), (PCM16_24K, 960, 0)],
    ids=str,
)
def test_framer_rechunks_and_pads(fmt, size, fill):
    framer = Framer(fmt)
    assert framer.frame_bytes == size
    data = bytes(random.Random(1).randrange(256) for _ in range(size * 7 + size // 3))
    frames = []
    for piece in _frames(data, 77):
        frames += framer.push(piece)
    assert [len(f) for f in frames] == [size] * 7
    assert b"".join(frames) == data[: size * 7]
    assert framer.pending == size // 3
    (last,) = framer.flush(pad=True)
    assert last == data[size * 7 :] + bytes([fill]) * (size - size // 3)
    assert framer.flush(pad=True) == []


def test_framer_flush_without_pad_and_fast_path():
    framer = Framer(PCMU_8K)
    frame = b"\x01" * 160
    assert framer.push(frame)[0] is frame
    assert framer.push(b"\x02" * 10) == []
    assert framer.push(frame) == [b"\x02" * 10 + b"\x01" * 150]
    assert framer.flush(pad=False) == [b"\x01" * 10]
    framer.push(b"\x03" * 5)
    framer.clear()
    assert framer.pending == 0
    assert framer.flush(pad=False) == []
    assert Framer(PCM16_16K, frame_ms=10).frame_bytes == 320
    with pytest.raises(ValueError, match="whole number"):
        Framer(AudioFormat(Encoding.PCMU, 11025))


# -- WAV ---------------------------------------------------------------------------------------


def _shared(name: str) -> Path:
    path = AUDIO_DIR / name
    assert path.exists(), f"{path} missing"
    return path


@pytest.mark.parametrize(
    ("name", "fmt", "seconds"),
    [
        ("caller-8k-ulaw.wav", PCMU_8K, 9.6),
        ("agent-24k-pcm16.wav", PCM16_24K, 6.4),
        ("silence-1s-8k-ulaw.wav", PCMU_8K, 1.0),
    ],
)
def test_shared_files_load(name, fmt, seconds):
    got, audio = read_wav(_shared(name))
    assert got == fmt
    assert abs(len(audio) / fmt.bytes_per_second - seconds) < 0.05


def test_shared_silence_is_silent():
    _, audio = read_wav(_shared("silence-1s-8k-ulaw.wav"))
    assert len(audio) == 8000
    # Near-silence: sox dithered it to +-8 of 32768 (codes 0xFF, 0xFE, 0x7E).
    assert np.abs(_decode(PCMU_8K, audio)).max() <= 8


def test_shared_caller_frames_into_160_bytes():
    fmt, audio = read_wav(_shared("caller-8k-ulaw.wav"))
    framer = Framer(fmt)
    frames = framer.push(audio) + framer.flush(pad=True)
    assert {len(f) for f in frames} == {160}
    assert len(frames) == -(-len(audio) // 160)


@pytest.mark.parametrize("fmt", [PCMU_8K, PCMA_8K, PCM16_16K, PCM16_24K], ids=str)
@pytest.mark.parametrize("length", [0, 1, 160, 321])
def test_wav_round_trip(tmp_path, fmt, length):
    width = 2 if fmt.encoding is Encoding.PCM16 else 1
    audio = bytes(range(256)) * 3
    audio = audio[: length * width]
    path = tmp_path / "x.wav"
    write_wav(path, fmt, audio)
    assert read_wav(path) == (fmt, audio)
    assert len(path.read_bytes()) % 2 == 0  # odd data gets its pad byte


def test_build_wav_matches_sox_layout():
    fmt, audio = read_wav(_shared("silence-1s-8k-ulaw.wav"))
    assert build_wav(fmt, audio) == _shared("silence-1s-8k-ulaw.wav").read_bytes()
    fmt, audio = read_wav(_shared("agent-24k-pcm16.wav"))
    assert build_wav(fmt, audio) == _shared("agent-24k-pcm16.wav").read_bytes()
    with pytest.raises(ValueError, match="odd"):
        build_wav(PCM16_16K, b"\x00")


def _riff(*chunks: bytes, size_delta: int = 0) -> bytes:
    body = b"WAVE" + b"".join(chunks)
    return b"RIFF" + struct.pack("<I", len(body) + size_delta) + body


def _chunk(chunk_id: bytes, body: bytes) -> bytes:
    return chunk_id + struct.pack("<I", len(body)) + body + b"\x00" * (len(body) & 1)


def _fmt(tag=7, channels=1, rate=8000, byte_rate=None, align=None, bits=8, extra=b""):
    align = channels * bits // 8 if align is None else align
    byte_rate = rate * align if byte_rate is None else byte_rate
    return _chunk(
        b"fmt ", struct.pack("<HHIIHH", tag, channels, rate, byte_rate, align, bits) + extra
    )


DATA = _chunk(b"data", b"\xff" * 10)


def _extensible(
    subtag: int, tail: bytes = b"\x00\x00\x00\x00\x10\x00\x80\x00\x00\xaa\x00\x38\x9b\x71"
):
    extra = struct.pack("<HHI", 22, 8, 4) + struct.pack("<H", subtag) + tail
    return _fmt(tag=0xFFFE, extra=extra)


def test_wav_extensible_and_extra_chunks_accepted():
    wav = _riff(_chunk(b"LIST", b"abc"), _extensible(7), _chunk(b"fact", b"\x0a\0\0\0"), DATA)
    assert parse_wav(wav) == (PCMU_8K, b"\xff" * 10)


@pytest.mark.parametrize(
    ("wav", "message"),
    [
        (b"", "not a RIFF"),
        (b"RIFX" + _riff(_fmt(), DATA)[4:], "not a RIFF"),
        (_riff(_fmt(), DATA)[:-3], "truncated"),
        (_riff(_fmt(), DATA) + b"\x00\x00", "stray bytes after"),
        (_riff(_fmt(), DATA, b"abc"), "stray bytes where"),
        (_riff(_fmt(), b"data" + struct.pack("<I", 99) + b"\xff" * 10), "runs past"),
        (_riff(_fmt(), _chunk(b"data", b"\xff")[:-1]), "runs past"),
        (_riff(DATA, _fmt()), "data chunk before"),
        (_riff(_fmt(), _fmt(), DATA), "more than one fmt"),
        (_riff(_fmt(), DATA, DATA), "more than one data"),
        (_riff(_chunk(b"LIST", b"")), "no fmt"),
        (_riff(_fmt()), "no data"),
        (_riff(_chunk(b"fmt ", b"\x07\x00\x01\x00"), DATA), "at least 16"),
        (_riff(_fmt(tag=3, bits=32), DATA), "unsupported format tag 3"),
        (_riff(_fmt(tag=1, bits=8), DATA), "needs 16 bits"),
        (_riff(_fmt(tag=1, bits=24), DATA), "needs 16 bits"),
        (_riff(_fmt(channels=2), DATA), "mono only"),
        (_riff(_fmt(rate=0), DATA), "sample rate"),
        (_riff(_fmt(align=2), DATA), "block align"),
        (_riff(_fmt(byte_rate=1234), DATA), "byte rate"),
        (_riff(_fmt(tag=1, bits=16, rate=16000), _chunk(b"data", b"\x00" * 3)), "odd length"),
        (_riff(_fmt(tag=0xFFFE), DATA), "shorter than 40"),
        (_riff(_extensible(7, b"\x00" * 14), DATA), "unknown sub-format"),
        (
            _riff(_fmt(tag=0xFFFE, extra=struct.pack("<H", 0) + b"\x00" * 22), DATA),
            "cbSize 0",
        ),
    ],
)
def test_malformed_wav_rejected(wav, message):
    with pytest.raises(WavError, match=message):
        parse_wav(wav)


def test_wav_error_is_a_value_error(tmp_path):
    path = tmp_path / "bad.wav"
    path.write_bytes(b"RIFF")
    with pytest.raises(ValueError):
        read_wav(path)
