"""Cross-site request forgery defences for cookie-authenticated requests.

Two independent checks, both required for an unsafe method:

1. **Signed double submit.** The session has a random CSRF token, sent to the browser in a
   non-HttpOnly cookie; the page echoes it in ``X-CSRF-Token``. The header must equal the
   cookie, and the token's SHA-256 must equal the ``csrf`` claim of the session's access
   token, which is signed (Ed25519) and HttpOnly. A cookie planted by a sibling subdomain
   or a man in the middle of plain HTTP therefore does not pass: it is not bound to the
   session.
2. **Origin.** ``Origin`` (or, when a browser sends no ``Origin``, ``Sec-Fetch-Site``) must
   name an allowed origin: the gateway's public URL or a configured CORS origin. Requests
   carrying neither header do not come from a browser's cross-site context.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from collections.abc import Collection
from typing import Final
from urllib.parse import urlsplit

from security.exceptions import SecurityError

HEADER: Final = "x-csrf-token"
SAFE_METHODS: Final = frozenset({"GET", "HEAD", "OPTIONS"})
_MAX_TOKEN_LEN: Final = 128


class CsrfRejected(SecurityError):
    """A request failed a CSRF check; ``reason`` is short and safe to show."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def new_token() -> str:
    """A fresh CSRF token (256 bits, base64url)."""
    return secrets.token_urlsafe(32)


def token_hash(token: str) -> str:
    """What the access token's ``csrf`` claim holds: SHA-256 of ``token``, base64url."""
    digest = hashlib.sha256(b"voicegw-csrf\n" + token.encode("utf-8", "surrogatepass")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def origin_of(url: str) -> str:
    """``scheme://host[:port]`` of ``url``, lower-cased, default ports dropped. Raises
    ``ValueError`` for a URL ``urllib`` cannot split (a port out of range or not a number,
    an unclosed or malformed IPv6 literal)."""
    parts = urlsplit(url.strip())
    scheme = parts.scheme.lower()
    host = (parts.hostname or "").lower()
    if ":" in host:
        host = f"[{host}]"
    port = parts.port
    if port is None or (scheme, port) in (("http", 80), ("https", 443)):
        return f"{scheme}://{host}"
    return f"{scheme}://{host}:{port}"


def check_origin(origin: str | None, fetch_site: str | None, allowed: Collection[str]) -> None:
    """Raise ``CsrfRejected`` unless the request comes from an ``allowed`` origin (or from no
    browser context at all). ``allowed`` holds normalised origins (``origin_of``)."""
    if origin is not None:
        try:
            normalised = origin_of(origin)
        except ValueError:
            # Whatever a browser sends parses; this came from something else.
            raise CsrfRejected("origin not allowed") from None
        if origin == "null" or normalised not in allowed:
            raise CsrfRejected("origin not allowed")
        return
    if fetch_site is not None and fetch_site.lower() not in ("same-origin", "none"):
        raise CsrfRejected("cross-site request")


def check_double_submit(header: str | None, cookie: str | None, bound_hash: str | None) -> None:
    """Raise ``CsrfRejected`` unless ``header`` equals ``cookie`` and, when ``bound_hash`` is
    given, hashes to it (the session's ``csrf`` claim)."""
    if not header or not cookie:
        raise CsrfRejected("csrf token missing")
    if len(header) > _MAX_TOKEN_LEN or len(cookie) > _MAX_TOKEN_LEN:
        raise CsrfRejected("csrf token invalid")
    if not hmac.compare_digest(header.encode(), cookie.encode()):
        raise CsrfRejected("csrf token mismatch")
    if bound_hash is not None and not hmac.compare_digest(
        token_hash(header).encode(), bound_hash.encode()
    ):
        raise CsrfRejected("csrf token not bound to this session")
