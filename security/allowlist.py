"""Webhook source allowlists and the client address behind trusted reverse proxies.

Synchronous. ``parse_networks`` reads configuration; ``ClientAddressResolver`` finds
the address a request really came from; ``Allowlist`` decides whether that address may call.
"""

from __future__ import annotations

import enum
import functools
import ipaddress
import logging
import math
from collections.abc import Iterable, Sequence
from typing import Final

from metrics.registry import UNTRUSTED_FORWARDED
from security.exceptions import ConfigError, Layer, Rejection

log = logging.getLogger(__name__)

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# Telnyx Call Control webhook (and media stream) source ranges, from the "Webhook IP addresses"
# table of https://developers.telnyx.com/docs/voice/sip-trunking/network-configuration/
# ip-whitelisting (US-Central, US-East, US-West, London, Frankfurt, Amsterdam, Sydney,
# Singapore), plus the "AI Services IP addresses" block on the same page, which Telnyx lists as
# a source of Call Control API callbacks. Telnyx changes these; keep them overridable.
TELNYX_WEBHOOK_RANGES: Final[tuple[str, ...]] = (
    "192.76.120.128/29",
    "192.76.120.136/29",
    "192.76.120.144/29",
    "185.246.41.0/29",
    "185.246.41.8/29",
    "185.246.41.16/29",
    "103.115.244.0/29",
    "103.115.244.8/29",
    "64.16.239.0/24",
)

# Twilio publishes no fixed source ranges for webhooks; its signature is the control.

MAX_FORWARDED_HOPS: Final = 32
"""More ``X-Forwarded-For`` entries than this is refused rather than walked."""


class AnySource(enum.Enum):
    """The explicit ``any`` allowlist: every source is allowed (distinct from an empty list)."""

    ANY = "any"


ANY: Final = AnySource.ANY


def parse_networks(
    spec: str | Iterable[str], *, setting: str = "allowlist"
) -> tuple[IPNetwork, ...] | AnySource:
    """Parse a CIDR list: a comma/whitespace separated string or an iterable of entries.

    Returns ``ANY`` for the single keyword ``any``, an empty tuple for an empty list (nothing
    allowed) and otherwise the networks; a bare address means a single host. Raises
    ``ConfigError`` naming ``setting`` for a malformed entry, for host bits set below the prefix
    (``10.0.0.1/8`` is a typo more often than not) and for ``any`` mixed with networks.
    """
    if isinstance(spec, str):
        entries = spec.replace(",", " ").split()
    else:
        entries = [part for item in spec for part in item.replace(",", " ").split()]
    if any(entry.lower() == "any" for entry in entries):
        if len(entries) != 1:
            raise ConfigError(f"{setting}: 'any' cannot be combined with other networks")
        return ANY
    networks: list[IPNetwork] = []
    for index, entry in enumerate(entries):
        try:
            network = ipaddress.ip_network(entry, strict=True)
        except ValueError:
            raise ConfigError(f"{setting}: entry #{index} is not a valid CIDR network") from None
        networks.append(_normalise_network(network))
    return tuple(networks)


# -- how much of the Internet a list of networks lets in ------------------------------------

MAX_IPV4_SPAN: Final = 2**24
"""Public IPv4 addresses a trusted-proxy list or an allowlist may cover: one /8. A proxy tier
or a carrier's egress lives in a few /24s; a /8 is already a whole provider's allocation, and
anything wider is a slice of the Internet (``0.0.0.0/1,128.0.0.0/1`` is ``0.0.0.0/0`` spelt
twice). Private-use space is not counted: trusting every RFC 1918 network lets in only
machines inside the operator's own networks."""
MAX_IPV6_SPAN: Final = 2**96
"""Public IPv6 addresses likewise: one /32, what a registry hands a whole ISP (a site gets a
/48, a cloud network a /56)."""
PRIVATE_USE: Final[tuple[IPNetwork, ...]] = tuple(
    ipaddress.ip_network(n)
    for n in (
        "10.0.0.0/8",  # RFC 1918
        "172.16.0.0/12",
        "192.168.0.0/16",
        "100.64.0.0/10",  # RFC 6598 carrier-grade NAT
        "127.0.0.0/8",  # loopback
        "169.254.0.0/16",  # link-local
        "fc00::/7",  # unique local
        "fe80::/10",  # link-local
        "::1/128",
    )
)


def public_span(networks: Iterable[IPNetwork]) -> tuple[int, int]:
    """How many public (not private-use) IPv4 and IPv6 addresses ``networks`` cover together:
    overlaps counted once, IPv4-mapped IPv6 networks (``::ffff:0:0/96``) counted as IPv4."""
    v4: list[ipaddress.IPv4Network] = []
    v6: list[ipaddress.IPv6Network] = []
    for network in networks:
        network = _normalise_network(network)
        if isinstance(network, ipaddress.IPv4Network):
            v4.append(network)
            continue
        mapped = ipaddress.IPv6Network("::ffff:0:0/96")
        if network.overlaps(mapped):  # wider than the mapped block: it holds all of IPv4
            v4.append(ipaddress.IPv4Network("0.0.0.0/0"))
        v6.append(network)
    return (
        _public_count(ipaddress.collapse_addresses(v4)),
        _public_count(ipaddress.collapse_addresses(v6)),
    )


def _public_count(disjoint: Iterable[IPNetwork]) -> int:
    total = 0
    for network in disjoint:
        total += network.num_addresses
        for private in PRIVATE_USE:
            # Two CIDR blocks are nested or disjoint; the private blocks are disjoint.
            if private.version == network.version and network.overlaps(private):
                total -= min(network.num_addresses, private.num_addresses)
    return total


def too_wide(networks: Iterable[IPNetwork]) -> str | None:
    """Why ``networks`` are as good as a wildcard (e.g. "covers 2^31 public IPv4 addresses"),
    or None when they stay within ``MAX_IPV4_SPAN`` / ``MAX_IPV6_SPAN`` public addresses."""
    v4, v6 = public_span(networks)
    if v4 > MAX_IPV4_SPAN:
        return f"covers about 2^{round(math.log2(v4))} public IPv4 addresses (more than a /8)"
    if v6 > MAX_IPV6_SPAN:
        return f"covers about 2^{round(math.log2(v6))} public IPv6 addresses (more than a /32)"
    return None


def is_loopback_host(host: str | None) -> bool:
    """Whether a URL's host name never leaves this machine: ``localhost`` or a loopback
    address (IPv4 127/8, IPv6 ``::1``)."""
    if not host:
        return False
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@functools.lru_cache(maxsize=4096)
def parse_address(text: str) -> IPAddress:
    """Parse one IP address, mapping IPv4-mapped IPv6 (``::ffff:a.b.c.d``) to IPv4.

    Raises ``ValueError`` when ``text`` is not exactly an address (no port, no brackets, no
    zone, no surrounding space). Results are cached: webhooks come from few addresses, and
    the addresses are immutable.
    """
    if not text or len(text) > 45 or not text.isascii() or "%" in text:
        raise ValueError("not an IP address")
    address = ipaddress.ip_address(text)
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


DEFAULT_IPV6_CLIENT_PREFIX: Final = 64


def client_network(address: IPAddress, ipv6_prefix: int = DEFAULT_IPV6_CLIENT_PREFIX) -> IPNetwork:
    """The network one client is taken to control: an IPv4 address alone, an IPv6 address's
    ``/ipv6_prefix`` (32-128). An IPv6 end site is usually given a /64 or more, so keying a
    per-client limit on the full address lets a client rotate through 2**64 of them."""
    if not 32 <= ipv6_prefix <= 128:
        raise ValueError("the IPv6 client prefix must be 32-128")
    if isinstance(address, ipaddress.IPv4Address):
        return ipaddress.IPv4Network(address)
    return ipaddress.IPv6Network((address, ipv6_prefix), strict=False)


def _normalise_network(network: IPNetwork) -> IPNetwork:
    if (
        isinstance(network, ipaddress.IPv6Network)
        and network.prefixlen >= 96
        and network.network_address.ipv4_mapped is not None
    ):
        mapped = network.network_address.ipv4_mapped
        return ipaddress.IPv4Network(f"{mapped}/{network.prefixlen - 96}")
    return network


def _contains(networks: Sequence[IPNetwork], address: IPAddress) -> bool:
    # ``in`` is False (not an error) across address families.
    return any(address in network for network in networks)


class ClientAddressResolver:
    """Finds the client address of a request that may have passed trusted reverse proxies.

    When the socket peer is a trusted proxy, ``X-Forwarded-For`` is walked right to left,
    skipping entries that are themselves trusted proxies; the first untrusted entry is the
    client. Entries left of it were written by the client and are never believed. A peer that
    is not a trusted proxy is the client, whatever ``X-Forwarded-For`` it sends.

    A loopback peer that sends ``X-Forwarded-For`` without being a trusted proxy is almost
    always a reverse proxy on this host that nobody declared: every client then looks like
    127.0.0.1 (one login-limiter bucket, "local" to loopback-only endpoints). Such requests are
    counted in ``untrusted_forwarded`` (the security review reads it) and in
    ``voicegw_untrusted_forwarded_requests_total``; the first one is logged as a warning.
    """

    __slots__ = ("_trusted", "untrusted_forwarded")

    def __init__(self, trusted_proxies: Iterable[IPNetwork] = ()) -> None:
        self._trusted: tuple[IPNetwork, ...] = tuple(
            _normalise_network(network) for network in trusted_proxies
        )
        self.untrusted_forwarded = 0

    def forwarded_by_untrusted_loopback(self, peer_ip: str, forwarded_for: Sequence[str]) -> bool:
        """Whether a request from ``peer_ip`` carrying ``forwarded_for`` came through an
        undeclared proxy on this host (loopback peer, X-Forwarded-For, peer not trusted)."""
        if not forwarded_for:
            return False
        try:
            peer = parse_address(peer_ip)
        except ValueError:
            return False
        return peer.is_loopback and not _contains(self._trusted, peer)

    def _note_untrusted_forward(self) -> None:
        self.untrusted_forwarded += 1
        UNTRUSTED_FORWARDED.inc()
        if self.untrusted_forwarded == 1:
            log.warning(
                "requests from loopback carry X-Forwarded-For but VOICEGW_TRUSTED_PROXIES does "
                "not list loopback: every client of that proxy looks like this host; set "
                "VOICEGW_TRUSTED_PROXIES=127.0.0.1/32 (the proxy) so client addresses are known"
            )

    def resolve(self, peer_ip: str, forwarded_for: Sequence[str] = ()) -> IPAddress:
        """Return the client address.

        ``forwarded_for`` holds every ``X-Forwarded-For`` header value in arrival order.
        Raises ``Rejection(request, 400)`` for a malformed peer address, a malformed or empty
        entry on the walked path, or an overlong chain.
        """
        try:
            peer = parse_address(peer_ip)
        except ValueError:
            raise Rejection(Layer.REQUEST, "bad client address", 400) from None
        if not forwarded_for:
            return peer
        if not _contains(self._trusted, peer):
            if peer.is_loopback:
                self._note_untrusted_forward()
            return peer
        entries = [entry.strip() for value in forwarded_for for entry in value.split(",")]
        if len(entries) > MAX_FORWARDED_HOPS:
            raise Rejection(Layer.REQUEST, "bad forwarded header", 400)
        client = peer
        for entry in reversed(entries):
            try:
                client = parse_address(entry)
            except ValueError:
                raise Rejection(Layer.REQUEST, "bad forwarded header", 400) from None
            if not _contains(self._trusted, client):
                return client
        # Every hop is a trusted proxy: the left-most one originated the request.
        return client


class Allowlist:
    """Source networks allowed to call a webhook: explicit networks, or ``ANY``."""

    __slots__ = ("_networks",)

    def __init__(self, networks: Iterable[IPNetwork] | AnySource) -> None:
        self._networks: tuple[IPNetwork, ...] | AnySource = (
            networks
            if isinstance(networks, AnySource)
            else tuple(_normalise_network(network) for network in networks)
        )

    @property
    def allows_any(self) -> bool:
        return isinstance(self._networks, AnySource)

    def allows(self, address: IPAddress) -> bool:
        if isinstance(self._networks, AnySource):
            return True
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        return _contains(self._networks, address)

    def check(self, address: IPAddress) -> None:
        """Raise ``Rejection(allowlist, 403)`` unless ``address`` is allowed."""
        if not self.allows(address):
            raise Rejection(Layer.ALLOWLIST, "source not allowed", 403)

    def __repr__(self) -> str:
        if isinstance(self._networks, AnySource):
            return "Allowlist(ANY)"
        return f"Allowlist({[str(network) for network in self._networks]!r})"
