"""Carrier webhook signature checks. Pure and synchronous: bytes and strings in, a verdict out.

``TwilioSignatureVerifier`` checks ``X-Twilio-Signature`` (HMAC-SHA1 with the account auth
token); ``TelnyxSignatureVerifier`` checks ``telnyx-signature-ed25519`` (Ed25519 over
``timestamp|body``). Both accept several secrets so a new one can be promoted without
downtime, raise ``Rejection(signature, 400)`` for a missing or malformed signature and
``Rejection(signature, 403)`` for one that does not verify. Work per request is bounded:
at most (secrets * 2 URL spellings * 2 parameter spellings) HMACs for Twilio and one Ed25519
check per configured key for Telnyx, over input the caller caps.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
from collections.abc import Iterator, Sequence
from typing import Final
from urllib.parse import parse_qsl, urlsplit

from nacl.exceptions import BadSignatureError
from nacl.signing import VerifyKey

from security.exceptions import ConfigError, Layer, Rejection

DEFAULT_PORTS: Final[dict[str, int]] = {"https": 443, "wss": 443, "http": 80, "ws": 80}
MAX_SIGNATURE_CHARS: Final = 128
MAX_TIMESTAMP_DIGITS: Final = 15

_TIMESTAMP = re.compile(rf"[0-9]{{1,{MAX_TIMESTAMP_DIGITS}}}")
_BODY_HASH = re.compile(r"[0-9a-fA-F]{64}")


def _malformed(what: str) -> Rejection:
    return Rejection(Layer.SIGNATURE, f"malformed {what}", 400)


def _mismatch() -> Rejection:
    return Rejection(Layer.SIGNATURE, "invalid signature", 403)


def parse_unix_timestamp(text: str) -> int:
    """Parse unix seconds written as 1 to 15 ASCII digits and nothing else.

    ``int()`` would also take ``+1``, `` 1``, ``1_0`` and non-ASCII digits; those are refused
    because the signed bytes must be exactly what was checked. Raises ``ValueError``.
    """
    if not _TIMESTAMP.fullmatch(text):
        raise ValueError("not a unix timestamp")
    return int(text)


def decode_base64_strict(text: str, size: int) -> bytes:
    """Decode canonical standard base64 of exactly ``size`` bytes, or raise ``ValueError``.

    Canonical means re-encoding gives back ``text``: unused trailing bits set or padding
    spelled differently would otherwise let one signature have several spellings.
    """
    if len(text) > MAX_SIGNATURE_CHARS or not text.isascii():
        raise ValueError("bad base64")
    try:
        raw = base64.b64decode(text, validate=True)
    except binascii.Error:
        raise ValueError("bad base64") from None
    if len(raw) != size or base64.b64encode(raw).decode("ascii") != text:
        raise ValueError("bad base64")
    return raw


def _url_spellings(url: str) -> Iterator[str]:
    """The URL as given, and with the scheme's default port added or removed.

    Twilio has signed both spellings of a default port; other ports are used as given. Only
    the authority changes; every other character of ``url`` stays as it is.
    """
    yield url
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return
    scheme = parts.scheme.lower()
    default = DEFAULT_PORTS.get(scheme)
    head = f"{parts.scheme}://"
    if default is None or not url.startswith(head + parts.netloc) or not parts.netloc:
        return
    rest = url[len(head) + len(parts.netloc) :]
    if port is None:
        if not parts.netloc.endswith(":"):
            yield f"{head}{parts.netloc}:{default}{rest}"
    elif port == default:
        yield f"{head}{parts.netloc[: parts.netloc.rfind(':')]}{rest}"


def _param_spellings(params: Sequence[tuple[str, str]]) -> Iterator[str]:
    """Parameters as Twilio concatenates them: sorted by name then value, ``name + value``.

    Twilio's reference validator drops exact duplicate pairs while its other SDKs keep them;
    when the request repeats a pair, both spellings are tried.
    """
    ordered = sorted(params)
    yield "".join(name + value for name, value in ordered)
    unique = sorted(set(params))
    if len(unique) != len(ordered):
        yield "".join(name + value for name, value in unique)


class TwilioSignatureVerifier:
    """Checks ``X-Twilio-Signature`` against one or more auth tokens (primary first)."""

    __slots__ = ("_tokens",)

    def __init__(self, tokens: Sequence[str]) -> None:
        if isinstance(tokens, str):
            raise ConfigError("twilio auth tokens: expected a sequence of tokens, not a string")
        if not tokens:
            raise ConfigError("twilio auth tokens: at least one token is required")
        for index, token in enumerate(tokens):
            if not token or token != token.strip():
                raise ConfigError(f"twilio auth token #{index} is empty or has spaces around it")
        self._tokens: tuple[bytes, ...] = tuple(token.encode("utf-8") for token in tokens)

    def __repr__(self) -> str:
        return f"TwilioSignatureVerifier(<{len(self._tokens)} token(s)>)"

    def verify(
        self,
        url: str,
        params: Sequence[tuple[str, str]] | None,
        body: bytes | None,
        signature: str,
    ) -> None:
        """Verify a request Twilio made to ``url``.

        - form POST: ``params`` are the decoded form pairs, ``body`` is None;
        - JSON POST: ``body`` is the raw body, ``params`` is None; ``url`` must carry exactly
          one ``bodySHA256`` query parameter equal to the body's SHA-256 (hex), and the
          signature covers the URL alone;
        - GET (the media WebSocket upgrade): both None; the signature covers the URL alone.

        ``url`` is the public URL Twilio called, with its query string. Raises ``Rejection``.
        """
        if params is not None and body is not None:
            raise TypeError("pass form params or a JSON body, not both")
        try:
            # Only the shape is checked here; the comparison below is on the canonical text.
            decode_base64_strict(signature, hashlib.sha1(usedforsecurity=False).digest_size)
        except ValueError:
            raise _malformed("signature") from None

        if body is not None:
            self._check_body_hash(url, body)
        data_spellings = list(_param_spellings(params)) if params else [""]
        given = signature.encode("ascii")
        matched = False
        for token in self._tokens:
            for url_spelling in _url_spellings(url):
                for data in data_spellings:
                    message = (url_spelling + data).encode("utf-8")
                    digest = hmac.new(token, message, hashlib.sha1).digest()
                    # Keep going after a match so timing says nothing about which one matched.
                    matched |= hmac.compare_digest(base64.b64encode(digest), given)
        if not matched:
            raise _mismatch()

    @staticmethod
    def _check_body_hash(url: str, body: bytes) -> None:
        try:
            query = parse_qsl(urlsplit(url).query, keep_blank_values=True)
        except ValueError:
            raise _malformed("url") from None
        hashes = [value for name, value in query if name == "bodySHA256"]
        if len(hashes) != 1 or not _BODY_HASH.fullmatch(hashes[0]):
            raise _malformed("body hash")
        actual = hashlib.sha256(body).hexdigest().encode("ascii")
        if not hmac.compare_digest(actual, hashes[0].lower().encode("ascii")):
            raise _mismatch()


class TelnyxSignatureVerifier:
    """Checks ``telnyx-signature-ed25519`` against one or more base64 Ed25519 public keys."""

    __slots__ = ("_keys",)

    def __init__(self, public_keys: Sequence[str]) -> None:
        if isinstance(public_keys, str):
            raise ConfigError("telnyx public keys: expected a sequence of keys, not a string")
        if not public_keys:
            raise ConfigError("telnyx public keys: at least one key is required")
        keys: list[VerifyKey] = []
        for index, text in enumerate(public_keys):
            try:
                keys.append(VerifyKey(decode_base64_strict(text.strip(), 32)))
            except (ValueError, TypeError):
                raise ConfigError(
                    f"telnyx public key #{index} is not a base64 Ed25519 public key"
                ) from None
        self._keys: tuple[VerifyKey, ...] = tuple(keys)

    def __repr__(self) -> str:
        return f"TelnyxSignatureVerifier(<{len(self._keys)} key(s)>)"

    def verify(self, raw_body: bytes, signature_b64: str, timestamp: str) -> None:
        """Verify that ``signature_b64`` signs ``timestamp|raw_body`` with a configured key.

        ``timestamp`` is the ``telnyx-timestamp`` header exactly as received. Freshness is
        the caller's check. Raises ``Rejection``.
        """
        try:
            signature = decode_base64_strict(signature_b64, 64)
        except ValueError:
            raise _malformed("signature") from None
        try:
            parse_unix_timestamp(timestamp)
        except ValueError:
            raise _malformed("timestamp") from None
        message = timestamp.encode("ascii") + b"|" + raw_body
        for key in self._keys:
            try:
                key.verify(message, signature)
            except BadSignatureError:
                continue
            return
        raise _mismatch()
