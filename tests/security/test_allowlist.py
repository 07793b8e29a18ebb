from __future__ import annotations

import ipaddress

import pytest

from security.allowlist import (
    ANY,
    TELNYX_WEBHOOK_RANGES,
    Allowlist,
    ClientAddressResolver,
    parse_address,
    parse_networks,
    public_span,
    too_wide,
)
from security.exceptions import ConfigError, Layer, Rejection

PROXIES = parse_networks("10.0.0.0/8, fd00::/8")
assert not isinstance(PROXIES, type(ANY))
RESOLVER = ClientAddressResolver(PROXIES)


def ip(text: str):
    return ipaddress.ip_address(text)


# -- parsing ---------------------------------------------------------------------------------


def test_parse_mixed_list():
    networks = parse_networks("192.0.2.0/24, 2001:db8::/32 198.51.100.7\n::1")
    assert [str(n) for n in networks] == [
        "192.0.2.0/24",
        "2001:db8::/32",
        "198.51.100.7/32",
        "::1/128",
    ]


def test_parse_iterable():
    assert parse_networks(["192.0.2.0/24", "10.0.0.0/8,10.1.0.0/16"]) == (
        ipaddress.ip_network("192.0.2.0/24"),
        ipaddress.ip_network("10.0.0.0/8"),
        ipaddress.ip_network("10.1.0.0/16"),
    )


@pytest.mark.parametrize("spec", ["any", "ANY", " any "])
def test_any_keyword(spec):
    assert parse_networks(spec) is ANY


@pytest.mark.parametrize("spec", ["", "  ", ",", []])
def test_empty_is_not_any(spec):
    networks = parse_networks(spec)
    assert networks == ()
    assert not Allowlist(networks).allows(ip("192.0.2.1"))


@pytest.mark.parametrize(
    "spec",
    ["any, 10.0.0.0/8", "10.0.0.1/8", "300.0.0.0/8", "10.0.0.0/33", "example.com", "10.0.0.0/8x"],
)
def test_bad_entries_are_config_errors(spec):
    with pytest.raises(ConfigError) as info:
        parse_networks(spec, setting="VOICEGW_WEBHOOK_ALLOWLIST")
    assert "VOICEGW_WEBHOOK_ALLOWLIST" in str(info.value)


def test_ipv4_mapped_network_is_normalised():
    assert parse_networks("::ffff:192.0.2.0/120") == (ipaddress.ip_network("192.0.2.0/24"),)


def test_telnyx_ranges_parse():
    networks = parse_networks(TELNYX_WEBHOOK_RANGES)
    assert isinstance(networks, tuple) and len(networks) == len(TELNYX_WEBHOOK_RANGES)
    assert Allowlist(networks).allows(ip("192.76.120.130"))


@pytest.mark.parametrize(
    "text",
    [
        "",
        " 1.2.3.4",
        "1.2.3.4:80",
        "[::1]",
        "fe80::1%eth0",
        "1.2.3",
        "x" * 100,
        "\u0661.\u0662.\u0663.\u0664",
    ],
)
def test_parse_address_is_strict(text):
    with pytest.raises(ValueError):
        parse_address(text)


def test_parse_address_unmaps_ipv4():
    assert parse_address("::ffff:192.0.2.1") == ip("192.0.2.1")


# -- allowlist -------------------------------------------------------------------------------


def test_allowlist_allows_and_refuses():
    allowlist = Allowlist(parse_networks("192.0.2.0/24, 2001:db8::/32"))
    allowlist.check(ip("192.0.2.200"))
    allowlist.check(ip("2001:db8::42"))
    for outside in ("192.0.3.1", "2001:db9::1", "10.0.0.1", "::1"):
        with pytest.raises(Rejection) as info:
            allowlist.check(ip(outside))
        assert (info.value.layer, info.value.status) == (Layer.ALLOWLIST, 403)
        assert info.value.reason == "source not allowed"


def test_allowlist_matches_ipv4_mapped_addresses():
    Allowlist(parse_networks("192.0.2.0/24")).check(ip("::ffff:192.0.2.5"))


def test_allowlist_any():
    allowlist = Allowlist(ANY)
    assert allowlist.allows_any
    allowlist.check(ip("203.0.113.1"))
    allowlist.check(ip("2001:db8::1"))
    assert repr(allowlist) == "Allowlist(ANY)"


# -- client address --------------------------------------------------------------------------


def test_untrusted_peer_is_the_client_whatever_it_forwards():
    assert RESOLVER.resolve("203.0.113.9", ["192.0.2.1"]) == ip("203.0.113.9")


def test_no_proxies_configured_ignores_forwarded_for():
    assert ClientAddressResolver().resolve("10.0.0.1", ["192.0.2.1"]) == ip("10.0.0.1")


def test_trusted_peer_without_header_is_the_client():
    assert RESOLVER.resolve("10.0.0.1", []) == ip("10.0.0.1")


def test_trusted_peer_right_most_entry():
    assert RESOLVER.resolve("10.0.0.1", ["192.0.2.1"]) == ip("192.0.2.1")


def test_forged_left_most_entry_is_ignored():
    # The client wrote "192.76.120.130" itself; our proxy appended the real address.
    assert RESOLVER.resolve("10.0.0.1", ["192.76.120.130, 203.0.113.9"]) == ip("203.0.113.9")


def test_chain_of_trusted_proxies_is_skipped():
    header = ["198.51.100.1, 203.0.113.9, 10.1.1.1, 10.2.2.2"]
    assert RESOLVER.resolve("10.0.0.1", header) == ip("203.0.113.9")


def test_repeated_headers_are_joined_in_order():
    headers = ["198.51.100.1", "203.0.113.9, 10.1.1.1"]
    assert RESOLVER.resolve("10.0.0.1", headers) == ip("203.0.113.9")


def test_all_hops_trusted_gives_the_left_most_proxy():
    assert RESOLVER.resolve("10.0.0.1", ["10.3.3.3, 10.2.2.2"]) == ip("10.3.3.3")


def test_ipv6_peer_and_chain():
    header = ["2001:db8::dead, 2001:db8::beef, fd00::2"]
    assert RESOLVER.resolve("fd00::1", header) == ip("2001:db8::beef")


def test_ipv4_mapped_peer_is_trusted_and_entries_unmapped():
    assert RESOLVER.resolve("::ffff:10.0.0.1", ["::ffff:192.0.2.7"]) == ip("192.0.2.7")


@pytest.mark.parametrize(
    "header",
    [
        ["192.0.2.1, garbage"],
        ["192.0.2.1:1234"],
        ["[2001:db8::1]"],
        ["unknown"],
        ["192.0.2.1,,10.1.1.1"],
        [""],
        [", ".join(["10.1.1.1"] * 40)],
    ],
)
def test_malformed_walked_entries_are_400(header):
    with pytest.raises(Rejection) as info:
        RESOLVER.resolve("10.0.0.1", header)
    assert (info.value.layer, info.value.status) == (Layer.REQUEST, 400)


def test_entries_left_of_the_client_are_not_parsed():
    # Garbage the client prepends never matters, because the walk stops before it.
    assert RESOLVER.resolve("10.0.0.1", ["garbage, 203.0.113.9"]) == ip("203.0.113.9")


@pytest.mark.parametrize("peer", ["", "testclient", "1.2.3.4:5"])
def test_malformed_peer_is_400(peer):
    with pytest.raises(Rejection) as info:
        RESOLVER.resolve(peer, [])
    assert info.value.status == 400


def test_allowlist_repr_lists_networks():
    assert repr(Allowlist(parse_networks("192.0.2.0/24"))) == "Allowlist(['192.0.2.0/24'])"


# -- address space covered (issue 15, item 13) --------------------------------------------------


def nets(*specs: str):
    return [ipaddress.ip_network(s) for s in specs]


@pytest.mark.parametrize(
    "specs",
    [
        ("0.0.0.0/0",),
        ("0.0.0.0/1", "128.0.0.0/1"),
        ("::ffff:0:0/96",),  # every IPv4 address, IPv4-mapped
        ("::/0",),
        ("2.0.0.0/8", "3.0.0.0/8"),
        ("2000::/3",),
        ("2001:db8::/31",),
    ],
)
def test_networks_as_wide_as_a_wildcard(specs):
    assert too_wide(nets(*specs)) is not None


@pytest.mark.parametrize(
    "specs",
    [
        ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "fc00::/7"),
        ("3.0.0.0/8",),  # one /8 of public space: the limit itself
        ("3.0.0.0/8", "3.1.0.0/16"),  # overlaps are counted once
        ("2001:db8::/32",),
        ("::ffff:192.0.2.0/120",),
        (),
    ],
)
def test_specific_or_private_networks_are_not(specs):
    assert too_wide(nets(*specs)) is None


def test_public_span_counts_each_family_once():
    assert public_span(nets("0.0.0.0/1", "128.0.0.0/1")) == public_span(nets("0.0.0.0/0"))
    assert public_span(nets("10.0.0.0/8")) == (0, 0)
    assert public_span(nets("192.0.2.0/24", "192.0.2.128/25")) == (256, 0)


# -- a proxy on this host nobody declared (issue 15, item 14) -----------------------------------


def test_forwarded_requests_from_an_untrusted_loopback_peer_are_noted_and_logged_once(caplog):
    from metrics.registry import REGISTRY

    def counted() -> float:
        return REGISTRY.get_sample_value("voicegw_untrusted_forwarded_requests_total") or 0.0

    resolver = ClientAddressResolver()
    before = counted()
    with caplog.at_level("WARNING", logger="security.allowlist"):
        for _ in range(3):
            assert resolver.resolve("127.0.0.1", ["198.51.100.9"]) == ip("127.0.0.1")
        assert resolver.resolve("::1", ["198.51.100.9"]) == ip("::1")
    assert resolver.untrusted_forwarded == 4
    assert counted() == before + 4
    (record,) = [r for r in caplog.records if "X-Forwarded-For" in r.getMessage()]
    assert "198.51.100.9" not in record.getMessage() and "127.0.0.1/32" in record.getMessage()
    assert resolver.forwarded_by_untrusted_loopback("127.0.0.1", ["198.51.100.9"])


@pytest.mark.parametrize(
    ("trusted", "peer", "forwarded"),
    [
        ((), "127.0.0.1", []),  # a local client without the header
        ((), "203.0.113.7", ["198.51.100.9"]),  # a remote peer: its header is ignored anyway
        (("127.0.0.1/32",), "127.0.0.1", ["198.51.100.9"]),  # the local proxy is declared
    ],
)
def test_other_requests_are_not_noted(trusted, peer, forwarded):
    resolver = ClientAddressResolver(nets(*trusted))
    resolver.resolve(peer, forwarded)
    assert resolver.untrusted_forwarded == 0
    assert not resolver.forwarded_by_untrusted_loopback(peer, forwarded)
