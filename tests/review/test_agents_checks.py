"""The review's agents checks against a production-like deployment: an agents file that
loads, signed and encrypted tool requests, a file only its owner may write, and in-process
handlers named. Each case changes one thing and flips exactly its check."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from gateway.agents.http_tools import new_tool_secret
from gateway.review.model import Severity, Status
from gateway.settings import Settings
from security.secret import Secret
from tests.review.conftest import not_passing, review_of

NUMBER = "+14155550199"


def agents_file(tmp_path: Path, tool: str = "", mode: int = 0o600) -> Path:
    path = tmp_path / "agents.toml"
    path.write_text(
        f"""
[agents.support]
numbers = ["{NUMBER}"]
providers = ["openai"]
instructions = "You answer the support line."
{tool}
"""
    )
    path.chmod(mode)
    return path


HTTPS_TOOL = """
[[agents.support.tools]]
name = "lookup_order"
description = "Find an order"
url = "https://api.example.com/voice/tools"
"""

HANDLER_TOOL = """
[[agents.support.tools]]
name = "lookup_order"
description = "Find an order"
handler = "review_tools:lookup"
"""


def with_agents(baseline: Settings, path: Path, *, signed: bool = True) -> Settings:
    """``baseline`` with the agents file ``path``; handler modules beside it are listed in
    VOICEGW_TOOL_MODULES_PATH."""
    secret = Secret(new_tool_secret()) if signed else None
    return dataclasses.replace(
        baseline, agents_file=path, tools_secrets=secret, tool_modules_path=(path.parent,)
    )


async def test_a_clean_agents_file_passes_every_check(baseline: Settings, tmp_path: Path) -> None:
    report = await review_of(with_agents(baseline, agents_file(tmp_path, HTTPS_TOOL)))
    assert not_passing(report) == {}, report.render()
    finding = next(f for f in report.findings if f.id == "agents.tools_signed")
    assert "1 tool endpoint(s) receive signed requests" in finding.finding


async def test_an_agents_file_with_problems_fails(baseline: Settings, tmp_path: Path) -> None:
    path = agents_file(tmp_path, 'greting = "typo"')
    report = await review_of(with_agents(baseline, path))
    assert not_passing(report) == {"agents.file": Status.FAIL}, report.render()
    finding = next(f for f in report.findings if f.id == "agents.file")
    assert finding.severity is Severity.CRITICAL
    assert "greting" in finding.finding


async def test_tools_calling_urls_without_a_secret_fail(baseline: Settings, tmp_path: Path):
    path = agents_file(tmp_path, HTTPS_TOOL)
    report = await review_of(with_agents(baseline, path, signed=False))
    assert not_passing(report) == {"agents.tools_signed": Status.FAIL}, report.render()
    finding = next(f for f in report.findings if f.id == "agents.tools_signed")
    assert "support.lookup_order" in finding.finding


async def test_a_plain_http_tool_is_refused_in_production(baseline: Settings, tmp_path: Path):
    # The loader refuses it in production (agents.file); outside production the review warns.
    path = agents_file(tmp_path, HTTPS_TOOL.replace("https://", "http://"))
    report = await review_of(with_agents(baseline, path))
    assert not_passing(report)["agents.file"] is Status.FAIL
    assert "https" in next(f.finding for f in report.findings if f.id == "agents.file")


@pytest.mark.parametrize(("mode", "handler"), [(0o620, False), (0o602, True)])
async def test_an_agents_file_others_may_write_fails(
    baseline: Settings, tmp_path: Path, mode: int, handler: bool
) -> None:
    if handler:
        (tmp_path / "review_tools.py").write_text(
            "async def lookup(arguments, context):\n    return {}\n"
        )
    path = agents_file(tmp_path, HANDLER_TOOL if handler else "", mode=mode)
    report = await review_of(with_agents(baseline, path))
    # The gateway refuses to load such a file (agents.file), and the review says why.
    assert not_passing(report) == {
        "agents.file": Status.FAIL,
        "agents.file_permissions": Status.FAIL,
    }, report.render()
    finding = next(f for f in report.findings if f.id == "agents.file")
    assert "writable by group or others" in finding.finding


async def test_python_handlers_are_named(baseline: Settings, tmp_path: Path) -> None:
    (tmp_path / "review_tools.py").write_text(
        "async def lookup(arguments, context):\n    return {}\n"
    )
    report = await review_of(with_agents(baseline, agents_file(tmp_path, HANDLER_TOOL)))
    assert not_passing(report) == {"agents.handlers": Status.WARN}, report.render()
    finding = next(f for f in report.findings if f.id == "agents.handlers")
    assert "support.lookup_order" in finding.finding


@pytest.mark.parametrize(
    ("line", "shown"),
    [
        ('allowed_destinations = ["+4"]', "allowed_destinations open more than five countries"),
        (
            'allowed_destinations = ["+1", "+44", "+33", "+49", "+34", "+39"]',
            "whole world zone (toll fraud reaches further): support",
        ),
        ('allow_denied_prefixes = ["+1900"]', "the deny list is lifted by: support (+1900)"),
    ],
)
async def test_wide_destinations_and_deny_list_overrides_are_reported(
    baseline: Settings, tmp_path: Path, line: str, shown: str
) -> None:
    report = await review_of(with_agents(baseline, agents_file(tmp_path, line)))
    assert not_passing(report) == {"agents.destinations": Status.WARN}, report.render()
    finding = next(f for f in report.findings if f.id == "agents.destinations")
    assert shown in finding.finding
