"""The media path (``gateway/media/``: upgrade, ``start``, the Bridge's carrier input) under
hostile frames, through the app's real WebSocket endpoints (starlette ``TestClient``).

Each example is one call: a signed Twilio webhook (or, for Telnyx, the call and its stream
token made the way the webhooks make them), the media WebSocket opened with the real token,
the recorded ``connected`` and ``start``, then up to 20 hostile frames (recorded frames
mutated, random JSON, text and bytes), then ``stop``.

Invariants: no frame makes the endpoint or a Bridge task raise (no exception reaches the
client, no error-level log line); the call ends the way the carrier ended it: at the first
``stop`` or fatal carrier ``error`` among the frames (every stream ends with a ``stop``, so
never ``carrier_disconnected``), as the carrier's own sans-I/O codec reads them; it leaves
the live-call registry; the app keeps serving.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st
from starlette.testclient import TestClient
from starlette.websockets import WebSocketDisconnect

from gateway.app import build_app
from gateway.calls.state import Call, CallState
from providers.codec import CarrierCodec
from providers.events import Error, StreamStopped
from providers.exceptions import ProtocolError
from providers.telephony.telnyx import TelnyxCodec
from providers.telephony.twilio import TwilioCodec
from tests.conftest import UNIT
from tests.fuzz.profile import COSTLY, tally
from tests.fuzz.strategies import dumps, frames_from, leaf_swaps
from tests.gateway.conftest import make_settings
from tests.gateway.test_app import Media
from tests.providers.telephony.recorded import load_jsonl

TWILIO_CALL = load_jsonl("twilio_call.jsonl")
TELNYX_CALL = load_jsonl("telnyx_call.jsonl")
DEAD_API = "http://127.0.0.1:1"  # carrier REST hang-ups fail at once, offline


def expected_ending(carrier: str, frames: list[str | bytes]) -> str:
    """How a call whose carrier sent ``frames`` must end: at the first frame the carrier's
    codec reads as ``stop`` (a hang-up) or as a fatal ``error``."""
    codec: CarrierCodec = TwilioCodec() if carrier == "twilio" else TelnyxCodec()
    for frame in frames:
        try:
            events = codec.feed(frame)
        except ProtocolError:
            continue  # dropped and counted by the Bridge too
        for event in events:
            if isinstance(event, StreamStopped):
                return "carrier_hangup"
            if isinstance(event, Error) and event.fatal:
                return "carrier_error"
    raise AssertionError("every stream here ends with stop")


class ErrorLog(logging.Handler):
    """Collects error-level records of the gateway's loggers."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


class Calls(Media):
    """``Media`` plus what these examples need: Telnyx calls, the registry, the error log."""

    def __init__(self, client: TestClient, token: str, errors: ErrorLog) -> None:
        super().__init__(client, token)
        self.errors = errors

    def run(self, coroutine_fn: Any, *args: Any) -> Any:
        return self.client.portal.call(coroutine_fn, *args)  # type: ignore[union-attr]

    @property
    def runtime(self) -> Any:
        return self.client.app.state.runtime  # type: ignore[attr-defined]

    def telnyx_call(self, ccid: str) -> str:
        """Register a Telnyx call and mint its stream token, as the webhooks would."""
        runtime = self.runtime

        async def make() -> str:
            call, _ = await runtime.registry.create("telnyx", ccid, "echo")
            await runtime.registry.transition(call.call_id, CallState.CONNECTING)
            token: str = await runtime.stream_tokens.mint(f"telnyx:{ccid}", 120)
            return token

        token: str = self.run(make)
        return token

    def call(self, carrier: str, carrier_id: str) -> Call | None:
        call: Call | None = self.run(self.runtime.registry.by_carrier_id, carrier, carrier_id)
        return call

    def wait_ended(self, carrier: str, carrier_id: str) -> Call:
        deadline = time.monotonic() + 10 * UNIT
        while True:
            call = self.call(carrier, carrier_id)
            if call is not None and not call.active:
                return call
            assert time.monotonic() < deadline, f"the call did not end: {call}"
            time.sleep(0.005)


@pytest.fixture
def calls(tmp_path: Path) -> Iterator[Calls]:
    env = {"VOICEGW_TWILIO_API_URL": DEAD_API, "VOICEGW_TELNYX_API_URL": DEAD_API}
    env["VOICEGW_TELNYX_API_KEY"] = "KEYfuzz-not-used-offline"
    # A call per example: the long run places 10,000 within minutes (not a rate-limit test).
    env["VOICEGW_RATE_LIMIT_PER_MINUTE"] = "1000000"
    settings = make_settings(tmp_path, env)
    assert settings.twilio_auth_token is not None
    app = build_app(settings)
    errors = ErrorLog()
    logging.getLogger("voicegw").addHandler(errors)
    try:
        with TestClient(app, client=("127.0.0.1", 50000), base_url="http://gw.test:8000") as c:
            yield Calls(c, settings.twilio_auth_token.get(), errors)
    finally:
        logging.getLogger("voicegw").removeHandler(errors)


def opening(carrier: str, call_id: str, token: str) -> list[str]:
    """The recorded ``connected`` and ``start``, for this call and token."""
    if carrier == "twilio":
        connected, start = (orjson.loads(f) for f in TWILIO_CALL[:2])
        start["start"]["callSid"] = call_id
        start["start"]["customParameters"]["token"] = token
    else:
        connected, start = (orjson.loads(f) for f in TELNYX_CALL[:2])
        connected["connected"]["x-telnyx-streaming-auth-token"] = token
        start["start"]["call_control_id"] = call_id
    return [orjson.dumps(connected).decode(), orjson.dumps(start).decode()]


def new_call(calls: Calls, carrier: str) -> tuple[str, str, str, dict[str, str]]:
    """(carrier call id, stream token, stream path, upgrade headers) of a call awaiting its
    stream."""
    if carrier == "twilio":
        call_id = "CA" + uuid.uuid4().hex
        token = calls.voice(call_id)
        path = calls.paths[call_id]
        return call_id, token, path, calls.signed_headers(path)
    call_id = "v3:" + uuid.uuid4().hex
    return call_id, calls.telnyx_call(call_id), "/media/telnyx", {}


def stop_frame(carrier: str) -> str:
    return (TWILIO_CALL if carrier == "twilio" else TELNYX_CALL)[-1]


@COSTLY
@pytest.mark.parametrize("carrier", ["twilio", "telnyx"])
@given(data=st.data())
def test_hostile_frames_on_a_live_stream(calls, carrier, data):
    recorded = TWILIO_CALL if carrier == "twilio" else TELNYX_CALL
    frames = data.draw(st.lists(frames_from(recorded[1:]), max_size=20), label="frames")
    call_id, token, path, headers = new_call(calls, carrier)
    errors_before = len(calls.errors.records)
    sent = [*opening(carrier, call_id, token), *frames, stop_frame(carrier)]
    with calls.client.websocket_connect(path, headers=headers) as ws:
        for frame in sent:
            if isinstance(frame, bytes):
                ws.send_bytes(frame)
            else:
                ws.send_text(frame)
        call = calls.wait_ended(carrier, call_id)
        try:
            ws.close()
        except WebSocketDisconnect:
            pass
    assert call.ended_reason == expected_ending(carrier, sent), call.ended_reason
    new_errors = [r.getMessage() for r in calls.errors.records[errors_before:]]
    assert not new_errors, new_errors
    assert calls.client.get("/healthz").status_code == 200
    tally("accepted" if call.ended_reason == "carrier_hangup" else "rejected")


def awkward_frames(recorded: list[str]) -> list[str]:
    """Every field of each kind of frame after ``start`` but ``stop``, set to each awkward
    value (see ``strategies.leaf_swaps``)."""
    kinds: dict[str, str] = {}
    for frame in recorded[2:-1]:
        kinds.setdefault(orjson.loads(frame)["event"], frame)
    return [dumps(v) for frame in kinds.values() for v in leaf_swaps(orjson.loads(frame))]


@pytest.mark.parametrize("carrier", ["twilio", "telnyx"])
def test_every_field_with_every_awkward_value(calls, carrier):
    recorded = TWILIO_CALL if carrier == "twilio" else TELNYX_CALL
    variants = awkward_frames(recorded)
    errors_before = len(calls.errors.records)
    # Fewer than media.MAX_MALFORMED per stream, so each stream lives to its stop.
    for i in range(0, len(variants), 20):
        call_id, token, path, headers = new_call(calls, carrier)
        sent = [*opening(carrier, call_id, token), *variants[i : i + 20], stop_frame(carrier)]
        with calls.client.websocket_connect(path, headers=headers) as ws:
            for frame in sent:
                ws.send_text(frame)
            call = calls.wait_ended(carrier, call_id)
        assert call.ended_reason == expected_ending(carrier, list(sent)), call.ended_reason
        tally("accepted")
    assert not [r.getMessage() for r in calls.errors.records[errors_before:]]
