"""``voicegw serve`` refuses to start on a bad configuration: exit code 2, a message naming the
variable on stderr, no traceback. Run as a real subprocess with a minimal environment."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import UNIT

VOICEGW = Path(sys.executable).parent / "voicegw"

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
