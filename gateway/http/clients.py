"""Who a request comes from: the socket peer, or the client a trusted proxy forwarded.

``ClientAddresses`` walks ``X-Forwarded-For`` through ``VOICEGW_TRUSTED_PROXIES`` (the walk is
``security.allowlist.ClientAddressResolver``'s) for any starlette request or WebSocket.
"""

from __future__ import annotations

import ipaddress

from starlette.requests import HTTPConnection

from security.allowlist import ClientAddressResolver
from security.exceptions import Rejection


class ClientAddresses:
    def __init__(self, resolver: ClientAddressResolver) -> None:
        self.resolver = resolver

    def address(self, conn: HTTPConnection) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
        """The client's address: socket peer, or X-Forwarded-For through trusted proxies.
        Raises Rejection for a forwarded chain it cannot walk."""
        peer = conn.client.host if conn.client else ""
        return self.resolver.resolve(peer, conn.headers.getlist("x-forwarded-for"))

    def is_loopback(self, conn: HTTPConnection) -> bool:
        """Whether the client is this host. A request an undeclared reverse proxy on this host
        forwarded (loopback peer, X-Forwarded-For, loopback not a trusted proxy) is not: its
        client is somewhere behind that proxy."""
        try:
            address = self.address(conn)
        except Rejection:
            return False
        peer = conn.client.host if conn.client else ""
        forwarded = conn.headers.getlist("x-forwarded-for")
        return address.is_loopback and not self.resolver.forwarded_by_untrusted_loopback(
            peer, forwarded
        )
