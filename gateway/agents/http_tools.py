"""HTTP tools: the signed request a tool endpoint receives, and reading its answer with a cap.

The request is a ``POST`` of JSON::

    {"type": "tool.call", "id": "msg_...", "call_id": "...", "agent": "support",
     "tool": "lookup_order", "arguments": {...}, "caller": "+1..."}   # caller: send_caller only

signed per the Standard Webhooks specification by ``security.standard_webhooks`` (which the
call events share): ``webhook-id``, ``webhook-timestamp``, ``webhook-signature``, one
``v1,...`` per secret during a rotation.
"""

from __future__ import annotations

from typing import Final

import httpx

from security.secret import Secret
from security.standard_webhooks import (
    MAX_SECRET_BYTES,
    MIN_SECRET_BYTES,
    SECRET_PREFIX,
    Signer,
    endpoint_breaker_name,
    new_secret,
    parse_secrets,
    user_agent,
)

__all__ = [
    "MAX_ANSWER_BYTES",
    "MAX_SECRET_BYTES",
    "MIN_SECRET_BYTES",
    "SECRET_PREFIX",
    "Signer",
    "TooLarge",
    "breaker_name",
    "new_tool_secret",
    "parse_tool_secrets",
    "read_capped",
    "user_agent",
]

MAX_ANSWER_BYTES: Final = 16 * 1024


def parse_tool_secrets(value: str) -> list[Secret]:
    """The ``whsec_`` secrets of ``VOICEGW_TOOLS_SECRET`` (see ``security.standard_webhooks``).
    Raises ``ValueError`` (never showing a value) when one is malformed."""
    return parse_secrets(value, "tool secret")


def new_tool_secret() -> str:
    """A fresh ``whsec_`` secret (32 random bytes)."""
    return new_secret()


def breaker_name(url: str) -> str:
    """The breaker of a tool endpoint (``tool-{host}-{digest}``)."""
    return endpoint_breaker_name(url, "tool")


class TooLarge(Exception):
    """The answer is larger than the cap; reading stopped there."""


async def read_capped(response: httpx.Response, cap: int = MAX_ANSWER_BYTES) -> bytes:
    """The body of a streamed ``response``, or :class:`TooLarge` as soon as it passes ``cap``
    bytes (a declared ``content-length`` over the cap is refused before reading)."""
    declared = response.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > cap:
        raise TooLarge
    body = bytearray()
    async for chunk in response.aiter_raw():
        body += chunk
        if len(body) > cap:
            raise TooLarge
    return bytes(body)
