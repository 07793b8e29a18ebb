"""The log scan (tests/pii_scan.py) that runs over the whole suite catches what it should."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import pytest

from metrics.logging import JsonFormatter
from tests.conftest import UNIT
from tests.pii_scan import findings

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    "line",
    [
        '{"event": "call from +15550100001"}',
        '{"event": "From=%2B15550100002"}',
        '{"event": "dialled (555) 010-0001"}',
        '{"event": "raw +4930123456"}',
        '{"event": "new +19995550123"}',
        '{"event": "user alice@example.com"}',
        '{"event": "user someone.else@corp.example.net"}',
        '{"event": "peer 203.0.113.9:5000"}',
    ],
)
def test_findings_in_clear(line):
    assert findings(line)


@pytest.mark.parametrize(
    "line",
    [
        '{"event": "call from +1********01"}',
        '{"event": "user a***@example.com"}',
        '{"event": "peer ip-0123456789abcdef:5000"}',
        '{"ts": "2026-11-22T10:00:00.123Z", "duration_s": 12.5, "version": "2.42.0"}',
        '{"call_id": "CA0123456789abcdef0123456789abcdef", "release": "voicegw@0.1.0"}',
        '{"event": "Uvicorn running on http://127.0.0.1:8000, also 0.0.0.0:8000"}',
    ],
)
def test_no_findings_in_redacted_lines(line):
    assert findings(line) == []


def test_the_gateway_formatter_output_has_no_findings():
    import logging

    record = logging.makeLogRecord(
        {
            "msg": "call %s <%s> from %s",
            "args": ("+15550100001", "alice@example.com", "192.0.2.77"),
            "levelname": "INFO",
            "to": "+15550100002",
        }
    )
    assert findings(JsonFormatter(ip_hash_key=b"k").format(record)) == []


def run_suite(tmp_path: Path, body: str) -> subprocess.CompletedProcess[str]:
    """Run ``body`` as a test module under the plugin. Its temporary directory lies outside
    this session's, so the leaks it plants are not found by this session's own scan."""
    (tmp_path / "test_sample.py").write_text(textwrap.dedent(body))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with tempfile.TemporaryDirectory(prefix="pii-scan-") as basetemp:
        return _pytest(tmp_path, Path(basetemp) / "basetemp", env)


def _pytest(
    tmp_path: Path, basetemp: Path, env: dict[str, str]
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-p",
            "tests.pii_scan",
            "-p",
            "no:cacheprovider",
            "--rootdir",
            str(tmp_path),
            "--basetemp",
            str(basetemp),
            str(tmp_path / "test_sample.py"),
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60 * UNIT,
        check=False,
    )


def test_a_suite_whose_logs_are_redacted_passes(tmp_path):
    result = run_suite(
        tmp_path,
        """
        import logging

        def test_logs_a_call():
            logging.getLogger("voicegw.sample").info(
                "call from %s", "+15550100001", extra={"email": "alice@example.com"}
            )
        """,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no personal data" in result.stdout


def test_a_gateway_log_file_with_a_phone_number_fails_the_session(tmp_path):
    result = run_suite(
        tmp_path,
        """
        def test_a_subprocess_gateway_leaked(tmp_path):
            (tmp_path / "serve.log").write_text('{"event": "caller +15550100001"}\\n')
        """,
    )
    assert result.returncode == 1, result.stdout + result.stderr
    assert "1 passed" in result.stdout
    assert "phone +15550100001" in result.stdout
    assert "FAILED pii scan" in result.stdout


def test_handlers_replaced_by_configure_are_rejoined(tmp_path):
    result = run_suite(
        tmp_path,
        """
        import io, logging
        from metrics.logging import configure

        def test_configure_first():
            configure("INFO", stream=io.StringIO())

        def test_then_log():
            logging.getLogger("voicegw.sample").info("hello")
        """,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    lines = int(result.stdout.split("pii scan: ")[1].split()[0])
    assert lines >= 1
