"""Known-answer tests: signatures made by the carriers' own SDKs must verify, and every single
changed character of URL, parameters, body, signature or timestamp must not."""

from __future__ import annotations

import base64
import hashlib
import string
import time

import pytest
import telnyx
from nacl.signing import SigningKey
from twilio.request_validator import RequestValidator

from security.exceptions import ConfigError, Layer, Rejection
from security.signatures import (
    TelnyxSignatureVerifier,
    TwilioSignatureVerifier,
    decode_base64_strict,
    parse_unix_timestamp,
)

TOKEN = "12345678901234567890123456789012"
OLD_TOKEN = "abcdefabcdefabcdefabcdefabcdef00"
URL = "https://gw.example.com/webhooks/twilio/status?ts=1700000000&call=abc"
PARAMS = [
    ("CallSid", "CA1234567890abcdef1234567890abcdef"),
    ("From", "+14155550100"),
    ("To", "+14155550199"),
    ("CallStatus", "completed"),
    ("Caller", ""),
    ("Digits", "1234#"),
]
B64_ALPHABET = string.ascii_letters + string.digits + "+/="


class MultiDict(dict[str, list[str]]):
    """The Flask-style mapping Twilio's validator understands for repeated keys."""

    def getall(self, name: str) -> list[str]:
        return self[name]


def multidict(pairs) -> MultiDict:
    result = MultiDict()
    for name, value in pairs:
        result.setdefault(name, []).append(value)
    return result


def twilio_signature(url: str, params=None, token: str = TOKEN) -> str:
    return RequestValidator(token).compute_signature(url, params or {})


def one_char_changes(text: str):
    """Every string that differs from ``text`` in exactly one character (a nearby one)."""
    for index, char in enumerate(text):
        for replacement in {chr(ord(char) ^ 1), chr(ord(char) ^ 0x20), "0"} - {char}:
            yield text[:index] + replacement + text[index + 1 :]


def rejected(call) -> Rejection:
    with pytest.raises(Rejection) as info:
        call()
    assert info.value.layer is Layer.SIGNATURE
    return info.value


# -- Twilio ----------------------------------------------------------------------------------


def test_twilio_form_known_answer():
    signature = twilio_signature(URL, dict(PARAMS))
    assert RequestValidator(TOKEN).validate(URL, dict(PARAMS), signature)
    TwilioSignatureVerifier([TOKEN]).verify(URL, PARAMS, None, signature)


def test_twilio_parameter_order_does_not_matter():
    signature = twilio_signature(URL, dict(PARAMS))
    TwilioSignatureVerifier([TOKEN]).verify(URL, list(reversed(PARAMS)), None, signature)


def test_twilio_repeated_keys_sorted_by_value():
    pairs = [*PARAMS, ("StatusCallbackEvent", "ringing"), ("StatusCallbackEvent", "answered")]
    signature = twilio_signature(URL, multidict(pairs))
    assert RequestValidator(TOKEN).validate(URL, multidict(pairs), signature)
    TwilioSignatureVerifier([TOKEN]).verify(URL, pairs, None, signature)


def test_twilio_repeated_identical_pair_both_spellings():
    pairs = [("A", "1"), ("A", "1"), ("B", "2")]
    verifier = TwilioSignatureVerifier([TOKEN])
    # Twilio's Python validator drops the repeated pair ...
    verifier.verify(URL, pairs, None, twilio_signature(URL, multidict(pairs)))
    # ... other implementations keep it.
    verifier.verify(URL, pairs, None, twilio_signature(URL + "A1A1B2"))


def test_twilio_unicode_values():
    pairs = [("SpeechResult", "Gr\u00fc\u00df Gott \u2013 \u4f60\u597d"), ("From", "+4930123456")]
    signature = twilio_signature(URL, dict(pairs))
    TwilioSignatureVerifier([TOKEN]).verify(URL, pairs, None, signature)


def test_twilio_json_body_known_answer():
    body = b'{"CallSid":"CA123","Status":"completed"}'
    url = "https://gw.example.com/webhooks/twilio/status?bodySHA256=" + (
        hashlib.sha256(body).hexdigest()
    )
    signature = twilio_signature(url)
    assert RequestValidator(TOKEN).validate(url, body.decode(), signature)
    TwilioSignatureVerifier([TOKEN]).verify(url, None, body, signature)


def test_twilio_json_body_must_match_hash():
    body = b'{"CallSid":"CA123"}'
    url = "https://gw.example.com/s?bodySHA256=" + hashlib.sha256(body).hexdigest()
    signature = twilio_signature(url)
    verifier = TwilioSignatureVerifier([TOKEN])
    for index in range(len(body)):
        changed = body[:index] + bytes([body[index] ^ 1]) + body[index + 1 :]
        assert rejected(lambda c=changed: verifier.verify(url, None, c, signature)).status == 403


@pytest.mark.parametrize(
    "query",
    ["", "?x=1", "?bodySHA256=abc", "?bodySHA256=" + "g" * 64, "?bodySHA256=a&bodySHA256=b"],
)
def test_twilio_json_body_without_single_valid_hash(query):
    url = "https://gw.example.com/s" + query
    verifier = TwilioSignatureVerifier([TOKEN])
    error = rejected(lambda: verifier.verify(url, None, b"{}", twilio_signature(url)))
    assert error.status == 400


def test_twilio_websocket_upgrade_known_answer():
    url = "wss://gw.example.com/media/twilio?token=abc&call=CA123"
    signature = twilio_signature(url)
    assert RequestValidator(TOKEN).validate(url, {}, signature)
    TwilioSignatureVerifier([TOKEN]).verify(url, None, None, signature)


@pytest.mark.parametrize(
    ("signed", "received"),
    [
        ("https://gw.example.com:443/hook?a=1", "https://gw.example.com/hook?a=1"),
        ("https://gw.example.com/hook?a=1", "https://gw.example.com:443/hook?a=1"),
        ("http://gw.example.com:80/hook", "http://gw.example.com/hook"),
        ("http://gw.example.com/hook", "http://gw.example.com:80/hook"),
        ("wss://gw.example.com:443/media", "wss://gw.example.com/media"),
        ("ws://gw.example.com/media", "ws://gw.example.com:80/media"),
        ("https://[2001:db8::1]:443/hook", "https://[2001:db8::1]/hook"),
    ],
)
def test_twilio_default_port_spellings(signed, received):
    signature = twilio_signature(signed, dict(PARAMS))
    if received.startswith("http"):
        # Twilio's validator adds 443 only for https (80 for every other scheme).
        assert RequestValidator(TOKEN).validate(received, dict(PARAMS), signature)
    TwilioSignatureVerifier([TOKEN]).verify(received, PARAMS, None, signature)


@pytest.mark.parametrize(
    ("signed", "received"),
    [
        ("https://gw.example.com:8443/hook", "https://gw.example.com/hook"),
        ("https://gw.example.com/hook", "https://gw.example.com:8443/hook"),
        ("https://gw.example.com:80/hook", "https://gw.example.com/hook"),
        ("http://gw.example.com/hook", "https://gw.example.com/hook"),
    ],
)
def test_twilio_other_ports_and_schemes_are_not_interchangeable(signed, received):
    signature = twilio_signature(signed, dict(PARAMS))
    verifier = TwilioSignatureVerifier([TOKEN])
    assert rejected(lambda: verifier.verify(received, PARAMS, None, signature)).status == 403


def test_twilio_secondary_token_accepted():
    signature = twilio_signature(URL, dict(PARAMS), token=OLD_TOKEN)
    TwilioSignatureVerifier([TOKEN, OLD_TOKEN]).verify(URL, PARAMS, None, signature)
    with pytest.raises(Rejection):
        TwilioSignatureVerifier([TOKEN]).verify(URL, PARAMS, None, signature)


def test_twilio_every_url_change_fails():
    signature = twilio_signature(URL, dict(PARAMS))
    verifier = TwilioSignatureVerifier([TOKEN])
    for url in one_char_changes(URL):
        rejected(lambda u=url: verifier.verify(u, PARAMS, None, signature))


def test_twilio_every_parameter_change_fails():
    signature = twilio_signature(URL, dict(PARAMS))
    verifier = TwilioSignatureVerifier([TOKEN])
    for index, (name, value) in enumerate(PARAMS):
        variants = [(n, value) for n in one_char_changes(name)]
        variants += [(name, v) for v in one_char_changes(value)] + [(name, value + "x")]
        for variant in variants:
            params = [*PARAMS[:index], variant, *PARAMS[index + 1 :]]
            rejected(lambda p=params: verifier.verify(URL, p, None, signature))
    for params in (PARAMS[1:], [*PARAMS, ("Extra", "")]):
        rejected(lambda p=params: verifier.verify(URL, p, None, signature))


def test_twilio_every_signature_change_fails():
    signature = twilio_signature(URL, dict(PARAMS))
    verifier = TwilioSignatureVerifier([TOKEN])
    for index in range(len(signature)):
        for char in B64_ALPHABET:
            if char != signature[index]:
                changed = signature[:index] + char + signature[index + 1 :]
                rejected(lambda s=changed: verifier.verify(URL, PARAMS, None, s))


@pytest.mark.parametrize(
    "signature",
    [
        "",
        "not base64!",
        "c2ln",  # valid base64, 3 bytes
        base64.b64encode(b"x" * 32).decode(),  # an HMAC-SHA256 length, not SHA1
        base64.urlsafe_b64encode(b"\xfb" * 20).decode(),  # URL-safe alphabet
        base64.b64encode(b"x" * 20).decode().rstrip("="),  # padding dropped
        " " + base64.b64encode(b"x" * 20).decode(),
        "A" * 10_000,
    ],
)
def test_twilio_malformed_signature_is_400(signature):
    verifier = TwilioSignatureVerifier([TOKEN])
    assert rejected(lambda: verifier.verify(URL, PARAMS, None, signature)).status == 400


def test_twilio_non_canonical_base64_is_refused():
    signature = twilio_signature(URL, dict(PARAMS))
    raw = base64.b64decode(signature)
    # 20 bytes leave 2 unused bits in the last character; setting them keeps the bytes.
    last = B64_ALPHABET.index(signature[-2])
    twin = signature[:-2] + B64_ALPHABET[last | 1] + "="
    assert twin != signature and base64.b64decode(twin) == raw
    verifier = TwilioSignatureVerifier([TOKEN])
    assert rejected(lambda: verifier.verify(URL, PARAMS, None, twin)).status == 400


@pytest.mark.parametrize("tokens", [[], [""], [" token"], "a-single-string"])
def test_twilio_bad_token_configuration(tokens):
    with pytest.raises(ConfigError):
        TwilioSignatureVerifier(tokens)


def test_twilio_repr_hides_tokens():
    assert TOKEN not in repr(TwilioSignatureVerifier([TOKEN]))


def test_twilio_unparsable_port_is_used_as_given():
    url = "https://gw.example.com:99999/hook"
    TwilioSignatureVerifier([TOKEN]).verify(url, None, None, twilio_signature(url))


def test_twilio_unparsable_url_with_body_hash_is_400():
    url = "https://[gw.example.com/s?bodySHA256=" + hashlib.sha256(b"{}").hexdigest()
    verifier = TwilioSignatureVerifier([TOKEN])
    assert rejected(lambda: verifier.verify(url, None, b"{}", twilio_signature(url))).status == 400


def test_twilio_params_and_body_together_is_a_programming_error():
    with pytest.raises(TypeError):
        TwilioSignatureVerifier([TOKEN]).verify(URL, PARAMS, b"{}", "x")


# -- Telnyx ----------------------------------------------------------------------------------

SIGNING_KEY = SigningKey(b"\x01" * 32)
PUBLIC_KEY = base64.b64encode(bytes(SIGNING_KEY.verify_key)).decode()
OTHER_KEY = SigningKey(b"\x02" * 32)
OTHER_PUBLIC_KEY = base64.b64encode(bytes(OTHER_KEY.verify_key)).decode()
BODY = (
    b'{"data":{"event_type":"call.initiated","id":"0ccc7b54-4df3-4bca-a65a-3da1ecc777f0",'
    b'"payload":{"call_control_id":"v3:abc","from":"+14155550100","to":"+14155550199"}}}'
)
TIMESTAMP = "1700000000"


def telnyx_signature(timestamp: str, body: bytes, key: SigningKey = SIGNING_KEY) -> str:
    return base64.b64encode(key.sign(timestamp.encode() + b"|" + body).signature).decode()


def test_telnyx_known_answer_agrees_with_the_sdk():
    timestamp = str(int(time.time()))
    signature = telnyx_signature(timestamp, BODY)
    TelnyxSignatureVerifier([PUBLIC_KEY]).verify(BODY, signature, timestamp)
    client = telnyx.Telnyx(api_key="x", public_key=PUBLIC_KEY)
    headers = {"telnyx-signature-ed25519": signature, "telnyx-timestamp": timestamp}
    event = client.webhooks.unwrap(BODY.decode(), headers=headers, key=PUBLIC_KEY)
    assert event.data.id == "0ccc7b54-4df3-4bca-a65a-3da1ecc777f0"
    tampered = BODY.replace(b"+14155550100", b"+14155550101")
    with pytest.raises(ValueError):
        client.webhooks.unwrap(tampered.decode(), headers=headers, key=PUBLIC_KEY)
    with pytest.raises(Rejection):
        TelnyxSignatureVerifier([PUBLIC_KEY]).verify(tampered, signature, timestamp)


def test_telnyx_any_configured_key_matches():
    signature = telnyx_signature(TIMESTAMP, BODY, OTHER_KEY)
    TelnyxSignatureVerifier([PUBLIC_KEY, OTHER_PUBLIC_KEY]).verify(BODY, signature, TIMESTAMP)
    error = rejected(
        lambda: TelnyxSignatureVerifier([PUBLIC_KEY]).verify(BODY, signature, TIMESTAMP)
    )
    assert error.status == 403


def test_telnyx_every_body_byte_change_fails():
    signature = telnyx_signature(TIMESTAMP, BODY)
    verifier = TelnyxSignatureVerifier([PUBLIC_KEY])
    for index in range(len(BODY)):
        changed = BODY[:index] + bytes([BODY[index] ^ 1]) + BODY[index + 1 :]
        assert rejected(lambda c=changed: verifier.verify(c, signature, TIMESTAMP)).status == 403
    for changed in (BODY + b" ", BODY[:-1], b" " + BODY, b""):
        rejected(lambda c=changed: verifier.verify(c, signature, TIMESTAMP))


def test_telnyx_every_timestamp_change_fails():
    signature = telnyx_signature(TIMESTAMP, BODY)
    verifier = TelnyxSignatureVerifier([PUBLIC_KEY])
    for timestamp in [*one_char_changes(TIMESTAMP), TIMESTAMP + "0", TIMESTAMP[1:]]:
        rejected(lambda t=timestamp: verifier.verify(BODY, signature, t))


def test_telnyx_every_signature_change_fails():
    signature = telnyx_signature(TIMESTAMP, BODY)
    verifier = TelnyxSignatureVerifier([PUBLIC_KEY])
    for index in range(len(signature)):
        for char in B64_ALPHABET:
            if char != signature[index]:
                changed = signature[:index] + char + signature[index + 1 :]
                rejected(lambda s=changed: verifier.verify(BODY, s, TIMESTAMP))


@pytest.mark.parametrize(
    "timestamp",
    [
        "",
        "+1700000000",
        "-1700000000",
        " 1700000000",
        "1700000000 ",
        "1700000000\n",
        "1700000000.0",
        "1_700_000_000",
        "1.7e9",
        "\u0661\u0667\u0660\u0660\u0660\u0660\u0660\u0660\u0660\u0660",  # Arabic-Indic digits
        "\uff11\uff17\uff10\uff10\uff10\uff10\uff10\uff10\uff10\uff10",  # full-width digits
        "1" * 16,
    ],
)
def test_telnyx_timestamp_must_be_plain_digits(timestamp):
    with pytest.raises(ValueError):
        parse_unix_timestamp(timestamp)
    signature = telnyx_signature(timestamp, BODY) if timestamp.isascii() else "x"
    error = rejected(
        lambda: TelnyxSignatureVerifier([PUBLIC_KEY]).verify(BODY, signature, timestamp)
    )
    assert error.status == 400


@pytest.mark.parametrize(
    "signature",
    [
        "",
        "not base64!",
        base64.b64encode(b"x" * 63).decode(),
        base64.b64encode(b"x" * 65).decode(),
        base64.urlsafe_b64encode(b"\xfb" * 64).decode(),
        base64.b64encode(b"x" * 64).decode().rstrip("="),
        base64.b64encode(b"x" * 64).decode() + "\n",
        "A" * 100_000,
    ],
)
def test_telnyx_malformed_signature_is_400(signature):
    error = rejected(
        lambda: TelnyxSignatureVerifier([PUBLIC_KEY]).verify(BODY, signature, TIMESTAMP)
    )
    assert error.status == 400


@pytest.mark.parametrize(
    "keys",
    [
        [PUBLIC_KEY, "not base64!"],
        [PUBLIC_KEY, base64.b64encode(b"k" * 31).decode()],
        [PUBLIC_KEY, base64.b64encode(b"k" * 33).decode()],
        [PUBLIC_KEY, ""],
    ],
)
def test_telnyx_bad_key_names_index_not_key(keys):
    with pytest.raises(ConfigError) as info:
        TelnyxSignatureVerifier(keys)
    assert "#1" in str(info.value)
    assert keys[1] == "" or keys[1] not in str(info.value)


@pytest.mark.parametrize("keys", [[], PUBLIC_KEY])
def test_telnyx_key_list_required(keys):
    with pytest.raises(ConfigError):
        TelnyxSignatureVerifier(keys)


def test_telnyx_repr_hides_keys():
    assert PUBLIC_KEY not in repr(TelnyxSignatureVerifier([PUBLIC_KEY]))


def test_decode_base64_strict():
    assert decode_base64_strict(base64.b64encode(b"abc").decode(), 3) == b"abc"
    for text, size in [("YWJj", 4), ("YWJ=", 2), ("YW Jj", 3), ("\u00e9", 1)]:
        with pytest.raises(ValueError):
            decode_base64_strict(text, size)
