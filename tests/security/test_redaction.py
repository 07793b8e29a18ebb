from __future__ import annotations

import pytest

from security.redaction import (
    REDACTED,
    SENSITIVE_KEYS,
    hash_ip,
    hash_ips,
    is_sensitive_key,
    mask_email,
    mask_phone,
    redact,
    redact_value,
)


@pytest.mark.parametrize(
    ("number", "masked"),
    [
        ("+14155550167", "+1********67"),
        ("+447700900123", "+44********23"),
        ("+4930123456", "+49******56"),
        ("+353861234567", "+353*******67"),
        ("+79161234567", "+7********67"),
        ("+1 (415) 555-0167", "+1********67"),
        ("004930123456", "+49******56"),
        ("4155550167", "********67"),
        ("+1234", "+1***"),
        ("911", "***"),
    ],
)
def test_mask_phone(number, masked):
    assert mask_phone(number) == masked


@pytest.mark.parametrize(
    "value",
    ["client:alice", "sip:alice@example.com", "anonymous", "", "+", "00", "()", "call +1415555"],
)
def test_mask_phone_non_numbers_fully_redacted(value):
    assert mask_phone(value) == REDACTED


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("from +14155550167 to +442071838750", "from +1********67 to +44********50"),
        ("From=%2B14155550167&To=%2b15005550006", "From=%2B1********67&To=%2b1********06"),
        ('{"from": "+14155550167"}', '{"from": "+1********67"}'),
        ("call (415) 555-0167 or 415-555-0167.", "call ********67 or ********67."),
        ("+1 415 555 0167", "+1********67"),
        ("order 12345678", "order ******78"),
    ],
)
def test_redact_masks_numbers(text, expected):
    assert redact(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "at 2024-01-15 10:00:00.123",
        "ip 192.168.100.200 port 8080",
        "pi 3.14159265",
        "uuid 123e4567-e89b-12d3-a456-426614174000",
        "sid CA1234567890abcdef1234567890abcdef",
        "short 123456 and long 1234567890123456789",
        "v1.2.3456789",
        "path /calls/12345678/",
    ],
)
def test_redact_leaves_other_text(text):
    assert redact(text) == text


def test_hash_ip_is_stable_short_and_keyed():
    first = hash_ip("192.0.2.1", b"key")
    assert first == hash_ip("::ffff:192.0.2.1", b"key")
    assert len(first) == 16 and int(first, 16) >= 0
    assert first != hash_ip("192.0.2.1", b"other key")
    assert first != hash_ip("192.0.2.2", b"key")
    assert hash_ip("2001:DB8::1", b"key") == hash_ip("2001:db8:0::1", b"key")
    assert "192.0.2.1" not in first
    assert len(hash_ip("not an ip", b"key", length=8)) == 8


def test_hash_ip_needs_a_key():
    with pytest.raises(ValueError):
        hash_ip("192.0.2.1", b"")


# -- emails ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("address", "masked"),
    [
        ("alice@example.com", "a***@example.com"),
        ("bob.smith+voice@mail.example.org", "b***@mail.example.org"),
        ("x@example.com", "***@example.com"),
        (" alice@example.com ", "a***@example.com"),
    ],
)
def test_mask_email(address, masked):
    assert mask_email(address) == masked


@pytest.mark.parametrize("value", ["alice", "alice@", "@example.com", "a@b", "two a@b.co c@d.co"])
def test_mask_email_non_addresses_fully_redacted(value):
    assert mask_email(value) == REDACTED


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("mail alice@example.com now", "mail a***@example.com now"),
        ("to=carol%40example.com&x=1", "to=c***%40example.com&x=1"),
        ('{"email": "dave@example.co.uk"}', '{"email": "d***@example.co.uk"}'),
        ("release voicegw@0.1.0", "release voicegw@0.1.0"),
    ],
)
def test_redact_masks_emails(text, expected):
    assert redact(text) == expected


# -- credentials -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("GET /media?token=abc123&x=1", "GET /media?token=[redacted]&x=1"),
        ("Authorization: Bearer abc.def", "Authorization: [redacted]"),
        ("sent Bearer xyz123 upstream", "sent Bearer [redacted] upstream"),
        ('{"api_key": "sk-12345678abc", "n": 1}', '{"api_key": "[redacted]", "n": 1}'),
        ("{'stream_token': 'AbC_-123'}", "{'stream_token': '[redacted]'}"),
        ("X-Twilio-Signature: c2lnbmF0dXJl", "X-Twilio-Signature: [redacted]"),
        ("password=hunter2; cookie: sid=abc", "password=[redacted]; cookie: [redacted]"),
        ("key sk-proj-abcdefghijk here", "key [redacted] here"),
        ("telnyx KEY0123456789ABCDEFGHIJ", "telnyx [redacted]"),
        ("jwt eyJhbGciOi.eyJzdWIiOi.c2lnbmF0", "jwt [redacted]"),
        ("redis://:hunter2@redis:6379/0", "redis://[redacted]@redis:6379/0"),
        ("https://user:pw@example.com/x", "https://[redacted]@example.com/x"),
        # Found by the long fuzz run: a name whose "value" is another name and separator.
        ("TOKEN: token: 0000000000000000", "TOKEN: token: [redacted]"),
        ("password=api_key=s3cr3t-v4lue", "password=api_key=[redacted]"),
    ],
)
def test_redact_masks_credentials(text, expected):
    assert redact(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "stream token refused: expired",
        "signature layer rejected the request",
        "tokens issued 3",
        "breaker openai: CLOSED -> OPEN",
    ],
)
def test_redact_leaves_talk_about_credentials(text):
    assert redact(text) == text


# -- addresses in text -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "addresses"),
    [
        ("from 192.0.2.1", ["192.0.2.1"]),
        ("peer 192.0.2.1:51234 said", ["192.0.2.1"]),
        ("('203.0.113.9', 8000) - WebSocket", ["203.0.113.9"]),
        ("end of sentence 198.51.100.7.", ["198.51.100.7"]),
        ("v6 [2001:db8::1]:443 and 2001:db8::2", ["2001:db8::1", "2001:db8::2"]),
        ("mapped ::ffff:192.0.2.1 too", ["::ffff:192.0.2.1"]),
        (
            "full 2001:0db8:0000:0000:0000:ff00:0042:8329",
            ["2001:0db8:0000:0000:0000:ff00:0042:8329"],
        ),
        ("http://10.0.0.5:6379/0", ["10.0.0.5"]),
    ],
)
def test_hash_ips_replaces_every_address(text, addresses):
    hashed = hash_ips(text, b"key")
    for address in addresses:
        assert address not in hashed
        assert f"ip-{hash_ip(address, b'key')}" in hashed


@pytest.mark.parametrize(
    "text",
    [
        "at 10:00:00.123",
        "version 2.42.0 and v1.2.3.4.5",
        "mac aa:bb:cc:dd:ee:ff",
        "999.1.1.1 is no address",
        "sid CA1234567890abcdef1234567890abcdef",
        "ratio 0.25",
        # Loopback and unspecified addresses identify no one (the server's own bind address).
        "Uvicorn running on http://127.0.0.1:8000",
        "listening on 0.0.0.0:8000 and [::]:8000",
        "connected to ::1 port 6379",
    ],
)
def test_hash_ips_leaves_other_text(text):
    assert hash_ips(text, b"key") == text


# -- field names and nested values -----------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        "token",
        "stream_token",
        "Authorization",
        "X-Twilio-Signature",
        "telnyx-signature-ed25519",
        "api_key",
        "apiKey",
        "OPENAI_API_KEY",
        "private_key",
        "cookie",
        "Set-Cookie",
        "client_secret",
        "password",
        "sentry_dsn",
        "csrf",
        "session_id",
    ],
)
def test_sensitive_keys(name):
    assert is_sensitive_key(name)


@pytest.mark.parametrize(
    "name", ["carrier", "provider", "layer", "reason", "call_id", "pyjwt", "duration_s", "status"]
)
def test_ordinary_keys(name):
    assert not is_sensitive_key(name)


def test_every_listed_sensitive_key_is_lower_case():
    assert all(key == key.lower() for key in SENSITIVE_KEYS)


def test_redact_value_walks_nested_data():
    value = {
        "from": "+15550100001",
        "to": "client:alice",
        "caller": "anonymous",
        "headers": {"Authorization": "Bearer abc", "X-Request-Id": "r1"},
        "client_ip": "192.0.2.1",
        "notes": ["mail bob@example.com", ("+442071838750", 3)],
        "count": 2,
        "token": None,
    }
    out = redact_value(value, ip_key=b"key")
    assert out == {
        "from": "+1********01",
        "to": "client:alice",
        "caller": "anonymous",
        "headers": {"Authorization": REDACTED, "X-Request-Id": "r1"},
        "client_ip": f"ip-{hash_ip('192.0.2.1', b'key')}",
        "notes": ["mail b***@example.com", ["+44********50", 3]],
        "count": 2,
        "token": None,
    }


def test_redact_value_without_a_key_redacts_address_fields():
    assert redact_value({"client_ip": "192.0.2.1"}) == {"client_ip": REDACTED}
    assert redact_value("plain text") == "plain text"


@pytest.mark.parametrize(
    "text",
    [
        "GET /api/v1/users/%2B15550100009/data",
        "POST https://gw.test/api/v1/users/%2b15550100009/delete HTTP/1.1",
        "/api/v1/users/+15550100009/data?format=json",
    ],
)
def test_a_phone_number_as_a_url_path_segment_is_masked(text):
    masked = redact(text)
    assert "5550100009" not in masked
    assert masked.count("/") == text.count("/")  # the path keeps its shape
