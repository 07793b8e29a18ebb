"""The guarded HTTP client for requests to the customer's endpoints (tools, call events).

:func:`egress_client` is an ``httpx.AsyncClient`` whose connections go through
:class:`GuardedBackend`, an ``httpcore`` network backend: for each new connection it resolves
the host once (through a :class:`~security.egress.Resolver`), checks every answer with the
:class:`~security.egress.EgressPolicy` and connects to an address it checked. TLS still
verifies the certificate against the host name (``httpcore`` passes it as the server name), and
the ``Host`` header stays the name, so a DNS answer that changes between the check and the
connection (rebinding) never reaches a refused address. A refused request raises
:class:`~security.egress.EgressRefused` before anything is sent and counts in
``voicegw_egress_refused_total{target, reason}``; the log names the host, never the URL.

The client follows no redirects, reads no proxy from the environment and verifies TLS.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Iterable
from typing import Final

import httpcore
import httpx

from metrics.registry import EGRESS_REFUSED
from security.egress import (
    EgressPolicy,
    EgressRefused,
    Reason,
    Resolver,
    SystemResolver,
    literal_address,
)

__all__ = ["TARGETS", "EgressTransport", "GuardedBackend", "egress_client", "record_refusal"]

log = logging.getLogger("voicegw.egress")

TARGETS: Final = ("tool", "events")
"""The ``target`` label values: who made the request."""
LIMITS: Final = httpx.Limits(max_connections=100, max_keepalive_connections=20)


def record_refusal(target: str, host: str, reason: Reason) -> None:
    """Count and log a refusal (the host only: a URL's path and query may carry secrets)."""
    EGRESS_REFUSED.labels(target, reason.value).inc()
    log.warning("egress refused: %s request to %s (%s)", target, host, reason.value)


class GuardedBackend(httpcore.AsyncNetworkBackend):
    """Resolves, checks and connects: the only way the egress client reaches the network."""

    def __init__(
        self,
        policy: EgressPolicy,
        *,
        target: str,
        resolver: Resolver | None = None,
        inner: httpcore.AsyncNetworkBackend | None = None,
    ) -> None:
        if target not in TARGETS:
            raise ValueError(f"target must be one of {TARGETS}")
        self.policy = policy
        self.target = target
        self.resolver: Resolver = resolver or SystemResolver()
        self._inner = inner or httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109 (httpcore's interface)
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        name = host.strip("[]")
        literal = literal_address(name)
        if literal is not None:
            addresses = [literal]
        else:
            try:
                async with asyncio.timeout(timeout):
                    addresses = list(await self.resolver.resolve(name, port))
            except TimeoutError as exc:
                raise httpcore.ConnectTimeout(f"{name} did not resolve in time") from exc
            except OSError as exc:
                raise httpcore.ConnectError(f"{name} did not resolve") from exc
            if not addresses:
                raise httpcore.ConnectError(f"{name} did not resolve")
        # Every answer, not only the one used: a name that can lead inside is refused.
        for address in addresses:
            if (reason := self.policy.refusal(address)) is not None:
                record_refusal(self.target, name, reason)
                raise EgressRefused(name, reason)
        failure: httpcore.ConnectError | None = None
        for address in addresses:
            try:
                return await self._inner.connect_tcp(
                    str(address),
                    port,
                    timeout=timeout,
                    local_address=local_address,
                    socket_options=socket_options,
                )
            except httpcore.ConnectError as exc:
                failure = exc
        assert failure is not None  # noqa: S101 (addresses is not empty)
        raise failure

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,  # noqa: ASYNC109 (httpcore's interface)
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        raise httpcore.ConnectError("the egress client connects over TCP only")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


class EgressTransport(httpx.AsyncHTTPTransport):
    """``httpx``'s transport (request conversion, exception mapping) over a connection pool
    whose network backend is :class:`GuardedBackend`; refuses a scheme the policy refuses
    before the pool sees the request."""

    def __init__(
        self,
        backend: GuardedBackend,
        *,
        verify: ssl.SSLContext | bool = True,
        limits: httpx.Limits = LIMITS,
    ) -> None:
        super().__init__(verify=verify, trust_env=False, limits=limits)
        self.backend = backend
        ssl_context = httpx.create_ssl_context(verify=verify, trust_env=False)
        # The pool httpx builds has the default backend; this one is the same but guarded.
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=ssl_context,
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            http1=True,
            http2=False,
            network_backend=backend,
        )

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if (reason := self.backend.policy.scheme_refusal(request.url.scheme)) is not None:
            record_refusal(self.backend.target, request.url.host, reason)
            raise EgressRefused(request.url.host, reason)
        return await super().handle_async_request(request)


def egress_client(
    policy: EgressPolicy,
    *,
    target: str,
    resolver: Resolver | None = None,
    verify: ssl.SSLContext | bool = True,
    timeout_s: float = 10.0,
) -> httpx.AsyncClient:
    """A client for ``target`` (``tool`` or ``events``) that only reaches what ``policy``
    allows, follows no redirects and verifies TLS (``verify``: a context trusting other
    authorities, for tests)."""
    backend = GuardedBackend(policy, target=target, resolver=resolver)
    return httpx.AsyncClient(
        transport=EgressTransport(backend, verify=verify),
        follow_redirects=False,
        trust_env=False,
        timeout=timeout_s,
    )
