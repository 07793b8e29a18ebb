"""Thin REST clients for the carrier call-control actions the gateway needs.

``TwilioRest.create_call`` places an outbound Twilio call, ``TwilioRest.hangup`` ends one
(Call resource update, ``Status=completed``) and ``TwilioRest.transfer`` moves it on (the same
update with ``Twiml=<Dial>``); ``TelnyxRest.dial`` places an outbound Telnyx call that streams
once answered, ``TelnyxRest.answer`` answers a Telnyx call and starts a bidirectional media
stream, ``TelnyxRest.transfer`` transfers it, ``TelnyxRest.hangup`` ends it. Each request is bounded
by one total deadline. An answer that says the call has already ended is an outcome
(``CallOutcome.ALREADY_ENDED``), not an error;
any other failure raises ``CarrierRestError`` carrying the status and the carrier's short error
code, never a response body.

Sources:
  Twilio https://www.twilio.com/docs/voice/api/call-resource#create-a-call-resource
         https://www.twilio.com/docs/voice/api/call-resource#update-a-call-resource
         errors 20404 (not found), 21220 (call not in-progress)
  Telnyx https://developers.telnyx.com/api-reference/call-commands/dial
         https://developers.telnyx.com/api-reference/call-commands/answer-call
         https://developers.telnyx.com/api-reference/call-commands/hangup-call
         https://developers.telnyx.com/api-reference/call-commands/transfer-call
         error 90018 (call has already ended, HTTP 422)
"""

from __future__ import annotations

import asyncio
import enum
import re
from collections.abc import Generator, Mapping
from types import TracebackType
from typing import Final, Literal, Self, TypedDict

import httpx
from twilio.twiml.voice_response import Dial, VoiceResponse

from providers.exceptions import ProviderError

__all__ = [
    "DEFAULT_TIMEOUT",
    "TELNYX_BASE_URL",
    "TWILIO_BASE_URL",
    "CallOutcome",
    "CarrierRestError",
    "TelnyxRest",
    "TwilioRest",
    "check_destination",
    "check_e164",
    "dial_twiml",
]

TWILIO_BASE_URL: Final = "https://api.twilio.com"
TELNYX_BASE_URL: Final = "https://api.telnyx.com"
DEFAULT_TIMEOUT: Final = 5.0
"""Seconds one request may take in total, connection included."""

TWILIO_NOT_FOUND: Final = "20404"
TWILIO_NOT_IN_PROGRESS: Final = "21220"
TELNYX_ALREADY_ENDED: Final = "90018"

_USER_AGENT: Final = "voicegw"
_TWILIO_SID: Final = re.compile(r"[A-Z]{2}[0-9a-fA-F]{32}")
_TELNYX_ID: Final = re.compile(r"[A-Za-z0-9_:\-]{1,256}")
_TELNYX_CONNECTION_ID: Final = re.compile(r"[A-Za-z0-9_\-]{1,64}")
TWILIO_STATUS_EVENTS: Final = ("initiated", "ringing", "answered", "completed")
"""The progress events an outbound Twilio call reports to its ``StatusCallback``."""


class CallOutcome(enum.StrEnum):
    DONE = "done"
    ALREADY_ENDED = "already_ended"
    """The carrier says the call is gone (ended, or never known); nothing left to do."""


class CarrierRestError(ProviderError):
    """A carrier REST call failed. ``status`` is the HTTP status (``None`` when no answer
    arrived); ``code`` is the carrier's error code, ``http_<status>``, ``timeout`` or
    ``transport``. The message carries no response body."""

    def __init__(self, carrier: str, status: int | None, code: str) -> None:
        super().__init__(f"{carrier} REST call failed: status {status}, code {code}")
        self.carrier = carrier
        self.status = status
        self.code = code


# The fields of Call Control commands the gateway sends (a subset of the ``telnyx`` SDK's
# ``ActionAnswerParams`` / ``ActionStartStreamingParams`` / ``ActionTransferParams``; a test
# holds them equal). Functional syntax: ``from`` is a Python keyword.
TelnyxActionBody = TypedDict(
    "TelnyxActionBody",
    {
        "stream_url": str,
        "stream_track": Literal["inbound_track", "outbound_track", "both_tracks"],
        "stream_codec": Literal["PCMU", "PCMA"],
        "stream_bidirectional_mode": Literal["rtp"],
        "stream_bidirectional_codec": Literal["PCMU", "PCMA"],
        "stream_auth_token": str,
        "client_state": str,
        "to": str,
        "from": str,
    },
    total=False,
)


# The fields of the Dial command the gateway sends (a subset of the ``telnyx`` SDK's
# ``CallDialParams``; a test holds them equal).
TelnyxDialBody = TypedDict(
    "TelnyxDialBody",
    {
        "connection_id": str,
        "to": str,
        "from": str,
        "stream_url": str,
        "stream_track": Literal["inbound_track", "outbound_track", "both_tracks"],
        "stream_codec": Literal["PCMU", "PCMA"],
        "stream_bidirectional_mode": Literal["rtp"],
        "stream_bidirectional_codec": Literal["PCMU", "PCMA"],
        "stream_auth_token": str,
        "answering_machine_detection": Literal["detect"],
    },
    total=False,
)


class _RestClient:
    """What both clients share: an ``httpx.AsyncClient`` (their own or one lent to them),
    a total deadline per request, and conversion of transport failures."""

    carrier = ""

    def __init__(
        self,
        base_url: str,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        client: httpx.AsyncClient | None = None,
    ) -> None:
        if timeout <= 0:
            raise ValueError("timeout must be positive")
        self._base_url = base_url.rstrip("/")
        self._timeout = timeout
        self._owns_client = client is None
        self._client = client or httpx.AsyncClient(timeout=timeout, follow_redirects=False)

    @property
    def base_url(self) -> str:
        return self._base_url

    def __repr__(self) -> str:
        return f"{type(self).__name__}(base_url={self._base_url!r})"

    async def aclose(self) -> None:
        """Close the HTTP client if this object created it."""
        if self._owns_client:
            await self._client.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def _post(
        self,
        path: str,
        *,
        auth: httpx.Auth,
        data: Mapping[str, str | list[str]] | None = None,
        json: object = None,
    ) -> httpx.Response:
        try:
            async with asyncio.timeout(self._timeout):
                return await self._client.post(
                    self._base_url + path,
                    headers={"Accept": "application/json", "User-Agent": _USER_AGENT},
                    timeout=self._timeout,
                    auth=auth,
                    data=data,
                    json=json,
                )
        except (TimeoutError, httpx.TimeoutException):
            raise CarrierRestError(self.carrier, None, "timeout") from None
        except httpx.HTTPError:
            raise CarrierRestError(self.carrier, None, "transport") from None


class TwilioRest(_RestClient):
    """Twilio REST: ``create_call``, ``hangup`` and ``transfer``. Authenticates with HTTP
    basic auth as (the call's AccountSid, ``auth_token``)."""

    carrier = "twilio"

    def __init__(
        self,
        auth_token: str,
        *,
        base_url: str = TWILIO_BASE_URL,
        timeout: float = DEFAULT_TIMEOUT,
        client: httpx.AsyncClient | None = None,
    ) -> None:
        super().__init__(base_url, timeout=timeout, client=client)
        self._auth_token = auth_token

    async def create_call(
        self,
        account_sid: str,
        *,
        to: str,
        from_: str,
        twiml: str,
        status_callback: str,
        machine_detection: bool = False,
    ) -> str:
        """Place a call from ``from_`` to ``to`` (both E.164) that runs ``twiml`` once
        answered: POST ``/2010-04-01/Accounts/{AccountSid}/Calls.json``. Its progress
        (``TWILIO_STATUS_EVENTS``) is POSTed to ``status_callback``; ``machine_detection``
        asks Twilio to tell a person from an answering machine (``MachineDetection=Enable``).
        Returns the new call's CallSid.

        Raises ``ValueError`` for a malformed SID or number and ``CarrierRestError`` for a
        refusal, a failure or an answer without a well-formed CallSid.
        """
        if not _TWILIO_SID.fullmatch(account_sid):
            raise ValueError("malformed Twilio SID")
        data: dict[str, str | list[str]] = {
            "To": check_e164(to),
            "From": check_e164(from_),
            "Twiml": twiml,
            "StatusCallback": status_callback,
            "StatusCallbackEvent": list(TWILIO_STATUS_EVENTS),
            "StatusCallbackMethod": "POST",
        }
        if machine_detection:
            data["MachineDetection"] = "Enable"
        response = await self._post(
            f"/2010-04-01/Accounts/{account_sid}/Calls.json",
            data=data,
            auth=httpx.BasicAuth(account_sid, self._auth_token),
        )
        if not response.is_success:
            raise CarrierRestError(self.carrier, response.status_code, _twilio_code(response))
        body = _json(response)
        sid = body.get("sid") if isinstance(body, dict) else None
        if not isinstance(sid, str) or not sid.startswith("CA") or not _TWILIO_SID.fullmatch(sid):
            raise CarrierRestError(self.carrier, response.status_code, "no_call_sid")
        return sid

    async def hangup(self, account_sid: str, call_sid: str) -> CallOutcome:
        """End the call: POST ``/2010-04-01/Accounts/{AccountSid}/Calls/{CallSid}.json`` with
        ``Status=completed``. A call Twilio no longer knows (404) or that is no longer in
        progress (error 21220) is ``ALREADY_ENDED``.

        Raises ``ValueError`` for a malformed SID and ``CarrierRestError`` for any other
        failure.
        """
        return await self._update(account_sid, call_sid, {"Status": "completed"})

    async def transfer(
        self, account_sid: str, call_sid: str, destination: str, *, caller_id: str | None = None
    ) -> CallOutcome:
        """Move the live call to ``destination`` (E.164 number or ``sip:`` URI): the same update
        with ``Twiml=<Response><Dial>…</Dial></Response>``, which ends the call's media stream;
        ``caller_id`` (E.164) is the number the destination sees (``<Dial callerId>``; Twilio's
        default is the caller's). ``ALREADY_ENDED`` as for ``hangup``.

        Raises ``ValueError`` for a malformed SID or destination and ``CarrierRestError``
        for any other failure.
        """
        twiml = dial_twiml(destination, caller_id=caller_id)
        return await self._update(account_sid, call_sid, {"Twiml": twiml})

    async def _update(self, account_sid: str, call_sid: str, data: dict[str, str]) -> CallOutcome:
        if not _TWILIO_SID.fullmatch(account_sid) or not _TWILIO_SID.fullmatch(call_sid):
            raise ValueError("malformed Twilio SID")
        response = await self._post(
            f"/2010-04-01/Accounts/{account_sid}/Calls/{call_sid}.json",
            data=data,
            auth=httpx.BasicAuth(account_sid, self._auth_token),
        )
        if response.is_success:
            return CallOutcome.DONE
        code = _twilio_code(response)
        if response.status_code == 404 or code == TWILIO_NOT_IN_PROGRESS:
            return CallOutcome.ALREADY_ENDED
        raise CarrierRestError(self.carrier, response.status_code, code)


class TelnyxRest(_RestClient):
    """Telnyx Call Control REST: ``dial``, ``answer``, ``start_streaming`` (a bidirectional
    media stream), ``transfer`` and ``hangup``. Authenticates with
    ``Authorization: Bearer <api_key>``."""

    carrier = "telnyx"

    def __init__(
        self,
        api_key: str,
        *,
        base_url: str = TELNYX_BASE_URL,
        timeout: float = DEFAULT_TIMEOUT,
        client: httpx.AsyncClient | None = None,
    ) -> None:
        super().__init__(base_url, timeout=timeout, client=client)
        self._api_key = api_key

    async def dial(
        self,
        *,
        connection_id: str,
        to: str,
        from_: str,
        stream_url: str,
        stream_auth_token: str,
        machine_detection: bool = False,
        stream_track: Literal["inbound_track", "outbound_track", "both_tracks"] = "inbound_track",
    ) -> str:
        """Place a call from ``from_`` to ``to`` (both E.164) on the Call Control application
        ``connection_id``: POST ``/v2/calls``. Once it is answered Telnyx streams it to
        ``stream_url`` both ways as PCMU RTP payloads (as ``start_streaming`` does) and sends
        ``stream_auth_token`` back on the media WebSocket; ``machine_detection`` asks for
        answering-machine detection (``detect``). Returns the new ``call_control_id``.

        Raises ``ValueError`` for a malformed connection id or number and
        ``CarrierRestError`` for a refusal, a failure or an answer without a well-formed id.
        """
        if not _TELNYX_CONNECTION_ID.fullmatch(connection_id):
            raise ValueError("malformed Telnyx connection_id")
        body: TelnyxDialBody = {
            "connection_id": connection_id,
            "to": check_e164(to),
            "from": check_e164(from_),
            "stream_url": stream_url,
            "stream_track": stream_track,
            "stream_codec": "PCMU",
            "stream_bidirectional_mode": "rtp",
            "stream_bidirectional_codec": "PCMU",
            "stream_auth_token": stream_auth_token,
        }
        if machine_detection:
            body["answering_machine_detection"] = "detect"
        response = await self._post("/v2/calls", json=body, auth=_BearerAuth(self._api_key))
        if not response.is_success:
            codes = _telnyx_codes(response)
            code = codes[0] if codes else f"http_{response.status_code}"
            raise CarrierRestError(self.carrier, response.status_code, code)
        answer = _json(response)
        data = answer.get("data") if isinstance(answer, dict) else None
        call_control_id = data.get("call_control_id") if isinstance(data, dict) else None
        if not isinstance(call_control_id, str) or not _TELNYX_ID.fullmatch(call_control_id):
            raise CarrierRestError(self.carrier, response.status_code, "no_call_control_id")
        return call_control_id

    async def answer(self, call_control_id: str, *, client_state: str | None = None) -> CallOutcome:
        """Answer the call. Streaming starts with ``start_streaming`` once Telnyx reports the
        call answered: only ``streaming_start`` carries a ``stream_auth_token`` (the answer
        command's schema has no such field).

        Raises ``ValueError`` for a malformed id and ``CarrierRestError`` for a failure other
        than the call having already ended.
        """
        body: TelnyxActionBody = {}
        if client_state is not None:
            body["client_state"] = client_state
        return await self._action(call_control_id, "answer", body)

    async def start_streaming(
        self,
        call_control_id: str,
        *,
        stream_url: str,
        stream_auth_token: str,
        stream_track: Literal["inbound_track", "outbound_track", "both_tracks"] = "inbound_track",
    ) -> CallOutcome:
        """Stream the call's audio to ``stream_url`` both ways as PCMU RTP payloads
        (``stream_bidirectional_mode: "rtp"``; without it the stream is one-way). Telnyx sends
        ``stream_auth_token`` back on the media WebSocket.

        ``stream_codec: "PCMU"`` asks Telnyx to transcode the leg's own codec (A-law on many
        international legs) to PCMU; where it cannot, the stream's ``start`` announces the
        leg's codec and the media endpoint follows that (or ends the call if it cannot).

        Raises ``ValueError`` for a malformed id and ``CarrierRestError`` for a failure other
        than the call having already ended.
        """
        body: TelnyxActionBody = {
            "stream_url": stream_url,
            "stream_track": stream_track,
            "stream_codec": "PCMU",
            "stream_bidirectional_mode": "rtp",
            "stream_bidirectional_codec": "PCMU",
            "stream_auth_token": stream_auth_token,
        }
        return await self._action(call_control_id, "streaming_start", body)

    async def transfer(
        self, call_control_id: str, destination: str, *, caller_id: str | None = None
    ) -> CallOutcome:
        """Transfer the call to ``destination`` (E.164 number or ``sip:`` URI), presenting
        ``caller_id`` (E.164; ``from``) when given. ``ALREADY_ENDED`` as for ``hangup``.

        Raises ``ValueError`` for a malformed id or destination and ``CarrierRestError``
        otherwise.
        """
        check_destination(destination)
        body: TelnyxActionBody = {"to": destination}
        if caller_id is not None:
            body["from"] = _caller_id(caller_id)
        return await self._action(call_control_id, "transfer", body)

    async def hangup(self, call_control_id: str) -> CallOutcome:
        """Hang up the call. A call that has already ended (422, error 90018) or that Telnyx
        no longer knows (404) is ``ALREADY_ENDED``.

        Raises ``ValueError`` for a malformed id and ``CarrierRestError`` otherwise.
        """
        return await self._action(call_control_id, "hangup", {})

    async def _action(
        self, call_control_id: str, action: str, body: TelnyxActionBody
    ) -> CallOutcome:
        if not _TELNYX_ID.fullmatch(call_control_id):
            raise ValueError("malformed Telnyx call_control_id")
        response = await self._post(
            f"/v2/calls/{call_control_id}/actions/{action}",
            json=body,
            auth=_BearerAuth(self._api_key),
        )
        if response.is_success:
            return CallOutcome.DONE
        codes = _telnyx_codes(response)
        if response.status_code == 404 or (
            response.status_code == 422 and TELNYX_ALREADY_ENDED in codes
        ):
            return CallOutcome.ALREADY_ENDED
        code = codes[0] if codes else f"http_{response.status_code}"
        raise CarrierRestError(self.carrier, response.status_code, code)


_E164: Final = re.compile(r"\+[1-9][0-9]{6,14}")
_SIP_URI: Final = re.compile(r"sips?:[A-Za-z0-9_.!~*'()&=+$,;?/%-]+@[A-Za-z0-9.\-]+(:[0-9]{1,5})?")


def check_destination(destination: str) -> None:
    """Raise ``ValueError`` unless ``destination`` is an E.164 number or a ``sip:``/``sips:``
    URI (user@host[:port], no spaces, no markup)."""
    if not (_E164.fullmatch(destination) or _SIP_URI.fullmatch(destination)):
        raise ValueError("transfer destination must be an E.164 number or a sip: URI")


def _caller_id(number: str) -> str:
    if not _E164.fullmatch(number):
        raise ValueError("a caller id must be an E.164 number")
    return number


def check_e164(number: str) -> str:
    """``number`` when it is an E.164 number (``+``, then 7 to 15 digits, no leading 0);
    raises ``ValueError`` otherwise."""
    if not _E164.fullmatch(number):
        raise ValueError("a phone number must be in E.164 form")
    return number


def dial_twiml(destination: str, *, caller_id: str | None = None) -> str:
    """TwiML that dials ``destination``: ``<Dial><Number>`` or ``<Dial><Sip>``, rendered by
    the ``twilio`` package; ``<Dial callerId>`` when ``caller_id`` is given."""
    check_destination(destination)
    response = VoiceResponse()
    dial = Dial() if caller_id is None else Dial(caller_id=_caller_id(caller_id))
    if destination.startswith(("sip:", "sips:")):
        dial.sip(destination)
    else:
        dial.number(destination)
    response.append(dial)
    return str(response)


class _BearerAuth(httpx.Auth):
    def __init__(self, token: str) -> None:
        self._header = f"Bearer {token}"

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        request.headers["Authorization"] = self._header
        yield request


# -- error bodies (read for their code only) ----------------------------------------------------


def _json(response: httpx.Response) -> object:
    try:
        return response.json()
    except ValueError:
        return None


def _twilio_code(response: httpx.Response) -> str:
    """Twilio errors: ``{"code": 21220, "message": "...", "more_info": "...", "status": 400}``."""
    body = _json(response)
    if isinstance(body, dict):
        code = body.get("code")
        if type(code) is int or (type(code) is str and code.isdigit() and len(code) <= 10):
            return str(code)
    return f"http_{response.status_code}"


def _telnyx_codes(response: httpx.Response) -> list[str]:
    """Telnyx errors: ``{"errors": [{"code": "90018", "title": "...", "detail": "..."}]}``."""
    body = _json(response)
    errors = body.get("errors") if isinstance(body, dict) else None
    codes: list[str] = []
    if isinstance(errors, list):
        for error in errors[:16]:
            code = error.get("code") if isinstance(error, dict) else None
            if type(code) is int or (type(code) is str and code.isdigit() and len(code) <= 10):
                codes.append(str(code))
    return codes
