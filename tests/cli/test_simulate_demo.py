"""``voicegw demo`` runs in a temporary data directory of its own: its deliberately forged
webhooks and its call never reach the operator's audit trail, call records, keys, Redis or
database. Run as a real subprocess, as a user types it."""

from __future__ import annotations

import hashlib
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import UNIT

VOICEGW = Path(sys.executable).parent / "voicegw"

# The operator's own state, which the demo must not use: nothing answers at either address, so
# a demo that used them would fail.
OPERATOR_ENV = {
    "VOICEGW_REDIS_URL": "redis://127.0.0.1:1/15",
    "VOICEGW_DATABASE_URL": "postgresql://postgres@127.0.0.1:1/operator",
}


def voicegw(tmp_path: Path, *argv: str, env: dict[str, str], stdin: str = "") -> str:
    """Run ``voicegw ARGV`` in ``tmp_path/work`` with temporary files under ``tmp_path/tmp``;
    returns stderr (asserting success)."""
    result = subprocess.run(
        [str(VOICEGW), *argv],
        env={"PATH": os.environ["PATH"], "TMPDIR": str(tmp_path / "tmp"), **env},
        cwd=tmp_path / "work",
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60 * UNIT,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "result: ok" in result.stdout or argv[0] != "demo", result.stdout
    return result.stderr


def snapshot(directory: Path) -> dict[str, str]:
    """Every file under ``directory`` by relative path, with a hash of its contents."""
    return {
        str(path.relative_to(directory)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(directory.rglob("*"))
        if path.is_file()
    }


@pytest.fixture
def dirs(tmp_path: Path) -> Path:
    (tmp_path / "work").mkdir()
    (tmp_path / "tmp").mkdir()
    return tmp_path


@pytest.mark.parametrize("carrier", ["twilio", "telnyx"])
def test_demo_leaves_the_configured_data_dir_untouched(dirs, carrier):
    data = dirs / "work" / ".voicegw"
    # The operator's data directory as `voicegw users add` leaves it: keys, a store, an audit row.
    operator = {"VOICEGW_DATA_DIR": str(data)}
    voicegw(dirs, "users", "add", "alice", "--role", "admin", "--password-stdin",
            env=operator, stdin="correct horse battery staple\n")  # fmt: skip
    before = snapshot(data)
    assert "voicegw.sqlite3" in before

    voicegw(dirs, "demo", "--carrier", carrier, env={**operator, **OPERATOR_ENV})

    assert snapshot(data) == before
    assert list((dirs / "tmp").iterdir()) == []  # its temporary directory is gone


def test_demo_creates_no_data_dir_in_the_working_directory(dirs):
    voicegw(dirs, "demo", env={})
    assert list((dirs / "work").iterdir()) == []
    assert list((dirs / "tmp").iterdir()) == []


def test_demo_keep_leaves_its_own_records_where_it_says(dirs):
    err = voicegw(dirs, "demo", "--carrier", "telnyx", "--keep", env=OPERATOR_ENV)
    (kept,) = (dirs / "tmp").iterdir()
    assert f"voicegw: the demo's data is in {kept}" in err
    with sqlite3.connect(kept / "voicegw.sqlite3") as db:
        (calls,) = db.execute("SELECT count(*) FROM calls").fetchone()
        (audit,) = db.execute("SELECT count(*) FROM audit_events").fetchone()
    assert calls >= 1  # the demo's call and its forged webhooks are recorded here instead
    assert audit >= 1
    assert list((dirs / "work").iterdir()) == []
