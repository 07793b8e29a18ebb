"""Exceptions raised by the security package.

The tree::

    SecurityError                  root: everything this package raises on purpose
    ├── ConfigError                invalid configuration, found at construction (also ValueError)
    ├── Rejection                  a request failed one layer; carries layer, reason, status
    └── StateUnavailable           a shared-state backend (Redis) failed or timed out

A ``Rejection`` is meant to be turned into an HTTP reply at the I/O boundary: ``status``,
``reason`` (short and safe to show a client) and ``headers`` (for example ``Retry-After``).
Nothing else about the failure is ever sent to the peer.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from types import MappingProxyType


class Layer(enum.StrEnum):
    """The webhook security layer that refused a request, in pipeline order."""

    REQUEST = "request"
    ALLOWLIST = "allowlist"
    FRESHNESS = "freshness"
    SIGNATURE = "signature"
    REPLAY = "replay"
    RATE_LIMIT = "rate_limit"


class SecurityError(Exception):
    """Root of every exception this package raises on purpose."""


class ConfigError(SecurityError, ValueError):
    """Configuration is invalid. The message names the setting, never a secret value."""


class StateUnavailable(SecurityError):
    """A shared-state backend did not answer in time or answered with an error."""


class Rejection(SecurityError):
    """A request was refused by one security layer.

    ``reason`` is short and safe to send to the client; it never contains internals.
    """

    layer: Layer
    reason: str
    status: int
    headers: Mapping[str, str]

    def __init__(
        self,
        layer: Layer,
        reason: str,
        status: int,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(f"{layer}: {reason} ({status})")
        self.layer = layer
        self.reason = reason
        self.status = status
        self.headers = MappingProxyType(dict(headers or {}))
