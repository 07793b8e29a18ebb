"""Call recordings: one encrypted, chunked, append-only file per call, holding both directions.

File format, version 1 (integers big-endian)::

    file    = header record* final-record
    header  = "VGWREC" | version u8 (1) | key_id_len u8 | key_id | call_id_len u8 | call_id
              | nonce_prefix (8 random bytes)
    record  = final u8 (0 or 1) | length u32 | ciphertext (length bytes, GCM tag included)

    nonce   = nonce_prefix | index u32         index: 0, 1, 2, ... in file order
    aad     = SHA-256(header) | index u32 | final u8
    data record plaintext   = entry*
    entry   = direction u8 (0 from_carrier, 1 to_carrier) | at_ms u32 | size u16 | audio
    final record plaintext  = entries u64 | dropped u64

Every record is sealed with AES-256-GCM under the key the header names. The nonce's counter
is the record's index, so a nonce is never reused within a file, and the random 64-bit prefix
keeps files apart. Because the associated data binds the header, the index and the final flag,
a record altered, moved, dropped, duplicated or copied from another file fails authentication;
a file that ends before its final record reads as truncated; bytes after it are refused.
Audio is G.711 mu-law at 8 kHz; ``at_ms`` is the media time of an entry's first sample.

Writing never blocks the event loop: ``RecordingWriter.write`` appends to an in-memory batch;
each batch of about one second of audio (``FLUSH_BYTES``) is sealed and appended by a worker
thread. Memory is bounded: once ``MAX_BUFFERED_BYTES`` wait for a slow disk, new audio is
dropped and counted (``dropped``, also stored in the final record) rather than queued. A disk
error stops the recording (later audio is dropped) and ``close`` raises ``RecordingError``; the
file then lacks its final record and reads as truncated. The call itself is never affected.

Exceptions::

    RecordingError          root: everything this module raises on purpose
    ├── RecordingCorrupt    a file fails authentication, is truncated or is malformed
    └── RecordingKeyUnknown the keyring has no key for the file's key id
"""

from __future__ import annotations

import asyncio
import collections
import enum
import hashlib
import logging
import os
import stat
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Final, Literal

import numpy as np
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from gateway.media.audio import build_wav, ulaw_decode, ulaw_encode
from providers.events import PCMU_8K

log = logging.getLogger("voicegw.recording")

MAGIC: Final = b"VGWREC"
VERSION: Final = 1
KEY_BYTES: Final = 32
NONCE_PREFIX_BYTES: Final = 8
SAMPLES_PER_MS: Final = 8
FLUSH_BYTES: Final = 8000
"""A batch is sealed and written once it holds this much (about 1 s of 8 kHz mu-law)."""
MAX_BUFFERED_BYTES: Final = 8 * FLUSH_BYTES
"""Audio waiting for the disk beyond this (about 8 s) is dropped and counted."""
MAX_RECORD_BYTES: Final = 1 << 20
"""A reader refuses a record longer than this before reading it (a forged length)."""
SECURE_DELETE_BLOCK: Final = 64 * 1024
_MIX_BLOCK: Final = 60 * 8000  # samples mixed at a time (one minute)

_RECORD: Final = struct.Struct(">BI")  # final flag, ciphertext length
_ENTRY: Final = struct.Struct(">BIH")  # direction, at_ms, size
_AAD_TAIL: Final = struct.Struct(">IB")  # index, final flag
_FINAL: Final = struct.Struct(">QQ")  # entries, dropped
_TAG_BYTES: Final = 16
_MAX_ENTRY_AUDIO: Final = 0xFFFF
_MAX_AT_MS: Final = 0xFFFFFFFF
_MAX_INDEX: Final = 0xFFFFFFFF
_MU_LAW_SILENCE: Final = 0xFF


class RecordingError(Exception):
    """Root of every exception this module raises on purpose."""


class RecordingCorrupt(RecordingError):
    """A recording fails authentication (wrong key or altered), is truncated or malformed."""


class RecordingKeyUnknown(RecordingError):
    """The keyring has no key for the recording's key id."""


class Direction(enum.StrEnum):
    FROM_CARRIER = "from_carrier"  # what the caller said
    TO_CARRIER = "to_carrier"  # what the caller heard


_CODES: Final = {Direction.FROM_CARRIER: 0, Direction.TO_CARRIER: 1}
_DIRECTIONS: Final = {code: direction for direction, code in _CODES.items()}


@dataclass(frozen=True, slots=True)
class RecordedChunk:
    direction: Direction
    at_ms: int
    audio: bytes  # G.711 mu-law, 8 kHz


@dataclass(frozen=True, slots=True)
class _Header:
    key_id: str
    call_id: str
    nonce_prefix: bytes
    raw: bytes

    @classmethod
    def new(cls, key_id: str, call_id: str) -> _Header:
        key_bytes, call_bytes = _label(key_id, "key_id"), _label(call_id, "call_id")
        prefix = os.urandom(NONCE_PREFIX_BYTES)
        raw = b"".join(
            (
                MAGIC,
                bytes([VERSION, len(key_bytes)]),
                key_bytes,
                bytes([len(call_bytes)]),
                call_bytes,
                prefix,
            )
        )
        return cls(key_id, call_id, prefix, raw)

    @classmethod
    def read(cls, f: _Reader) -> _Header:
        """Parse the header at the start of ``f``. Raises RecordingCorrupt."""
        start = f.exactly(len(MAGIC) + 2, "header")
        if start[: len(MAGIC)] != MAGIC:
            raise RecordingCorrupt("not a voicegw recording")
        if start[len(MAGIC)] != VERSION:
            raise RecordingCorrupt(f"unsupported recording version {start[len(MAGIC)]}")
        key_bytes = f.exactly(start[-1], "header")
        call_len = f.exactly(1, "header")
        call_bytes = f.exactly(call_len[0], "header")
        prefix = f.exactly(NONCE_PREFIX_BYTES, "header")
        try:
            key_id, call_id = key_bytes.decode(), call_bytes.decode()
        except UnicodeDecodeError:
            raise RecordingCorrupt("malformed header") from None
        return cls(key_id, call_id, prefix, start + key_bytes + call_len + call_bytes + prefix)


def _label(value: str, name: str) -> bytes:
    data = value.encode()
    if not 0 < len(data) <= 255:
        raise ValueError(f"{name} must be 1 to 255 bytes of UTF-8")
    return data


class _Sealer:
    """Seals (or opens) the records of one file in order; the index is the nonce counter."""

    __slots__ = ("_aad_head", "_aead", "_prefix", "index")

    def __init__(self, key: bytes, header: _Header) -> None:
        if len(key) != KEY_BYTES:
            raise ValueError(f"a recording key is {KEY_BYTES} bytes, got {len(key)}")
        self._aead = AESGCM(key)
        self._aad_head = hashlib.sha256(header.raw).digest()
        self._prefix = header.nonce_prefix
        self.index = 0

    def _nonce_aad(self, final: bool) -> tuple[bytes, bytes]:
        if self.index > _MAX_INDEX:
            raise RecordingError("recording has used up its nonce counter")
        nonce = self._prefix + self.index.to_bytes(4, "big")
        return nonce, self._aad_head + _AAD_TAIL.pack(self.index, final)

    def seal(self, plaintext: bytes, *, final: bool) -> bytes:
        """The next record, framed."""
        nonce, aad = self._nonce_aad(final)
        sealed = self._aead.encrypt(nonce, plaintext, aad)
        self.index += 1
        return _RECORD.pack(final, len(sealed)) + sealed

    def open(self, sealed: bytes, *, final: bool) -> bytes:
        """The plaintext of the next record. Raises RecordingCorrupt."""
        nonce, aad = self._nonce_aad(final)
        try:
            plaintext = self._aead.decrypt(nonce, sealed, aad)
        except InvalidTag:
            raise RecordingCorrupt(
                f"record {self.index} fails authentication (wrong key, or the file was altered)"
            ) from None
        self.index += 1
        return plaintext


# -- writing -----------------------------------------------------------------------------------


class RecordingWriter:
    """Records one call into ``path``; ``write`` any number of times, then ``close`` once.

    The constructor does no I/O. The first flush creates ``path`` (``O_EXCL``, mode 0600; its
    directory is created or narrowed to 0700) in a worker thread. ``write`` never blocks and
    never raises for disk problems; ``close`` writes the final record, fsyncs and raises
    ``RecordingError`` if any of the recording was lost to a disk error.
    """

    def __init__(
        self,
        path: Path,
        key: bytes,
        key_id: str,
        call_id: str,
        *,
        flush_bytes: int = FLUSH_BYTES,
        max_buffered_bytes: int = MAX_BUFFERED_BYTES,
    ) -> None:
        if not 0 < flush_bytes <= max_buffered_bytes or flush_bytes > MAX_RECORD_BYTES // 2:
            raise ValueError("need 0 < flush_bytes <= max_buffered_bytes, and a sane flush size")
        self.path: Final = path
        self._header = _Header.new(key_id, call_id)
        self._sealer = _Sealer(key, self._header)
        self._flush_bytes = flush_bytes
        self._max_buffered = max_buffered_bytes
        self._batch = bytearray()
        self._batch_entries = 0
        self._ready: collections.deque[tuple[bytes, int]] = collections.deque()
        self._ready_bytes = 0
        self._in_flight = 0
        self._flusher: asyncio.Task[None] | None = None
        self._closing: asyncio.Task[None] | None = None
        self._fd: int | None = None  # touched only by worker threads, one at a time
        self._entries = 0
        self._error: BaseException | None = None
        self.dropped = 0
        """Chunks dropped: the disk was too slow, or had failed."""

    @property
    def buffered_bytes(self) -> int:
        """Bytes held in memory: the open batch, batches waiting, the batch being written."""
        return len(self._batch) + self._ready_bytes + self._in_flight

    async def write(self, direction: Direction, audio: bytes, at_ms: int) -> None:
        """Record mu-law ``audio`` heard in ``direction`` from media time ``at_ms``.

        Returns at once. Raises ValueError for a negative or huge ``at_ms`` and RecordingError
        after ``close``.
        """
        if self._closing is not None:
            raise RecordingError("recording is closed")
        if not 0 <= at_ms <= _MAX_AT_MS - len(audio) // SAMPLES_PER_MS:
            raise ValueError(f"at_ms out of range: {at_ms}")
        code = _CODES[direction]
        step = min(self._flush_bytes, _MAX_ENTRY_AUDIO)
        for offset in range(0, len(audio), step):
            self._add(code, audio[offset : offset + step], at_ms + offset // SAMPLES_PER_MS)

    def _add(self, code: int, audio: bytes, at_ms: int) -> None:
        size = _ENTRY.size + len(audio)
        if self._error is not None or self.buffered_bytes + size > self._max_buffered:
            if not self.dropped and self._error is None:
                log.warning("recording falls behind the disk; dropping audio")
            self.dropped += 1
            return
        self._batch += _ENTRY.pack(code, at_ms, len(audio))
        self._batch += audio
        self._batch_entries += 1
        if len(self._batch) >= self._flush_bytes:
            self._hand_over()

    def _hand_over(self) -> None:
        """Queue the open batch for the worker thread; start the flusher if it is idle."""
        batch = bytes(self._batch)
        self._batch.clear()
        self._ready.append((batch, self._batch_entries))
        self._ready_bytes += len(batch)
        self._batch_entries = 0
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.get_running_loop().create_task(
                self._flush_ready(), name="recording-flush"
            )

    async def _flush_ready(self) -> None:
        # One flusher at a time: records must reach the file in index order.
        while self._ready:
            batch, entries = self._ready.popleft()
            self._ready_bytes -= len(batch)
            self._in_flight = len(batch)
            try:
                if self._error is None:
                    await asyncio.to_thread(self._append, batch, False)
                    self._entries += entries
                else:
                    self.dropped += entries
            except Exception as exc:
                self._fail(exc)
                self.dropped += entries
            finally:
                self._in_flight = 0

    def _fail(self, exc: BaseException) -> None:
        if self._error is None:
            self._error = exc
            log.error("recording failed", extra={"error": type(exc).__name__})

    async def close(self) -> None:
        """Flush what is buffered, write the final record, fsync and close the file.

        Idempotent; a cancelled ``close`` still finishes in the background. Raises
        RecordingError if part of the recording was lost to a disk error.
        """
        if self._closing is None:
            self._closing = asyncio.get_running_loop().create_task(
                self._finish(), name="recording-close"
            )
        await asyncio.shield(self._closing)

    async def _finish(self) -> None:
        if self._batch:
            self._hand_over()
        if self._flusher is not None:
            await self._flusher
        if self._error is None:
            summary = _FINAL.pack(self._entries, self.dropped)
            try:
                await asyncio.to_thread(self._append, summary, True)
            except Exception as exc:
                self._fail(exc)
        if self._fd is not None:
            await asyncio.to_thread(os.close, self._fd)
            self._fd = None
        if self._error is not None:
            raise RecordingError("recording incomplete: a write failed") from self._error

    def _append(self, plaintext: bytes, final: bool) -> None:
        """Worker thread: seal and append one record (creating the file first if needed)."""
        if self._fd is None:
            self._fd = _create(self.path)
            _write_all(self._fd, self._header.raw)
        _write_all(self._fd, self._sealer.seal(plaintext, final=final))
        if final:
            os.fsync(self._fd)
            _fsync_dir(self.path.parent)


def _create(path: Path) -> int:
    """Create ``path`` for writing: a new file (never an existing one), 0600, in a 0700 dir."""
    directory = path.parent
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    if stat.S_IMODE(directory.stat().st_mode) & 0o077:
        directory.chmod(0o700)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND | os.O_CLOEXEC | os.O_NOFOLLOW
    fd = os.open(path, flags, 0o600)
    os.fchmod(fd, 0o600)  # whatever the umask
    return fd


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# -- reading -----------------------------------------------------------------------------------


class _Reader:
    """A binary file read in exact-sized pieces; a short read is a truncation."""

    __slots__ = ("_f",)

    def __init__(self, f: BinaryIO) -> None:
        self._f = f

    def exactly(self, n: int, what: str) -> bytes:
        data = self._f.read(n)
        if len(data) != n:
            raise RecordingCorrupt(f"truncated in the {what}")
        return data

    def at_end(self) -> bool:
        return not self._f.read(1)


class RecordingReader:
    """Reads a recording back: iterate for its chunks in order, or export a WAV file.

    The header is read at construction (RecordingCorrupt, RecordingKeyUnknown, OSError).
    Iteration streams record by record: chunks come out as each record authenticates, and
    RecordingCorrupt is raised where the file stops being trustworthy, so a consumer that must
    not act on a damaged recording reads it to the end before using any of it.
    """

    def __init__(self, path: Path, keyring_lookup: Callable[[str], bytes]) -> None:
        self.path: Final = path
        with open(path, "rb") as f:
            self._header = _Header.read(_Reader(f))
        try:
            self._key = keyring_lookup(self._header.key_id)
        except KeyError:
            raise RecordingKeyUnknown(f"no key {self._header.key_id!r} in the keyring") from None
        self.dropped: int | None = None
        """Chunks the writer dropped (from the final record), once iteration has finished."""

    @property
    def key_id(self) -> str:
        return self._header.key_id

    @property
    def call_id(self) -> str:
        return self._header.call_id

    def __iter__(self) -> Iterator[RecordedChunk]:
        sealer = _Sealer(self._key, self._header)
        entries = 0
        with open(self.path, "rb") as f:
            reader = _Reader(f)
            reader.exactly(len(self._header.raw), "header")
            while True:
                head = f.read(_RECORD.size)
                if not head:
                    raise RecordingCorrupt("truncated: the final record is missing")
                if len(head) != _RECORD.size:
                    raise RecordingCorrupt(f"truncated in record {sealer.index}")
                final, length = _RECORD.unpack(head)
                if final not in (0, 1) or not _TAG_BYTES <= length <= MAX_RECORD_BYTES:
                    raise RecordingCorrupt(f"record {sealer.index} has a malformed frame")
                sealed = reader.exactly(length, f"record {sealer.index}")
                plaintext = sealer.open(sealed, final=bool(final))
                if final:
                    break
                for chunk in _entries(plaintext):
                    entries += 1
                    yield chunk
            if not reader.at_end():
                raise RecordingCorrupt("data after the final record")
        if len(plaintext) != _FINAL.size:
            raise RecordingCorrupt("malformed final record")
        written, dropped = _FINAL.unpack(plaintext)
        if written != entries:
            raise RecordingCorrupt(f"final record counts {written} chunks, file holds {entries}")
        self.dropped = dropped

    def export_wav(self, direction: Direction | Literal["mixed"] = "mixed") -> bytes:
        """The recording as an 8 kHz mu-law WAV file: one direction, or both mixed.

        Each direction is laid out by ``at_ms``, gaps filled with silence. A chunk that starts
        before the end of what its direction holds replaces everything from its start: that
        audio was cleared on the carrier (barge-in) and never played. Mixing decodes both to
        linear PCM, adds with clipping and re-encodes. Holds the call in memory (about 3 bytes
        a sample): run it in a worker thread. Raises RecordingCorrupt, before returning
        anything, if the file is damaged.
        """
        wanted = tuple(Direction) if direction == "mixed" else (Direction(direction),)
        tracks = {d: bytearray() for d in wanted}
        for chunk in self:
            track = tracks.get(chunk.direction)
            if track is not None:
                _place(track, chunk.at_ms * SAMPLES_PER_MS, chunk.audio)
        total = max(len(track) for track in tracks.values())
        for track in tracks.values():
            track.extend(bytes([_MU_LAW_SILENCE]) * (total - len(track)))
        if len(tracks) == 1:
            return build_wav(PCMU_8K, bytes(tracks[wanted[0]]))
        a, b = tracks.values()
        mixed = bytearray()
        for i in range(0, total, _MIX_BLOCK):
            pcm = np.frombuffer(ulaw_decode(bytes(a[i : i + _MIX_BLOCK])), "<i2").astype(np.int32)
            pcm += np.frombuffer(ulaw_decode(bytes(b[i : i + _MIX_BLOCK])), "<i2")
            mixed += ulaw_encode(np.clip(pcm, -32768, 32767).astype("<i2").tobytes())
        return build_wav(PCMU_8K, bytes(mixed))


def _place(track: bytearray, start: int, audio: bytes) -> None:
    """Lay ``audio`` into ``track`` from sample ``start`` (see ``export_wav``)."""
    if len(track) - SAMPLES_PER_MS < start < len(track):
        start = len(track)  # less than the 1 ms resolution of at_ms: contiguous audio
    if start > len(track):
        track.extend(bytes([_MU_LAW_SILENCE]) * (start - len(track)))
    del track[start:]
    track += audio


def _entries(plaintext: bytes) -> Iterator[RecordedChunk]:
    offset = 0
    while offset < len(plaintext):
        if len(plaintext) - offset < _ENTRY.size:
            raise RecordingCorrupt("malformed chunk entry")
        code, at_ms, size = _ENTRY.unpack_from(plaintext, offset)
        offset += _ENTRY.size
        direction = _DIRECTIONS.get(code)
        if direction is None or offset + size > len(plaintext):
            raise RecordingCorrupt("malformed chunk entry")
        yield RecordedChunk(direction, at_ms, plaintext[offset : offset + size])
        offset += size


def export_wav(
    path: Path,
    keyring_lookup: Callable[[str], bytes],
    direction: Direction | Literal["mixed"] = "mixed",
) -> bytes:
    """``RecordingReader(path, keyring_lookup).export_wav(direction)``."""
    return RecordingReader(path, keyring_lookup).export_wav(direction)


# -- deletion ----------------------------------------------------------------------------------


def secure_delete(path: Path, *, missing_ok: bool = False) -> None:
    """Overwrite the file at ``path`` with random bytes (same length), fsync, then unlink it.

    Blocking: call it through ``asyncio.to_thread``. A symlink is refused (``OSError``), so
    a planted link cannot aim the overwrite at another file. Limits: on SSDs (wear levelling),
    copy-on-write or journaling filesystems (btrfs, ZFS, ext4 ``data=journal``) and in
    snapshots or backups, the old blocks may survive the overwrite. The guarantee that holds
    everywhere is the encryption: without the key the file is noise, so retiring a key erases
    every recording sealed under it.
    """
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except FileNotFoundError:
        if missing_ok:
            return
        raise
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise OSError(f"not a regular file: {path}")
        offset = 0
        while offset < info.st_size:
            block = os.urandom(min(SECURE_DELETE_BLOCK, info.st_size - offset))
            offset += os.pwrite(fd, block, offset)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.unlink(path)
    _fsync_dir(path.parent)


async def delete_recording_file(path: str) -> None:
    """``secure_delete`` off the event loop; a missing file is not an error (the erasure and
    retention callers' ``DeleteRecording``)."""
    await asyncio.to_thread(secure_delete, Path(path), missing_ok=True)
