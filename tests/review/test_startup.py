"""In production the review runs when the runtime starts: a critical failure refuses the start
with a message naming the check and the setting that fixes it (``voicegw serve`` exits 2 and
prints it, like a settings refusal); warnings are logged once, without secrets."""

from __future__ import annotations

import dataclasses
import logging
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.app import start_runtime
from gateway.review.startup import StartRefused
from gateway.settings import AllowlistSetting, Settings
from tests.conftest import UNIT

VOICEGW = Path(sys.executable).parent / "voicegw"


def _review_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.getMessage() == "security review finding"]


async def test_a_critical_failure_refuses_the_start(
    baseline: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    settings = dataclasses.replace(baseline, redis_url=None, replicas=3)
    with pytest.raises(StartRefused) as refused:
        await start_runtime(settings)
    message = str(refused.value)
    assert message.startswith("security review refused the start:")
    assert "redis.configured: 3 replicas (VOICEGW_REPLICAS) but no Redis" in message
    assert "fix: VOICEGW_REDIS_URL=rediss://..." in message
    records = [(r.levelno, r.check) for r in _review_records(caplog)]  # type: ignore[attr-defined]
    # Three SQLite stores too: a finding, not a refusal.
    assert records == [(logging.ERROR, "redis.configured"), (logging.WARNING, "store.shared")]
    # Everything the refused runtime opened was closed: the same data starts cleanly now.
    runtime = await start_runtime(baseline)
    await runtime.stop()


async def test_warnings_are_logged_once_and_the_gateway_starts(
    baseline: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    settings = dataclasses.replace(
        baseline, allowlists={**baseline.allowlists, "twilio": AllowlistSetting(any=True)}
    )
    caplog.set_level(logging.WARNING, logger="voicegw.review")
    runtime = await start_runtime(settings)
    try:
        (record,) = _review_records(caplog)
        assert record.levelno == logging.WARNING
        assert (record.check, record.status) == ("allowlist.twilio", "warn")  # type: ignore[attr-defined]
        assert settings.twilio_auth_token is not None
        assert settings.twilio_auth_token.get() not in caplog.text
    finally:
        await runtime.stop()
    assert len(_review_records(caplog)) == 1


async def test_the_production_like_baseline_starts_without_findings(
    baseline: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="voicegw.review")
    runtime = await start_runtime(baseline)
    await runtime.stop()
    assert _review_records(caplog) == []


async def test_development_mode_never_refuses(tmp_path: Path) -> None:
    settings = Settings.from_env(
        {"VOICEGW_DATA_DIR": str(tmp_path / "data"), "VOICEGW_REPLICAS": "3"}
    )
    runtime = await start_runtime(settings)  # redis.configured fails, but this is development
    await runtime.stop()


def test_serve_exits_2_and_names_the_setting(prod_env: dict[str, str], tmp_path: Path) -> None:
    env = {k: v for k, v in prod_env.items() if k != "VOICEGW_REDIS_URL"}
    env["VOICEGW_REPLICAS"] = "3"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    result = subprocess.run(
        [str(VOICEGW), "serve", "--host", "127.0.0.1", "--port", str(port)],
        env={**env, "PATH": os.environ.get("PATH", "")},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60 * UNIT,
        check=False,
    )
    assert result.returncode == 2, result.stdout + result.stderr
    assert "voicegw: security review refused the start:" in result.stderr
    assert "VOICEGW_REDIS_URL" in result.stderr
    for name in ("VOICEGW_TWILIO_AUTH_TOKEN", "VOICEGW_METRICS_TOKEN", "VOICEGW_TELNYX_API_KEY"):
        assert env[name] not in result.stdout + result.stderr
