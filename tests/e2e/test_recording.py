"""Recordings end to end: a consented call is recorded encrypted, exported through the API by
an authorised role (audited), and erased with the caller's data."""

from __future__ import annotations

import base64
from pathlib import Path

import httpx
import pytest

from gateway.cli.admin import create_api_key
from gateway.media.recorder import RECORDING_KEY_USE
from gateway.media.recording import RecordingReader
from gateway.records.base import AuditQuery, Role
from tests.conftest import UNIT
from tests.e2e.carrier import caller_audio, place_call

pytestmark = pytest.mark.e2e

CALLER = "+15550100001"  # what tests/e2e/carrier.py's Twilio webhook sends as From


async def _recorded_call(gw) -> tuple[str, bytes]:
    leg = await place_call(gw, "twilio")
    audio = caller_audio(50)
    await leg.play(audio, realtime=False)
    await leg.wait_audio(10)
    await leg.stop()
    call = await gw.wait_ended(leg.ticket)
    return call.call_id, leg.sent_audio


async def test_a_consented_call_is_recorded_encrypted_exported_and_erased(make_gateway):
    gw = await make_gateway("echo", VOICEGW_RECORDING="on", VOICEGW_RECORDING_CONSENT="all")
    runtime = gw.runtime
    call_id, sent = await _recorded_call(gw)
    record = await runtime.store.get_call(call_id)
    assert record is not None and record.recording_path is not None
    path = record.recording_path
    raw = Path(path).read_bytes()  # noqa: ASYNC240 - a small local file
    # Encrypted at rest: no 16-byte window of what the caller said is on disk.
    assert not any(sent[i : i + 16] in raw for i in range(0, len(sent) - 16, 16))

    def lookup(key_id: str) -> bytes:
        return runtime.data_keys.derive(key_id, RECORDING_KEY_USE)

    reader = RecordingReader(Path(path), lookup)
    inbound = b"".join(c.audio for c in reader if c.direction.value == "from_carrier")
    assert inbound == sent

    new, _ = await create_api_key(runtime.store, "dpo", Role.AUDITOR)
    bearer = {"Authorization": f"Bearer {new.token}"}
    async with httpx.AsyncClient(base_url=gw.url, timeout=10 * UNIT) as http:
        wav = await http.get(f"/api/v1/calls/{call_id}/recording", headers=bearer)
        assert wav.status_code == 200
        assert wav.headers["content-type"] == "audio/wav"
        assert wav.content[:4] == b"RIFF"
        exported = await runtime.store.query_audit(AuditQuery(action="recording.export"))
        assert [e.entity_id for e in exported] == [call_id]

        # An operator may not export recordings.
        op, _ = await create_api_key(runtime.store, "ops", Role.OPERATOR)
        denied = await http.get(
            f"/api/v1/calls/{call_id}/recording",
            headers={"Authorization": f"Bearer {op.token}"},
        )
        assert denied.status_code == 403

        subject = "%2B" + CALLER[1:]
        erased = await http.post(f"/api/v1/users/{subject}/delete", headers=bearer)
        assert erased.status_code == 200, erased.text
        assert erased.json()["recordings_deleted"] == 1
    assert not Path(path).exists()  # noqa: ASYNC240
    after = await runtime.store.get_call(call_id)
    assert after is not None and after.from_index is None and after.from_number is None


async def test_without_consent_nothing_is_recorded(make_gateway):
    gw = await make_gateway("echo", VOICEGW_RECORDING="on")  # consent rule: per call
    call_id, _ = await _recorded_call(gw)
    record = await gw.runtime.store.get_call(call_id)
    assert record is not None and record.recording_path is None
    assert not (gw.settings.data_dir / "recordings").exists()


def test_recording_key_is_not_a_data_key():
    from security.crypto import KeyRing

    ring = KeyRing([("k1", b"\x01" * 32)])
    assert ring.derive("k1", RECORDING_KEY_USE) != b"\x01" * 32
    assert base64.b64encode(ring.derive("k1", RECORDING_KEY_USE))
