"""Standard Webhooks signing for the requests the gateway sends: tool calls to the customer's
tool endpoints and call events to ``VOICEGW_EVENTS_URL``.

A signed request carries ``webhook-id``, ``webhook-timestamp`` and ``webhook-signature``:
``v1,`` + base64 HMAC-SHA256 over ``{id}.{timestamp}.{body}`` keyed by the base64-decoded part
of a ``whsec_`` secret. With several secrets (a rotation) the signature header lists one
``v1,...`` per secret, separated by spaces; a verifier accepts any of them.

Pure: no I/O besides reading the installed version for :func:`user_agent`.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import importlib.metadata
import ipaddress
import re
import secrets
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Final
from urllib.parse import urlsplit

from standardwebhooks import Webhook

from security.secret import Secret

__all__ = [
    "MAX_SECRET_BYTES",
    "MIN_SECRET_BYTES",
    "SECRET_PREFIX",
    "Signer",
    "endpoint_breaker_name",
    "new_secret",
    "parse_secrets",
    "secret_bytes",
    "user_agent",
]

SECRET_PREFIX: Final = "whsec_"  # noqa: S105 (the prefix of every Standard Webhooks secret)
MIN_SECRET_BYTES: Final = 24
MAX_SECRET_BYTES: Final = 64
_SEPARATORS: Final = re.compile(r"[\s,]+")
_HOST_CHARS: Final = re.compile(r"[^A-Za-z0-9.-]")


def parse_secrets(value: str, what: str = "secret") -> list[Secret]:
    """The ``whsec_`` secrets in ``value`` (separated by commas or spaces; the first is the
    newest, all sign). Raises ``ValueError`` naming ``what`` and its position (never showing a
    value) when one is malformed: ``whsec_`` then base64 of 24 to 64 random bytes."""
    found: list[Secret] = []
    for i, item in enumerate(part for part in _SEPARATORS.split(value) if part):
        if not item.startswith(SECRET_PREFIX):
            raise ValueError(f"{what} {i + 1} must start with {SECRET_PREFIX!r}")
        try:
            key = base64.b64decode(item.removeprefix(SECRET_PREFIX), validate=True)
        except (binascii.Error, ValueError):
            raise ValueError(f"{what} {i + 1} is not valid base64 after whsec_") from None
        if not MIN_SECRET_BYTES <= len(key) <= MAX_SECRET_BYTES:
            raise ValueError(
                f"{what} {i + 1} must decode to {MIN_SECRET_BYTES} to {MAX_SECRET_BYTES} bytes"
            )
        found.append(Secret(item))
    return found


def secret_bytes(value: str) -> list[bytes]:
    """The key bytes of each ``whsec_`` secret in ``value`` (already checked by
    :func:`parse_secrets`), for comparing secrets; never log them."""
    return [
        base64.b64decode(secret.get().removeprefix(SECRET_PREFIX), validate=True)
        for secret in parse_secrets(value)
    ]


def new_secret() -> str:
    """A fresh ``whsec_`` secret (32 random bytes)."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode()


class Signer:
    """Standard Webhooks signatures with every secret (the first is the newest)."""

    __slots__ = ("_hooks",)

    def __init__(self, keys: Sequence[Secret], what: str = "secret") -> None:
        if not keys:
            raise ValueError(f"at least one {what} is needed to sign requests")
        self._hooks = [Webhook(key.get()) for key in keys]

    @staticmethod
    def message_id() -> str:
        """A new unique message id (the body's ``id`` and the ``webhook-id`` header)."""
        return "msg_" + secrets.token_urlsafe(18)

    def headers(self, msg_id: str, body: bytes, *, now: datetime | None = None) -> dict[str, str]:
        """The ``webhook-*`` headers of message ``msg_id`` carrying ``body``."""
        timestamp = now or datetime.now(UTC)
        return {
            "webhook-id": msg_id,
            "webhook-timestamp": str(int(timestamp.timestamp())),
            "webhook-signature": " ".join(h.sign(msg_id, timestamp, body) for h in self._hooks),
        }


def endpoint_breaker_name(url: str, kind: str) -> str:
    """The breaker of an endpoint the gateway posts to: one per scheme, host, port and path
    (the query is not part of the endpoint), named ``{kind}-{host}-{digest}``. A legal breaker
    name: an IP address is left out (the name is a metric label)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme == "https" else 80)
    endpoint = f"{parts.scheme}://{host}:{port}{parts.path or '/'}"
    digest = hashlib.sha256(endpoint.encode()).hexdigest()[:12]
    try:
        ipaddress.ip_address(host)
    except ValueError:  # a host name: readable in /readyz and the breaker metrics
        return f"{kind}-{_HOST_CHARS.sub('_', host)[:40]}-{digest}"
    return f"{kind}-{digest}"  # an address never becomes a metric label


def user_agent() -> str:
    """``voicegw/{version}``: the ``User-Agent`` of the gateway's signed requests."""
    try:
        version = importlib.metadata.version("voicegw")
    except importlib.metadata.PackageNotFoundError:  # a source tree, not installed
        version = "unknown"
    return f"voicegw/{version}"
