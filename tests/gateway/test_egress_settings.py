"""The customer's endpoints at start-up: VOICEGW_EVENTS_URL and tool URLs in refused ranges stop
the gateway with one line naming them, VOICEGW_ALLOW_PRIVATE_ENDPOINTS opens a network, and in
production the names are resolved once at start-up (a name that does not resolve is no
reason to refuse: each connection checks again)."""

from __future__ import annotations

import ipaddress
import logging
import os
import textwrap

import pytest

from gateway.agents.directory import check_endpoints, open_directory
from gateway.agents.http_tools import new_tool_secret
from gateway.settings import Env, Settings, SettingsError
from security.egress import Reason
from security.secret import Secret
from tests.gateway.test_settings import EVENTS_SECRET, problems, production_env
from tests.resolver import TableResolver

REFUSED = [
    ("127.0.0.1", "loopback"),
    ("10.1.2.3", "private"),
    ("100.64.0.7", "private"),
    ("169.254.169.254", "metadata"),
    ("[::1]", "loopback"),
    ("[fd00::1]", "unique-local"),
    ("[::ffff:127.0.0.1]", "loopback"),
]


@pytest.mark.parametrize(("host", "kind"), REFUSED)
def test_production_refuses_an_events_url_in_a_refused_range(tmp_path, host, kind):
    env = production_env(
        tmp_path,
        VOICEGW_EVENTS_URL=f"https://{host}/hooks?token=secret-in-query",
        VOICEGW_EVENTS_SECRET=EVENTS_SECRET,
    )
    message = problems(env)
    (line,) = [line for line in message.splitlines() if "VOICEGW_EVENTS_URL" in line]
    assert f"a {kind} address, refused" in line
    assert "VOICEGW_ALLOW_PRIVATE_ENDPOINTS" in line
    assert "secret-in-query" not in message


def test_a_listed_network_is_allowed_and_wide_lists_are_refused(tmp_path):
    env = production_env(
        tmp_path,
        VOICEGW_EVENTS_URL="https://10.1.2.3/hooks",
        VOICEGW_EVENTS_SECRET=EVENTS_SECRET,
        VOICEGW_ALLOW_PRIVATE_ENDPOINTS="10.1.0.0/16, fd00::/64",
    )
    s = Settings.from_env(env)
    assert s.allow_private_endpoints == (
        ipaddress.ip_network("10.1.0.0/16"),
        ipaddress.ip_network("fd00::/64"),
    )
    assert s.egress.refusal(ipaddress.ip_address("10.1.9.9")) is None
    assert s.egress.refusal(ipaddress.ip_address("10.2.0.1")) is Reason.PRIVATE
    assert s.egress.refusal(ipaddress.ip_address("127.0.0.1")) is Reason.LOOPBACK
    env["VOICEGW_ALLOW_PRIVATE_ENDPOINTS"] = "0.0.0.0/0"
    assert "VOICEGW_ALLOW_PRIVATE_ENDPOINTS covers about 2^" in problems(env)
    env["VOICEGW_ALLOW_PRIVATE_ENDPOINTS"] = "any"
    assert "VOICEGW_ALLOW_PRIVATE_ENDPOINTS must list CIDR networks" in problems(env)
    env["VOICEGW_ALLOW_PRIVATE_ENDPOINTS"] = "10.1.0.0/16, nonsense"
    assert "'nonsense' is not a CIDR network" in problems(env)


def test_development_allows_loopback_and_refuses_the_rest():
    s = Settings.from_env(
        {"VOICEGW_EVENTS_URL": "http://[::1]:9009/e", "VOICEGW_EVENTS_SECRET": EVENTS_SECRET}
    )
    assert s.egress.allow_loopback and not s.egress.https_only
    message = problems(
        {
            "VOICEGW_EVENTS_URL": "http://169.254.169.254/e",
            "VOICEGW_EVENTS_SECRET": EVENTS_SECRET,
        }
    )
    assert "VOICEGW_EVENTS_URL: 169.254.169.254 is a metadata address" in message


def agents_file(tmp_path, url: str, provider: str = "echo"):
    path = tmp_path / "agents.toml"
    path.write_text(
        textwrap.dedent(
            f"""
            [agents.support]
            providers = ["{provider}"]

            [[agents.support.tools]]
            name = "lookup_order"
            description = "Find an order"
            url = "{url}"
            """
        )
    )
    os.chmod(path, 0o600)
    return path


@pytest.mark.parametrize(("host", "kind"), REFUSED)
def test_a_tool_url_in_a_refused_range_stops_start_up(tmp_path, host, kind):
    path = agents_file(tmp_path, f"http://{host}:8080/tools")
    settings = Settings(agents_file=path, tools_secrets=Secret(new_tool_secret()))
    if kind == "loopback":  # development allows this host's loopback
        assert open_directory(settings).book.get("support") is not None
        return
    with pytest.raises(SettingsError) as info:
        open_directory(settings)
    (line,) = [line for line in str(info.value).splitlines() if "lookup_order" in line]
    assert f"agents.support.tools.lookup_order: {host.strip('[]')} is a {kind} address" in line


async def test_production_resolves_the_endpoints_at_start_up(tmp_path):
    path = agents_file(tmp_path, "https://orders.example.test/tools", provider="openai")
    settings = Settings(
        env=Env.PRODUCTION,
        providers=("openai",),
        openai_api_key=Secret("sk-test"),
        agents_file=path,
        tools_secrets=Secret(new_tool_secret()),
        events_url="https://hooks.example.test/events",
        allow_private_endpoints=(ipaddress.ip_network("10.9.0.0/16"),),
    )
    book = open_directory(settings).book  # the literal checks pass: these are names
    resolver = TableResolver(orders_example_test="93.184.215.14", hooks_example_test="10.9.0.1")
    await check_endpoints(settings, book, resolver)  # public, and an allowed private network
    resolver.answers["orders.example.test"] = "93.184.215.14,169.254.169.254"
    resolver.answers["hooks.example.test"] = "10.8.0.1"
    with pytest.raises(SettingsError) as info:
        await check_endpoints(settings, book, resolver)
    lines = str(info.value).splitlines()[1:]
    assert lines == [
        "  - agents.support.tools.lookup_order: orders.example.test resolves to 169.254.169.254, "
        "a metadata address, refused (list its network in VOICEGW_ALLOW_PRIVATE_ENDPOINTS if "
        "the endpoint really is there)",
        "  - VOICEGW_EVENTS_URL: hooks.example.test resolves to 10.8.0.1, a private address, "
        "refused (list its network in VOICEGW_ALLOW_PRIVATE_ENDPOINTS if the endpoint really "
        "is there)",
    ]


async def test_localhost_is_refused_through_the_system_resolver():
    settings = Settings(env=Env.PRODUCTION, events_url="https://localhost:8443/events")
    with pytest.raises(SettingsError) as info:
        await check_endpoints(settings, _empty_book())
    assert "VOICEGW_EVENTS_URL: localhost resolves to" in str(info.value)
    assert "a loopback address" in str(info.value)


async def test_a_name_that_does_not_resolve_does_not_stop_start_up(caplog):
    settings = Settings(env=Env.PRODUCTION, events_url="https://nowhere.example.test/events")
    with caplog.at_level(logging.WARNING):
        await check_endpoints(settings, _empty_book(), TableResolver())
    assert "VOICEGW_EVENTS_URL did not resolve at start-up" in caplog.text


def _empty_book():
    from gateway.agents import built_in_book

    return built_in_book(Settings())
