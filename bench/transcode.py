"""Per-frame cost of transcoding (the Gemini path) against the passthrough path, and of each
audio step against a naive version, measured in the same run.

Usage: python bench/transcode.py [--quick] [--json bench/last-run/transcode.json]

The Gemini path, per 20 ms frame and direction, as the bridge runs it: caller mu-law 8 kHz ->
PCM16 16 kHz (decode + streaming resample, base64 both ways), and the agent's PCM16 24 kHz ->
mu-law 8 kHz. The passthrough path (Twilio/Telnyx <-> OpenAI ``audio/pcmu``, Deepgram
``mulaw``) forwards the base64 payload untouched: per frame it builds the event and nothing
else. The target is 25 us per frame and direction. The table below it times each step (G.711,
resampling) against a naive version. Figures are the best of several repeats (least disturbed
by other work on the machine); no figure is asserted. Prints the tables, writes JSON.
"""

from __future__ import annotations

import argparse
import array
import base64
import json
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import numpy as np
import soxr

from gateway.media.audio import ResampleQuality, Transcoder, alaw_encode, ulaw_decode, ulaw_encode
from providers.events import (
    PCM16_8K,
    PCM16_16K,
    PCM16_24K,
    PCMA_8K,
    PCMU_8K,
    AudioChunk,
    AudioFormat,
)

FRAME_MS = 20
TARGET_US: Final = 25.0
"""Gemini path: microseconds per 20 ms frame and direction, at most."""
LAST_RUN: Final = Path(__file__).resolve().parent / "last-run" / "transcode.json"


def _tone(rate: int, seconds: float) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    voice = np.sin(2 * np.pi * 220 * t) + 0.5 * np.sin(2 * np.pi * 1330 * t)
    return np.round(9000 * voice).astype("<i2")


def _frames(data: bytes, size: int) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data) - size + 1, size)]


def measure(fn: Callable[[bytes], object], frames: list[bytes], repeats: int) -> float:
    """Best per-frame time in microseconds over ``repeats`` passes through ``frames``."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter_ns()
        for frame in frames:
            fn(frame)
        elapsed = time.perf_counter_ns() - start
        best = min(best, elapsed / len(frames) / 1000)
    return best


# -- baselines ---------------------------------------------------------------------------------

_ULAW_TABLE = list(np.frombuffer(ulaw_decode(bytes(range(256))), "<i2").tolist())
_ENCODE_TABLE = list(ulaw_encode(np.arange(65536, dtype=np.uint16).view("<i2").tobytes()))
_LOW = bytes(v & 0xFF for v in _ULAW_TABLE)
_HIGH = bytes((v >> 8) & 0xFF for v in _ULAW_TABLE)


def python_ulaw_decode(frame: bytes) -> bytes:
    """Pure Python table lookup, one sample at a time."""
    table = _ULAW_TABLE
    return array.array("h", [table[b] for b in frame]).tobytes()


def translate_ulaw_decode(frame: bytes) -> bytes:
    """Standard library only: two bytes.translate passes interleaved into the output."""
    out = bytearray(2 * len(frame))
    out[0::2] = frame.translate(_LOW)
    out[1::2] = frame.translate(_HIGH)
    return bytes(out)


def python_ulaw_encode(pcm: bytes) -> bytes:
    """Pure Python table lookup over the samples read as unsigned 16-bit."""
    table = _ENCODE_TABLE
    return bytes([table[s] for s in array.array("H", pcm)])


def stateless_soxr(src_rate: int, dst_rate: int) -> Callable[[bytes], bytes]:
    """Resample each frame on its own (what clicks at frame edges)."""

    def run(frame: bytes) -> bytes:
        x = np.frombuffer(frame, "<i2")
        return soxr.resample(x, src_rate, dst_rate, quality="MQ").tobytes()  # type: ignore[no-any-return]

    return run


def linear_interp(src_rate: int, dst_rate: int) -> Callable[[bytes], bytes]:
    """np.interp per frame: cheap, no anti-alias filter, clicks at frame edges."""
    n_in = src_rate * FRAME_MS // 1000
    n_out = dst_rate * FRAME_MS // 1000
    positions = np.arange(n_out) * (src_rate / dst_rate)
    index = np.arange(n_in)

    def run(frame: bytes) -> bytes:
        x = np.frombuffer(frame, "<i2")
        out: bytes = np.interp(positions, index, x).astype("<i2").tobytes()
        return out

    return run


# -- the cases ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Case:
    name: str
    frames: list[bytes]
    ours: Callable[[bytes], object]
    baseline_name: str
    baseline: Callable[[bytes], object]


def _chunk_converter(t: Transcoder) -> Callable[[bytes], object]:
    def run(payload: bytes) -> object:
        return t.convert_chunk(AudioChunk(payload.decode(), t.src))

    return run


def _alaw_via_linear(frame: bytes) -> bytes:
    return alaw_encode(ulaw_decode(frame))


def _naive_chunk(src_rate: int, dst_rate: int, *, decode: bool) -> Callable[[bytes], object]:
    """Base64 chunk -> bytes -> stateless resample (-> G.711), the straightforward way."""
    resample = stateless_soxr(src_rate, dst_rate)

    def run(payload: bytes) -> object:
        raw = base64.b64decode(payload)
        if decode:
            return base64.b64encode(resample(ulaw_decode(raw)))
        return base64.b64encode(ulaw_encode(resample(raw)))

    return run


def _passthrough(fmt: AudioFormat) -> Callable[[bytes], object]:
    """What the fast path does with a frame: the event around the untouched payload."""

    def run(payload: bytes) -> object:
        return AudioChunk(payload.decode(), fmt)

    return run


def gemini_cases(seconds: float) -> list[Case]:
    """The Gemini path per direction, against the passthrough path with the same audio."""
    ulaw = _frames(ulaw_encode(_tone(8000, seconds).tobytes()), 160)
    pcm24 = _frames(_tone(24000, seconds).tobytes(), 960)
    b64_ulaw = [AudioChunk.from_bytes(f, PCMU_8K).payload.encode() for f in ulaw]
    b64_24 = [AudioChunk.from_bytes(f, PCM16_24K).payload.encode() for f in pcm24]
    passthrough = "passthrough"
    return [
        Case("in: pcmu 8k -> pcm16 16k", b64_ulaw,
             _chunk_converter(Transcoder(PCMU_8K, PCM16_16K)), passthrough,
             _passthrough(PCMU_8K)),
        Case("out: pcm16 24k -> pcmu 8k", b64_24,
             _chunk_converter(Transcoder(PCM16_24K, PCMU_8K)), passthrough,
             _passthrough(PCMU_8K)),
    ]  # fmt: skip


def cases(seconds: float) -> list[Case]:
    pcm8 = _tone(8000, seconds).tobytes()
    pcm24 = _tone(24000, seconds).tobytes()
    ulaw_frames = _frames(ulaw_encode(pcm8), 160)
    pcm8_frames = _frames(pcm8, 320)
    pcm24_frames = _frames(pcm24, 960)
    b64_8 = [AudioChunk.from_bytes(f, PCMU_8K).payload.encode() for f in ulaw_frames]
    b64_24 = [AudioChunk.from_bytes(f, PCM16_24K).payload.encode() for f in pcm24_frames]
    low = ResampleQuality.LOW
    up, down = Transcoder(PCM16_8K, PCM16_16K), Transcoder(PCM16_24K, PCM16_8K)
    up_lq = Transcoder(PCM16_8K, PCM16_16K, quality=low)
    down_lq = Transcoder(PCM16_24K, PCM16_8K, quality=low)
    soxr_up, soxr_down = stateless_soxr(8000, 16000), stateless_soxr(24000, 8000)
    per_frame = "soxr per frame"
    return [
        Case("ulaw decode 160 B", ulaw_frames, ulaw_decode, "pure Python", python_ulaw_decode),
        Case("", ulaw_frames, ulaw_decode, "bytes.translate x2", translate_ulaw_decode),
        Case("ulaw encode 320 B", pcm8_frames, ulaw_encode, "pure Python", python_ulaw_encode),
        Case("ulaw -> alaw 160 B", ulaw_frames, Transcoder(PCMU_8K, PCMA_8K).convert,
             "decode + encode", _alaw_via_linear),
        Case("resample 8k->16k MQ", pcm8_frames, up.convert, per_frame, soxr_up),
        Case("", pcm8_frames, up.convert, "np.interp per frame", linear_interp(8000, 16000)),
        Case("resample 8k->16k LQ", pcm8_frames, up_lq.convert, per_frame, soxr_up),
        Case("resample 24k->8k MQ", pcm24_frames, down.convert, per_frame, soxr_down),
        Case("", pcm24_frames, down.convert, "np.interp per frame", linear_interp(24000, 8000)),
        Case("resample 24k->8k LQ", pcm24_frames, down_lq.convert, per_frame, soxr_down),
        Case("chunk pcmu8k->pcm16k", b64_8, _chunk_converter(Transcoder(PCMU_8K, PCM16_16K)),
             "b64 + soxr per frame", _naive_chunk(8000, 16000, decode=True)),
        Case("chunk pcm24k->pcmu8k", b64_24, _chunk_converter(Transcoder(PCM16_24K, PCMU_8K)),
             "b64 + soxr per frame", _naive_chunk(24000, 8000, decode=False)),
    ]  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer frames and repeats")
    parser.add_argument("--json", default=str(LAST_RUN), help="where to write the JSON results")
    options = parser.parse_args()
    seconds, repeats = (2.0, 3) if options.quick else (10.0, 7)
    print(
        f"voicegw transcoding, {FRAME_MS} ms frames, best of {repeats} passes over {seconds:.0f} s"
    )

    gemini: list[dict[str, object]] = []
    for case in gemini_cases(seconds):
        ours = measure(case.ours, case.frames, repeats)
        base = measure(case.baseline, case.frames, repeats)
        gemini.append(
            {
                "direction": case.name,
                "us_per_frame": round(ours, 2),
                "passthrough_us_per_frame": round(base, 2),
                "added_us_per_frame": round(ours - base, 2),
                "target_us": TARGET_US,
                "met": ours <= TARGET_US,
            }
        )
    header = f"{'Gemini path':<28}{'us/frame':>10}{'passthrough':>13}{'target':>8}  met"
    print(header)
    print("-" * len(header))
    for g in gemini:
        print(
            f"{g['direction']:<28}{g['us_per_frame']:>10.2f}{g['passthrough_us_per_frame']:>13.2f}"
            f"{TARGET_US:>8.0f}  {'yes' if g['met'] else 'NO'}"
        )
    print()

    rows: list[dict[str, object]] = []
    for case in cases(seconds):
        ours = measure(case.ours, case.frames, repeats)
        base = measure(case.baseline, case.frames, repeats)
        rows.append(
            {
                "case": case.name,
                "us_per_frame": round(ours, 2),
                "baseline": case.baseline_name,
                "baseline_us_per_frame": round(base, 2),
                "speedup": round(base / ours, 1),
                # One direction of one call needs 50 frames a second.
                "call_directions_per_core": int(1e6 / (ours * 50)),
            }
        )

    header = f"{'step':<22}{'us/frame':>10}  {'naive version':<20}{'us/frame':>10}{'speedup':>9}"
    print(header)
    print("-" * len(header))
    last = ""
    for row in rows:
        name = str(row["case"]) or last
        last = name
        print(
            f"{row['case']:<22}{row['us_per_frame']:>10.2f}  {row['baseline']:<20}"
            f"{row['baseline_us_per_frame']:>10.2f}{row['speedup']:>8.1f}x"
        )
        row["case"] = name
    document = {
        "bench": "transcode",
        "frame_ms": FRAME_MS,
        "seconds_of_audio": seconds,
        "repeats": repeats,
        "python": platform.python_version(),
        "numpy": np.__version__,
        "soxr": soxr.__version__,
        "machine": platform.machine(),
        "gemini": gemini,
        "results": rows,
    }
    out = Path(options.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(document, indent=1) + "\n")
    print(f"\nJSON: {out}")


if __name__ == "__main__":
    main()
