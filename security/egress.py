"""Requests to the customer's endpoints (HTTP tools, call events): which addresses they may
reach.

Synchronous and pure except :class:`SystemResolver` and :func:`endpoint_problems` (which
resolve names). ``EgressPolicy.refusal`` classifies one address: loopback, private (RFC 1918
and the 100.64/10 shared CGNAT space), the cloud metadata addresses, link-local, unique-local,
multicast, unspecified and the other special-purpose ranges are refused, IPv4 embedded in
IPv6 (``::ffff:a.b.c.d``, NAT64 ``64:ff9b::/96``, 6to4 ``2002::/16``) is judged as the IPv4
address it reaches. A network the operator lists (``VOICEGW_ALLOW_PRIVATE_ENDPOINTS``) is
allowed, except unspecified and multicast addresses, which never are; loopback is allowed when
the policy says so (development).

The connection itself is guarded by ``security.egress_http``: it resolves the name once,
checks every answer with this policy and connects to the address it checked.
"""

from __future__ import annotations

import asyncio
import enum
import ipaddress
import socket
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Final, Protocol
from urllib.parse import urlsplit

from security.exceptions import SecurityError

__all__ = [
    "EgressPolicy",
    "EgressRefused",
    "IPAddress",
    "Inspection",
    "Reason",
    "Resolver",
    "SystemResolver",
    "classify",
    "endpoint_problems",
    "host_of",
    "inspect_endpoints",
    "literal_address",
    "literal_refusal",
    "refusal_message",
]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class Reason(enum.StrEnum):
    """Why an address or URL is refused (the ``reason`` label of
    ``voicegw_egress_refused_total``: a closed set)."""

    CLEARTEXT = "cleartext"  # http:// where https:// is required
    UNSPECIFIED = "unspecified"
    LOOPBACK = "loopback"
    METADATA = "metadata"
    LINK_LOCAL = "link_local"
    PRIVATE = "private"
    UNIQUE_LOCAL = "unique_local"
    MULTICAST = "multicast"
    RESERVED = "reserved"


_NEVER: Final = frozenset({Reason.UNSPECIFIED, Reason.MULTICAST})
"""Refused even inside an allowed network: connecting to 0.0.0.0 reaches this host."""


def _table(*rows: tuple[str, Reason]) -> tuple[tuple[IPNetwork, Reason], ...]:
    return tuple((ipaddress.ip_network(cidr), reason) for cidr, reason in rows)


# First match wins: the metadata addresses before link-local and unique-local.
_SPECIAL: Final = _table(
    ("0.0.0.0/8", Reason.UNSPECIFIED),
    ("::/128", Reason.UNSPECIFIED),
    ("127.0.0.0/8", Reason.LOOPBACK),
    ("::1/128", Reason.LOOPBACK),
    ("169.254.169.254/32", Reason.METADATA),  # AWS, GCP, Azure, OpenStack instance metadata
    ("fd00:ec2::254/128", Reason.METADATA),  # AWS instance metadata over IPv6
    ("169.254.0.0/16", Reason.LINK_LOCAL),
    ("fe80::/10", Reason.LINK_LOCAL),
    ("10.0.0.0/8", Reason.PRIVATE),
    ("172.16.0.0/12", Reason.PRIVATE),
    ("192.168.0.0/16", Reason.PRIVATE),
    ("100.64.0.0/10", Reason.PRIVATE),  # shared address space (carrier-grade NAT)
    ("fc00::/7", Reason.UNIQUE_LOCAL),
    ("224.0.0.0/4", Reason.MULTICAST),
    ("ff00::/8", Reason.MULTICAST),
    ("192.0.0.0/24", Reason.RESERVED),  # IETF protocol assignments
    ("192.0.2.0/24", Reason.RESERVED),  # documentation
    ("198.51.100.0/24", Reason.RESERVED),
    ("203.0.113.0/24", Reason.RESERVED),
    ("192.88.99.0/24", Reason.RESERVED),  # 6to4 relay anycast
    ("198.18.0.0/15", Reason.RESERVED),  # benchmarking
    ("240.0.0.0/4", Reason.RESERVED),  # future use, and the broadcast address
    ("::/8", Reason.RESERVED),  # IPv4-compatible and other reserved forms
    ("100::/64", Reason.RESERVED),  # discard
    ("64:ff9b:1::/48", Reason.RESERVED),  # local-use NAT64
    ("2001::/23", Reason.RESERVED),  # IETF protocol assignments (Teredo included)
    ("2001:db8::/32", Reason.RESERVED),  # documentation
    ("3fff::/20", Reason.RESERVED),
    ("fec0::/10", Reason.RESERVED),  # deprecated site-local
)
_NAT64: Final = ipaddress.ip_network("64:ff9b::/96")


def _reached(address: IPAddress) -> IPAddress:
    """The IPv4 address an IPv6 address stands for (mapped, NAT64, 6to4), else itself."""
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return address.ipv4_mapped
        if address in _NAT64:
            return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
        if address.sixtofour is not None:
            return address.sixtofour
    return address


def classify(address: IPAddress) -> Reason | None:
    """The special-purpose range ``address`` belongs to; None for a global unicast address."""
    reached = _reached(address)
    for network, reason in _SPECIAL:
        if reached.version == network.version and reached in network:
            return reason
    # Anything else Python knows is not globally reachable (ranges added after this table).
    return None if reached.is_global else Reason.RESERVED


class EgressRefused(SecurityError):
    """The policy refused a request before it was sent: ``host`` (never the full URL, whose
    query may carry secrets) and ``reason``."""

    def __init__(self, host: str, reason: Reason) -> None:
        super().__init__(f"{host}: {reason}")
        self.host = host
        self.reason = reason


@dataclass(frozen=True, slots=True)
class EgressPolicy:
    """``allowed``: the networks ``VOICEGW_ALLOW_PRIVATE_ENDPOINTS`` lists; ``allow_loopback``:
    this host's loopback is allowed (development); ``https_only``: plain http is refused
    (production)."""

    allowed: tuple[IPNetwork, ...] = ()
    allow_loopback: bool = False
    https_only: bool = True

    @classmethod
    def for_mode(cls, production: bool, allowed: Iterable[IPNetwork] = ()) -> EgressPolicy:
        """Production: strict, https only. Development: loopback and http allowed too."""
        return cls(tuple(allowed), allow_loopback=not production, https_only=production)

    def refusal(self, address: IPAddress) -> Reason | None:
        """Why ``address`` may not be reached; None when it may."""
        reason = classify(address)
        if reason is None:
            return None
        if reason in _NEVER:
            return reason
        if reason is Reason.LOOPBACK and self.allow_loopback:
            return None
        if self.allows(address):
            return None
        return reason

    def allows(self, address: IPAddress) -> bool:
        """Whether an allowed network holds ``address`` (or the IPv4 address it stands for)."""
        candidates = {address, _reached(address)}
        return any(
            candidate.version == network.version and candidate in network
            for candidate in candidates
            for network in self.allowed
        )

    def scheme_refusal(self, scheme: str) -> Reason | None:
        """Why a URL of ``scheme`` may not be requested; None when it may."""
        if scheme == "https" or (scheme == "http" and not self.https_only):
            return None
        return Reason.CLEARTEXT


def host_of(url: str) -> str:
    """The host name of ``url`` (lower case, no brackets), '' when it has none."""
    try:
        return urlsplit(url).hostname or ""
    except ValueError:
        return ""


def literal_address(host: str) -> IPAddress | None:
    """``host`` as an IP address when it is one (brackets and an IPv6 zone allowed)."""
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None


def literal_refusal(policy: EgressPolicy, url: str) -> tuple[Reason, str] | None:
    """Why ``policy`` refuses ``url`` without resolving anything (its scheme, or an IP-literal
    host in a refused range) and the host it names; None when only the address a name
    resolves to can tell."""
    host = host_of(url)
    if (reason := policy.scheme_refusal(urlsplit(url).scheme)) is not None:
        return reason, host
    address = literal_address(host)
    if address is not None and (reason := policy.refusal(address)) is not None:
        return reason, host
    return None


class Resolver(Protocol):
    """Names to addresses: the seam the guarded connection resolves through."""

    async def resolve(self, host: str, port: int) -> Sequence[IPAddress]:
        """Every address of ``host`` (raises ``OSError`` when it has none)."""
        ...


class SystemResolver:
    """The operating system's resolver (``getaddrinfo`` in the event loop's executor)."""

    async def resolve(self, host: str, port: int) -> Sequence[IPAddress]:
        infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
        found: list[IPAddress] = []
        for _family, _type, _proto, _name, sockaddr in infos:
            address = ipaddress.ip_address(sockaddr[0])
            if address not in found:
                found.append(address)
        if not found:
            raise OSError(f"{host} has no address")
        return found


def refusal_message(label: str, host: str, reason: Reason, address: str | None = None) -> str:
    """One line naming the setting or tool (``label``), the host and why it is refused."""
    if reason is Reason.CLEARTEXT:
        return f"{label}: must use https:// in production (host {host})"
    where = f"{host} is" if address is None or address == host else f"{host} resolves to {address},"
    return (
        f"{label}: {where} a {reason.replace('_', '-')} address, refused (list its network in "
        "VOICEGW_ALLOW_PRIVATE_ENDPOINTS if the endpoint really is there)"
    )


@dataclass(frozen=True, slots=True)
class Inspection:
    """One endpoint as the policy sees it now. ``problem``: the one-line refusal (None when
    allowed); ``special``: it reaches a non-public address the policy allows (a listed network,
    or loopback in development); ``unresolved``: its name did not resolve."""

    label: str
    cleartext: bool
    problem: str | None = None
    special: bool = False
    unresolved: bool = False


async def inspect_endpoints(
    policy: EgressPolicy,
    endpoints: Iterable[tuple[str, str]],
    resolver: Resolver,
    *,
    timeout_s: float,
) -> list[Inspection]:
    """Check each ``(label, url)`` now, all at once (a resolver that does not answer costs
    ``timeout_s`` in all): its scheme, its host if an IP literal, and every address its name
    resolves to. In the order of ``endpoints``."""

    async def inspect(label: str, url: str) -> Inspection:
        cleartext = urlsplit(url).scheme != "https"
        if (refused := literal_refusal(policy, url)) is not None:
            return Inspection(label, cleartext, refusal_message(label, refused[1], refused[0]))
        host = host_of(url)
        literal = literal_address(host)
        if literal is not None:
            addresses: Sequence[IPAddress] = [literal]
        elif not host:
            return Inspection(label, cleartext)
        else:
            try:
                async with asyncio.timeout(timeout_s):
                    addresses = await resolver.resolve(host, urlsplit(url).port or 443)
            except (OSError, TimeoutError):
                return Inspection(label, cleartext, unresolved=True)
        for address in addresses:
            if (reason := policy.refusal(address)) is not None:
                problem = refusal_message(label, host, reason, str(address))
                return Inspection(label, cleartext, problem)
        special = any(classify(address) is not None for address in addresses)
        return Inspection(label, cleartext, special=special)

    return list(await asyncio.gather(*(inspect(label, url) for label, url in endpoints)))


async def endpoint_problems(
    policy: EgressPolicy,
    endpoints: Iterable[tuple[str, str]],
    resolver: Resolver,
    *,
    timeout_s: float,
) -> tuple[list[str], list[str]]:
    """The one-line problems of :func:`inspect_endpoints` (refused endpoints) and the labels
    whose names did not resolve (not problems: every connection checks again)."""
    found = await inspect_endpoints(policy, endpoints, resolver, timeout_s=timeout_s)
    return (
        [i.problem for i in found if i.problem is not None],
        [i.label for i in found if i.unresolved],
    )
