"""The webhook front door: every carrier request passes these layers, in this order.

1. request sanity  method, size, content type, duplicated security headers, body syntax
2. allowlist       the client address (behind trusted proxies) is in the carrier's networks
3. freshness       a timestamp the request carries is within ±``freshness_s`` of now
4. signature       the carrier's signature over exactly what we act on
5. replay          a delivery already accepted is reported as a duplicate, not an error
6. rate limit      verified deliveries per carrier per rolling window; duplicates on a limit
                   of their own, so replays neither go unbounded nor crowd out new calls

Cheap checks come first so a bad request costs little, and every layer before the signature
only reads. State is written only after the signature verified: a forged request can neither
poison the replay cache nor spend rate-limit budget. ``WebhookPipeline.check`` returns a
``VerifiedWebhook`` or raises ``Rejection``, and meters either outcome.

Why freshness may run before the signature: the timestamps it reads (``telnyx-timestamp``,
Twilio's ``Timestamp`` form field and the ``ts`` query parameter of callback URLs the gateway
hands Twilio) are all covered by the signature checked next. A forged timestamp can only turn
a request that would fail the signature into one that fails freshness instead; no request is
accepted unless both pass, so checking the cheap, stateless layer first loses nothing.
"""

from __future__ import annotations

import email.utils
import enum
import functools
import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC
from typing import Final, Generic, TypeGuard, TypeVar, assert_never
from urllib.parse import parse_qsl, unquote, urlsplit

from prometheus_client import Counter

from metrics.registry import (
    RATE_LIMITED,
    WEBHOOK_DUPLICATES,
    WEBHOOK_REJECTIONS,
    WEBHOOK_REQUESTS,
)
from security.admission import Admitter, admitter_for
from security.allowlist import Allowlist, ClientAddressResolver, IPAddress
from security.exceptions import Layer, Rejection
from security.ratelimit import Limiter
from security.replay import ReplayCache, digest_key
from security.signatures import (
    TelnyxSignatureVerifier,
    TwilioSignatureVerifier,
    parse_unix_timestamp,
)

MAX_BODY_BYTES: Final = 64 * 1024
MAX_FORM_FIELDS: Final = 256
MAX_EVENT_ID_CHARS: Final = 256
DEFAULT_FRESHNESS_S: Final = 300
DEFAULT_REPLAY_TTL_S: Final = 24 * 3600

FORM: Final = "application/x-www-form-urlencoded"
JSON: Final = "application/json"

_UTF8_NAMES: Final = frozenset(("utf-8", "utf8"))

TWILIO_SIGNATURE: Final = "x-twilio-signature"
TELNYX_SIGNATURE: Final = "telnyx-signature-ed25519"
TELNYX_TIMESTAMP: Final = "telnyx-timestamp"


class Carrier(enum.StrEnum):
    TWILIO = "twilio"
    TELNYX = "telnyx"


@dataclass(frozen=True, slots=True)
class WebhookRequest:
    """One webhook request as received.

    ``url`` is the public URL the carrier called (the configured public base URL + path +
    query), never one rebuilt from the ``Host`` header. ``headers`` keeps repeated headers,
    names in lower case. ``body`` is the raw body, already capped by the caller.
    """

    carrier: Carrier
    method: str
    url: str
    headers: Sequence[tuple[str, str]]
    body: bytes
    peer_ip: str


@dataclass(frozen=True, slots=True)
class VerifiedWebhook:
    """A request that passed every layer.

    ``form`` holds Twilio's form fields in body order (blank values kept); ``payload`` the
    JSON object of a Telnyx event or a Twilio JSON webhook. ``event_id`` is Telnyx's
    ``data.id``; for Twilio, which sends none, it is a digest of the signed delivery.
    ``duplicate`` means this delivery was accepted before and must not be processed again.
    """

    carrier: Carrier
    event_id: str
    duplicate: bool
    client_ip: IPAddress
    form: tuple[tuple[str, str], ...] = ()
    payload: Mapping[str, object] | None = None
    event_type: str | None = None
    replay_key: str = field(default="", repr=False)


V = TypeVar("V", TwilioSignatureVerifier, TelnyxSignatureVerifier)


@dataclass(frozen=True, slots=True)
class CarrierPolicy(Generic[V]):
    """The layers configured for one carrier.

    ``replay_ttl_s`` is how long a delivery is remembered; it outlives the freshness window
    so carrier retries are recognised, and it is the only replay defence for Twilio requests
    that carry no timestamp (its incoming-call webhook).
    """

    verifier: V
    allowlist: Allowlist
    limiter: Limiter
    replay: ReplayCache
    resolver: ClientAddressResolver = field(default_factory=ClientAddressResolver)
    freshness_s: int = DEFAULT_FRESHNESS_S
    replay_ttl_s: int = DEFAULT_REPLAY_TTL_S


# -- request sanity --------------------------------------------------------------------------


def _index(headers: Sequence[tuple[str, str]]) -> dict[str, list[str]]:
    index: dict[str, list[str]] = {}
    for name, value in headers:
        index.setdefault(name.lower(), []).append(value)
    return index


def _single(headers: Mapping[str, list[str]], name: str) -> str | None:
    """The one value of a security-relevant header; two copies are refused, not chosen from."""
    values = headers.get(name, [])
    if len(values) > 1:
        raise Rejection(Layer.REQUEST, "duplicate header", 400)
    return values[0] if values else None


def _media_type(headers: Mapping[str, list[str]], accepted: frozenset[str]) -> str:
    value = _single(headers, "content-type")
    if value is None:
        raise Rejection(Layer.REQUEST, "unsupported media type", 415)
    media_type, _, parameters = value.partition(";")
    media_type = media_type.strip().lower()
    if media_type not in accepted:
        raise Rejection(Layer.REQUEST, "unsupported media type", 415)
    for parameter in parameters.split(";"):
        name, _, raw = parameter.partition("=")
        charset = raw.strip().strip('"').lower()
        if name.strip().lower() == "charset" and charset not in _UTF8_NAMES:
            raise Rejection(Layer.REQUEST, "unsupported media type", 415)
    return media_type


def _malformed_body() -> Rejection:
    return Rejection(Layer.REQUEST, "malformed body", 400)


def parse_form(body: bytes) -> tuple[tuple[str, str], ...]:
    """Strictly parse a UTF-8 ``application/x-www-form-urlencoded`` body, keeping blanks.

    The result equals ``urllib.parse.parse_qsl(..., keep_blank_values=True,
    strict_parsing=True, errors="strict", max_num_fields=MAX_FORM_FIELDS)`` and so do the
    bodies it refuses (a field without ``=``, an empty field, bad UTF-8 before or after
    percent-decoding, too many fields); it skips that function's per-field overhead.
    """
    try:
        text = body.decode("utf-8")
        if not text:
            return ()
        if text.count("&") >= MAX_FORM_FIELDS:
            raise ValueError("too many fields")
        pairs = []
        for field in text.split("&"):
            name, equals, value = field.partition("=")
            if not equals:
                raise ValueError("bad field")
            pairs.append((_unquote_plus(name), _unquote_plus(value)))
    except ValueError:  # UnicodeDecodeError is a ValueError
        raise _malformed_body() from None
    return tuple(pairs)


def _unquote_plus(text: str) -> str:
    if "+" in text:
        text = text.replace("+", " ")
    return unquote(text, errors="strict") if "%" in text else text


def _unique_object(pairs: list[tuple[str, object]]) -> dict[str, object]:
    result = dict(pairs)
    if len(result) != len(pairs):
        # Parsers disagree on which duplicate wins; refuse rather than guess.
        raise ValueError("duplicate key")
    return result


def _no_constants(name: str) -> object:
    raise ValueError(f"{name} is not JSON")


def parse_json_object(body: bytes) -> dict[str, object]:
    """Strictly parse a UTF-8 JSON body whose top level is an object.

    Refuses a byte-order mark, duplicate keys, ``NaN``/``Infinity`` and runaway nesting.
    """
    try:
        value = json.loads(
            body.decode("utf-8"),
            object_pairs_hook=_unique_object,
            parse_constant=_no_constants,
        )
    except (ValueError, RecursionError):
        raise _malformed_body() from None
    if not isinstance(value, dict):
        raise _malformed_body()
    return value


def _telnyx_event(payload: Mapping[str, object]) -> tuple[str, str]:
    data = payload.get("data")
    if not isinstance(data, dict):
        raise _malformed_body()
    event_id, event_type = data.get("id"), data.get("event_type")
    if not (_clean_identifier(event_id) and _clean_identifier(event_type)):
        raise _malformed_body()
    return event_id, event_type


def _clean_identifier(value: object) -> TypeGuard[str]:
    """A non-empty, bounded, printable string that encodes as UTF-8 (no lone surrogates)."""
    if not isinstance(value, str) or not 0 < len(value) <= MAX_EVENT_ID_CHARS:
        return False
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return value.isprintable()


def _query(url: str) -> list[tuple[str, str]]:
    try:
        return parse_qsl(urlsplit(url).query, keep_blank_values=True)
    except ValueError:
        raise Rejection(Layer.REQUEST, "malformed url", 400) from None


def _only(pairs: Sequence[tuple[str, str]], name: str) -> str | None:
    values = [value for key, value in pairs if key == name]
    if len(values) > 1:
        raise Rejection(Layer.FRESHNESS, "malformed timestamp", 400)
    return values[0] if values else None


# -- the pipeline ----------------------------------------------------------------------------


class WebhookPipeline:
    """Runs the layers for each configured carrier; see the module docstring for the order.

    ``clock`` returns unix seconds (``time.time``). A carrier without a policy answers 404.
    A replay cache or limiter that raises ``StateUnavailable`` (one without a fallback) lets
    it propagate; the caller answers 503 so the carrier retries.
    """

    __slots__ = ("_admitters", "_clock", "_max_body_bytes", "_telnyx", "_twilio")

    def __init__(
        self,
        *,
        twilio: CarrierPolicy[TwilioSignatureVerifier] | None = None,
        telnyx: CarrierPolicy[TelnyxSignatureVerifier] | None = None,
        clock: Callable[[], float] = time.time,
        max_body_bytes: int = MAX_BODY_BYTES,
    ) -> None:
        self._twilio = twilio
        self._telnyx = telnyx
        self._clock = clock
        self._max_body_bytes = max_body_bytes
        # One Redis round trip per verified delivery when the policy's state is all in Redis.
        self._admitters: dict[Carrier, Admitter] = {
            carrier: admitter_for(policy.replay, policy.limiter)
            for carrier, policy in ((Carrier.TWILIO, twilio), (Carrier.TELNYX, telnyx))
            if policy is not None
        }

    async def check(self, request: WebhookRequest) -> VerifiedWebhook:
        """Run every layer on ``request``. Raises ``Rejection`` naming the layer that refused."""
        carrier = request.carrier
        try:
            match carrier:
                case Carrier.TWILIO:
                    result = await self._check_twilio(request)
                case Carrier.TELNYX:
                    result = await self._check_telnyx(request)
                case _:  # pragma: no cover - exhaustive
                    assert_never(carrier)
        except Rejection as rejection:
            self._count_rejection(carrier, rejection.layer)
            raise
        _requests(carrier, "duplicate" if result.duplicate else "accepted").inc()
        return result

    async def forget(self, verified: VerifiedWebhook) -> None:
        """Processing of ``verified`` failed: drop it from the replay cache so the carrier's
        retry is processed instead of being acknowledged as a duplicate."""
        policy = self._twilio if verified.carrier is Carrier.TWILIO else self._telnyx
        if policy is not None and verified.replay_key:
            await policy.replay.forget(verified.replay_key)

    def check_twilio_media_upgrade(
        self, url: str, headers: Sequence[tuple[str, str]], peer_ip: str
    ) -> IPAddress:
        """Check Twilio's media WebSocket upgrade: allowlist, ``ts`` freshness, signature.

        ``url`` is the public ``wss://`` URL (with query) Twilio connected to. The stream
        token in that URL is the replay defence; consume it after this passes. Returns the
        client address or raises ``Rejection``.
        """
        try:
            policy = self._policy_twilio()
            index = _index(headers)
            signature = _single(index, TWILIO_SIGNATURE)
            client = self._allow(policy, peer_ip, index)
            self._twilio_freshness(policy, _query(url), ())
            if signature is None:
                raise Rejection(Layer.SIGNATURE, "missing signature", 400)
            policy.verifier.verify(url, None, None, signature)
        except Rejection as rejection:
            self._count_rejection(Carrier.TWILIO, rejection.layer)
            raise
        return client

    # -- carriers ----------------------------------------------------------------------------

    async def _check_twilio(self, request: WebhookRequest) -> VerifiedWebhook:
        policy = self._policy_twilio()
        headers = self._sanity(request)
        media_type = _media_type(headers, frozenset((FORM, JSON)))
        signature = _single(headers, TWILIO_SIGNATURE)
        query = _query(request.url)
        form: tuple[tuple[str, str], ...] = ()
        payload: dict[str, object] | None = None
        if media_type == FORM:
            form = parse_form(request.body)
        else:
            payload = parse_json_object(request.body)

        client = self._allow(policy, request.peer_ip, headers)
        self._twilio_freshness(policy, query, form)
        if signature is None:
            raise Rejection(Layer.SIGNATURE, "missing signature", 400)
        if payload is None:
            policy.verifier.verify(request.url, form, None, signature)
        else:
            policy.verifier.verify(request.url, None, request.body, signature)

        # The signature is a function of exactly the URL and the decoded fields, so it names
        # the delivery even when the same fields arrive spelled differently.
        replay_key = f"twilio\x00{request.url}\x00{signature}"
        duplicate = await self._admit(Carrier.TWILIO, policy, replay_key)
        return VerifiedWebhook(
            carrier=Carrier.TWILIO,
            event_id=digest_key(replay_key)[:32],
            duplicate=duplicate,
            client_ip=client,
            form=form,
            payload=payload,
            replay_key=replay_key,
        )

    async def _check_telnyx(self, request: WebhookRequest) -> VerifiedWebhook:
        if self._telnyx is None:
            raise Rejection(Layer.REQUEST, "not found", 404)
        policy = self._telnyx
        headers = self._sanity(request)
        _media_type(headers, frozenset((JSON,)))
        signature = _single(headers, TELNYX_SIGNATURE)
        timestamp = _single(headers, TELNYX_TIMESTAMP)
        payload = parse_json_object(request.body)
        event_id, event_type = _telnyx_event(payload)

        client = self._allow(policy, request.peer_ip, headers)
        if timestamp is None:
            raise Rejection(Layer.FRESHNESS, "missing timestamp", 400)
        try:
            sent_at = parse_unix_timestamp(timestamp)
        except ValueError:
            raise Rejection(Layer.FRESHNESS, "malformed timestamp", 400) from None
        self._fresh(policy, sent_at)
        if signature is None:
            raise Rejection(Layer.SIGNATURE, "missing signature", 400)
        policy.verifier.verify(request.body, signature, timestamp)

        replay_key = f"telnyx\x00{event_id}"
        duplicate = await self._admit(Carrier.TELNYX, policy, replay_key)
        return VerifiedWebhook(
            carrier=Carrier.TELNYX,
            event_id=event_id,
            duplicate=duplicate,
            client_ip=client,
            payload=payload,
            event_type=event_type,
            replay_key=replay_key,
        )

    # -- layers ------------------------------------------------------------------------------

    def _policy_twilio(self) -> CarrierPolicy[TwilioSignatureVerifier]:
        if self._twilio is None:
            raise Rejection(Layer.REQUEST, "not found", 404)
        return self._twilio

    def _sanity(self, request: WebhookRequest) -> dict[str, list[str]]:
        if request.method != "POST":
            raise Rejection(Layer.REQUEST, "method not allowed", 405, {"Allow": "POST"})
        if len(request.body) > self._max_body_bytes:
            raise Rejection(Layer.REQUEST, "body too large", 413)
        return _index(request.headers)

    @staticmethod
    def _allow(
        policy: CarrierPolicy[V], peer_ip: str, headers: Mapping[str, list[str]]
    ) -> IPAddress:
        client = policy.resolver.resolve(peer_ip, headers.get("x-forwarded-for", []))
        policy.allowlist.check(client)
        return client

    def _fresh(self, policy: CarrierPolicy[V], sent_at: float) -> None:
        if abs(self._clock() - sent_at) > policy.freshness_s:
            raise Rejection(Layer.FRESHNESS, "stale or future timestamp", 403)

    def _twilio_freshness(
        self,
        policy: CarrierPolicy[TwilioSignatureVerifier],
        query: Sequence[tuple[str, str]],
        form: Sequence[tuple[str, str]],
    ) -> None:
        ts = _only(query, "ts")
        if ts is not None:
            try:
                self._fresh(policy, parse_unix_timestamp(ts))
            except ValueError:
                raise Rejection(Layer.FRESHNESS, "malformed timestamp", 400) from None
        stamp = _only(form, "Timestamp")
        if stamp is not None:
            try:
                if len(stamp) > 64:
                    raise ValueError("overlong date")
                sent = email.utils.parsedate_to_datetime(stamp)
            except (TypeError, ValueError, OverflowError):  # OverflowError: a huge year
                raise Rejection(Layer.FRESHNESS, "malformed timestamp", 400) from None
            if sent.tzinfo is None:  # RFC 2822 "-0000": UTC, source zone unknown
                sent = sent.replace(tzinfo=UTC)
            self._fresh(policy, sent.timestamp())

    async def _admit(self, carrier: Carrier, policy: CarrierPolicy[V], key: str) -> bool:
        """Replay, then rate limit (``security.admission``). Returns True for a duplicate;
        raises when over the limit.

        The cache is read first and written only once the limiter has admitted the delivery:
        a delivery refused with 429 is not remembered, so the carrier's retry is processed
        rather than dropped as a duplicate. A duplicate never spends the budget of new
        deliveries; it spends its own (``security.admission.duplicate_scope``), so a flood of
        replays is refused with 429 too, without crowding out new calls.
        """
        admission = await self._admitters[carrier].admit(carrier.value, key, policy.replay_ttl_s)
        decision = admission.decision
        if admission.duplicate and not admission.refused:
            _duplicates(carrier).inc()
            return True
        if decision is None or not decision.allowed:
            scope = "duplicate" if admission.duplicate else "carrier"
            RATE_LIMITED.labels(carrier=carrier.value, scope=scope).inc()
            headers = decision.headers() if decision is not None else {}
            raise Rejection(Layer.RATE_LIMIT, "rate limited", 429, headers)
        return False

    @staticmethod
    def _count_rejection(carrier: Carrier, layer: Layer) -> None:
        _rejections(carrier, layer).inc()
        _requests(carrier, "rejected").inc()


# Labelled children looked up once: ``labels()`` costs more than the increment.


@functools.cache
def _requests(carrier: Carrier, outcome: str) -> Counter:
    return WEBHOOK_REQUESTS.labels(carrier=carrier.value, outcome=outcome)


@functools.cache
def _duplicates(carrier: Carrier) -> Counter:
    return WEBHOOK_DUPLICATES.labels(carrier=carrier.value)


@functools.cache
def _rejections(carrier: Carrier, layer: Layer) -> Counter:
    return WEBHOOK_REJECTIONS.labels(carrier=carrier.value, layer=layer.value)
