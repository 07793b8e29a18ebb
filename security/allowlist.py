"""Webhook source allowlists and the client address behind trusted reverse proxies.

Pure and synchronous. ``parse_networks`` reads configuration; ``ClientAddressResolver`` finds
the address a request really came from; ``Allowlist`` decides whether that address may call.
"""

from __future__ import annotations

import enum
import functools
import ipaddress
from collections.abc import Iterable, Sequence
from typing import Final

from security.exceptions import ConfigError, Layer, Rejection

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
    """

    __slots__ = ("_trusted",)

    def __init__(self, trusted_proxies: Iterable[IPNetwork] = ()) -> None:
        self._trusted: tuple[IPNetwork, ...] = tuple(
            _normalise_network(network) for network in trusted_proxies
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
        if not forwarded_for or not _contains(self._trusted, peer):
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
