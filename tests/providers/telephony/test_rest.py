"""REST clients against the fake carrier APIs over real loopback sockets."""

from __future__ import annotations

import asyncio
import base64
import typing
from collections.abc import AsyncIterator

import httpx
import orjson
import pydantic
import pytest
from telnyx.types.call_dial_params import CallDialParams
from telnyx.types.calls.action_answer_params import ActionAnswerParams
from telnyx.types.calls.action_start_streaming_params import ActionStartStreamingParams
from telnyx.types.calls.action_transfer_params import ActionTransferParams
from twilio.http import HttpClient
from twilio.http.response import Response as TwilioResponse
from twilio.rest import Client as TwilioClient
from twilio.twiml.voice_response import Dial, VoiceResponse

from providers.exceptions import ProviderError
from providers.telephony.rest import (
    TELNYX_BASE_URL,
    TWILIO_BASE_URL,
    TWILIO_STATUS_EVENTS,
    CallOutcome,
    CarrierRestError,
    TelnyxRest,
    TwilioRest,
    check_e164,
    dial_twiml,
)
from tests.conftest import UNIT
from tests.fakes.carrier_rest import Behavior, FakeCarrierRest, Reply

ACCOUNT_SID = "AC5ef8732a3c49700934481addd5ce1659"
CALL_SID = "CA3ae75ffe1c5d8847e478556c07d07103"
AUTH_TOKEN = "twilio-auth-token-0123456789abcdef"
CALL_CONTROL_ID = "v3:MdI91X4lWFEs7IgbBEOT9M4AigoY08M0WWZFISt1Yw2axZ_IiE4pqg"
API_KEY = "KEY0123456789ABCDEF_secret"
STREAM_URL = "wss://gw.example.com/media/telnyx"
STREAM_TOKEN = "stream-token-abc"


@pytest.fixture
async def fake() -> AsyncIterator[FakeCarrierRest]:
    async with FakeCarrierRest() as server:
        yield server


@pytest.fixture
async def twilio(fake: FakeCarrierRest) -> AsyncIterator[TwilioRest]:
    async with TwilioRest(AUTH_TOKEN, base_url=fake.base_url, timeout=2 * UNIT) as client:
        yield client


@pytest.fixture
async def telnyx(fake: FakeCarrierRest) -> AsyncIterator[TelnyxRest]:
    async with TelnyxRest(API_KEY, base_url=fake.base_url, timeout=2 * UNIT) as client:
        yield client


# -- Twilio ------------------------------------------------------------------------------------


async def test_twilio_hangup_request(fake: FakeCarrierRest, twilio: TwilioRest) -> None:
    assert await twilio.hangup(ACCOUNT_SID, CALL_SID) is CallOutcome.DONE

    (request,) = fake.requests
    assert request.carrier == "twilio"
    assert request.method == "POST"
    assert request.path == f"/2010-04-01/Accounts/{ACCOUNT_SID}/Calls/{CALL_SID}.json"
    assert request.form() == {"Status": "completed"}
    assert request.headers["content-type"] == "application/x-www-form-urlencoded"
    assert request.basic_auth() == (ACCOUNT_SID, AUTH_TOKEN)
    expected = base64.b64encode(f"{ACCOUNT_SID}:{AUTH_TOKEN}".encode()).decode()
    assert request.headers["authorization"] == f"Basic {expected}"
    assert request.headers["accept"] == "application/json"


@pytest.mark.parametrize("behavior", [Behavior.ALREADY_ENDED, Behavior.NOT_FOUND])
async def test_twilio_hangup_of_an_ended_call_is_not_an_error(
    fake: FakeCarrierRest, twilio: TwilioRest, behavior: Behavior
) -> None:
    fake.set_response("twilio", behavior)
    assert await twilio.hangup(ACCOUNT_SID, CALL_SID) is CallOutcome.ALREADY_ENDED


@pytest.mark.parametrize(
    ("behavior", "status", "code"),
    [
        (Behavior.UNAUTHORIZED, 401, "20003"),
        (Behavior.SERVER_ERROR, 500, "20500"),
        (Reply(502, None), 502, "http_502"),
        (Reply(400, {"code": 21201, "message": "No 'To' number is specified"}), 400, "21201"),
        (Reply(400, ["not", "an", "object"]), 400, "http_400"),
    ],
)
async def test_twilio_failures_raise(
    fake: FakeCarrierRest,
    twilio: TwilioRest,
    behavior: Behavior | Reply,
    status: int,
    code: str,
) -> None:
    fake.set_response("twilio", behavior)
    with pytest.raises(CarrierRestError) as info:
        await twilio.hangup(ACCOUNT_SID, CALL_SID)
    assert (info.value.carrier, info.value.status, info.value.code) == ("twilio", status, code)
    assert isinstance(info.value, ProviderError)


async def test_twilio_error_message_carries_no_body(
    fake: FakeCarrierRest, twilio: TwilioRest
) -> None:
    fake.set_response("twilio", Reply(400, {"code": 21205, "message": "+15551234567 is bad"}))
    with pytest.raises(CarrierRestError) as info:
        await twilio.hangup(ACCOUNT_SID, CALL_SID)
    assert "+1555" not in str(info.value)
    assert str(info.value) == "twilio REST call failed: status 400, code 21205"


async def test_twilio_wrong_token_is_refused_by_the_fake() -> None:
    async with FakeCarrierRest(twilio_auth_token=AUTH_TOKEN) as server:
        async with TwilioRest("wrong", base_url=server.base_url, timeout=2 * UNIT) as client:
            with pytest.raises(CarrierRestError) as info:
                await client.hangup(ACCOUNT_SID, CALL_SID)
        assert info.value.status == 401
        async with TwilioRest(AUTH_TOKEN, base_url=server.base_url, timeout=2 * UNIT) as client:
            assert await client.hangup(ACCOUNT_SID, CALL_SID) is CallOutcome.DONE


@pytest.mark.parametrize(
    ("account_sid", "call_sid"),
    [
        ("AC123", CALL_SID),
        (ACCOUNT_SID, "../../Accounts"),
        (ACCOUNT_SID, CALL_SID + "/x"),
        (ACCOUNT_SID, ""),
    ],
)
async def test_twilio_malformed_sids_never_reach_the_network(
    fake: FakeCarrierRest, twilio: TwilioRest, account_sid: str, call_sid: str
) -> None:
    with pytest.raises(ValueError):
        await twilio.hangup(account_sid, call_sid)
    assert fake.requests == []


# -- Telnyx ------------------------------------------------------------------------------------


async def test_telnyx_answer_request(fake: FakeCarrierRest, telnyx: TelnyxRest) -> None:
    outcome = await telnyx.answer(CALL_CONTROL_ID)
    assert outcome is CallOutcome.DONE

    (request,) = fake.requests
    assert request.carrier == "telnyx"
    assert (request.method, request.action, request.call_id) == ("POST", "answer", CALL_CONTROL_ID)
    assert request.path == f"/v2/calls/{CALL_CONTROL_ID}/actions/answer"
    assert request.headers["authorization"] == f"Bearer {API_KEY}"
    assert request.bearer() == API_KEY
    assert request.headers["content-type"] == "application/json"
    assert request.json() == {}


async def test_telnyx_answer_with_client_state(fake: FakeCarrierRest, telnyx: TelnyxRest) -> None:
    await telnyx.answer(CALL_CONTROL_ID, client_state="aGF2ZSBhIG5pY2UgZGF5ID1d")
    assert fake.requests[0].json() == {"client_state": "aGF2ZSBhIG5pY2UgZGF5ID1d"}


async def test_telnyx_start_streaming_request(fake: FakeCarrierRest, telnyx: TelnyxRest) -> None:
    outcome = await telnyx.start_streaming(
        CALL_CONTROL_ID, stream_url=STREAM_URL, stream_auth_token=STREAM_TOKEN
    )
    assert outcome is CallOutcome.DONE
    (request,) = fake.requests
    assert request.path == f"/v2/calls/{CALL_CONTROL_ID}/actions/streaming_start"
    assert request.bearer() == API_KEY
    assert request.json() == {
        "stream_url": STREAM_URL,
        "stream_track": "inbound_track",
        "stream_codec": "PCMU",
        "stream_bidirectional_mode": "rtp",
        "stream_bidirectional_codec": "PCMU",
        "stream_auth_token": STREAM_TOKEN,
    }


@pytest.mark.parametrize(
    ("destination", "element"),
    [
        ("+14155550123", "number"),
        ("sip:sales@example.com", "sip"),
        ("sips:desk@pbx.example:5061", "sip"),
    ],
)
async def test_twilio_transfer_updates_the_call_with_dial_twiml(
    fake: FakeCarrierRest, twilio: TwilioRest, destination: str, element: str
) -> None:
    assert await twilio.transfer(ACCOUNT_SID, CALL_SID, destination) is CallOutcome.DONE
    (request,) = fake.requests
    assert request.path == f"/2010-04-01/Accounts/{ACCOUNT_SID}/Calls/{CALL_SID}.json"
    assert request.basic_auth() == (ACCOUNT_SID, AUTH_TOKEN)
    # Exactly the TwiML the twilio package renders for a <Dial> of that destination.
    expected = VoiceResponse()
    dial = Dial()
    getattr(dial, element)(destination)
    expected.append(dial)
    assert request.form() == {"Twiml": str(expected)}


@pytest.mark.parametrize(
    "destination",
    [
        "",
        "4155550123",
        "+0123456789",
        "+1415555012345678",
        "sip:",
        'sip:a@b"/><Hangup/>',
        "sip:x@example.com <Play>",
        "http://example.com/",
        "+1415555\n0123",
    ],
)
async def test_a_malformed_transfer_destination_sends_nothing(
    fake: FakeCarrierRest, twilio: TwilioRest, telnyx: TelnyxRest, destination: str
) -> None:
    with pytest.raises(ValueError):
        await twilio.transfer(ACCOUNT_SID, CALL_SID, destination)
    with pytest.raises(ValueError):
        await telnyx.transfer(CALL_CONTROL_ID, destination)
    with pytest.raises(ValueError):
        dial_twiml(destination)
    assert fake.requests == []


async def test_twilio_transfer_of_an_ended_call_is_not_an_error(
    fake: FakeCarrierRest, twilio: TwilioRest
) -> None:
    fake.set_response("twilio", Behavior.ALREADY_ENDED)
    assert await twilio.transfer(ACCOUNT_SID, CALL_SID, "+14155550123") is CallOutcome.ALREADY_ENDED
    fake.set_response("twilio", Behavior.SERVER_ERROR)
    with pytest.raises(CarrierRestError):
        await twilio.transfer(ACCOUNT_SID, CALL_SID, "+14155550123")


@pytest.mark.parametrize("destination", ["+14155550123", "sip:sales@example.com"])
async def test_telnyx_transfer_matches_the_sdk_types(
    fake: FakeCarrierRest, telnyx: TelnyxRest, destination: str
) -> None:
    assert await telnyx.transfer(CALL_CONTROL_ID, destination) is CallOutcome.DONE
    (request,) = fake.requests
    assert request.path == f"/v2/calls/{CALL_CONTROL_ID}/actions/transfer"
    body = request.json()
    assert body == {"to": destination}
    assert sdk_checked(ActionTransferParams, body) == body


async def test_a_transfer_presents_the_caller_id_given(
    fake: FakeCarrierRest, twilio: TwilioRest, telnyx: TelnyxRest
) -> None:
    await twilio.transfer(ACCOUNT_SID, CALL_SID, "+14155550123", caller_id="+14155550199")
    expected = VoiceResponse()
    dial = Dial(caller_id="+14155550199")
    dial.number("+14155550123")
    expected.append(dial)
    assert fake.requests[0].form() == {"Twiml": str(expected)}
    await telnyx.transfer(CALL_CONTROL_ID, "sip:desk@pbx.example.com", caller_id="+14155550199")
    body = fake.requests[1].json()
    assert body == {"to": "sip:desk@pbx.example.com", "from": "+14155550199"}
    # The SDK names the field ``from_`` (a keyword in Python) and sends it as ``from``.
    sdk_body = {"from_" if k == "from" else k: v for k, v in body.items()}
    assert sdk_checked(ActionTransferParams, sdk_body) == sdk_body
    for bad in ("4155550199", "sip:me@example.com", '+1415"/>'):
        with pytest.raises(ValueError):
            await twilio.transfer(ACCOUNT_SID, CALL_SID, "+14155550123", caller_id=bad)
        with pytest.raises(ValueError):
            await telnyx.transfer(CALL_CONTROL_ID, "+14155550123", caller_id=bad)
    assert len(fake.requests) == 2


def sdk_checked(params: type, body: dict[str, object]) -> dict[str, object]:
    """``body`` validated against the ``telnyx`` SDK's request TypedDict: every field is one
    the SDK knows, every value one its types allow (e.g. the codec literals)."""
    unknown = set(body) - set(typing.get_type_hints(params))
    assert not unknown, f"fields the SDK does not know: {unknown}"
    validated: dict[str, object] = pydantic.TypeAdapter(params).validate_python(body)
    return validated


async def test_telnyx_streaming_start_matches_the_sdk_types(
    fake: FakeCarrierRest, telnyx: TelnyxRest
) -> None:
    await telnyx.start_streaming(
        CALL_CONTROL_ID, stream_url=STREAM_URL, stream_auth_token=STREAM_TOKEN
    )
    body = fake.requests[0].json()
    assert sdk_checked(ActionStartStreamingParams, body) == body
    # The leg's audio transcoded to PCMU, and PCMU back: an A-law leg still streams mu-law.
    assert body["stream_codec"] == body["stream_bidirectional_codec"] == "PCMU"


async def test_telnyx_answer_matches_the_sdk_types(
    fake: FakeCarrierRest, telnyx: TelnyxRest
) -> None:
    await telnyx.answer(CALL_CONTROL_ID, client_state="aGF2ZSBhIG5pY2UgZGF5ID1d")
    body = fake.requests[0].json()
    assert sdk_checked(ActionAnswerParams, body) == body


def test_the_sdk_check_refuses_what_telnyx_would_not_take() -> None:
    with pytest.raises(AssertionError):
        sdk_checked(ActionStartStreamingParams, {"stream_kodec": "PCMU"})
    with pytest.raises(pydantic.ValidationError):
        sdk_checked(ActionStartStreamingParams, {"stream_codec": "pcmu"})


async def test_telnyx_start_streaming_track(fake: FakeCarrierRest, telnyx: TelnyxRest) -> None:
    await telnyx.start_streaming(
        CALL_CONTROL_ID,
        stream_url=STREAM_URL,
        stream_auth_token=STREAM_TOKEN,
        stream_track="both_tracks",
    )
    assert fake.requests[0].json()["stream_track"] == "both_tracks"


async def test_telnyx_hangup_request(fake: FakeCarrierRest, telnyx: TelnyxRest) -> None:
    assert await telnyx.hangup(CALL_CONTROL_ID) is CallOutcome.DONE
    (request,) = fake.requests
    assert request.path == f"/v2/calls/{CALL_CONTROL_ID}/actions/hangup"
    assert request.json() == {}
    assert request.bearer() == API_KEY


@pytest.mark.parametrize("behavior", [Behavior.ALREADY_ENDED, Behavior.NOT_FOUND])
async def test_telnyx_hangup_of_an_ended_call_is_not_an_error(
    fake: FakeCarrierRest, telnyx: TelnyxRest, behavior: Behavior
) -> None:
    fake.set_response("telnyx", behavior)
    assert await telnyx.hangup(CALL_CONTROL_ID) is CallOutcome.ALREADY_ENDED
    assert (
        await telnyx.start_streaming(CALL_CONTROL_ID, stream_url=STREAM_URL, stream_auth_token="t")
        is CallOutcome.ALREADY_ENDED
    )


@pytest.mark.parametrize(
    ("behavior", "status", "code"),
    [
        (Behavior.UNAUTHORIZED, 401, "10009"),
        (Behavior.SERVER_ERROR, 500, "10007"),
        (Reply(422, {"errors": [{"code": "90020", "title": "Other"}]}), 422, "90020"),
        (Reply(422, {"errors": []}), 422, "http_422"),
        (Reply(503, None), 503, "http_503"),
    ],
)
async def test_telnyx_failures_raise(
    fake: FakeCarrierRest,
    telnyx: TelnyxRest,
    behavior: Behavior | Reply,
    status: int,
    code: str,
) -> None:
    fake.set_response("telnyx", behavior)
    with pytest.raises(CarrierRestError) as info:
        await telnyx.hangup(CALL_CONTROL_ID)
    assert (info.value.carrier, info.value.status, info.value.code) == ("telnyx", status, code)


async def test_telnyx_per_call_response(fake: FakeCarrierRest, telnyx: TelnyxRest) -> None:
    fake.set_response("telnyx", Behavior.ALREADY_ENDED, call_id="v3:gone")
    assert await telnyx.hangup("v3:gone") is CallOutcome.ALREADY_ENDED
    assert await telnyx.hangup(CALL_CONTROL_ID) is CallOutcome.DONE
    assert [r.call_id for r in fake.requests_for("telnyx")] == ["v3:gone", CALL_CONTROL_ID]


async def test_telnyx_wrong_key_is_refused_by_the_fake() -> None:
    async with FakeCarrierRest(telnyx_api_key=API_KEY) as server:
        async with TelnyxRest("nope", base_url=server.base_url, timeout=2 * UNIT) as client:
            with pytest.raises(CarrierRestError) as info:
                await client.hangup(CALL_CONTROL_ID)
    assert (info.value.status, info.value.code) == (401, "10009")


@pytest.mark.parametrize("call_control_id", ["", "..", "a/b", "v3:x?y=1", "x" * 300])
async def test_telnyx_malformed_ids_never_reach_the_network(
    fake: FakeCarrierRest, telnyx: TelnyxRest, call_control_id: str
) -> None:
    with pytest.raises(ValueError):
        await telnyx.hangup(call_control_id)
    assert fake.requests == []


# -- timeouts, transport failures, client lifecycle ---------------------------------------------


async def test_server_that_never_answers_times_out(fake: FakeCarrierRest) -> None:
    fake.set_response("twilio", Behavior.HANG)
    fake.set_response("telnyx", Behavior.HANG)
    async with (
        TwilioRest(AUTH_TOKEN, base_url=fake.base_url, timeout=0.2 * UNIT) as twilio,
        TelnyxRest(API_KEY, base_url=fake.base_url, timeout=0.2 * UNIT) as telnyx,
    ):
        async with asyncio.timeout(5 * UNIT):
            with pytest.raises(CarrierRestError) as info:
                await twilio.hangup(ACCOUNT_SID, CALL_SID)
            assert (info.value.status, info.value.code) == (None, "timeout")
            with pytest.raises(CarrierRestError) as info:
                await telnyx.hangup(CALL_CONTROL_ID)
            assert (info.value.status, info.value.code) == (None, "timeout")
    assert len(fake.requests) == 2


async def test_unreachable_server_is_a_transport_error() -> None:
    async with FakeCarrierRest() as server:
        base_url = server.base_url
    # The fake has stopped: nothing listens on that port any more.
    async with TelnyxRest(API_KEY, base_url=base_url, timeout=2 * UNIT) as telnyx:
        async with asyncio.timeout(5 * UNIT):
            with pytest.raises(CarrierRestError) as info:
                await telnyx.hangup(CALL_CONTROL_ID)
    assert info.value.code in {"transport", "timeout"}


async def test_lent_client_is_not_closed(fake: FakeCarrierRest) -> None:
    async with httpx.AsyncClient() as shared:
        async with TelnyxRest(API_KEY, base_url=fake.base_url + "/", client=shared) as telnyx:
            assert telnyx.base_url == fake.base_url
            await telnyx.hangup(CALL_CONTROL_ID)
        assert not shared.is_closed
    assert fake.requests[0].path == f"/v2/calls/{CALL_CONTROL_ID}/actions/hangup"


def test_defaults_and_repr_hide_secrets() -> None:
    twilio = TwilioRest(AUTH_TOKEN)
    telnyx = TelnyxRest(API_KEY)
    assert twilio.base_url == TWILIO_BASE_URL == "https://api.twilio.com"
    assert telnyx.base_url == TELNYX_BASE_URL == "https://api.telnyx.com"
    assert AUTH_TOKEN not in repr(twilio)
    assert API_KEY not in repr(telnyx)
    asyncio.run(twilio.aclose())
    asyncio.run(telnyx.aclose())
    with pytest.raises(ValueError):
        TwilioRest(AUTH_TOKEN, timeout=0)


# -- the fake itself ---------------------------------------------------------------------------


async def test_fake_waits_for_requests(fake: FakeCarrierRest, telnyx: TelnyxRest) -> None:
    task = asyncio.create_task(telnyx.hangup(CALL_CONTROL_ID))
    async with asyncio.timeout(5 * UNIT):
        (request,) = await fake.wait_for_requests(1)
    assert request.action == "hangup"
    assert await task is CallOutcome.DONE


async def test_fake_answers_unknown_routes_with_404(fake: FakeCarrierRest) -> None:
    async with httpx.AsyncClient(base_url=fake.base_url) as client:
        response = await client.get("/v2/conferences")
        assert response.status_code == 404
        # A route it knows, asked with a method the real API does not take.
        assert (await client.get("/v2/calls")).status_code == 405
    assert fake.requests == []


# -- placing calls -----------------------------------------------------------------------------

CONNECTION_ID = "1684641123236054244"
CALLEE = "+14155550123"
CALLER_ID = "+14155550199"
TWIML = '<?xml version="1.0" encoding="UTF-8"?><Response><Connect /></Response>'
STATUS_URL = "https://gw.example.com/webhooks/twilio/status"


class CapturingTwilioHttp(HttpClient):
    """The ``twilio`` SDK's HTTP client port, recording what the SDK would send."""

    def __init__(self) -> None:
        super().__init__(logger=None, is_async=False)  # type: ignore[arg-type]
        self.sent: list[tuple[str, str, dict[str, object]]] = []

    def request(self, method, uri, params=None, data=None, headers=None, auth=None, **kw):  # type: ignore[no-untyped-def, override]
        self.sent.append((method, uri, dict(data or {})))
        body = orjson.dumps({"sid": CALL_SID, "status": "queued"}).decode()
        return TwilioResponse(201, body)


def sdk_form(data: dict[str, object]) -> dict[str, list[str]]:
    """The SDK's form as ``requests`` encodes it: a list value is a repeated field."""
    return {k: [str(x) for x in v] if isinstance(v, list) else [str(v)] for k, v in data.items()}


@pytest.mark.parametrize("machine_detection", [False, True])
async def test_twilio_create_call_sends_what_the_sdk_sends(
    fake: FakeCarrierRest, twilio: TwilioRest, machine_detection: bool
) -> None:
    sid = await twilio.create_call(
        ACCOUNT_SID,
        to=CALLEE,
        from_=CALLER_ID,
        twiml=TWIML,
        status_callback=STATUS_URL,
        machine_detection=machine_detection,
    )
    (request,) = fake.requests
    assert sid == request.call_id and sid.startswith("CA") and len(sid) == 34
    assert request.path == f"/2010-04-01/Accounts/{ACCOUNT_SID}/Calls.json"
    assert request.basic_auth() == (ACCOUNT_SID, AUTH_TOKEN)

    capture = CapturingTwilioHttp()
    sdk = TwilioClient(ACCOUNT_SID, AUTH_TOKEN, http_client=capture)
    extra = {"machine_detection": "Enable"} if machine_detection else {}
    sdk.calls.create(
        to=CALLEE,
        from_=CALLER_ID,
        twiml=TWIML,
        status_callback=STATUS_URL,
        status_callback_event=list(TWILIO_STATUS_EVENTS),
        status_callback_method="POST",
        **extra,
    )
    ((method, uri, data),) = capture.sent
    assert method == "POST"
    assert uri == f"https://api.twilio.com{request.path}"
    assert request.form_lists() == sdk_form(data)
    assert request.form_lists()["StatusCallbackEvent"] == [
        "initiated",
        "ringing",
        "answered",
        "completed",
    ]
    assert ("MachineDetection" in request.form()) is machine_detection


@pytest.mark.parametrize("machine_detection", [False, True])
async def test_telnyx_dial_matches_the_sdk_types(
    fake: FakeCarrierRest, telnyx: TelnyxRest, machine_detection: bool
) -> None:
    call_control_id = await telnyx.dial(
        connection_id=CONNECTION_ID,
        to=CALLEE,
        from_=CALLER_ID,
        stream_url=STREAM_URL,
        stream_auth_token=STREAM_TOKEN,
        machine_detection=machine_detection,
    )
    (request,) = fake.requests
    assert call_control_id == request.call_id
    assert request.path == "/v2/calls"
    assert request.bearer() == API_KEY
    body = request.json()
    expected = {
        "connection_id": CONNECTION_ID,
        "to": CALLEE,
        "from": CALLER_ID,
        "stream_url": STREAM_URL,
        "stream_track": "inbound_track",
        "stream_codec": "PCMU",
        "stream_bidirectional_mode": "rtp",
        "stream_bidirectional_codec": "PCMU",
        "stream_auth_token": STREAM_TOKEN,
    }
    if machine_detection:
        expected["answering_machine_detection"] = "detect"
    assert body == expected
    sdk_body = {"from_" if k == "from" else k: v for k, v in body.items()}
    assert sdk_checked(CallDialParams, sdk_body) == sdk_body


async def test_placing_a_call_refuses_malformed_input_before_sending(
    fake: FakeCarrierRest, twilio: TwilioRest, telnyx: TelnyxRest
) -> None:
    for to, from_ in [("4155550123", CALLER_ID), (CALLEE, "+0155550199"), (CALLEE, "sip:a@b.c")]:
        with pytest.raises(ValueError):
            await twilio.create_call(
                ACCOUNT_SID, to=to, from_=from_, twiml=TWIML, status_callback=STATUS_URL
            )
        with pytest.raises(ValueError):
            await telnyx.dial(
                connection_id=CONNECTION_ID,
                to=to,
                from_=from_,
                stream_url=STREAM_URL,
                stream_auth_token=STREAM_TOKEN,
            )
    with pytest.raises(ValueError):
        await twilio.create_call(
            "AC../x", to=CALLEE, from_=CALLER_ID, twiml=TWIML, status_callback=STATUS_URL
        )
    with pytest.raises(ValueError):
        await telnyx.dial(
            connection_id="1/../2",
            to=CALLEE,
            from_=CALLER_ID,
            stream_url=STREAM_URL,
            stream_auth_token=STREAM_TOKEN,
        )
    assert fake.requests == []
    assert check_e164(CALLEE) == CALLEE


@pytest.mark.parametrize(
    ("behavior", "status", "code"),
    [
        (Behavior.UNAUTHORIZED, 401, "20003"),
        (Behavior.SERVER_ERROR, 500, "20500"),
        (Reply(400, {"code": 21210, "message": "not verified", "status": 400}), 400, "21210"),
        (Reply(201, {"status": "queued"}), 201, "no_call_sid"),
        (Reply(201, {"sid": "CA../../x"}), 201, "no_call_sid"),
        (Reply(201, None), 201, "no_call_sid"),
    ],
)
async def test_twilio_create_call_failures(
    fake: FakeCarrierRest, twilio: TwilioRest, behavior: Behavior | Reply, status: int, code: str
) -> None:
    fake.set_response("twilio", behavior, call_id="create")
    with pytest.raises(CarrierRestError) as caught:
        await twilio.create_call(
            ACCOUNT_SID, to=CALLEE, from_=CALLER_ID, twiml=TWIML, status_callback=STATUS_URL
        )
    assert (caught.value.status, caught.value.code) == (status, code)
    assert "not verified" not in str(caught.value)


@pytest.mark.parametrize(
    ("behavior", "status", "code"),
    [
        (Behavior.UNAUTHORIZED, 401, "10009"),
        (Behavior.SERVER_ERROR, 500, "10007"),
        (Reply(422, {"errors": [{"code": "10010", "title": "Invalid value"}]}), 422, "10010"),
        (Reply(200, {"data": {}}), 200, "no_call_control_id"),
        (Reply(200, {"data": {"call_control_id": "a b"}}), 200, "no_call_control_id"),
        (Reply(200, ["x"]), 200, "no_call_control_id"),
    ],
)
async def test_telnyx_dial_failures(
    fake: FakeCarrierRest, telnyx: TelnyxRest, behavior: Behavior | Reply, status: int, code: str
) -> None:
    fake.set_response("telnyx", behavior, call_id="dial")
    with pytest.raises(CarrierRestError) as caught:
        await telnyx.dial(
            connection_id=CONNECTION_ID,
            to=CALLEE,
            from_=CALLER_ID,
            stream_url=STREAM_URL,
            stream_auth_token=STREAM_TOKEN,
        )
    assert (caught.value.status, caught.value.code) == (status, code)


async def test_placing_a_call_that_hangs_times_out(
    fake: FakeCarrierRest, twilio: TwilioRest, telnyx: TelnyxRest
) -> None:
    fake.set_response("twilio", Behavior.HANG, call_id="create")
    fake.set_response("telnyx", Behavior.HANG, call_id="dial")
    with pytest.raises(CarrierRestError) as caught:
        await twilio.create_call(
            ACCOUNT_SID, to=CALLEE, from_=CALLER_ID, twiml=TWIML, status_callback=STATUS_URL
        )
    assert caught.value.code == "timeout"
    with pytest.raises(CarrierRestError) as caught:
        await telnyx.dial(
            connection_id=CONNECTION_ID,
            to=CALLEE,
            from_=CALLER_ID,
            stream_url=STREAM_URL,
            stream_auth_token=STREAM_TOKEN,
        )
    assert caught.value.code == "timeout"
