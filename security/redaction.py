"""Personal-data redaction for logs, error reports and echoed webhooks. Pure functions.

``mask_phone`` masks one number, ``redact`` masks every phone-like number inside free text
and ``hash_ip`` turns a client address into a short keyed hash that still correlates log
lines without revealing the address.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import re
from typing import Final

REDACTED: Final = "[redacted]"

# ITU-T E.164 country codes are prefix-free: 1 and 7 are one digit, these are two, every
# other assigned code is three.
_TWO_DIGIT_CODES: Final = frozenset(
    "20 27 30 31 32 33 34 36 39 40 41 43 44 45 46 47 48 49 51 52 53 54 55 56 57 58 "
    "60 61 62 63 64 65 66 81 82 84 86 90 91 92 93 94 95 98".split()
)

# A phone-like run: an optional "+" (or "%2B" in URL-encoded text), then 7 to 15 digits with
# at most two of " ", "(", ")", "-" between them. It must not sit inside a word, a decimal
# number, an address, a path or an identifier such as a UUID.
_PHONE = re.compile(
    r"(?<![\w.:/%+-])"
    r"(?P<plus>\+|%2[Bb])?"
    r"(?P<body>\(?\d(?:[ ()-]{0,2}\d){6,14})"
    r"(?!\w|[.:/-]\d)"
)
_DATE = re.compile(r"\d{4}-\d{2}-\d{2}|\d{2}-\d{2}-\d{4}")
_SINGLE_NUMBER = re.compile(r"\s*(?:\+|00)?[\d ()-]+\s*")


def _country_code_length(digits: str) -> int:
    if digits[:1] in ("1", "7"):
        return 1
    if digits[:2] in _TWO_DIGIT_CODES:
        return 2
    return 3


def _mask_digits(digits: str, international: bool) -> str:
    if international:
        code_length = _country_code_length(digits)
        code, national = digits[:code_length], digits[code_length:]
        if len(national) < 4:
            return f"+{code}{'*' * len(national)}"
        return f"+{code}{'*' * (len(national) - 2)}{national[-2:]}"
    if len(digits) < 4:
        return "*" * len(digits)
    return f"{'*' * (len(digits) - 2)}{digits[-2:]}"


def mask_phone(number: str) -> str:
    """Mask a phone number, keeping the country code and the last two digits.

    ``+14155550167`` becomes ``+1********67``; a number without a country code keeps only its
    last two digits. Anything that is not a phone number (``client:alice``, a SIP URI,
    ``anonymous``) becomes ``[redacted]``.
    """
    if not _SINGLE_NUMBER.fullmatch(number):
        return REDACTED
    text = number.strip()
    digits = "".join(char for char in text if "0" <= char <= "9")
    if not digits:
        return REDACTED
    if text.startswith("00"):
        return _mask_digits(digits[2:], international=True) if len(digits) > 2 else REDACTED
    return _mask_digits(digits, international=text.startswith("+"))


def _mask_match(match: re.Match[str]) -> str:
    body = match["body"]
    # The pattern admits 7 to 15 digits only.
    digits = "".join(char for char in body if "0" <= char <= "9")
    plus = match["plus"]
    if plus is None and _DATE.fullmatch(body):
        return match[0]
    masked = _mask_digits(digits, international=plus is not None)
    if plus is not None and plus != "+":
        return plus + masked[1:]
    return masked


def redact(text: str) -> str:
    """Mask every phone-like number in ``text`` (E.164, URL-encoded ``%2B``, formatted).

    Errs towards masking: a bare 7 to 15 digit number (an order number, unix seconds) is
    masked too. ISO and day-first dates are left alone.
    """
    return _PHONE.sub(_mask_match, text)


def hash_ip(ip: str, key: bytes, *, length: int = 16) -> str:
    """A keyed hash of a client address for logs: HMAC-SHA256, first ``length`` hex digits.

    The address is normalised first (IPv4-mapped IPv6 becomes IPv4, IPv6 is compressed) so
    one client always hashes alike; text that is not an address is hashed as it is.
    """
    if not key:
        raise ValueError("hash_ip needs a non-empty key")
    try:
        address = ipaddress.ip_address(ip.strip())
    except ValueError:
        canonical = ip
    else:
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        canonical = str(address)
    digest = hmac.new(key, canonical.encode("utf-8", "surrogatepass"), hashlib.sha256)
    return digest.hexdigest()[:length]
