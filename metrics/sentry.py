"""Sentry error reporting, set up only when a DSN is given, with personal data scrubbed.

Three layers stand between an exception and Sentry:

1. the SDK collects no personal data (``send_default_pii=False``) and never attaches a
   request body (``max_request_body_size="never"``);
2. its ``EventScrubber`` removes, recursively, every field named in Sentry's own denylists
   and in :data:`security.redaction.SENSITIVE_KEYS` (``token``, ``from``, ``to``,
   ``x-twilio-signature``, ...);
3. ``before_send`` and ``before_breadcrumb`` run :func:`security.redaction.redact_value` over
   the whole event: messages, exception values, breadcrumbs, request data, frame variables and
   source lines get phone numbers and emails masked, credentials replaced and client
   addresses hashed; fields named like credentials are replaced whatever their name's case.
"""

from __future__ import annotations

import secrets
import warnings
from collections.abc import Callable, Mapping
from typing import Any, Final

from security.redaction import SENSITIVE_KEYS, redact_value

PRIVACY_OPTIONS: Final[Mapping[str, Any]] = {
    "send_default_pii": False,
    "max_request_body_size": "never",
}
"""The SDK options ``init`` passes that keep personal data out (the security review checks a
running client against them)."""


def scrubber(ip_hash_key: bytes) -> Callable[[Any, Any], Any]:
    """A ``before_send`` / ``before_breadcrumb`` hook: ``(event, hint)`` to the event (or
    breadcrumb) with every value redacted."""

    def scrub(event: Any, hint: Any) -> Any:
        return redact_value(event, ip_key=ip_hash_key)

    return scrub


def denylist() -> list[str]:
    """Sentry's default security and PII denylists plus our sensitive field names."""
    from sentry_sdk.scrubber import DEFAULT_DENYLIST, DEFAULT_PII_DENYLIST

    names = [*DEFAULT_DENYLIST, *DEFAULT_PII_DENYLIST, *SENSITIVE_KEYS]
    return sorted({name.lower() for name in names})


def init(
    dsn: str | None,
    *,
    environment: str,
    release: str | None = None,
    ip_hash_key: bytes | None = None,
    transport: Any = None,
) -> bool:
    """Start the Sentry SDK when ``dsn`` is set (``SENTRY_DSN``); returns whether it did.

    ``ip_hash_key`` keys client-address hashes like the logs do; ``transport`` replaces the
    HTTP transport (tests capture events in memory with it).
    """
    if not dsn:
        return False
    import sentry_sdk
    from sentry_sdk.scrubber import EventScrubber

    scrub = scrubber(ip_hash_key or secrets.token_bytes(32))
    if release is None:
        release = f"voicegw@{_version()}"
    with warnings.catch_warnings():
        # Newer SDKs deprecate the flag in favour of ``data_collection``, which would also
        # turn off the EventScrubber; False is the SDK's default either way.
        warnings.filterwarnings("ignore", "The send_default_pii option", DeprecationWarning)
        sentry_sdk.init(
            dsn=dsn,
            environment=environment,
            release=release,
            **PRIVACY_OPTIONS,
            event_scrubber=EventScrubber(denylist=denylist(), recursive=True),
            before_send=scrub,
            before_send_transaction=scrub,
            before_breadcrumb=scrub,
            transport=transport,
        )
    return True


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("voicegw")
    except PackageNotFoundError:
        return "0+unknown"
