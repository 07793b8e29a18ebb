"""``voicegw agents check``: exit 0/1/2, one line per agent or per problem."""

from __future__ import annotations

import subprocess
import sys

import pytest

from gateway.cli.main import main
from tests.agents.conftest import EXAMPLE, ROOT

CLEAN_ENV = (
    "VOICEGW_AGENTS_FILE",
    "VOICEGW_ENV",
    "OPENAI_API_KEY",
    "DEEPGRAM_API_KEY",
    "GEMINI_API_KEY",
    "VOICEGW_TOOL_MODULES_PATH",
)


@pytest.fixture(autouse=True)
def _environment(monkeypatch):
    for name in CLEAN_ENV:
        monkeypatch.delenv(name, raising=False)
    # The example's Python tool lives beside it, in a directory the operator lists.
    monkeypatch.setenv("VOICEGW_TOOL_MODULES_PATH", str(EXAMPLE.parent))
    monkeypatch.setattr(sys, "path", list(sys.path))


def test_a_handler_outside_the_listed_directories_is_a_problem(capsys, monkeypatch):
    monkeypatch.delenv("VOICEGW_TOOL_MODULES_PATH")
    sys.modules.pop("order_tools", None)
    assert main(["agents", "check", str(EXAMPLE)]) == 1
    err = capsys.readouterr().err
    assert "agents.support.tools[0].handler: cannot import 'order_tools'" in err
    assert "VOICEGW_TOOL_MODULES_PATH" in err


def test_a_valid_file_prints_one_line_per_agent(capsys):
    assert main(["agents", "check", str(EXAMPLE)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out == [
        "support (default): 1 number, providers openai > deepgram > echo, "
        "tools lookup_order, transfer_call, end_call (transfer to billing, sales)",
        "sales: 1 number, providers gemini > echo, tools book_callback, end_call",
    ]


def test_the_file_defaults_to_the_setting(capsys, monkeypatch):
    monkeypatch.setenv("VOICEGW_AGENTS_FILE", str(EXAMPLE))
    assert main(["agents", "check"]) == 0
    assert capsys.readouterr().out.startswith("support (default)")


def test_an_invalid_file_prints_one_line_per_problem(capsys, write):
    path = write('[agents.a]\nproviders = ["echo", "nope"]\ngreting = "x"\n')
    assert main(["agents", "check", str(path)]) == 1
    err = capsys.readouterr().err.splitlines()
    assert err == [
        f"{path}:3: agents.a.greting: unknown key (expected one of "
        + str(sorted(__import__("gateway.agents.loader").agents.loader.AGENT_KEYS))
        + ")",
        f"{path}:2: agents.a.providers[1]: unknown provider 'nope' "
        "(['deepgram', 'echo', 'gemini', 'openai'])",
    ]


def test_production_rules(capsys, monkeypatch):
    assert main(["agents", "check", "--production", str(EXAMPLE)]) == 1
    err = capsys.readouterr().err
    assert "agents.support.providers[0]: 'openai' is not configured (its API key" in err
    assert "'echo' is not configured (echo is not used in production)" in err
    assert "tools[0].url" not in err  # the example's tool URL is https


@pytest.mark.parametrize(
    "argv", [["agents", "check"], ["agents", "check", "/nonexistent/agents.toml"]]
)
def test_usage_errors_exit_2(capsys, argv):
    assert main(argv) == 2
    assert capsys.readouterr().err.startswith("voicegw: ")


def test_as_a_command(tmp_path):
    """The installed entry point, in a fresh process: the handler in the listed directory
    imports."""
    env = {
        "PATH": "/usr/bin:/bin",
        "PYTHONPATH": str(ROOT),
        "HOME": str(tmp_path),
        "VOICEGW_TOOL_MODULES_PATH": str(EXAMPLE.parent),
    }
    ok = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "agents", "check", str(EXAMPLE)],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        check=False,
    )
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.count("\n") == 2
