"""Exceptions of the ``providers`` package.

ProviderError
├── ProtocolError        a frame could not be parsed or violates the protocol
├── BreakerOpen          a circuit breaker refuses calls (defined in ``providers.breakers``)
└── SessionError         an I/O session failed
    ├── ConnectError     could not open or set up the session (counts against the breaker)
    └── SessionClosed    the peer or we closed the session; ``abnormal`` says which kind
"""

from __future__ import annotations


class ProviderError(Exception):
    """Root of every error raised by ``providers``."""


class ProtocolError(ProviderError):
    """A frame could not be parsed. ``reason`` is short and safe to log (no payload text)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class SessionError(ProviderError):
    pass


class ConnectError(SessionError):
    pass


class SessionClosed(SessionError):
    def __init__(self, reason: str = "closed", *, abnormal: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.abnormal = abnormal
