"""``scripts/test`` finds PostgreSQL as it finds Redis: at VOICEGW_TEST_DATABASE_URL, else a
private server it starts (when the binaries are installed) and stops afterwards, else a message
saying how to get one. Runs the real script on one small test."""

from __future__ import annotations

import os
import re
import socket
import subprocess
from pathlib import Path

from tests.conftest import UNIT

ROOT = Path(__file__).resolve().parents[2]
DEAD = "postgresql://postgres@127.0.0.1:1/test"  # nothing listens on port 1


def test_scripts_test_starts_and_stops_a_private_postgresql():
    result = subprocess.run(
        [
            str(ROOT / "scripts" / "test"),
            "tests/records/test_store.py",
            "-q",
            "-p",
            "no:cacheprovider",
            "-k",
            "test_users_crud and postgres",
        ],
        cwd=ROOT,
        env={**os.environ, "VOICEGW_TEST_DATABASE_URL": DEAD},
        capture_output=True,
        text=True,
        timeout=120 * UNIT,
        check=False,
    )
    started = re.search(
        r"started a private PostgreSQL \(.*\) on port (\d+) in (\S+) ", result.stderr
    )
    if started is None:  # no PostgreSQL binaries here: the script must say how to get them
        assert result.returncode == 1, result.stdout + result.stderr
        assert f"PostgreSQL is needed for the tests and none answers at {DEAD}" in result.stderr
        assert "apt-get install postgresql" in result.stderr
        return
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 passed" in result.stdout  # the test ran against the private server
    port, directory = int(started[1]), Path(started[2])
    assert not directory.exists()  # its data directory is removed
    with socket.socket() as probe:  # and the server is stopped
        assert probe.connect_ex(("127.0.0.1", port)) != 0
