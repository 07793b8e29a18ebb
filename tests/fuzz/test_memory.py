"""Memory stays bounded however long a hostile peer keeps sending.

Each test warms a component up, then feeds it ``FRAMES`` more frames (5,000, or 100,000 in
long-run mode: 100 s or 33 minutes of audio at 20 ms) under ``tracemalloc`` and checks that
the peak of traced memory rose by less than a fixed bound, far below what keeping every frame
would take (5,000 frames of about 220 characters are over 1 MiB). Inputs are adversarial
where that could matter: Telnyx chunk numbers out of order, repeated and jumping ahead; an
agent nobody reads from; a media stream fed faster than real time.
"""

from __future__ import annotations

import base64
import contextlib
import random
import time
import tracemalloc
from collections.abc import Callable, Iterator

import orjson
import pytest

from gateway.media.audio import Framer, Transcoder
from providers.ai.echo import EchoSession
from providers.events import PCM16_16K, PCM16_24K, PCMU_8K, AudioChunk
from providers.exceptions import ProtocolError
from providers.telephony.telnyx import TelnyxCodec
from providers.telephony.twilio import TwilioCodec
from tests.fuzz.profile import LONG_RUN, tally
from tests.fuzz.test_media import Calls, calls, new_call, opening, stop_frame  # noqa: F401
from tests.providers.telephony.recorded import load_jsonl

FRAMES = 100_000 if LONG_RUN else 5_000
KIB = 1024
TWILIO_CALL = load_jsonl("twilio_call.jsonl")
TELNYX_CALL = load_jsonl("telnyx_call.jsonl")


@contextlib.contextmanager
def peak_growth() -> Iterator[Callable[[], int]]:
    """Traces allocations in the block; the callable gives the peak above the start."""
    tracemalloc.start()
    try:
        start = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        yield lambda: tracemalloc.get_traced_memory()[1] - start
    finally:
        tracemalloc.stop()


def test_twilio_codec():
    codec = TwilioCodec()
    for frame in TWILIO_CALL[:2]:
        codec.feed(frame)
    media = [f for f in TWILIO_CALL if '"event": "media"' in f]
    with peak_growth() as growth:
        for i in range(FRAMES):
            codec.feed(media[i % len(media)])
        assert growth() < 64 * KIB
    tally("accepted")


def test_telnyx_codec_with_adversarial_chunk_numbers():
    codec = TelnyxCodec(reorder_window=5)
    for frame in TELNYX_CALL[:2]:
        codec.feed(frame)
    template = orjson.loads(next(f for f in TELNYX_CALL if '"event": "media"' in f))
    rng = random.Random(9)
    chunk = 1
    with peak_growth() as growth:
        for _ in range(FRAMES):
            # Mostly forward, often out of order, sometimes repeated or far ahead.
            chunk = max(0, chunk + rng.choice([1, 1, 2, 3, -2, 0, 40, 499, 700]))
            template["media"]["chunk"] = str(chunk)
            try:
                codec.feed(orjson.dumps(template).decode())
            except ProtocolError:
                chunk -= 700  # refused as out of range: come back
                tally("rejected")
            else:
                tally("accepted")
            assert len(codec._held) <= 5
        assert growth() < 64 * KIB


@pytest.mark.parametrize(
    ("src", "dst", "frame_bytes"),
    [(PCMU_8K, PCM16_16K, 160), (PCM16_24K, PCMU_8K, 960)],
    ids=["carrier-to-gemini", "gemini-to-carrier"],
)
def test_transcoder_and_framer(src, dst, frame_bytes):
    transcoder, framer = Transcoder(src, dst), Framer(dst)
    rng = random.Random(3)
    data = rng.randbytes(frame_bytes)
    with peak_growth() as growth:
        for _ in range(FRAMES):
            framer.push(transcoder.convert(data))
        assert growth() < 128 * KIB
    tally("accepted")


async def test_an_agent_nobody_reads_from():
    session = EchoSession(max_pending=2000)
    await session.connect()
    chunk = AudioChunk(base64.b64encode(bytes(range(160))).decode(), PCMU_8K)
    with peak_growth() as growth:
        for _ in range(FRAMES):
            await session.send(chunk)
        assert session.agent.pending <= 2000
        # 2,000 queued echoes share one payload string: their records, not the audio.
        assert growth() < 1024 * KIB
    await session.close()
    tally("accepted")


def test_a_media_stream_fed_faster_than_real_time(calls):  # noqa: F811
    """450 frames (9 s of audio) in well under a second: within the flood allowance, echoed
    back into the Bridge's outbound queue, which holds them for paced playback."""
    call_id, token, path, headers = new_call(calls, "twilio")
    media = [f for f in TWILIO_CALL if '"event": "media"' in f]
    with calls.client.websocket_connect(path, headers=headers) as ws:
        for frame in opening("twilio", call_id, token):
            ws.send_text(frame)
        with peak_growth() as growth:
            for i in range(450):
                ws.send_text(media[i % len(media)])
            time.sleep(1.0)  # the echoes come back and queue up
            assert growth() < 4096 * KIB
        ws.send_text(stop_frame("twilio"))
        assert calls.wait_ended("twilio", call_id).ended_reason == "carrier_hangup"
    tally("accepted")
