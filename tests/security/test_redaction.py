from __future__ import annotations

import pytest

from security.redaction import REDACTED, hash_ip, mask_phone, redact


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
