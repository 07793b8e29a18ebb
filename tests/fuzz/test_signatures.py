"""Carrier signature checks (``security/signatures.py``) against forgeries at volume.

Invariants:

* a request signed by the carrier's reference code (Twilio's ``RequestValidator``, an Ed25519
  key for Telnyx) is always accepted, whatever its URL, fields, body or timestamp;
* the same request with anything that is signed changed (a character of the URL or of a
  field, a field added or removed, the body, the timestamp, the signature itself, the key) is
  always refused with ``Rejection`` at the signature layer; so is every unsigned request;
* whatever the input, the only exception is ``Rejection`` (400 malformed, 403 mismatch).

Twilio's scheme signs the URL and the *concatenation* of sorted ``name + value`` pairs with
no separators, and its reference validator drops exact duplicate pairs; so moving characters
between a name and its value, or adding a copy of a pair, is not a change it can see. The
mutations below are the ones that change the signed text.
"""

from __future__ import annotations

import base64
import hashlib
from typing import Any

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st
from nacl.signing import SigningKey
from twilio.request_validator import RequestValidator

from security.exceptions import Layer, Rejection
from security.signatures import TelnyxSignatureVerifier, TwilioSignatureVerifier
from tests.fuzz.profile import FUZZ, tally
from tests.fuzz.strategies import mutated_bytes, mutated_text

# What the gateway can hand the verifier: form fields are decoded strictly from UTF-8 and the
# URL from latin-1, so no lone surrogates.
chars = st.characters(exclude_categories=["Cs"])
text = st.text(chars, max_size=30)
tokens = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=40)
hosts = st.from_regex(r"[a-z][a-z0-9-]{0,20}(\.[a-z]{2,6}){1,2}", fullmatch=True)


@st.composite
def urls(draw: st.DrawFn) -> str:
    scheme = draw(st.sampled_from(["https", "http", "wss"]))
    port = draw(st.sampled_from(["", ":443", ":80", ":8443", ":8000"]))
    path = draw(st.from_regex(r"(/[A-Za-z0-9._~%-]{0,12}){0,4}", fullmatch=True))
    query = draw(st.sampled_from(["", "?ts=1700000000", "?a=1&b=", "?x=%20y&x=z"]))
    return f"{scheme}://{draw(hosts)}{port}{path}{query}"


pairs = st.lists(st.tuples(text, text), max_size=8)


def sign(token: str, url: str, params: list[tuple[str, str]]) -> str:
    mapping: dict[str, list[str]] = {}
    for name, value in params:
        mapping.setdefault(name, []).append(value)
    return str(RequestValidator(token).compute_signature(url, MultiDict(mapping)))


class MultiDict(dict[str, list[str]]):
    """The Flask-style mapping Twilio's validator reads repeated names from."""

    def getall(self, name: str) -> list[str]:
        return self[name]


def refused(verify: Any, *args: Any) -> Rejection:
    with pytest.raises(Rejection) as info:
        verify(*args)
    assert info.value.layer is Layer.SIGNATURE and info.value.status in (400, 403)
    tally("rejected")
    return info.value


# -- Twilio ----------------------------------------------------------------------------------


@FUZZ
@given(token=tokens, url=urls(), params=pairs, other=tokens, promoted=st.booleans())
def test_twilio_signed_requests_verify(token, url, params, other, promoted):
    verifier = TwilioSignatureVerifier([other, token] if promoted else [token])
    signature = sign(token, url, params)
    verifier.verify(url, params, None, signature)
    verifier.verify(url, list(reversed(params)), None, signature)  # order is not signed
    tally("accepted")


def concatenation(params: list[tuple[str, str]]) -> set[str]:
    ordered = sorted(params)
    return {
        "".join(n + v for n, v in ordered),
        "".join(n + v for n, v in sorted(set(params))),
    }


@st.composite
def twilio_forgeries(draw: st.DrawFn) -> tuple[str, list[tuple[str, str]], str, str, str]:
    """(token, params, url, signature, what) where ``what`` names the one change made to a
    request signed over the original URL and params."""
    token, url, params = draw(tokens), draw(urls()), draw(pairs)
    signature = sign(token, url, params)
    what = draw(st.sampled_from(["path", "field", "add", "remove", "signature", "token"]))
    if what == "path":
        head, _, rest = url.partition("://")
        authority, slash, tail = rest.partition("/")
        changed = draw(mutated_text(slash + tail, surrogates=False)) if slash else "/" + draw(text)
        url2 = f"{head}://{authority}{changed}"
        assume(not changed.startswith((":", "@")) and url2 != url)
        return token, params, url2, signature, what
    if what == "field":
        assume(params)
        index = draw(st.integers(0, len(params) - 1))
        name, value = params[index]
        changed = draw(mutated_text(value, surrogates=False))
        new = [*params[:index], (name, changed), *params[index + 1 :]]
        assume(not concatenation(new) & concatenation(params))
        return token, new, url, signature, what
    if what == "add":
        pair = (draw(text), draw(text))
        assume(pair[0] + pair[1] and pair not in params)
        return token, [*params, pair], url, signature, what
    if what == "remove":
        assume(params)
        index = draw(st.integers(0, len(params) - 1))
        new = params[:index] + params[index + 1 :]
        assume(not concatenation(new) & concatenation(params))
        return token, new, url, signature, what
    if what == "signature":
        forged = draw(mutated_text(signature) | st.text(max_size=40))
        assume(forged != signature)
        return token, params, url, forged, what
    other = draw(tokens)
    assume(other != token)
    return other, params, url, signature, what


@FUZZ
@given(forgery=twilio_forgeries())
def test_twilio_forgeries_refused(forgery):
    token, params, url, signature, _ = forgery
    refused(TwilioSignatureVerifier([token]).verify, url, params, None, signature)


@FUZZ
@given(
    token=tokens, url=urls(), body=st.binary(max_size=300), change=st.binary(min_size=1, max_size=8)
)
def test_twilio_json_body_hash(token, url, body, change):
    """JSON webhooks: the URL carries ``bodySHA256``; any other body is refused."""
    digest = hashlib.sha256(body).hexdigest()
    signed_url = url + ("&" if "?" in url else "?") + "bodySHA256=" + digest
    signature = sign(token, signed_url, [])
    verifier = TwilioSignatureVerifier([token])
    verifier.verify(signed_url, None, body, signature)
    refused(verifier.verify, signed_url, None, body + change, signature)


@FUZZ
@given(
    url=st.text(chars, max_size=80) | urls(),
    params=st.none() | pairs,
    body=st.none() | st.binary(max_size=40),
    signature=st.text(max_size=40) | st.sampled_from(["", "=" * 28, "A" * 27 + "="]),
)
def test_twilio_garbage_refused(url, params, body, signature):
    assume(params is None or body is None)
    refused(TwilioSignatureVerifier(["token"]).verify, url, params, body, signature)


# -- Telnyx ----------------------------------------------------------------------------------

seeds = st.binary(min_size=32, max_size=32)
timestamps = st.integers(0, 10**15 - 1).map(str)
# Ed25519's group order: a signature whose S is not below it is a malleated copy.
L = 2**252 + 27742317777372353535851937790883648493


def public(key: SigningKey) -> str:
    return base64.b64encode(bytes(key.verify_key)).decode()


def telnyx_sign(key: SigningKey, timestamp: str, body: bytes) -> str:
    return base64.b64encode(key.sign(timestamp.encode() + b"|" + body).signature).decode()


@FUZZ
@given(seed=seeds, others=st.lists(seeds, max_size=2), body=st.binary(max_size=500), ts=timestamps)
def test_telnyx_signed_requests_verify(seed, others, body, ts):
    key = SigningKey(seed)
    keys = [public(SigningKey(s)) for s in others] + [public(key)]
    TelnyxSignatureVerifier(keys).verify(body, telnyx_sign(key, ts, body), ts)
    tally("accepted")


@FUZZ
@given(
    seed=seeds,
    body=st.binary(max_size=300),
    ts=timestamps,
    what=st.sampled_from(["body", "timestamp", "signature", "key", "malleated", "unsigned"]),
    data=st.data(),
)
def test_telnyx_forgeries_refused(seed, body, ts, what, data):
    key = SigningKey(seed)
    signature = telnyx_sign(key, ts, body)
    verifier = TelnyxSignatureVerifier([public(key)])
    match what:
        case "body":
            forged = data.draw(mutated_bytes(body))
            assume(forged != body)
            refused(verifier.verify, forged, signature, ts)
        case "timestamp":
            forged_ts = data.draw(mutated_text(ts) | timestamps)
            assume(forged_ts != ts)
            refused(verifier.verify, body, signature, forged_ts)
        case "signature":
            forged_sig = data.draw(mutated_text(signature))
            assume(forged_sig != signature)
            refused(verifier.verify, body, forged_sig, ts)
        case "key":
            other = SigningKey(data.draw(seeds.filter(lambda s: s != seed)))
            refused(TelnyxSignatureVerifier([public(other)]).verify, body, signature, ts)
        case "malleated":
            raw = base64.b64decode(signature)
            s = int.from_bytes(raw[32:], "little") + L
            assume(s < 2**256)
            forged_sig = base64.b64encode(raw[:32] + s.to_bytes(32, "little")).decode()
            refused(verifier.verify, body, forged_sig, ts)
        case _:
            random_sig = base64.b64encode(data.draw(st.binary(min_size=64, max_size=64)))
            refused(verifier.verify, body, random_sig.decode(), ts)


@FUZZ
@given(body=st.binary(max_size=100), signature=st.text(max_size=100), ts=st.text(max_size=20))
def test_telnyx_garbage_refused(body, signature, ts):
    refused(TelnyxSignatureVerifier([public(SigningKey(b"\x01" * 32))]).verify, body, signature, ts)
