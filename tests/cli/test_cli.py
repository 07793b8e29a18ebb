"""The ``voicegw`` command as a user meets it, run as a real subprocess with a minimal
environment: ``serve`` refuses a bad configuration (exit 2, a message naming the variable, no
traceback); every error is one line on stderr with a non-zero exit; every option has help.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from gateway.cli import main as cli
from gateway.media.audio import build_wav
from providers.events import PCM16_8K
from tests.conftest import UNIT

VOICEGW = Path(sys.executable).parent / "voicegw"
WAV = str(Path(__file__).resolve().parents[1] / "data" / "caller-8k-ulaw.wav")

ENTRY_POINTS = {
    "console-script": [str(VOICEGW)],
    "python-m": [sys.executable, "-m", "gateway.cli"],
}


def serve(tmp_path: Path, env: dict[str, str], how: str = "console-script"):
    # The port is taken by a listening socket: if validation wrongly passed, the server fails
    # to bind at once instead of serving until the timeout.
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        return subprocess.run(
            [*ENTRY_POINTS[how], "serve", "--host", "127.0.0.1", "--port", str(port)],
            env={"VOICEGW_DATA_DIR": str(tmp_path / "data"), **env},
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=30 * UNIT,
            check=False,
        )


@pytest.mark.parametrize("how", sorted(ENTRY_POINTS))
def test_production_with_plain_http_public_url_exits_2(tmp_path, how):
    result = serve(
        tmp_path,
        {
            "VOICEGW_ENV": "production",
            "VOICEGW_PUBLIC_URL": "http://gw.example.com",
            "VOICEGW_CARRIERS": "twilio",
            "VOICEGW_TWILIO_AUTH_TOKEN": "0123456789abcdef0123456789abcdef",
            "VOICEGW_TWILIO_ALLOWLIST": "any",
        },
        how,
    )
    assert result.returncode == 2, result.stderr
    assert "VOICEGW_PUBLIC_URL must use https in production" in result.stderr
    assert "Traceback" not in result.stderr
    assert result.stdout == ""


def test_production_with_nothing_configured_names_every_missing_variable(tmp_path):
    result = serve(tmp_path, {"VOICEGW_ENV": "production"})
    assert result.returncode == 2, result.stderr
    for name in (
        "VOICEGW_PUBLIC_URL",
        "VOICEGW_TWILIO_AUTH_TOKEN",
        "VOICEGW_TWILIO_ALLOWLIST",
        "VOICEGW_TELNYX_PUBLIC_KEY",
        "VOICEGW_TELNYX_API_KEY",
    ):
        assert name in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "data").exists()  # no development keys generated in production


def test_production_secret_is_not_echoed(tmp_path):
    result = serve(
        tmp_path,
        {
            "VOICEGW_ENV": "production",
            "VOICEGW_PUBLIC_URL": "https://gw.example.com",
            "VOICEGW_CARRIERS": "twilio",
            "VOICEGW_TWILIO_AUTH_TOKEN": "dev-leaky-token-value",
            "VOICEGW_TWILIO_ALLOWLIST": "any",
        },
    )
    assert result.returncode == 2
    assert "VOICEGW_TWILIO_AUTH_TOKEN is a development key" in result.stderr
    assert "leaky-token-value" not in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("name", "value"),
    [("VOICEGW_LOG_LEVEL", "verbose"), ("VOICEGW_TELNYX_PUBLIC_KEY", "not-a-key")],
)
def test_unusable_value_exits_2_without_traceback(tmp_path, name, value):
    result = serve(tmp_path, {name: value})
    assert "Traceback" not in result.stderr
    assert result.returncode == 2, result.stderr
    assert name in result.stderr


# -- every command: help texts, --version, one-line errors -----------------------------------


def walk(parser: argparse.ArgumentParser, path: str = "voicegw"):
    """(command path, action) for every action of ``parser`` and its subcommands."""
    for action in parser._actions:
        yield path, action
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from walk(sub, f"{path} {name}")


def test_every_option_of_every_command_has_help():
    missing = [
        f"{path}: {'/'.join(action.option_strings) or action.dest}"
        for path, action in walk(cli.parser())
        if not action.help or action.help == argparse.SUPPRESS
    ]
    # Subcommands listed in their parent's help need a help line too.
    for path, action in walk(cli.parser()):
        if isinstance(action, argparse._SubParsersAction):
            helped = {choice.dest for choice in action._choices_actions if choice.help}
            missing += [f"{path} {name}" for name in action.choices if name not in helped]
    assert missing == []


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out == f"voicegw {importlib.metadata.version('voicegw')}\n"


def run(
    tmp_path: Path, *argv: str, stdin: str | None = None, **env: str
) -> subprocess.CompletedProcess[str]:
    """``voicegw ARGV`` as a user runs it: in ``tmp_path``, no terminal on stdin."""
    return subprocess.run(
        [str(VOICEGW), *argv],
        env={"PATH": os.environ["PATH"], "VOICEGW_DATA_DIR": str(tmp_path / "data"), **env},
        cwd=tmp_path,
        input=stdin or "",
        capture_output=True,
        text=True,
        timeout=30 * UNIT,
        check=False,
    )


def one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert result.stderr.startswith("voicegw: ")
    assert result.stderr.count("\n") == 1, result.stderr
    return result.stderr


@pytest.mark.parametrize("carrier", ["twilio", "telnyx"])
def test_simulate_against_a_stopped_gateway(tmp_path, carrier):
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))  # bound, never listening: connections are refused
        url = f"http://127.0.0.1:{closed.getsockname()[1]}"
        result = run(tmp_path, "simulate", "call", "--carrier", carrier, "--wav", WAV, "--url", url)
    error = one_line_error(result)
    assert f"cannot reach the gateway at {url}" in error
    assert "voicegw serve" in error


def test_simulate_with_a_missing_wav(tmp_path):
    error = one_line_error(run(tmp_path, "simulate", "call", "--wav", "nowhere.wav"))
    assert error == "voicegw: cannot read nowhere.wav: No such file or directory\n"


@pytest.mark.parametrize(
    ("content", "why"),
    [
        (b"not audio at all", "is not a usable WAV file"),
        (build_wav(PCM16_8K, b"\0\0" * 160), "must be 8 kHz mono mu-law"),
    ],
)
def test_simulate_with_a_wav_it_cannot_send(tmp_path, content, why):
    (tmp_path / "caller.wav").write_bytes(content)
    assert why in one_line_error(run(tmp_path, "simulate", "call", "--wav", "caller.wav"))


def test_demo_with_a_missing_wav_stops_before_it_starts(tmp_path):
    result = run(tmp_path, "demo", "--wav", "nowhere.wav")
    assert one_line_error(result) == "voicegw: cannot read nowhere.wav: No such file or directory\n"
    assert result.stdout == ""


def test_a_store_that_does_not_answer_is_one_line(tmp_path):
    result = run(
        tmp_path, "users", "list", VOICEGW_DATABASE_URL="postgresql://postgres@127.0.0.1:1/x"
    )
    assert (
        one_line_error(result) == "voicegw: the store is unavailable (postgres: cannot connect)\n"
    )


def test_users_add_without_a_terminal_asks_for_password_stdin(tmp_path):
    error = one_line_error(run(tmp_path, "users", "add", "alice", "--role", "admin"))
    assert "--password-stdin" in error


# -- serve's human line ------------------------------------------------------------------------


def serve_until_ready(tmp_path: Path) -> tuple[str, str]:
    """``voicegw serve`` in development until it answers ``/readyz``, then SIGTERM:
    (stdout, stderr)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [str(VOICEGW), "serve", "--port", str(port)],
        env={"PATH": os.environ["PATH"], "VOICEGW_DATA_DIR": str(tmp_path / "data")},
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 20 * UNIT
        while proc.poll() is None and time.monotonic() < deadline:
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=UNIT).is_success:
                    break
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=20 * UNIT)
    assert "Traceback" not in err
    return out.replace(str(port), "PORT"), err.replace(str(port), "PORT")


def test_serve_in_development_says_where_the_console_is_and_how_to_add_a_user(tmp_path):
    out, err = serve_until_ready(tmp_path)
    assert err == (
        "voicegw: console at http://127.0.0.1:PORT/console/; no users yet: create one with "
        "`voicegw users add NAME --role admin`\n"
    )
    assert all(line.startswith("{") for line in out.splitlines())  # stdout stays JSON lines


def test_serve_with_a_user_only_says_where_the_console_is(tmp_path):
    added = run(
        tmp_path,
        "users",
        "add",
        "alice",
        "--role",
        "admin",
        "--password-stdin",
        stdin="correct horse battery staple\n",
    )
    assert added.returncode == 0, added.stderr
    _, err = serve_until_ready(tmp_path)
    assert err == "voicegw: console at http://127.0.0.1:PORT/console/\n"
