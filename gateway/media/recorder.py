"""Which calls are recorded and where (``Recorder``), and the tap one Bridge records through
(``RecordingTap``). The file format is ``gateway.media.recording``'s.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import Final

from gateway.calls.state import Call
from gateway.media.audio import Transcoder
from gateway.media.recording import Direction, RecordingError, RecordingWriter
from gateway.records.base import Store
from metrics.registry import MEDIA_DROPPED
from providers.events import PCMU_8K, AudioChunk, AudioFormat
from security.crypto import KeyRing

log = logging.getLogger("voicegw.media")

RECORDING_KEY_USE: Final = b"voicegw recording v1"  # one of security.crypto.DERIVED_KEY_USES


class Recorder:
    """Recording policy and files: ``enabled`` (``VOICEGW_RECORDING``), ``consent``
    (``VOICEGW_RECORDING_CONSENT``: ``all`` records every call), files under ``directory``
    sealed with a key derived from the active data key."""

    def __init__(
        self, *, enabled: bool, consent: str, directory: Path, store: Store, data_keys: KeyRing
    ) -> None:
        self.enabled = enabled
        self.consent = consent
        self.directory = directory
        self._store = store
        self._data_keys = data_keys

    def allowed(self, consent: bool) -> bool:
        """Whether a new call is recorded: recording on, and consent given for this call (or
        the configured rule records every call)."""
        return self.enabled and (self.consent == "all" or consent)

    def path(self, call: Call) -> Path:
        """Where ``call``'s recording goes."""
        # Call ids are "call_" + token_urlsafe: safe as a file name, no path traversal.
        return self.directory / f"{call.call_id}.vgwrec"

    async def open(self, call: Call) -> RecordingWriter | None:
        """A writer for this call's recording, or None when it is not to be recorded."""
        if not self.enabled:
            return None
        record = await self._store.get_call(call.call_id)
        if record is None or record.recording_path is None:
            return None
        key_id = self._data_keys.active_key_id
        key = self._data_keys.derive(key_id, RECORDING_KEY_USE)
        return RecordingWriter(Path(record.recording_path), key, key_id, call.call_id)


class RecordingTap:
    """One call's recording as its Bridge feeds it: both directions as mu-law 8 kHz (whatever
    the carrier sends: Telnyx may send A-law), timed in ms from ``origin`` (loop time)."""

    def __init__(self, writer: RecordingWriter, carrier_format: AudioFormat, origin: float) -> None:
        self.writer = writer
        self._origin = origin
        pcmu = carrier_format == PCMU_8K
        self._record_in = None if pcmu else Transcoder(carrier_format, PCMU_8K)
        self._record_out = None if pcmu else Transcoder(carrier_format, PCMU_8K)

    def media_ms(self, loop_time: float) -> int:
        return max(0, int((loop_time - self._origin) * 1000))

    async def write(self, direction: Direction, chunk: AudioChunk, at_ms: int) -> None:
        """Hand one chunk to the recording; returns at once and never fails the call."""
        transcoder = self._record_in if direction is Direction.FROM_CARRIER else self._record_out
        audio = chunk.to_bytes()
        if transcoder is not None:
            audio = transcoder.convert(audio)
        with contextlib.suppress(ValueError):  # at_ms beyond 49 days
            await self.writer.write(direction, audio, at_ms)

    async def close(self, carrier: str, call: Call) -> None:
        """Complete the file; a failure is logged (the call is over either way), audio the
        disk was too slow for is counted."""
        try:
            await self.writer.close()
        except RecordingError:
            log.error("call recording incomplete", extra={"call_id": call.call_id})
        if self.writer.dropped:
            MEDIA_DROPPED.labels(carrier, "recording", "disk_slow").inc(self.writer.dropped)
