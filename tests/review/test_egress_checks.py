"""The review's egress checks against a production-like deployment: each case changes one
endpoint or setting and flips exactly its check."""

from __future__ import annotations

import dataclasses
import ipaddress
from pathlib import Path

import pytest

from gateway.agents.http_tools import new_tool_secret
from gateway.review.model import Severity, Status
from gateway.settings import Settings
from security.secret import Secret
from tests.review.conftest import not_passing, review_of
from tests.review.test_agents_checks import agents_file

EVENTS_SECRET = Secret(new_tool_secret())


def tool(url: str) -> str:
    return f"""
[[agents.support.tools]]
name = "lookup_order"
description = "Find an order"
url = "{url}"
"""


def with_tool(baseline: Settings, tmp_path: Path, url: str, **changes) -> Settings:
    path = agents_file(tmp_path, tool(url))
    return dataclasses.replace(
        baseline, agents_file=path, tools_secrets=Secret(new_tool_secret()), **changes
    )


def finding(report, check_id: str):
    return next(f for f in report.findings if f.id == check_id)


async def test_public_https_endpoints_pass(baseline: Settings, tmp_path: Path) -> None:
    settings = with_tool(
        baseline,
        tmp_path,
        "https://api.example.com/voice/tools?key=s3cr3t",
        events_url="https://hooks.example.com/e",
        events_secrets=EVENTS_SECRET,
    )
    report = await review_of(settings)
    assert not_passing(report) == {}, report.render()
    assert "2 endpoint(s), all https" in finding(report, "egress.https").finding
    assert "s3cr3t" not in report.render()


async def test_an_endpoint_at_a_metadata_address_fails(baseline: Settings, tmp_path: Path) -> None:
    # The agents file's own check refuses it too; the egress check names the address.
    settings = with_tool(baseline, tmp_path, "https://169.254.169.254/latest/meta-data?x=s3cr3t")
    report = await review_of(settings)
    found = finding(report, "egress.private")
    assert (found.status, found.severity) == (Status.FAIL, Severity.CRITICAL)
    assert "agents.support.tools.lookup_order: 169.254.169.254 is a metadata address" in (
        found.finding
    )
    assert "s3cr3t" not in report.render()


async def test_an_events_url_at_a_private_address_fails(baseline: Settings) -> None:
    settings = dataclasses.replace(
        baseline, events_url="https://[fd00::7]/e", events_secrets=EVENTS_SECRET
    )
    report = await review_of(settings)
    assert not_passing(report) == {"egress.private": Status.FAIL}
    assert "VOICEGW_EVENTS_URL: fd00::7 is a unique-local address" in (
        finding(report, "egress.private").finding
    )


async def test_an_allowed_private_network_is_reported(baseline: Settings) -> None:
    settings = dataclasses.replace(
        baseline,
        events_url="https://10.1.2.3/e",
        events_secrets=EVENTS_SECRET,
        allow_private_endpoints=(ipaddress.ip_network("10.1.0.0/16"),),
    )
    report = await review_of(settings)
    assert not_passing(report) == {"egress.allowed_private": Status.WARN}
    text = finding(report, "egress.allowed_private").finding
    assert "VOICEGW_ALLOW_PRIVATE_ENDPOINTS opens 10.1.0.0/16" in text
    assert "VOICEGW_EVENTS_URL (10.1.2.3)" in text


async def test_plain_http_fails_in_production(baseline: Settings) -> None:
    settings = dataclasses.replace(
        baseline, events_url="http://hooks.example.com/e", events_secrets=EVENTS_SECRET
    )
    report = await review_of(settings)
    assert not_passing(report) == {"egress.https": Status.FAIL}
    assert "VOICEGW_EVENTS_URL" in finding(report, "egress.https").finding


async def test_a_production_start_refuses_an_endpoint_resolving_to_loopback(
    baseline: Settings,
) -> None:
    """``localhost`` is a name (the settings cannot refuse it): the start resolves it (from
    /etc/hosts, no DNS server needed) and refuses before any pool opens."""
    from gateway.app import start_runtime
    from gateway.settings import SettingsError

    settings = dataclasses.replace(
        baseline, events_url="https://localhost:8443/e?token=s3cr3t", events_secrets=EVENTS_SECRET
    )
    with pytest.raises(SettingsError) as refused:
        await start_runtime(settings)
    message = str(refused.value)
    assert "VOICEGW_EVENTS_URL: localhost resolves to" in message
    assert "a loopback address, refused" in message
    assert "s3cr3t" not in message
    runtime = await start_runtime(baseline)  # nothing was left open
    await runtime.stop()
