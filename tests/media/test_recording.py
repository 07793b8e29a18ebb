"""gateway.media.recording: encrypted chunked call recordings, written off the event loop, read back
only with the key and only when every record is present, in order and unaltered."""

from __future__ import annotations

import asyncio
import os
import stat
import struct
import threading
from pathlib import Path

import numpy as np
import pytest

from gateway.media.audio import build_wav, parse_wav, read_wav, ulaw_decode, ulaw_encode
from gateway.media.recording import (
    FLUSH_BYTES,
    MAX_BUFFERED_BYTES,
    Direction,
    RecordedChunk,
    RecordingCorrupt,
    RecordingError,
    RecordingKeyUnknown,
    RecordingReader,
    RecordingWriter,
    export_wav,
    secure_delete,
)
from providers.events import PCMU_8K
from tests.conftest import UNIT

AUDIO_DIR = Path(__file__).parent.parent / "data"
FRAME = 160  # 20 ms of 8 kHz mu-law
KEY = bytes(range(32))
KEYS = {"rec-1": KEY}
CALL_ID = "call_abc123"
FROM, TO = Direction.FROM_CARRIER, Direction.TO_CARRIER


@pytest.fixture(scope="module")
def caller() -> bytes:
    fmt, audio = read_wav(AUDIO_DIR / "caller-8k-ulaw.wav")
    assert fmt == PCMU_8K
    return audio


def agent_audio(n: int) -> bytes:
    """A 440 Hz tone in mu-law: audio unlike the caller's."""
    t = np.arange(n) / 8000
    pcm = (8000 * np.sin(2 * np.pi * 440 * t)).astype("<i2")
    return ulaw_encode(pcm.tobytes())


def frames(audio: bytes) -> list[bytes]:
    return [audio[i : i + FRAME] for i in range(0, len(audio), FRAME)]


async def record(
    path: Path,
    from_carrier: bytes,
    to_carrier: bytes = b"",
    *,
    to_offset_ms: int = 0,
    **options: int,
) -> RecordingWriter:
    """Record both directions in 20 ms frames, interleaved as a live call would be."""
    options.setdefault("max_buffered_bytes", 1 << 24)  # these tests never drop
    writer = RecordingWriter(path, KEY, "rec-1", CALL_ID, **options)
    ins, outs = frames(from_carrier), frames(to_carrier)
    for i in range(max(len(ins), len(outs))):
        if i < len(ins):
            await writer.write(FROM, ins[i], i * 20)
        if i < len(outs):
            await writer.write(TO, outs[i], to_offset_ms + i * 20)
        await asyncio.sleep(0)
    await writer.close()
    return writer


def no_keys(key_id: str) -> bytes:
    raise KeyError(key_id)


def recorded(
    path: Path,
    from_carrier: bytes,
    to_carrier: bytes = b"",
    *,
    to_offset_ms: int = 0,
    **options: int,
) -> RecordingWriter:
    """``record`` for the tests that need no event loop of their own."""
    return asyncio.run(record(path, from_carrier, to_carrier, to_offset_ms=to_offset_ms, **options))


def read_all(path: Path, keys: dict[str, bytes] = KEYS) -> list[RecordedChunk]:
    return list(RecordingReader(path, keys.__getitem__))


def joined(chunks: list[RecordedChunk], direction: Direction) -> bytes:
    return b"".join(c.audio for c in chunks if c.direction is direction)


# -- the format, parsed from its spec ----------------------------------------------------------


def split(data: bytes) -> tuple[bytes, list[bytes]]:
    """The header and the framed records of a recording (per the module docstring)."""
    key_len = data[7]
    call_len = data[8 + key_len]
    end = 8 + key_len + 1 + call_len + 8
    header, records = data[:end], []
    offset = end
    while offset < len(data):
        _, length = struct.unpack_from(">BI", data, offset)
        records.append(data[offset : offset + 5 + length])
        offset += 5 + length
    return header, records


@pytest.fixture
def small(tmp_path: Path, caller: bytes) -> Path:
    """A short recording of several records (small flushes), so every byte can be attacked."""
    path = tmp_path / "rec" / "small.vgwrec"
    recorded(path, caller[:1600], agent_audio(1600), flush_bytes=400)
    _, records = split(path.read_bytes())
    assert len(records) >= 6
    return path


def assert_rejected(path: Path, keys: dict[str, bytes] = KEYS) -> None:
    with pytest.raises(RecordingError):
        read_all(path, keys)


# -- round trip --------------------------------------------------------------------------------


def test_round_trip_both_directions(tmp_path: Path, caller: bytes) -> None:
    path = tmp_path / "rec" / "call.vgwrec"
    outbound = agent_audio(len(caller) // 2)
    writer = recorded(path, caller, outbound)
    reader = RecordingReader(path, KEYS.__getitem__)
    chunks = list(reader)
    assert (reader.key_id, reader.call_id) == ("rec-1", CALL_ID)
    assert joined(chunks, FROM) == caller
    assert joined(chunks, TO) == outbound
    assert [c.at_ms for c in chunks if c.direction is FROM] == [
        i * 20 for i in range(len(frames(caller)))
    ]
    assert reader.dropped == writer.dropped == 0


async def test_a_long_chunk_is_split_with_its_media_time(tmp_path: Path) -> None:
    path = tmp_path / "rec" / "big.vgwrec"
    audio = agent_audio(70_000)
    writer = RecordingWriter(path, KEY, "rec-1", CALL_ID, max_buffered_bytes=1 << 20)
    await writer.write(TO, audio, 1000)
    await writer.close()
    chunks = read_all(path)
    assert joined(chunks, TO) == audio
    assert [c.at_ms for c in chunks] == [1000 + 1000 * k for k in range(9)]  # 1 s pieces
    assert parse_wav(export_wav(path, KEYS.__getitem__, TO))[1] == bytes([0xFF]) * 8000 + audio


async def test_an_empty_recording_reads_back_empty(tmp_path: Path) -> None:
    path = tmp_path / "rec" / "empty.vgwrec"
    await RecordingWriter(path, KEY, "rec-1", CALL_ID).close()
    assert read_all(path) == []


async def test_write_after_close_and_bad_times_are_refused(tmp_path: Path) -> None:
    writer = RecordingWriter(tmp_path / "r" / "x", KEY, "rec-1", CALL_ID)
    with pytest.raises(ValueError):
        await writer.write(FROM, b"\xff" * FRAME, -1)
    await writer.close()
    await writer.close()  # idempotent
    with pytest.raises(RecordingError):
        await writer.write(FROM, b"\xff" * FRAME, 0)


def test_bad_keys_and_labels_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        RecordingWriter(tmp_path / "x", KEY[:16], "rec-1", CALL_ID)
    with pytest.raises(ValueError):
        RecordingWriter(tmp_path / "x", KEY, "", CALL_ID)
    with pytest.raises(ValueError):
        RecordingWriter(tmp_path / "x", KEY, "rec-1", "c" * 256)


# -- confidentiality ---------------------------------------------------------------------------


def test_the_file_holds_none_of_the_audio_it_recorded(tmp_path: Path, caller: bytes) -> None:
    path = tmp_path / "rec" / "call.vgwrec"
    recorded(path, caller)
    data = path.read_bytes()
    assert len(data) > len(caller)
    for i in range(0, len(caller) - FRAME + 1, FRAME):
        assert caller[i : i + FRAME] not in data
    windows = {caller[i : i + 16] for i in range(len(caller) - 15)}
    assert not any(data[i : i + 16] in windows for i in range(len(data) - 15))


def test_the_wrong_key_is_refused(small: Path) -> None:
    with pytest.raises(RecordingCorrupt, match="authentication"):
        read_all(small, {"rec-1": bytes(32)})


def test_an_unknown_key_id_is_reported(small: Path) -> None:
    with pytest.raises(RecordingKeyUnknown):
        RecordingReader(small, no_keys)


def test_file_is_0600_in_a_0700_directory(tmp_path: Path) -> None:
    directory = tmp_path / "recordings"
    directory.mkdir(mode=0o755)
    directory.chmod(0o755)
    path = directory / "call.vgwrec"
    recorded(path, b"\xff" * 800)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700


async def test_an_existing_file_is_never_overwritten(tmp_path: Path) -> None:
    path = tmp_path / "rec" / "call.vgwrec"
    await record(path, b"\xff" * 800)
    before = await asyncio.to_thread(path.read_bytes)
    writer = RecordingWriter(path, KEY, "rec-1", CALL_ID)
    await writer.write(FROM, b"\x00" * FLUSH_BYTES, 0)  # never raises for the disk
    with pytest.raises(RecordingError, match="incomplete"):
        await writer.close()
    assert await asyncio.to_thread(path.read_bytes) == before
    assert writer.dropped == 1


async def test_a_disk_error_stops_the_recording_not_the_caller(tmp_path: Path) -> None:
    await asyncio.to_thread((tmp_path / "not-a-dir").touch)
    writer = RecordingWriter(tmp_path / "not-a-dir" / "call.vgwrec", KEY, "rec-1", CALL_ID)
    for i in range(200):
        await writer.write(FROM, b"\xff" * FRAME, i * 20)
        await asyncio.sleep(0)
    with pytest.raises(RecordingError):
        await writer.close()
    assert writer.dropped > 0
    assert writer.buffered_bytes == 0


# -- integrity ---------------------------------------------------------------------------------


def test_every_single_byte_change_is_detected(small: Path) -> None:
    data = small.read_bytes()
    for i in range(len(data)):
        altered = bytearray(data)
        altered[i] ^= 0x01
        small.write_bytes(altered)
        assert_rejected(small)


def test_swapped_records_are_detected(small: Path) -> None:
    header, records = split(small.read_bytes())
    records[1], records[2] = records[2], records[1]
    small.write_bytes(header + b"".join(records))
    with pytest.raises(RecordingCorrupt, match="record 1"):
        read_all(small)


def test_a_dropped_record_is_detected(small: Path) -> None:
    header, records = split(small.read_bytes())
    for i in range(len(records)):
        small.write_bytes(header + b"".join(records[:i] + records[i + 1 :]))
        assert_rejected(small)


def test_a_duplicated_record_is_detected(small: Path) -> None:
    header, records = split(small.read_bytes())
    for i in range(len(records)):
        small.write_bytes(header + b"".join([*records[: i + 1], records[i], *records[i + 1 :]]))
        assert_rejected(small)
    small.write_bytes(header + b"".join([*records, records[0]]))
    with pytest.raises(RecordingCorrupt, match="after the final record"):
        read_all(small)


def test_every_truncation_is_detected(small: Path) -> None:
    data = small.read_bytes()
    header, records = split(data)
    with pytest.raises(RecordingCorrupt, match="final record is missing"):
        small.write_bytes(header + b"".join(records[:-1]))
        read_all(small)
    for end in range(len(data)):
        small.write_bytes(data[:end])
        assert_rejected(small)


def test_a_record_from_another_recording_is_detected(tmp_path: Path, small: Path) -> None:
    other = tmp_path / "rec" / "other.vgwrec"
    recorded(other, b"\xff" * 1600, b"\xff" * 1600, flush_bytes=400)
    header, records = split(small.read_bytes())
    records[1] = split(other.read_bytes())[1][1]
    small.write_bytes(header + b"".join(records))
    with pytest.raises(RecordingCorrupt, match="record 1"):
        read_all(small)


def test_chunks_before_the_damage_come_out_first(small: Path) -> None:
    header, records = split(small.read_bytes())
    small.write_bytes(header + b"".join(records[:-1]))
    seen: list[RecordedChunk] = []
    with pytest.raises(RecordingCorrupt):
        seen.extend(RecordingReader(small, KEYS.__getitem__))
    assert seen


# -- export ------------------------------------------------------------------------------------


def test_export_one_direction_is_the_audio_as_recorded(tmp_path: Path, caller: bytes) -> None:
    path = tmp_path / "rec" / "call.vgwrec"
    outbound = agent_audio(8000)
    recorded(path, caller, outbound, to_offset_ms=500)
    reader = RecordingReader(path, KEYS.__getitem__)
    assert reader.export_wav(FROM) == build_wav(PCMU_8K, caller)
    assert parse_wav(reader.export_wav(TO))[1] == bytes([0xFF]) * 4000 + outbound


def test_export_mixed_sums_both_directions_by_time(tmp_path: Path, caller: bytes) -> None:
    path = tmp_path / "rec" / "call.vgwrec"
    outbound = agent_audio(8000)
    recorded(path, caller, outbound, to_offset_ms=500)
    fmt, mixed = parse_wav(RecordingReader(path, KEYS.__getitem__).export_wav("mixed"))
    assert fmt == PCMU_8K
    a = np.frombuffer(ulaw_decode(caller), "<i2").astype(np.int32)
    b = np.zeros(len(caller), np.int32)
    b[4000:12000] = np.frombuffer(ulaw_decode(outbound), "<i2")
    expected = ulaw_encode(np.clip(a + b, -32768, 32767).astype("<i2").tobytes())
    assert mixed == expected


def test_export_mixed_clips(tmp_path: Path) -> None:
    path = tmp_path / "rec" / "loud.vgwrec"
    loudest = b"\x80" * 800  # +32124 each: the sum clips at 32767, which encodes as 0x80
    recorded(path, loudest, loudest)
    assert parse_wav(export_wav(path, KEYS.__getitem__))[1] == loudest


def test_export_replaces_audio_cleared_by_a_barge_in(tmp_path: Path) -> None:
    """Agent audio sent ahead and then cleared is cut where the next audio starts."""
    path = tmp_path / "rec" / "barge.vgwrec"
    first, second = agent_audio(8000), b"\x00" * 804  # 100.5 ms
    writer = RecordingWriter(path, KEY, "rec-1", CALL_ID)

    async def call() -> None:
        await writer.write(TO, first, 0)
        await writer.write(TO, second, 500)  # the carrier cleared first[4000:]
        await writer.write(TO, second, 600)  # 600.5 ms in whole ms: still contiguous
        await writer.write(TO, second, 701)
        await writer.close()

    asyncio.run(call())
    _, audio = parse_wav(export_wav(path, KEYS.__getitem__, TO))
    assert audio == first[:4000] + second * 3


def test_export_refuses_a_damaged_recording(small: Path) -> None:
    header, records = split(small.read_bytes())
    small.write_bytes(header + b"".join(records[:-1]))
    with pytest.raises(RecordingCorrupt):
        export_wav(small, KEYS.__getitem__)


# -- secure deletion ---------------------------------------------------------------------------


def test_secure_delete_overwrites_then_unlinks(tmp_path: Path, small: Path) -> None:
    original = small.read_bytes()
    link = tmp_path / "same-inode"
    os.link(small, link)  # keeps the inode reachable, to look at what deletion left behind
    secure_delete(small)
    assert not small.exists()
    left = link.read_bytes()
    assert len(left) == len(original)
    assert left != original
    assert sum(x == y for x, y in zip(left, original, strict=True)) < len(original) // 32
    with pytest.raises(RecordingCorrupt):
        read_all(link)


def test_secure_delete_of_a_missing_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        secure_delete(tmp_path / "gone")
    secure_delete(tmp_path / "gone", missing_ok=True)


def test_secure_delete_refuses_a_symlink(tmp_path: Path) -> None:
    target = tmp_path / "precious"
    target.write_bytes(b"keep me")
    (tmp_path / "rec").symlink_to(target)
    with pytest.raises(OSError):
        secure_delete(tmp_path / "rec")
    assert target.read_bytes() == b"keep me"


# -- never blocking the loop, bounded memory ---------------------------------------------------


async def test_ten_minutes_on_a_slow_disk_keep_memory_bounded(tmp_path: Path) -> None:
    """The disk stalls for the first five minutes of a ten-minute call: audio beyond the bound
    is dropped and counted, memory stays bounded, and the event loop keeps running while the
    worker thread is stuck (a heartbeat task releases the disk, which it could not do if the
    write ran on the loop)."""
    path = tmp_path / "rec" / "long.vgwrec"
    writer = RecordingWriter(path, KEY, "rec-1", CALL_ID)
    write_file = writer._append
    disk_stuck = threading.Event()
    disk_free = threading.Event()

    def slow_disk(plaintext: bytes, final: bool) -> None:
        disk_stuck.set()
        if not disk_free.wait(10 * UNIT):
            raise TimeoutError("the heartbeat never ran while the disk was stuck")
        write_file(plaintext, final)

    writer._append = slow_disk  # type: ignore[method-assign]
    beats_while_stuck = 0
    release = asyncio.Event()

    async def heartbeat() -> None:
        nonlocal beats_while_stuck
        while True:
            if disk_stuck.is_set() and not disk_free.is_set():
                beats_while_stuck += 1
                if release.is_set():
                    disk_free.set()
            await asyncio.sleep(0)

    beating = asyncio.create_task(heartbeat())
    frame_in, frame_out = b"\x7f" * FRAME, b"\x7e" * FRAME
    frames_per_direction = 10 * 60 * 50
    peak = 0
    for i in range(frames_per_direction):
        if i == frames_per_direction // 2:
            release.set()
        await writer.write(FROM, frame_in, i * 20)
        await writer.write(TO, frame_out, i * 20)
        peak = max(peak, writer.buffered_bytes)
        await asyncio.sleep(0)
    beating.cancel()
    await writer.close()

    assert disk_free.is_set()
    assert beats_while_stuck > 0
    assert peak <= MAX_BUFFERED_BYTES
    assert writer.dropped > 0
    reader = RecordingReader(path, KEYS.__getitem__)
    kept = sum(1 for _ in reader)
    assert kept == 2 * frames_per_direction - writer.dropped
    assert reader.dropped == writer.dropped
