"""``voicegw security review``: the embedded defaults list the development findings honestly
(exit 2), a production-like configuration passes (exit 0), one warning exits 1; ``--json`` is
machine-readable and neither output carries a secret."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from gateway.cli.main import main
from gateway.review.checks import CHECKS
from tests.conftest import UNIT

VOICEGW = Path(sys.executable).parent / "voicegw"

DEVELOPMENT_FINDINGS = {
    "env.production": "fail",
    "providers.no_echo": "fail",
    "url.https": "fail",
    "secrets.twilio": "fail",
    "secrets.telnyx": "fail",
    "data.encryption_keys": "fail",
    "allowlist.twilio": "warn",
    "allowlist.telnyx": "warn",
}


def use_env(monkeypatch: pytest.MonkeyPatch, env: dict[str, str]) -> None:
    """Exactly ``env`` as the gateway's configuration (the test suite's own variables stay)."""
    for name in list(os.environ):
        if name.startswith("VOICEGW_") and not name.startswith("VOICEGW_TEST_"):
            monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)


def run_json(capsys: pytest.CaptureFixture[str]) -> tuple[int, dict]:
    code = main(["security", "review", "--json"])
    return code, orjson.loads(capsys.readouterr().out)


def test_embedded_defaults_list_the_development_findings(tmp_path, monkeypatch, capsys) -> None:
    use_env(monkeypatch, {"VOICEGW_DATA_DIR": str(tmp_path / "data")})
    code, report = run_json(capsys)
    assert code == 2
    assert report["env"] == "development"
    found = {f["id"]: f["status"] for f in report["findings"] if f["status"] != "pass"}
    assert found == DEVELOPMENT_FINDINGS
    assert report["counts"] == {"pass": len(CHECKS) - 8, "warn": 2, "fail": 6}


def test_production_like_configuration_exits_0(monkeypatch, capsys, prod_env) -> None:
    use_env(monkeypatch, prod_env)
    code, report = run_json(capsys)
    assert code == 0, [f for f in report["findings"] if f["status"] != "pass"]
    assert report["exit_code"] == 0 and report["env"] == "production"


def test_one_warning_exits_1(monkeypatch, capsys, prod_env) -> None:
    use_env(monkeypatch, {**prod_env, "VOICEGW_TWILIO_ALLOWLIST": "any"})
    code, report = run_json(capsys)
    assert code == 1
    (warning,) = [f for f in report["findings"] if f["status"] != "pass"]
    assert warning["id"] == "allowlist.twilio" and warning["status"] == "warn"
    assert warning["severity"] == "warning"  # a warning never reads as critical
    assert "Twilio publishes no stable source ranges" in warning["finding"]
    assert "VOICEGW_TWILIO_ALLOWLIST" in warning["fix"]


def test_json_shape_and_no_secrets(monkeypatch, capsys, prod_env) -> None:
    use_env(monkeypatch, prod_env)
    main(["security", "review", "--json"])
    out = capsys.readouterr().out
    report = orjson.loads(out)
    assert set(report) == {"env", "at", "exit_code", "counts", "findings"}
    assert [f["id"] for f in report["findings"]] == [c.id for c in CHECKS]
    for finding in report["findings"]:
        assert set(finding) == {"id", "severity", "status", "finding", "fix"}
        assert finding["severity"] in {"info", "warning", "critical"}
        assert finding["status"] in {"pass", "warn", "fail"}
        assert finding["finding"] and "\n" not in finding["finding"]
    secrets = [
        prod_env[name]
        for name in (
            "VOICEGW_TWILIO_AUTH_TOKEN",
            "VOICEGW_TELNYX_API_KEY",
            "VOICEGW_METRICS_TOKEN",
            "VOICEGW_BLIND_INDEX_KEY",
        )
    ] + [prod_env["VOICEGW_ENCRYPTION_KEYS"].split(":", 1)[1]]
    secrets.append(prod_env["VOICEGW_REDIS_URL"].split(":")[2].split("@")[0])  # the password
    for secret in secrets:
        assert secret not in out


def test_table_output_is_aligned(tmp_path, monkeypatch, capsys) -> None:
    use_env(monkeypatch, {"VOICEGW_DATA_DIR": str(tmp_path / "data")})
    assert main(["security", "review"]) == 2
    lines = capsys.readouterr().out.splitlines()
    header = lines[0]
    assert header.split() == ["STATUS", "SEVERITY", "CHECK", "FINDING"]
    column = header.index("FINDING")
    rows = [
        line for line in lines[1:] if line and not line.startswith(" ") and "checks (" not in line
    ]
    assert len(rows) == len(CHECKS)
    for row in rows:
        assert row[column - 2 : column] == "  " and row[column] != " ", row
    fixes = [line for line in lines if line.strip().startswith("fix: ")]
    assert len(fixes) == len(DEVELOPMENT_FINDINGS)
    assert all(line.index("fix: ") == column for line in fixes)
    assert (
        lines[-1] == f"{len(CHECKS)} checks (development): {len(CHECKS) - 8} pass, 2 warn, 6 fail"
    )


def test_the_installed_command_exits_2_on_the_embedded_defaults(tmp_path) -> None:
    result = subprocess.run(
        [str(VOICEGW), "security", "review"],
        env={"VOICEGW_DATA_DIR": str(tmp_path / "data"), "PATH": os.environ.get("PATH", "")},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60 * UNIT,
        check=False,
    )
    assert result.returncode == 2, result.stderr
    assert "FAIL    critical  env.production" in result.stdout
    # The command's own error line handler redacts too: the review of its process passes.
    assert "PASS    critical  obs.log_redaction" in result.stdout
    assert result.stderr == ""
