"""Personal-data redaction for logs, error reports and echoed webhooks. Pure functions.

``mask_phone`` masks one number and ``mask_email`` one address; ``redact`` masks every
phone-like number, email address and credential-looking value inside free text; ``hash_ip``
turns a client address into a short keyed hash that still correlates log lines without
revealing the address, and ``hash_ips`` does that to every address inside free text.
``is_sensitive_key`` names the fields (``token``, ``X-Twilio-Signature``, ``api_key``, ...)
whose value is never shown, and ``redact_value`` applies all of it to nested data.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import re
from collections.abc import Mapping
from typing import Any, Final

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
# A number with its "+" as a whole URL path segment (``/api/v1/users/%2B15550100001/data``):
# _PHONE keeps away from paths, but a data-subject URL carries exactly this.
_PATH_PHONE = re.compile(r"(?<=/)(?P<plus>\+|%2[Bb])(?P<body>\d{7,15})(?=[/?#\s\"']|$)")
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


# -- email addresses -------------------------------------------------------------------------

_EMAIL = re.compile(
    r"(?<![\w.%+-])"
    r"(?P<local>[A-Za-z0-9._%+-]+)"
    r"(?P<at>@|%40)"
    r"(?P<domain>(?:[A-Za-z0-9-]+\.)+[A-Za-z][A-Za-z0-9-]*)\b"
)


def mask_email(address: str) -> str:
    """Mask an email address, keeping the first character of the local part and the domain.

    ``alice@example.com`` becomes ``a***@example.com``; text that is not one address becomes
    ``[redacted]``.
    """
    match = _EMAIL.fullmatch(address.strip())
    if match is None:
        return REDACTED
    return _mask_email_match(match)


def _mask_email_match(match: re.Match[str]) -> str:
    local = match["local"]
    kept = local[0] if len(local) > 1 and local[0].isalnum() else ""
    return f"{kept}***{match['at']}{match['domain']}"


# -- credentials in free text ----------------------------------------------------------------

_SECRET_NAME: Final = (  # a pattern of names, not a secret
    r"[\w-]*(?:token|secret|passw(?:or)?d|api[_-]?key|apikey|private[_-]?key|signature"  # noqa: S105
    r"|authorization|cookie|credential|dsn)[\w-]*"
)
# ``name=value``, ``name: value``, ``"name": "value"`` (JSON) and ``'name': 'value'`` (repr).
# The look-behind starts a name only at the start of a word: without it every position of a
# long word is tried, and a 4 KB run of letters or digits takes seconds (quadratic).
_SECRET_ASSIGNMENT = re.compile(
    rf"(?i)(?<![\w-])(?P<name>{_SECRET_NAME})(?P<sep>['\"]?\s*[=:]\s*['\"]?)"
    # A value that is itself a secret's name and separator ("TOKEN: token: abc") is not the
    # value: the inner assignment is, and is masked in turn.
    rf"(?!(?:{_SECRET_NAME})['\"]?\s*[=:])"
    r"(?P<value>(?:(?:bearer|basic)\s+)?[^\s'\"&,;}\]]+)"
)
# The user-info part of a URL: ``redis://:password@host``, ``https://user:key@host``.
# Schemes are short: bounding the run keeps a long "a.a.a..." from being rescanned from each
# of its words (quadratic time).
_URL_USERINFO = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.-]{0,31}://)[^/\s@]+@")
_SECRET_SHAPES = re.compile(
    r"(?i:\b(?:bearer|basic)\s+)[A-Za-z0-9._~+/=-]+"  # an Authorization header value
    r"|\beyJ[\w-]{4,}\.[\w-]{4,}\.[\w-]*"  # a JWT
    r"|(?<![\w-])sk-[A-Za-z0-9_-]{8,}"  # OpenAI-style API keys
    r"|(?<![\w-])KEY[0-9A-Za-z_-]{16,}"  # Telnyx API keys
)


def _mask_secret_assignment(match: re.Match[str]) -> str:
    return f"{match['name']}{match['sep']}{REDACTED}"


def _mask_secret_shape(match: re.Match[str]) -> str:
    text = match[0]
    if text[:6].lower() in ("bearer", "basic "):
        return f"{text.split(None, 1)[0]} {REDACTED}"
    return REDACTED


def redact(text: str) -> str:
    """Mask personal data and credentials in ``text``.

    Phone-like numbers (E.164, URL-encoded ``%2B``, formatted) keep their country code and
    last two digits; email addresses keep their first character and domain; the values of
    ``token=``/``api_key:``/``"signature": "..."``-style assignments, ``Bearer`` credentials,
    the user-info of URLs, JWTs and provider API keys become ``[redacted]``. Errs towards
    masking: a bare 7 to 15 digit number (an order number, unix seconds) is masked too. ISO and
    day-first dates are left alone.
    """
    text = _URL_USERINFO.sub(rf"\g<scheme>{REDACTED}@", text)
    text = _SECRET_ASSIGNMENT.sub(_mask_secret_assignment, text)
    text = _SECRET_SHAPES.sub(_mask_secret_shape, text)
    text = _EMAIL.sub(_mask_email_match, text)
    text = _PATH_PHONE.sub(_mask_match, text)
    return _PHONE.sub(_mask_match, text)


# -- client addresses in free text -----------------------------------------------------------

_IP_CANDIDATE = re.compile(
    r"(?<![\w.:])"
    r"(?:\d{1,3}(?:\.\d{1,3}){3}"  # IPv4
    r"|(?=[0-9A-Fa-f:]*::|(?:[0-9A-Fa-f]{1,4}:){7})"  # IPv6: has "::" or 8 groups
    r"[0-9A-Fa-f:]{2,39}(?:\.\d{1,3}){0,3})"
    r"(?!\w|\.\d)"
)


def hash_ips(text: str, key: bytes) -> str:
    """Replace every IPv4 or IPv6 address in ``text`` by ``ip-`` and its :func:`hash_ip`.
    Loopback and unspecified addresses (``127.0.0.1``, ``0.0.0.0``, ``::``) identify no one:
    they stay readable (e.g. the address the server listens on)."""

    def replace(match: re.Match[str]) -> str:
        candidate = match[0]
        try:
            address = ipaddress.ip_address(candidate)
        except ValueError:
            return candidate
        if address.is_loopback or address.is_unspecified:
            return candidate
        return "ip-" + hash_ip(candidate, key)

    return _IP_CANDIDATE.sub(replace, text)


# -- structured data -------------------------------------------------------------------------

_SENSITIVE_KEY = re.compile(
    r"token|secret|passw(?:or)?d|passwd|api_?key|apikey|private_?key|signature|authorization"
    r"|cookie|credential|dsn|csrf|session_?id|sessionid"
)
_PHONE_KEYS: Final = frozenset(
    "from to caller called phone phone_number from_number to_number caller_id number".split()
)
_IP_KEYS: Final = frozenset(
    "ip client client_ip client_addr remote_addr remote_ip peer source_ip x_forwarded_for "
    "x_real_ip forwarded_for ip_address".split()
)

SENSITIVE_KEYS: Final[tuple[str, ...]] = (
    "token",
    "stream_token",
    "auth_token",
    "access_token",
    "refresh_token",
    "api_key",
    "apikey",
    "x_api_key",
    "x-api-key",
    "secret",
    "password",
    "authorization",
    "proxy-authorization",
    "cookie",
    "set-cookie",
    "set_cookie",
    "signature",
    "x-twilio-signature",
    "telnyx-signature-ed25519",
    "telnyx-timestamp",
    "x-telnyx-streaming-auth-token",
    "dsn",
    "from",
    "to",
    "caller",
    "called",
    "phone",
    "phone_number",
    "email",
    "client_ip",
    "remote_addr",
    "x-forwarded-for",
    "forwarded",
)
"""Field names (lower case, exact) removed wherever they appear: Sentry's scrubber list."""


_QUOTED = re.compile(r"^b?(['\"])(.*)\1$", re.DOTALL)


def _normal_key(name: str) -> str:
    name = name.strip()
    # ``b'x-twilio-signature'``: an ASGI header name as its repr (Sentry frame variables).
    quoted = _QUOTED.match(name)
    if quoted is not None:
        name = quoted[2]
    return name.lower().replace("-", "_")


def is_sensitive_key(name: str) -> bool:
    """True for a field whose value is a credential: token, secret, password, API key,
    signature, authorization, cookie, DSN, CSRF, session id (any case, ``-`` or ``_``)."""
    return _SENSITIVE_KEY.search(_normal_key(name)) is not None


def redact_value(value: Any, *, ip_key: bytes | None = None, key: str | None = None) -> Any:
    """``value`` with personal data and credentials masked, recursively.

    Strings pass through :func:`redact` (and :func:`hash_ips` when ``ip_key`` is given);
    mappings and sequences are copied with each item redacted; a mapping item whose key
    :func:`is_sensitive_key` becomes ``[redacted]``, one named like a phone field (``from``,
    ``to``, ``caller``) is masked with :func:`mask_phone`, one named like an address field
    (``client_ip``, ``remote_addr``) is hashed. A two-item sequence whose first item is text
    is read as a (name, value) pair, as in an ASGI header list. Other values are returned as
    they are.
    """
    if key is not None:
        normal = _normal_key(key)
        if is_sensitive_key(normal):
            return REDACTED if value not in (None, "") else value
        if isinstance(value, str) and value:
            if normal in _PHONE_KEYS and _SINGLE_NUMBER.fullmatch(value):
                return mask_phone(value)
            if normal in _IP_KEYS:
                return "ip-" + hash_ip(value, ip_key) if ip_key else REDACTED
    if isinstance(value, str):
        text = redact(value)
        return hash_ips(text, ip_key) if ip_key else text
    if isinstance(value, Mapping):
        return {k: redact_value(v, ip_key=ip_key, key=str(k)) for k, v in value.items()}
    if isinstance(value, list | tuple) and len(value) == 2 and isinstance(value[0], str):
        # A (name, value) pair, like the header list of an ASGI scope.
        return [
            redact_value(value[0], ip_key=ip_key),
            redact_value(value[1], ip_key=ip_key, key=value[0]),
        ]
    if isinstance(value, list | tuple | set | frozenset):
        return [redact_value(item, ip_key=ip_key) for item in value]
    return value
